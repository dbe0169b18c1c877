//! The caller of an API request: its bearer token, checked against the database.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::auth::Grant;
use crate::server::Coordinator;

/// The authenticated caller (a live token's grant).
pub struct Caller(pub Grant);

impl FromRequestParts<Arc<Coordinator>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        coord: &Arc<Coordinator>,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing API token: send `Authorization: Bearer <token>` (an operator makes one with `cm-coordinator token create`)",
            ));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        match crate::auth::check(&coord.db, secret).await? {
            Some(grant) => {
                tracing::Span::current().record("token", grant.token.as_str());
                Ok(Caller(grant))
            }
            None => Err(ApiError::unauthorized("unknown or revoked API token")),
        }
    }
}
