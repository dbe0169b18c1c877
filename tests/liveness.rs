//! Liveness end to end: direct indications (join, leave) act at once; indirect ones (reports,
//! silence) lead to probes, and only failed probes take a node offline.

mod common;

use std::time::{Duration, Instant};

use common::{Collective, wait_for};
use overlay::net::{Net, split_peer};
use overlay::proto::{self, ClientRequest, ClientResponse, ProblemKind, ProblemReport};
use overlay::{ContentId, Identity, PeerId};

/// Reports `node` unreachable to the coordinator, as a client would.
fn report_unreachable(c: &Collective, node: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let me = Identity::generate();
        let net = Net::start(&me, &["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()])
            .await
            .unwrap();
        let (cm, addr) = split_peer(&c.cm_addr.parse().unwrap()).unwrap();
        net.add_addresses(cm, vec![addr]);
        let mut s = net.open(cm, proto::CLIENT).await.unwrap();
        let report = ProblemReport {
            content: ContentId([0; 32]),
            node: node.parse::<PeerId>().unwrap(),
            kind: ProblemKind::Unreachable,
            detail: "test report".into(),
        };
        proto::write_msg(&mut s, &ClientRequest::Problem(report))
            .await
            .unwrap();
        let answer: ClientResponse = proto::read_msg(&mut s, proto::MAX_SMALL_MSG).await.unwrap();
        assert!(matches!(answer, ClientResponse::Ok), "{answer:?}");
    });
}

fn probes(c: &Collective) -> u64 {
    c.http_get("/api/v1/liveness").1["probes"].as_u64().unwrap()
}

#[test]
fn reports_probes_silence_and_leaves() {
    // A heartbeat timeout far above the leave check below, short probe back-off.
    let mut c = Collective::start_with(
        4,
        &[
            "--node-timeout",
            "6s",
            "--probe-interval",
            "300ms",
            "--probe-attempts",
            "3",
        ],
    );

    let content = c.publish(&c.make_file("in", 3 << 20, 5), 2, 2, "1MiB");
    let live = |c: &Collective| {
        let out = common::run_ok(
            "cm-coordinator",
            &["content", "show", &content, "--data-dir", c.cm(), "--json"],
        );
        let show: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(show["segments"], 3);
        assert_eq!(show["target_fragments"], 4);
        show["min_live_fragments"].as_u64().unwrap()
    };
    assert_eq!(live(&c), 4);

    // A false report: the node is probed, answers, and stays online.
    report_unreachable(&c, &c.nodes[0].id);
    wait_for(
        "a probe of the reported node",
        Duration::from_secs(10),
        || probes(&c) >= 1,
    );
    // Longer than every probe of a check together (0.3 s + 0.6 s of back-off, plus timeouts).
    std::thread::sleep(Duration::from_secs(3));
    assert!(c.is_online(0), "a false report took a live node offline");
    assert_eq!(c.http_get("/api/v1/liveness").1["offline_unreachable"], 0);

    // A graceful leave is immediate: well within the heartbeat timeout.
    let start = Instant::now();
    c.terminate_node(3);
    wait_for("the leave to register", Duration::from_secs(3), || {
        !c.is_online(3)
    });
    assert!(start.elapsed() < Duration::from_secs(6));

    // A killed node that someone reports goes offline after its probes fail.
    c.kill_node(1);
    report_unreachable(&c, &c.nodes[1].id);
    wait_for(
        "the reported dead node to go offline",
        Duration::from_secs(15),
        || !c.is_online(1),
    );

    // A killed node nobody reports goes offline once silent past the timeout and probed.
    c.kill_node(2);
    wait_for(
        "the silent dead node to go offline",
        Duration::from_secs(30),
        || !c.is_online(2),
    );
    assert!(c.is_online(0));
    assert_eq!(c.http_get("/api/v1/liveness").1["offline_unreachable"], 2);
    assert_eq!(live(&c), 1);
}

#[test]
fn nodes_show_history_bandwidth_and_group() {
    let c = Collective::start(4);
    let file = c.make_file("clip.bin", 1 << 20, 9);
    let content = c.publish(&file, 2, 2, "512KiB");
    let (key, client) = c.client("viewer");
    let ticket = c.ticket(&content, &client, "1h");
    c.get_verified(&key, &ticket, &c.path("clip.out"), &file);
    // Serving 256 KiB fragments gives the nodes an upload rate, reported with the heartbeat.
    wait_for(
        "a node to report its upload rate",
        Duration::from_secs(20),
        || {
            c.nodes_json()
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["reported_upload_bps"].as_u64().unwrap_or(0) > 0)
        },
    );
    for n in c.nodes_json().as_array().unwrap() {
        assert_eq!(n["online"], true);
        let a5 = n["availability_5d"].as_f64().unwrap();
        assert!(a5 > 0.0 && a5 <= 1.0, "{n}");
        assert!(n["availability_30d"].as_f64().unwrap() <= a5, "{n}");
        assert_eq!(n["group"], "new", "minutes-old nodes are not vetted: {n}");
        assert_eq!(n["location"], "127.0");
        assert!(n["boot_time"].as_u64().unwrap() > 0);
    }
    let table = common::run_ok("cm-coordinator", &["nodes", "--data-dir", c.cm()]);
    let header = table.lines().next().unwrap();
    for column in ["AV-5D", "AV-30D", "HOURS", "UPLOAD", "GROUP", "LOCATION"] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(table.lines().count(), 5);
}
