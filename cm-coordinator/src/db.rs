//! The coordinator's storage layer. Callers see only [`Db`] and plain Rust types; the engine
//! behind it is chosen at run time by a URL: SQLite embedded in the data directory (the default)
//! or PostgreSQL, for operators who outgrow one machine or run two coordinators on one
//! collective.
//!
//! One copy of each query serves both engines: every method runs its body through [`on_pool!`],
//! which compiles it once per engine's native driver (so SQLite pays nothing for PostgreSQL's
//! presence), with `$N` placeholders, which both accept. The few places where the dialects
//! differ are in [`Dialect`]; the schemas, version for version, are in `migrations/sqlite/` and
//! `migrations/postgres/`.
//!
//! Two coordinators may share one PostgreSQL database. What they must not both do at once is
//! serialised in the database, not in either process: a reconciliation run or payout holds an
//! advisory lock for its whole length ([`Db::lock_accounting`]), reports of one node are
//! ingested one at a time, and the mark a run settles up to waits for reports being ingested
//! (see [`Dialect`]). SQLite has one process per data directory and serialises writers itself.
//!
//! [`copy`] moves a coordinator from SQLite to PostgreSQL: every row, all or nothing.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use overlay::{ContentId, PeerId};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgPool, Row, SqlitePool};

use crate::seen::Seen;

mod accounting;
mod cluster;
pub mod copy;
mod tokens;
mod views;
pub use accounting::{
    AccountingLock, AuditRow, ClaimRow, DirtyTicket, Ingested, LedgerRow, NewEntry, NewVerdict,
    NodeLedger, PlacementRow, ReceiptRow, RunWrites, SaleRow, StateTable, VerdictRow, accounts,
};
pub use cluster::{CoordinatorRow, OpenSession, PlacementChange};
pub use tokens::TokenRow;
pub use views::{ContentSummary, PayoutRow};
#[cfg(test)]
pub(crate) mod testing;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt database row: {0}")]
    Corrupt(String),
    #[error(
        "unsupported database URL `{0}`: expected postgres://user:password@host:port/database or sqlite://path"
    )]
    Url(String),
    /// The cause is in the message, not a source: it reads as one line.
    #[error("cannot connect to PostgreSQL at {at}: {error}")]
    Connect {
        /// `host:port/database`, without credentials.
        at: String,
        error: sqlx::Error,
    },
    #[error("{0}")]
    Conflict(String),
}

/// The coordinator's database.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

/// The engine behind [`Db`], with its connection pool.
#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Where the dialects differ, as SQL text (or `None` where an engine needs nothing).
struct Dialect {
    /// Begins a write transaction. SQLite's write lock is taken at `BEGIN IMMEDIATE` (waiting up
    /// to the busy timeout for another writer), not at the first write: a transaction that reads
    /// first and then finds another writer's commit newer than what it read fails at once
    /// (`SQLITE_BUSY_SNAPSHOT`), and no waiting cures that. PostgreSQL's row locks and the
    /// advisory locks below do that work there.
    begin_write: &'static str,
    /// First statement of a report's ingestion (`$1`: the node): one report of a node at a time
    /// (its sequence check and claim upserts read then write), and a share of the mark lock.
    ingest_lock: Option<&'static str>,
    /// Taken (in a transaction) to read the mark a run settles up to. PostgreSQL hands out
    /// report rowids before commit, so a report with a smaller rowid can commit after a larger
    /// one: the exclusive lock waits until every report being ingested committed, and reports
    /// begun later get larger rowids.
    mark_lock: Option<&'static str>,
    /// First statement of a run's write: its check that no other run was written meanwhile is
    /// then exact.
    run_lock: Option<&'static str>,
    /// One row per dirty ticket with its claims packed (see `Db::dirty_claims`).
    dirty_claims: &'static str,
}

/// Advisory lock keys (PostgreSQL), in one namespace: the bytes `CCDS` and a number.
/// The SQL of [`POSTGRES`] spells them out.
const LOCK_ACCOUNTING: i64 = 0x4343_4453_0001;
#[cfg(test)]
const LOCK_MARK: i64 = 0x4343_4453_0002;
#[cfg(test)]
const LOCK_RUN_WRITE: i64 = 0x4343_4453_0003;
/// The two-key advisory locks of node report ingestion: this, and a hash of the node ID.
#[cfg(test)]
const LOCK_NODE_SPACE: i32 = 0x4343_4453;

