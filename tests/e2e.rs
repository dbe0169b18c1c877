//! End-to-end: a real coordinator and real node processes on loopback QUIC, driven through the
//! command-line programs exactly as a user would.

mod common;

use std::time::Duration;

use common::{Collective, file_hash, run, wait_for};

#[test]
fn round_trips_are_byte_identical_for_every_size() {
    let c = Collective::start(12);
    let (key, client) = c.client("alice");
    // 0 B, 1 B, not a multiple of the segment (1 MiB here), and 64 MiB.
    for (i, size) in [0usize, 1, 3 * (1 << 20) + 17, 64 << 20]
        .into_iter()
        .enumerate()
    {
        let file = c.make_file(&format!("in{i}"), size, i as u64);
        let content = c.publish(&file, 8, 4, "1MiB");
        assert_eq!(content.len(), 64, "publish prints the content ID alone");
        let ticket = c.ticket(&content, &client, "1h");
        let out = c.path(&format!("out{i}"));
        let summary = c.get_verified(&key, &ticket, &out, &file);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size as u64);
        assert_eq!(summary["bytes"], size as u64);
        assert_eq!(summary["corrupt_reports"], 0);
        // Fragments came from many nodes in parallel, not one.
        if size >= 1 << 20 {
            assert!(summary["per_node"].as_object().unwrap().len() >= 8);
        }
    }
    // Placements were recorded for every node.
    let nodes = c.nodes_json();
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["fragments"].as_u64().unwrap() > 0)
    );
}

#[test]
fn http_api_reports_health_and_nodes() {
    let c = Collective::start(2);
    let (status, health) = c.http_get("/healthz");
    assert_eq!(status, 200);
    assert_eq!(health["nodes_online"], 2);
    let (status, nodes) = c.http_get("/api/v1/nodes");
    assert_eq!(status, 200);
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    for node in &c.nodes {
        assert!(ids.contains(&node.id.as_str()));
    }
    let (status, _) = c.http_get("/api/v1/no-such-thing");
    assert_eq!(status, 404);
    // Without a token, the same listing is refused.
    let (status, _, _) = common::http(&c.http_addr(), "GET", "/api/v1/nodes", None, None);
    assert_eq!(status, 401);
}

