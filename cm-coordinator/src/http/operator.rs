//! Operator endpoints: the collective's state (`operator:read`) and the actions that move money
//! or access (`admin`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use crate::admin::AdminRequest;
use crate::auth::Scope;
use crate::server::{Coordinator, admin};

/// Who the presented token is.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "operator",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn whoami(Caller(grant): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        token: grant.token,
        partner: grant.partner,
        scopes: grant.scopes.iter().map(|s| s.to_string()).collect(),
    })
}

/// The caller's token: its id, partner and scopes.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub token: String,
    pub partner: Option<String>,
    pub scopes: Vec<String>,
}

/// An error: `{"error": "one sentence"}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Deserialize, IntoParams)]
pub struct OverviewQuery {
    /// Hours of history in the time series [default: 24, at most 720].
    pub hours: Option<u32>,
}

/// Buckets in each time series of the overview.
const SERIES_BUCKETS: i64 = 48;

/// The collective at a glance: nodes, capacity, contents, and time series of nodes online and
/// bytes delivered.
#[utoipa::path(get, path = "/api/v1/overview", tag = "operator", params(OverviewQuery),
    responses((status = 200, body = serde_json::Value), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("token" = ["operator:read"])))]
pub async fn overview(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Query(q): Query<OverviewQuery>,
) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    let hours = i64::from(q.hours.unwrap_or(24).clamp(1, 720));
    let now = overlay::time::now_secs() as i64;
    let bucket = (hours * 3600 / SERIES_BUCKETS).max(1);
    let from = now - bucket * SERIES_BUCKETS;
    let spans = coord.db.session_spans(from).await?;
    let deliveries = coord.db.deliveries(from).await?;
    let nodes = coord.db.nodes().await?;
    let contents = coord.db.content_list(None).await?;
    let online = coord.registry.online().len();
    let (quota, used) = nodes.iter().fold((0i64, 0i64), |(q, u), n| {
        (q.saturating_add(n.quota), u.saturating_add(n.used))
    });
    let series = Series::build(
        from,
        bucket,
        SERIES_BUCKETS as usize,
        now,
        &spans,
        &deliveries,
    );
    Ok(Json(serde_json::json!({
        "now": now,
        "nodes_registered": nodes.len(),
        "nodes_online": online,
        "capacity_bytes": quota,
        "used_bytes": used,
        "contents": contents.len(),
        "published_bytes": contents.iter().map(|c| c.size).sum::<i64>(),
        "downloads": contents.iter().map(|c| c.downloads).sum::<i64>(),
        "series": series,
    })))
}

/// Time series over equal buckets: nodes online at each bucket's end, and bytes of downloads
/// completed in each bucket (as a rate).
#[derive(Debug, Serialize, PartialEq)]
pub struct Series {
    /// Start of the first bucket, Unix seconds.
    pub from: i64,
    /// Bucket length, seconds.
    pub bucket_secs: i64,
    /// Nodes online at the end of each bucket (the last at `now`).
    pub online: Vec<u32>,
    /// Bytes per second delivered by completed downloads in each bucket.
    pub delivered_bps: Vec<f64>,
}

impl Series {
    /// Buckets `sessions` (start, end or open) and `deliveries` (time, bytes) from `from`.
    pub fn build(
        from: i64,
        bucket: i64,
        buckets: usize,
        now: i64,
        sessions: &[(i64, Option<i64>)],
        deliveries: &[(i64, i64)],
    ) -> Self {
        let online = (1..=buckets as i64)
            .map(|i| {
                let t = (from + i * bucket).min(now);
                sessions
                    .iter()
                    .filter(|(start, end)| *start <= t && end.is_none_or(|e| e > t))
                    .count() as u32
            })
            .collect();
        let mut bytes = vec![0i64; buckets];
        for &(at, size) in deliveries {
            if at >= from {
                let i = (((at - from) / bucket) as usize).min(buckets - 1);
                bytes[i] = bytes[i].saturating_add(size);
            }
        }
        Series {
            from,
            bucket_secs: bucket,
            online,
            delivered_bps: bytes.iter().map(|b| *b as f64 / bucket as f64).collect(),
        }
    }
}

/// Every registered node: availability, bandwidth, group, location, storage, pay level and
/// balances.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "operator",
    responses((status = 200, body = serde_json::Value), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("token" = ["operator:read"])))]
