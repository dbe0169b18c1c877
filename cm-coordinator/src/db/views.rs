//! Read-only views for the HTTP API and the dashboard: content listings and the raw series
//! behind its charts.

use serde::Serialize;
use sqlx::Row;

use super::{Db, DbError, on_pool};

/// A published content, without its manifest or key.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ContentSummary {
    pub id: String,
    pub partner: String,
    pub name: String,
    pub size: i64,
    pub data_shards: i64,
    pub parity_shards: i64,
    pub created_at: i64,
    /// Tickets issued for it.
    pub tickets: i64,
    /// Completed downloads reported by clients.
    pub downloads: i64,
}

impl Db {
    /// Published contents, newest first; only `partner`'s when given.
    pub async fn content_list(
        &self,
        partner: Option<&str>,
    ) -> Result<Vec<ContentSummary>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT c.id, c.partner, c.name, c.size,
                        CAST(c.data_shards AS BIGINT), CAST(c.parity_shards AS BIGINT), c.created_at,
                        (SELECT COUNT(*) FROM tickets t WHERE t.content = c.id),
                        (SELECT COUNT(*) FROM completions d WHERE d.content = c.id)
                 FROM contents c
                 WHERE CAST($1 AS TEXT) IS NULL OR c.partner = $1
                 ORDER BY c.created_at DESC, c.id",
            )
            .bind(partner)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| ContentSummary {
                    id: r.get(0),
                    partner: r.get(1),
                    name: r.get(2),
                    size: r.get(3),
                    data_shards: r.get(4),
                    parity_shards: r.get(5),
                    created_at: r.get(6),
                    tickets: r.get(7),
                    downloads: r.get(8),
                })
                .collect())
        })
    }

    /// Online sessions that overlap `[since, ∞)`: `(started_at, ended_at)`, open ones without
    /// an end.
    pub async fn session_spans(&self, since: i64) -> Result<Vec<(i64, Option<i64>)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT started_at, ended_at FROM node_sessions
                 WHERE ended_at IS NULL OR ended_at >= $1",
            )
            .bind(since)
            .fetch_all(pool)
            .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Completed downloads since `since`: `(at, content size)`.
    pub async fn deliveries(&self, since: i64) -> Result<Vec<(i64, i64)>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT d.at, c.size FROM completions d JOIN contents c ON c.id = d.content
                 WHERE d.at >= $1",
            )
            .bind(since)
            .fetch_all(pool)
            .await?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}

/// One payout entry of the ledger.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PayoutRow {
    /// The period's name, from the entry's memo.
    pub period: String,
    pub node: Option<String>,
    /// Micro-credits paid.
    pub amount: i64,
    pub at: i64,
}

impl Db {
    /// The newest `limit` payouts.
    pub async fn payouts(&self, limit: i64) -> Result<Vec<PayoutRow>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT memo, node, amount, at FROM ledger WHERE kind = 'payout'
                 ORDER BY at DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let memo: String = r.get(0);
                    PayoutRow {
                        period: memo
                            .strip_prefix("payout for period ")
                            .unwrap_or(&memo)
                            .to_string(),
                        node: r.get(1),
                        amount: r.get(2),
                        at: r.get(3),
                    }
                })
                .collect())
        })
    }
}
