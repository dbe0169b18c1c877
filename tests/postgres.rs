//! Two coordinator processes on one PostgreSQL database serve one collective: each with the
//! same CM root key and its own nodes. A client of one downloads from the other's nodes, a
//! publish through one places fragments on the other's nodes, a restart of one leaves the
//! other's nodes online, one coordinator repairs what a leaving node held (once), and both
//! reconciling at once credit every node exactly what one coordinator would, once.
//!
//! Needs a PostgreSQL server where the test may create a database: `CCDS_TEST_POSTGRES_URL`
//! (`.ci/run` sets one up). Without it the test says it was skipped — and fails under `CI`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::postgres::{Database, block_on};
use common::{adversary, bin, file_hash, now_secs, run_ok, wait_for};
use overlay::proto::{ClientRequest, ClientResponse, ControlResponse, ProblemKind, ProblemReport};
use overlay::receipt::Receipt;
use overlay::report::{NodeReportBody, ServedClaim};
use sqlx::Connection;

/// Served bytes pay 500 credits per GB; storage and repair pay nothing, so what each node is
/// owed follows from the receipts alone, however the runs split the time.
const PAY: &str = r#"
reconcile_interval = "0s"
ticket_price_per_gb = 1000.0

[pay]
served_per_gb = 500.0
stored_per_gb_month = 0.0
repair_per_gb = 0.0

[reconcile]
sales_grace_secs = 0
collusion_min_bytes = 100000
"#;

const GB: u128 = 1_000_000_000;
/// Nodes per coordinator.
const PER_CM: usize = 3;

/// Processes killed and logs shown (on failure) when dropped.
struct Processes {
    tmp: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Processes {
    /// Starts a program, its output appended to `LOG.log`; `LOG` names the process.
    fn spawn(&mut self, name: &str, args: &[&str], log: &str) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(format!("{log}.log")))
            .unwrap();
        let child = Command::new(bin(name))
            .args(args)
            .env("RUST_LOG", "info,libp2p=warn")
            .env_remove("CCDS_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.children.push((log.to_string(), child));
    }

