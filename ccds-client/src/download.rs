//! `ccds-client get`: the async driver around the [`crate::scheduler`].
//!
//! One task owns the scheduler and runs the loop: start every fetch the scheduler hands out
//! (each on its own task), feed outcomes back, hand complete segments to blocking tasks that
//! decode, decrypt and write them, pass problem reports to the [`Reporter`], and fetch the
//! fresh contact lists the scheduler asks for (their addresses go into the address book).
//! Nothing here decides which node to use; everything here does I/O.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use libp2p::{Multiaddr, PeerId};
use overlay::codec::{CodecError, SegmentCodec};
use overlay::identity::{Identity, Signed};
use overlay::manifest::Manifest;
use overlay::net::{Net, split_one_peer};
use overlay::proto::{self, ContactList};
use overlay::ticket::TicketFile;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tracing::{debug, info, warn};

use crate::accounting::Accounting;
use crate::coordinator::{Coordinator, Reporter};
use crate::error::ClientError;
use crate::fetch::{FetchContext, FetchJob, fetch};
use crate::output::PartFile;
use crate::pool::BufferPool;
use crate::rate::RateLimiter;
use crate::scheduler::{self, Action, Fetch, FetchId, Layout, Outcome, Scheduler, Status};
use crate::summary::Summary;

/// Memory budget for segments in the window; the window holds at least one segment. Segments
/// being decoded and written still count, so the window must hold a few more segments than
/// the nodes serve at once: 8 segments of 8 MiB keep 12 nodes busy, where 3 left them idle
/// for a third of the time (1 GiB from 12 local nodes: 337 against 227 MB/s).
const WINDOW_BYTES: u64 = 64 << 20;
/// Most segments in the window, however small they are.
const MAX_WINDOW: u64 = 32;
/// Segments decoded at once. Decoding needs about three times a segment's size (fragments,
/// rebuilt shards, plaintext), so this bounds peak memory more than the window does.
const MAX_DECODES: usize = 2;
/// How long problem reports may delay the exit.
const REPORT_FLUSH: Duration = Duration::from_secs(10);
/// How long problem reports may delay the exit after an interruption.
const INTERRUPTED_FLUSH: Duration = Duration::from_secs(2);

/// What `get` needs.
#[derive(Clone, Debug)]
pub struct GetOptions {
    /// The client's key file.
    pub key: PathBuf,
    /// The ticket file.
    pub ticket: PathBuf,
    /// Where the content goes.
    pub out: PathBuf,
    /// Most bytes per second received from all nodes together.
    pub limit_rate: Option<u64>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// QUIC addresses to bind.
    pub listen: Vec<Multiaddr>,
}

impl GetOptions {
    /// Options with the defaults: no rate limit, no progress bar, any local address.
    pub fn new(key: PathBuf, ticket: PathBuf, out: PathBuf) -> Self {
        Self {
            key,
            ticket,
            out,
            limit_rate: None,
            progress: false,
            listen: vec![default_listen()],
        }
    }
}

/// Any IPv4 address, any port: dials to nodes on loopback and elsewhere both work from it.
pub fn default_listen() -> Multiaddr {
    "/ip4/0.0.0.0/udp/0/quic-v1"
        .parse()
        .expect("a valid multiaddr")
}

/// Segments in flight so that their fragments and decoded bytes stay within a small budget.
pub fn window_for(segment_size: u64) -> usize {
    (WINDOW_BYTES / segment_size.max(1)).clamp(1, MAX_WINDOW) as usize
}

/// Downloads the content of a ticket into `opts.out`, resuming an interrupted run.
pub async fn get(opts: &GetOptions) -> Result<Summary, ClientError> {
    get_until(opts, std::future::pending()).await
}

