//! API tokens and their scopes: who may call which part of the HTTP API.
//!
//! A token is a random secret (`ccds_` and 64 hex digits) shown once when it is made; the
//! database keeps only its BLAKE3 hash. Every token carries scopes:
//!
//! | scope | allows |
//! | --- | --- |
//! | `admin` | everything, including acting for any partner and managing tokens |
//! | `operator:read` | every read-only operator view (nodes, contents, verdicts, ledger) |
//! | `partner:publish` | publish contents for the token's partner |
//! | `partner:tickets` | issue tickets for the partner's contents |
//! | `partner:sales` | upload sales records of tickets the partner signed offline |
//! | `partner:demand` | send demand hints for the partner's contents |
//! | `partner:read` | list the partner's contents and their health |
//!
//! A partner token is bound to one partner: its `partner:*` scopes never reach another
//! partner's contents. Operator scopes are never given to a partner token.

use std::fmt;
use std::str::FromStr;

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError, TokenRow};

/// Prefix of every token secret, so a leaked one is recognisable (and greppable).
pub const TOKEN_PREFIX: &str = "ccds_";

/// A permission a token may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    Admin,
    OperatorRead,
    PartnerPublish,
    PartnerTickets,
    PartnerSales,
    PartnerDemand,
    PartnerRead,
}

impl Scope {
    /// Every scope, in the order they are documented.
    pub const ALL: [Scope; 7] = [
        Scope::Admin,
        Scope::OperatorRead,
        Scope::PartnerPublish,
        Scope::PartnerTickets,
        Scope::PartnerSales,
        Scope::PartnerDemand,
        Scope::PartnerRead,
    ];

    /// The scopes a partner token gets when none are named.
    pub const PARTNER_DEFAULT: [Scope; 5] = [
        Scope::PartnerPublish,
        Scope::PartnerTickets,
        Scope::PartnerSales,
        Scope::PartnerDemand,
        Scope::PartnerRead,
    ];

    /// The scope's name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::OperatorRead => "operator:read",
            Scope::PartnerPublish => "partner:publish",
            Scope::PartnerTickets => "partner:tickets",
            Scope::PartnerSales => "partner:sales",
            Scope::PartnerDemand => "partner:demand",
            Scope::PartnerRead => "partner:read",
        }
    }

    /// Whether the scope belongs to partners (and so needs a partner).
    pub fn is_partner(self) -> bool {
        self.as_str().starts_with("partner:")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown scope `{s}` (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

impl TryFrom<String> for Scope {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.as_str().to_string()
    }
}

/// What a token may do: the identity and permissions of one API caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The token's public id.
    pub token: String,
    /// The partner a partner token acts for.
    pub partner: Option<String>,
    pub scopes: Vec<Scope>,
}

/// Why a caller may not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this token lacks the `{0}` scope")]
    Scope(Scope),
    #[error("this token acts for partner `{token}`, not `{wanted}`")]
    OtherPartner { token: String, wanted: String },
}

impl Grant {
    /// Whether the token holds `scope` (admin holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// Checks `scope` alone (operator endpoints).
    pub fn require(&self, scope: Scope) -> Result<(), Denied> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(Denied::Scope(scope))
        }
    }

    /// Checks `scope` for acting as `partner`: a partner token only for its own partner; an
    /// admin token for any; an `operator:read` token may read any partner's contents.
    pub fn require_partner(&self, scope: Scope, partner: &str) -> Result<(), Denied> {
        if self.scopes.contains(&Scope::Admin)
            || (scope == Scope::PartnerRead && self.scopes.contains(&Scope::OperatorRead))
        {
            return Ok(());
        }
        if !self.scopes.contains(&scope) {
            return Err(Denied::Scope(scope));
        }
        match &self.partner {
            Some(own) if own == partner => Ok(()),
            Some(own) => Err(Denied::OtherPartner {
                token: own.clone(),
                wanted: partner.to_string(),
            }),
            None => Err(Denied::Scope(scope)),
        }
    }
}

/// Errors making or checking tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("unknown partner `{0}` (add it with `cm-coordinator partner add {0}`)")]
    UnknownPartner(String),
    #[error("partner scopes ({0}) need a partner: give one, or use `admin` or `operator:read`")]
    PartnerScopeWithoutPartner(Scope),
    #[error("a partner token cannot hold the operator scope `{0}`")]
    OperatorScopeForPartner(Scope),
    #[error("a token needs at least one scope")]
    NoScope,
    #[error("token labels are 1-100 characters; got {0}")]
    BadLabel(usize),
}

/// The hash under which a secret is stored.
pub fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// A new token: its secret (shown once) and its stored row.
pub struct NewToken {
    pub secret: String,
    pub row: TokenRow,
}

