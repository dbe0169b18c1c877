//! The CCDS participating node (PN): keeps CM-ordered fragments on its owner's disk, within a
//! quota, and serves them to clients that hold a ticket chained to the pinned CM root.
//!
//! # Layout
//!
//! * [`datadir`]: the node's data directory (key, config, certificate, readiness file) and
//!   `ccds-node init`.
//! * [`serve`]: the [`Server`]: accept loops for `/ccds/store/1` and `/ccds/fetch/1`, bounded
//!   concurrency, counters. It runs on its own (no CM needed), which is how tests drive it.
//! * [`store`]: the `/ccds/store/1` handler: CM-signed store and delete orders.
//! * [`fetch`]: the `/ccds/fetch/1` handler: ticket check, fragment bytes, receipt.
//! * [`audit`]: the `/ccds/audit/1` handler: proofs of stored fragment ranges, for the CM only.
//! * [`receipts`]: client receipts: checks, the latest per ticket, the append-only log.
//! * [`credit`]: receipt credit: refuses clients whose receipts lag, and tickets whose
//!   allowance this node has served.
//! * [`upload`]: the upload rate measured while serving fetches, reported to the CM.
//! * [`throttle`]: the upload limit, one token bucket shared by every fetch stream, switched
//!   by [`schedule`]: the owner's upload rate by time of day (sans-IO).
//! * [`traffic`]: bytes served per recent minute, for the owner.
//! * [`host`]: facts about the host (boot time) reported to the CM.
//! * [`control`]: the node's side of `/ccds/control/1` (register, join, heartbeat, leave,
//!   reports, account).
//! * [`report`]: periodic signed reports of the work claimed (receipts), the fragments held and
//!   the online sessions, and their state in `DIR/report-state.json`.
//! * [`status`](mod@status): the node's own view for its owner (`DIR/status.json`,
//!   `ccds-node status`).
//! * [`agent`]: the owner's agent in a running daemon: pause and resume (persisted), the
//!   host's idleness, the live status.
//! * [`idle`]: idle gating's `/proc/stat` parser and hysteresis decision (sans-IO).
//! * [`owner`]: the owner's control socket (`DIR/control.sock`): `ccds-node pause`, `resume`,
//!   `status`.
//! * [`page`]: the owner's status page on loopback HTTP, with [`metrics`] (Prometheus).
//! * [`config`]: `ccds-node run --config FILE`: the TOML settings, which flags and
//!   `CCDS_NODE_*` variables override.
//! * [`daemon`]: `ccds-node run`: a [`Server`] plus the control session with the CM
//!   (heartbeats, reports, status), until shutdown.
//!
//! Trust: the CM's peer ID, pinned at `init`, is the only root. Store and delete orders must
//! be signed by it, whoever delivers them; tickets must chain to it through a partner
//! certificate and name the stream's authenticated peer as their client.

pub mod agent;
pub mod audit;
pub mod config;
pub mod control;
pub mod credit;
pub mod daemon;
pub mod datadir;
pub mod fetch;
pub mod host;
pub mod idle;
pub mod metrics;
pub mod owner;
pub mod page;
pub mod receipts;
pub mod report;
pub mod schedule;
pub mod serve;
pub mod status;
pub mod store;
pub mod throttle;
pub mod traffic;
pub mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;

use overlay::identity::IdentityError;
use overlay::net::NetError;
use overlay::store::StoreError;
use overlay::{Multiaddr, PeerId};

pub use daemon::{RunOptions, run, shutdown_signal};
pub use datadir::{DEFAULT_QUOTA, DataDir, InitOptions, NodeConfig, init};
pub use serve::{Limits, ServeOptions, Server, StatsSnapshot};
pub use status::{NodeStatus, StatusView, status};

/// Errors that stop `ccds-node init` or `ccds-node run`.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "{dir} is not initialised: run `ccds-node init --data-dir {dir} --coordinator MULTIADDR` first"
    )]
    NotInitialised { dir: String },
    #[error("another ccds-node is already running on {dir}")]
    AlreadyRunning { dir: String },
    #[error(
        "coordinator address {0} does not end in /p2p/<CM peer ID>; the CM's peer ID is its root key and must be pinned (copy the full address the coordinator prints)"
    )]
    CoordinatorWithoutPeer(Multiaddr),
    #[error("coordinator peer ID {0} is not an Ed25519 key, so it cannot be a CM root key")]
    CoordinatorNotEd25519(PeerId),
    #[error("no coordinator address given")]
    NoCoordinator,
    #[error(
        "{0} coordinator addresses given; at most {max}",
        max = crate::datadir::MAX_COORDINATORS
    )]
    TooManyCoordinators(usize),
    #[error(
        "the coordinator addresses name two CMs, {first} and {other}; coordinators of one collective share one peer ID"
    )]
    CoordinatorsDisagree { first: PeerId, other: PeerId },
    #[error(
        "{dir} is already initialised for coordinator {existing}, not {requested}; a node belongs to one collective: use another --data-dir"
    )]
    OtherCoordinator {
        dir: String,
        existing: PeerId,
        requested: PeerId,
    },
    #[error("the quota must be greater than zero bytes")]
    ZeroQuota,
    #[error("the heartbeat interval must be greater than zero")]
    ZeroHeartbeat,
    #[error("the report interval must be greater than zero")]
    ZeroReportInterval,
    #[error("{path} is not a valid node status file: {reason}; `ccds-node run` rewrites it")]
    BadStatus { path: String, reason: String },
    #[error("{path} is not a valid node config: {reason}; re-run `ccds-node init` to rewrite it")]
    BadConfig { path: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("node key: {0}")]
    Identity(#[from] IdentityError),
    #[error("cannot open the fragment store: {0}")]
    Store(#[from] StoreError),
    #[error("network: {0}")]
    Net(#[from] NetError),
    #[error("cannot open the receipt log {path}: {source}")]
    ReceiptLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the coordinator issued an unusable node certificate: {0} (check that this machine's clock is right)"
    )]
    BadCertificate(String),
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("a background task failed: {0}")]
    Task(String),
    #[error("cannot create the control socket {path}: {source}")]
    ControlSocket {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen for the status page on {addr}: {source}")]
    StatusPage {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the status page must listen on a loopback address (127.0.0.1 or ::1), not {0}: its buttons control the node"
    )]
    StatusPageNotLocal(SocketAddr),
    #[error("idle gating: {0}")]
    BadIdle(String),
}
