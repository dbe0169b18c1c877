//! `ccds-node run`: the serving [`Server`] plus the control session with the pinned CM.
//!
//! Order matters: the accept loops start before the CM hears of the node (the CM pushes
//! fragments as soon as a node joins), and `DIR/node.addr` appears only once the CM has
//! accepted the join, so whoever waits for that file finds a node that is both serving and
//! known to the CM. On shutdown the node tells the CM it is leaving (bounded in time), removes
//! `DIR/node.addr`, and lets streams in flight finish for a short grace period.
//!
//! The node is in the collective only while its owner wants it (not paused: see
//! [`crate::agent`]) and, with idle gating, while the host is idle enough (see
//! [`crate::idle`]); the session leaves and rejoins as these change, with the same join and
//! leave messages as a start and a shutdown. Alongside run the owner's control socket (see
//! [`crate::owner`]), the upload schedule's driver (see [`crate::schedule`]), the idle
//! sampler and the status page (see [`crate::page`]).
//!
//! Every report interval (and once more just before the leave at shutdown) the node sends the
//! CM its signed report (see [`crate::report`]); after each accepted one it fetches its account
//! and rewrites `DIR/status.json` (see [`crate::status`](mod@crate::status)), which it also
//! rewrites when it joins and when it leaves.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
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
use crate::agent::{Agent, OwnerLimits};
use crate::control::{Backoff, ControlError, Coordinator};
use crate::datadir::DataDir;
use crate::idle::{IdleConfig, IdleGate, Verdict};
use crate::report::{ReportError, Reporter, Sessions};
use crate::schedule::{Schedule, show_rate};
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
    /// Addresses others reach this node at, announced before the listen addresses (a public
    /// address forwarded to this one through NAT, a VM's host port, a container's published
    /// port).
    pub announce: Vec<Multiaddr>,
    /// Time between heartbeats to the CM.
    pub heartbeat_interval: Duration,
    /// Time between reports to the CM (one more is sent at shutdown).
    pub report_interval: Duration,
    /// Memory for hot fragments, in bytes.
    pub cache_bytes: usize,
    /// Concurrency and time bounds on the serving side. Its `upload_limit` is not used: the
    /// schedule sets the rate.
    pub limits: Limits,
    /// The upload limit by time of day (local time).
    pub schedule: Schedule,
    /// The fragment quota, bytes, replacing the one `init` recorded (which is updated);
    /// `None` keeps it.
    pub quota: Option<u64>,
    /// Idle gating: join only while the host is idle enough. `None`: always join.
    pub idle: Option<IdleOptions>,
    /// Where the local status page and `/metrics` listen (loopback only); `None`: no page.
    pub status_page: Option<SocketAddr>,
}

/// Idle gating's settings.
#[derive(Clone, Debug)]
pub struct IdleOptions {
    /// The thresholds and the window.
    pub config: IdleConfig,
    /// Where the CPU counters are read: `/proc/stat` (tests give a file of their own).
    pub proc_stat: PathBuf,
}

impl RunOptions {
    /// Defaults for a node in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default listen address is valid"),
            announce: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT,
            report_interval: DEFAULT_REPORT_INTERVAL,
            cache_bytes: DEFAULT_CACHE_BYTES,
            limits: Limits::default(),
            schedule: Schedule::default(),
            quota: None,
            idle: None,
            status_page: None,
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
    if let Some(idle) = &options.idle {
        idle.config.check().map_err(NodeError::BadIdle)?;
    }
    if let Some(addr) = options.status_page
        && !addr.ip().is_loopback()
    {
        return Err(NodeError::StatusPageNotLocal(addr));
    }
    let (identity, mut config) = dir.load()?;
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
    let (cm, cm_addrs) = config.coordinator_peer()?;
    match options.quota {
        Some(0) => return Err(NodeError::ZeroQuota),
        Some(quota) if quota != config.quota => {
            info!(from = config.quota, to = quota, "quota changed");
            config.quota = quota;
            dir.save_config(&config)?;
        }
        _ => {}
    }
    let fragments = dir.fragments();
    let (quota, cache) = (config.quota, options.cache_bytes);
    let (store, held) = tokio::task::spawn_blocking(move || {
        let store = FragmentStore::open(&fragments, quota, cache)?;
        let held = store.list().map_or(0, |list| list.len() as u64);
        Ok::<_, overlay::store::StoreError>((store, held))
    })
    .await
    .map_err(|e| NodeError::Task(e.to_string()))??;
    info!(node = %identity.peer_id(), used = store.used(), fragments = held, quota, "fragment store open");
    info!(schedule = %options.schedule, max_clients = options.limits.max_clients, "upload limits");