const SQLITE: Dialect = Dialect {
    begin_write: "BEGIN IMMEDIATE",
    ingest_lock: None,
    mark_lock: None,
    run_lock: None,
    dirty_claims: accounting::DIRTY_CLAIMS_SQLITE,
};

const POSTGRES: Dialect = Dialect {
    begin_write: "BEGIN",
    ingest_lock: Some(
        "SELECT pg_advisory_xact_lock_shared(73956188160002)::text, \
                pg_advisory_xact_lock(1128481875, hashtext($1))::text",
    ),
    mark_lock: Some("SELECT pg_advisory_xact_lock(73956188160002)::text"),
    run_lock: Some("SELECT pg_advisory_xact_lock(73956188160003)::text"),
    dirty_claims: accounting::DIRTY_CLAIMS_POSTGRES,
};

/// Runs `$body` with `$pool` bound to the engine's pool and `$sql` to its [`Dialect`]: the body
/// is compiled once per engine, against its own driver.
macro_rules! on_pool {
    ($db:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match &$db.pool {
            $crate::db::Pool::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $sql = &$crate::db::SQLITE;
                $body
            }
            $crate::db::Pool::Postgres($pool) => {
                #[allow(unused_variables)]
                let $sql = &$crate::db::POSTGRES;
                $body
            }
        }
    };
}
use on_pool;

/// A registered node as stored.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub registered_at: i64,
    pub addrs: Vec<String>,
    pub quota: i64,
    pub used: i64,
    pub last_seen: Option<i64>,
    pub fragments: i64,
    pub boot_time: Option<i64>,
    /// Upload bandwidth the node measured and reported, bytes per second.
    pub upload_bps: i64,
    /// Upload bandwidth the coordinator observed fetching from it, bytes per second.
    pub observed_bps: i64,
}

/// A published content as stored.
#[derive(Clone, Debug)]
pub struct ContentRow {
    pub id: ContentId,
    pub partner: String,
    pub size: u64,
    pub manifest: Vec<u8>,
    pub content_key: [u8; 32],
}

/// One placement: fragment `idx` of `segment` is on `node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub segment: u32,
    pub index: u16,
    pub node: PeerId,
}

/// One fragment rebuilt on a new holder.
#[derive(Clone, Debug)]
pub struct RepairRow {
    pub segment: u32,
    pub index: u16,
    /// `repair` or `expand`.
    pub kind: &'static str,
    /// The holder it replaces, if any.
    pub previous: Option<PeerId>,
    pub node: PeerId,
    pub rebuilt_by: PeerId,
    pub ticket: String,
    pub bytes_fetched: u64,
    pub bytes_stored: u64,
    pub at: u64,
}

/// A client's problem report as stored.
#[derive(Clone, Debug, Serialize)]
pub struct ProblemRow {
    pub reporter: String,
    pub node: String,
    pub content: String,
    pub kind: String,
    pub segment: Option<i64>,
    pub index: Option<i64>,
    pub detail: String,
    pub at: i64,
    /// The coordinator instance that received it (`None`: received before schema version 7).
    pub coordinator: Option<String>,
}

/// A ticket issued through the coordinator.
#[derive(Clone, Debug)]
pub struct TicketRow {
    pub id: String,
    pub content: String,
    pub client: String,
    pub partner: String,
    pub not_after: i64,
    pub allowance: i64,
    pub issued_at: i64,
    /// What the client paid, micro-credits.
    pub price: i64,
    /// `issued` (through the coordinator), `uploaded` (a partner's sales record) or `repair`.
    pub source: &'static str,
}

fn parse_content(s: &str) -> Result<ContentId, DbError> {
    s.parse()
        .map_err(|e: String| DbError::Corrupt(format!("content id {s}: {e}")))
}

fn parse_peer(s: &str) -> Result<PeerId, DbError> {
    PeerId::from_str(s).map_err(|e| DbError::Corrupt(format!("peer id {s}: {e}")))
}

