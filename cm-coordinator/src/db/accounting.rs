//! Accounting storage: node reports and the claims they carry, audits, verdicts and the
//! append-only ledger. Reconciliation runs read and write through [`Db::begin`] in one
//! transaction (see `crate::accounting`).

use overlay::identity::encode;
use overlay::report::{NodeReport, NodeReportBody};
use overlay::{ContentId, PeerId};
use serde::Serialize;
use sqlx::Row;

use super::{Db, DbError, Pool, on_pool};

/// Reads a ledger row selected as `id, run, at, kind, debit, credit, amount, service, node, memo`.
macro_rules! ledger_row {
    ($r:expr) => {
        LedgerRow {
            id: $r.get(0),
            run: $r.get(1),
            at: $r.get(2),
            kind: $r.get(3),
            debit: $r.get(4),
            credit: $r.get(5),
            amount: $r.get(6),
            service: $r.get(7),
            node: $r.get(8),
            memo: $r.get(9),
        }
    };
}

/// What ingesting a report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingested {
    /// Counted: `new` claims changed, `duplicate` receipts were already known.
    Accepted { new: u32, duplicate: u32 },
    /// The sequence number was not above the last accepted one: nothing counted.
    Stale { last_seq: u64 },
}

/// One ledger entry as stored: `amount` moves from `debit` to `credit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerRow {
    pub id: i64,
    pub run: Option<i64>,
    pub at: i64,
    pub kind: String,
    pub debit: String,
    pub credit: String,
    pub amount: i64,
    pub service: Option<String>,
    pub node: Option<String>,
    pub memo: String,
}

/// A verdict as stored.
#[derive(Clone, Debug, Serialize)]
pub struct VerdictRow {
    pub id: i64,
    pub run: i64,
    pub node: Option<String>,
    pub client: Option<String>,
    pub ticket: Option<String>,
    pub outcome: String,
    pub kind: String,
    pub amount: String,
    pub offence: bool,
    pub evidence: serde_json::Value,
    pub at: i64,
}

/// An audit outcome as stored.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRow {
    pub node: String,
    pub content: String,
    pub segment: i64,
    pub index: i64,
    pub outcome: String,
    pub failed: bool,
    pub offence: bool,
    pub detail: String,
    pub at: i64,
}

/// The ledger account names.
pub mod accounts {
    /// A node's earnings available for payout (negative: debt).
    pub fn available(node: &str) -> String {
        format!("node:{node}:available")
    }
    /// A node's earnings held back.
    pub fn held(node: &str) -> String {
        format!("node:{node}:held")
    }
    pub const WORK: &str = "cm:work";
    pub const BONUSES: &str = "cm:bonuses";
    pub const PENALTIES: &str = "cm:penalties";
    pub const FORFEITS: &str = "cm:forfeits";
    pub const PAYOUTS: &str = "cm:payouts";
}

fn online_secs(body: &NodeReportBody) -> u64 {
    body.sessions
        .iter()
        .map(|&(s, e)| e.min(body.to).saturating_sub(s.max(body.from)))
        .sum()
}