#[test]
fn a_second_node_daemon_on_one_data_directory_is_refused() {
    let c = Collective::start(1);
    let dir = c.nodes[0].dir.to_str().unwrap();
    let out = run("ccds-node", &["run", "--data-dir", dir]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    // The first daemon is unaffected.
    c.wait_online(1);
}

#[test]
fn survives_m_holders_killed_before_the_download() {
    let mut c = Collective::start(12);
    let (key, client) = c.client("bob");
    let file = c.make_file("in", 5 << 20, 7);
    // k + m = 12 on 12 nodes: every node holds a fragment of every segment.
    let content = c.publish(&file, 8, 4, "1MiB");
    for i in [0, 3, 6, 9] {
        c.kill_node(i);
    }
    let ticket = c.ticket(&content, &client, "1h");
    let out = c.path("out");
    let summary = c.get_verified(&key, &ticket, &out, &file);
    for i in [0, 3, 6, 9] {
        assert!(
            summary["per_node"].get(&c.nodes[i].id).is_none(),
            "dead node served"
        );
    }
}

#[test]
fn survives_m_holders_killed_during_the_download() {
    let mut c = Collective::start(12);
    let (key, client) = c.client("carol");
    let file = c.make_file("in", 24 << 20, 8);
    let content = c.publish(&file, 8, 4, "1MiB");
    let ticket = c.ticket(&content, &client, "1h");
    let out = c.path("out");
    let child = c.spawn_get(&key, &ticket, &out, &["--limit-rate", "8MiB"]);
    let partial = c.path("out.part");
    wait_for("the download to start", Duration::from_secs(30), || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    for i in [1, 4, 7, 10] {
        c.kill_node(i);
    }
    assert!(
        !out.exists(),
        "the holders were killed while the download was running"
    );
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(file_hash(&out), file_hash(&file));
}

#[test]
fn corrupt_fragments_on_disk_are_reported_and_bypassed() {
    let c = Collective::start(12);
    let (key, client) = c.client("dave");
    let file = c.make_file("in", 3 << 20, 9);
    let content = c.publish(&file, 8, 4, "1MiB");
    // Flip one byte in every fragment node 2 holds.
    let victim = &c.nodes[2];
    let mut corrupted = 0;
    for entry in walk(&victim.dir.join("fragments")) {
        let mut raw = std::fs::read(&entry).unwrap();
        let at = raw.len() / 2;
        raw[at] ^= 0x5a;
        std::fs::write(&entry, raw).unwrap();
        corrupted += 1;
    }
    assert!(corrupted > 0, "node 2 holds fragments");
    let ticket = c.ticket(&content, &client, "1h");
    let out = c.path("out");
    // Node 2 is among the first k holders tried for some segment with high probability; make it
    // certain by downloading until a report names it (each run shuffles holders anew).
    let mut reported = false;
    for _ in 0..5 {
        let _ = std::fs::remove_file(&out);
        c.get_verified(&key, &ticket, &out, &file);
        reported = c.reports().as_array().unwrap().iter().any(|r| {
            r["kind"] == "corrupt"
                && r["node"] == victim.id.as_str()
                && r["content"] == content.as_str()
        });
        if reported {
            break;
        }
    }
    assert!(
        reported,
        "the coordinator holds a corruption report naming the node"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn interrupted_download_resumes_without_refetching() {
    let c = Collective::start(12);
    let (key, client) = c.client("erin");
    let file = c.make_file("in", 32 << 20, 10);
    let content = c.publish(&file, 8, 4, "1MiB");
    let ticket = c.ticket(&content, &client, "1h");
    let out = c.path("out");
    let mut child = c.spawn_get(&key, &ticket, &out, &["--limit-rate", "4MiB"]);
    let state = c.path("out.part.state");
    wait_for("some segments to finish", Duration::from_secs(60), || {
        finished_segments(&state) >= 4
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = finished_segments(&state);
    assert!(done_before < 32, "the client was killed halfway");
    let summary = c.get_verified(&key, &ticket, &out, &file);
    let resumed = summary["segments_resumed"].as_u64().unwrap() as usize;
    assert!(
        resumed >= done_before,
        "resumed {resumed}, {done_before} were finished"
    );
    assert_eq!(
        summary["segments_fetched"].as_u64().unwrap() as usize,
        32 - resumed
    );
    assert!(!state.exists(), "the state file is removed when done");
}

/// Number of segments the client's resume state records as finished.
fn finished_segments(state: &std::path::Path) -> usize {
    let Ok(text) = std::fs::read_to_string(state) else {
        return 0;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return 0;
    };
    // Finished segments are kept as half-open ranges [start, end).
    json["done"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r[1].as_u64().unwrap() - r[0].as_u64().unwrap()) as usize)
        .sum()
}

#[test]
fn bad_command_line_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();
    std::fs::write(d.join("garbage"), "not a key").unwrap();
    std::fs::write(d.join("bad.ticket"), "{ nope").unwrap();
    let cm = p("cm");
    common::run_ok("cm-coordinator", &["init", "--data-dir", &cm]);
    let key = p("k.key");
    common::run_ok("ccds-client", &["keygen", "--out", &key]);
    let (garbage, bad, missing, out) = (p("garbage"), p("bad.ticket"), p("missing.ticket"), p("o"));
    // (program, arguments separated by spaces; the temporary paths contain none)
    let cases: Vec<(&str, String)> = vec![
        (
            "ccds-client",
            format!("get --key {garbage} --ticket {bad} --out {out}"),
        ),
        (
            "ccds-client",
            format!("get --key {key} --ticket {bad} --out {out}"),
        ),
        (
            "ccds-client",
            format!("get --key {key} --ticket {missing} --out {out}"),
        ),
        ("ccds-client", format!("keygen --out {key}")),
        ("cm-coordinator", format!("nodes --data-dir {cm}")),
        (
            "cm-coordinator",
            format!(
                "publish --data-dir {cm} --partner acme {}",
                p("missing-file")
            ),
        ),
        (
            "cm-coordinator",
            format!("nodes --data-dir {}", p("never-initialised")),
        ),
        ("ccds-node", format!("run --data-dir {}", p("no-node"))),
        (
            "ccds-node",
            format!(
                "init --data-dir {} --coordinator /ip4/127.0.0.1/udp/1/quic-v1",
                p("n")
            ),
        ),
    ];
    for (program, args) in cases {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = run(program, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{program} {args:?} succeeded");
        assert!(
            !stderr.contains("panicked"),
            "{program} {args:?} panicked: {stderr}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{program} {args:?}: expected one line, got: {stderr}"
        );
    }
}

#[test]
fn placement_never_puts_two_fragments_of_a_segment_behind_one_subnet() {
    // Twelve nodes, two behind each of six /24 networks.
    let ips: Vec<String> = (0..12)
        .map(|i| format!("127.0.{}.{}", i / 2 + 1, i % 2 + 1))
        .collect();
    let c = Collective::start_on(&ips, &[]);
    let file = c.make_file("in", 5 << 20, 11);
    let content = c.publish(&file, 4, 2, "1MiB");
    let mut holders: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for (i, node) in c.nodes.iter().enumerate() {
        for entry in std::fs::read_dir(node.dir.join("fragments").join(&content))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let segment = name.split('.').next().unwrap().to_string();
            holders.entry(segment).or_default().push(i / 2);
        }
    }
    assert_eq!(holders.len(), 5, "five segments placed");
    for (segment, subnets) in &holders {
        let distinct: std::collections::HashSet<_> = subnets.iter().collect();
        assert_eq!(distinct.len(), 6, "segment {segment}: subnets {subnets:?}");
    }
    // Eight fragments per segment cannot fit on six networks: refused, with the reason.
    let out = run(
        "cm-coordinator",
        &[
            "publish",
            "--data-dir",
            c.cm(),
            "--partner",
            "acme",
            "--data-shards",
            "4",
            "--parity-shards",
            "4",
            file.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("distinct networks"), "{stderr}");
}

#[test]
fn client_settings_come_from_the_environment_or_a_config_file() {
    let c = Collective::start(3);
    let file = c.make_file("cfg.bin", 300_000, 5);
    let content = c.publish(&file, 2, 1, "128KiB");
    let (key, client) = c.client("cfg");
    let ticket = c.ticket(&content, &client, "1h");
    let get = |out: &str, env: &[(&str, &std::path::Path)], args: &[&str]| {
        let mut cmd = std::process::Command::new(common::bin("ccds-client"));
        cmd.args(args)
            .args(["get", "--no-progress", "--ticket"])
            .arg(&ticket)
            .arg("--out")
            .arg(c.path(out))
            .env_remove("CCDS_CLIENT_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    // The key from the environment.
    let out = get("env.out", &[("CCDS_CLIENT_KEY", &key)], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(file_hash(&c.path("env.out")), file_hash(&file));
    // The key from a config file.
    let config = c.path("client.toml");
    std::fs::write(
        &config,
        format!("key = {:?}\nlimit_rate = \"50MiB\"\n", key),
    )
    .unwrap();
    let out = get("cfg.out", &[], &["--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(file_hash(&c.path("cfg.out")), file_hash(&file));
    // No key anywhere, or a typo in the file: one clear line.
    let out = get("none.out", &[("XDG_CONFIG_HOME", c.tmp.path())], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no client key"), "{err}");
    std::fs::write(&config, "kee = \"x\"\n").unwrap();
    let out = get("typo.out", &[], &["--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown field `kee`"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn the_readme_demo_publishes_and_delivers_a_verified_file() {
    // The README's one command, run on the programs this test run built (no release build).
    let bins = common::bin("cm-coordinator");
    let bins = bins.parent().unwrap();
    let out = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .args(["--bin-dir", bins.to_str().unwrap()])
        .args(["--size", "5MiB", "--segment-size", "1MiB"])
        // Settings for the user's own collective do not leak into the demo's.
        .env(
            "CCDS_DATABASE_URL",
            "postgres://ccds:ccds@127.0.0.1:1/elsewhere",
        )
        .env("CCDS_CLIENT_KEY", "/nonexistent/client.key")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("size        5,242,880 bytes"), "{stdout}");
    assert!(stdout.contains("verified    yes"), "{stdout}");
    // 5 segments of k = 8 fragments each came from the 12 nodes, every byte counted once.
    let per_node: Vec<u64> = stdout
        .lines()
        .skip_while(|l| !l.contains("bytes per node"))
        .skip(1)
        .map(|l| {
            let n = l.split_whitespace().last().unwrap();
            n.replace(',', "").parse().unwrap()
        })
        .collect();
    assert!(per_node.len() >= 8, "{stdout}");
    assert!(per_node.iter().sum::<u64>() >= 5 << 20, "{stdout}");
    // Bad input is refused before anything starts.
    let out = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .args(["--bin-dir", bins.to_str().unwrap(), "--nodes", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("need at least that many nodes"), "{stderr}");
}
