//! The node's Prometheus metrics (`GET /metrics` on the status page's listener), in the
//! OpenMetrics text format.
//!
//! The counters live in the server ([`crate::serve`]) as plain atomics, read on the serving
//! path without a registry; a scrape copies them into a fresh registry. A scrape is a few
//! dozen values, so building it each time costs nothing worth a second set of counters.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::agent::Agent;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// The metrics now, as text.
pub fn render(agent: &Agent) -> String {
    let server = agent.server();
    let stats = server.stats();
    let store = server.store();
    let mut r = Registry::with_prefix("ccds_node");
    counter(
        &mut r,
        "served_bytes",
        "Fragment bytes served to clients",
        stats.bytes_served,
    );
    counter(
        &mut r,
        "served_fragments",
        "Fragments served to clients",
        stats.served,
    );
    let refused = Family::<Vec<(&'static str, &'static str)>, Counter<u64>>::default();
    for (reason, value) in [
        ("ticket", stats.fetch_refused),
        ("receipts_lag", stats.receipts_lag_refused),
        ("allowance", stats.allowance_refused),
        ("busy", stats.busy_refused),
        ("paused", stats.paused_refused),
    ] {
        refused
            .get_or_create(&vec![("reason", reason)])
            .inc_by(value);
    }
    r.register("fetches_refused", "Fetches refused, by reason", refused);
    counter(
        &mut r,
        "streams_dropped",
        "Streams dropped at a protocol's concurrency bound",
        stats.streams_dropped,
    );
    counter(
        &mut r,
        "stored_fragments_received",
        "Fragments stored on the coordinator's orders",
        stats.stored,
    );
    gauge(
        &mut r,
        "stored_fragments",
        "Fragments held in the store",
        agent.fragments(),
    );
    gauge(
        &mut r,
        "stored_bytes",
        "Bytes of fragments held in the store",
        store.used(),
    );
    gauge(
        &mut r,
        "quota_bytes",
        "Disk quota for fragments",
        store.quota(),
    );
    gauge(
        &mut r,
        "online",
        "1 while the node is in the collective",
        u64::from(agent.online()),
    );
    gauge(
        &mut r,
        "paused",
        "1 while the owner has the node paused",
        u64::from(agent.paused()),
    );
    gauge(
        &mut r,
        "upload_limit_bytes_per_second",
        "Upload limit in force (0: unlimited)",
        server
            .throttle()
            .rate()
            .map_or(0, |rate| u64::from(rate.get())),
    );
    gauge(
        &mut r,
        "clients",
        "Distinct clients being served",
        server.clients() as u64,
    );
    gauge(
        &mut r,
        "max_clients",
        "Distinct clients served at once, at most",
        server.max_clients() as u64,
    );
    gauge(
        &mut r,
        "upload_measured_bytes_per_second",
        "Upload rate measured while serving (0: not yet known)",
        server.upload_bps(),
    );
    let mut text = String::new();
    encode(&mut text, &r).expect("writing to a String cannot fail");
    text
}
