//! The download scheduler: which fragment to fetch next, and from which node. No I/O, no clock.
//!
//! # Participants
//! The driver ([`crate::download`]) asks [`Scheduler::next_fetch`] for work, runs each fetch on
//! the network, and feeds the [`Outcome`] back with [`Scheduler::on_result`]. The scheduler
//! answers with [`Action`]s: problem reports for the CM, requests for a fresh contact list,
//! and segments whose `k` verified fragments are all in, ready to decode. Time comes in as
//! `now: Instant` arguments.
//!
//! # Goals
//! * At most one stream per node at any moment, so no node is asked for more than it can give.
//! * The fragments of a segment come from distinct nodes whenever the holders allow it.
//! * Memory stays bounded: only `window` segments are fetched or decoded at once, oldest first.
//! * Fast nodes are preferred (an estimate of each node's throughput); untried nodes are tried
//!   first, in the CM's random order, so every node gets a chance to show its speed.
//! * A failed fetch never stalls a segment: the fragment goes to another holder; a node that
//!   cannot be reached is dropped for the whole download and reported once.
//! * A slow fetch never stalls a segment either: once it runs much longer than fetches usually
//!   take, a spare fetch of another fragment starts on another node; the first `k` win and the
//!   rest are cancelled.
//! * A node whose goodput (bytes received per second of stream time) falls far below the median
//!   of the other nodes, over a meaningful sample, is *demoted*: reported to the CM once as
//!   [`ProblemKind::Slow`] (so it can add holders or move fragments away) and from then on used
//!   only when no other holder can serve.
//! * When a segment can no longer get `k` fragments from the holders it knows, the driver is
//!   asked for a fresh contact list ([`Action::RefreshContacts`], fed back through
//!   [`Scheduler::add_contacts`]), a bounded number of times and no more often than
//!   [`Config::refresh_interval`]; the other segments carry on meanwhile. Only when the
//!   refreshes are used up does the download fail, with a tally of what every holder of that
//!   segment answered.
//!
//! # Fresh contact lists
//! A fresh list is merged into what is known: a peer already known keeps its node entry (its
//! speed, strikes and health), new peers become new nodes, and new holders join their segments.
//! Holders missing from the fresh list are kept: the client learns on its own who answers.
//! Nodes dropped for the download (unreachable, refusing) stay dropped even when listed again:
//! the CM learns of them from this client's own reports, and keeps listing them until its
//! check-alive probes are done, so a listing is no evidence that they are back.
//! A contact list that cannot cover a segment before any fetch (the CM's own view) still fails
//! at once: a fresh list a moment later would say the same.
//!
//! # Non-goals
//! Verifying data (the fetcher checks every fragment against the manifest before reporting
//! [`Outcome::Verified`]) and holding fragment bytes (the driver keeps them).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use overlay::proto::{Holder, ProblemKind};

/// Identifies one fetch handed out by [`Scheduler::next_fetch`].
pub type FetchId = u64;

/// Tuning knobs of the scheduler.
#[derive(Clone, Debug)]
pub struct Config {
    /// Segments fetched or decoded at once; memory is a few times this many segments.
    pub window: usize,
    /// Consecutive broken transfers after which a node is dropped for the whole download.
    pub max_strikes: u32,
    /// Before any fetch has finished: how long a fetch may run before a spare one starts beside it.
    pub hedge_initial: Duration,
    /// Shortest time a fetch runs before it can be considered slow.
    pub hedge_min: Duration,
    /// A fetch running this many times longer than the average fetch is slow.
    pub hedge_factor: f64,
    /// A node whose goodput is this many times below the median of the other nodes is slow:
    /// it is reported and used only when no other holder can serve.
    pub slow_ratio: f64,
    /// Fetches a node must have ended (delivered, or been overtaken by a spare) before it can
    /// be judged slow.
    pub slow_min_fetches: u32,
    /// Stream time a node must have used before it can be judged slow: short fetches measure
    /// connection set-up more than the node's bandwidth.
    pub slow_min_time: Duration,
    /// Other nodes with a measured goodput needed for a median worth comparing against.
    pub slow_min_peers: usize,
    /// Fresh contact lists asked for at most, per download, when a segment runs out of holders.
    pub max_refreshes: u32,
    /// Shortest time between two requests for a fresh contact list.
    pub refresh_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window: 4,
            max_strikes: 3,
            hedge_initial: Duration::from_secs(10),
            hedge_min: Duration::from_millis(250),
            hedge_factor: 4.0,
            slow_ratio: 10.0,
            slow_min_fetches: 2,
            slow_min_time: Duration::from_millis(300),
            slow_min_peers: 2,
            max_refreshes: 3,
            refresh_interval: Duration::from_secs(2),
        }
    }
}

/// The shape of a content, from its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of segments.
    pub segments: u64,
    /// Fragments needed to rebuild a segment.
    pub k: usize,
    /// Fragments per segment (`k + m`).
    pub shards: usize,
}

/// One fragment to fetch from one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub id: FetchId,
    pub segment: u64,
    pub index: u16,
    pub node: PeerId,
}

/// How a fetch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The fragment arrived and matched the manifest.
    Verified { bytes: u64 },
    /// No stream could be opened to the node.
    Unreachable(String),
    /// The node refused to serve this client (its reason).
    Refused(String),
    /// The node does not hold the fragment.
    NotFound,
    /// The node found its own copy corrupt.
    CorruptAtNode,
    /// The node sent data that does not match the manifest.
    Mismatch(String),
    /// The transfer broke off: I/O error, timeout or malformed message.
    Broken(String),
}

/// What the driver must do after feeding results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Tell the CM about a node that failed or is slow.
    Report {
        node: PeerId,
        kind: ProblemKind,
        detail: String,
    },
    /// A segment ran out of holders that answer: ask the CM for a fresh contact list for the
    /// same ticket and feed it to [`Scheduler::add_contacts`], or call
    /// [`Scheduler::contacts_unavailable`] if it cannot be had. At most one is outstanding.
    RefreshContacts,
    /// `k` verified fragments of `segment` are in: decode and write it, then call
    /// [`Scheduler::on_written`]. The fetches in `cancel` are no longer needed: abort them
    /// (their nodes are already free again).
    Decode { segment: u64, cancel: Vec<FetchId> },
}

/// Where the download stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    Finished,
    Failed(Unfetchable),
}

/// A segment that cannot get `k` fragments from any holder, with what its holders answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "segment {segment} cannot be rebuilt: it needs {needed} fragments but only {have} could be \
     fetched and no other holder is left ({tally}); try again later or ask the content's seller"
)]
pub struct Unfetchable {
    pub segment: u64,
    pub needed: usize,
    pub have: usize,
    pub tally: HolderTally,
}

/// What the holders of one segment answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HolderTally {
    /// Holders the CM listed for the segment, over all its contact lists.
    pub holders: usize,
    /// Fresh contact lists asked for after the first one.
    pub refreshes: u32,
    /// Distinct nodes among them.
    pub nodes: usize,
    /// Holders that delivered a verified fragment.
    pub answered: usize,
    pub unreachable: usize,
    pub refused: usize,
    pub not_found: usize,
    pub corrupt: usize,
    pub broken: usize,
    /// Holders never asked (their node was busy or the segment was already given up).
    pub untried: usize,
    /// One refusal reason, to show the user.
    pub refusal: Option<String>,
}

