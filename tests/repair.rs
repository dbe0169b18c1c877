//! Repair end to end: lost fragments are rebuilt on new nodes after the repair delay, a node
//! back before the delay costs nothing, and a node back after it has its surplus copies deleted.

mod common;

use std::time::Duration;

use common::{Collective, wait_for};

/// Fast liveness and repair: a silent node is checked after 3 s, probed twice 0.3 s apart.
const FAST: &[&str] = &[
    "--node-timeout",
    "3s",
    "--probe-interval",
    "300ms",
    "--probe-attempts",
    "2",
    "--repair-threshold",
    "1",
    "--repair-interval",
    "300ms",
];

fn show_u64(c: &Collective, content: &str, key: &str) -> u64 {
    c.content_show(content)[key]
        .as_u64()
        .unwrap_or_else(|| panic!("content show has no {key}"))
}

#[test]
fn a_lost_node_is_rebuilt_elsewhere_and_its_copies_deleted_when_it_returns() {
    // The settings come from a TOML file, as an operator keeps them; the flag wins over the
    // file's hour-long delay (with either default this test would time out).
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("cm.toml");
    std::fs::write(
        &conf,
        "node_timeout = \"3s\"\nprobe_interval = \"300ms\"\nprobe_attempts = 2\n\
         repair_threshold = 1\nrepair_interval = \"300ms\"\nrepair_delay = \"1h\"\n",
    )
    .unwrap();
    let mut c = Collective::start_with(
        8,
        &["--config", conf.to_str().unwrap(), "--repair-delay", "1s"],
    );
    let file = c.make_file("movie.bin", 300_000, 7);
    // k=2, m=2, 40 kB segments: 8 segments of 4 fragments on 8 nodes.
    let content = c.publish(&file, 2, 2, "40KiB");
    assert_eq!(show_u64(&c, &content, "min_live_fragments"), 4);
    let victim = (0..8).max_by_key(|&i| c.fragments_on(i, &content)).unwrap();
    let held = c.fragments_on(victim, &content);
    assert!(held > 0);

    c.kill_node(victim);
    wait_for(
        "the dead node to be rebuilt elsewhere",
        Duration::from_secs(60),
        || {
            let show = c.content_show(&content);
            show["repaired_fragments"].as_u64() == Some(held as u64)
                && show["min_live_fragments"] == 4
                && show["repairs_pending"] == 0
        },
    );
    assert!(!c.is_online(victim));
    let repairs = c.repairs();
    let records = repairs["records"].as_array().unwrap();
    assert_eq!(records.len(), held);
    let victim_id = c.nodes[victim].id.clone();
    for r in records {
        assert_eq!(r["kind"], "repair");
        assert_eq!(r["previous"], victim_id.as_str());
        assert_ne!(r["node"], victim_id.as_str());
        assert!(r["bytes_stored"].as_u64().unwrap() > 0);
    }
    let fetched: u64 = records
        .iter()
        .map(|r| r["bytes_fetched"].as_u64().unwrap())
        .sum();
    let stored: u64 = records
        .iter()
        .map(|r| r["bytes_stored"].as_u64().unwrap())
        .sum();
    println!("repair traffic: {held} fragments, {fetched} bytes fetched, {stored} bytes stored");
    // k fragments fetched per segment rebuilt, one fragment stored per fragment lost.
    assert_eq!(fetched, 2 * stored);

    // The content downloads from the new layout, byte for byte.
    let (key, client) = c.client("alice");
    let ticket = c.ticket(&content, &client, "1h");
    c.get_verified(&key, &ticket, &c.path("movie.out"), &file);

    // Back after its fragments were rebuilt elsewhere: its copies are surplus and deleted.
    c.restart_node(victim);
    wait_for(
        "the surplus copies to be deleted",
        Duration::from_secs(30),
        || c.fragments_on(victim, &content) == 0,
    );
    assert_eq!(show_u64(&c, &content, "min_live_fragments"), 4);
    let nodes = c.nodes_json();
    let entry = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == victim_id.as_str())
        .unwrap();
    assert_eq!(
        entry["fragments"], 0,
        "no placement left on the returned node"
    );
}

#[test]
fn a_node_back_before_the_repair_delay_costs_nothing() {
    let mut args = FAST.to_vec();
    args.extend(["--repair-delay", "30s"]);
    let mut c = Collective::start_with(6, &args);
    let file = c.make_file("song.bin", 100_000, 3);
    let content = c.publish(&file, 2, 2, "20KiB");
    let victim = (0..6).max_by_key(|&i| c.fragments_on(i, &content)).unwrap();
    let held = c.fragments_on(victim, &content);
    c.terminate_node(victim);
    wait_for("the leave", Duration::from_secs(10), || {
        !c.is_online(victim)
    });
    assert_eq!(show_u64(&c, &content, "min_live_fragments"), 3);
    // Several repair checks run while it is away; none may act within the delay.
    std::thread::sleep(Duration::from_secs(2));
    c.restart_node(victim);
    wait_for("the node to be back", Duration::from_secs(10), || {
        c.is_online(victim)
    });
    std::thread::sleep(Duration::from_secs(2));
    let show = c.content_show(&content);
    assert_eq!(show["min_live_fragments"], 4);
    assert_eq!(show["repaired_fragments"], 0);
    assert_eq!(show["repairs_pending"], 0);
    assert_eq!(
        c.fragments_on(victim, &content),
        held,
        "it kept its fragments"
    );
}
