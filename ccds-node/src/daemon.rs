//! `ccds-node run`: the serving [`Server`] plus the control session with the pinned CM.
//!
//! Order matters: the accept loops start before the CM hears of the node (the CM pushes
//! fragments as soon as a node joins), and `DIR/node.addr` appears only once the CM has
//! accepted the join, so whoever waits for that file finds a node that is both serving and
//! known to the CM. On shutdown the node tells the CM it is leaving (bounded in time), removes
//! `DIR/node.addr`, and lets streams in flight finish for a short grace period.
//!
//! Every report interval (and once more just before the leave at shutdown) the node sends the
//! CM its signed report (see [`crate::report`]); after each accepted one it fetches its account
//! and rewrites `DIR/status.json` (see [`crate::status`](mod@crate::status)), which it also
//! rewrites when it joins and when it leaves.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use overlay::cert::{self, Certificate, Role};
use overlay::store::FragmentStore;
use overlay::time::now_secs;
use overlay::{Multiaddr, PeerId};
use tracing::{debug, info, warn};

use crate::NodeError;
use crate::control::{Backoff, ControlError, Coordinator};
use crate::datadir::DataDir;
use crate::report::{ReportError, Reporter, Sessions};
use crate::serve::{Limits, ServeOptions, Server};
use crate::status::NodeStatus;

/// Where a node listens unless told otherwise: loopback, a port picked by the OS.
pub const DEFAULT_LISTEN: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
/// How often a joined node tells the CM it is alive, unless told otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Memory for hot fragments.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// How often the node reports its work to the CM, unless told otherwise.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// How long the CM may take to acknowledge a leave at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the last report (and the account fetched after it) may take at shutdown; what is
/// not accepted by then goes in the first report of the next run.
const FINAL_REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause before a failed report is retried (never longer than the report interval).
const REPORT_RETRY_FIRST: Duration = Duration::from_secs(5);
/// How long streams in flight may run on after shutdown starts.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// First and longest pause between attempts to reach the CM.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// What `ccds-node run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The initialised data directory.
    pub data_dir: PathBuf,
    /// The QUIC multiaddr to listen on.
    pub listen: Multiaddr,
    /// Time between heartbeats to the CM.
    pub heartbeat_interval: Duration,
    /// Time between reports to the CM (one more is sent at shutdown).
    pub report_interval: Duration,
    /// Memory for hot fragments, in bytes.
    pub cache_bytes: usize,
    /// Concurrency and time bounds on the serving side.
    pub limits: Limits,
}

impl RunOptions {
    /// Defaults for a node in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default listen address is valid"),
            heartbeat_interval: DEFAULT_HEARTBEAT,
            report_interval: DEFAULT_REPORT_INTERVAL,
            cache_bytes: DEFAULT_CACHE_BYTES,
            limits: Limits::default(),
        }
    }
}

/// Runs the node until `shutdown` resolves (then leaves the collective and returns `Ok`), or
/// until a fatal error.
pub async fn run(options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    if options.heartbeat_interval.is_zero() {
        return Err(NodeError::ZeroHeartbeat);
    }
    if options.report_interval.is_zero() {
        return Err(NodeError::ZeroReportInterval);
    }
    let started = now_secs();
    let dir = DataDir::new(&options.data_dir);
    let (identity, config) = dir.load()?;
    // One daemon per data directory: two would share a store and a quota they each count alone.
    // The lock is released by the kernel when the process ends, however it ends.
    let lock_path = options.data_dir.join("run.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|source| NodeError::Write {
        path: lock_path.display().to_string(),
        source,
    })?;
    if lock.try_lock().is_err() {
        return Err(NodeError::AlreadyRunning {
            dir: options.data_dir.display().to_string(),
        });
    }
    let (cm, cm_addr) = config.coordinator_peer()?;
    let fragments = dir.fragments();
    let (quota, cache) = (config.quota, options.cache_bytes);
    let store = tokio::task::spawn_blocking(move || FragmentStore::open(&fragments, quota, cache))
        .await
        .map_err(|e| NodeError::Task(e.to_string()))??;
    info!(node = %identity.peer_id(), used = store.used(), quota, "fragment store open");
    if let Some(rate) = options.limits.upload_limit {
        info!(bytes_per_sec = rate.get(), "fragment uploads limited");
    }

    let server = Server::start(ServeOptions {
        identity: identity.clone(),
        cm,
        store: Arc::new(store),
        receipts_log: dir.receipts(),
        listen: vec![options.listen.clone()],
        limits: options.limits.clone(),
    })
    .await?;
    server.net().add_addresses(cm, vec![cm_addr]);
    let coordinator = Coordinator::new(server.net().clone(), cm);
    let me = identity.peer_id();
    let previous = NodeStatus::load(&dir.status()).unwrap_or_else(|reason| {
        warn!(path = %dir.status().display(), %reason, "unreadable status file; rewriting it");
        None
    });
    let sessions = Sessions::with_previous(previous.as_ref().and_then(|s| s.session));
    let status = NodeStatus {
        id: me,
        pid: std::process::id(),
        online: false,
        ..previous.unwrap_or_else(|| NodeStatus::new(me, 0))
    };
    let reporter = Reporter::open(
        identity.clone(),
        dir.report_state(),
        dir.receipts(),
        started,
    );
    let session = Session {
        dir: &dir,
        me,
        cm,
        coordinator: &coordinator,
        server: &server,
        quota,
        boot_time: crate::host::boot_time(),
        interval: options.heartbeat_interval,
        report_interval: options.report_interval,
        joined: AtomicBool::new(false),
        reporter: tokio::sync::Mutex::new(reporter),
        sessions: Mutex::new(sessions),
        status: tokio::sync::Mutex::new(status),
    };

    let outcome = tokio::select! {
        result = session.operate() => result.map(|never| match never {}),
        () = shutdown => {
            info!("shutting down");
            Ok(())
        }
    };
    if session.joined.load(Ordering::Relaxed) {
        match tokio::time::timeout(FINAL_REPORT_TIMEOUT, session.report()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "last report not delivered; the next run sends it"),
            Err(_) => warn!(
                timeout = ?FINAL_REPORT_TIMEOUT,
                "last report not accepted in time; the next run sends it"
            ),
        }
        match tokio::time::timeout(LEAVE_TIMEOUT, coordinator.leave()).await {
            Ok(Ok(())) => info!("left the collective"),
            Ok(Err(e)) => warn!(error = %e, "could not tell the coordinator the node is leaving"),
            Err(_) => {
                warn!(timeout = ?LEAVE_TIMEOUT, "the coordinator did not acknowledge the leave in time")
            }
        }
    }
    session.went_offline().await;
    let removed = dir.remove_addr();
    server.shutdown(DRAIN_GRACE).await;
    outcome?;
    removed
}

