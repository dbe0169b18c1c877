//! The serving side of a node: accept loops for `/ccds/store/1` and `/ccds/fetch/1`, and for
//! the CM's `/ccds/probe/1` and `/ccds/audit/1`.
//!
//! Each protocol has its own bound on concurrent streams, so a crowd of clients can never
//! starve the CM's store orders; a stream arriving when its protocol is at the bound is
//! dropped (the peer sees it reset and retries or moves on). Fragment bytes received from
//! pushers are also bounded in total by a memory budget.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use overlay::net::{Net, with_peer};
use overlay::proto::{self, MAX_FRAGMENT};
use overlay::receipt::Receipt;
use overlay::store::FragmentStore;
use overlay::{Identity, Multiaddr, PeerId};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::NodeError;
use crate::credit::{CreditBook, TicketCount};
use crate::receipts::ReceiptBook;
use crate::throttle::Throttle;
use crate::traffic::{Traffic, TrafficView};
use crate::upload::UploadRate;
use crate::{audit, fetch, store};

/// Bytes a client may run ahead of its receipts unless told otherwise: 32 MiB.
pub const DEFAULT_RECEIPT_CREDIT: u64 = 32 << 20;

/// Distinct clients served at once unless told otherwise.
pub const DEFAULT_MAX_CLIENTS: usize = 64;

/// Bounds on what peers can make the node do at once, and how long they may take.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent `/ccds/store/1` streams.
    pub store_streams: usize,
    /// Concurrent `/ccds/fetch/1` streams.
    pub fetch_streams: usize,
    /// Bytes of incoming fragments held in memory at once (at least one maximal fragment).
    pub store_memory: usize,
    /// Time for a peer to send its request header.
    pub header_timeout: Duration,
    /// Time a fetch stream may stay idle between two requests before the node ends it.
    pub fetch_idle: Duration,
    /// Time for one fragment's bytes to cross the stream, either way. Time a fetch waits for
    /// the upload limit does not count: that is the node's own pacing, not a slow peer.
    pub transfer_timeout: Duration,
    /// Time for a client to send its receipt after the bytes.
    pub receipt_timeout: Duration,
    /// Tickets whose newest receipt, and whose served and unreceipted bytes, are kept in memory.
    pub receipt_tickets: usize,
    /// Bytes a client may receive beyond what its receipts cover before it is refused (a
    /// single larger fragment is still served when nothing is outstanding).
    pub receipt_credit: u64,
    /// Upload bandwidth for fragment bytes, in bytes per second, shared by all fetch streams
    /// (see [`crate::throttle`]); `None` is unlimited. This is the rate at start; the daemon
    /// switches it as the owner's schedule says ([`Server::throttle`]).
    pub upload_limit: Option<NonZeroU32>,
    /// Distinct clients served at once; a fetch stream from one more client is refused as
    /// busy (the client moves on to another holder, as from any failing node).
    pub max_clients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            store_streams: 64,
            fetch_streams: 256,
            store_memory: 256 << 20,
            header_timeout: Duration::from_secs(10),
            fetch_idle: Duration::from_secs(30),
            transfer_timeout: Duration::from_secs(300),
            receipt_timeout: Duration::from_secs(10),
            receipt_tickets: 100_000,
            receipt_credit: DEFAULT_RECEIPT_CREDIT,
            upload_limit: None,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// How to start a [`Server`].
pub struct ServeOptions {
    /// The node's identity (its peer ID is what orders and receipts must name).
    pub identity: Identity,
    /// The pinned CM root: the only signer of store and delete orders and partner certificates.
    pub cm: PeerId,
    /// The fragment store.
    pub store: Arc<FragmentStore>,
    /// Where accepted receipts are appended.
    pub receipts_log: PathBuf,
    /// QUIC multiaddrs to listen on (port 0 picks one).
    pub listen: Vec<Multiaddr>,
    /// Concurrency and time bounds.
    pub limits: Limits,
}