/// Makes and stores a token. Partner tokens must name a known partner and hold only partner
/// scopes; operator tokens hold no partner scopes.
pub async fn create(
    db: &Db,
    label: &str,
    partner: Option<&str>,
    scopes: &[Scope],
    now: i64,
) -> Result<NewToken, TokenError> {
    let label = label.trim();
    if label.is_empty() || label.chars().count() > 100 {
        return Err(TokenError::BadLabel(label.chars().count()));
    }
    let mut scopes = scopes.to_vec();
    if scopes.is_empty() {
        if partner.is_none() {
            return Err(TokenError::NoScope);
        }
        scopes = Scope::PARTNER_DEFAULT.to_vec();
    }
    scopes.sort();
    scopes.dedup();
    match partner {
        Some(p) => {
            if let Some(s) = scopes.iter().find(|s| !s.is_partner()) {
                return Err(TokenError::OperatorScopeForPartner(*s));
            }
            if db.partner_cert(p).await?.is_none() {
                return Err(TokenError::UnknownPartner(p.to_string()));
            }
        }
        None => {
            if let Some(s) = scopes.iter().find(|s| s.is_partner()) {
                return Err(TokenError::PartnerScopeWithoutPartner(*s));
            }
        }
    }
    let bytes: [u8; 32] = rand::rng().random();
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = hash_secret(&secret);
    let row = TokenRow {
        id: hash[..16].to_string(),
        label: label.to_string(),
        partner: partner.map(str::to_string),
        scopes: scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        created_at: now,
        revoked_at: None,
    };
    db.add_token(&hash, &row).await?;
    Ok(NewToken { secret, row })
}

/// The grant of a presented secret, if it is a live token.
pub async fn check(db: &Db, secret: &str) -> Result<Option<Grant>, DbError> {
    if !secret.starts_with(TOKEN_PREFIX) || secret.len() > 128 {
        return Ok(None);
    }
    let Some(row) = db.token_by_hash(&hash_secret(secret)).await? else {
        return Ok(None);
    };
    let scopes = row
        .scopes
        .split_whitespace()
        .map(Scope::from_str)
        .collect::<Result<Vec<_>, _>>()
        .map_err(DbError::Corrupt)?;
    Ok(Some(Grant {
        token: row.id,
        partner: row.partner,
        scopes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(partner: Option<&str>, scopes: &[Scope]) -> Grant {
        Grant {
            token: "t".into(),
            partner: partner.map(str::to_string),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn scopes_round_trip_by_name() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
        }
        assert!(
            "root"
                .parse::<Scope>()
                .unwrap_err()
                .contains("partner:publish")
        );
    }

    #[test]
    fn partner_tokens_reach_only_their_partner() {
        let g = grant(Some("acme"), &[Scope::PartnerPublish]);
        assert_eq!(g.require_partner(Scope::PartnerPublish, "acme"), Ok(()));
        assert_eq!(
            g.require_partner(Scope::PartnerPublish, "other"),
            Err(Denied::OtherPartner {
                token: "acme".into(),
                wanted: "other".into()
            })
        );
        assert_eq!(
            g.require_partner(Scope::PartnerTickets, "acme"),
            Err(Denied::Scope(Scope::PartnerTickets))
        );
        assert_eq!(
            g.require(Scope::OperatorRead),
            Err(Denied::Scope(Scope::OperatorRead))
        );
    }

    #[test]
    fn admin_holds_every_scope_and_readers_only_read() {
        let admin = grant(None, &[Scope::Admin]);
        for s in Scope::ALL {
            assert!(admin.has(s));
            assert_eq!(admin.require_partner(s, "anyone"), Ok(()));
        }
        let reader = grant(None, &[Scope::OperatorRead]);
        assert_eq!(reader.require_partner(Scope::PartnerRead, "acme"), Ok(()));
        assert_eq!(
            reader.require_partner(Scope::PartnerPublish, "acme"),
            Err(Denied::Scope(Scope::PartnerPublish))
        );
        assert_eq!(
            reader.require(Scope::Admin),
            Err(Denied::Scope(Scope::Admin))
        );
    }

    crate::db::testing::both_engines! {
    async fn tokens_are_checked_by_secret_and_scoped_at_creation(db) {
        let ops = create(&db, "ops", None, &[Scope::OperatorRead], 1)
            .await
            .unwrap();
        assert!(ops.secret.starts_with(TOKEN_PREFIX));
        let g = check(&db, &ops.secret).await.unwrap().unwrap();
        assert_eq!(g.scopes, vec![Scope::OperatorRead]);
        assert_eq!(g.token, ops.row.id);
        // A near miss is no token at all.
        let mut wrong = ops.secret.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(check(&db, &wrong).await.unwrap(), None);
        assert_eq!(check(&db, "Bearer nonsense").await.unwrap(), None);
        // Scopes must fit the kind of token.
        assert!(matches!(
            create(&db, "x", None, &[Scope::PartnerPublish], 1).await,
            Err(TokenError::PartnerScopeWithoutPartner(
                Scope::PartnerPublish
            ))
        ));
        assert!(matches!(
            create(&db, "x", Some("nobody"), &[], 1).await,
            Err(TokenError::UnknownPartner(_))
        ));
        assert!(matches!(
            create(&db, "", None, &[Scope::Admin], 1).await,
            Err(TokenError::BadLabel(0))
        ));
        // Revoked tokens stop working at once.
        db.revoke_token(&ops.row.id, 2).await.unwrap();
        assert_eq!(check(&db, &ops.secret).await.unwrap(), None);
    }
    }
}