impl Db {
    /// Opens the coordinator's database: the one `url` names (`postgres://…` or `sqlite://…`),
    /// else the SQLite database at `sqlite_path` (in the data directory). Creates and migrates
    /// it as needed.
    pub async fn open(url: Option<&str>, sqlite_path: &Path) -> Result<Self, DbError> {
        match url {
            None => Self::open_sqlite(sqlite_path).await,
            Some(url) => Self::open_url(url).await,
        }
    }

    /// Opens the database a URL names: `postgres://user:password@host:port/database` (also
    /// `postgresql://`) or `sqlite://path`.
    pub async fn open_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Not the URL itself in the error: it may carry a password.
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| DbError::Url(format!("postgres://… ({e})")))?;
            Self::open_postgres(options).await
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
        {
            Self::open_sqlite(Path::new(path)).await
        } else {
            let scheme = url.split_once(':').map_or(url, |(s, _)| s);
            Err(DbError::Url(format!("{scheme}:…")))
        }
    }

    /// Opens (creating and migrating if needed) the SQLite database at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
        })
    }

    /// Opens (migrating if needed) a PostgreSQL database; the database itself must exist.
    /// Several coordinators may open one database: migrations take a lock.
    pub async fn open_postgres(options: PgConnectOptions) -> Result<Self, DbError> {
        let at = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default database)")
        );
        // One connection first, for a clear error: a pool would only report a timeout.
        let connect = sqlx::PgConnection::connect_with(&options);
        let conn = tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .map_err(|_| DbError::Connect {
                at: at.clone(),
                error: sqlx::Error::PoolTimedOut,
            })?
            .map_err(|error| DbError::Connect {
                at: at.clone(),
                error,
            })?;
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options);
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool: Pool::Postgres(pool),
        })
    }

    /// The engine's name, for logs.
    pub fn engine(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "SQLite",
            Pool::Postgres(_) => "PostgreSQL",
        }
    }

    /// Records a certificate and returns its serial.
    pub async fn next_cert_serial(
        &self,
        subject: &PeerId,
        role: &str,
        now: u64,
        not_after: u64,
    ) -> Result<u64, DbError> {
        on_pool!(self, |pool, sql| {
            let row = sqlx::query(
            "INSERT INTO certificates (subject, role, issued_at, not_after) VALUES ($1, $2, $3, $4) RETURNING serial",
        )
        .bind(subject.to_string())
        .bind(role)
        .bind(now as i64)
        .bind(not_after as i64)
        .fetch_one(pool)
        .await?;
            Ok(row.get::<i64, _>(0) as u64)
        })
    }

    /// Registers a node (idempotent: a node registering again keeps its history).
    pub async fn register_node(&self, id: &PeerId, serial: u64, now: u64) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO nodes (id, registered_at, cert_serial) VALUES ($1, $2, $3)
             ON CONFLICT(id) DO UPDATE SET cert_serial = excluded.cert_serial",
            )
            .bind(id.to_string())
            .bind(now as i64)
            .bind(serial as i64)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Whether `id` is a registered node.
    pub async fn is_node(&self, id: &PeerId) -> Result<bool, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(sqlx::query("SELECT 1 FROM nodes WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
                .is_some())
        })
    }

    /// Records a node coming online: addresses, capacity, a new session.
    pub async fn node_joined(
        &self,
        id: &PeerId,
        coordinator: &str,
        addrs: &[String],
        quota: u64,
        used: u64,
        now: u64,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            close_sessions!(tx, id, now, "rejoined")?;
            sqlx::query(
                "UPDATE nodes SET addrs = $1, quota = $2, used = $3, last_seen = $4 WHERE id = $5",
            )
            .bind(serde_json::to_string(addrs).expect("strings serialise"))
            .bind(quota as i64)
            .bind(used as i64)
            .bind(now as i64)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO node_sessions (node, started_at, coordinator) VALUES ($1, $2, $3)",
            )
            .bind(id.to_string())
            .bind(now as i64)
            .bind(coordinator)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Closes every connection; later queries fail. For a clean stop.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// Records heartbeats, many nodes in one transaction (see [`crate::seen`]): each node's
    /// space used, upload rate and time last seen. A heartbeat older than the node's `last_seen`
    /// (a join written since) changes nothing; unknown nodes are skipped.
    pub async fn nodes_seen(&self, batch: &[(PeerId, Seen)]) -> Result<(), DbError> {
        if batch.is_empty() {
            return Ok(());
        }
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            // Four bound values a row: 5,000 rows stay under both engines' parameter limits.
            for chunk in batch.chunks(5_000) {
                let mut q = sqlx::QueryBuilder::new(
                    "UPDATE nodes SET used = v.column2, last_seen = v.column3, upload_bps = v.column4 FROM (",
                );
                q.push_values(chunk, |mut b, (id, seen)| {
                    b.push_bind(id.to_string())
                        .push_bind(seen.used as i64)
                        .push_bind(seen.at as i64)
                        .push_bind(seen.upload_bps as i64);
                });
                q.push(
                    ") AS v WHERE nodes.id = v.column1 AND (nodes.last_seen IS NULL OR nodes.last_seen <= v.column3)",
                );
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records a node going offline and why.
    pub async fn node_left(&self, id: &PeerId, now: u64, reason: &str) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            close_sessions!(tx, id, now, reason)?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every registered node with the number of fragments placed on it.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
            "SELECT n.id, n.registered_at, n.addrs, n.quota, n.used, n.last_seen,
                    (SELECT COUNT(*) FROM placements p WHERE p.node = n.id AND p.removed_at IS NULL),
                    n.boot_time, n.upload_bps, n.observed_bps
             FROM nodes n ORDER BY n.registered_at, n.id",
        )
        .fetch_all(pool)
        .await?;
            rows.into_iter()
                .map(|r| {
                    let addrs: String = r.get(2);
                    Ok(NodeRow {
                        id: r.get(0),
                        registered_at: r.get(1),
                        addrs: serde_json::from_str(&addrs)
                            .map_err(|e| DbError::Corrupt(format!("node addresses: {e}")))?,
                        quota: r.get(3),
                        used: r.get(4),
                        last_seen: r.get(5),
                        fragments: r.get(6),
                        boot_time: r.get(7),
                        upload_bps: r.get(8),
                        observed_bps: r.get(9),
                    })
                })
                .collect()
        })
    }

    /// Adds a partner.
    pub async fn add_partner(
        &self,
        name: &str,
        id: &PeerId,
        cert: &[u8],
        now: u64,
    ) -> Result<bool, DbError> {
        on_pool!(self, |pool, sql| {
            let done = sqlx::query(
            "INSERT INTO partners (name, id, cert, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(id.to_string())
        .bind(cert)
        .bind(now as i64)
        .execute(pool)
        .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// A partner's encoded certificate.
    pub async fn partner_cert(&self, name: &str) -> Result<Option<Vec<u8>>, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(sqlx::query("SELECT cert FROM partners WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
                .map(|r| r.get(0)))
        })
    }

    /// Records a published content and all its placements, atomically.
    pub async fn add_content(
        &self,
        content: &ContentRow,
        name: &str,
        data_shards: u8,
        parity_shards: u8,
        placements: &[Placement],
        now: u64,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            let id = content.id.to_string();
            sqlx::query(
            "INSERT INTO contents (id, partner, name, size, data_shards, parity_shards, manifest, content_key, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT(id) DO NOTHING",
        )
        .bind(&id)
        .bind(&content.partner)
        .bind(name)
        .bind(content.size as i64)
        .bind(data_shards as i64)
        .bind(parity_shards as i64)
        .bind(&content.manifest)
        .bind(&content.content_key[..])
        .bind(now as i64)
        .execute(&mut *tx)
        .await?;
            for p in placements {
                sqlx::query(
                "INSERT INTO placements (content, segment, idx, node, placed_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (content, segment, idx, node) DO UPDATE SET removed_at = NULL, placed_at = excluded.placed_at",
            )
            .bind(&id)
            .bind(p.segment as i64)
            .bind(p.index as i64)
            .bind(p.node.to_string())
            .bind(now as i64)
            .execute(&mut *tx)
            .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// A published content.
    pub async fn content(&self, id: &ContentId) -> Result<Option<ContentRow>, DbError> {
        on_pool!(self, |pool, sql| {
            let Some(r) = sqlx::query(
                "SELECT partner, size, manifest, content_key FROM contents WHERE id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let key: Vec<u8> = r.get(3);
            Ok(Some(ContentRow {
                id: *id,
                partner: r.get(0),
                size: r.get::<i64, _>(1) as u64,
                manifest: r.get(2),
                content_key: key
                    .try_into()
                    .map_err(|_| DbError::Corrupt("content key is not 32 bytes".into()))?,
            }))
        })
    }

    /// Current placements of a content.
    pub async fn placements(&self, id: &ContentId) -> Result<Vec<Placement>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
            "SELECT segment, idx, node FROM placements WHERE content = $1 AND removed_at IS NULL",
        )
        .bind(id.to_string())
        .fetch_all(pool)
        .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(Placement {
                        segment: r.get::<i64, _>(0) as u32,
                        index: r.get::<i64, _>(1) as u16,
                        node: parse_peer(&r.get::<String, _>(2))?,
                    })
                })
                .collect()
        })
    }

    /// Every published content (for the repair core at start).
    pub async fn all_contents(&self) -> Result<Vec<ContentRow>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query("SELECT id, partner, size, manifest, content_key FROM contents")
                .fetch_all(pool)
                .await?;
            rows.into_iter()
                .map(|r| {
                    let id: String = r.get(0);
                    let key: Vec<u8> = r.get(4);
                    Ok(ContentRow {
                        id: parse_content(&id)?,
                        partner: r.get(1),
                        size: r.get::<i64, _>(2) as u64,
                        manifest: r.get(3),
                        content_key: key
                            .try_into()
                            .map_err(|_| DbError::Corrupt("content key is not 32 bytes".into()))?,
                    })
                })
                .collect()
        })
    }

    /// Records fragments rebuilt on new holders, atomically: the new placements, the previous
    /// holders' placements closed (their copies are deleted when they return), and the work.
    ///
    /// With `fence` (a lease's name, its holder, and now), nothing is written unless that holder
    /// still holds the lease ([`DbError::Conflict`]); the lease row stays locked until the
    /// commit, so a coordinator taking the lease over waits for it and then sees the repairs.
    pub async fn record_repairs(
        &self,
        content: &ContentId,
        repairs: &[RepairRow],
        fence: Option<(&str, &str, u64)>,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            if let Some((lease, holder, now)) = fence {
                let held = sqlx::query(
                    "UPDATE leases SET expires_at = expires_at
                     WHERE name = $1 AND holder = $2 AND expires_at >= $3",
                )
                .bind(lease)
                .bind(holder)
                .bind(now as i64)
                .execute(&mut *tx)
                .await?;
                if held.rows_affected() == 0 {
                    return Err(DbError::Conflict(format!(
                        "the {lease} lease is no longer held by {holder}"
                    )));
                }
            }
            let id = content.to_string();
            for r in repairs {
                if let Some(previous) = &r.previous {
                    sqlx::query(
                    "UPDATE placements SET removed_at = $1 WHERE content = $2 AND segment = $3 AND idx = $4 AND node = $5 AND removed_at IS NULL",
                )
                .bind(r.at as i64)
                .bind(&id)
                .bind(r.segment as i64)
                .bind(r.index as i64)
                .bind(previous.to_string())
                .execute(&mut *tx)
                .await?;
                }
                sqlx::query(
                "INSERT INTO placements (content, segment, idx, node, placed_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (content, segment, idx, node) DO UPDATE SET removed_at = NULL, delete_sent_at = NULL, placed_at = excluded.placed_at",
            )
            .bind(&id)
            .bind(r.segment as i64)
            .bind(r.index as i64)
            .bind(r.node.to_string())
            .bind(r.at as i64)
            .execute(&mut *tx)
            .await?;
                sqlx::query(
                "INSERT INTO repairs (content, segment, idx, kind, previous, node, rebuilt_by, ticket, bytes_fetched, bytes_stored, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&id)
            .bind(r.segment as i64)
            .bind(r.index as i64)
            .bind(r.kind)
            .bind(r.previous.map(|p| p.to_string()))
            .bind(r.node.to_string())
            .bind(r.rebuilt_by.to_string())
            .bind(&r.ticket)
            .bind(r.bytes_fetched as i64)
            .bind(r.bytes_stored as i64)
            .bind(r.at as i64)
            .execute(&mut *tx)
            .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Closes the placement of a fragment that is no longer wanted (surplus spare parity).
    pub async fn remove_placement(
        &self,
        content: &ContentId,
        segment: u32,
        index: u16,
        node: &PeerId,
        now: u64,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
            "UPDATE placements SET removed_at = $1 WHERE content = $2 AND segment = $3 AND idx = $4 AND node = $5 AND removed_at IS NULL",
        )
        .bind(now as i64)
        .bind(content.to_string())
        .bind(segment as i64)
        .bind(index as i64)
        .bind(node.to_string())
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Fragments `node` still holds although their placement was closed, by content.
    pub async fn undeleted(&self, node: &PeerId) -> Result<Vec<(ContentId, u32, u16)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT content, segment, idx FROM placements p
             WHERE node = $1 AND removed_at IS NOT NULL AND delete_sent_at IS NULL
             ORDER BY content, segment, idx",
            )
            .bind(node.to_string())
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    let c: String = r.get(0);
                    Ok((
                        parse_content(&c)?,
                        r.get::<i64, _>(1) as u32,
                        r.get::<i64, _>(2) as u16,
                    ))
                })
                .collect()
        })
    }

    /// Records that `node` was told to delete these fragments.
    pub async fn deletes_sent(
        &self,
        node: &PeerId,
        fragments: &[(ContentId, u32, u16)],
        now: u64,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            for (c, s, i) in fragments {
                sqlx::query(
                "UPDATE placements SET delete_sent_at = $1 WHERE node = $2 AND content = $3 AND segment = $4 AND idx = $5 AND removed_at IS NOT NULL",
            )
            .bind(now as i64)
            .bind(node.to_string())
            .bind(c.to_string())
            .bind(*s as i64)
            .bind(*i as i64)
            .execute(&mut *tx)
            .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Repair work recorded for a content: (fragments rebuilt, bytes fetched, bytes stored).
    pub async fn repair_totals(&self, content: &ContentId) -> Result<(i64, i64, i64), DbError> {
        on_pool!(self, |pool, sql| {
            let r = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(SUM(bytes_fetched), 0) AS BIGINT), CAST(COALESCE(SUM(bytes_stored), 0) AS BIGINT)
             FROM repairs WHERE content = $1",
        )
        .bind(content.to_string())
        .fetch_one(pool)
        .await?;
            Ok((r.get(0), r.get(1), r.get(2)))
        })
    }

    /// Every repair record, oldest first.
    pub async fn repairs(&self) -> Result<Vec<serde_json::Value>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
            "SELECT content, segment, idx, kind, previous, node, rebuilt_by, ticket, bytes_fetched, bytes_stored, at FROM repairs ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    serde_json::json!({
                        "content": r.get::<String, _>(0),
                        "segment": r.get::<i64, _>(1),
                        "index": r.get::<i64, _>(2),
                        "kind": r.get::<String, _>(3),
                        "previous": r.get::<Option<String>, _>(4),
                        "node": r.get::<String, _>(5),
                        "rebuilt_by": r.get::<String, _>(6),
                        "ticket": r.get::<String, _>(7),
                        "bytes_fetched": r.get::<i64, _>(8),
                        "bytes_stored": r.get::<i64, _>(9),
                        "at": r.get::<i64, _>(10),
                    })
                })
                .collect())
        })
    }

    /// Records a partner's demand hint.
    pub async fn add_demand_hint(
        &self,
        content: &ContentId,
        level: u64,
        until: u64,
        now: u64,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO demand_hints (content, level, until, at) VALUES ($1, $2, $3, $4)",
            )
            .bind(content.to_string())
            .bind(level as i64)
            .bind(until as i64)
            .bind(now as i64)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Demand per content at `now`: tickets issued since `since` plus live partner hints.
    /// (The coordinator's own repair tickets are not demand: counting them would feed back.)
    pub async fn demand(&self, since: u64, now: u64) -> Result<Vec<(ContentId, u64)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
            "SELECT content, CAST(SUM(n) AS BIGINT) FROM (
                 SELECT content, COUNT(*) AS n FROM tickets WHERE issued_at >= $1 AND source != 'repair' GROUP BY content
                 UNION ALL
                 SELECT content, MAX(level) AS n FROM demand_hints WHERE until > $2 GROUP BY content
             ) AS d GROUP BY content",
        )
        .bind(since as i64)
        .bind(now as i64)
        .fetch_all(pool)
        .await?;
            rows.into_iter()
                .map(|r| {
                    let c: String = r.get(0);
                    Ok((parse_content(&c)?, r.get::<i64, _>(1).max(0) as u64))
                })
                .collect()
        })
    }

    /// Records what a node says about itself when it joins or beats.
    pub async fn node_measures(
        &self,
        id: &PeerId,
        boot_time: Option<u64>,
        upload_bps: u64,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
            "UPDATE nodes SET boot_time = COALESCE($1, boot_time), upload_bps = $2 WHERE id = $3",
        )
        .bind(boot_time.map(|b| b as i64))
        .bind(upload_bps as i64)
        .bind(id.to_string())
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// An upload rate the coordinator observed from `node`, folded into a moving average.
    pub async fn observe_bps(&self, node: &PeerId, bps: u64) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
            "UPDATE nodes SET observed_bps = CASE WHEN observed_bps = 0 THEN $1 ELSE (3 * observed_bps + $2) / 4 END WHERE id = $3",
        )
        .bind(bps as i64)
        .bind(bps as i64)
        .bind(node.to_string())
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Online sessions of every node that started or ended after `since`:
    /// `(node, started_at, ended_at)`.
    pub async fn sessions_since(
        &self,
        since: u64,
    ) -> Result<Vec<(String, u64, Option<u64>)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT node, started_at, ended_at FROM node_sessions
             WHERE ended_at IS NULL OR ended_at >= $1 ORDER BY node, started_at",
            )
            .bind(since as i64)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get::<i64, _>(1) as u64,
                        r.get::<Option<i64>, _>(2).map(|e| e as u64),
                    )
                })
                .collect())
        })
    }

    /// Records a sales record (a ticket issued, uploaded or the CM's own) unless the ticket is
    /// already known; returns whether it was new.
    pub async fn add_ticket(&self, t: &TicketRow) -> Result<bool, DbError> {
        on_pool!(self, |pool, sql| {
            let done = sqlx::query(
            "INSERT INTO tickets (id, content, client, partner, not_after, allowance, issued_at, price, source)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&t.id)
        .bind(&t.content)
        .bind(&t.client)
        .bind(&t.partner)
        .bind(t.not_after)
        .bind(t.allowance)
        .bind(t.issued_at)
        .bind(t.price)
        .bind(t.source)
        .execute(pool)
        .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Records a client's problem report.
    pub async fn add_problem(&self, p: &ProblemRow) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
            "INSERT INTO problem_reports (reporter, node, content, kind, segment, idx, detail, at, coordinator)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&p.reporter)
        .bind(&p.node)
        .bind(&p.content)
        .bind(&p.kind)
        .bind(p.segment)
        .bind(p.index)
        .bind(&p.detail)
        .bind(p.at)
        .bind(&p.coordinator)
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Every problem report, oldest first.
    pub async fn problems(&self) -> Result<Vec<ProblemRow>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
            "SELECT reporter, node, content, kind, segment, idx, detail, at, coordinator FROM problem_reports ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
            Ok(rows
                .into_iter()
                .map(|r| ProblemRow {
                    reporter: r.get(0),
                    node: r.get(1),
                    content: r.get(2),
                    kind: r.get(3),
                    segment: r.get(4),
                    index: r.get(5),
                    detail: r.get(6),
                    at: r.get(7),
                    coordinator: r.get(8),
                })
                .collect())
        })
    }

    /// Nodes that clients reported unreachable to coordinators other than `me` at or after
    /// `since`, each with the newest such report's id: one row per node however many reports.
    pub async fn unreachable_elsewhere(
        &self,
        me: &str,
        since: u64,
    ) -> Result<Vec<(PeerId, i64)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT node, MAX(id) FROM problem_reports
                 WHERE kind = 'unreachable' AND at >= $1 AND coordinator IS NOT NULL
                   AND coordinator <> $2
                 GROUP BY node",
            )
            .bind(since as i64)
            .bind(me)
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .map(|r| Ok((parse_peer(&r.get::<String, _>(0))?, r.get(1))))
                .collect()
        })
    }

    /// Records a client's completion report (a report seen twice is kept once).
    pub async fn add_completion(
        &self,
        ticket: &str,
        client: &PeerId,
        content: &ContentId,
        report: &[u8],
        at: u64,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
            "INSERT INTO completions (ticket, client, content, report, digest, at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        )
        .bind(ticket)
        .bind(client.to_string())
        .bind(content.to_string())
        .bind(report)
        .bind(blake3::hash(report).as_bytes().as_slice())
        .bind(at as i64)
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Number of completion reports for a content.
    pub async fn completions(&self, content: &ContentId) -> Result<i64, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(
                sqlx::query("SELECT COUNT(*) FROM completions WHERE content = $1")
                    .bind(content.to_string())
                    .fetch_one(pool)
                    .await?
                    .get(0),
            )
        })
    }
}