/// Counters of what the node has done since it started.
#[derive(Default)]
pub(crate) struct Stats {
    pub stored: AtomicU64,
    pub store_refused: AtomicU64,
    pub deleted: AtomicU64,
    pub served: AtomicU64,
    pub fetch_refused: AtomicU64,
    pub not_found: AtomicU64,
    pub corrupt: AtomicU64,
    pub receipts_accepted: AtomicU64,
    pub receipts_missing: AtomicU64,
    pub receipts_invalid: AtomicU64,
    pub receipts_lag_refused: AtomicU64,
    pub allowance_refused: AtomicU64,
    pub audits_answered: AtomicU64,
    pub audits_refused: AtomicU64,
    pub streams_dropped: AtomicU64,
    pub busy_refused: AtomicU64,
    pub paused_refused: AtomicU64,
    pub bytes_served: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the node's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Fragments stored on CM orders.
    pub stored: u64,
    /// Store or delete orders refused.
    pub store_refused: u64,
    /// Delete orders carried out.
    pub deleted: u64,
    /// Fragments served to ticket holders.
    pub served: u64,
    /// Fetches refused (bad ticket).
    pub fetch_refused: u64,
    /// Fetches of fragments not held here.
    pub not_found: u64,
    /// Fetches that found the local copy corrupt.
    pub corrupt: u64,
    /// Receipts accepted as the newest for their ticket.
    pub receipts_accepted: u64,
    /// Fetches after which no receipt arrived in time.
    pub receipts_missing: u64,
    /// Receipts refused (forged, misdirected, or regressing).
    pub receipts_invalid: u64,
    /// Fetches refused because the client's receipts lagged beyond the credit.
    pub receipts_lag_refused: u64,
    /// Fetches refused because this node had served the ticket's whole allowance.
    pub allowance_refused: u64,
    /// CM audits answered: a proof, or the truth that the fragment is missing or was corrupt.
    pub audits_answered: u64,
    /// Audits refused (not asked by the pinned CM, a malformed range, an unreadable copy).
    pub audits_refused: u64,
    /// Streams dropped because their protocol was at its concurrency bound.
    pub streams_dropped: u64,
    /// Fetch streams refused because the node was serving its maximum of clients.
    pub busy_refused: u64,
    /// Fetches refused because the owner paused the node.
    pub paused_refused: u64,
    /// Fragment bytes served to clients.
    pub bytes_served: u64,
}

/// What the handlers share.
pub(crate) struct Context {
    pub me: PeerId,
    pub cm: PeerId,
    pub store: Arc<FragmentStore>,
    pub receipts: ReceiptBook,
    /// Served and unreceipted bytes per ticket.
    pub credit: Mutex<CreditBook>,
    pub stats: Stats,
    /// Upload rate measured over fetches served.
    pub upload: UploadRate,
    /// The bucket every fetch stream draws its bytes from, switched by the schedule.
    pub throttle: Throttle,
    /// Whether the owner paused the node: fetches are refused.
    pub paused: AtomicBool,
    /// Fetch streams open per distinct client (at most `limits.max_clients` entries).
    pub clients: Mutex<HashMap<PeerId, usize>>,
    /// Bytes served per recent minute.
    pub traffic: Mutex<Traffic>,
    pub limits: Limits,
    /// Permits are bytes of incoming fragment data.
    pub store_memory: Semaphore,
}

impl Context {
    /// The receipt credit book (held only for a few arithmetic steps).
    pub fn credit(&self) -> MutexGuard<'_, CreditBook> {
        self.credit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<PeerId, usize>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `bytes` of fragment data served now.
    pub fn served(&self, bytes: u64) {
        self.stats.bytes_served.fetch_add(bytes, Ordering::Relaxed);
        self.traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(overlay::time::now_secs(), bytes);
    }

    /// Admits one more fetch stream from `peer`, unless that would make one client more than
    /// the cap. The slot is given back when dropped.
    pub fn admit_client(self: &Arc<Self>, peer: PeerId) -> Option<ClientSlot> {
        let mut clients = self.clients();
        if !clients.contains_key(&peer) && clients.len() >= self.limits.max_clients.max(1) {
            return None;
        }
        *clients.entry(peer).or_insert(0) += 1;
        Some(ClientSlot {
            ctx: self.clone(),
            peer,
        })
    }
}

/// One fetch stream's place among the clients served; see [`Context::admit_client`].
pub(crate) struct ClientSlot {
    ctx: Arc<Context>,
    peer: PeerId,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.ctx.clients();
        if let Some(streams) = clients.get_mut(&self.peer) {
            *streams -= 1;
            if *streams == 0 {
                clients.remove(&self.peer);
            }
        }
    }
}

/// Aborts the accept loops when the server goes away.
struct Loops(Vec<JoinHandle<()>>);