impl fmt::Display for HolderTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the coordinator listed {} holders on {} nodes",
            self.holders, self.nodes
        )?;
        if self.refreshes > 0 {
            write!(f, " over {} contact lists", self.refreshes + 1)?;
        }
        write!(f, ": {} answered", self.answered)?;
        let parts = [
            (self.unreachable, "unreachable"),
            (self.refused, "refused"),
            (self.not_found, "did not have the fragment"),
            (self.corrupt, "sent corrupt data"),
            (self.broken, "broke off the transfer"),
            (self.untried, "were not tried"),
        ];
        for (n, what) in parts {
            if n > 0 {
                write!(f, ", {n} {what}")?;
                if what == "refused"
                    && let Some(reason) = &self.refusal
                {
                    write!(f, " (\"{reason}\")")?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Health {
    Usable,
    Dead,
    Refusing(String),
}

#[derive(Debug)]
struct Node {
    peer: PeerId,
    health: Health,
    busy: Option<FetchId>,
    /// Estimated throughput in bytes per second; `None` until a fetch from it finished.
    rate: Option<f64>,
    /// Consecutive broken transfers.
    strikes: u32,
    /// Fragments the CM said it holds but it did not have.
    misses: u32,
    /// Fetches overtaken by spare fetches because they ran too long (less one per success).
    overtaken: u32,
    /// Fragments from this node that failed verification.
    corrupt: u32,
    /// Bytes received from this node: verified fragments, and what overtaken fetches had
    /// received when they were cancelled.
    delivered: u64,
    /// Stream time of its fetches that delivered or were overtaken (the goodput's divisor).
    busy_time: Duration,
    /// Fetches counted in `busy`.
    sampled: u32,
    /// Judged slow (and reported): used only when no other holder can serve.
    demoted: bool,
}

impl Node {
    fn new(peer: PeerId) -> Self {
        Self {
            peer,
            health: Health::Usable,
            busy: None,
            rate: None,
            strikes: 0,
            misses: 0,
            overtaken: 0,
            corrupt: 0,
            delivered: 0,
            busy_time: Duration::ZERO,
            sampled: 0,
            demoted: false,
        }
    }

    fn usable(&self) -> bool {
        self.health == Health::Usable
    }

    /// Bytes received per second of stream time, over fetches that delivered or were
    /// overtaken by a spare (with what they had received by then).
    fn goodput(&self) -> f64 {
        self.delivered as f64 / self.busy_time.as_secs_f64().max(1e-3)
    }

    /// Higher is better. Untried nodes come first, so each gets a chance to show its speed;
    /// nodes that failed without ever delivering come last; corrupt data costs the most.
    fn score(&self) -> f64 {
        let clean =
            self.strikes == 0 && self.misses == 0 && self.corrupt == 0 && self.overtaken == 0;
        let base = match self.rate {
            Some(rate) => rate,
            None if clean => f64::MAX,
            None => 1.0,
        };
        base / (1.0 + self.strikes as f64)
            / (1.0 + self.misses as f64)
            / (1.0 + 4.0 * self.overtaken as f64)
            / (1.0 + 100.0 * self.corrupt as f64)
    }
}

/// How welcome a holder's node is for a segment: (demoted as slow, already used by the
/// segment). Lower is better; speed only decides within a class.
type Class = (bool, bool);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    Missing,
    InFlight { node: usize },
    Have { node: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    Unreachable,
    Refused,
    NotFound,
    Corrupt,
    Broken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Fetching,
    Decoding,
    Done,
}

#[derive(Debug)]
struct Segment {
    phase: Phase,
    /// (fragment index, node) pairs from the contact list, in the CM's order.
    holders: Vec<(u16, usize)>,
    fragments: Vec<Fragment>,
    have: usize,
    failed: HashMap<(u16, usize), Failure>,
}

#[derive(Debug)]
struct InFlight {
    segment: u64,
    index: u16,
    node: usize,
    started: Instant,
    /// Bytes received so far, as last told by [`Scheduler::on_progress`].
    received: u64,
}

/// Fresh contact lists asked for, and when.
#[derive(Debug, Default)]
struct Refresh {
    /// Requests emitted so far.
    asked: u32,
    /// Fresh lists received and merged.
    received: u32,
    /// A request is out and neither answered nor given up.
    pending: bool,
    /// When the last request was emitted.
    last: Option<Instant>,
}

/// The download scheduler's state.
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    layout: Layout,
    nodes: Vec<Node>,
    /// Node of each peer, so that fresh contact lists map known peers to their entries.
    by_peer: HashMap<PeerId, usize>,
    segments: Vec<Segment>,
    /// Segments in `Fetching` or `Decoding`, oldest first.
    active: VecDeque<u64>,
    /// Next segment to consider for admission.
    cursor: u64,
    in_flight: HashMap<FetchId, InFlight>,
    next_id: FetchId,
    actions: VecDeque<Action>,
    /// Average duration of a successful fetch, once one finished.
    avg_fetch: Option<Duration>,
    remaining: u64,
    /// An active segment that cannot reach `k` with the holders known, waiting for a fresh
    /// contact list (as of the last review).
    starved: Option<u64>,
    /// Something that can starve a segment happened since the last review.
    review_needed: bool,
    refresh: Refresh,
    /// A segment that can no longer reach `k`: no new fetches start, and the download fails
    /// once that segment's running fetches have ended (so every answer is counted and reported).
    doomed: Option<u64>,
    failure: Option<Unfetchable>,
}

impl Scheduler {
    /// A scheduler for `layout`, with the contact list's `nodes` and `holders`; segments for
    /// which `finished(segment)` is true are skipped. Holders naming a segment, a fragment or
    /// a node that does not exist are ignored.
    pub fn new(
        config: Config,
        layout: Layout,
        nodes: &[PeerId],
        holders: &[Holder],
        finished: impl Fn(u64) -> bool,
    ) -> Self {
        let segments: Vec<Segment> = (0..layout.segments)
            .map(|s| Segment {
                phase: if finished(s) {
                    Phase::Done
                } else {
                    Phase::Waiting
                },
                holders: Vec::new(),
                fragments: vec![Fragment::Missing; layout.shards],
                have: 0,
                failed: HashMap::new(),
            })
            .collect();
        let remaining = segments.iter().filter(|s| s.phase != Phase::Done).count() as u64;
        let mut scheduler = Self {
            config,
            layout,
            nodes: Vec::new(),
            by_peer: HashMap::new(),
            segments,
            active: VecDeque::new(),
            cursor: 0,
            in_flight: HashMap::new(),
            next_id: 0,
            actions: VecDeque::new(),
            avg_fetch: None,
            remaining,
            starved: None,
            review_needed: false,
            refresh: Refresh::default(),
            doomed: None,
            failure: None,
        };
        scheduler.merge(nodes, holders);
        // A segment the CM's own list cannot cover fails the download before any byte moves:
        // a fresh list a moment later would say the same.
        if let Some(segment) =
            (0..layout.segments).find(|&s| scheduler.segment_infeasible(s as usize))
        {
            scheduler.doom(segment);
        }
        scheduler
    }

    /// Merges a fresh contact list (the answer to [`Action::RefreshContacts`]): known peers
    /// keep their node entries, new peers and new holders are added, and segments that were
    /// waiting for holders carry on. Nodes dropped for this download stay dropped. Holders
    /// naming a segment, a fragment or a node that does not exist are ignored.
    pub fn add_contacts(&mut self, nodes: &[PeerId], holders: &[Holder], now: Instant) {
        self.refresh.pending = false;
        self.refresh.received += 1;
        self.merge(nodes, holders);
        self.review_needed = true;
        self.review(now);
    }

    /// The fresh contact list asked for could not be had (the CM is unreachable or refused):
    /// ask again after [`Config::refresh_interval`] while requests are left, else fail.
    pub fn contacts_unavailable(&mut self, now: Instant) {
        self.refresh.pending = false;
        self.review_needed = true;
        self.review(now);
    }

    /// Fresh contact lists asked for so far.
    pub fn refreshes(&self) -> u32 {
        self.refresh.asked
    }

    /// Adds `nodes` and `holders` from a contact list to what is known.
    fn merge(&mut self, nodes: &[PeerId], holders: &[Holder]) {
        // A peer listed twice, or already known, is one node.
        let position: Vec<usize> = nodes
            .iter()
            .map(|&peer| {
                *self.by_peer.entry(peer).or_insert_with(|| {
                    self.nodes.push(Node::new(peer));
                    self.nodes.len() - 1
                })
            })
            .collect();
        for h in holders {
            let (segment, index) = (h.segment as usize, h.index);
            let Some(&node) = position.get(h.node as usize) else {
                continue;
            };
            if (index as usize) >= self.layout.shards {
                continue;
            }
            if let Some(seg) = self.segments.get_mut(segment)
                && matches!(seg.phase, Phase::Waiting | Phase::Fetching)
                && !seg.holders.contains(&(index, node))
            {
                seg.holders.push((index, node));
            }
        }
    }

    /// Where the download stands.
    pub fn status(&self) -> Status {
        if let Some(f) = &self.failure {
            Status::Failed(f.clone())
        } else if self.remaining == 0 {
            Status::Finished
        } else {
            Status::Running
        }
    }

    /// Segments still to be fetched and written.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Fetches currently running.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next fetch to start now, if any node and fragment are free for one.
    pub fn next_fetch(&mut self, now: Instant) -> Option<Fetch> {
        self.admit();
        self.review(now);
        if self.doomed.is_some() {
            self.settle();
            return None;
        }
        let slow_after = self.slow_after();
        let mut found = None;
        for &segment in &self.active {
            let seg = &self.segments[segment as usize];
            if seg.phase != Phase::Fetching {
                continue;
            }
            let mut running = 0;
            let mut slow = 0;
            for f in self.in_flight.values().filter(|f| f.segment == segment) {
                running += 1;
                if now.saturating_duration_since(f.started) >= slow_after {
                    slow += 1;
                }
            }
            if seg.have + running >= self.layout.k + slow {
                continue;
            }
            if let Some((index, node)) = self.pick(segment) {
                found = Some((segment, index, node));
                break;
            }
        }
        let Some((segment, index, node)) = found else {
            self.detect_stall();
            return None;
        };
        let id = self.next_id;
        self.next_id += 1;
        self.nodes[node].busy = Some(id);
        self.segments[segment as usize].fragments[index as usize] = Fragment::InFlight { node };
        self.in_flight.insert(
            id,
            InFlight {
                segment,
                index,
                node,
                started: now,
                received: 0,
            },
        );
        Some(Fetch {
            id,
            segment,
            index,
            node: self.nodes[node].peer,
        })
    }

    /// Feeds the outcome of fetch `id`. Returns false if the fetch was cancelled meanwhile
    /// (its data, if any, is not needed).
    pub fn on_result(&mut self, id: FetchId, outcome: Outcome, now: Instant) -> bool {
        let Some(f) = self.in_flight.remove(&id) else {
            return false;
        };
        let node = &mut self.nodes[f.node];
        if node.busy == Some(id) {
            node.busy = None;
        }
        let peer = node.peer;
        let seg = &mut self.segments[f.segment as usize];
        seg.fragments[f.index as usize] = Fragment::Missing;
        let failure = match outcome {
            Outcome::Verified { bytes } => {
                seg.fragments[f.index as usize] = Fragment::Have { node: f.node };
                seg.have += 1;
                let took = now.saturating_duration_since(f.started);
                let secs = took.as_secs_f64().max(1e-3);
                let node = &mut self.nodes[f.node];
                node.strikes = 0;
                node.overtaken = node.overtaken.saturating_sub(1);
                let rate = bytes as f64 / secs;
                node.rate = Some(match node.rate {
                    Some(old) => 0.7 * old + 0.3 * rate,
                    None => rate,
                });
                node.delivered = node.delivered.saturating_add(bytes);
                node.busy_time += took;
                node.sampled += 1;
                self.avg_fetch = Some(match self.avg_fetch {
                    Some(old) => old.mul_f64(0.8) + took.mul_f64(0.2),
                    None => took,
                });
                self.judge(f.node);
                if self.segments[f.segment as usize].have >= self.layout.k {
                    self.complete(f.segment, now);
                }
                self.settle();
                return true;
            }
            Outcome::Unreachable(detail) => {
                self.kill(f.node, "could not connect", &detail);
                Failure::Unreachable
            }
            Outcome::Refused(reason) => {
                if self.nodes[f.node].usable() {
                    self.nodes[f.node].health = Health::Refusing(reason);
                }
                Failure::Refused
            }
            Outcome::NotFound => {
                self.nodes[f.node].misses += 1;
                Failure::NotFound
            }
            Outcome::CorruptAtNode => {
                self.nodes[f.node].misses += 1;
                self.report_corrupt(peer, &f, "the node found its copy corrupt".into());
                Failure::Corrupt
            }
            Outcome::Mismatch(detail) => {
                self.nodes[f.node].corrupt += 1;
                self.report_corrupt(peer, &f, detail);
                Failure::Corrupt
            }
            Outcome::Broken(detail) => {
                let node = &mut self.nodes[f.node];
                node.strikes += 1;
                if node.strikes >= self.config.max_strikes {
                    let why = format!("{} transfers in a row broke off", node.strikes);
                    self.kill(f.node, &why, &detail);
                }
                Failure::Broken
            }
        };
        self.segments[f.segment as usize]
            .failed
            .insert((f.index, f.node), failure);
        self.review_needed = true;
        self.review(now);
        true
    }

    /// Fetch `id` has received `bytes` of its fragment so far. Optional: it lets a fetch that
    /// is overtaken by a spare count what it received towards its node's measured rate
    /// (otherwise it counts as nothing received). Unknown fetches are ignored.
    pub fn on_progress(&mut self, id: FetchId, bytes: u64) {
        if let Some(f) = self.in_flight.get_mut(&id) {
            f.received = bytes;
        }
    }

    /// Segment `segment` was decoded and written: it leaves the window.
    pub fn on_written(&mut self, segment: u64) {
        let Some(seg) = self.segments.get_mut(segment as usize) else {
            return;
        };
        if seg.phase == Phase::Done {
            return;
        }
        seg.phase = Phase::Done;
        seg.failed = HashMap::new();
        seg.holders = Vec::new();
        self.active.retain(|&s| s != segment);
        self.remaining -= 1;
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Scheduler::next_fetch`] again although nothing else happened: a running
    /// fetch becomes slow enough to deserve a spare beside it, or a segment waiting for holders
    /// may ask for a fresh contact list. `None` if no such moment is ahead.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let slow_after = self.slow_after();
        let hedge = self
            .in_flight
            .values()
            .map(|f| f.started + slow_after)
            .filter(|&t| t > now)
            .min();
        let refresh = if self.starved.is_some()
            && self.doomed.is_none()
            && !self.refresh.pending
            && self.refresh.asked < self.config.max_refreshes
        {
            self.refresh_due()
        } else {
            None
        };
        match (hedge, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Nodes dropped for the whole download (unreachable or refusing).
    pub fn dropped_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| !n.usable()).count()
    }

    /// Nodes judged slow and reported: used only when no other holder can serve.
    pub fn demoted_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.demoted).count()
    }

    /// When the next fresh contact list may be asked for; `None` if none was asked yet.
    fn refresh_due(&self) -> Option<Instant> {
        self.refresh.last.map(|t| t + self.config.refresh_interval)
    }

    fn slow_after(&self) -> Duration {
        match self.avg_fetch {
            None => self.config.hedge_initial,
            Some(avg) => avg
                .mul_f64(self.config.hedge_factor)
                .max(self.config.hedge_min),
        }
    }

    /// Moves waiting segments into the window, in order.
    fn admit(&mut self) {
        while self.active.len() < self.config.window.max(1) && self.cursor < self.layout.segments {
            let s = self.cursor;
            self.cursor += 1;
            let seg = &mut self.segments[s as usize];
            if seg.phase == Phase::Waiting {
                seg.phase = Phase::Fetching;
                self.active.push_back(s);
                // Holders may have been dropped since the contact list arrived.
                self.review_needed = true;
            }
        }
    }

    /// The best free (fragment, node) for `segment`: a missing fragment, on a usable idle node
    /// that has not failed it, preferring nodes not yet used for this segment, then nodes not
    /// demoted as slow, then speed. A busy node of a better class is waited for rather than
    /// loading one node twice or falling back on a slow one.
    fn pick(&self, segment: u64) -> Option<(u16, usize)> {
        let seg = &self.segments[segment as usize];
        let used = |node: usize| {
            seg.fragments.iter().any(|f| {
                matches!(f, Fragment::InFlight { node: n } | Fragment::Have { node: n } if *n == node)
            })
        };
        // (class, score, order in the list, index, node) of the best idle holder so far.
        let mut best: Option<(Class, f64, usize, u16, usize)> = None;
        let mut best_busy: Option<Class> = None;
        for (order, &(index, node)) in seg.holders.iter().enumerate() {
            let n = &self.nodes[node];
            if seg.fragments[index as usize] != Fragment::Missing
                || seg.failed.contains_key(&(index, node))
                || !n.usable()
            {
                continue;
            }
            let class = (n.demoted, used(node));
            if n.busy.is_some() {
                best_busy = Some(best_busy.map_or(class, |b| b.min(class)));
                continue;
            }
            let score = n.score();
            let better = match best {
                None => true,
                Some((b_class, b_score, b_order, _, _)) => {
                    (class, -score, order) < (b_class, -b_score, b_order)
                }
            };
            if better {
                best = Some((class, score, order, index, node));
            }
        }
        let (class, _, _, index, node) = best?;
        if best_busy.is_some_and(|b| b < class) {
            return None;
        }
        Some((index, node))
    }

    /// True if `segment` can no longer reach `k` fragments, even if every running fetch succeeds.
    fn segment_infeasible(&self, segment: usize) -> bool {
        let seg = &self.segments[segment];
        if seg.phase == Phase::Done || seg.phase == Phase::Decoding {
            return false;
        }
        let reachable = seg
            .fragments
            .iter()
            .enumerate()
            .filter(|&(index, f)| match f {
                Fragment::Have { .. } | Fragment::InFlight { .. } => true,
                Fragment::Missing => seg.holders.iter().any(|&(i, n)| {
                    i as usize == index
                        && self.nodes[n].usable()
                        && !seg.failed.contains_key(&(i, n))
                }),
            })
            .count();
        reachable < self.layout.k
    }

    /// Looks for an active segment that cannot reach `k` with the holders known. For one, asks
    /// for a fresh contact list when allowed, waits while one is out or the last was too
    /// recent, and dooms the segment once the requests are used up.
    fn review(&mut self, now: Instant) {
        if self.doomed.is_some() {
            self.settle();
            return;
        }
        if !self.review_needed && self.starved.is_none() {
            return;
        }
        self.review_needed = false;
        self.starved = self
            .active
            .iter()
            .copied()
            .find(|&s| self.segment_infeasible(s as usize));
        let Some(segment) = self.starved else {
            return;
        };
        if self.refresh.pending {
            return;
        }
        if self.refresh.asked >= self.config.max_refreshes {
            self.doom(segment);
            return;
        }
        if self.refresh_due().is_some_and(|due| now < due) {
            return;
        }
        self.refresh.asked += 1;
        self.refresh.pending = true;
        self.refresh.last = Some(now);
        self.actions.push_back(Action::RefreshContacts);
    }

    fn doom(&mut self, segment: u64) {
        if self.doomed.is_none() {
            self.doomed = Some(segment);
        }
        self.settle();
    }

    /// Declares the failure of the doomed segment once none of its fetches runs any more.
    fn settle(&mut self) {
        if let Some(s) = self.doomed
            && self.failure.is_none()
            && !self.in_flight.values().any(|f| f.segment == s)
        {
            self.fail(s);
        }
    }

    /// Nothing runs and nothing can start although segments remain: fail the first stuck one.
    fn detect_stall(&mut self) {
        if self.doomed.is_some()
            || self.starved.is_some()
            || !self.in_flight.is_empty()
            || self.remaining == 0
        {
            return;
        }
        let decoding = self
            .active
            .iter()
            .any(|&s| self.segments[s as usize].phase == Phase::Decoding);
        if decoding {
            return;
        }
        if let Some(&s) = self.active.front() {
            self.doom(s);
        }
    }

    fn fail(&mut self, segment: u64) {
        let seg = &self.segments[segment as usize];
        let mut tally = HolderTally {
            holders: seg.holders.len(),
            refreshes: self.refresh.received,
            ..HolderTally::default()
        };
        let mut nodes: Vec<usize> = seg.holders.iter().map(|&(_, n)| n).collect();
        nodes.sort_unstable();
        nodes.dedup();
        tally.nodes = nodes.len();
        for &(index, node) in &seg.holders {
            match seg.fragments[index as usize] {
                Fragment::Have { node: n } if n == node => {
                    tally.answered += 1;
                    continue;
                }
                _ => {}
            }
            match seg.failed.get(&(index, node)) {
                Some(Failure::Unreachable) => tally.unreachable += 1,
                Some(Failure::Refused) => tally.refused += 1,
                Some(Failure::NotFound) => tally.not_found += 1,
                Some(Failure::Corrupt) => tally.corrupt += 1,
                Some(Failure::Broken) => tally.broken += 1,
                None => match &self.nodes[node].health {
                    Health::Dead => tally.unreachable += 1,
                    Health::Refusing(_) => tally.refused += 1,
                    Health::Usable => tally.untried += 1,
                },
            }
            if let Health::Refusing(reason) = &self.nodes[node].health {
                tally.refusal.get_or_insert_with(|| reason.clone());
            }
        }
        self.failure = Some(Unfetchable {
            segment,
            needed: self.layout.k,
            have: seg.have,
            tally,
        });
    }

    fn complete(&mut self, segment: u64, now: Instant) {
        let slow_after = self.slow_after();
        self.segments[segment as usize].phase = Phase::Decoding;
        let cancel: Vec<FetchId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.segment == segment)
            .map(|(&id, _)| id)
            .collect();
        let mut overtaken = Vec::new();
        for id in &cancel {
            if let Some(f) = self.in_flight.remove(id) {
                let node = &mut self.nodes[f.node];
                if node.busy == Some(*id) {
                    node.busy = None;
                }
                // Overtaken after running too long: rank the node lower from now on, and count
                // its time and what it received towards its goodput.
                let ran = now.saturating_duration_since(f.started);
                if ran >= slow_after {
                    node.overtaken += 1;
                    node.delivered = node.delivered.saturating_add(f.received);
                    node.busy_time += ran;
                    node.sampled += 1;
                    overtaken.push(f.node);
                }
                self.segments[segment as usize].fragments[f.index as usize] = Fragment::Missing;
            }
        }
        self.actions.push_back(Action::Decode { segment, cancel });
        for node in overtaken {
            self.judge(node);
        }
    }

    /// Demotes and reports `node` once if its goodput, over a meaningful sample, is far below
    /// the median goodput of the other nodes that delivered.
    fn judge(&mut self, node: usize) {
        let n = &self.nodes[node];
        if n.demoted
            || n.sampled < self.config.slow_min_fetches
            || n.busy_time < self.config.slow_min_time
        {
            return;
        }
        let mut others: Vec<f64> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, o)| i != node && !o.demoted && o.delivered > 0)
            .map(|(_, o)| o.goodput())
            .collect();
        if others.is_empty() || others.len() < self.config.slow_min_peers {
            return;
        }
        // The lower middle of an even count: the more forgiving median.
        let mid = (others.len() - 1) / 2;
        let (_, &mut median, _) = others.select_nth_unstable_by(mid, f64::total_cmp);
        let rate = n.goodput();
        if rate * self.config.slow_ratio >= median {
            return;
        }
        let detail = format!(
            "delivered {rate:.0} B/s over {} fetches in {:.1} s; the other nodes' median is \
             {median:.0} B/s",
            n.sampled,
            n.busy_time.as_secs_f64()
        );
        let n = &mut self.nodes[node];
        n.demoted = true;
        self.actions.push_back(Action::Report {
            node: n.peer,
            kind: ProblemKind::Slow {
                bytes_per_sec: rate as u64,
            },
            detail,
        });
    }

    fn kill(&mut self, node: usize, why: &str, detail: &str) {
        let n = &mut self.nodes[node];
        if n.health == Health::Dead {
            return;
        }
        n.health = Health::Dead;
        self.actions.push_back(Action::Report {
            node: n.peer,
            kind: ProblemKind::Unreachable,
            detail: format!("{why}: {detail}"),
        });
    }

    fn report_corrupt(&mut self, node: PeerId, f: &InFlight, detail: String) {
        self.actions.push_back(Action::Report {
            node,
            kind: ProblemKind::Corrupt {
                segment: f.segment as u32,
                index: f.index,
            },
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    /// Fragment `i` of every segment on node `i`.
    fn one_per_node(segments: u32, shards: u16) -> Vec<Holder> {
        (0..segments)
            .flat_map(|segment| {
                (0..shards).map(move |index| Holder {
                    segment,
                    index,
                    node: index as u32,
                })
            })
            .collect()
    }

    fn layout(segments: u64, k: usize, shards: usize) -> Layout {
        Layout {
            segments,
            k,
            shards,
        }
    }

    /// The default configuration without fresh contact lists: a segment out of holders fails.
    fn no_refresh() -> Config {
        Config {
            max_refreshes: 0,
            ..Config::default()
        }
    }

    fn drain(s: &mut Scheduler, now: Instant) -> Vec<Fetch> {
        std::iter::from_fn(|| s.next_fetch(now)).collect()
    }

    fn actions(s: &mut Scheduler) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    #[test]
    fn picks_distinct_nodes_per_segment_and_one_stream_per_node() {
        let nodes = peers(6);
        let mut s = Scheduler::new(
            Config::default(),
            layout(8, 4, 6),
            &nodes,
            &one_per_node(8, 6),
            |_| false,
        );
        let now = Instant::now();
        let fetches = drain(&mut s, now);
        // Six nodes, one stream each: six fetches, however many segments are waiting.
        assert_eq!(fetches.len(), 6);
        let busy: HashSet<PeerId> = fetches.iter().map(|f| f.node).collect();
        assert_eq!(busy.len(), 6, "two streams to one node: {fetches:?}");
        // The oldest segment gets its k first, each fragment from a different node.
        let seg0: Vec<&Fetch> = fetches.iter().filter(|f| f.segment == 0).collect();
        assert_eq!(seg0.len(), 4);
        let seg0_nodes: HashSet<PeerId> = seg0.iter().map(|f| f.node).collect();
        assert_eq!(seg0_nodes.len(), 4);
        // Finishing one fetch frees exactly that node.
        let f = fetches[0];
        assert!(s.on_result(f.id, Outcome::Verified { bytes: 100 }, now));
        let next = drain(&mut s, now);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].node, f.node);
        assert_ne!(
            next[0].segment, f.segment,
            "the node already gave segment 0"
        );
    }

    #[test]
    fn a_node_is_reused_within_a_segment_only_when_no_other_node_holds_anything() {
        // Two nodes each hold two fragments of the single segment; k = 3.
        let nodes = peers(2);
        let holders: Vec<Holder> = (0..4)
            .map(|index| Holder {
                segment: 0,
                index,
                node: (index % 2) as u32,
            })
            .collect();
        let mut s = Scheduler::new(Config::default(), layout(1, 3, 4), &nodes, &holders, |_| {
            false
        });
        let now = Instant::now();
        let first = drain(&mut s, now);
        assert_eq!(first.len(), 2);
        assert_ne!(first[0].node, first[1].node);
        s.on_result(first[0].id, Outcome::Verified { bytes: 1 }, now);
        let again = drain(&mut s, now);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].node, first[0].node);
        s.on_result(first[1].id, Outcome::Verified { bytes: 1 }, now);
        s.on_result(again[0].id, Outcome::Verified { bytes: 1 }, now);
        assert!(matches!(
            actions(&mut s)[..],
            [Action::Decode { segment: 0, .. }]
        ));
    }

    #[test]
    fn retries_other_holders_after_failures_and_reports_them() {
        let nodes = peers(5);
        let mut s = Scheduler::new(
            Config::default(),
            layout(1, 2, 5),
            &nodes,
            &one_per_node(1, 5),
            |_| false,
        );
        let now = Instant::now();
        let first = drain(&mut s, now);
        assert_eq!(first.len(), 2);
        s.on_result(first[0].id, Outcome::Unreachable("timeout".into()), now);
        s.on_result(first[1].id, Outcome::Mismatch("hash differs".into()), now);
        let reports = actions(&mut s);
        assert_eq!(reports.len(), 2);
        assert!(reports.contains(&Action::Report {
            node: first[0].node,
            kind: ProblemKind::Unreachable,
            detail: "could not connect: timeout".into(),
        }));
        assert!(reports.iter().any(|a| matches!(a,
            Action::Report { node, kind: ProblemKind::Corrupt { segment: 0, index }, .. }
                if *node == first[1].node && *index == first[1].index)));
        let second = drain(&mut s, now);
        assert_eq!(second.len(), 2);
        let tried: HashSet<PeerId> = first.iter().map(|f| f.node).collect();
        assert!(second.iter().all(|f| !tried.contains(&f.node)));
        for f in &second {
            s.on_result(f.id, Outcome::Verified { bytes: 10 }, now);
        }
        assert_eq!(
            actions(&mut s),
            vec![Action::Decode {
                segment: 0,
                cancel: vec![]
            }]
        );
        s.on_written(0);
        assert_eq!(s.status(), Status::Finished);
    }

    #[test]
    fn an_unreachable_node_is_dropped_for_every_segment_and_reported_once() {
        let nodes = peers(4);
        let mut s = Scheduler::new(
            Config::default(),
            layout(3, 2, 4),
            &nodes,
            &one_per_node(3, 4),
            |_| false,
        );
        let now = Instant::now();
        let first = drain(&mut s, now);
        let dead = first[0].node;
        s.on_result(first[0].id, Outcome::Unreachable("no route".into()), now);
        let mut reports = 0;
        let mut pending: Vec<Fetch> = first[1..].to_vec();
        while s.status() == Status::Running {
            pending.extend(drain(&mut s, now));
            assert!(
                pending.iter().all(|f| f.node != dead),
                "dead node asked again"
            );
            let f = pending.remove(0);
            s.on_result(f.id, Outcome::Verified { bytes: 1 }, now);
            for a in actions(&mut s) {
                match a {
                    Action::Report { .. } => reports += 1,
                    Action::Decode { segment, cancel } => {
                        pending.retain(|f| !cancel.contains(&f.id));
                        s.on_written(segment);
                    }
                    Action::RefreshContacts => panic!("no segment lacks holders"),
                }
            }
        }
        assert_eq!(s.status(), Status::Finished);
        assert_eq!(reports, 1, "one report for the unreachable node");
        assert_eq!(s.dropped_nodes(), 1);
    }

    #[test]
    fn gives_up_clearly_when_fewer_than_k_holders_remain() {
        let nodes = peers(4);
        let mut s = Scheduler::new(
            no_refresh(),
            layout(1, 3, 4),
            &nodes,
            &one_per_node(1, 4),
            |_| false,
        );
        let now = Instant::now();
        let first = drain(&mut s, now);
        assert_eq!(first.len(), 3);
        s.on_result(first[0].id, Outcome::Verified { bytes: 1 }, now);
        s.on_result(first[1].id, Outcome::NotFound, now);
        assert_eq!(s.status(), Status::Running);
        s.on_result(first[2].id, Outcome::Refused("ticket expired".into()), now);
        let Status::Failed(err) = s.status() else {
            panic!("expected failure, got {:?}", s.status());
        };
        assert_eq!(err.segment, 0);
        assert_eq!(err.have, 1);
        assert_eq!(err.needed, 3);
        assert_eq!(err.tally.answered, 1);
        assert_eq!(err.tally.not_found, 1);
        assert_eq!(err.tally.refused, 1);
        let msg = err.to_string();
        assert!(msg.contains("needs 3 fragments but only 1"), "{msg}");
        assert!(msg.contains("4 holders on 4 nodes: 1 answered"), "{msg}");
        assert!(msg.contains("ticket expired"), "{msg}");
        assert_eq!(s.next_fetch(now), None);
    }

    #[test]
    fn a_doomed_segment_lets_its_running_fetches_finish_before_failing() {
        let nodes = peers(4);
        let mut s = Scheduler::new(
            no_refresh(),
            layout(2, 3, 4),
            &nodes,
            &one_per_node(2, 4),
            |_| false,
        );
        let now = Instant::now();
        let first = drain(&mut s, now);
        let seg0: Vec<Fetch> = first.iter().copied().filter(|f| f.segment == 0).collect();
        assert_eq!(seg0.len(), 3);
        s.on_result(seg0[0].id, Outcome::NotFound, now);
        s.on_result(seg0[1].id, Outcome::NotFound, now);
        // Segment 0 can no longer reach k = 3, but a fetch of it still runs.
        assert_eq!(s.status(), Status::Running);
        assert_eq!(s.next_fetch(now), None, "no new work for a doomed download");
        s.on_result(seg0[2].id, Outcome::CorruptAtNode, now);
        let Status::Failed(err) = s.status() else {
            panic!("expected failure");
        };
        assert_eq!(err.tally.not_found, 2);
        assert_eq!(err.tally.corrupt, 1);
        assert!(actions(&mut s).iter().any(|a| matches!(
            a,
            Action::Report {
                kind: ProblemKind::Corrupt { .. },
                ..
            }
        )));
    }

    #[test]
    fn a_doomed_segment_fails_even_when_its_last_fetch_succeeds() {
        let nodes = peers(4);
        let mut s = Scheduler::new(
            no_refresh(),
            layout(1, 3, 4),
            &nodes,
            &one_per_node(1, 4),
            |_| false,
        );
        let now = Instant::now();
        let first = drain(&mut s, now);
        assert_eq!(first.len(), 3);
        s.on_result(first[0].id, Outcome::NotFound, now);
        assert_eq!(s.status(), Status::Running);
        s.on_result(first[1].id, Outcome::NotFound, now);
        assert_eq!(s.status(), Status::Running);
        s.on_result(first[2].id, Outcome::Verified { bytes: 1 }, now);
        let Status::Failed(err) = s.status() else {
            panic!("expected failure, got {:?}", s.status());
        };
        assert_eq!(
            (err.have, err.tally.answered, err.tally.not_found),
            (1, 1, 2)
        );
    }

    #[test]
    fn fails_before_fetching_when_the_contact_list_cannot_cover_a_segment() {
        let nodes = peers(3);
        let mut holders = one_per_node(2, 3);
        holders.retain(|h| !(h.segment == 1 && h.index > 0));
        let s = Scheduler::new(Config::default(), layout(2, 2, 3), &nodes, &holders, |_| {
            false
        });
        let Status::Failed(err) = s.status() else {
            panic!("expected failure");
        };
        assert_eq!(err.segment, 1);
        assert_eq!(err.tally.holders, 1);
    }

    #[test]
    fn repeated_broken_transfers_drop_a_node() {
        let nodes = peers(3);
        let config = Config {
            max_strikes: 2,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, layout(4, 1, 3), &nodes, &one_per_node(4, 3), |_| {
            false
        });
        let now = Instant::now();
        let victim = nodes[0];
        let mut strikes = 0;
        for _ in 0..20 {
            if strikes == 2 {
                break;
            }
            let fetches = drain(&mut s, now);
            for f in fetches {
                let outcome = if f.node == victim {
                    strikes += 1;
                    Outcome::Broken("reset".into())
                } else {
                    Outcome::NotFound
                };
                s.on_result(f.id, outcome, now);
            }
        }
        assert_eq!(strikes, 2);
        let reports = actions(&mut s);
        assert!(reports.iter().any(|a| matches!(a,
            Action::Report { node, kind: ProblemKind::Unreachable, .. } if *node == victim)));
    }

    #[test]
    fn prefers_fast_nodes() {
        let nodes = peers(3);
        let mut s = Scheduler::new(
            Config::default(),
            layout(3, 1, 3),
            &nodes,
            &one_per_node(3, 3),
            |_| false,
        );
        let t0 = Instant::now();
        let first = drain(&mut s, t0);
        // Segment window of 4 with k = 1: one fetch per segment, each on its own node.
        assert_eq!(first.len(), 3);
        // Node of the fetch that finished fastest wins the next segment.
        let fast = first.iter().find(|f| f.segment == 1).unwrap();
        for f in &first {
            let took = if f.id == fast.id { 10 } else { 1000 };
            s.on_result(
                f.id,
                Outcome::Verified { bytes: 1_000_000 },
                t0 + Duration::from_millis(took),
            );
        }
        let rates: Vec<f64> = s.nodes.iter().map(|n| n.rate.unwrap()).collect();
        let best = s
            .nodes
            .iter()
            .max_by(|a, b| a.score().total_cmp(&b.score()))
            .unwrap();
        assert_eq!(best.peer, fast.node, "{rates:?}");
    }

    #[test]
    fn window_bounds_segments_in_memory() {
        let nodes = peers(40);
        let holders = one_per_node(20, 40);
        let config = Config {
            window: 3,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, layout(20, 2, 40), &nodes, &holders, |_| false);
        let now = Instant::now();
        let fetches = drain(&mut s, now);
        let segments: HashSet<u64> = fetches.iter().map(|f| f.segment).collect();
        assert_eq!(segments, HashSet::from([0, 1, 2]));
        assert_eq!(fetches.len(), 6);
        // Segment 0 complete but not yet written: still in the window.
        for f in fetches.iter().filter(|f| f.segment == 0) {
            s.on_result(f.id, Outcome::Verified { bytes: 1 }, now);
        }
        assert!(drain(&mut s, now).is_empty());
        s.on_written(0);
        let next = drain(&mut s, now);
        assert!(next.iter().all(|f| f.segment == 3), "{next:?}");
        assert_eq!(next.len(), 2);
    }

    #[test]
    fn resumed_segments_are_skipped() {
        let nodes = peers(2);
        let mut s = Scheduler::new(
            Config::default(),
            layout(3, 1, 2),
            &nodes,
            &one_per_node(3, 2),
            |seg| seg != 1,
        );
        assert_eq!(s.remaining(), 1);
        let fetches = drain(&mut s, Instant::now());
        assert_eq!(fetches.len(), 1);
        assert_eq!(fetches[0].segment, 1);
        let all_done = Scheduler::new(Config::default(), layout(3, 1, 2), &nodes, &[], |_| true);
        assert_eq!(all_done.status(), Status::Finished);
    }

    #[test]
    fn a_slow_fetch_gets_a_spare_beside_it_and_the_loser_is_cancelled() {
        let nodes = peers(3);
        let config = Config {
            window: 1,
            hedge_initial: Duration::from_secs(5),
            ..Config::default()
        };
        let mut s = Scheduler::new(config, layout(1, 1, 3), &nodes, &one_per_node(1, 3), |_| {
            false
        });
        let t0 = Instant::now();
        let first = drain(&mut s, t0);
        assert_eq!(first.len(), 1);
        assert_eq!(s.next_deadline(t0), Some(t0 + Duration::from_secs(5)));
        assert!(drain(&mut s, t0 + Duration::from_secs(4)).is_empty());
        let t1 = t0 + Duration::from_secs(5);
        let spare = drain(&mut s, t1);
        assert_eq!(spare.len(), 1);
        assert_ne!(spare[0].node, first[0].node);
        assert!(s.on_result(spare[0].id, Outcome::Verified { bytes: 1 }, t1));
        assert_eq!(
            actions(&mut s),
            vec![Action::Decode {
                segment: 0,
                cancel: vec![first[0].id]
            }]
        );
        // The cancelled fetch's late result is ignored.
        assert!(!s.on_result(first[0].id, Outcome::Verified { bytes: 1 }, t1));
        assert_eq!(s.in_flight(), 0);
        // The overtaken node now ranks below the one that delivered.
        let rank = |p: PeerId| s.nodes.iter().find(|n| n.peer == p).unwrap().score();
        assert!(rank(first[0].node) < rank(spare[0].node));
    }

    /// A tiny deterministic generator, so a failing seed replays exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Sim {
        Good,
        Dead,
        Liar,
        Empty,
        Flaky,
        Slow,
    }

    /// The simulated collective around a scheduler: its nodes, the CM's view, what runs.
    struct World {
        seed: u64,
        nodes: Vec<PeerId>,
        kinds: Vec<Sim>,
        holders: Vec<Holder>,
        segments: u64,
        shards: usize,
        running: Vec<(Fetch, Instant)>,
        decoding: Vec<u64>,
        slow_reported: HashSet<PeerId>,
        refreshed_at: Vec<Instant>,
    }

    impl World {
        /// Carries out the scheduler's actions, as the driver does: cancelled fetches end
        /// before new ones are asked for. A fresh contact list repeats the CM's view, sometimes
        /// with a new good node holding a few fragments, and sometimes cannot be had. Returns
        /// true if a fresh contact list was fed (new fetches may start).
        fn apply(&mut self, s: &mut Scheduler, rng: &mut Rng, now: Instant) -> bool {
            let seed = self.seed;
            let mut fed = false;
            for a in actions(s) {
                match a {
                    Action::Decode { segment, cancel } => {
                        self.running.retain(|(f, _)| !cancel.contains(&f.id));
                        assert!(self.running.iter().all(|(f, _)| f.segment != segment));
                        self.decoding.push(segment);
                    }
                    Action::Report {
                        node,
                        kind: ProblemKind::Slow { .. },
                        ..
                    } => {
                        let first = self.slow_reported.insert(node);
                        assert!(first, "seed {seed}: slow node reported twice");
                        assert!(
                            !matches!(self.kind(node), Sim::Good),
                            "seed {seed}: a good node reported slow"
                        );
                    }
                    Action::Report { .. } => {}
                    Action::RefreshContacts => {
                        if let Some(&last) = self.refreshed_at.last() {
                            let interval = s.config.refresh_interval;
                            assert!(now >= last + interval, "seed {seed}: refreshed too soon");
                        }
                        self.refreshed_at.push(now);
                        let asked = self.refreshed_at.len() as u32;
                        assert!(asked <= s.config.max_refreshes, "seed {seed}");
                        if rng.chance(20) {
                            s.contacts_unavailable(now);
                            continue;
                        }
                        if rng.chance(50) {
                            self.nodes.push(PeerId::random());
                            self.kinds.push(Sim::Good);
                            let node = self.nodes.len() as u32 - 1;
                            for segment in 0..self.segments as u32 {
                                for index in 0..self.shards as u16 {
                                    if rng.chance(30) {
                                        self.holders.push(Holder {
                                            segment,
                                            index,
                                            node,
                                        });
                                    }
                                }
                            }
                        }
                        s.add_contacts(&self.nodes, &self.holders, now);
                        fed = true;
                    }
                }
            }
            fed
        }

        fn kind(&self, peer: PeerId) -> Sim {
            let idx = self.nodes.iter().position(|p| *p == peer).unwrap();
            self.kinds[idx]
        }
    }

    /// Drives the scheduler through a random collective with virtual time; checks that it
    /// never loads a node twice, never stalls, reports a slow node at most once, asks for
    /// fresh contacts within its bounds, and ends finished exactly when every segment could be
    /// served. Returns true if the download finished.
    fn simulate(seed: u64) -> bool {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let k = 1 + rng.below(6) as usize;
        let shards = k + rng.below(5) as usize;
        let segments = rng.below(12);
        let node_count = 1 + rng.below(14) as usize;
        let nodes = peers(node_count);
        let kinds: Vec<Sim> = (0..node_count)
            .map(|_| match rng.below(10) {
                0 => Sim::Dead,
                1 => Sim::Liar,
                2 => Sim::Empty,
                3 => Sim::Flaky,
                4 => Sim::Slow,
                _ => Sim::Good,
            })
            .collect();
        let mut holders = Vec::new();
        for segment in 0..segments as u32 {
            for index in 0..shards as u16 {
                for _ in 0..1 + rng.below(2) {
                    if rng.chance(90) {
                        holders.push(Holder {
                            segment,
                            index,
                            node: rng.below(node_count as u64) as u32,
                        });
                    }
                }
            }
        }
        let config = Config {
            window: 1 + rng.below(4) as usize,
            ..Config::default()
        };
        let mut s = Scheduler::new(
            config,
            layout(segments, k, shards),
            &nodes,
            &holders,
            |_| false,
        );
        let mut w = World {
            seed,
            nodes,
            kinds,
            holders,
            segments,
            shards,
            running: Vec::new(),
            decoding: Vec::new(),
            slow_reported: HashSet::new(),
            refreshed_at: Vec::new(),
        };
        let mut now = Instant::now();
        let mut written = HashSet::new();
        for step in 0..100_000 {
            if w.apply(&mut s, &mut rng, now) {
                continue;
            }
            match s.status() {
                Status::Running => {}
                Status::Finished => {
                    assert_eq!(written.len() as u64, segments, "seed {seed}");
                    return true;
                }
                Status::Failed(e) => {
                    assert!(e.have < k, "seed {seed}: {e}");
                    return false;
                }
            }
            while let Some(f) = s.next_fetch(now) {
                let busy = w.running.iter().any(|(r, _)| r.node == f.node);
                assert!(!busy, "seed {seed}: second stream to {}", f.node);
                let took = match w.kind(f.node) {
                    Sim::Slow => 20_000,
                    Sim::Dead => 5_000,
                    _ => 10 + rng.below(200),
                };
                w.running.push((f, now + Duration::from_millis(took)));
            }
            assert_eq!(s.in_flight(), w.running.len(), "seed {seed}");
            if w.apply(&mut s, &mut rng, now) {
                continue;
            }
            // Either a fetch finishes, a segment is written, or the clock reaches a deadline.
            if !w.decoding.is_empty() && (w.running.is_empty() || rng.chance(30)) {
                let seg = w
                    .decoding
                    .remove(rng.below(w.decoding.len() as u64) as usize);
                s.on_written(seg);
                assert!(written.insert(seg), "seed {seed}: segment written twice");
                continue;
            }
            let Some(pos) = (0..w.running.len()).min_by_key(|&i| w.running[i].1) else {
                if s.status() != Status::Running {
                    continue;
                }
                // Waiting to ask for fresh contacts again.
                if let Some(deadline) = s.next_deadline(now) {
                    now = now.max(deadline);
                    continue;
                }
                panic!(
                    "seed {seed}: stalled at step {step} with nothing running; status {:?}",
                    s.status()
                );
            };
            let (f, done_at) = w.running.remove(pos);
            if let Some(deadline) = s.next_deadline(now)
                && deadline < done_at
            {
                // A spare fetch may start before this one ends.
                w.running.push((f, done_at));
                now = now.max(deadline);
                continue;
            }
            now = now.max(done_at);
            let outcome = match w.kind(f.node) {
                Sim::Good | Sim::Slow => Outcome::Verified { bytes: 1000 },
                Sim::Dead => Outcome::Unreachable("timeout".into()),
                Sim::Liar => Outcome::Mismatch("bad hash".into()),
                Sim::Empty => Outcome::NotFound,
                Sim::Flaky if rng.chance(50) => Outcome::Broken("reset".into()),
                Sim::Flaky => Outcome::Verified { bytes: 1000 },
            };
            assert!(s.on_result(f.id, outcome, now), "seed {seed}");
        }
        panic!("seed {seed}: did not end");
    }

    #[test]
    fn random_collectives_always_end_without_overloading_a_node() {
        let finished = (0..2_000).filter(|&seed| simulate(seed)).count();
        // Both endings must be common, or the simulation tests little.
        assert!(
            (400..1_600).contains(&finished),
            "{finished} of 2000 finished"
        );
    }

    #[test]
    fn a_slow_node_is_reported_once_with_its_measured_rate_and_then_used_last() {
        // Fragments 0 and 3 on a, 1 on b, 2 on the slow node; k = 3, so until the slow node
        // is judged, segments wait for it rather than load `a` twice. Segment 5 has no
        // fragment 3: only the slow node can complete it, demoted or not.
        let nodes = peers(3);
        let (a, b, slow) = (nodes[0], nodes[1], nodes[2]);
        let mut holders = Vec::new();
        for segment in 0..6 {
            for (index, node) in [(0, 0), (1, 1), (2, 2), (3, 0)] {
                if !(segment == 5 && index == 3) {
                    holders.push(Holder {
                        segment,
                        index,
                        node,
                    });
                }
            }
        }
        let mut s = Scheduler::new(Config::default(), layout(6, 3, 4), &nodes, &holders, |_| {
            false
        });
        let took = |peer: PeerId| Duration::from_millis(if peer == slow { 500 } else { 10 });
        let mut now = Instant::now();
        let mut running: Vec<(Fetch, Instant)> = Vec::new();
        let mut reports = Vec::new();
        let mut slow_fetches = Vec::new();
        for _ in 0..1000 {
            if s.status() != Status::Running {
                break;
            }
            while let Some(f) = s.next_fetch(now) {
                if f.node == slow {
                    slow_fetches.push((f.segment, reports.len()));
                }
                running.push((f, now + took(f.node)));
            }
            running.sort_by_key(|&(_, at)| at);
            let (f, at) = running.remove(0);
            now = at;
            assert!(s.on_result(f.id, Outcome::Verified { bytes: 1000 }, now));
            for action in actions(&mut s) {
                match action {
                    Action::Decode { segment, cancel } => {
                        assert!(cancel.is_empty());
                        s.on_written(segment);
                    }
                    Action::Report { node, kind, .. } => reports.push((node, kind)),
                    Action::RefreshContacts => panic!("no segment lacks holders"),
                }
            }
        }
        assert_eq!(s.status(), Status::Finished);
        // Judged after two fetches of 1000 bytes in 500 ms each: 2000 B/s, against ~100 kB/s.
        assert_eq!(
            reports,
            vec![(
                slow,
                ProblemKind::Slow {
                    bytes_per_sec: 2000
                }
            )]
        );
        assert_eq!(s.demoted_nodes(), 1);
        assert!(reports.iter().all(|(n, _)| *n != a && *n != b));
        // Before the report it served segments 0 and 1; after it only segment 5, which had
        // no other holder left.
        let before: Vec<u64> = slow_fetches
            .iter()
            .filter(|&&(_, r)| r == 0)
            .map(|&(seg, _)| seg)
            .collect();
        let after: Vec<u64> = slow_fetches
            .iter()
            .filter(|&&(_, r)| r == 1)
            .map(|&(seg, _)| seg)
            .collect();
        assert_eq!((before, after), (vec![0, 1], vec![5]));
    }

    #[test]
    fn an_overtaken_fetch_counts_what_it_had_received() {
        let nodes = peers(2);
        let (slow, fast) = (nodes[0], nodes[1]);
        let config = Config {
            slow_min_fetches: 1,
            slow_min_peers: 1,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, layout(1, 1, 2), &nodes, &one_per_node(1, 2), |_| {
            false
        });
        let t0 = Instant::now();
        let first = drain(&mut s, t0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].node, slow);
        // No fetch has finished yet: the spare starts after `hedge_initial`.
        let t1 = t0 + Config::default().hedge_initial;
        let spare = drain(&mut s, t1);
        assert_eq!(spare.len(), 1);
        assert_eq!(spare[0].node, fast);
        s.on_progress(first[0].id, 5000);
        s.on_progress(spare[0].id + 100, 1);
        let t2 = t1 + Duration::from_millis(10);
        s.on_result(spare[0].id, Outcome::Verified { bytes: 1000 }, t2);
        // 5000 bytes in 10.01 s.
        let reports: Vec<(PeerId, ProblemKind)> = actions(&mut s)
            .into_iter()
            .filter_map(|a| match a {
                Action::Report { node, kind, .. } => Some((node, kind)),
                _ => None,
            })
            .collect();
        assert_eq!(
            reports,
            vec![(slow, ProblemKind::Slow { bytes_per_sec: 499 })]
        );
    }

    #[test]
    fn a_slow_node_is_not_judged_without_peers_to_compare() {
        // One node only: no median to compare against, however slow it is.
        let nodes = peers(1);
        let mut s = Scheduler::new(
            Config::default(),
            layout(3, 1, 1),
            &nodes,
            &one_per_node(3, 1),
            |_| false,
        );
        let mut now = Instant::now();
        for _ in 0..3 {
            let f = s.next_fetch(now).unwrap();
            now += Duration::from_secs(5);
            s.on_result(f.id, Outcome::Verified { bytes: 10 }, now);
            for a in actions(&mut s) {
                if let Action::Decode { segment, .. } = a {
                    s.on_written(segment);
                }
            }
        }
        assert_eq!(s.status(), Status::Finished);
        assert_eq!(s.demoted_nodes(), 0);
    }

    #[test]
    fn a_segment_out_of_holders_asks_for_fresh_contacts_and_completes_with_them() {
        // Segment 1 lists fragment 0 on a and fragments 1 and 2 on a ghost.
        let nodes = peers(3);
        let (a, ghost) = (nodes[0], nodes[2]);
        let holders = vec![
            Holder {
                segment: 0,
                index: 0,
                node: 0,
            },
            Holder {
                segment: 0,
                index: 1,
                node: 1,
            },
            Holder {
                segment: 1,
                index: 0,
                node: 0,
            },
            Holder {
                segment: 1,
                index: 1,
                node: 2,
            },
            Holder {
                segment: 1,
                index: 2,
                node: 2,
            },
        ];
        let config = Config {
            window: 2,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, layout(2, 2, 3), &nodes, &holders, |_| false);
        let t0 = Instant::now();
        let first = drain(&mut s, t0);
        let to_ghost = first.iter().find(|f| f.node == ghost).unwrap();
        s.on_result(
            to_ghost.id,
            Outcome::Unreachable("handshake failed".into()),
            t0,
        );
        // Instead of failing, the scheduler asks for fresh contacts, once, and keeps going.
        let acts = actions(&mut s);
        assert!(acts.contains(&Action::RefreshContacts), "{acts:?}");
        assert_eq!(s.status(), Status::Running);
        for f in first.iter().filter(|f| f.node != ghost) {
            s.on_result(f.id, Outcome::Verified { bytes: 1 }, t0);
        }
        let more = drain(&mut s, t0);
        for f in &more {
            s.on_result(f.id, Outcome::Verified { bytes: 1 }, t0);
        }
        for a in actions(&mut s) {
            assert_ne!(a, Action::RefreshContacts, "one request at a time");
            if let Action::Decode { segment, .. } = a {
                assert_eq!(segment, 0);
                s.on_written(segment);
            }
        }
        assert!(drain(&mut s, t0).is_empty());
        assert_eq!(s.status(), Status::Running, "waiting for the fresh list");
        assert_eq!(s.next_deadline(t0), None, "the driver waits for the CM");
        // The fresh list, in another order: a known peer, the ghost again, a new node.
        let fresh = PeerId::random();
        let t1 = t0 + Duration::from_millis(50);
        s.add_contacts(
            &[ghost, fresh, a],
            &[
                Holder {
                    segment: 1,
                    index: 0,
                    node: 2,
                },
                Holder {
                    segment: 1,
                    index: 1,
                    node: 0,
                },
                Holder {
                    segment: 1,
                    index: 2,
                    node: 1,
                },
            ],
            t1,
        );
        let next = drain(&mut s, t1);
        // The ghost stays dropped; the new node serves fragment 2 (a already gave fragment 0).
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!(
            (next[0].segment, next[0].index, next[0].node),
            (1, 2, fresh)
        );
        s.on_result(next[0].id, Outcome::Verified { bytes: 1 }, t1);
        assert!(matches!(
            actions(&mut s)[..],
            [Action::Decode { segment: 1, .. }]
        ));
        s.on_written(1);
        assert_eq!(s.status(), Status::Finished);
        assert_eq!(s.refreshes(), 1);
        assert_eq!(s.dropped_nodes(), 1);
        assert_eq!(s.nodes.len(), 4, "known peers keep their entries");
    }

    #[test]
    fn fresh_contacts_are_asked_for_a_bounded_number_of_times_and_not_too_often() {
        let nodes = peers(2);
        let mut s = Scheduler::new(
            Config::default(),
            layout(1, 2, 2),
            &nodes,
            &one_per_node(1, 2),
            |_| false,
        );
        let interval = Config::default().refresh_interval;
        let t0 = Instant::now();
        let first = drain(&mut s, t0);
        s.on_result(first[0].id, Outcome::Verified { bytes: 1 }, t0);
        s.on_result(first[1].id, Outcome::NotFound, t0);
        assert_eq!(actions(&mut s), vec![Action::RefreshContacts]);
        // The CM knows nothing new: the same list again.
        let same = one_per_node(1, 2);
        s.add_contacts(&nodes, &same, t0);
        assert!(actions(&mut s).is_empty());
        assert_eq!(s.next_deadline(t0), Some(t0 + interval));
        assert_eq!(s.next_fetch(t0 + interval / 2), None);
        assert!(actions(&mut s).is_empty(), "too soon for another request");
        let t1 = t0 + interval;
        assert_eq!(s.next_fetch(t1), None);
        assert_eq!(actions(&mut s), vec![Action::RefreshContacts]);
        // The CM cannot be reached: that request counts too.
        s.contacts_unavailable(t1);
        assert_eq!(s.status(), Status::Running);
        let t2 = t1 + interval;
        assert_eq!(s.next_fetch(t2), None);
        assert_eq!(actions(&mut s), vec![Action::RefreshContacts]);
        s.add_contacts(&nodes, &same, t2);
        // Three requests spent: the download fails with the usual tally.
        let Status::Failed(err) = s.status() else {
            panic!("expected failure, got {:?}", s.status());
        };
        assert_eq!(s.refreshes(), 3);
        assert_eq!(s.next_deadline(t2), None);
        assert_eq!(s.next_fetch(t2 + interval * 10), None);
        assert!(actions(&mut s).is_empty());
        let msg = err.to_string();
        assert!(
            msg.contains("2 holders on 2 nodes over 3 contact lists: 1 answered"),
            "{msg}"
        );
        assert!(msg.contains("1 did not have the fragment"), "{msg}");
    }

    #[test]
    fn a_peer_listed_twice_is_one_node() {
        let peer = PeerId::random();
        let other = PeerId::random();
        let holders: Vec<Holder> = (0..3)
            .map(|index| Holder {
                segment: 0,
                index,
                node: index as u32,
            })
            .collect();
        let mut s = Scheduler::new(
            Config::default(),
            layout(1, 2, 3),
            &[peer, peer, other],
            &holders,
            |_| false,
        );
        let fetches = drain(&mut s, Instant::now());
        assert_eq!(fetches.len(), 2);
        assert_ne!(fetches[0].node, fetches[1].node);
    }

    #[test]
    fn bogus_holders_are_ignored() {
        let nodes = peers(2);
        let holders = vec![
            Holder {
                segment: 0,
                index: 0,
                node: 0,
            },
            Holder {
                segment: 0,
                index: 9,
                node: 1,
            },
            Holder {
                segment: 7,
                index: 0,
                node: 1,
            },
            Holder {
                segment: 0,
                index: 1,
                node: 5,
            },
        ];
        let mut s = Scheduler::new(Config::default(), layout(1, 1, 2), &nodes, &holders, |_| {
            false
        });
        let f = drain(&mut s, Instant::now());
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].index, f[0].node), (0, nodes[0]));
    }
}
