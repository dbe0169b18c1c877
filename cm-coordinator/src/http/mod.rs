//! The coordinator's HTTP API (`run --http ADDR`), its OpenAPI document, the operator's web
//! dashboard and Prometheus metrics. It never carries fragment bytes to nodes or clients; the
//! only bulk it takes is a partner's upload of a file to publish.
//!
//! # Participants
//!
//! * **Partners** publish (streaming upload), issue tickets, upload sales records of tickets
//!   signed offline and send demand hints, each for their own contents only, with a partner
//!   token (`partner:*` scopes).
//! * **Operators** read nodes, contents and their health, verdicts, the ledger and payouts
//!   (`operator:read`), and run reconciliations, payouts and tokens (`admin`). The CLI
//!   commands that talk to a running coordinator use the `admin` token the coordinator keeps
//!   in its data directory (`operator.token`).
//! * **Anyone** reaching the port may read `/healthz`, `/metrics`, the OpenAPI document and
//!   the dashboard's page (which shows nothing without a token).
//!
//! # Layout
//!
//! * [`error`]: the error body and how coordinator errors map to statuses.
//! * [`auth`]: the bearer-token extractor.
//! * [`partner`], [`operator`]: the endpoints.
//! * [`openapi`]: the OpenAPI document, generated from the handlers' annotations.
//! * [`dashboard`]: the web dashboard (one page, no external resources).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use axum::routing::{delete, get, post};
use tracing::Instrument;
use tracing::info;

use crate::server::Coordinator;

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod openapi;
pub mod operator;
pub mod partner;

pub use error::{ApiError, ApiResult};

/// Largest JSON request body (sales uploads are the largest: a few thousand records).
pub const MAX_JSON_BODY: usize = 16 << 20;

/// Builds the router.
pub fn router(coord: Arc<Coordinator>) -> Router {
    let api = Router::new()
        .route("/whoami", get(operator::whoami))
        .route("/overview", get(operator::overview))
        .route("/nodes", get(operator::nodes))
        .route("/nodes/{id}", get(operator::node))
        .route("/contents", get(operator::contents))
        .route("/contents/{id}", get(operator::content))
        .route("/reports", get(operator::reports))
        .route("/liveness", get(operator::liveness))
        .route("/cluster", get(operator::cluster))
        .route("/repairs", get(operator::repairs))
        .route("/verdicts", get(operator::verdicts))
        .route("/ledger", get(operator::ledger))
        .route("/reconcile", post(operator::reconcile))
        .route("/payouts", get(operator::payouts).post(operator::payout))
        .route("/sales", post(operator::sales_import))
        .route(
            "/tokens",
            get(operator::tokens).post(operator::create_token),
        )
        .route("/tokens/{id}", delete(operator::revoke_token))
        .route(
            "/partners/{partner}/contents",
            get(partner::contents).post(partner::publish),
        )
        .route("/partners/{partner}/contents/{id}", get(partner::content))
        .route("/partners/{partner}/tickets", post(partner::ticket))
        .route("/partners/{partner}/sales", post(partner::sales))
        .route("/partners/{partner}/demand", post(partner::demand))
        .route("/openapi.json", get(openapi::document))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(health))
        .route("/metrics", get(crate::metrics::scrape))
        .nest("/api/v1", api)
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(coord)
}

/// One span per request, with the method, path and (once known) the caller's token id.
async fn trace_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        token = tracing::field::Empty,
    );
    let method = req.method().clone();
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    crate::metrics::count_request(&method, status);
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(%status, "request failed");
        } else {
            tracing::debug!(%status, "request served");
        }
    });
    response
}

/// Serves the router on `addr` until the task is dropped; returns the bound address.
pub async fn serve(coord: Arc<Coordinator>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "HTTP API listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(coord)).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(bound)
}

/// Liveness of the coordinator itself, for load balancers and probes (no token needed).
#[utoipa::path(get, path = "/healthz", tag = "public",
    responses((status = 200, description = "The coordinator is up", body = serde_json::Value)))]
pub async fn health(State(coord): State<Arc<Coordinator>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "status": "ok",
        "coordinator": coord.addr.to_string(),
        "nodes_online": coord.registry.online().len(),
    }))
}
