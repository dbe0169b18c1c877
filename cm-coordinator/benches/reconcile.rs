//! Reconciliation at scale: one `accounting::reconcile` run over 10,000,000 served claims
//! (each with a real client-signed receipt) from 100,000 nodes on SQLite — wall time and peak
//! memory. Goal: under 60 s and under 2 GiB on a 2-core machine.
//!
//!     cargo bench -p cm-coordinator --bench reconcile
//!
//! The world is honest: every claim is a (ticket, node) pair where the node holds fragments of
//! the ticket's content, the bytes are what those fragments explain, and the receipt is signed
//! by the ticket's client over exactly the body the driver rebuilds. So the run must end with
//! every claim confirmed and no verdict; anything else means the seeding (or the driver) is wrong.
//!
//! Seeding (minutes: 10 M Ed25519 signatures) writes `CCDS_BENCH_DB` (default
//! `/var/tmp/ccds-bench/reconcile.db`) and a `.meta.json` beside it; a later run reuses the file
//! when the sizes match. Each measurement works on a fresh copy (`…-run.db`), because a run
//! settles the dirty tickets. The measured runs happen in a child process (this binary re-executed)
//! so that the reported peak RSS (VmHWM) is the run's, not the seeding's.
//!
//! Sizes (environment): `CCDS_BENCH_RECEIPTS` (10,000,000), `CCDS_BENCH_NODES` (100,000),
//! `CCDS_BENCH_TICKETS` (receipts / 10), `CCDS_BENCH_CONTENTS` (1,000), `CCDS_BENCH_HOLDERS`
//! (nodes per content, 100, at most 120), `CCDS_BENCH_CLIENTS` (client keys, 4,096). A quick
//! run: `CCDS_BENCH_RECEIPTS=100000 CCDS_BENCH_DB=/var/tmp/ccds-bench/quick.db cargo bench …`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Instant;

use cm_coordinator::accounting::{AccountingConfig, reconcile};
use cm_coordinator::db::Db;
use overlay::identity::{Domain, encode};
use overlay::manifest::{Cipher, Manifest};
use overlay::receipt::ReceiptBody;
use overlay::report::HeldContent;
use overlay::{ContentId, Identity, PeerId, Signed};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

/// Bump when the seeded world changes, so that an old file is not reused.
const FORMAT: u32 = 2;
/// The seeded world's present, Unix seconds.
const T0: u64 = 1_750_000_000;
const DAY: u64 = 86_400;
const SEGMENTS: u64 = 10;
const SEGMENT_SIZE: u32 = 1 << 20;
const K: u8 = 8;
const M: u8 = 4;
/// Fragments per content.
const FRAGMENTS: u64 = SEGMENTS * (K as u64 + M as u64);
/// Tickets per seeding chunk (one transaction, one unit of signing work).
const CHUNK_TICKETS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Sizes {
    receipts: u64,
    nodes: u64,
    tickets: u64,
    contents: u64,
    holders: u64,
    clients: u64,
}

impl Sizes {
    fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str, default: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .replace('_', "")
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{name}={v}: expected a number ({e})")),
                Err(_) => Ok(default),
            }
        };
        let receipts = var("CCDS_BENCH_RECEIPTS", 10_000_000)?;
        let s = Self {
            receipts,
            nodes: var("CCDS_BENCH_NODES", 100_000)?,
            tickets: var("CCDS_BENCH_TICKETS", receipts.div_ceil(10))?,
            contents: var("CCDS_BENCH_CONTENTS", 1_000)?,
            holders: var("CCDS_BENCH_HOLDERS", 100)?,
            clients: var("CCDS_BENCH_CLIENTS", 4_096)?,
        };
        anyhow::ensure!(
            s.receipts > 0 && s.tickets > 0 && s.contents > 0 && s.clients > 0,
            "every size must be positive: {s:?}"
        );
        anyhow::ensure!(
            (1..=FRAGMENTS).contains(&s.holders) && s.holders <= s.nodes,
            "holders per content must lie in 1..={FRAGMENTS} and not exceed the nodes: {s:?}"
        );
        anyhow::ensure!(
            s.receipts.div_ceil(s.tickets) <= s.holders,
            "{} receipts per ticket need as many distinct holders per content, only {} configured",
            s.receipts.div_ceil(s.tickets),
            s.holders
        );
        Ok(s)
    }

    /// Claims under ticket `t`: the receipts spread as evenly as they go.
    fn claims_of(&self, t: u64) -> u64 {
        self.receipts / self.tickets + u64::from(t < self.receipts % self.tickets)
    }

    /// The `j`-th holder of content `c`.
    fn holder(&self, c: u64, j: u64) -> u64 {
        (c * self.holders + j) % self.nodes
    }

    /// Fragments the `j`-th holder of a content holds: fragment `f` goes to holder `f % holders`.
    fn held_by_holder(&self, j: u64) -> u64 {
        (FRAGMENTS - j).div_ceil(self.holders)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    sizes: Sizes,
    now: u64,
    seed_secs: f64,
}