pub async fn nodes(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    let mut list = admin(&coord, AdminRequest::Nodes).await?;
    let levels: HashMap<String, u64> = coord
        .db
        .node_states(crate::db::StateTable::Pay)
        .await?
        .into_iter()
        .filter_map(|(node, state)| {
            let v: serde_json::Value = serde_json::from_str(&state).ok()?;
            Some((node, v["level"].as_u64()?))
        })
        .collect();
    let ledger = crate::accounting::ledger(&coord).await?;
    let balances: HashMap<&str, (&serde_json::Value, &serde_json::Value)> = ledger["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?, (&n["balance"], &n["held"]))))
        .collect();
    let names = &coord.accounting.pay.levels;
    for node in list.as_array_mut().into_iter().flatten() {
        let id = node["id"].as_str().unwrap_or_default().to_string();
        let level = levels.get(&id).copied().unwrap_or(0);
        node["level_index"] = level.into();
        node["level"] = names
            .get(level as usize)
            .map(|l| l.name.clone())
            .unwrap_or_default()
            .into();
        let (balance, held) = balances
            .get(id.as_str())
            .map(|(b, h)| ((*b).clone(), (*h).clone()))
            .unwrap_or((0.into(), 0.into()));
        node["balance"] = balance;
        node["held"] = held;
    }
    Ok(Json(list))
}

/// One node's account: level, balances, audits, verdicts.
#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "operator",
    params(("id" = String, Path, description = "The node's peer ID")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)),
    security(("token" = ["operator:read"])))]
pub async fn node(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    let found = crate::accounting::node_show(&coord, &id).await;
    match found {
        Err(e) if e.to_string().starts_with("no node ") => Err(ApiError::not_found(e.to_string())),
        other => Ok(Json(other?)),
    }
}

/// Every published content, newest first, with tickets and downloads.
#[utoipa::path(get, path = "/api/v1/contents", tag = "operator",
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["operator:read"])))]
pub async fn contents(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    Ok(Json(serde_json::to_value(
        coord.db.content_list(None).await?,
    )?))
}

/// A content's layout and redundancy health, and its repairs.
#[utoipa::path(get, path = "/api/v1/contents/{id}", tag = "operator",
    params(("id" = String, Path, description = "The content ID")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)),
    security(("token" = ["operator:read"])))]
pub async fn content(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    Ok(Json(admin(&coord, AdminRequest::Content { id }).await?))
}

/// Client reports of unreachable nodes and corrupt fragments.
#[utoipa::path(get, path = "/api/v1/reports", tag = "operator",
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["operator:read"])))]
pub async fn reports(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    Ok(Json(admin(&coord, AdminRequest::Reports).await?))
}

/// Liveness counters: nodes online, probes, ignored and dropped reports.
#[utoipa::path(get, path = "/api/v1/liveness", tag = "operator",
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["operator:read"])))]
pub async fn liveness(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    Ok(Json(admin(&coord, AdminRequest::Liveness).await?))
}

/// The coordinators sharing this database: each one's addresses and heartbeat, which holds the
/// maintenance lease (runs repairs and audits), and the nodes online through this one and
/// through the others.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "operator",
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["operator:read"])))]
pub async fn cluster(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    Ok(Json(admin(&coord, AdminRequest::Cluster).await?))
}

/// Fragments rebuilt by repair or added for demand, with their traffic.
#[utoipa::path(get, path = "/api/v1/repairs", tag = "operator",
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["operator:read"])))]
pub async fn repairs(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    Ok(Json(admin(&coord, AdminRequest::Repairs).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct LimitQuery {
    /// How many, newest first [default: 100, at most 10000].
    pub limit: Option<i64>,
}

/// The newest reconciliation verdicts, each with its evidence.
#[utoipa::path(get, path = "/api/v1/verdicts", tag = "operator", params(LimitQuery),
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["operator:read"])))]
pub async fn verdicts(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(admin(&coord, AdminRequest::Verdicts { limit }).await?))
}

/// Every node's balance and held earnings, the collective's own accounts, and the newest
/// payouts.
#[utoipa::path(get, path = "/api/v1/ledger", tag = "operator",
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["operator:read"])))]
pub async fn ledger(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    let mut ledger = admin(&coord, AdminRequest::Ledger).await?;
    ledger["payouts"] = serde_json::to_value(coord.db.payouts(1000).await?)?;
    Ok(Json(ledger))
}

/// The newest payouts, one row per node and period.
#[utoipa::path(get, path = "/api/v1/payouts", tag = "operator", params(LimitQuery),
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["operator:read"])))]
pub async fn payouts(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    grant.require(Scope::OperatorRead)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(serde_json::to_value(coord.db.payouts(limit).await?)?))
}