/// Like [`get`], but stops cleanly when `shutdown` completes: segments already written stay
/// in `PATH.part` for the next run, and the error says so.
pub async fn get_until(
    opts: &GetOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, ClientError> {
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let identity = Identity::load(&opts.key).map_err(ClientError::Key)?;
    let ticket_file = TicketFile::load(&opts.ticket).map_err(ClientError::Ticket)?;
    let ticket = ticket_file.ticket.clone();
    let body = ticket.body().clone();
    if body.client != identity.peer_id() {
        return Err(ClientError::WrongClient {
            ticket: opts.ticket.display().to_string(),
            key: opts.key.display().to_string(),
            named: body.client,
            peer: identity.peer_id(),
        });
    }
    let (cm_peer, cm_addrs) = split_one_peer(&ticket_file.coordinators)
        .map_err(|e| ClientError::CoordinatorAddress(e.to_string()))?;
    let net = Net::start(&identity, &opts.listen)
        .await
        .map_err(|e| ClientError::Network(e.to_string()))?;
    // Dials try every coordinator address at once and keep the first that answers.
    net.add_addresses(cm_peer, cm_addrs.clone());
    let cm = Coordinator {
        peer: cm_peer,
        addrs: cm_addrs,
    };
    let (manifest, contacts) = tokio::select! {
        r = cm.manifest(&net, &ticket) => r?,
        () = &mut shutdown => return Err(ClientError::InterruptedEarly),
    };
    let manifest = Arc::new(manifest.body);
    check_limits(&manifest)?;
    info!(
        content = %body.content,
        size = manifest.size,
        segments = manifest.segments(),
        k = manifest.data_shards,
        m = manifest.parity_shards,
        nodes = contacts.nodes.len(),
        "manifest received"
    );
    remember_addresses(&net, &contacts);
    let segments = manifest.segments();
    let opened = PartFile::open(
        &opts.out,
        body.content,
        manifest.size,
        manifest.segment_size as u64,
        segments,
    )?;
    let resumed = opened.resumed;
    let accounting = Arc::new(Accounting::new(body.ticket_id, body.content, opened.nodes));
    let part = Arc::new(opened.file);
    let codec = SegmentCodec::new(
        &ticket_file.content_key,
        manifest.k(),
        manifest.all_parity(),
    )
    .map_err(|e| ClientError::ManifestInvalid(e.to_string()))?;
    let peers: Vec<PeerId> = contacts.nodes.iter().map(|c| c.node).collect();
    let window = window_for(manifest.segment_size as u64);
    let config = scheduler::Config {
        window,
        ..scheduler::Config::default()
    };
    let layout = Layout {
        segments,
        k: manifest.k(),
        shards: manifest.shards(),
    };
    let sched = Scheduler::new(config, layout, &peers, &contacts.holders, |s| {
        resumed.contains(s)
    });
    let resumed_bytes: u64 = (0..segments)
        .filter(|&s| resumed.contains(s))
        .map(|s| manifest.segment_len(s) as u64)
        .sum();
    let progress = progress_bar(opts.progress, manifest.size, resumed_bytes);
    let mut reporter = Reporter::new(net.clone(), cm.clone(), body.content);
    let mut driver = Driver {
        sched,
        cm: cm.clone(),
        refreshes: JoinSet::new(),
        contact_refreshes: 0,
        ctx: Arc::new(FetchContext {
            net: net.clone(),
            identity: identity.clone(),
            ticket,
            limiter: RateLimiter::new(opts.limit_rate),
            accounting: accounting.clone(),
            buffers: Arc::new(BufferPool::new(MAX_DECODES * manifest.shards())),
            idle: Default::default(),
        }),
        segments: Arc::new(BufferPool::new(MAX_DECODES)),
        manifest: manifest.clone(),
        codec: Arc::new(codec),
        part: part.clone(),
        fetches: JoinSet::new(),
        handles: HashMap::new(),
        received: HashMap::new(),
        node_slots: HashMap::new(),
        decodes: JoinSet::new(),
        buffers: HashMap::new(),
        ready: VecDeque::new(),
        progress: progress.clone(),
        segments_fetched: 0,
    };
    let result = tokio::select! {
        r = driver.run(&mut reporter) => r,
        () = &mut shutdown => Err(ClientError::Interrupted {
            saved: part.done_count(),
            total: segments,
            part: crate::output::part_path(&opts.out).display().to_string(),
        }),
    };
    let interrupted = matches!(result, Err(ClientError::Interrupted { .. }));
    let segments_fetched = driver.segments_fetched;
    let contact_refreshes = driver.contact_refreshes;
    let fetch_context = driver.ctx.clone();
    drop(driver);
    fetch_context.close_idle().await;
    progress.finish_and_clear();
    // Reports matter most when the download failed: deliver them before saying so (briefly
    // when the user asked to stop).
    let flush = if interrupted {
        INTERRUPTED_FLUSH
    } else {
        REPORT_FLUSH
    };
    reporter.flush(flush).await;
    result?;
    let part = Arc::try_unwrap(part)
        .map_err(|_| ClientError::Internal("segment writers still running".into()))?;
    part.finish()?;
    let completion = Signed::sign(&identity, accounting.completion(overlay::time::now_secs()));
    match cm.complete(&net, completion).await {
        Ok(()) => debug!("completion report delivered"),
        Err(e) => warn!("completion report not delivered: {e}"),
    }
    let run = accounting.this_run();
    Ok(Summary {
        bytes: manifest.size,
        seconds: started.elapsed().as_secs_f64(),
        segments,
        segments_fetched,
        segments_resumed: resumed.count(),
        fragments_fetched: run.values().map(|&(fragments, _)| fragments).sum(),
        per_node: run
            .iter()
            .map(|(peer, &(_, bytes))| (peer.to_string(), bytes))
            .collect(),
        corrupt_reports: reporter.corrupt,
        unreachable_reports: reporter.unreachable,
        slow_reports: reporter.slow,
        contact_refreshes,
        path: opts.out.display().to_string(),
    })
}

/// Puts the addresses of a contact list's nodes into the address book. A contact without
/// addresses leaves what is known of that node alone.
fn remember_addresses(net: &Net, contacts: &ContactList) {
    for c in &contacts.nodes {
        if !c.addrs.is_empty() {
            net.add_addresses(c.node, c.addrs.clone());
        }
    }
}

/// Refuses manifests whose pieces could never cross the wire.
fn check_limits(manifest: &Manifest) -> Result<(), ClientError> {
    let segments = manifest.segments();
    if segments > u64::from(u32::MAX) + 1 {
        return Err(ClientError::ManifestInvalid(format!(
            "{segments} segments cannot be addressed"
        )));
    }
    if segments > 0 && manifest.fragment_len(0) > proto::MAX_FRAGMENT {
        return Err(ClientError::ManifestInvalid(format!(
            "fragments of {} bytes exceed the {}-byte limit of the fetch protocol",
            manifest.fragment_len(0),
            proto::MAX_FRAGMENT
        )));
    }
    Ok(())
}

fn progress_bar(enabled: bool, size: u64, done: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40.cyan/blue} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(done);
    bar
}