/// How long to wait for the first report of a run: what is left of the interval since the end
/// of the last accepted report, or a whole interval when there is none.
fn first_report_delay(last_to: u64, now: u64, interval: Duration) -> Duration {
    if last_to == 0 {
        return interval;
    }
    let due = last_to.saturating_add(interval.as_secs());
    Duration::from_secs(due.saturating_sub(now)).min(interval)
}

/// Installs SIGINT and SIGTERM handlers; the returned future resolves on the first of either.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, NodeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(NodeError::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(NodeError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("interrupted"),
            _ = terminate.recv() => info!("terminated"),
        }
    })
}

/// The node's relationship with the CM while it runs.
struct Session<'a> {
    dir: &'a DataDir,
    me: PeerId,
    cm: PeerId,
    coordinator: &'a Coordinator,
    server: &'a Server,
    quota: u64,
    /// When the host booted (Unix seconds, 0 if unknown), reported in every join.
    boot_time: u64,
    interval: Duration,
    report_interval: Duration,
    /// Whether the CM has the node on its active list (as far as the node knows).
    joined: AtomicBool,
    /// Held for a whole round of reports, so two rounds never interleave.
    reporter: tokio::sync::Mutex<Reporter>,
    /// The node's online sessions, for reports.
    sessions: Mutex<Sessions>,
    /// Held while the status file is rewritten, so an older view never overwrites a newer one.
    status: tokio::sync::Mutex<NodeStatus>,
}