impl Db {
    /// Ingests a node's report (its signature already checked): claims upserted per ticket
    /// (a receipt not newer than the one kept counts as a duplicate), holdings replaced. One
    /// transaction: a crash leaves either the whole report or none of it.
    pub async fn ingest_report(&self, report: &NodeReport, now: u64) -> Result<Ingested, DbError> {
        on_pool!(self, |pool, sql| {
            let body = &report.body;
            let node = body.node.to_string();
            let mut tx = pool.begin_with(sql.begin_write).await?;
            if let Some(lock) = sql.ingest_lock {
                sqlx::query(lock).bind(&node).execute(&mut *tx).await?;
            }
            let last: Option<i64> =
                sqlx::query("SELECT MAX(seq) FROM node_reports WHERE node = $1")
                    .bind(&node)
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0);
            if let Some(last) = last
                && body.seq <= last as u64
            {
                return Ok(Ingested::Stale {
                    last_seq: last as u64,
                });
            }
            let digest = blake3::hash(&encode(body));
            // The report's rowid marks the tickets it changes (see `dirty_tickets`).
            let mark: i64 = sqlx::query(
            "INSERT INTO node_reports (node, seq, period_from, period_to, received_at, claims, held, upload_bps, online_secs, digest, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING rowid",
        )
        .bind(&node)
        .bind(body.seq as i64)
        .bind(body.from as i64)
        .bind(body.to as i64)
        .bind(now as i64)
        .bind(body.served.len() as i64)
        .bind(body.held.as_ref().map(|_| body.held_count() as i64))
        .bind(body.upload_bps.min(i64::MAX as u64) as i64)
        .bind(online_secs(body) as i64)
        .bind(digest.as_bytes().as_slice())
        .bind(report.signature.to_bytes().as_slice())
        .fetch_one(&mut *tx)
        .await?
        .get(0);

            let (mut new, mut duplicate) = (0u32, 0u32);
            for claim in &body.served {
                let ticket = hex::encode(claim.ticket_id);
                // A receipt only backs the claim it travels with: same node, ticket and content.
                let receipt = claim.receipt.as_ref().filter(|r| {
                    r.body.node == body.node
                        && r.body.ticket_id == claim.ticket_id
                        && r.body.content == claim.content
                });
                let kept: Option<(Option<i64>, i64, i64)> = sqlx::query(
                "SELECT receipt_seq, bytes, fragments FROM served_claims WHERE ticket = $1 AND node = $2",
            )
            .bind(&ticket)
            .bind(&node)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| (r.get(0), r.get(1), r.get(2)));
                let receipt_is_new = match (&kept, receipt) {
                    (_, None) => false,
                    (Some((Some(seq), _, _)), Some(r)) => r.body.seq > *seq as u64,
                    (_, Some(_)) => true,
                };
                if receipt.is_some() && !receipt_is_new {
                    duplicate += 1;
                }
                let claim_changed = match &kept {
                    None => true,
                    Some((_, bytes, fragments)) => {
                        claim.bytes as i64 != *bytes || claim.fragments as i64 != *fragments
                    }
                };
                if !receipt_is_new && !claim_changed {
                    continue;
                }
                new += 1;
                let r = receipt.filter(|_| receipt_is_new);
                sqlx::query(
                "INSERT INTO served_claims (ticket, node, content, bytes, fragments, report_seq, first_seen, updated_at,
                     receipt_signer, receipt_bytes, receipt_fragments, receipt_seq, receipt_time, receipt_sig)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT (ticket, node) DO UPDATE SET
                     bytes = excluded.bytes, fragments = excluded.fragments,
                     report_seq = excluded.report_seq, updated_at = excluded.updated_at,
                     receipt_signer = COALESCE(excluded.receipt_signer, served_claims.receipt_signer),
                     receipt_bytes = COALESCE(excluded.receipt_bytes, served_claims.receipt_bytes),
                     receipt_fragments = COALESCE(excluded.receipt_fragments, served_claims.receipt_fragments),
                     receipt_seq = COALESCE(excluded.receipt_seq, served_claims.receipt_seq),
                     receipt_time = COALESCE(excluded.receipt_time, served_claims.receipt_time),
                     receipt_sig = COALESCE(excluded.receipt_sig, served_claims.receipt_sig)",
            )
            .bind(&ticket)
            .bind(&node)
            .bind(claim.content.to_string())
            .bind(claim.bytes.min(i64::MAX as u64) as i64)
            .bind(claim.fragments.min(i64::MAX as u64) as i64)
            .bind(body.seq as i64)
            .bind(now as i64)
            .bind(now as i64)
            .bind(r.map(|r| r.signer.to_string()))
            .bind(r.map(|r| r.body.bytes.min(i64::MAX as u64) as i64))
            .bind(r.map(|r| r.body.fragments.min(i64::MAX as u64) as i64))
            .bind(r.map(|r| r.body.seq.min(i64::MAX as u64) as i64))
            .bind(r.map(|r| r.body.time.min(i64::MAX as u64) as i64))
            .bind(r.map(|r| r.signature.to_bytes().to_vec()))
            .execute(&mut *tx)
            .await?;
                sqlx::query(
                    "INSERT INTO dirty_tickets (ticket, mark) VALUES ($1, $2)
                 ON CONFLICT (ticket) DO UPDATE SET mark = excluded.mark",
                )
                .bind(&ticket)
                .bind(mark)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(held) = &body.held {
                sqlx::query(
                "INSERT INTO node_holdings (node, report_seq, at, fragments) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (node) DO UPDATE SET report_seq = excluded.report_seq, at = excluded.at, fragments = excluded.fragments",
            )
            .bind(&node)
            .bind(body.seq as i64)
            .bind(body.to.min(now) as i64)
            .bind(encode(held))
            .execute(&mut *tx)
            .await?;
            }
            tx.commit().await?;
            Ok(Ingested::Accepted { new, duplicate })
        })
    }

    /// The newest report sequence number accepted from `node` (0: none).
    pub async fn last_report_seq(&self, node: &PeerId) -> Result<u64, DbError> {
        on_pool!(self, |pool, sql| {
            let last: Option<i64> =
                sqlx::query("SELECT MAX(seq) FROM node_reports WHERE node = $1")
                    .bind(node.to_string())
                    .fetch_one(pool)
                    .await?
                    .get(0);
            Ok(last.unwrap_or(0) as u64)
        })
    }

    /// A fragment drawn at random from those `node` is paid to store now.
    pub async fn random_placement(
        &self,
        node: &PeerId,
    ) -> Result<Option<overlay::store::FragmentId>, DbError> {
        on_pool!(self, |pool, sql| {
            let row = sqlx::query(
            "SELECT content, segment, idx FROM placements WHERE node = $1 AND removed_at IS NULL ORDER BY RANDOM() LIMIT 1",
        )
        .bind(node.to_string())
        .fetch_optional(pool)
        .await?;
            row.map(|r| {
                Ok(overlay::store::FragmentId {
                    content: super::parse_content(&r.get::<String, _>(0))?,
                    segment: r.get::<i64, _>(1) as u32,
                    index: r.get::<i64, _>(2) as u16,
                })
            })
            .transpose()
        })
    }

    /// Takes the accounting lock: one reconciliation run or payout at a time across every
    /// coordinator sharing the database, held until [`AccountingLock::release`] (or, should the
    /// process die, until its connection closes). On SQLite, where one process owns the
    /// database, there is nothing to take.
    pub async fn lock_accounting(&self) -> Result<AccountingLock, DbError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(AccountingLock(None));
        };
        // A connection of its own, outside the pool: returned to the pool, it would keep the
        // lock; dropped, it closes and the server releases the lock.
        let mut conn = pool.acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)::text")
            .bind(super::LOCK_ACCOUNTING)
            .execute(&mut conn)
            .await?;
        Ok(AccountingLock(Some(conn)))
    }

    /// The newest reconciliation run's ID (0: none yet).
    pub async fn last_run_id(&self) -> Result<i64, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(sqlx::query("SELECT COALESCE(MAX(id), 0) FROM recon_runs")
                .fetch_one(pool)
                .await?
                .get(0))
        })
    }

    /// End of the last reconciliation run's period (0: none yet).
    pub async fn last_run_end(&self) -> Result<u64, DbError> {
        on_pool!(self, |pool, sql| {
            let end: Option<i64> = sqlx::query("SELECT MAX(period_to) FROM recon_runs")
                .fetch_one(pool)
                .await?
                .get(0);
            Ok(end.unwrap_or(0) as u64)
        })
    }

    /// Balance of every ledger account (credits in minus debits out).
    pub async fn balances(&self) -> Result<Vec<(String, i64)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT account, CAST(SUM(amount) AS BIGINT) FROM (
                 SELECT credit AS account, amount FROM ledger
                 UNION ALL SELECT debit AS account, -amount FROM ledger
             ) AS entries GROUP BY account ORDER BY account",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Balance of one account.
    pub async fn balance(&self, account: &str) -> Result<i64, DbError> {
        on_pool!(self, |pool, sql| {
            let row = sqlx::query(
                "SELECT CAST(COALESCE((SELECT SUM(amount) FROM ledger WHERE credit = $1), 0)
                  - COALESCE((SELECT SUM(amount) FROM ledger WHERE debit = $1), 0) AS BIGINT)",
            )
            .bind(account)
            .fetch_one(pool)
            .await?;
            Ok(row.get(0))
        })
    }

    /// Sum of a node's ledger entries of one kind.
    pub async fn ledger_sum(&self, node: &str, kind: &str) -> Result<i64, DbError> {
        on_pool!(self, |pool, sql| {
            let row =
            sqlx::query("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger WHERE node = $1 AND kind = $2")
                .bind(node)
                .bind(kind)
                .fetch_one(pool)
                .await?;
            Ok(row.get(0))
        })
    }

    /// A node's ledger entries, oldest first.
    pub async fn ledger_of(&self, node: &str) -> Result<Vec<LedgerRow>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
            "SELECT id, run, at, kind, debit, credit, amount, service, node, memo FROM ledger WHERE node = $1 ORDER BY id",
        )
        .bind(node)
        .fetch_all(pool)
        .await?;
            Ok(rows.into_iter().map(|r| ledger_row!(r)).collect())
        })
    }

    /// Verdicts about a node (or every verdict, `None`), newest first, at most `limit`.
    pub async fn verdicts(
        &self,
        node: Option<&str>,
        limit: i64,
    ) -> Result<Vec<VerdictRow>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
            "SELECT id, run, node, client, ticket, outcome, kind, amount, offence, evidence, at FROM verdicts
             WHERE $1 IS NULL OR node = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(node)
        .bind(limit)
        .fetch_all(pool)
        .await?;
            rows.into_iter()
                .map(|r| {
                    let evidence: String = r.get(9);
                    Ok(VerdictRow {
                        id: r.get(0),
                        run: r.get(1),
                        node: r.get(2),
                        client: r.get(3),
                        ticket: r.get(4),
                        outcome: r.get(5),
                        kind: r.get(6),
                        amount: r.get(7),
                        offence: r.get::<i64, _>(8) != 0,
                        evidence: serde_json::from_str(&evidence)
                            .map_err(|e| DbError::Corrupt(format!("verdict evidence: {e}")))?,
                        at: r.get(10),
                    })
                })
                .collect()
        })
    }

    /// Records one audit outcome.
    pub async fn add_audit(&self, a: &AuditRow) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
            "INSERT INTO audits (node, content, segment, idx, outcome, failed, offence, detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&a.node)
        .bind(&a.content)
        .bind(a.segment)
        .bind(a.index)
        .bind(&a.outcome)
        .bind(a.failed as i64)
        .bind(a.offence as i64)
        .bind(&a.detail)
        .bind(a.at)
        .execute(pool)
        .await?;
            Ok(())
        })
    }

    /// Audits of a node in all: (passed, failed, timed out and re-checked).
    pub async fn audit_counts(&self, node: &str) -> Result<(i64, i64, i64), DbError> {
        on_pool!(self, |pool, sql| {
            let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN outcome = 'pass' THEN 1 ELSE 0 END), 0), CAST(COALESCE(SUM(failed), 0) AS BIGINT),
                    COALESCE(SUM(CASE WHEN outcome = 'timeout' THEN 1 ELSE 0 END), 0)
             FROM audits WHERE node = $1",
        )
        .bind(node)
        .fetch_one(pool)
        .await?;
            Ok((row.get(0), row.get(1), row.get(2)))
        })
    }

    /// A node's accruals per service in the newest reconciliation run.
    pub async fn last_run_accruals(&self, node: &str) -> Result<Vec<(String, i64)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT service, CAST(SUM(amount) AS BIGINT) FROM ledger
             WHERE node = $1 AND kind = 'accrual' AND run = (SELECT MAX(id) FROM recon_runs)
             GROUP BY service",
            )
            .bind(node)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<Option<String>, _>(0).unwrap_or_default(), r.get(1)))
                .collect())
        })
    }

    /// Whether `node`'s latest holdings list `fragment`: whether it claims to store it.
    pub async fn claims_fragment(
        &self,
        node: &PeerId,
        fragment: &overlay::store::FragmentId,
    ) -> Result<bool, DbError> {
        let Some((_, _, blob)) = self.holdings(&node.to_string()).await? else {
            return Ok(false);
        };
        let held: Vec<overlay::report::HeldContent> = postcard::from_bytes(&blob)
            .map_err(|e| DbError::Corrupt(format!("holdings of {node}: {e}")))?;
        Ok(held.iter().any(|h| {
            h.content == fragment.content
                && h.fragments.contains(&(fragment.segment, fragment.index))
        }))
    }

    /// Saved per-node state of a kind (`audit_states` or `pay_states`) as JSON text.
    pub async fn node_state(
        &self,
        table: StateTable,
        node: &str,
    ) -> Result<Option<String>, DbError> {
        on_pool!(self, |pool, sql| {
            let sql = format!("SELECT state FROM {} WHERE node = $1", table.name());
            Ok(sqlx::query(&sql)
                .bind(node)
                .fetch_optional(pool)
                .await?
                .map(|r| r.get(0)))
        })
    }

    /// Every saved state of a kind.
    pub async fn node_states(&self, table: StateTable) -> Result<Vec<(String, String)>, DbError> {
        on_pool!(self, |pool, sql| {
            let sql = format!("SELECT node, state FROM {}", table.name());
            Ok(sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    /// Saves one node's state of a kind.
    pub async fn save_node_state(
        &self,
        table: StateTable,
        node: &str,
        state: &str,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            let sql = format!(
                "INSERT INTO {} (node, state) VALUES ($1, $2) ON CONFLICT (node) DO UPDATE SET state = excluded.state",
                table.name()
            );
            sqlx::query(&sql)
                .bind(node)
                .bind(state)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// A content's manifest bytes and partner, for accounting lookups.
    pub async fn content_partner(&self, id: &ContentId) -> Result<Option<String>, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(sqlx::query("SELECT partner FROM contents WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?
                .map(|r| r.get(0)))
        })
    }
}

/// Held by one reconciliation run or payout at a time (see [`Db::lock_accounting`]).
#[must_use = "the lock is released when dropped"]
pub struct AccountingLock(Option<sqlx::PgConnection>);

impl AccountingLock {
    /// Releases the lock.
    pub async fn release(self) {
        if let Some(conn) = self.0 {
            // Closing the session releases its advisory locks.
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

/// Per-node state tables.
#[derive(Clone, Copy, Debug)]
pub enum StateTable {
    Audit,
    Pay,
}

impl StateTable {
    fn name(self) -> &'static str {
        match self {
            StateTable::Audit => "audit_states",
            StateTable::Pay => "pay_states",
        }
    }
}

/// A served claim as read for reconciliation, borrowed from its ticket's packed claims (see
/// [`Db::dirty_claims`] and [`ClaimRow::unpack`]).
#[derive(Clone, Debug)]
pub struct ClaimRow<'a> {
    pub rowid: i64,
    pub node: &'a str,
    pub content: &'a str,
    pub bytes: u64,
    pub fragments: u64,
    pub report_seq: u64,
    pub first_seen: u64,
    pub receipt: Option<ReceiptRow<'a>>,
    pub paid_bytes: u64,
}

/// The receipt columns of a claim.
#[derive(Clone, Debug)]
pub struct ReceiptRow<'a> {
    pub signer: &'a str,
    pub bytes: u64,
    pub fragments: u64,
    pub seq: u64,
    pub time: u64,
    /// The stored signature bytes, hex-encoded (decoded only for the few claims checked in
    /// depth).
    pub signature_hex: &'a str,
}

impl ReceiptRow<'_> {
    /// The stored signature bytes (`None`: not valid hex, which the database never holds).
    pub fn signature(&self) -> Option<Vec<u8>> {
        hex::decode(self.signature_hex).ok()
    }
}

/// A ticket with claims to settle, as [`Db::dirty_claims`] reads it.
#[derive(Clone, Debug)]
pub struct DirtyTicket {
    /// The ticket ID, hex.
    pub hex: String,
    pub sale: Option<SaleRow>,
    /// Its claims, as [`ClaimRow::unpack_settled`] reads them.
    pub packed: String,
    /// Its settlement, as [`ClaimRow::pack_settled`] wrote it.
    pub paid: Option<String>,
}

/// A sales record as reconciliation needs it.
#[derive(Clone, Debug)]
pub struct SaleRow {
    pub client: String,
    pub allowance: u64,
    pub not_after: u64,
    pub source: String,
}

/// A placement as storage reconciliation needs it.
#[derive(Clone, Debug)]
pub struct PlacementRow {
    pub content: String,
    pub segment: u32,
    pub index: u16,
    pub placed_at: u64,
    pub removed_at: Option<u64>,
}

/// What a reconciliation run writes, all in one transaction.
#[derive(Debug, Default)]
pub struct RunWrites {
    pub started_at: u64,
    pub period_from: u64,
    pub period_to: u64,
    pub summary: serde_json::Value,
    /// The newest run when this one began reading (0: none): the run is written only if it
    /// still is.
    pub after_run: i64,
    /// The mark the run settled up to: tickets marked later stay dirty.
    pub settled_upto: i64,
    /// `(ticket, settlement)` for the tickets whose paid bytes changed, as
    /// [`ClaimRow::pack_settled`] packs them.
    pub settled: Vec<(String, String)>,
    /// Tickets left for a later run.
    pub pending: Vec<String>,
    /// `(node, client, ticket, outcome, kind, amount, offence, evidence JSON)`.
    pub verdicts: Vec<NewVerdict>,
    pub entries: Vec<NewEntry>,
    /// `(node, state JSON)`.
    pub pay_states: Vec<(String, String)>,
    /// Placements their holders no longer list: `(content, segment, index, node)`.
    pub lost: Vec<(String, u32, u16, String)>,
}

/// A verdict to store.
#[derive(Clone, Debug)]
pub struct NewVerdict {
    pub node: Option<String>,
    pub client: Option<String>,
    pub ticket: Option<String>,
    pub outcome: String,
    pub kind: String,
    pub amount: u128,
    pub offence: bool,
    pub evidence: String,
}

/// A ledger entry to append.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub kind: String,
    pub debit: String,
    pub credit: String,
    pub amount: i64,
    pub service: Option<String>,
    pub node: Option<String>,
    pub memo: String,
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

/// The tickets marked dirty up to `$1` with their sales records, settlements and claims, one
/// row per ticket in ticket order; `$agg` aggregates text and `$fields` packs one claim.
///
/// A claim packs as space-separated fields, claims separated by commas. Every text field is an
/// ID the coordinator wrote from a typed value (hex or base58), so neither separator can occur
/// inside one; NULL numbers read as 0, as `u` does.
macro_rules! dirty_claims_sql {
    ($agg:literal, $fields:literal) => {
        concat!(
            "SELECT d.ticket, t.client, t.allowance, t.not_after, t.source, s.paid,
                 (SELECT ",
            $agg,
            "(",
            $fields,
            ", ',') FROM served_claims c WHERE c.ticket = d.ticket)
             FROM dirty_tickets d
             LEFT JOIN tickets t ON t.id = d.ticket
             LEFT JOIN ticket_settlements s ON s.ticket = d.ticket
             WHERE d.mark <= $1
             ORDER BY d.ticket"
        )
    };
}

pub(super) const DIRTY_CLAIMS_SQLITE: &str = dirty_claims_sql!(
    "group_concat",
    "format('%d %s %s %d %d %d %d %d %s %d %d %d %d %s',
        c.rowid, c.node, c.content, c.bytes, c.fragments, c.report_seq, c.first_seen,
        c.receipt_signer IS NOT NULL AND c.receipt_sig IS NOT NULL, ifnull(c.receipt_signer, ''),
        c.receipt_bytes, c.receipt_fragments, c.receipt_seq, c.receipt_time, hex(c.receipt_sig))"
);

/// PostgreSQL's `format` knows only `%s` (NULL: empty), and its booleans and hex differ.
pub(super) const DIRTY_CLAIMS_POSTGRES: &str = dirty_claims_sql!(
    "string_agg",
    "format('%s %s %s %s %s %s %s %s %s %s %s %s %s %s',
        c.rowid, c.node, c.content, c.bytes, c.fragments, c.report_seq, c.first_seen,
        CASE WHEN c.receipt_signer IS NOT NULL AND c.receipt_sig IS NOT NULL THEN 1 ELSE 0 END,
        COALESCE(c.receipt_signer, ''), COALESCE(c.receipt_bytes, 0),
        COALESCE(c.receipt_fragments, 0), COALESCE(c.receipt_seq, 0), COALESCE(c.receipt_time, 0),
        encode(c.receipt_sig, 'hex'))"
);