/// A finished fetch task: what was asked, how it went, the verified bytes.
type FetchDone = (Fetch, Outcome, Option<Vec<u8>>);

struct Driver {
    sched: Scheduler,
    cm: Coordinator,
    /// The fresh contact list being fetched, if any (the scheduler asks for one at a time).
    refreshes: JoinSet<Result<ContactList, ClientError>>,
    /// Fresh contact lists asked for.
    contact_refreshes: u64,
    ctx: Arc<FetchContext>,
    manifest: Arc<Manifest>,
    codec: Arc<SegmentCodec>,
    part: Arc<PartFile>,
    fetches: JoinSet<FetchDone>,
    handles: HashMap<FetchId, AbortHandle>,
    /// Bytes received so far by each running fetch.
    received: HashMap<FetchId, Arc<AtomicU64>>,
    /// One permit per node: an aborted fetch's stream lives until its task is dropped, so the
    /// next fetch to that node waits for it rather than overlapping.
    node_slots: HashMap<PeerId, Arc<Semaphore>>,
    decodes: JoinSet<Result<(u64, usize), ClientError>>,
    /// Verified fragments of segments not yet complete, by segment.
    buffers: HashMap<u64, Vec<Option<Vec<u8>>>>,
    /// Complete segments waiting for a decoder.
    ready: VecDeque<(u64, Vec<Option<Vec<u8>>>)>,
    /// Decoded segment buffers, reused (fragment buffers are in `ctx`).
    segments: Arc<BufferPool>,
    progress: ProgressBar,
    segments_fetched: u64,
}