/// Runs a reconciliation now and settles pay; returns the run's summary.
#[utoipa::path(post, path = "/api/v1/reconcile", tag = "operator",
    responses((status = 200, body = serde_json::Value), (status = 403, body = ErrorBody)),
    security(("token" = ["admin"])))]
pub async fn reconcile(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::Admin)?;
    Ok(Json(admin(&coord, AdminRequest::Reconcile).await?))
}

/// A payout for one period.
#[derive(Deserialize, ToSchema)]
pub struct PayoutRequest {
    /// The period's name, e.g. `2026-11`; each period is paid once.
    pub period: String,
}

/// Pays out every positive balance for a period (once) and returns the statement.
#[utoipa::path(post, path = "/api/v1/payouts", tag = "operator", request_body = PayoutRequest,
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody)),
    security(("token" = ["admin"])))]
pub async fn payout(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Json(req): Json<PayoutRequest>,
) -> ApiResult {
    grant.require(Scope::Admin)?;
    let period = req.period.trim();
    if period.is_empty() || period.len() > 64 {
        return Err(ApiError::bad_request(
            "a period is 1-64 characters, e.g. 2026-11",
        ));
    }
    Ok(Json(
        admin(
            &coord,
            AdminRequest::Payout {
                period: period.to_string(),
            },
        )
        .await?,
    ))
}

/// Records tickets that partners signed offline as sold, for any partner (a record seen before
/// counts once).
#[utoipa::path(post, path = "/api/v1/sales", tag = "operator",
    request_body(content = Vec<serde_json::Value>,
        description = "Sales records, as `ticket --offline --sales-record` writes them"),
    responses((status = 200, body = serde_json::Value), (status = 403, body = ErrorBody)),
    security(("token" = ["admin"])))]
pub async fn sales_import(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Json(records): Json<Vec<crate::sales::SalesRecord>>,
) -> ApiResult {
    grant.require(Scope::Admin)?;
    Ok(Json(
        admin(&coord, AdminRequest::SalesImport { records }).await?,
    ))
}

/// Every API token (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "operator",
    responses((status = 200, body = serde_json::Value)),
    security(("token" = ["admin"])))]
pub async fn tokens(State(coord): State<Arc<Coordinator>>, Caller(grant): Caller) -> ApiResult {
    grant.require(Scope::Admin)?;
    Ok(Json(serde_json::to_value(coord.db.tokens().await?)?))
}

/// A new token.
#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// What the token is for, e.g. "acme publishing pipeline".
    pub label: String,
    /// The partner a partner token acts for; absent for operator tokens.
    pub partner: Option<String>,
    /// Scopes, e.g. `["partner:publish", "partner:tickets"]`; a partner token without any
    /// gets every `partner:*` scope.
    #[serde(default)]
    #[schema(value_type = Vec<String>, example = json!(["partner:publish", "partner:tickets"]))]
    pub scopes: Vec<Scope>,
}

/// Makes a token; its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "operator", request_body = TokenRequest,
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody)),
    security(("token" = ["admin"])))]
pub async fn create_token(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Json(req): Json<TokenRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    grant.require(Scope::Admin)?;
    let made = crate::auth::create(
        &coord.db,
        &req.label,
        req.partner.as_deref(),
        &req.scopes,
        overlay::time::now_secs() as i64,
    )
    .await?;
    tracing::info!(id = %made.row.id, partner = ?made.row.partner, scopes = %made.row.scopes, "API token created");
    let mut body = serde_json::to_value(&made.row)?;
    body["secret"] = made.secret.into();
    Ok((StatusCode::CREATED, Json(body)))
}

/// Revokes a token at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "operator",
    params(("id" = String, Path, description = "The token's id (not its secret)")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("token" = ["admin"])))]
pub async fn revoke_token(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    grant.require(Scope::Admin)?;
    if coord
        .db
        .revoke_token(&id, overlay::time::now_secs() as i64)
        .await?
    {
        tracing::info!(%id, "API token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no live token {id}")))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_count_open_sessions_and_bucket_deliveries() {
        // Buckets of 10 s from t=100: ends at 110, 120, 130.
        let sessions = [(95, Some(115)), (105, None), (121, Some(125))];
        let deliveries = [(100, 1000), (119, 500), (129, 2000), (90, 7)];
        let s = Series::build(100, 10, 3, 130, &sessions, &deliveries);
        assert_eq!(s.online, vec![2, 1, 1]);
        assert_eq!(s.delivered_bps, vec![100.0, 50.0, 200.0]);
        // The last bucket is sampled at `now` when it has not ended yet.
        let s = Series::build(100, 10, 3, 124, &sessions, &[]);
        assert_eq!(s.online, vec![2, 1, 2]);
    }
}