impl<'a> ClaimRow<'a> {
    /// The claims of one ticket as [`Db::dirty_claims`] packs them, in node order (the order of
    /// the `(ticket, node)` key, which the core's random draws follow).
    pub fn unpack(packed: &'a str) -> Result<Vec<Self>, DbError> {
        let mut claims = packed
            .split(',')
            .map(|c| parse_claim(c).ok_or_else(|| DbError::Corrupt(format!("packed claim `{c}`"))))
            .collect::<Result<Vec<_>, _>>()?;
        claims.sort_by(|a, b| a.node.cmp(b.node));
        Ok(claims)
    }

    /// As [`ClaimRow::unpack`], with the bytes already paid from the ticket's settlement (see
    /// [`Db::dirty_claims`]).
    pub fn unpack_settled(packed: &'a str, paid: Option<&str>) -> Result<Vec<Self>, DbError> {
        let mut claims = Self::unpack(packed)?;
        for pair in paid.into_iter().flat_map(|p| p.split(',')) {
            let parsed = pair
                .split_once(':')
                .and_then(|(r, b)| Some((r.parse::<i64>().ok()?, b.parse::<u64>().ok()?)));
            let Some((rowid, bytes)) = parsed else {
                return Err(DbError::Corrupt(format!("settled claim `{pair}`")));
            };
            // A claim no longer stored has nothing left to pay.
            if let Some(c) = claims.iter_mut().find(|c| c.rowid == rowid) {
                c.paid_bytes = bytes;
            }
        }
        Ok(claims)
    }