impl Driver {
    async fn run(&mut self, reporter: &mut Reporter) -> Result<(), ClientError> {
        loop {
            let now = Instant::now();
            while let Some(f) = self.sched.next_fetch(now) {
                self.spawn_fetch(f);
            }
            self.handle_actions(reporter);
            match self.sched.status() {
                Status::Finished => return Ok(()),
                Status::Failed(e) => return Err(ClientError::Unfetchable(e)),
                Status::Running => {}
            }
            let deadline = self.sched.next_deadline(now);
            tokio::select! {
                Some(joined) = self.fetches.join_next() => self.on_fetched(joined),
                Some(joined) = self.decodes.join_next() => self.on_decoded(joined)?,
                Some(joined) = self.refreshes.join_next() => self.on_contacts(joined),
                _ = sleep_until(deadline), if deadline.is_some() => {}
                else => {
                    return Err(ClientError::Internal(
                        "the download stalled with nothing in flight".into(),
                    ));
                }
            }
            self.handle_actions(reporter);
        }
    }

    fn spawn_fetch(&mut self, f: Fetch) {
        let Some(&hash) = self.manifest.hash(f.segment, f.index as usize) else {
            self.sched.on_result(
                f.id,
                Outcome::Mismatch("fragment not in the manifest".into()),
                Instant::now(),
            );
            return;
        };
        let received = Arc::new(AtomicU64::new(0));
        self.received.insert(f.id, received.clone());
        let job = FetchJob {
            node: f.node,
            segment: f.segment,
            index: f.index,
            len: self.manifest.fragment_len(f.segment),
            hash,
            received,
        };
        let ctx = self.ctx.clone();
        let slot = self
            .node_slots
            .entry(f.node)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        let handle = self.fetches.spawn(async move {
            let Ok(_permit) = slot.acquire_owned().await else {
                return (f, Outcome::Broken("node slot closed".into()), None);
            };
            let (outcome, data) = fetch(&ctx, &job).await;
            (f, outcome, data)
        });
        self.handles.insert(f.id, handle);
    }

