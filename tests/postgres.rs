//! Two coordinator processes on one PostgreSQL database serve one collective: each with the
//! same CM root key and its own nodes, clients downloading through either, both reconciling at
//! once; every node is credited exactly what one coordinator would credit, once.
//!
//! Needs a PostgreSQL server where the test may create a database: `CCDS_TEST_POSTGRES_URL`
//! (`.ci/run` sets one up). Without it the test says it was skipped — and fails under `CI`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use common::{adversary, bin, file_hash, now_secs, run_ok, wait_for};
use overlay::proto::ControlResponse;
use overlay::receipt::Receipt;
use overlay::report::{NodeReportBody, ServedClaim};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

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

/// A database of the test's own on the server `CCDS_TEST_POSTGRES_URL` names, dropped at the end.
struct Database {
    server: PgConnectOptions,
    name: String,
    url: String,
}

impl Database {
    fn create() -> Option<Self> {
        let Some(server_url) = std::env::var("CCDS_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CCDS_TEST_POSTGRES_URL is not set; CI must run the PostgreSQL tests"
            );
            eprintln!("skipped: CCDS_TEST_POSTGRES_URL is not set");
            return None;
        };
        let server = PgConnectOptions::from_str(&server_url).expect("a PostgreSQL URL");
        let name = format!("ccds_e2e_{:016x}", rand::random::<u64>());
        block_on(async {
            let mut admin = server.connect().await.expect("the test PostgreSQL server");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
        });
        // The server URL with the database replaced (its query, if any, kept).
        let (base, query) = server_url
            .split_once('?')
            .map_or((server_url.as_str(), None), |(b, q)| (b, Some(q)));
        let authority_end = base.find("://").unwrap() + 3;
        let path_start = base[authority_end..]
            .find('/')
            .map_or(base.len(), |i| authority_end + i);
        let mut url = format!("{}/{name}", &base[..path_start]);
        if let Some(q) = query {
            url = format!("{url}?{q}");
        }
        Some(Self { server, name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        block_on(async move {
            if let Ok(mut admin) = server.connect().await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        });
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Processes killed and logs shown (on failure) when dropped.
struct Processes {
    tmp: tempfile::TempDir,
    children: Vec<Child>,
}

impl Processes {
    fn spawn(&mut self, name: &str, args: &[&str], log: &str) {
        let out = std::fs::File::create(self.tmp.path().join(log)).unwrap();
        let child = Command::new(bin(name))
            .args(args)
            .env("RUST_LOG", "info,libp2p=warn")
            .env_remove("CCDS_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.children.push(child);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
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
fn two_coordinators_on_one_postgres_database_credit_every_receipt_once() {
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
    run_ok("cm-coordinator", &["init", "--data-dir", a]);
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
    let mut addrs = Vec::new();
    for cm in [a, b] {
        let log = format!(
            "{}.log",
            Path::new(cm).file_name().unwrap().to_str().unwrap()
        );
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
                "--audit-interval",
                "0s",
                // Each coordinator knows only its own nodes online: no repair in this test.
                "--repair-delay",
                "1h",
            ],
            &log,
        );
        let addr_file = Path::new(cm).join("coordinator.addr");
        wait_for("a coordinator address", Duration::from_secs(30), || {
            addr_file.exists()
        });
        addrs.push(
            std::fs::read_to_string(addr_file)
                .unwrap()
                .trim()
                .to_string(),
        );
    }
    assert_eq!(
        addrs[0].rsplit('/').next(),
        addrs[1].rsplit('/').next(),
        "one CM identity"
    );

    // Nodes 0-2 join `a`, 3-5 join `b`, each behind its own /24.
    let mut nodes = Vec::new();
    for i in 0..2 * PER_CM {
        let dir = p.path(&format!("node{i}"));
        let d = dir.to_str().unwrap().to_string();
        let id = run_ok(
            "ccds-node",
            &[
                "init",
                "--data-dir",
                &d,
                "--coordinator",
                &addrs[i / PER_CM],
                "--quota",
                "1GiB",
            ],
        );
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
            &format!("node{i}.log"),
        );
        let ready = dir.join("node.addr");
        wait_for("a node to join", Duration::from_secs(30), || ready.exists());
        nodes.push((dir, id));
    }
    for cm in [a, b] {
        wait_for("nodes online", Duration::from_secs(30), || {
            json("cm-coordinator", &["nodes", "--data-dir", cm, "--json"])
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["online"] == true)
                .count()
                >= PER_CM
        });
    }
    // Both list every registered node: the registry of nodes is shared.
    for cm in [a, b] {
        let listed = json("cm-coordinator", &["nodes", "--data-dir", cm, "--json"]);
        assert_eq!(listed.as_array().unwrap().len(), 2 * PER_CM, "{listed}");
    }

    // A content published through each coordinator, downloaded by a client through each.
    for (n, cm) in [a, b].into_iter().enumerate() {
        let file = p.path(&format!("film{n}.bin"));
        let mut bytes = vec![0u8; 1_500_000];
        let mut x = 0x9e37_79b9_7f4a_7c15u64 + n as u64;
        for chunk in bytes.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(&file, &bytes).unwrap();
        let content = run_ok(
            "cm-coordinator",
            &[
                "publish",
                "--data-dir",
                cm,
                "--partner",
                "acme",
                "--data-shards",
                "2",
                "--parity-shards",
                "1",
                "--spare-shards",
                "0",
                "--segment-size",
                "256KiB",
                file.to_str().unwrap(),
            ],
        );
        let key = p.path(&format!("client{n}.key"));
        let client = run_ok("ccds-client", &["keygen", "--out", key.to_str().unwrap()]);
        let ticket = p.path(&format!("client{n}.ticket"));
        run_ok(
            "cm-coordinator",
            &[
                "ticket",
                "--data-dir",
                cm,
                "--partner",
                "acme",
                "--content",
                &content,
                "--client",
                &client,
                "--expires",
                "1h",
                "--out",
                ticket.to_str().unwrap(),
            ],
        );
        let out = p.path(&format!("film{n}.out"));
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
        assert_eq!(file_hash(&out), file_hash(&file));
    }
    // Every node's receipts reported (each to its own coordinator).
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
    assert_eq!(claims, serving, "each claim reconciled once: {runs:?}");
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
    let daemon = &mut p.children[2];
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
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
    let answers: Vec<ControlResponse> = std::thread::scope(|s| {
        let sent: Vec<_> = addrs
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
}