    /// A ticket's settlement as [`ClaimRow::unpack_settled`] reads it: `(claim rowid, bytes
    /// paid)` for the claims with bytes paid. `None`: nothing paid.
    pub fn pack_settled(paid: impl IntoIterator<Item = (i64, u64)>) -> Option<String> {
        use std::fmt::Write;
        let mut packed = String::new();
        for (rowid, bytes) in paid.into_iter().filter(|&(_, b)| b > 0) {
            if !packed.is_empty() {
                packed.push(',');
            }
            let _ = write!(packed, "{rowid}:{bytes}");
        }
        (!packed.is_empty()).then_some(packed)
    }
}

/// Parses one claim packed by [`dirty_claims_sql`].
fn parse_claim(packed: &str) -> Option<ClaimRow<'_>> {
    let mut f = packed.split(' ');
    let mut int = || f.next()?.parse::<i64>().ok();
    let rowid = int()?;
    let (node, content) = (f.next()?, f.next()?);
    let mut int = || f.next()?.parse::<i64>().ok();
    let (bytes, fragments, report_seq, first_seen) = (int()?, int()?, int()?, int()?);
    let has_receipt = int()? != 0;
    let signer = f.next()?;
    let mut int = || f.next()?.parse::<i64>().ok();
    let (r_bytes, r_fragments, r_seq, r_time) = (int()?, int()?, int()?, int()?);
    let signature_hex = f.next()?;
    if f.next().is_some() {
        return None;
    }
    Some(ClaimRow {
        rowid,
        node,
        content,
        bytes: u(bytes),
        fragments: u(fragments),
        report_seq: u(report_seq),
        first_seen: u(first_seen),
        receipt: has_receipt.then_some(ReceiptRow {
            signer,
            bytes: u(r_bytes),
            fragments: u(r_fragments),
            seq: u(r_seq),
            time: u(r_time),
            signature_hex,
        }),
        paid_bytes: 0,
    })
}