impl Session<'_> {
    /// Registers if needed, joins, publishes the readiness file, then heartbeats forever.
    async fn operate(&self) -> Result<Infallible, NodeError> {
        self.ensure_certificate().await?;
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
        while let Err(e) = self.join().await {
            let delay = backoff.next_delay();
            warn!(error = %e, retry_in = ?delay, "join failed");
            tokio::time::sleep(delay).await;
        }
        let addr = self.server.addr();
        self.dir.write_addr(&addr)?;
        info!(%addr, "joined");
        tokio::select! {
            result = self.heartbeats() => result,
            never = self.reports() => match never {},
        }
    }

    /// Loads the stored certificate, or registers with the CM for one.
    async fn ensure_certificate(&self) -> Result<Certificate, NodeError> {
        if let Some(cert) = self.dir.load_cert()? {
            match self.usable(&cert) {
                Ok(()) => return Ok(cert),
                Err(reason) => {
                    warn!(%reason, "stored node certificate unusable; registering again")
                }
            }
        }
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
        loop {
            match self.coordinator.register().await {
                Ok(cert) => {
                    self.usable(&cert).map_err(NodeError::BadCertificate)?;
                    self.dir.save_cert(&cert)?;
                    info!(
                        serial = cert.body.serial,
                        not_after = cert.body.not_after,
                        "registered"
                    );
                    return Ok(cert);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "registration failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Whether `cert` is a valid node certificate from the pinned CM for this node.
    fn usable(&self, cert: &Certificate) -> Result<(), String> {
        let body =
            cert::check(cert, &self.cm, Role::Node, now_secs()).map_err(|e| e.to_string())?;
        if body.subject != self.me {
            return Err(format!(
                "certificate is for {}, not this node {}",
                body.subject, self.me
            ));
        }
        Ok(())
    }

    async fn join(&self) -> Result<(), ControlError> {
        let net = self.server.net();
        self.coordinator
            .join(
                net.listen_addrs().to_vec(),
                self.quota,
                self.server.store().used(),
                self.boot_time,
                self.server.upload_bps(),
            )
            .await?;
        self.joined.store(true, Ordering::Relaxed);
        self.sessions().start(now_secs());
        self.update_status(|status| status.online = true).await;
        Ok(())
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to the status and rewrites the status file (a failure is only logged:
    /// the file is for the owner's eyes).
    async fn update_status(&self, change: impl FnOnce(&mut NodeStatus)) {
        let mut status = self.status.lock().await;
        change(&mut status);
        let now = now_secs();
        status.updated_at = now;
        status.session = self.sessions().current(now);
        let (snapshot, path) = (status.clone(), self.dir.status());
        match tokio::task::spawn_blocking(move || snapshot.save(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(path = %self.dir.status().display(), error = %e, "cannot write the status file")
            }
            Err(e) => warn!(error = %e, "status task failed"),
        }
    }

    /// Closes the online session and records the node offline.
    async fn went_offline(&self) {
        self.sessions().end(now_secs());
        self.update_status(|status| status.online = false).await;
    }

    /// Sends reports every report interval, sooner after a failure (with back-off).
    async fn reports(&self) -> Infallible {
        let interval = self.report_interval;
        let first = REPORT_RETRY_FIRST.min(interval);
        let mut backoff = Backoff::new(first, interval);
        let last_to = self.reporter.lock().await.state().last_to;
        let mut delay = first_report_delay(last_to, now_secs(), interval);
        loop {
            tokio::time::sleep(delay).await;
            delay = match self.report().await {
                Ok(()) => {
                    backoff.reset(first);
                    interval
                }
                Err(e) => {
                    let retry = backoff.next_delay();
                    warn!(error = %e, retry_in = ?retry, "report failed");
                    retry
                }
            };
        }
    }

    /// Reports everything since the last accepted report, then refreshes the account and the
    /// status file.
    async fn report(&self) -> Result<(), ReportError> {
        let sent = {
            let mut reporter = self.reporter.lock().await;
            let sessions = self.sessions().clone();
            let round = reporter
                .build(
                    self.server.store().clone(),
                    &sessions,
                    self.server.upload_bps(),
                    now_secs(),
                )
                .await?;
            reporter.send(self.coordinator, round).await?
        };
        self.sessions().forget_before(sent.to);
        info!(
            reports = sent.reports,
            seq = sent.last_seq,
            claims = sent.claims,
            new_receipts = sent.new_receipts,
            duplicate_receipts = sent.duplicate_receipts,
            "report accepted"
        );
        let account = match self.coordinator.account().await {
            Ok(view) => Some(view),
            Err(e) => {
                warn!(error = %e, "cannot fetch the node's account");
                None
            }
        };
        self.update_status(|status| {
            status.last_report_seq = sent.last_seq;
            status.last_report_at = sent.to;
            if let Some(view) = account {
                status.account = view;
                status.account_at = now_secs();
            }
        })
        .await;
        Ok(())
    }

    async fn heartbeats(&self) -> Result<Infallible, NodeError> {
        loop {
            tokio::time::sleep(self.interval).await;
            if self.joined.load(Ordering::Relaxed) {
                let (used, upload_bps) = (self.server.store().used(), self.server.upload_bps());
                match self.coordinator.heartbeat(used, upload_bps).await {
                    Ok(()) => {
                        debug!("heartbeat acknowledged");
                        continue;
                    }
                    Err(ControlError::Refused(reason)) => {
                        warn!(%reason, "the coordinator refused the heartbeat; joining again");
                        self.joined.store(false, Ordering::Relaxed);
                    }
                    Err(e) => {
                        warn!(error = %e, "heartbeat failed");
                        continue;
                    }
                }
            }
            match self.join().await {
                Ok(()) => info!("joined again"),
                Err(e) => warn!(error = %e, "join failed; retrying at the next heartbeat"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_report_is_due_an_interval_after_the_last() {
        let day = Duration::from_secs(86_400);
        assert_eq!(first_report_delay(0, 1_000_000, day), day);
        assert_eq!(
            first_report_delay(1_000_000, 1_000_000 + 3_600, day),
            day - Duration::from_secs(3_600)
        );
        assert_eq!(
            first_report_delay(1_000_000, 2_000_000, day),
            Duration::ZERO
        );
        // A clock that went backwards never makes the wait longer than the interval.
        assert_eq!(first_report_delay(5_000_000, 1_000_000, day), day);
    }
}
