//! The coordinator's HTTP API with real processes: scoped tokens and their refusals, a
//! partner publishing by streaming upload and issuing a ticket over HTTP that a client then
//! downloads with, sales records and demand hints, the OpenAPI document and the metrics.

mod common;

use common::{Collective, file_hash, http, run, run_ok};

/// `cm-coordinator token create` with `args`; returns the secret.
fn token(c: &Collective, args: &[&str]) -> String {
    let mut all = vec!["token", "create", "--data-dir", c.cm()];
    all.extend_from_slice(args);
    run_ok("cm-coordinator", &all)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn tokens_are_refused_outside_their_scope_and_partner() {
    let c = Collective::start(3);
    run_ok(
        "cm-coordinator",
        &["partner", "add", "globex", "--data-dir", c.cm()],
    );
    let file = c.make_file("acme.bin", 100_000, 1);
    let acme_content = c.publish(&file, 2, 1, "64KiB");
    let acme = token(&c, &["--label", "acme pipeline", "--partner", "acme"]);
    let globex = token(&c, &["--label", "globex", "--partner", "globex"]);
    let acme_publish_only = token(
        &c,
        &[
            "--label",
            "uploader",
            "--partner",
            "acme",
            "--scope",
            "partner:publish",
        ],
    );
    let reader = token(&c, &["--label", "grafana", "--scope", "operator:read"]);
    let addr = c.http_addr();
    let get = |path: &str, t: Option<&str>| {
        let (status, headers, body) = http(&addr, "GET", path, t, None);
        (status, headers, json(&body))
    };
    let post = |path: &str, t: Option<&str>, body: serde_json::Value| {
        let bytes = serde_json::to_vec(&body).unwrap();
        let (status, _, body) = http(&addr, "POST", path, t, Some(("application/json", &bytes)));
        (status, json(&body))
    };

    // No token, a malformed one, an unknown one: 401 with a challenge and a clear reason.
    let (status, headers, body) = get("/api/v1/nodes", None);
    assert_eq!(status, 401);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer"))
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing API token")
    );
    let (status, _, body) = get("/api/v1/nodes", Some("ccds_0000"));
    assert_eq!(status, 401);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown or revoked")
    );

    // A partner token cannot read operator views; an operator reader can, but cannot act.
    let (status, _, body) = get("/api/v1/nodes", Some(&acme));
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap().contains("operator:read"),
        "{body}"
    );
    let (status, _, nodes) = get("/api/v1/nodes", Some(&reader));
    assert_eq!(status, 200);
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    let (status, body) = post("/api/v1/reconcile", Some(&reader), serde_json::json!({}));
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("`admin`"));

    // A partner token acts for its own partner only.
    let ticket_req = |content: &str| serde_json::json!({ "content": content, "client": c.cm_id(), "expires_secs": 3600 });
    let (status, body) = post(
        "/api/v1/partners/acme/tickets",
        Some(&globex),
        ticket_req(&acme_content),
    );
    assert_eq!(status, 403);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("partner `globex`, not `acme`")
    );
    // ... and never reaches another partner's content through its own path.
    let (status, body) = post(
        "/api/v1/partners/globex/tickets",
        Some(&globex),
        ticket_req(&acme_content),
    );
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = get(
        &format!("/api/v1/partners/globex/contents/{acme_content}"),
        Some(&globex),
    );
    assert_eq!(status, 404);
    let (status, _, list) = get("/api/v1/partners/globex/contents", Some(&globex));
    assert_eq!((status, list), (200, serde_json::json!([])));
    // A token without the tickets scope cannot issue one, even for its own partner.
    let (status, body) = post(
        "/api/v1/partners/acme/tickets",
        Some(&acme_publish_only),
        ticket_req(&acme_content),
    );
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("partner:tickets"));
    // The right token does.
    let (status, file) = post(
        "/api/v1/partners/acme/tickets",
        Some(&acme),
        ticket_req(&acme_content),
    );
    assert_eq!(status, 200, "{file}");
    assert!(file["content_key"].is_array() || file["content_key"].is_string());

    // Token management is for admins; a revoked token stops working at once.
    let (status, _) = post(
        "/api/v1/tokens",
        Some(&reader),
        serde_json::json!({ "label": "x", "scopes": ["admin"] }),
    );
    assert_eq!(status, 403);
    let list = run_ok(
        "cm-coordinator",
        &["token", "list", "--data-dir", c.cm(), "--json"],
    );
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let reader_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "grafana")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        list.to_string().find("ccds_").is_none(),
        "secrets are never listed"
    );
    run_ok(
        "cm-coordinator",
        &["token", "revoke", &reader_id, "--data-dir", c.cm()],
    );
    let (status, _, _) = get("/api/v1/nodes", Some(&reader));
    assert_eq!(status, 401);
    // Bad token requests are explained.
    let out = run(
        "cm-coordinator",
        &[
            "token",
            "create",
            "--data-dir",
            c.cm(),
            "--label",
            "x",
            "--scope",
            "partner:read",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need a partner"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_partner_publishes_and_sells_over_http() {
    let c = Collective::start(4);
    let acme = token(&c, &["--label", "acme", "--partner", "acme"]);
    let addr = c.http_addr();
    let file = c.make_file("movie.bin", 3 << 20, 7);
    let bytes = std::fs::read(&file).unwrap();

    // Publish by streaming the file's bytes.
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/v1/partners/acme/contents?name=movie.bin&data_shards=2&parity_shards=2&segment_size=1048576",
        Some(&acme),
        Some(("application/octet-stream", &bytes)),
    );
    let published = json(&body);
    assert_eq!(status, 201, "{published}");
    let content = published["content"].as_str().unwrap().to_string();
    assert_eq!(published["size"], bytes.len());
    assert_eq!(published["segments"], 3);
    // No partial upload is left behind.
    let leftovers = std::fs::read_dir(c.cm_dir.join("uploads")).unwrap().count();
    assert_eq!(leftovers, 0);

    // The partner sees it, with its name and health.
    let (status, _, list) = http(
        &addr,
        "GET",
        "/api/v1/partners/acme/contents",
        Some(&acme),
        None,
    );
    let list = json(&list);
    assert_eq!(status, 200);
    assert_eq!(list[0]["id"], content.as_str());
    assert_eq!(list[0]["name"], "movie.bin");
    let (status, _, health) = http(
        &addr,
        "GET",
        &format!("/api/v1/partners/acme/contents/{content}"),
        Some(&acme),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(json(&health)["min_placed_fragments"], 4);

    // A ticket over HTTP is a ticket file a client downloads with, byte for byte.
    let (key, client) = c.client("buyer");
    let req = serde_json::to_vec(&serde_json::json!({
        "content": content, "client": client, "expires_secs": 3600, "price": 0.5
    }))
    .unwrap();
    let (status, _, ticket) = http(
        &addr,
        "POST",
        "/api/v1/partners/acme/tickets",
        Some(&acme),
        Some(("application/json", &req)),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&ticket));
    let ticket_path = c.path("buyer.ticket");
    std::fs::write(&ticket_path, &ticket).unwrap();
    let out = c.path("movie.out");
    c.get_verified(&key, &ticket_path, &out, &file);
    assert_eq!(file_hash(&out), file_hash(&file));

    // A demand hint for its content.
    let req = serde_json::to_vec(&serde_json::json!({ "content": content, "level": 5 })).unwrap();
    let (status, _, hint) = http(
        &addr,
        "POST",
        "/api/v1/partners/acme/demand",
        Some(&acme),
        Some(("application/json", &req)),
    );
    assert_eq!(status, 200);
    assert_eq!(json(&hint)["level"], 5);

    // Sales records of tickets signed offline: counted once.
    let record_file = c.path("sales.jsonl");
    let (_, offline_client) = c.client("offline");
    run_ok(
        "cm-coordinator",
        &[
            "ticket",
            "--data-dir",
            c.cm(),
            "--partner",
            "acme",
            "--content",
            &content,
            "--client",
            &offline_client,
            "--out",
            c.path("offline.ticket").to_str().unwrap(),
            "--offline",
            "--sales-record",
            record_file.to_str().unwrap(),
        ],
    );
    let line = std::fs::read_to_string(&record_file).unwrap();
    let records = format!("[{}]", line.trim());
    for expected_added in [1, 0] {
        let (status, _, answer) = http(
            &addr,
            "POST",
            "/api/v1/partners/acme/sales",
            Some(&acme),
            Some(("application/json", records.as_bytes())),
        );
        let answer = json(&answer);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["added"], expected_added, "{answer}");
    }

    // Malformed input is refused with a reason, and nothing is published.
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/v1/partners/acme/contents?data_shards=0",
        Some(&acme),
        Some(("application/octet-stream", b"abc")),
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = http(
        &addr,
        "POST",
        "/api/v1/partners/acme/tickets",
        Some(&acme),
        Some(("application/json", b"{\"content\": 5")),
    );
    assert!(
        (400..500).contains(&status),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (_, _, list) = http(
        &addr,
        "GET",
        "/api/v1/partners/acme/contents",
        Some(&acme),
        None,
    );
    assert_eq!(json(&list).as_array().unwrap().len(), 1);
}