impl Db {
    /// The mark a run settles up to: the newest node report so far (see `dirty_tickets`).
    pub async fn dirty_mark(&self) -> Result<i64, DbError> {
        on_pool!(self, |pool, sql| {
            const MARK: &str = "SELECT COALESCE(MAX(rowid), 0) FROM node_reports";
            let Some(lock) = sql.mark_lock else {
                return Ok(sqlx::query(MARK).fetch_one(pool).await?.get(0));
            };
            let mut tx = pool.begin().await?;
            sqlx::query(lock).execute(&mut *tx).await?;
            let mark = sqlx::query(MARK).fetch_one(&mut *tx).await?.get(0);
            tx.commit().await?;
            Ok(mark)
        })
    }

    /// Every claim under a ticket marked dirty up to `mark`, ticket by ticket in ticket order:
    /// `each(ticket)`, its claims packed into one text that [`ClaimRow::unpack_settled`] reads
    /// with the ticket's settlement.
    ///
    /// One row per ticket rather than per claim: at millions of claims per run, the driver's cost
    /// per row and per column dominated the reading.
    pub async fn dirty_claims(
        &self,
        mark: i64,
        mut each: impl FnMut(DirtyTicket),
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            use futures::TryStreamExt;
            let mut rows = sqlx::query(sql.dirty_claims).bind(mark).fetch(pool);
            while let Some(r) = rows.try_next().await? {
                let sale = r.get::<Option<String>, _>(1).map(|client| SaleRow {
                    client,
                    allowance: u(r.get::<Option<i64>, _>(2).unwrap_or(0)),
                    not_after: u(r.get::<Option<i64>, _>(3).unwrap_or(0)),
                    source: r.get::<Option<String>, _>(4).unwrap_or_default(),
                });
                // Claims are never deleted, so a marked ticket has some; a ticket without is skipped.
                let Some(packed) = r.get::<Option<String>, _>(6) else {
                    continue;
                };
                each(DirtyTicket {
                    hex: r.get(0),
                    sale,
                    packed,
                    paid: r.get(5),
                });
            }
            Ok(())
        })
    }

    /// The completion reports of the tickets marked dirty up to `mark`, oldest first (by time,
    /// then by arrival, so the last of a ticket is its newest): `(ticket, id, report, at)`.
    pub async fn dirty_completions(
        &self,
        mark: i64,
    ) -> Result<Vec<(String, i64, Vec<u8>, u64)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT ticket, id, report, at FROM completions
             WHERE ticket IN (SELECT ticket FROM dirty_tickets WHERE mark <= $1)
             ORDER BY ticket, at, id",
            )
            .bind(mark)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), u(r.get(3))))
                .collect())
        })
    }

    /// Fragments ever placed per (content, node).
    pub async fn assigned_counts(&self) -> Result<Vec<(String, String, u64)>, DbError> {
        self.placement_counts(None).await
    }

    /// Fragments placed per (content, node) and not closed before `since`: what the nodes held
    /// at some time from `since` on.
    pub async fn held_counts(&self, since: u64) -> Result<Vec<(String, String, u64)>, DbError> {
        self.placement_counts(Some(since)).await
    }

    /// Placements per (content, node): all of them, or those not closed before `open_since`.
    async fn placement_counts(
        &self,
        open_since: Option<u64>,
    ) -> Result<Vec<(String, String, u64)>, DbError> {
        on_pool!(self, |pool, sql| {
            // `removed_at >= i64::MIN` admits every row: one statement serves both counts.
            let since = open_since.map_or(i64::MIN, |s| i64::try_from(s).unwrap_or(i64::MAX));
            let rows = sqlx::query(
                "SELECT content, node, COUNT(*) FROM placements \
             WHERE removed_at IS NULL OR removed_at >= $1 GROUP BY content, node",
            )
            .bind(since)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get(0), r.get(1), u(r.get(2))))
                .collect())
        })
    }

    /// A node's latest holdings: `(report_seq, at, encoded list)`.
    pub async fn holdings(&self, node: &str) -> Result<Option<(u64, u64, Vec<u8>)>, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(
                sqlx::query("SELECT report_seq, at, fragments FROM node_holdings WHERE node = $1")
                    .bind(node)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| (u(r.get(0)), u(r.get(1)), r.get(2))),
            )
        })
    }

    /// Every node whose holdings were listed at or after `since`, in node order:
    /// `each(node, (report_seq, at, encoded holdings), placements active at any time since
    /// `placed_since`)`. Two streams ordered by node, merged: one query for all nodes rather
    /// than two per node.
    pub async fn holdings_with_placements(
        &self,
        since: u64,
        placed_since: u64,
        mut each: impl FnMut(&str, (u64, u64, &[u8]), Vec<PlacementRow>),
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            use futures::TryStreamExt;
            let mut holdings_conn = pool.acquire().await?;
            let mut placements_conn = pool.acquire().await?;
            let mut holdings = sqlx::query(
            "SELECT node, report_seq, at, fragments FROM node_holdings WHERE at >= $1 ORDER BY node",
        )
        .bind(since as i64)
        .fetch(&mut *holdings_conn);
            // Within a node, the order of `placements_undeleted`, by node.
            let mut placements = sqlx::query(
                "SELECT node, content, segment, idx, placed_at, removed_at FROM placements
             WHERE removed_at IS NULL OR removed_at > $1
             ORDER BY node, removed_at NULLS FIRST, delete_sent_at NULLS FIRST, rowid",
            )
            .bind(placed_since as i64)
            .fetch(&mut *placements_conn);
            let mut next = None;
            while let Some(h) = holdings.try_next().await? {
                let node: &str = h.get(0);
                let mut list = Vec::new();
                loop {
                    let p = match next.take() {
                        Some(p) => p,
                        None => match placements.try_next().await? {
                            Some(p) => p,
                            None => break,
                        },
                    };
                    match p.get::<&str, _>(0).cmp(node) {
                        std::cmp::Ordering::Less => {}
                        std::cmp::Ordering::Equal => list.push(PlacementRow {
                            content: p.get(1),
                            segment: u(p.get(2)) as u32,
                            index: u(p.get(3)) as u16,
                            placed_at: u(p.get(4)),
                            removed_at: p.get::<Option<i64>, _>(5).map(u),
                        }),
                        std::cmp::Ordering::Greater => {
                            next = Some(p);
                            break;
                        }
                    }
                }
                each(node, (u(h.get(1)), u(h.get(2)), h.get(3)), list);
            }
            Ok(())
        })
    }

    /// Failed audits in `(from, to]` (a run ends at `to`, so an audit in its last second
    /// belongs to it): `(node, at, offence)`.
    pub async fn failed_audits(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(String, u64, bool)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT node, at, offence FROM audits WHERE failed = 1 AND at > $1 AND at <= $2",
            )
            .bind(from as i64)
            .bind(to as i64)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get(0), u(r.get(1)), r.get::<i64, _>(2) != 0))
                .collect())
        })
    }

    /// Audit outcomes since `since` (timeouts under containment excluded): `(node, passed, at)`.
    pub async fn audits_since(&self, since: u64) -> Result<Vec<(String, bool, u64)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT node, failed, at FROM audits WHERE at >= $1 AND outcome != 'timeout'",
            )
            .bind(since as i64)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get(0), r.get::<i64, _>(1) == 0, u(r.get(2))))
                .collect())
        })
    }

    /// Passed audits per node, in total.
    pub async fn audits_passed(&self) -> Result<Vec<(String, u64)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT node, COUNT(*) FROM audits WHERE outcome = 'pass' GROUP BY node",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|r| (r.get(0), u(r.get(1)))).collect())
        })
    }

    /// Registered nodes: `(id, registered_at, upload_bps, observed_bps, addrs JSON)`.
    pub async fn node_facts(&self) -> Result<Vec<(String, u64, u64, u64, String)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows =
                sqlx::query("SELECT id, registered_at, upload_bps, observed_bps, addrs FROM nodes")
                    .fetch_all(pool)
                    .await?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get(0), u(r.get(1)), u(r.get(2)), u(r.get(3)), r.get(4)))
                .collect())
        })
    }

    /// Per node: available and held balances, and hold/release/forfeit events `(at, kind,
    /// amount)` in ledger order.
    pub async fn node_ledger_summary(
        &self,
    ) -> Result<std::collections::HashMap<String, NodeLedger>, DbError> {
        on_pool!(self, |pool, sql| {
            let mut out: std::collections::HashMap<String, NodeLedger> = Default::default();
            for (account, balance) in self.balances().await? {
                if let Some(rest) = account.strip_prefix("node:") {
                    if let Some(node) = rest.strip_suffix(":available") {
                        out.entry(node.to_string()).or_default().available = balance;
                    } else if let Some(node) = rest.strip_suffix(":held") {
                        out.entry(node.to_string()).or_default().held = balance;
                    }
                }
            }
            let rows = sqlx::query(
            "SELECT node, at, kind, amount FROM ledger WHERE kind IN ('hold', 'release', 'forfeit') AND node IS NOT NULL ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
            for r in rows {
                let node: String = r.get(0);
                out.entry(node)
                    .or_default()
                    .events
                    .push((u(r.get(1)), r.get(2), r.get(3)));
            }
            Ok(out)
        })
    }

    /// Revenue of tickets sold in `[from, to)`, micro-credits.
    pub async fn revenue(&self, from: u64, to: u64) -> Result<i64, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(sqlx::query(
            "SELECT CAST(COALESCE(SUM(price), 0) AS BIGINT) FROM tickets WHERE issued_at >= $1 AND issued_at < $2 AND source != 'repair'",
        )
        .bind(from as i64)
        .bind(to as i64)
        .fetch_one(pool)
        .await?
        .get(0))
        })
    }

    /// Writes a reconciliation run in one transaction; returns the run's ID.
    pub async fn write_run(&self, w: &RunWrites) -> Result<i64, DbError> {
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            if let Some(lock) = sql.run_lock {
                sqlx::query(lock).execute(&mut *tx).await?;
            }
            let newest: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM recon_runs")
                .fetch_one(&mut *tx)
                .await?
                .get(0);
            if newest != w.after_run {
                return Err(DbError::Conflict(format!(
                    "reconciliation run {newest} was written while this run (after run {}) read; \
                 nothing written, the next run settles it",
                    w.after_run
                )));
            }
            let run: i64 = sqlx::query(
            "INSERT INTO recon_runs (started_at, period_from, period_to, summary) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(w.started_at as i64)
        .bind(w.period_from as i64)
        .bind(w.period_to as i64)
        .bind(w.summary.to_string())
        .fetch_one(&mut *tx)
        .await?
        .get(0);

            // Settled tickets leave `dirty_tickets` (those marked during the run stay), pending ones
            // return; settlements straight from bound values, 10,000 per statement (2 of SQLite's
            // 32,766 parameters each).
            sqlx::query("DELETE FROM dirty_tickets WHERE mark <= $1")
                .bind(w.settled_upto)
                .execute(&mut *tx)
                .await?;
            for chunk in w.pending.chunks(10_000) {
                let mut q = builder(&tx, "INSERT INTO dirty_tickets (ticket, mark) ");
                q.push_values(chunk, |mut b, ticket| {
                    b.push_bind(ticket).push_bind(w.settled_upto);
                });
                q.push(" ON CONFLICT (ticket) DO NOTHING");
                q.build().execute(&mut *tx).await?;
            }
            for chunk in w.settled.chunks(10_000) {
                let mut q = builder(&tx, "INSERT INTO ticket_settlements (ticket, paid) ");
                q.push_values(chunk, |mut b, (ticket, paid)| {
                    b.push_bind(ticket).push_bind(paid);
                });
                q.push(" ON CONFLICT (ticket) DO UPDATE SET paid = excluded.paid");
                q.build().execute(&mut *tx).await?;
            }

            for chunk in w.verdicts.chunks(1_000) {
                let mut q = builder(
                    &tx,
                    "INSERT INTO verdicts (run, node, client, ticket, outcome, kind, amount, offence, evidence, at) ",
                );
                q.push_values(chunk, |mut b, v| {
                    b.push_bind(run)
                        .push_bind(&v.node)
                        .push_bind(&v.client)
                        .push_bind(&v.ticket)
                        .push_bind(&v.outcome)
                        .push_bind(&v.kind)
                        .push_bind(v.amount.to_string())
                        .push_bind(v.offence as i64)
                        .push_bind(&v.evidence)
                        .push_bind(w.period_to as i64);
                });
                q.build().execute(&mut *tx).await?;
            }
            append!(tx, Some(run), w.period_to, &w.entries);
            for chunk in w.pay_states.chunks(1_000) {
                let mut q = builder(&tx, "INSERT INTO pay_states (node, state, updated_run) ");
                q.push_values(chunk, |mut b, (node, state)| {
                    b.push_bind(node).push_bind(state).push_bind(run);
                });
                q.push(" ON CONFLICT (node) DO UPDATE SET state = excluded.state, updated_run = excluded.updated_run");
                q.build().execute(&mut *tx).await?;
            }
            for (content, segment, index, node) in &w.lost {
                sqlx::query(
                "UPDATE placements SET removed_at = $1 WHERE content = $2 AND segment = $3 AND idx = $4 AND node = $5 AND removed_at IS NULL",
            )
            .bind(w.period_to as i64)
            .bind(content)
            .bind(*segment as i64)
            .bind(*index as i64)
            .bind(node)
            .execute(&mut *tx)
            .await?;
            }
            tx.commit().await?;
            Ok(run)
        })
    }

    /// Appends ledger entries outside a reconciliation run (payouts), in one transaction.
    pub async fn append_entries(&self, at: u64, entries: &[NewEntry]) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            append!(tx, None, at, entries);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Whether payouts were already recorded with this memo.
    pub async fn has_payout(&self, memo: &str) -> Result<bool, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(
                sqlx::query("SELECT 1 FROM ledger WHERE kind = 'payout' AND memo = $1 LIMIT 1")
                    .bind(memo)
                    .fetch_optional(pool)
                    .await?
                    .is_some(),
            )
        })
    }

    /// Reconciliation runs, newest first.
    pub async fn runs(&self, limit: i64) -> Result<Vec<serde_json::Value>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
            "SELECT id, started_at, period_from, period_to, summary FROM recon_runs ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?;
            Ok(rows
            .into_iter()
            .map(|r| {
                let summary: String = r.get(4);
                serde_json::json!({
                    "run": r.get::<i64, _>(0),
                    "started_at": r.get::<i64, _>(1),
                    "period_from": r.get::<i64, _>(2),
                    "period_to": r.get::<i64, _>(3),
                    "summary": serde_json::from_str::<serde_json::Value>(&summary).unwrap_or_default(),
                })
            })
            .collect())
        })
    }
}

