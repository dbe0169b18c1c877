//! The owner's agent inside a running daemon: the owner's pause (persisted in `DIR/paused`,
//! so it survives a restart), the host's idleness (see [`crate::idle`]), and the live view of
//! the node that `ccds-node status`, the status page and `/metrics` show.
//!
//! The node wants to be online when it is not paused and the host is idle enough (always,
//! without idle gating). The daemon's session watches both and joins or leaves the
//! collective as they change (see [`crate::daemon`]); a pause also makes the server refuse
//! fetches at once, before the leave reaches the CM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use overlay::time::now_secs;
use tokio::sync::watch;
use tracing::info;

use crate::NodeError;
use crate::datadir::DataDir;
use crate::schedule::Schedule;
use crate::serve::ServerHandle;
use crate::status::{LiveView, NodeState, NodeStatus, Refused, StatusView};

/// The limits the owner set, as the daemon enforces them.
#[derive(Clone, Debug)]
pub struct OwnerLimits {
    /// Disk space for fragments, bytes.
    pub quota: u64,
    /// Upload rate by time of day.
    pub schedule: Schedule,
    /// Distinct clients served at once.
    pub max_clients: usize,
}

/// Shared by the daemon's session, the control socket and the status page.
pub struct Agent {
    dir: DataDir,
    server: ServerHandle,
    limits: OwnerLimits,
    paused: watch::Sender<bool>,
    idle: watch::Sender<bool>,
    idle_gating: bool,
    idle_share: Mutex<Option<f64>>,
    online: AtomicBool,
    status: Mutex<NodeStatus>,
    /// Fragments in the store when the daemon started; stores and deletes since are counted.
    initial_fragments: u64,
    status_page: Mutex<Option<String>>,
}

impl Agent {
    /// The agent of a daemon whose server is `server`; `paused` as persisted, `idle_gating`
    /// whether the host's idleness decides (it starts "busy" then).
    pub fn new(
        dir: DataDir,
        server: ServerHandle,
        limits: OwnerLimits,
        status: NodeStatus,
        idle_gating: bool,
        initial_fragments: u64,
    ) -> Arc<Self> {
        let paused = dir.paused();
        server.set_paused(paused);
        Arc::new(Self {
            dir,
            server,
            limits,
            paused: watch::Sender::new(paused),
            idle: watch::Sender::new(!idle_gating),
            idle_gating,
            idle_share: Mutex::new(None),
            online: AtomicBool::new(false),
            status: Mutex::new(status),
            initial_fragments,
            status_page: Mutex::new(None),
        })
    }

    /// The server's shared state.
    pub fn server(&self) -> &ServerHandle {
        &self.server
    }

    /// The owner's limits.
    pub fn limits(&self) -> &OwnerLimits {
        &self.limits
    }

    /// Pauses the node: fetches are refused from now on, the session leaves the collective,
    /// and the pause outlives a restart. Pausing a paused node changes nothing.
    pub fn pause(&self) -> Result<(), NodeError> {
        self.dir.set_paused(true)?;
        self.server.set_paused(true);
        if !self.paused.send_replace(true) {
            info!("paused by the owner");
        }
        Ok(())
    }

    /// Resumes: fetches are served again and the session rejoins (when the host is idle
    /// enough).
    pub fn resume(&self) -> Result<(), NodeError> {
        self.dir.set_paused(false)?;
        self.server.set_paused(false);
        if self.paused.send_replace(false) {
            info!("resumed by the owner");
        }
        Ok(())
    }

    /// Whether the owner paused the node.
    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Whether the host is idle enough (always, without idle gating).
    pub fn idle(&self) -> bool {
        *self.idle.borrow()
    }

    /// Whether the node should be in the collective now.
    pub fn wants_online(&self) -> bool {
        !self.paused() && self.idle()
    }

    /// Why the node stays out of the collective, if it does.
    pub fn offline_reason(&self) -> Option<&'static str> {
        if self.paused() {
            Some("paused by the owner")
        } else if !self.idle() {
            Some("the host is in use")
        } else {
            None
        }
    }

    /// Receivers that change when the pause or the host's idleness does.
    pub fn subscribe(&self) -> (watch::Receiver<bool>, watch::Receiver<bool>) {
        (self.paused.subscribe(), self.idle.subscribe())
    }

    /// The idle sampler's verdict and the share of idle CPU time it measured.
    pub fn set_idle(&self, idle: bool, share: Option<f64>) {
        *self.idle_share.lock().unwrap_or_else(|p| p.into_inner()) = share;
        self.idle.send_if_modified(|current| {
            let changed = *current != idle;
            *current = idle;
            changed
        });
    }

    /// Whether the CM has the node on its active list, as far as the node knows.
    pub fn online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Records whether the node is joined.
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// The status as last written to `DIR/status.json`.
    pub fn status(&self) -> MutexGuard<'_, NodeStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the status page's address, shown by `ccds-node status`.
    pub fn set_status_page(&self, url: String) {
        *self.status_page.lock().unwrap_or_else(|p| p.into_inner()) = Some(url);
    }

    /// Fragments held now (those at start, plus stores, minus deletes since).
    pub fn fragments(&self) -> u64 {
        let stats = self.server.stats();
        (self.initial_fragments + stats.stored).saturating_sub(stats.deleted)
    }

    /// What `ccds-node status` shows of a running node.
    pub fn view(&self) -> StatusView {
        let now = now_secs();
        let status = self.status().clone();
        let stats = self.server.stats();
        let store = self.server.store();
        let state = if self.paused() {
            NodeState::Paused
        } else if !self.idle() {
            NodeState::WaitingForIdle
        } else if self.online() {
            NodeState::Online
        } else {
            NodeState::Joining
        };
        let live = LiveView {
            quota: store.quota(),
            used: store.used(),
            fragments: self.fragments(),
            upload_limit: self
                .server
                .throttle()
                .rate()
                .map_or(0, |r| u64::from(r.get())),
            upload_schedule: self.limits.schedule.to_string(),
            max_clients: self.limits.max_clients,
            clients: self.server.clients(),
            idle_gating: self.idle_gating,
            idle_percent: self
                .idle_share
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|share| share * 100.0),
            upload_bps: self.server.upload_bps(),
            bytes_served: stats.bytes_served,
            fragments_served: stats.served,
            refused: Refused {
                ticket: stats.fetch_refused,
                receipts_lag: stats.receipts_lag_refused,
                allowance: stats.allowance_refused,
                busy: stats.busy_refused,
                paused: stats.paused_refused,
            },
            traffic: self.server.traffic(now),
            status_page: self
                .status_page
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let mut view = StatusView::from_status(&status, true, state == NodeState::Online);
        view.paused = self.paused();
        view.state = state;
        view.live = Some(live);
        view
    }
}