#[test]
fn openapi_document_and_metrics_are_served() {
    let c = Collective::start(2);
    let addr = c.http_addr();
    let (status, _, doc) = http(&addr, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    let doc = json(&doc);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/partners/{partner}/contents",
        "/api/v1/ledger",
        "/api/v1/tokens",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }

    let scrape = || {
        let (status, headers, body) = http(&addr, "GET", "/metrics", None, None);
        assert_eq!(status, 200);
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v.contains("openmetrics"))
        );
        String::from_utf8(body).unwrap()
    };
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = scrape();
    assert_eq!(value(&before, "ccds_nodes_online"), 2.0);
    assert_eq!(value(&before, "ccds_contents"), 0.0);
    let file = c.make_file("m.bin", 200_000, 3);
    c.publish(&file, 1, 1, "64KiB");
    let after = scrape();
    assert_eq!(value(&after, "ccds_contents"), 1.0);
    assert_eq!(value(&after, "ccds_published_bytes"), 200_000.0);
    assert!(value(&after, "ccds_capacity_bytes") > 0.0);
    assert!(after.contains("ccds_http_requests_total{method=\"POST\",status=\"2xx\"}"));
    assert!(after.trim_end().ends_with("# EOF"));
}

#[test]
fn environment_variables_override_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cm");
    let dir = dir.to_str().unwrap();
    run_ok("cm-coordinator", &["init", "--data-dir", dir]);
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, "probe_attempts = 3\n").unwrap();
    let mut child = std::process::Command::new(common::bin("cm-coordinator"))
        .args([
            "run",
            "--data-dir",
            dir,
            "--config",
            config.to_str().unwrap(),
        ])
        .env("CCDS_CM_PROBE_ATTEMPTS", "several")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A coordinator that ignored the variable would run until killed.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the coordinator started despite an invalid CCDS_CM_PROBE_ATTEMPTS");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'several'") && err.contains("--probe-attempts"),
        "{err}"
    );
}

#[test]
fn logs_can_be_json_lines() {
    let c = Collective::start_with(1, &["--log-format", "json"]);
    let log = std::fs::read_to_string(c.tmp.path().join("cm.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "coordinator running" && l["level"] == "INFO"),
        "{log}"
    );
}