/// Ends a node's open sessions, in a write transaction.
macro_rules! close_sessions {
    ($tx:expr, $id:expr, $now:expr, $reason:expr) => {
        sqlx::query(
            "UPDATE node_sessions SET ended_at = $1, end_reason = $2 WHERE node = $3 AND ended_at IS NULL",
        )
        .bind($now as i64)
        .bind($reason)
        .bind($id.to_string())
        .execute(&mut *$tx)
        .await
    };
}
use close_sessions;

#[cfg(test)]
mod tests {
    use super::*;
    use overlay::Identity;

    #[test]
    fn postgres_advisory_locks_use_distinct_documented_keys() {
        let ingest = POSTGRES.ingest_lock.unwrap();
        assert!(ingest.contains(&format!("pg_advisory_xact_lock_shared({LOCK_MARK})")));
        assert!(ingest.contains(&format!(
            "pg_advisory_xact_lock({LOCK_NODE_SPACE}, hashtext($1))"
        )));
        assert_eq!(
            POSTGRES.mark_lock.unwrap(),
            format!("SELECT pg_advisory_xact_lock({LOCK_MARK})::text")
        );
        assert_eq!(
            POSTGRES.run_lock.unwrap(),
            format!("SELECT pg_advisory_xact_lock({LOCK_RUN_WRITE})::text")
        );
        let mut keys = [LOCK_ACCOUNTING, LOCK_MARK, LOCK_RUN_WRITE];
        keys.sort();
        assert!(keys.windows(2).all(|w| w[0] != w[1]));
    }

