//! API tokens: stored by hash, looked up on every request, revoked in place.

use serde::Serialize;
use sqlx::Row;

use super::{Db, DbError, on_pool};

/// A stored API token (never the secret itself).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TokenRow {
    /// Public name: the first 16 hex digits of the secret's hash.
    pub id: String,
    pub label: String,
    /// The partner a partner token acts for.
    pub partner: Option<String>,
    /// Space-separated scopes.
    pub scopes: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

macro_rules! token_row {
    ($r:expr) => {
        TokenRow {
            id: $r.get(0),
            label: $r.get(1),
            partner: $r.get(2),
            scopes: $r.get(3),
            created_at: $r.get(4),
            revoked_at: $r.get(5),
        }
    };
}

const COLUMNS: &str = "id, label, partner, scopes, created_at, revoked_at";

impl Db {
    /// Stores a new token by its hash.
    pub async fn add_token(&self, hash: &str, row: &TokenRow) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO api_tokens (id, hash, label, partner, scopes, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&row.id)
            .bind(hash)
            .bind(&row.label)
            .bind(&row.partner)
            .bind(&row.scopes)
            .bind(row.created_at)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The live (unrevoked) token with this hash.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, DbError> {
        let query =
            format!("SELECT {COLUMNS} FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL");
        on_pool!(self, |pool, sql| {
            let row = sqlx::query(&query).bind(hash).fetch_optional(pool).await?;
            Ok(row.map(|r| token_row!(r)))
        })
    }

    /// Every token, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, DbError> {
        let query = format!("SELECT {COLUMNS} FROM api_tokens ORDER BY created_at DESC, id");
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(&query).fetch_all(pool).await?;
            Ok(rows.iter().map(|r| token_row!(r)).collect())
        })
    }

    /// Revokes a token; false when no live token has this id.
    pub async fn revoke_token(&self, id: &str, now: i64) -> Result<bool, DbError> {
        on_pool!(self, |pool, sql| {
            let done = sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::db::testing::both_engines! {
    async fn tokens_are_found_by_hash_until_revoked(db) {
        let row = TokenRow {
            id: "00112233aabbccdd".into(),
            label: "ops".into(),
            partner: None,
            scopes: "admin".into(),
            created_at: 10,
            revoked_at: None,
        };
        db.add_token("hash-1", &row).await.unwrap();
        assert_eq!(db.token_by_hash("hash-1").await.unwrap(), Some(row.clone()));
        assert_eq!(db.token_by_hash("hash-2").await.unwrap(), None);
        assert!(
            db.add_token("hash-1", &row).await.is_err(),
            "ids and hashes are unique"
        );
        assert!(db.revoke_token(&row.id, 20).await.unwrap());
        assert!(!db.revoke_token(&row.id, 30).await.unwrap(), "revoked once");
        assert_eq!(db.token_by_hash("hash-1").await.unwrap(), None);
        assert_eq!(db.tokens().await.unwrap()[0].revoked_at, Some(20));
    }
    }
}