impl Drop for Loops {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A node serving stores and fetches on its own swarm.
pub struct Server {
    net: Net,
    handle: ServerHandle,
    store_limit: Arc<Semaphore>,
    fetch_limit: Arc<Semaphore>,
    loops: Loops,
}

impl Server {
    /// Starts the swarm and both accept loops; streams are served from the moment this returns.
    pub async fn start(options: ServeOptions) -> Result<Self, NodeError> {
        let limits = options.limits;
        let receipts =
            ReceiptBook::open(&options.receipts_log, limits.receipt_tickets).map_err(|source| {
                NodeError::ReceiptLog {
                    path: options.receipts_log.clone(),
                    source,
                }
            })?;
        let net = Net::start(&options.identity, &options.listen).await?;
        // Accept before anything else talks to peers: libp2p-stream drops inbound streams of a
        // protocol nobody is accepting.
        let store_incoming = net.accept(proto::STORE)?;
        let fetch_incoming = net.accept(proto::FETCH)?;
        let probe_incoming = net.accept(proto::PROBE)?;
        let audit_incoming = net.accept(proto::AUDIT)?;
        let ctx = Arc::new(Context {
            me: options.identity.peer_id(),
            cm: options.cm,
            store: options.store,
            receipts,
            credit: Mutex::new(CreditBook::new(
                limits.receipt_tickets,
                limits.receipt_credit,
            )),
            stats: Stats::default(),
            upload: UploadRate::new(),
            throttle: Throttle::new(limits.upload_limit),
            paused: AtomicBool::new(false),
            clients: Mutex::new(HashMap::new()),
            traffic: Mutex::new(Traffic::new()),
            store_memory: Semaphore::new(limits.store_memory.max(MAX_FRAGMENT)),
            limits: limits.clone(),
        });
        let store_limit = Arc::new(Semaphore::new(limits.store_streams.max(1)));
        let fetch_limit = Arc::new(Semaphore::new(limits.fetch_streams.max(1)));
        let loops = Loops(vec![
            tokio::spawn(accept_loop(
                "store",
                store_incoming,
                store_limit.clone(),
                ctx.clone(),
                store::serve,
            )),
            tokio::spawn(accept_loop(
                "fetch",
                fetch_incoming,
                fetch_limit.clone(),
                ctx.clone(),
                fetch::serve,
            )),
            tokio::spawn(accept_loop(
                "probe",
                probe_incoming,
                Arc::new(Semaphore::new(PROBE_STREAMS)),
                ctx.clone(),
                answer_probe,
            )),
            tokio::spawn(accept_loop(
                "audit",
                audit_incoming,
                Arc::new(Semaphore::new(AUDIT_STREAMS)),
                ctx.clone(),
                audit::serve,
            )),
        ]);
        Ok(Self {
            net,
            handle: ServerHandle { ctx },
            store_limit,
            fetch_limit,
            loops,
        })
    }

    /// The node's network handle.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.handle.ctx.me
    }

    /// A handle on the server's state that outlives borrows (for the owner's status page).
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// The node's first listen address with `/p2p/<id>`: what peers dial.
    pub fn addr(&self) -> Multiaddr {
        let first = self
            .net
            .listen_addrs()
            .first()
            .cloned()
            .unwrap_or_else(Multiaddr::empty);
        with_peer(&first, self.handle.ctx.me)
    }

    /// Stops accepting streams and waits up to `grace` for the streams in flight to finish.
    pub async fn shutdown(self, grace: Duration) {
        drop(self.loops);
        let drained = tokio::time::timeout(grace, async {
            let _ = self
                .store_limit
                .acquire_many(self.handle.ctx.limits.store_streams.max(1) as u32)
                .await;
            let _ = self
                .fetch_limit
                .acquire_many(self.handle.ctx.limits.fetch_streams.max(1) as u32)
                .await;
        })
        .await;
        if drained.is_err() {
            warn!(?grace, "streams still in flight at shutdown were cut off");
        }
    }
}

impl std::ops::Deref for Server {
    type Target = ServerHandle;

    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

/// The state of a [`Server`], shared: counters, limits in force, pause.
#[derive(Clone)]
pub struct ServerHandle {
    ctx: Arc<Context>,
}

impl ServerHandle {
    /// The fragment store.
    pub fn store(&self) -> &Arc<FragmentStore> {
        &self.ctx.store
    }

    /// The newest receipt accepted for a ticket.
    pub fn latest_receipt(&self, ticket_id: &[u8; 16]) -> Option<Receipt> {
        self.ctx.receipts.latest(ticket_id)
    }

    /// Bytes served under a ticket, and how many of them no receipt covers yet.
    pub fn ticket_count(&self, ticket_id: &[u8; 16]) -> TicketCount {
        self.ctx.credit().count(ticket_id)
    }

