//! `cm-coordinator db copy` end to end: a coordinator that ran on SQLite, with nodes and a
//! published content, is stopped, its database copied into a new PostgreSQL database, and
//! started on PostgreSQL: the same nodes hold the same fragments, and a download works.
//!
//! Needs a PostgreSQL server where the test may create a database: `CCDS_TEST_POSTGRES_URL`
//! (`.ci/run` sets one up). Without it the test says it was skipped — and fails under `CI`.

mod common;

use std::time::Duration;

use common::postgres::{Database, block_on};
use common::{Collective, run, wait_for};
use sqlx::Connection;

const NODES: usize = 4;

#[test]
fn a_coordinator_moves_from_sqlite_to_postgres_with_db_copy() {
    let Some(db) = Database::create() else {
        return;
    };
    // The coordinator comes back on the same address: its nodes find it again.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("/ip4/127.0.0.1/udp/{port}/quic-v1");
    let mut c = Collective::start_with(NODES, &["--listen", &listen]);
    let file = c.make_file("movie", 300_000, 7);
    let content = c.publish(&file, 2, 2, "64KiB");
    let nodes = c.nodes_json();
    let shown = c.content_show(&content);
    assert!(
        shown["min_placed_fragments"].as_u64().unwrap() >= 4,
        "{shown}"
    );
    let copy = |c: &Collective| {
        run(
            "cm-coordinator",
            &[
                "db",
                "copy",
                "--data-dir",
                c.cm(),
                "--to",
                &db.url,
                "--json",
            ],
        )
    };

    // Not while the coordinator runs: it would go on writing to SQLite.
    let out = copy(&c);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("a coordinator is running"), "{error}");

    c.stop_cm();
    let out = copy(&c);
    assert!(
        out.status.success(),
        "db copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = |table: &str| {
        summary["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap_or_else(|| panic!("no table {table} in {summary}"))["rows"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(rows("nodes"), NODES as u64, "{summary}");
    assert_eq!(rows("contents"), 1, "{summary}");
    assert!(rows("placements") >= 20, "{summary}");
    assert!(rows("node_sessions") >= NODES as u64, "{summary}");

    // Once is all: the filled database is refused, in one line.
    let out = copy(&c);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    let last = error.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("cm-coordinator: the target database already holds data"),
        "{error}"
    );

    // On PostgreSQL: the same nodes with the same fragments, the same content, a download.
    c.restart_cm(&["--listen", &listen, "--database-url", &db.url]);
    c.wait_online(NODES);
    let ids = |nodes: &serde_json::Value| {
        let mut ids: Vec<(String, u64)> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let id = n["id"].as_str().unwrap().to_string();
                (id, n["fragments"].as_u64().unwrap())
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&c.nodes_json()), ids(&nodes));
    wait_for("the content's health", Duration::from_secs(30), || {
        c.content_show(&content) == shown
    });
    let (key, client) = c.client("alice");
    let ticket = c.ticket(&content, &client, "1h");
    c.get_verified(&key, &ticket, &c.path("movie.out"), &file);
    // The ticket was recorded in PostgreSQL: the coordinator runs on it.
    let tickets: i64 = block_on(async {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM tickets")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        n
    });
    assert_eq!(tickets, 1);
}