    fn on_fetched(&mut self, joined: Result<FetchDone, JoinError>) {
        let (f, outcome, data) = match joined {
            Ok(done) => done,
            // Cancelled fetches were already forgotten by the scheduler.
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                let id = self
                    .handles
                    .iter()
                    .find(|(_, h)| h.id() == e.id())
                    .map(|(&id, _)| id);
                if let Some(id) = id {
                    self.handles.remove(&id);
                    self.received.remove(&id);
                    self.sched.on_result(
                        id,
                        Outcome::Broken(format!("fetch task failed: {e}")),
                        Instant::now(),
                    );
                }
                return;
            }
        };
        self.handles.remove(&f.id);
        self.received.remove(&f.id);
        let verified = matches!(outcome, Outcome::Verified { .. });
        if verified {
            // This fragment may complete its segment and overtake the others' fetches: let
            // the scheduler know what those received, for the rate it measures of their nodes.
            for (&id, received) in &self.received {
                self.sched.on_progress(id, received.load(Ordering::Relaxed));
            }
        }
        let wanted = self.sched.on_result(f.id, outcome, Instant::now()) && verified;
        match data {
            Some(data) if wanted => {
                let shards = self.manifest.shards();
                let slot = self
                    .buffers
                    .entry(f.segment)
                    .or_insert_with(|| vec![None; shards]);
                slot[f.index as usize] = Some(data);
            }
            Some(data) => self.ctx.buffers.give(data),
            None => {}
        }
    }

    fn handle_actions(&mut self, reporter: &mut Reporter) {
        while let Some(action) = self.sched.poll_action() {
            match action {
                Action::Report { node, kind, detail } => reporter.report(node, kind, detail),
                Action::RefreshContacts => self.refresh_contacts(),
                Action::Decode { segment, cancel } => {
                    for id in cancel {
                        self.received.remove(&id);
                        if let Some(h) = self.handles.remove(&id) {
                            h.abort();
                        }
                    }
                    let fragments = self.buffers.remove(&segment).unwrap_or_default();
                    self.ready.push_back((segment, fragments));
                }
            }
        }
        while self.decodes.len() < MAX_DECODES
            && let Some((segment, fragments)) = self.ready.pop_front()
        {
            self.spawn_decode(segment, fragments);
        }
    }

    /// Asks the CM for a fresh contact list in the background.
    fn refresh_contacts(&mut self) {
        self.contact_refreshes += 1;
        info!(
            asked = self.contact_refreshes,
            "too few holders answer; asking the coordinator for fresh contacts"
        );
        let (cm, net, ticket) = (
            self.cm.clone(),
            self.ctx.net.clone(),
            self.ctx.ticket.clone(),
        );
        self.refreshes
            .spawn(async move { cm.contacts(&net, &ticket).await });
    }

    /// Feeds a fresh contact list (or its absence) to the scheduler.
    fn on_contacts(&mut self, joined: Result<Result<ContactList, ClientError>, JoinError>) {
        let now = Instant::now();
        match joined {
            Ok(Ok(contacts)) => {
                info!(
                    nodes = contacts.nodes.len(),
                    holders = contacts.holders.len(),
                    "fresh contacts received"
                );
                remember_addresses(&self.ctx.net, &contacts);
                let peers: Vec<PeerId> = contacts.nodes.iter().map(|c| c.node).collect();
                self.sched.add_contacts(&peers, &contacts.holders, now);
            }
            Ok(Err(e)) => {
                warn!("no fresh contacts: {e}");
                self.sched.contacts_unavailable(now);
            }
            Err(e) => {
                warn!("fresh contacts request failed: {e}");
                self.sched.contacts_unavailable(now);
            }
        }
    }

    fn spawn_decode(&mut self, segment: u64, fragments: Vec<Option<Vec<u8>>>) {
        let codec = self.codec.clone();
        let part = self.part.clone();
        let accounting = self.ctx.accounting.clone();
        let (fragment_buffers, segment_buffers) = (self.ctx.buffers.clone(), self.segments.clone());
        let len = self.manifest.segment_len(segment);
        debug!(segment, "decoding");
        self.decodes.spawn_blocking(move || {
            let mut fragments = fragments;
            let mut plain = segment_buffers.take(len);
            let decoded = codec.decode_into(segment, len, &mut fragments, &mut plain);
            for buffer in fragments.into_iter().flatten() {
                fragment_buffers.give(buffer);
            }
            decoded.map_err(|e| match e {
                CodecError::Decrypt(s) => ClientError::Decrypt(s),
                other => ClientError::Decode {
                    segment,
                    reason: other.to_string(),
                },
            })?;
            let written = part.write_segment(segment, &plain, || accounting.snapshot());
            segment_buffers.give(plain);
            written?;
            Ok((segment, len))
        });
    }

    fn on_decoded(
        &mut self,
        joined: Result<Result<(u64, usize), ClientError>, JoinError>,
    ) -> Result<(), ClientError> {
        let (segment, len) =
            joined.map_err(|e| ClientError::Internal(format!("segment decoder failed: {e}")))??;
        debug!(segment, "segment written");
        self.sched.on_written(segment);
        self.segments_fetched += 1;
        self.progress.inc(len as u64);
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