/// A multi-row insert builder for the engine of `_tx`.
fn builder<'a, DB: sqlx::Database>(
    _tx: &sqlx::Transaction<'_, DB>,
    init: &str,
) -> sqlx::QueryBuilder<'a, DB> {
    sqlx::QueryBuilder::new(init)
}

/// Appends ledger entries (of reconciliation run `run`, if any) in multi-row inserts.
macro_rules! append {
    ($tx:expr, $run:expr, $at:expr, $entries:expr) => {{
        let run: Option<i64> = $run;
        for chunk in $entries.chunks(1_000) {
            let mut q = builder(
                &$tx,
                "INSERT INTO ledger (run, at, kind, debit, credit, amount, service, node, memo) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(run)
                    .push_bind($at as i64)
                    .push_bind(&e.kind)
                    .push_bind(&e.debit)
                    .push_bind(&e.credit)
                    .push_bind(e.amount)
                    .push_bind(&e.service)
                    .push_bind(&e.node)
                    .push_bind(&e.memo);
            });
            q.build().execute(&mut *$tx).await?;
        }
    }};
}
use append;

/// A node's ledger as the pay core needs it.
#[derive(Clone, Debug, Default)]
pub struct NodeLedger {
    pub available: i64,
    pub held: i64,
    /// `(at, kind, amount)` of holds, releases and forfeits, in ledger order.
    pub events: Vec<(u64, String, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKED: &str = "7 nodeB c 10 1 1 5 1 client 10 1 1 5 00,3 nodeA c 20 2 1 5 0  0 0 0 0 ";

    #[test]
    fn settlements_pair_paid_bytes_with_claims_by_rowid() {
        let claims = ClaimRow::unpack_settled(PACKED, None).unwrap();
        assert_eq!(
            claims.iter().map(|c| c.node).collect::<Vec<_>>(),
            ["nodeA", "nodeB"]
        );
        assert!(claims.iter().all(|c| c.paid_bytes == 0));
        assert!(claims[0].receipt.is_none() && claims[1].receipt.is_some());

        // Nothing paid packs to nothing; only paid claims are kept.
        assert_eq!(ClaimRow::pack_settled([(3, 0), (7, 0)]), None);
        let packed = ClaimRow::pack_settled([(3, 0), (7, 10)]).unwrap();
        assert_eq!(packed, "7:10");
        let claims = ClaimRow::unpack_settled(PACKED, Some(&packed)).unwrap();
        assert_eq!((claims[0].paid_bytes, claims[1].paid_bytes), (0, 10));
        // A settled claim no longer stored is ignored.
        let claims = ClaimRow::unpack_settled(PACKED, Some("3:20,99:5")).unwrap();
        assert_eq!((claims[0].paid_bytes, claims[1].paid_bytes), (20, 0));

        for corrupt in ["7", "7:", "x:10", "7:-1", "7:10,"] {
            assert!(
                ClaimRow::unpack_settled(PACKED, Some(corrupt)).is_err(),
                "{corrupt}"
            );
        }
    }

    #[tokio::test]
    async fn upgrading_from_per_claim_settlement_keeps_what_was_paid_and_what_was_dirty() {
        use sqlx::sqlite::SqliteConnectOptions;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        // A database as schema version 3 left it: one ticket settled, one dirty.
        let pool = sqlx::SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        let mut v3 = sqlx::migrate!("./migrations/sqlite");
        v3.migrations = v3
            .migrations
            .iter()
            .filter(|m| m.version <= 3)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        v3.run(&pool).await.unwrap();
        for (ticket, node, paid, dirty) in
            [("aa", "n1", 10, 0), ("aa", "n2", 0, 0), ("bb", "n1", 5, 1)]
        {
            sqlx::query(
                "INSERT INTO served_claims (ticket, node, content, bytes, fragments, report_seq, first_seen, updated_at, paid_bytes, dirty)
                 VALUES ($1, $2, 'c', 10, 1, 1, 1, 1, $3, $4)",
            )
            .bind(ticket)
            .bind(node)
            .bind(paid)
            .bind(dirty)
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO completions (ticket, client, content, report, at) VALUES ('bb', 'c', 'c', x'01', 7)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let db = Db::open_sqlite(&path).await.unwrap();
        let kept = db.dirty_completions(i64::MAX).await.unwrap();
        assert_eq!(kept, [("bb".to_string(), 1, vec![1u8], 7)]);
        let mut read = Vec::new();
        db.dirty_claims(db.dirty_mark().await.unwrap(), |t| read.push(t))
            .await
            .unwrap();
        assert_eq!(read.len(), 1, "only the dirty ticket");
        assert_eq!(read[0].hex, "bb");
        let claims = ClaimRow::unpack_settled(&read[0].packed, read[0].paid.as_deref()).unwrap();
        assert_eq!(claims[0].paid_bytes, 5);
        let settled: Vec<(String, String)> =
            sqlx::query_as("SELECT ticket, paid FROM ticket_settlements ORDER BY ticket")
                .fetch_all(match &db.pool {
                    Pool::Sqlite(pool) => pool,
                    Pool::Postgres(_) => unreachable!("opened as SQLite"),
                })
                .await
                .unwrap();
        assert_eq!(
            settled,
            [
                ("aa".to_string(), "1:10".to_string()),
                ("bb".into(), "3:5".into())
            ]
        );
    }

    crate::db::testing::both_engines! {
    async fn completion_reports_are_kept_once_each_even_within_one_second(db) {
        let client = overlay::Identity::generate().peer_id();
        let content = overlay::ContentId([3; 32]);
        for report in [b"first".as_slice(), b"first", b"second"] {
            db.add_completion("aa", &client, &content, report, 100)
                .await
                .unwrap();
        }
        on_pool!(db, |pool, sql| {
            sqlx::query("INSERT INTO dirty_tickets (ticket, mark) VALUES ('aa', 0)")
                .execute(pool)
                .await
                .unwrap();
        });
        let kept = db.dirty_completions(0).await.unwrap();
        let reports: Vec<&[u8]> = kept.iter().map(|(_, _, r, _)| r.as_slice()).collect();
        assert_eq!(reports, [b"first".as_slice(), b"second"], "newest last");
    }
    }
}