    let limits = Limits {
        upload_limit: options.schedule.rate_at(local_minute()),
        ..options.limits.clone()
    };
    let server = Server::start(ServeOptions {
        identity: identity.clone(),
        cm,
        store: Arc::new(store),
        receipts_log: dir.receipts(),
        listen: vec![options.listen.clone()],
        limits: limits.clone(),
    })
    .await?;
    // Dials try every coordinator address at once and keep the first that answers.
    server.net().add_addresses(cm, cm_addrs);
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
    let agent = Agent::new(
        dir.clone(),
        server.handle().clone(),
        OwnerLimits {
            quota,
            schedule: options.schedule.clone(),
            max_clients: limits.max_clients,
        },
        status.clone(),
        options.idle.is_some(),
        held,
    );
    if agent.paused() {
        info!("paused by the owner: staying out of the collective until `ccds-node resume`");
    }
    let socket = crate::owner::bind(&dir)?;
    let page = match options.status_page {
        Some(addr) => Some(crate::page::bind(addr, agent.clone()).await?),
        None => None,
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
        announce: options.announce.clone(),
        boot_time: crate::host::boot_time(),
        interval: options.heartbeat_interval,
        report_interval: options.report_interval,
        joined: AtomicBool::new(false),
        registered: AtomicBool::new(false),
        agent: agent.clone(),
        reporter: tokio::sync::Mutex::new(reporter),
        sessions: Mutex::new(sessions),
        status: tokio::sync::Mutex::new(status),
    };

