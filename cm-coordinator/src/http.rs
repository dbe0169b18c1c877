//! The coordinator's HTTP endpoint (`run --http ADDR`): health and read-only operator views as
//! JSON. It never carries fragment bytes. Partner and operator write endpoints, scoped API
//! tokens and the dashboard build on this router.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tracing::info;

use crate::admin::AdminRequest;
use crate::server::{Coordinator, admin};

/// Builds the router.
pub fn router(coord: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/reports", get(reports))
        .route("/api/v1/liveness", get(liveness))
        .with_state(coord)
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

async fn health(State(coord): State<Arc<Coordinator>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "coordinator": coord.addr.to_string(),
        "nodes_online": coord.registry.online().len(),
    }))
}

fn answer(result: anyhow::Result<serde_json::Value>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": format!("{e:#}") })),
        )
            .into_response(),
    }
}

async fn nodes(State(coord): State<Arc<Coordinator>>) -> Response {
    answer(admin(&coord, AdminRequest::Nodes).await)
}

async fn reports(State(coord): State<Arc<Coordinator>>) -> Response {
    answer(admin(&coord, AdminRequest::Reports).await)
}

async fn liveness(State(coord): State<Arc<Coordinator>>) -> Response {
    answer(admin(&coord, AdminRequest::Liveness).await)
}