    /// The node's counters now.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.ctx.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            stored: get(&s.stored),
            store_refused: get(&s.store_refused),
            deleted: get(&s.deleted),
            served: get(&s.served),
            fetch_refused: get(&s.fetch_refused),
            not_found: get(&s.not_found),
            corrupt: get(&s.corrupt),
            receipts_accepted: get(&s.receipts_accepted),
            receipts_missing: get(&s.receipts_missing),
            receipts_invalid: get(&s.receipts_invalid),
            receipts_lag_refused: get(&s.receipts_lag_refused),
            allowance_refused: get(&s.allowance_refused),
            audits_answered: get(&s.audits_answered),
            audits_refused: get(&s.audits_refused),
            streams_dropped: get(&s.streams_dropped),
            busy_refused: get(&s.busy_refused),
            paused_refused: get(&s.paused_refused),
            bytes_served: get(&s.bytes_served),
        }
    }

    /// The upload limit in force; the schedule's driver switches it.
    pub fn throttle(&self) -> &Throttle {
        &self.ctx.throttle
    }

    /// Pauses (fetches are refused with a clear reason) or resumes serving.
    pub fn set_paused(&self, paused: bool) {
        self.ctx.paused.store(paused, Ordering::Relaxed);
    }

    /// Whether serving is paused.
    pub fn paused(&self) -> bool {
        self.ctx.paused.load(Ordering::Relaxed)
    }

    /// Distinct clients being served now.
    pub fn clients(&self) -> usize {
        self.ctx.clients().len()
    }

    /// The cap on distinct clients served at once.
    pub fn max_clients(&self) -> usize {
        self.ctx.limits.max_clients.max(1)
    }

    /// Bytes served per minute over the last minutes, up to `now` (Unix seconds).
    pub fn traffic(&self, now: u64) -> TrafficView {
        self.ctx
            .traffic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view(now)
    }

    /// The upload rate measured while serving fetches, bytes per second (0: not yet known).
    pub fn upload_bps(&self) -> u64 {
        self.ctx.upload.bytes_per_sec()
    }
}

/// Concurrent liveness probes answered; more are dropped (the CM retries).
const PROBE_STREAMS: usize = 16;

/// Concurrent CM audits answered; more are dropped (the CM re-checks a timed-out audit). Each
/// holds one fragment and its hash tree in memory while it is proven.
const AUDIT_STREAMS: usize = 8;

async fn answer_probe(ctx: Arc<Context>, peer: PeerId, mut stream: libp2p::Stream) {
    let answered = within(ctx.limits.header_timeout, "probe nonce", async {
        proto::answer_probe(&mut stream)
            .await
            .map_err(StreamError::from)
    })
    .await;
    if let Err(e) = answered {
        debug!(%peer, error = %e, "probe not answered");
    }
}

async fn accept_loop<S, F, Fut>(
    name: &'static str,
    mut incoming: S,
    limit: Arc<Semaphore>,
    ctx: Arc<Context>,
    handler: F,
) where
    S: futures::Stream<Item = (PeerId, libp2p::Stream)> + Unpin,
    F: Fn(Arc<Context>, PeerId, libp2p::Stream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            Stats::bump(&ctx.stats.streams_dropped);
            warn!(protocol = name, %peer, "too many concurrent streams; dropping one");
            drop(stream);
            continue;
        };
        debug!(protocol = name, %peer, "inbound stream");
        let work = handler(ctx.clone(), peer, stream);
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// Why a stream ended without a complete exchange (logged; the peer may not have heard why).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("{0}")]
    Frame(#[from] proto::FrameError),
    #[error("stream I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer too slow: no {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
}

/// Runs `work` for at most `after`, naming `what` was awaited if it takes longer.
pub(crate) async fn within<T, E>(
    after: Duration,
    what: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, StreamError>
where
    StreamError: From<E>,
{
    match tokio::time::timeout(after, work).await {
        Ok(result) => result.map_err(StreamError::from),
        Err(_) => Err(StreamError::Timeout { what, after }),
    }
}

/// A time limit that only the work passed to [`Budget::spend`] uses up, so that the node's
/// own pauses in between (waiting for the upload limit) never count against a peer.
pub(crate) struct Budget {
    what: &'static str,
    total: Duration,
    left: Duration,
}

impl Budget {
    /// `total` for all the work, naming `what` was awaited if it runs out.
    pub fn new(what: &'static str, total: Duration) -> Self {
        Self {
            what,
            total,
            left: total,
        }
    }

    /// Runs `work` within what is left of the budget, and takes its time off the budget.
    pub async fn spend<T, E>(
        &mut self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, StreamError>
    where
        StreamError: From<E>,
    {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(self.left, work).await;
        self.left = self.left.saturating_sub(started.elapsed());
        match result {
            Ok(result) => result.map_err(StreamError::from),
            Err(_) => Err(StreamError::Timeout {
                what: self.what,
                after: self.total,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn work(ms: u64) -> Result<(), std::io::Error> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }

    #[tokio::test]
    async fn a_budget_counts_only_the_work_spent_from_it() {
        let mut budget = Budget::new("delivery", Duration::from_millis(300));
        budget.spend(work(100)).await.unwrap();
        // Pauses between the pieces of work are free, however long.
        tokio::time::sleep(Duration::from_millis(400)).await;
        budget.spend(work(0)).await.unwrap();
        // At most 200 ms are left; running out names the whole budget.
        match budget.spend(work(1000)).await {
            Err(StreamError::Timeout { what, after }) => {
                assert_eq!((what, after), ("delivery", Duration::from_millis(300)));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}