/// A stable 64-bit mix (splitmix64) for the world's deterministic choices.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn identity(kind: &str, i: u64) -> Identity {
    let mut h = blake3::Hasher::new();
    h.update(b"ccds-bench-reconcile").update(kind.as_bytes());
    h.update(&i.to_le_bytes());
    Identity::from_secret(*h.finalize().as_bytes())
}

fn ticket_id(t: u64) -> [u8; 16] {
    // A fixed prefix and the index big-endian: hex order is index order, so claims go into the
    // (ticket, node) index in order while seeding.
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&0x5eed_b0a7_c0de_0001u64.to_be_bytes());
    id[8..].copy_from_slice(&t.to_be_bytes());
    id
}

fn ticket_issued_at(t: u64) -> u64 {
    T0 - DAY + mix(t) % DAY
}

fn manifest(c: u64) -> Manifest {
    Manifest {
        size: SEGMENTS * u64::from(SEGMENT_SIZE),
        segment_size: SEGMENT_SIZE,
        data_shards: K,
        parity_shards: M,
        spare_shards: 0,
        cipher: Cipher::Aes256Gcm,
        created: T0 - 30 * DAY + c,
        hashes: (0..FRAGMENTS)
            .map(|f| *blake3::hash(&(c << 16 | f).to_le_bytes()).as_bytes())
            .collect(),
    }
}

/// One seeded claim as the signer hands it to the writer.
struct ClaimSeed {
    ticket: u64,
    node: u32,
    fragments: u8,
    signature: [u8; 64],
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        let path = PathBuf::from(&args[at + 1]);
        let now: u64 = args[at + 2].parse()?;
        return child(&path, now);
    }
    let sizes = Sizes::from_env()?;
    let path = std::env::var_os("CCDS_BENCH_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/ccds-bench/reconcile.db"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    println!("reconciliation benchmark: {sizes:?}");
    println!("database: {}", path.display());

    let meta_path = with_suffix(&path, ".meta.json");
    let reusable = std::fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
        .filter(|m| m.format == FORMAT && m.sizes == sizes && path.exists());
    let meta = match reusable {
        Some(meta) => {
            println!(
                "reusing the seeded database (seeded in {:.1} s)",
                meta.seed_secs
            );
            meta
        }
        None => {
            remove_db(&path)?;
            let _ = std::fs::remove_file(&meta_path);
            let started = Instant::now();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(seed(&path, &sizes))?;
            let meta = Meta {
                format: FORMAT,
                sizes,
                now: T0 + 3_600,
                seed_secs: started.elapsed().as_secs_f64(),
            };
            std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta)?)?;
            println!("seeded in {:.1} s", meta.seed_secs);
            meta
        }
    };
    let db_bytes = std::fs::metadata(&path)?.len();
    println!("database size: {:.2} GiB", gib(db_bytes));

    // Work on a copy: a run settles the dirty tickets.
    let run_path = with_suffix(&path, "-run.db");
    remove_db(&run_path)?;
    let copied = Instant::now();
    std::fs::copy(&path, &run_path)?;
    println!(
        "copied to {} in {:.1} s",
        run_path.display(),
        copied.elapsed().as_secs_f64()
    );

    let verify_us = verify_baseline();
    let first = run_child(&run_path, meta.now)?;
    let second = run_child(&run_path, meta.now + 3_600)?;
    remove_db(&run_path)?;

    check(&sizes, &first)?;
    report(&sizes, &meta, db_bytes, verify_us, &first, &second);
    Ok(())
}

