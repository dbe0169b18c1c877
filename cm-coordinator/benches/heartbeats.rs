//! What the database costs per heartbeat: 20,000 nodes' heartbeats written one transaction each
//! (how every heartbeat used to reach the database) next to the same heartbeats written as one
//! batch ([`cm_coordinator::seen`]), on SQLite and, when `CCDS_BENCH_POSTGRES_URL` names a
//! server where databases may be created, on PostgreSQL (a fresh database, dropped after).
//!
//! `cargo bench -p cm-coordinator --bench heartbeats`

use std::str::FromStr;

use cm_coordinator::db::Db;
use cm_coordinator::seen::Seen;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use libp2p::PeerId;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

const NODES: usize = 20_000;

/// The registered nodes and a round of their heartbeats at `at`.
fn round(nodes: &[PeerId], at: u64) -> Vec<(PeerId, Seen)> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let seen = Seen {
                used: (i as u64) << 20,
                at,
                upload_bps: 1 << 20,
            };
            (*n, seen)
        })
        .collect()
}

fn bench_engine(c: &mut Criterion, rt: &tokio::runtime::Runtime, engine: &str, db: &Db) {
    let nodes: Vec<PeerId> = (0..NODES).map(|_| PeerId::random()).collect();
    rt.block_on(async {
        for n in &nodes {
            db.register_node(n, 1, 1).await.unwrap();
        }
    });
    let mut g = c.benchmark_group(format!("heartbeats_{engine}_{NODES}_nodes"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(NODES as u64));
    let mut at = 1_000u64;
    g.bench_function("one_transaction_each", |b| {
        b.iter(|| {
            at += 1;
            rt.block_on(async {
                for beat in round(&nodes, at) {
                    db.nodes_seen(std::slice::from_ref(&beat)).await.unwrap();
                }
            })
        })
    });
    g.bench_function("one_batch", |b| {
        b.iter(|| {
            at += 1;
            rt.block_on(db.nodes_seen(&round(&nodes, at))).unwrap();
        })
    });
    g.finish();
}

fn heartbeats(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = rt
        .block_on(Db::open(None, &dir.path().join("cm.db")))
        .unwrap();
    bench_engine(c, &rt, "sqlite", &db);

    let Ok(url) = std::env::var("CCDS_BENCH_POSTGRES_URL") else {
        eprintln!("PostgreSQL skipped: set CCDS_BENCH_POSTGRES_URL to a server URL");
        return;
    };
    let server = PgConnectOptions::from_str(&url).expect("CCDS_BENCH_POSTGRES_URL");
    let name = format!("ccds_bench_{:016x}", rand::random::<u64>());
    let admin = |sql: String| {
        let server = server.clone();
        rt.block_on(async move {
            let mut conn = server.connect().await.unwrap();
            sqlx::query(&sql).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        })
    };
    admin(format!("CREATE DATABASE {name}"));
    let pg_url = format!(
        "{}/{name}",
        url.rsplit_once('/').expect("a URL with a path").0
    );
    let db = rt
        .block_on(Db::open(Some(&pg_url), &dir.path().join("unused.db")))
        .unwrap();
    bench_engine(c, &rt, "postgres", &db);
    rt.block_on(db.close());
    admin(format!("DROP DATABASE {name} WITH (FORCE)"));
}

criterion_group!(benches, heartbeats);
criterion_main!(benches);