    testing::both_engines! {
    async fn nodes_contents_and_placements_round_trip(db) {
        let node = Identity::generate().peer_id();
        let serial = db.next_cert_serial(&node, "node", 10, 100).await.unwrap();
        assert_eq!(serial, 1);
        db.register_node(&node, serial, 10).await.unwrap();
        assert!(db.is_node(&node).await.unwrap());
        db.node_joined(&node, "test", &["/ip4/127.0.0.1/udp/1/quic-v1".into()], 1000, 0, 11)
            .await
            .unwrap();
        assert!(
            db.add_partner("p", &Identity::generate().peer_id(), b"c", 1)
                .await
                .unwrap()
        );
        assert!(
            !db.add_partner("p", &Identity::generate().peer_id(), b"c", 1)
                .await
                .unwrap()
        );
        let content = ContentRow {
            id: ContentId([5; 32]),
            partner: "p".into(),
            size: 10,
            manifest: vec![1, 2],
            content_key: [7; 32],
        };
        let placements = vec![Placement {
            segment: 0,
            index: 3,
            node,
        }];
        db.add_content(&content, "f", 1, 1, &placements, 12)
            .await
            .unwrap();
        assert_eq!(db.placements(&content.id).await.unwrap(), placements);
        assert_eq!(
            db.content(&content.id).await.unwrap().unwrap().content_key,
            [7; 32]
        );
        let nodes = db.nodes().await.unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].fragments, 1);
        assert_eq!(nodes[0].quota, 1000);

        // Demand counts tickets sold, never the coordinator's own repair tickets.
        for (i, source) in ["issued", "repair", "repair", "uploaded"]
            .into_iter()
            .enumerate()
        {
            db.add_ticket(&TicketRow {
                id: format!("{i:032x}"),
                content: content.id.to_string(),
                client: node.to_string(),
                partner: "p".into(),
                not_after: 100,
                allowance: 10,
                issued_at: 50,
                price: 0,
                source,
            })
            .await
            .unwrap();
        }
        assert_eq!(db.demand(0, 60).await.unwrap(), vec![(content.id, 2)]);
    }
    }
}
