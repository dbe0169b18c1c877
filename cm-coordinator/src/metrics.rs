//! Prometheus metrics (`GET /metrics`, text exposition format, no token): the coordinator's
//! state read at scrape time, and counters of the HTTP API kept as requests are served.

use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::server::Coordinator;

/// Labels of HTTP API requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The status class: `2xx`, `4xx`, ...
    pub status: String,
}

/// HTTP API requests served, by method and status class.
pub static HTTP_REQUESTS: LazyLock<Family<HttpLabels, Counter>> = LazyLock::new(Family::default);

/// Counts one served request.
pub fn count_request(method: &axum::http::Method, status: StatusCode) {
    HTTP_REQUESTS
        .get_or_create(&HttpLabels {
            method: method.as_str().to_string(),
            status: format!("{}xx", status.as_u16() / 100),
        })
        .inc();
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// Renders every metric.
pub async fn render(coord: &Coordinator) -> anyhow::Result<String> {
    let mut r = Registry::with_prefix("ccds");
    let nodes = coord.db.nodes().await?;
    let contents = coord.db.content_list(None).await?;
    let (quota, used, fragments) = nodes.iter().fold((0i64, 0i64, 0i64), |(q, u, f), n| {
        (q + n.quota, u + n.used, f + n.fragments)
    });
    gauge(
        &mut r,
        "nodes_registered",
        "Registered nodes",
        nodes.len() as i64,
    );
    gauge(
        &mut r,
        "nodes_online",
        "Nodes online now",
        coord.registry.online().len() as i64,
    );
    gauge(
        &mut r,
        "capacity_bytes",
        "Disk quota of all registered nodes",
        quota,
    );
    gauge(
        &mut r,
        "used_bytes",
        "Bytes stored on all registered nodes",
        used,
    );
    gauge(
        &mut r,
        "fragments_stored",
        "Fragments held by all nodes",
        fragments,
    );
    gauge(
        &mut r,
        "contents",
        "Published contents",
        contents.len() as i64,
    );
    gauge(
        &mut r,
        "published_bytes",
        "Bytes of all published contents",
        contents.iter().map(|c| c.size).sum(),
    );
    counter(
        &mut r,
        "downloads_completed",
        "Downloads completed and reported by clients",
        contents.iter().map(|c| c.downloads.max(0) as u64).sum(),
    );
    counter(
        &mut r,
        "tickets_issued",
        "Tickets issued or imported",
        contents.iter().map(|c| c.tickets.max(0) as u64).sum(),
    );
    let stats = coord
        .liveness
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .stats();
    counter(
        &mut r,
        "liveness_probes",
        "Probes of nodes under check",
        stats.probes,
    );
    counter(
        &mut r,
        "liveness_offline_unreachable",
        "Nodes marked offline after failed probes",
        stats.offline_unreachable,
    );
    counter(
        &mut r,
        "liveness_reports_ignored",
        "Unreachable-node reports about nodes that answered",
        stats.reports_ignored,
    );
    let repair = coord
        .repair_stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    counter(
        &mut r,
        "repair_jobs",
        "Repair and expansion jobs run",
        repair.jobs,
    );
    counter(
        &mut r,
        "repair_jobs_failed",
        "Repair jobs that failed",
        repair.failed,
    );
    counter(
        &mut r,
        "repair_fragments",
        "Fragments rebuilt or added",
        repair.fragments,
    );
    counter(
        &mut r,
        "repair_fetched_bytes",
        "Bytes fetched by repairs",
        repair.bytes_fetched,
    );
    counter(
        &mut r,
        "repair_stored_bytes",
        "Bytes stored by repairs",
        repair.bytes_stored,
    );
    r.register(
        "http_requests",
        "HTTP API requests served",
        HTTP_REQUESTS.clone(),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)?;
    Ok(out)
}

/// `GET /metrics`.
pub async fn scrape(State(coord): State<Arc<Coordinator>>) -> Response {
    match render(&coord).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}
