//! Churn soak: sixteen nodes, a seeded schedule of SIGKILLs and restarts for a while, clients
//! downloading all along. Every download must be byte-identical, and once churn stops every
//! segment must be back to full redundancy within a bounded time.
//!
//! `CCDS_SOAK_SECS` sets how long the churn lasts (default 90 s) and `CCDS_SOAK_SEED` the seed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Collective, wait_for};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NODES: usize = 16;
/// Never more nodes down at once than this: fewer than m, so data is never lost.
const MAX_DOWN: usize = 3;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn churn_soak_keeps_every_download_whole_and_restores_redundancy() {
    let soak = Duration::from_secs(env_u64("CCDS_SOAK_SECS", 90));
    let seed = env_u64("CCDS_SOAK_SEED", 20261125);
    println!("churn soak: {NODES} nodes, {soak:?}, seed {seed}");
    let mut c = Collective::start_with(
        NODES,
        &[
            "--node-timeout",
            "3s",
            "--probe-interval",
            "300ms",
            "--probe-attempts",
            "2",
            "--repair-delay",
            "2s",
            "--repair-threshold",
            "3",
            "--repair-interval",
            "500ms",
        ],
    );
    // k=4, m=4: 8 fragments per segment on 8 of 16 nodes; 12 segments.
    let file = c.make_file("soak.bin", 3 << 20, 5);
    let content = c.publish(&file, 4, 4, "256KiB");
    let target = c.content_show(&content)["target_fragments"]
        .as_u64()
        .unwrap();
    assert_eq!(target, 8);

    // Clients download over and over from another thread while nodes churn.
    let (key, client) = c.client("soaker");
    // Many downloads under one ticket: room for all of them.
    let ticket = c.ticket_with(&content, &client, "1h", &["--allowance", "100GiB"]);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let downloader = {
        let (stop, done) = (stop.clone(), done.clone());
        let cm = c.cm_dir.clone();
        let (file, out) = (file.clone(), c.path("soak.out"));
        std::thread::spawn(move || {
            let original = std::fs::read(&file).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let _ = std::fs::remove_file(&out);
                let status = std::process::Command::new(common::bin("ccds-client"))
                    .args(["get", "--key", key.to_str().unwrap()])
                    .args(["--ticket", ticket.to_str().unwrap()])
                    .args(["--out", out.to_str().unwrap(), "--no-progress"])
                    .env("RUST_LOG", "warn")
                    .output()
                    .unwrap();
                assert!(
                    status.status.success(),
                    "a download failed during churn (cm {}): {}",
                    cm.display(),
                    String::from_utf8_lossy(&status.stderr)
                );
                assert!(
                    std::fs::read(&out).unwrap() == original,
                    "a download was not byte-identical"
                );
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    let (mut kills, mut restarts) = (0, 0);
    while start.elapsed() < soak {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2500)));
        let down: Vec<usize> = (0..NODES).filter(|&i| c.nodes[i].child.is_none()).collect();
        let restart = !down.is_empty() && (down.len() >= MAX_DOWN || rng.random_bool(0.4));
        if restart {
            let i = down[rng.random_range(0..down.len())];
            c.restart_node(i);
            restarts += 1;
        } else {
            let up: Vec<usize> = (0..NODES).filter(|&i| c.nodes[i].child.is_some()).collect();
            let i = up[rng.random_range(0..up.len())];
            c.kill_node(i);
            kills += 1;
        }
        assert!(!downloader.is_finished(), "the downloader stopped");
    }
    stop.store(true, Ordering::SeqCst);
    downloader
        .join()
        .expect("every download during churn succeeded");
    let downloads = done.load(Ordering::SeqCst);
    println!("churn: {kills} kills, {restarts} restarts, {downloads} verified downloads");
    assert!(downloads > 0);

    // Churn stops with some nodes still down: repair alone must restore full redundancy on the
    // nodes left, within a bounded time.
    let down: Vec<usize> = (0..NODES).filter(|&i| c.nodes[i].child.is_none()).collect();
    println!("churn stopped with {} nodes down", down.len());
    let settle = Instant::now();
    wait_for(
        "full redundancy after churn",
        Duration::from_secs(90),
        || {
            let show = c.content_show(&content);
            show["min_live_fragments"].as_u64() == Some(target) && show["repairs_pending"] == 0
        },
    );
    println!(
        "back to full redundancy {:?} after churn stopped",
        settle.elapsed()
    );

    let repairs = c.repairs();
    let records = repairs["records"].as_array().unwrap();
    let sum = |k: &str| -> u64 { records.iter().map(|r| r[k].as_u64().unwrap()).sum() };
    println!(
        "repair traffic: {} fragments rebuilt, {} bytes fetched, {} bytes stored (content {} bytes)",
        records.len(),
        sum("bytes_fetched"),
        sum("bytes_stored"),
        std::fs::metadata(&file).unwrap().len()
    );
    // The missing nodes return (their replaced copies are deleted) and the content still
    // downloads whole from the settled layout.
    for i in down {
        c.restart_node(i);
    }
    let (key, client) = c.client("after");
    let ticket = c.ticket(&content, &client, "1h");
    c.get_verified(&key, &ticket, &c.path("after.out"), &file);
}