    let background = async {
        let page = async {
            match page {
                Some(page) => page.serve().await,
                None => std::future::pending().await,
            }
        };
        let idle = async {
            match &options.idle {
                Some(idle) => watch_idle(&agent, idle).await,
                None => std::future::pending().await,
            }
        };
        tokio::join!(
            crate::owner::serve(socket, dir.control_socket(), agent.clone()),
            follow_schedule(&agent, &options.schedule),
            idle,
            page,
        );
    };
    let outcome = tokio::select! {
        result = session.operate() => result.map(|never| match never {}),
        () = background => Err(NodeError::Task("a background task ended".into())),
        () = shutdown => {
            info!("shutting down");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(dir.control_socket());
    // A node out of the collective on purpose (paused, host busy) still reports its work.
    let on_purpose = session.registered.load(Ordering::Relaxed) && !agent.wants_online();
    if session.joined.load(Ordering::Relaxed) || on_purpose {
        match tokio::time::timeout(FINAL_REPORT_TIMEOUT, session.report()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "last report not delivered; the next run sends it"),
            Err(_) => warn!(
                timeout = ?FINAL_REPORT_TIMEOUT,
                "last report not accepted in time; the next run sends it"
            ),
        }
    }
    if session.joined.load(Ordering::Relaxed) {
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

/// The local time of day, in minutes since midnight (the system's time zone; UTC when it has
/// none).
pub fn local_minute() -> u16 {
    let now = jiff::ZonedDateTime::now();
    now.hour() as u16 * 60 + now.minute() as u16
}

/// Switches the upload limit as the schedule's windows start and end. Wakes at least every
/// five minutes, so a change of the clock or the time zone is followed soon.
async fn follow_schedule(agent: &Agent, schedule: &Schedule) {
    loop {
        let now = jiff::ZonedDateTime::now();
        let minute = now.hour() as u16 * 60 + now.minute() as u16;
        let rate = schedule.rate_at(minute);
        if agent.server().throttle().set(rate) {
            info!(limit = %show_rate(rate), "upload limit switched by the schedule");
        }
        let to_change = u64::from(schedule.minutes_to_change(minute)) * 60;
        let wait = to_change.saturating_sub(now.second() as u64).clamp(1, 300);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// Largest `/proc/stat` prefix read: the `cpu` line comes first.
const MAX_PROC_STAT: u64 = 64 * 1024;

/// Samples the host's CPU counters and tells the agent whether the host is idle enough.
async fn watch_idle(agent: &Agent, idle: &IdleOptions) {
    use tokio::io::AsyncReadExt;
    let mut gate = IdleGate::new(idle.config.clone());
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(idle.config.sample_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let read = async {
            let mut text = String::new();
            tokio::fs::File::open(&idle.proc_stat)
                .await?
                .take(MAX_PROC_STAT)
                .read_to_string(&mut text)
                .await?;
            Ok::<_, std::io::Error>(text)
        };
        let times = match read.await {
            Ok(text) => crate::idle::parse(&text).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let times = match times {
            Ok(times) => {
                failing = false;
                times
            }
            Err(reason) => {
                if !failing {
                    warn!(path = %idle.proc_stat.display(), %reason, "cannot read the CPU counters; idle gating keeps its last verdict");
                }
                failing = true;
                continue;
            }
        };
        let was = agent.idle();
        let verdict = gate.sample(start.elapsed(), times);
        let idle_now = verdict == Verdict::Idle;
        let percent = gate.share().map(|s| (s * 100.0).round());
        if idle_now != was {
            if idle_now {
                info!(idle_percent = ?percent, "the host is idle enough");
            } else {
                info!(idle_percent = ?percent, "the host is in use");
            }
        }
        agent.set_idle(idle_now, gate.share());
    }
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
    /// Announced addresses, before the listen addresses.
    announce: Vec<Multiaddr>,
    /// When the host booted (Unix seconds, 0 if unknown), reported in every join.
    boot_time: u64,
    interval: Duration,
    report_interval: Duration,
    /// Whether the CM has the node on its active list (as far as the node knows).
    joined: AtomicBool,
    /// Whether the node holds a usable certificate (it may report).
    registered: AtomicBool,
    /// The owner's wishes and the host's idleness, and the live view.
    agent: Arc<Agent>,
    /// Held for a whole round of reports, so two rounds never interleave.
    reporter: tokio::sync::Mutex<Reporter>,
    /// The node's online sessions, for reports.
    sessions: Mutex<Sessions>,
    /// Held while the status file is rewritten, so an older view never overwrites a newer one.
    status: tokio::sync::Mutex<NodeStatus>,
}

impl Session<'_> {
    /// Registers if needed, then stays in the collective while the agent wants it (joining,
    /// heartbeating, leaving and rejoining as that changes), reporting all along.
    async fn operate(&self) -> Result<Infallible, NodeError> {
        self.ensure_certificate().await?;
        self.registered.store(true, Ordering::Relaxed);
        tokio::select! {
            result = self.membership() => result,
            never = self.reports() => match never {},
        }
    }

    /// Joins when the agent wants the node online (retrying with back-off), heartbeats while
    /// joined (joining again when the CM has lost track of the node), and leaves when the
    /// agent no longer wants it online.
    async fn membership(&self) -> Result<Infallible, NodeError> {
        let (mut paused, mut idle) = self.agent.subscribe();
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_CAP);
        loop {
            paused.mark_unchanged();
            idle.mark_unchanged();
            let want = self.agent.wants_online();
            let joined = self.joined.load(Ordering::Relaxed);
            let wait = if want && !joined {
                match self.join().await {
                    Ok(()) => {
                        backoff.reset(BACKOFF_FIRST);
                        let addr = self.server.addr();
                        self.dir.write_addr(&addr)?;
                        info!(%addr, "joined");
                        self.interval
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "join failed");
                        delay
                    }
                }
            } else if !want && joined {
                let reason = self.agent.offline_reason().unwrap_or("shutting down");
                self.leave(reason).await?;
                continue;
            } else if joined {
                self.interval
            } else {
                // Out on purpose: nothing to do until the owner or the host changes.
                Duration::from_secs(3600)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    if self.joined.load(Ordering::Relaxed) {
                        self.heartbeat().await;
                    }
                }
                _ = paused.changed() => {}
                _ = idle.changed() => {}
            }
        }
    }

    /// One heartbeat; a refusal means the CM lost track of the node, which then joins again.
    async fn heartbeat(&self) {
        let (used, upload_bps) = (self.server.store().used(), self.server.upload_bps());
        match self.coordinator.heartbeat(used, upload_bps).await {
            Ok(()) => debug!("heartbeat acknowledged"),
            Err(ControlError::Refused(reason)) => {
                warn!(%reason, "the coordinator refused the heartbeat; joining again");
                self.joined.store(false, Ordering::Relaxed);
                self.agent.set_online(false);
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
    }

    /// Leaves the collective while the daemon keeps running (a pause, a busy host): tells the
    /// CM (a direct indication), withdraws the readiness file, records the node offline.
    async fn leave(&self, reason: &str) -> Result<(), NodeError> {
        match tokio::time::timeout(LEAVE_TIMEOUT, self.coordinator.leave()).await {
            Ok(Ok(())) => info!(reason, "left the collective"),
            Ok(Err(e)) => {
                warn!(reason, error = %e, "could not tell the coordinator the node is leaving")
            }
            Err(_) => warn!(
                reason,
                timeout = ?LEAVE_TIMEOUT,
                "the coordinator did not acknowledge the leave in time"
            ),
        }
        self.joined.store(false, Ordering::Relaxed);
        self.agent.set_online(false);
        self.dir.remove_addr()?;
        self.went_offline().await;
        Ok(())
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
                self.announce
                    .iter()
                    .chain(net.listen_addrs())
                    .cloned()
                    .collect(),
                self.quota,
                self.server.store().used(),
                self.boot_time,
                self.server.upload_bps(),
            )
            .await?;
        self.joined.store(true, Ordering::Relaxed);
        self.agent.set_online(true);
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
        *self.agent.status() = status.clone();
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