/// The baseline that makes the figures comparable across machines: one receipt signature check
/// as reconciliation does it in depth (key from the peer ID, then Ed25519), microseconds.
fn verify_baseline() -> f64 {
    let client = identity("client", 0);
    let body = ReceiptBody {
        ticket_id: ticket_id(0),
        content: manifest(0).content_id(),
        node: identity("node", 0).peer_id(),
        fragments: 1,
        bytes: 1 << 20,
        seq: 1,
        time: T0,
    };
    let msg = encode(&body);
    let signature = client.sign(ReceiptBody::DOMAIN, &msg);
    const N: u32 = 5_000;
    let started = Instant::now();
    for _ in 0..N {
        let ok =
            overlay::identity::verify(&client.peer_id(), ReceiptBody::DOMAIN, &msg, &signature);
        assert!(ok.is_ok(), "the baseline receipt verifies");
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(N)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_db(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        match std::fs::remove_file(with_suffix(path, suffix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

// ---------------------------------------------------------------------------------------------
// Seeding

async fn seed(path: &Path, sizes: &Sizes) -> anyhow::Result<()> {
    // Migrations through the coordinator's own opening path, then bulk loading on a private
    // connection without fsync (seeding only).
    drop(Db::open_sqlite(path).await?);
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off)
        .foreign_keys(false)
        .pragma("cache_size", "-262144");
    let mut conn = SqliteConnection::connect_with(&options).await?;

    let started = Instant::now();
    let nodes: Vec<PeerId> = parallel_map(sizes.nodes, |i| identity("node", i).peer_id());
    let node_ids: Vec<String> = nodes.iter().map(|p| p.to_string()).collect();
    let clients: Vec<Identity> = parallel_map(sizes.clients, |i| identity("client", i));
    let client_ids: Vec<String> = clients.iter().map(|c| c.peer_id().to_string()).collect();
    let root = identity("cm", 0);
    let manifests: Vec<Manifest> = (0..sizes.contents).map(manifest).collect();
    let contents: Vec<ContentId> = manifests.iter().map(Manifest::content_id).collect();
    let content_ids: Vec<String> = contents.iter().map(|c| c.to_string()).collect();
    println!(
        "  keys: {} nodes, {} clients in {:.1} s",
        sizes.nodes,
        sizes.clients,
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO partners (name, id, cert, created_at) VALUES ('p', ?, x'00', ?)")
        .bind(identity("partner", 0).peer_id().to_string())
        .bind((T0 - 90 * DAY) as i64)
        .execute(&mut *tx)
        .await?;
    let node_rows: Vec<u64> = (0..sizes.nodes).collect();
    insert_rows(
        &mut tx,
        "INSERT INTO nodes (id, registered_at, cert_serial, addrs, upload_bps, observed_bps)",
        6,
        &node_rows,
        |q, &n| {
            let h = mix(n);
            let addrs = format!(
                "[\"/ip4/{}.{}.{}.{}/udp/4001/quic-v1\"]",
                11 + h % 200,
                h >> 8 & 0xff,
                h >> 16 & 0xff,
                1 + (h >> 24) % 250
            );
            q.bind(node_ids[n as usize].clone())
                .bind((T0 - 60 * DAY + h % (30 * DAY)) as i64)
                .bind(n as i64 + 1)
                .bind(addrs)
                .bind(((h >> 32) % 50_000_000) as i64)
                .bind(((h >> 40) % 50_000_000) as i64)
        },
    )
    .await?;
    // Two sessions per node in the availability window: one closed, one still open.
    let session_rows: Vec<(u64, bool)> = (0..sizes.nodes)
        .flat_map(|n| [(n, false), (n, true)])
        .collect();
    insert_rows(
        &mut tx,
        "INSERT INTO node_sessions (node, started_at, ended_at, end_reason)",
        4,
        &session_rows,
        |q, &(n, open)| {
            let gap = mix(n ^ 0x5e55) % (2 * DAY);
            let q = q.bind(node_ids[n as usize].clone());
            if open {
                q.bind((T0 - 2 * DAY) as i64)
                    .bind(None::<i64>)
                    .bind(None::<String>)
            } else {
                q.bind((T0 - 8 * DAY) as i64)
                    .bind((T0 - 2 * DAY - gap) as i64)
                    .bind(Some("heartbeat timeout"))
            }
        },
    )
    .await?;
    let content_rows: Vec<u64> = (0..sizes.contents).collect();
    let signed: Vec<Vec<u8>> = manifests
        .into_iter()
        .map(|m| encode(&Signed::sign(&root, m)))
        .collect();
    insert_rows(
        &mut tx,
        "INSERT INTO contents (id, partner, name, size, data_shards, parity_shards, manifest, content_key, created_at)",
        9,
        &content_rows,
        |q, &c| {
            q.bind(content_ids[c as usize].clone())
                .bind("p")
                .bind(format!("content-{c}"))
                .bind((SEGMENTS * u64::from(SEGMENT_SIZE)) as i64)
                .bind(i64::from(K))
                .bind(i64::from(M))
                .bind(signed[c as usize].clone())
                .bind(vec![7u8; 32])
                .bind((T0 - 30 * DAY) as i64)
        },
    )
    .await?;
    // Fragment f of content c lives on holder f % holders; a node's holdings list its placements.
    let mut held: Vec<Vec<(u64, u32, u16)>> = vec![Vec::new(); sizes.nodes as usize];
    let mut placements: Vec<(u64, u32, u16, u64)> = Vec::new();
    for c in 0..sizes.contents {
        for f in 0..FRAGMENTS {
            let node = sizes.holder(c, f % sizes.holders);
            let (segment, index) = ((f / 12) as u32, (f % 12) as u16);
            placements.push((c, segment, index, node));
            held[node as usize].push((c, segment, index));
        }
    }
    insert_rows(
        &mut tx,
        "INSERT INTO placements (content, segment, idx, node, placed_at)",
        5,
        &placements,
        |q, &(c, segment, index, node)| {
            q.bind(content_ids[c as usize].clone())
                .bind(i64::from(segment))
                .bind(i64::from(index))
                .bind(node_ids[node as usize].clone())
                .bind((T0 - 20 * DAY + mix(c) % DAY) as i64)
        },
    )
    .await?;
    let holdings: Vec<(u64, Vec<u8>)> = held
        .iter()
        .enumerate()
        .map(|(n, list)| {
            let mut by_content: Vec<HeldContent> = Vec::new();
            for &(c, segment, index) in list {
                match by_content.last_mut() {
                    Some(h) if h.content == contents[c as usize] => {
                        h.fragments.push((segment, index))
                    }
                    _ => by_content.push(HeldContent {
                        content: contents[c as usize],
                        fragments: vec![(segment, index)],
                    }),
                }
            }
            (n as u64, encode(&by_content))
        })
        .collect();
    drop(held);
    insert_rows(
        &mut tx,
        "INSERT INTO node_holdings (node, report_seq, at, fragments)",
        4,
        &holdings,
        |q, (n, blob)| {
            q.bind(node_ids[*n as usize].clone())
                .bind(1i64)
                .bind(T0 as i64)
                .bind(blob.clone())
        },
    )
    .await?;
    tx.commit().await?;
    println!(
        "  nodes, sessions, contents, {} placements, holdings in {:.1} s",
        placements.len(),
        started.elapsed().as_secs_f64()
    );

    // Tickets and claims: two signing threads, the writer takes their chunks in ticket order.
    let started = Instant::now();
    let flen = manifest(0).fragment_len(0) as u64;
    let allowance = SEGMENTS * u64::from(K) * flen;
    let price = AccountingConfig::default().default_price(allowance);
    let chunks = sizes.tickets.div_ceil(CHUNK_TICKETS);
    const WORKERS: u64 = 2;
    let sign_chunk = |chunk: u64| -> Vec<ClaimSeed> {
        let mut out = Vec::new();
        let tickets = chunk * CHUNK_TICKETS..((chunk + 1) * CHUNK_TICKETS).min(sizes.tickets);
        for t in tickets {
            let c = t % sizes.contents;
            let client = &clients[(t % sizes.clients) as usize];
            let first = mix(t) % sizes.holders;
            for i in 0..sizes.claims_of(t) {
                let j = (first + i) % sizes.holders;
                let node = sizes.holder(c, j);
                let fragments = sizes.held_by_holder(j);
                let body = ReceiptBody {
                    ticket_id: ticket_id(t),
                    content: contents[c as usize],
                    node: nodes[node as usize],
                    fragments,
                    bytes: fragments * flen,
                    seq: fragments,
                    time: ticket_issued_at(t) + 600,
                };
                let signature = client.sign(ReceiptBody::DOMAIN, &encode(&body));
                out.push(ClaimSeed {
                    ticket: t,
                    node: node as u32,
                    fragments: fragments as u8,
                    signature: signature.to_bytes(),
                });
            }
        }
        out
    };
    let mut written = 0u64;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut receivers = Vec::new();
        for w in 0..WORKERS {
            let (tx, rx) = mpsc::sync_channel::<Vec<ClaimSeed>>(2);
            receivers.push(rx);
            let sign_chunk = &sign_chunk;
            scope.spawn(move || {
                for chunk in (w..chunks).step_by(WORKERS as usize) {
                    if tx.send(sign_chunk(chunk)).is_err() {
                        return;
                    }
                }
            });
        }
        let handle = tokio::runtime::Handle::current();
        let conn = &mut conn;
        let client_ids = &client_ids;
        let content_ids = &content_ids;
        let node_ids = &node_ids;
        // Block in place: this thread is the writer, the signing threads run beside it.
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                for chunk in 0..chunks {
                    let seeds = receivers[(chunk % WORKERS) as usize].recv()?;
                    let mut tx = conn.begin().await?;
                    let tickets: Vec<u64> = (chunk * CHUNK_TICKETS
                        ..((chunk + 1) * CHUNK_TICKETS).min(sizes.tickets))
                        .collect();
                    insert_rows(
                        &mut tx,
                        "INSERT INTO tickets (id, content, client, partner, not_after, allowance, issued_at, price, source)",
                        9,
                        &tickets,
                        |q, &t| {
                            let issued = ticket_issued_at(t);
                            q.bind(hex::encode(ticket_id(t)))
                                .bind(content_ids[(t % sizes.contents) as usize].clone())
                                .bind(client_ids[(t % sizes.clients) as usize].clone())
                                .bind("p")
                                .bind((issued + 7 * DAY) as i64)
                                .bind(allowance as i64)
                                .bind(issued as i64)
                                .bind(price)
                                .bind("issued")
                        },
                    )
                    .await?;
                    insert_rows(
                        &mut tx,
                        "INSERT INTO served_claims (ticket, node, content, bytes, fragments, report_seq, first_seen, updated_at,
                             receipt_signer, receipt_bytes, receipt_fragments, receipt_seq, receipt_time, receipt_sig)",
                        14,
                        &seeds,
                        |q, s| {
                            let bytes = (u64::from(s.fragments) * flen) as i64;
                            let fragments = i64::from(s.fragments);
                            q.bind(hex::encode(ticket_id(s.ticket)))
                                .bind(node_ids[s.node as usize].clone())
                                .bind(content_ids[(s.ticket % sizes.contents) as usize].clone())
                                .bind(bytes)
                                .bind(fragments)
                                .bind(1i64)
                                .bind(T0 as i64)
                                .bind(T0 as i64)
                                .bind(client_ids[(s.ticket % sizes.clients) as usize].clone())
                                .bind(bytes)
                                .bind(fragments)
                                .bind(fragments)
                                .bind((ticket_issued_at(s.ticket) + 600) as i64)
                                .bind(s.signature.to_vec())
                        },
                    )
                    .await?;
                    // Every ticket has changed claims (no node report yet: mark 0).
                    insert_rows(
                        &mut tx,
                        "INSERT INTO dirty_tickets (ticket, mark)",
                        2,
                        &tickets,
                        |q, &t| q.bind(hex::encode(ticket_id(t))).bind(0i64),
                    )
                    .await?;
                    tx.commit().await?;
                    written += seeds.len() as u64;
                    if chunk % 10 == 9 || chunk + 1 == chunks {
                        let secs = started.elapsed().as_secs_f64();
                        println!(
                            "  {written} claims signed and written in {secs:.0} s ({:.0}/s)",
                            written as f64 / secs
                        );
                    }
                }
                anyhow::Ok(())
            })
        })
    })?;
    anyhow::ensure!(written == sizes.receipts, "wrote {written} claims");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    println!(
        "  {} tickets, {written} claims in {:.1} s",
        sizes.tickets,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `f(0..n)` on both cores.
fn parallel_map<T: Send>(n: u64, f: impl Fn(u64) -> T + Sync) -> Vec<T> {
    let half = n / 2;
    std::thread::scope(|s| {
        let low = s.spawn(|| (0..half).map(&f).collect::<Vec<T>>());
        let high: Vec<T> = (half..n).map(&f).collect();
        let mut out = low.join().expect("key generation does not panic");
        out.extend(high);
        out
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Inserts `rows` with prepared multi-row statements (`columns` placeholders per row).
async fn insert_rows<'r, T>(
    conn: &mut SqliteConnection,
    head: &str,
    columns: usize,
    rows: &'r [T],
    bind: impl for<'q> Fn(Query<'q>, &'r T) -> Query<'q>,
) -> anyhow::Result<()> {
    // SQLite allows 32,766 parameters per statement.
    let per = (30_000 / columns).min(1_000);
    let tuple = format!("({})", vec!["?"; columns].join(", "));
    let mut sql_full = None;
    for chunk in rows.chunks(per) {
        let sql = if chunk.len() == per {
            sql_full.get_or_insert_with(|| {
                format!("{head} VALUES {}", vec![tuple.as_str(); per].join(", "))
            })
        } else {
            &format!(
                "{head} VALUES {}",
                vec![tuple.as_str(); chunk.len()].join(", ")
            )
        };
        let mut q = sqlx::query(sql.as_str());
        for row in chunk {
            q = bind(q, row);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// What one measured run reported.
#[derive(Debug, Serialize, Deserialize)]
struct RunReport {
    wall_secs: f64,
    cpu_secs: f64,
    hwm_before_kib: u64,
    hwm_after_kib: u64,
    /// Size of the write-ahead log the run left, and the time to fold it back and truncate it
    /// afterwards (outside the measured wall time: the run's commit already checkpointed it).
    wal_bytes: u64,
    checkpoint_secs: f64,
    summary: serde_json::Value,
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU seconds of this process (clock ticks of 1/100 s).
fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some((f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?) as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// The child: one reconciliation run on `path` at `now`, its figures as JSON on stdout.
fn child(path: &Path, now: u64) -> anyhow::Result<()> {
    use rand::SeedableRng;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let db = Db::open_sqlite(path).await?;
        let config = AccountingConfig::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(now);
        let hwm_before_kib = status_kib("VmHWM:");
        let cpu = cpu_secs();
        let started = Instant::now();
        let outcome = reconcile(&db, &config, now, &mut rng).await?;
        let wall_secs = started.elapsed().as_secs_f64();
        let (cpu_secs, hwm_after_kib) = (cpu_secs() - cpu, status_kib("VmHWM:"));
        // The next run must not pay for this one's log: fold it back and truncate it now.
        let wal_bytes = std::fs::metadata(with_suffix(path, "-wal")).map_or(0, |m| m.len());
        let checkpointed = Instant::now();
        let mut conn =
            SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path)).await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        anyhow::Ok(RunReport {
            wall_secs,
            cpu_secs,
            hwm_before_kib,
            hwm_after_kib,
            wal_bytes,
            checkpoint_secs: checkpointed.elapsed().as_secs_f64(),
            summary: outcome.summary,
        })
    })?;
    println!("RESULT {}", serde_json::to_string(&report)?);
    Ok(())
}

fn run_child(path: &Path, now: u64) -> anyhow::Result<RunReport> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(path)
        .arg(now.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the measured run failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| anyhow::anyhow!("the measured run printed no result: {stdout}"))?;
    let report: RunReport = serde_json::from_str(line)?;
    println!(
        "run at {now}: {:.1} s, peak RSS {:.0} MiB",
        report.wall_secs,
        report.hwm_after_kib as f64 / 1024.0
    );
    Ok(report)
}

/// The honest world must come out clean: every claim confirmed, no verdict.
fn check(sizes: &Sizes, run: &RunReport) -> anyhow::Result<()> {
    let s = &run.summary;
    let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX);
    anyhow::ensure!(
        n("claims") == sizes.receipts && n("confirmed") == sizes.receipts,
        "expected {} claims, all confirmed: {s}",
        sizes.receipts
    );
    anyhow::ensure!(
        n("conflict") == 0 && n("suspected_collusion") == 0 && n("pending_tickets") == 0,
        "an honest world produced verdicts (the seeding is wrong): {s}"
    );
    anyhow::ensure!(
        n("storage_nodes") == sizes.nodes && n("lost_placements") == 0,
        "storage: {s}"
    );
    Ok(())
}

fn report(
    sizes: &Sizes,
    meta: &Meta,
    db_bytes: u64,
    verify_us: f64,
    first: &RunReport,
    second: &RunReport,
) {
    let s = &first.summary;
    println!();
    println!("== reconciliation benchmark ==");
    println!(
        "world: {} receipts, {} nodes, {} tickets, {} contents × {} holders, {} client keys",
        sizes.receipts, sizes.nodes, sizes.tickets, sizes.contents, sizes.holders, sizes.clients
    );
    println!(
        "seeding: {:.1} s (not measured); database {:.2} GiB",
        meta.seed_secs,
        gib(db_bytes)
    );
    println!(
        "baseline: one receipt signature check takes {verify_us:.0} µs on this machine \
         (the run checks {} in depth: {:.0} CPU-s)",
        first.summary["deep_checked"],
        first.summary["deep_checked"].as_f64().unwrap_or(0.0) * verify_us / 1e6
    );
    println!();
    println!("{:<28} {:>16} {:>16}", "", "first run", "second run");
    let row = |name: &str, a: String, b: String| println!("{name:<28} {a:>16} {b:>16}");
    let field = |r: &RunReport, k: &str| r.summary[k].to_string();
    for k in [
        "tickets",
        "claims",
        "confirmed",
        "deep_checked",
        "conflict",
        "suspected_collusion",
        "storage_nodes",
        "nodes_settled",
        "ledger_entries",
    ] {
        row(k, field(first, k), field(second, k));
    }
    row(
        "wall time",
        format!("{:.2} s", first.wall_secs),
        format!("{:.2} s", second.wall_secs),
    );
    row(
        "CPU time",
        format!("{:.2} s", first.cpu_secs),
        format!("{:.2} s", second.cpu_secs),
    );
    row(
        "peak RSS (VmHWM)",
        format!("{:.0} MiB", first.hwm_after_kib as f64 / 1024.0),
        format!("{:.0} MiB", second.hwm_after_kib as f64 / 1024.0),
    );
    row(
        "WAL left by the run",
        format!("{:.2} GiB", gib(first.wal_bytes)),
        format!("{:.2} GiB", gib(second.wal_bytes)),
    );
    row(
        "checkpoint after (unmeasured)",
        format!("{:.2} s", first.checkpoint_secs),
        format!("{:.2} s", second.checkpoint_secs),
    );
    row(
        "VmHWM at the start",
        format!("{:.0} MiB", first.hwm_before_kib as f64 / 1024.0),
        format!("{:.0} MiB", second.hwm_before_kib as f64 / 1024.0),
    );
    if s.get("phases_ms").is_some() {
        println!();
        println!("time split (ms):");
        let phase = |r: &RunReport, k: &str| r.summary["phases_ms"][k].to_string();
        for k in [
            "load",
            "claims_read",
            "claims_core",
            "storage",
            "facts",
            "settle",
            "entries",
            "write",
        ] {
            row(&format!("  {k}"), phase(first, k), phase(second, k));
        }
    }
    println!();
    let ok = first.wall_secs < 60.0 && first.hwm_after_kib < 2 << 20;
    println!(
        "goal (< 60 s, < 2 GiB): {}",
        if ok { "met" } else { "MISSED" }
    );
}