    /// Stops the process named `log`: SIGTERM (a graceful stop) or SIGKILL.
    fn stop(&mut self, log: &str, graceful: bool) {
        let i = self
            .children
            .iter()
            .position(|(l, _)| l == log)
            .unwrap_or_else(|| panic!("no process {log}"));
        let (_, mut child) = self.children.remove(i);
        if graceful {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        } else {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.tmp.path()).into_iter().flatten() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "log") {
                    let log = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    eprintln!("---- {} (last lines) ----", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn json(name: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run_ok(name, args)).unwrap()
}

/// Nodes `cm` lists online.
fn online(cm: &str) -> Vec<String> {
    json("cm-coordinator", &["nodes", "--data-dir", cm, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["online"] == true)
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

/// Fragments placed on each node, as `cm` lists them.
fn fragments(cm: &str) -> BTreeMap<String, u64> {
    json("cm-coordinator", &["nodes", "--data-dir", cm, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["fragments"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// (sessions, open sessions) of a node in the shared database.
fn sessions(url: &str, node: &str) -> (i64, i64) {
    block_on(async {
        let mut db = sqlx::PgConnection::connect(url).await.unwrap();
        let row: (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE ended_at IS NULL) FROM node_sessions
             WHERE node = $1",
        )
        .bind(node)
        .fetch_one(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
        row
    })
}

/// A file of `len` pseudo-random bytes.
fn make_file(path: &Path, len: usize, seed: u64) {
    let mut bytes = vec![0u8; len];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(path, &bytes).unwrap();
}

/// Publishes `file` through `cm` with `k` data and `m` parity fragments per 256 KiB segment.
fn publish(cm: &str, file: &Path, k: &str, m: &str) -> String {
    run_ok(
        "cm-coordinator",
        &[
            "publish",
            "--data-dir",
            cm,
            "--partner",
            "acme",
            "--data-shards",
            k,
            "--parity-shards",
            m,
            "--spare-shards",
            "0",
            "--segment-size",
            "256KiB",
            file.to_str().unwrap(),
        ],
    )
}

/// A new client buys `content` through `cm` and downloads it; the output must equal `file`.
fn buy_and_download(p: &Processes, cm: &str, content: &str, file: &Path, name: &str) {
    let (ticket, key) = buy(p, cm, content, name);
    download(p, &ticket, &key, file, name);
}

/// A new client `name` buys `content` through `cm`: (its ticket file, its key file).
fn buy(p: &Processes, cm: &str, content: &str, name: &str) -> (PathBuf, PathBuf) {
    let key = p.path(&format!("{name}.key"));
    let client = run_ok("ccds-client", &["keygen", "--out", key.to_str().unwrap()]);
    let ticket = p.path(&format!("{name}.ticket"));
    run_ok(
        "cm-coordinator",
        &[
            "ticket",
            "--data-dir",
            cm,
            "--partner",
            "acme",
            "--content",
            content,
            "--client",
            &client,
            "--expires",
            "1h",
            "--out",
            ticket.to_str().unwrap(),
        ],
    );
    (ticket, key)
}

/// Downloads with `ticket` and `key`; the output must equal `file`.
fn download(p: &Processes, ticket: &Path, key: &Path, file: &Path, name: &str) {
    let out = p.path(&format!("{name}.out"));
    run_ok(
        "ccds-client",
        &[
            "get",
            "--json",
            "--no-progress",
            "--key",
            key.to_str().unwrap(),
            "--ticket",
            ticket.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(file_hash(&out), file_hash(file), "{name}: byte-identical");
}

/// The newest receipt per ticket in a node's receipt log: what the client signed for it.
fn receipts(node_dir: &Path) -> BTreeMap<[u8; 16], Receipt> {
    let log = std::fs::read_to_string(node_dir.join("receipts.jsonl")).unwrap_or_default();
    let mut newest: BTreeMap<[u8; 16], Receipt> = BTreeMap::new();
    for line in log.lines() {
        let r: Receipt = serde_json::from_str(line).unwrap();
        if newest
            .get(&r.body.ticket_id)
            .is_none_or(|k| k.body.seq < r.body.seq)
        {
            newest.insert(r.body.ticket_id, r);
        }
    }
    newest
}

/// Runs `cm-coordinator reconcile` on every data directory at once; returns the summaries.
fn reconcile_at_once(cms: &[&str]) -> Vec<serde_json::Value> {
    std::thread::scope(|s| {
        let runs: Vec<_> = cms
            .iter()
            .map(|cm| {
                s.spawn(move || json("cm-coordinator", &["reconcile", "--data-dir", cm, "--json"]))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

#[test]
fn two_coordinators_on_one_postgres_database_serve_one_collective() {
    let Some(db) = Database::create() else {
        return;
    };
    let mut p = Processes {
        tmp: tempfile::tempdir().unwrap(),
        children: Vec::new(),
    };
    let url = db.url.as_str();

    // One collective: coordinator `a` initialised, the partner registered in the shared
    // database, and `b` a copy of `a`'s directory (the same root key and partner key).
    let a = p.path("a");
    let b = p.path("b");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    run_ok(
        "cm-coordinator",
        &["init", "--data-dir", a, "--database-url", url],
    );
    assert!(
        !Path::new(a).join("coordinator.db").exists(),
        "no SQLite database beside PostgreSQL"
    );
    run_ok(
        "cm-coordinator",
        &[
            "partner",
            "add",
            "acme",
            "--data-dir",
            a,
            "--database-url",
            url,
        ],
    );
    copy_dir(Path::new(a), Path::new(b));
    let conf = p.path("cm.toml");
    std::fs::write(&conf, PAY).unwrap();
    // `b` restarts on the same address: its nodes find it again.
    let b_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b_listen = format!("/ip4/127.0.0.1/udp/{b_port}/quic-v1");
    let start_cm = |p: &mut Processes, cm: &str, listen: &str| -> String {
        let name = Path::new(cm).file_name().unwrap().to_str().unwrap();
        let addr_file = Path::new(cm).join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        p.spawn(
            "cm-coordinator",
            &[
                "run",
                "--data-dir",
                cm,
                "--database-url",
                url,
                "--config",
                conf.to_str().unwrap(),
                "--listen",
                listen,
                "--audit-interval",
                "0s",
                "--cluster-interval",
                "1s",
                // Long enough for a coordinator starved of CPU on a loaded machine: one declared
                // lost takes its nodes offline, and repairs would follow.
                "--coordinator-timeout",
                "10s",
                "--repair-delay",
                "5s",
                "--repair-interval",
                "1s",
            ],
            name,
        );
        wait_for("a coordinator address", Duration::from_secs(30), || {
            addr_file.exists()
        });
        std::fs::read_to_string(addr_file)
            .unwrap()
            .trim()
            .to_string()
    };
    let start_node = |p: &mut Processes, i: usize, cm_addrs: &[&str]| -> (PathBuf, String) {
        let dir = p.path(&format!("node{i}"));
        let d = dir.to_str().unwrap().to_string();
        let mut init = vec!["init", "--data-dir", &d, "--quota", "1GiB"];
        for addr in cm_addrs {
            init.extend(["--coordinator", addr]);
        }
        let id = run_ok("ccds-node", &init);
        // Each behind its own /24: fragments of a segment may go to any of them.
        let listen = format!("/ip4/127.0.{}.1/udp/0/quic-v1", i + 1);
        p.spawn(
            "ccds-node",
            &[
                "run",
                "--data-dir",
                &d,
                "--heartbeat-interval",
                "2s",
                "--report-interval",
                "1s",
                "--listen",
                &listen,
            ],
            &format!("node{i}"),
        );
        let ready = dir.join("node.addr");
        wait_for("a node to join", Duration::from_secs(30), || ready.exists());
        (dir, id)
    };
    let wait_online = |cm: &str, ids: &[String]| {
        wait_for("nodes online", Duration::from_secs(60), || {
            let on = online(cm);
            ids.iter().all(|id| on.contains(id))
        });
    };

    // `a` and its nodes 0-2; a film published through `a` lies on them alone.
    let a_addr = start_cm(&mut p, a, "/ip4/127.0.0.1/udp/0/quic-v1");
    let mut nodes: Vec<(PathBuf, String)> = Vec::new();
    for i in 0..PER_CM {
        nodes.push(start_node(&mut p, i, &[&a_addr]));
    }
    let ids: Vec<String> = nodes.iter().map(|(_, id)| id.clone()).collect();
    wait_online(a, &ids);
    let film_a = p.path("film_a.bin");
    make_file(&film_a, 1_500_000, 1);
    let content_a = publish(a, &film_a, "2", "1");

    // `b` and its nodes 3-5. Both see all six online: each its own, and the other's.
    let b_addr = start_cm(&mut p, b, &b_listen);
    assert_eq!(
        a_addr.rsplit('/').next(),
        b_addr.rsplit('/').next(),
        "one CM identity"
    );
    for i in PER_CM..2 * PER_CM {
        nodes.push(start_node(&mut p, i, &[&b_addr]));
    }
    let ids: Vec<String> = nodes.iter().map(|(_, id)| id.clone()).collect();
    for cm in [a, b] {
        wait_online(cm, &ids);
    }
    let cluster = json("cm-coordinator", &["cluster", "--data-dir", b, "--json"]);
    assert_eq!(cluster["nodes_online_here"], PER_CM, "{cluster}");
    assert_eq!(cluster["nodes_online_elsewhere"], PER_CM, "{cluster}");
    let alive = cluster["coordinators"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["alive"] == true)
        .count();
    assert_eq!(alive, 2, "{cluster}");
    let leaders: Vec<bool> = [a, b]
        .iter()
        .map(|cm| {
            json("cm-coordinator", &["cluster", "--data-dir", cm, "--json"])["leader"] == true
        })
        .collect();
    assert_eq!(
        leaders.iter().filter(|&&l| l).count(),
        1,
        "one runs repairs and audits: {leaders:?}"
    );

    // A client tells `b` that one of `a`'s nodes is unreachable: `a`, which watches that node,
    // probes it, as if the report had come to it.
    let probes = |cm: &str| -> u64 {
        let read = |f: &str| std::fs::read_to_string(Path::new(cm).join(f)).unwrap();
        let (http, token) = (read("http.addr"), read("operator.token"));
        let (status, _, body) = common::http(
            http.trim(),
            "GET",
            "/api/v1/liveness",
            Some(token.trim()),
            None,
        );
        assert_eq!(status, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["probes"]
            .as_u64()
            .unwrap()
    };
    let before = probes(a);
    let answer = adversary::send_client(
        &b_addr,
        &overlay::Identity::generate(),
        &ClientRequest::Problem(ProblemReport {
            content: content_a.parse().unwrap(),
            node: ids[1].parse().unwrap(),
            kind: ProblemKind::Unreachable,
            detail: "timed out".into(),
        }),
    );
    assert!(matches!(answer, ClientResponse::Ok), "{answer:?}");
    wait_for("a to probe its node", Duration::from_secs(20), || {
        probes(a) > before
    });

    // A client of `b` downloads the film that lies on `a`'s nodes only.
    buy_and_download(&p, b, &content_a, &film_a, "client_b");

    // A publish through `b` with six fragments per segment needs all six nodes: `a`'s too.
    let before = fragments(a);
    let film_b = p.path("film_b.bin");
    make_file(&film_b, 1_500_000, 2);
    let content_b = publish(b, &film_b, "3", "3");
    let after = fragments(a);
    let segments = 1_500_000u64.div_ceil(256 * 1024);
    for id in &ids {
        assert_eq!(
            after[id] - before[id],
            segments,
            "node {id}: a fragment per segment"
        );
    }
    // … and a client of `a` downloads it.
    buy_and_download(&p, a, &content_b, &film_b, "client_a");

    // Every node's receipts reported (to either coordinator).
    let since = now_secs() + 1;
    for (dir, _) in &nodes {
        wait_for("a node report", Duration::from_secs(30), || {
            json(
                "ccds-node",
                &["status", "--data-dir", dir.to_str().unwrap(), "--json"],
            )["last_report_at"]
                .as_u64()
                >= Some(since)
        });
    }

    // Both coordinators reconcile at once: one run settles every claim, the other finds
    // nothing left to settle.
    let runs = reconcile_at_once(&[a, b]);
    let served: Vec<u128> = nodes
        .iter()
        .map(|(dir, _)| {
            receipts(dir)
                .values()
                .map(|r| u128::from(r.body.bytes))
                .sum()
        })
        .collect();
    let serving = served.iter().filter(|&&s| s > 0).count() as u64;
    assert!(serving >= 4, "both contents were served: {served:?}");
    let claims: u64 = runs.iter().map(|r| r["claims"].as_u64().unwrap()).sum();
    let tickets: u64 = nodes
        .iter()
        .map(|(dir, _)| receipts(dir).len() as u64)
        .sum();
    assert_eq!(claims, tickets, "each claim reconciled once: {runs:?}");
    for r in &runs {
        assert_eq!(r["conflict"], 0, "{r}");
    }

    let earnings = |cm: &str, id: &str| {
        let show = json(
            "cm-coordinator",
            &["node", "show", id, "--data-dir", cm, "--json"],
        );
        show["balance"].as_i64().unwrap() + show["held"].as_i64().unwrap()
    };
    let expected: Vec<i64> = served
        .iter()
        .map(|&s| (s * 500_000_000 / GB) as i64)
        .collect();
    for (i, (_, id)) in nodes.iter().enumerate() {
        // Either coordinator shows the same ledger: the one in the database.
        for cm in [a, b] {
            assert_eq!(earnings(cm, id), expected[i], "node {i} as {cm} sees it");
        }
    }
    let ledger = json("cm-coordinator", &["ledger", "--data-dir", b, "--json"]);
    assert_eq!(ledger["sum"], 0, "double entry: {ledger}");

    // One report delivered to both coordinators at once (node 0 speaks for itself, its daemon
    // stopped): one accepts it, the other refuses the replay; nothing is credited again.
    let (dir0, id0) = &nodes[0];
    p.stop("node0", true);
    let me = adversary::identity(&dir0.join("node.key"));
    let seq = json(
        "cm-coordinator",
        &["node", "show", id0, "--data-dir", a, "--json"],
    )["last_report_seq"]
        .as_u64()
        .unwrap()
        + 1;
    let served0: Vec<ServedClaim> = receipts(dir0)
        .into_values()
        .map(|r| ServedClaim {
            ticket_id: r.body.ticket_id,
            content: r.body.content,
            fragments: r.body.fragments,
            bytes: r.body.bytes,
            receipt: Some(r),
        })
        .collect();
    assert!(!served0.is_empty(), "node 0 served");
    let now = now_secs();
    let body = NodeReportBody {
        node: id0.parse().unwrap(),
        seq,
        from: now - 10,
        to: now,
        served: served0,
        held: None,
        sessions: vec![],
        upload_bps: 0,
    };
    let cm_addrs = [a_addr.clone(), b_addr.clone()];
    let answers: Vec<ControlResponse> = std::thread::scope(|s| {
        let sent: Vec<_> = cm_addrs
            .iter()
            .map(|addr| {
                let (me, body) = (&me, body.clone());
                s.spawn(move || adversary::send_report(addr, me, body))
            })
            .collect();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let accepted = answers
        .iter()
        .filter(|a| matches!(a, ControlResponse::ReportAccepted { .. }))
        .count();
    let stale = answers
        .iter()
        .filter(|a| matches!(a, ControlResponse::StaleReport { last_seq } if *last_seq == seq))
        .count();
    assert_eq!((accepted, stale), (1, 1), "{answers:?}");
    let again = reconcile_at_once(&[b, a]);
    let claims: u64 = again.iter().map(|r| r["claims"].as_u64().unwrap()).sum();
    assert_eq!(claims, 0, "duplicate receipts change no claim: {again:?}");
    for cm in [a, b] {
        assert_eq!(earnings(cm, id0), expected[0], "node 0 credited once");
    }

    // Node 0 left: `a`'s film lost a fragment of every segment, and only its parity is gone.
    // The lease holder rebuilds each lost fragment once, on `b`'s nodes (the only ones without
    // one), and both coordinators see the film whole again.
    for cm in [a, b] {
        wait_for("the film repaired", Duration::from_secs(90), || {
            !online(cm).contains(id0)
                && json(
                    "cm-coordinator",
                    &["content", "show", &content_a, "--data-dir", cm, "--json"],
                )["min_live_fragments"]
                    == 3
        });
    }
    std::thread::sleep(Duration::from_secs(3));
    for cm in [a, b] {
        let show = json(
            "cm-coordinator",
            &["content", "show", &content_a, "--data-dir", cm, "--json"],
        );
        assert_eq!(
            show["repaired_fragments"], segments,
            "each rebuilt once: {show}"
        );
    }
    // A client of `b` downloads it from what is left (two of `a`'s nodes, and `b`'s).
    buy_and_download(&p, b, &content_a, &film_a, "client_after_repair");

    // `b` crashes and restarts: `a`'s nodes stay online throughout, in one unbroken session
    // each (their heartbeats reach either coordinator); `b`'s nodes join it again.
    let ids: Vec<String> = ids.into_iter().filter(|id| id != id0).collect();
    p.stop("b", false);
    std::thread::sleep(Duration::from_secs(2));
    for id in &ids[..PER_CM - 1] {
        assert!(online(a).contains(id), "{id} stays online at a");
    }
    start_cm(&mut p, b, &b_listen);
    for cm in [a, b] {
        wait_online(cm, &ids);
    }
    for id in &ids[..PER_CM - 1] {
        assert_eq!(
            sessions(url, id),
            (1, 1),
            "node {id}: one session, still open"
        );
    }

    // A node given both coordinators' addresses outlives the one it joined through: killed,
    // that one's sessions are closed by the other after the coordinator timeout, and the
    // node's next heartbeat there is refused, so it joins the survivor.
    let (_, id6) = start_node(&mut p, 2 * PER_CM, &[&a_addr, &b_addr]);
    for cm in [a, b] {
        wait_online(cm, std::slice::from_ref(&id6));
    }
    let instance = |cm: &str| {
        std::fs::read_to_string(Path::new(cm).join("instance.id"))
            .unwrap()
            .trim()
            .to_string()
    };
    let owner = session_owner(url, &id6).expect("an open session");
    let (gone, survivor) = if owner == instance(a) { (a, b) } else { (b, a) };
    assert_eq!(owner, instance(gone));
    // A ticket bought from that coordinator lists both.
    let (ticket, key) = buy(&p, gone, &content_b, "client_failover");
    let listed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ticket).unwrap()).unwrap();
    let (gone_addr, survivor_addr) = if gone == a {
        (&a_addr, &b_addr)
    } else {
        (&b_addr, &a_addr)
    };
    assert_eq!(
        listed["coordinators"],
        serde_json::json!([gone_addr, survivor_addr]),
        "{listed}"
    );
    p.stop(
        Path::new(gone).file_name().unwrap().to_str().unwrap(),
        false,
    );
    // Its client downloads through the survivor.
    download(&p, &ticket, &key, &film_b, "client_failover");
    wait_for(
        "the node to join the surviving coordinator",
        Duration::from_secs(60),
        || session_owner(url, &id6).is_some_and(|o| o == instance(survivor)),
    );
    wait_online(survivor, std::slice::from_ref(&id6));
    assert_eq!(sessions(url, &id6), (2, 1), "one session closed, one open");
}

/// The coordinator instance that holds a node's open session.
fn session_owner(url: &str, node: &str) -> Option<String> {
    block_on(async {
        let mut db = sqlx::PgConnection::connect(url).await.unwrap();
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT coordinator FROM node_sessions WHERE node = $1 AND ended_at IS NULL",
        )
        .bind(node)
        .fetch_optional(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
        owner
    })
}
