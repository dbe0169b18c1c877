//! Repair and demand: which segments need new fragments, most endangered first, and which
//! fragments have become surplus. Sans-IO: placements, node status and `now` in, jobs out; the
//! coordinator's repair driver carries the jobs out and the simulator can drive the same code.
//!
//! * Every fragment index of a segment has at most one current holder. A holder is *live*
//!   (online), *pending* (offline for less than the repair delay: it may come back and cost
//!   nothing) or *lost* (offline for longer).
//! * A segment is **repaired** when its live + pending fragments fall to the repair threshold
//!   (`k + threshold` with `threshold` parity fragments left), or at once when only `k` or fewer
//!   are live, whatever the delay. A repair rebuilds every missing index up to the segment's
//!   desired count.
//! * A segment of a content in demand wants more than `k + m` fragments: the spare parity
//!   indices of its manifest. Such a segment is **expanded** (lower priority than any repair),
//!   and when demand cools the spare indices beyond the desired count become **surplus**.
//! * The check is one pass over a flat array of holder indices, so ten million segments cost a
//!   fraction of a second and a few bytes each.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use overlay::{ContentId, PeerId};

/// No holder at this index.
const NONE: u32 = u32::MAX;

/// Repair settings.
#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// Repair a segment when at most this many of its parity fragments remain (live or
    /// pending); clamped to `0..m`. `None`: half of `m`, rounded down.
    pub threshold: Option<u8>,
    /// How long a node may be offline before its fragments count as lost.
    pub delay: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            delay: Duration::from_secs(15 * 60),
        }
    }
}

/// The erasure-code layout of a content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Fragments needed to rebuild a segment.
    pub k: u8,
    /// Parity fragments kept under normal demand.
    pub m: u8,
    /// Further parity indices the manifest allows for demand.
    pub spare: u8,
}

impl Layout {
    /// `k + m`.
    pub fn target(&self) -> usize {
        self.k as usize + self.m as usize
    }

    /// `k + m + spare`: every index that may exist.
    pub fn shards(&self) -> usize {
        self.target() + self.spare as usize
    }
}

/// Why a segment needs fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobKind {
    /// Redundancy fell to the repair threshold (or below `k + 1` live).
    Repair,
    /// Demand wants more distinct fragments than the segment has.
    Expand,
}

/// One segment to give fragments to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub kind: JobKind,
    pub content: ContentId,
    pub segment: u32,
    /// Live fragments when the job was made: fewer is more urgent.
    pub live: u16,
    /// Indices to rebuild and place.
    pub missing: Vec<u16>,
    /// Nodes holding a live fragment now, with its index: where to fetch `k` from, and whom
    /// (with their networks) not to place on.
    pub holders: Vec<(u16, PeerId)>,
}

/// A fragment that is no longer wanted on its holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Surplus {
    pub content: ContentId,
    pub segment: u32,
    pub index: u16,
    pub node: PeerId,
}

/// What one check found.
#[derive(Debug, Default)]
pub struct Check {
    /// Most endangered first: repairs by fewest live fragments, then expansions.
    pub jobs: Vec<Job>,
    /// Spare fragments beyond the desired count of fully healthy segments.
    pub surplus: Vec<Surplus>,
    /// Segments whose live + pending fragments are below their desired count.
    pub below_target: u64,
    /// Segments with fewer than `k` live fragments: unreadable until nodes return.
    pub unreadable: u64,
}

struct Content {
    id: ContentId,
    layout: Layout,
    segments: u32,
    /// `segments × shards` holder indices into the node table.
    holders: Vec<u32>,
    /// Fragments per segment wanted now (`k + m` up to `k + m + spare`).
    desired: u16,
}

/// The repair core's view of the collective.
#[derive(Default)]
pub struct Repair {
    config: RepairConfig,
    nodes: Vec<PeerId>,
    node_index: HashMap<PeerId, u32>,
    /// `None`: online; `Some(t)`: offline since `t`.
    offline_since: Vec<Option<Instant>>,
    contents: Vec<Content>,
    content_index: HashMap<ContentId, usize>,
    /// Segments with a job being carried out; the check skips them.
    busy: HashSet<(usize, u32)>,
}

/// A fragment's holder as the check sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    Absent,
    Live,
    Pending,
    Lost,
}

impl Repair {
    pub fn new(config: RepairConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn config(&self) -> &RepairConfig {
        &self.config
    }

    fn node(&mut self, peer: PeerId, now: Instant) -> u32 {
        if let Some(&i) = self.node_index.get(&peer) {
            return i;
        }
        let i = self.nodes.len() as u32;
        self.nodes.push(peer);
        // A node first met through a placement record is offline until it joins.
        self.offline_since.push(Some(now));
        self.node_index.insert(peer, i);
        i
    }

    /// A node came online: its fragments are live again.
    pub fn online(&mut self, peer: PeerId, now: Instant) {
        let i = self.node(peer, now) as usize;
        self.offline_since[i] = None;
    }

    /// A node went offline at `now`.
    pub fn offline(&mut self, peer: PeerId, now: Instant) {
        let i = self.node(peer, now) as usize;
        if self.offline_since[i].is_none() {
            self.offline_since[i] = Some(now);
        }
    }

    pub fn is_online(&self, peer: &PeerId) -> bool {
        self.node_index
            .get(peer)
            .is_some_and(|&i| self.offline_since[i as usize].is_none())
    }

    /// Registers a content with no holders yet; its desired count is `k + m`.
    pub fn add_content(&mut self, id: ContentId, layout: Layout, segments: u32) {
        if self.content_index.contains_key(&id) {
            return;
        }
        self.content_index.insert(id, self.contents.len());
        self.contents.push(Content {
            id,
            layout,
            segments,
            holders: vec![NONE; segments as usize * layout.shards()],
            desired: layout.target() as u16,
        });
    }

    /// Sets (or clears) the holder of one fragment; out-of-range input is ignored.
    pub fn set_holder(
        &mut self,
        content: &ContentId,
        segment: u32,
        index: u16,
        holder: Option<PeerId>,
        now: Instant,
    ) {
        let node = holder.map_or(NONE, |p| self.node(p, now));
        let Some(&c) = self.content_index.get(content) else {
            return;
        };
        let c = &mut self.contents[c];
        let shards = c.layout.shards();
        if segment < c.segments && (index as usize) < shards {
            c.holders[segment as usize * shards + index as usize] = node;
        }
    }

    /// The current holder of one fragment.
    pub fn holder(&self, content: &ContentId, segment: u32, index: u16) -> Option<PeerId> {
        let c = &self.contents[*self.content_index.get(content)?];
        let shards = c.layout.shards();
        if segment >= c.segments || index as usize >= shards {
            return None;
        }
        let node = c.holders[segment as usize * shards + index as usize];
        (node != NONE).then(|| self.nodes[node as usize])
    }

    /// How many fragments per segment `content` should have now; clamped to
    /// `k + m ..= k + m + spare`. Returns the value set.
    pub fn set_desired(&mut self, content: &ContentId, desired: usize) -> Option<usize> {
        let c = &mut self.contents[*self.content_index.get(content)?];
        let d = desired.clamp(c.layout.target(), c.layout.shards());
        c.desired = d as u16;
        Some(d)
    }

    /// Every content known, in the order added.
    pub fn content_ids(&self) -> Vec<ContentId> {
        self.contents.iter().map(|c| c.id).collect()
    }

    /// `k + m` of a content.
    pub fn target(&self, content: &ContentId) -> Option<usize> {
        let c = &self.contents[*self.content_index.get(content)?];
        Some(c.layout.target())
    }

    pub fn desired(&self, content: &ContentId) -> Option<usize> {
        let c = &self.contents[*self.content_index.get(content)?];
        Some(c.desired as usize)
    }

    /// Marks a segment as being worked on (the check skips it) or done.
    pub fn set_busy(&mut self, content: &ContentId, segment: u32, busy: bool) {
        let Some(&c) = self.content_index.get(content) else {
            return;
        };
        if busy {
            self.busy.insert((c, segment));
        } else {
            self.busy.remove(&(c, segment));
        }
    }

    /// Jobs queued or running for `content`.
    pub fn busy_segments(&self, content: &ContentId) -> usize {
        match self.content_index.get(content) {
            Some(&c) => self.busy.iter().filter(|(b, _)| *b == c).count(),
            None => 0,
        }
    }

    /// Every node's state at `now`, one byte each: a pass over millions of segments then
    /// reads a table that fits in cache instead of chasing timestamps.
    fn states(&self, now: Instant) -> Vec<State> {
        self.offline_since
            .iter()
            .map(|o| match o {
                None => State::Live,
                Some(t) if now.saturating_duration_since(*t) < self.config.delay => State::Pending,
                Some(_) => State::Lost,
            })
            .collect()
    }

    /// The least number of live fragments of any segment of `content`, and how many of its
    /// segments need fragments now (queued, running, or waiting for the next check).
    pub fn content_health(&self, content: &ContentId, now: Instant) -> Option<(usize, usize)> {
        let ci = *self.content_index.get(content)?;
        let c = &self.contents[ci];
        let shards = c.layout.shards();
        let mut min_live = if c.segments == 0 { 0 } else { usize::MAX };
        let mut needing = 0;
        let mut missing = Vec::new();
        let states = self.states(now);
        for (s, row) in c.holders.chunks_exact(shards).enumerate() {
            let (live, job) = self.segment(c, row, &states, &mut missing);
            min_live = min_live.min(live);
            needing += usize::from(job.is_some() || self.busy.contains(&(ci, s as u32)));
        }
        Some((min_live, needing))
    }

    /// One segment: its live count and, if it needs fragments, the job kind and the indices
    /// to rebuild (into `missing`).
    fn segment(
        &self,
        c: &Content,
        row: &[u32],
        states: &[State],
        missing: &mut Vec<u16>,
    ) -> (usize, Option<JobKind>) {
        let state = |node: u32| {
            if node == NONE {
                State::Absent
            } else {
                states[node as usize]
            }
        };
        let k = c.layout.k as usize;
        let desired = c.desired as usize;
        let (mut live, mut pending) = (0, 0);
        for &node in &row[..desired] {
            match state(node) {
                State::Live => live += 1,
                State::Pending => pending += 1,
                State::Absent | State::Lost => {}
            }
        }
        let threshold = self
            .config
            .threshold
            .map_or(c.layout.m / 2, |t| t.min(c.layout.m.saturating_sub(1)));
        let urgent = live <= k && pending > 0;
        let kind = if urgent || live + pending <= k + threshold as usize {
            JobKind::Repair
        } else if desired > c.layout.target() && live + pending < desired {
            JobKind::Expand
        } else {
            return (live, None);
        };
        missing.clear();
        for (i, &node) in row[..desired].iter().enumerate() {
            match state(node) {
                State::Absent | State::Lost => missing.push(i as u16),
                State::Pending if urgent => missing.push(i as u16),
                State::Pending | State::Live => {}
            }
        }
        if missing.is_empty() || live < k {
            // Nothing to rebuild yet, or nothing to rebuild it from.
            return (live, None);
        }
        (live, Some(kind))
    }

    /// One pass over every segment: every job most endangered first, surplus fragments, counts.
    pub fn check(&self, now: Instant) -> Check {
        self.check_top(now, usize::MAX)
    }

    /// Like [`Repair::check`], but only the `max_jobs` most endangered jobs are built (a
    /// driver with a few free slots need not describe a million segments).
    pub fn check_top(&self, now: Instant, max_jobs: usize) -> Check {
        let mut out = Check::default();
        let mut missing = Vec::new();
        let states = self.states(now);
        // (kind, live, content, segment): cheap to collect and sort, described later.
        let mut found: Vec<(JobKind, u16, u32, u32)> = Vec::new();
        for (ci, c) in self.contents.iter().enumerate() {
            let shards = c.layout.shards();
            let desired = c.desired as usize;
            let k = c.layout.k as usize;
            for (s, row) in c.holders.chunks_exact(shards).enumerate() {
                let s = s as u32;
                let (live, kind) = self.segment(c, row, &states, &mut missing);
                if live < k {
                    out.unreadable += 1;
                }
                if live < desired {
                    out.below_target += 1;
                }
                if let Some(kind) = kind {
                    if !self.busy.contains(&(ci, s)) {
                        found.push((kind, live as u16, ci as u32, s));
                    }
                } else if live == desired {
                    for (i, &node) in row.iter().enumerate().skip(desired) {
                        if node != NONE {
                            out.surplus.push(Surplus {
                                content: c.id,
                                segment: s,
                                index: i as u16,
                                node: self.nodes[node as usize],
                            });
                        }
                    }
                }
            }
        }
        if found.len() > max_jobs {
            found.select_nth_unstable(max_jobs);
            found.truncate(max_jobs);
        }
        found.sort_unstable();
        out.jobs = found
            .into_iter()
            .map(|(kind, live, ci, s)| {
                let c = &self.contents[ci as usize];
                let shards = c.layout.shards();
                let row = &c.holders[s as usize * shards..(s as usize + 1) * shards];
                self.segment(c, row, &states, &mut missing);
                Job {
                    kind,
                    content: c.id,
                    segment: s,
                    live,
                    missing: missing.clone(),
                    holders: row
                        .iter()
                        .enumerate()
                        .filter(|&(_, &n)| n != NONE && states[n as usize] == State::Live)
                        .map(|(i, &n)| (i as u16, self.nodes[n as usize]))
                        .collect(),
                }
            })
            .collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n)
            .map(|_| overlay::Identity::generate().peer_id())
            .collect()
    }

    const LAYOUT: Layout = Layout {
        k: 4,
        m: 2,
        spare: 2,
    };

    /// One content of `segments` segments, fragment i of every segment on node i; all online.
    fn setup(segments: u32, config: RepairConfig) -> (Repair, ContentId, Vec<PeerId>, Instant) {
        let t0 = Instant::now();
        let nodes = peers(8);
        let mut r = Repair::new(config);
        let id = ContentId([1; 32]);
        r.add_content(id, LAYOUT, segments);
        for n in &nodes {
            r.online(*n, t0);
        }
        for s in 0..segments {
            for i in 0..6u16 {
                r.set_holder(&id, s, i, Some(nodes[i as usize]), t0);
            }
        }
        (r, id, nodes, t0)
    }

    fn config(threshold: u8, delay_secs: u64) -> RepairConfig {
        RepairConfig {
            threshold: Some(threshold),
            delay: Duration::from_secs(delay_secs),
        }
    }

    #[test]
    fn a_healthy_collective_needs_nothing() {
        let (r, _, _, t0) = setup(3, config(1, 60));
        let c = r.check(t0 + Duration::from_secs(1000));
        assert!(c.jobs.is_empty() && c.surplus.is_empty());
        assert_eq!((c.below_target, c.unreadable), (0, 0));
    }

    #[test]
    fn a_node_back_before_the_delay_costs_nothing() {
        let (mut r, _, nodes, t0) = setup(2, config(1, 60));
        // Threshold 1 of m=2 parity: repair at 5 live + pending of 6.
        r.offline(nodes[0], t0);
        let c = r.check(t0 + Duration::from_secs(59));
        assert!(c.jobs.is_empty(), "still within the delay: {:?}", c.jobs);
        assert_eq!(c.below_target, 2, "below target all the same");
        r.online(nodes[0], t0 + Duration::from_secs(59));
        let c = r.check(t0 + Duration::from_secs(600));
        assert!(c.jobs.is_empty());
        assert_eq!(c.below_target, 0);
    }

    #[test]
    fn repairs_after_the_delay_with_the_missing_indices() {
        let (mut r, id, nodes, t0) = setup(2, config(1, 60));
        r.offline(nodes[3], t0);
        let c = r.check(t0 + Duration::from_secs(60));
        assert_eq!(c.jobs.len(), 2);
        for (s, j) in c.jobs.iter().enumerate() {
            assert_eq!(j.kind, JobKind::Repair);
            assert_eq!((j.content, j.segment), (id, s as u32));
            assert_eq!(j.live, 5);
            assert_eq!(j.missing, vec![3]);
            assert_eq!(j.holders.len(), 5);
            assert!(!j.holders.iter().any(|(_, n)| *n == nodes[3]));
        }
        // A job in progress is not handed out twice.
        r.set_busy(&id, 0, true);
        let c = r.check(t0 + Duration::from_secs(60));
        assert_eq!(c.jobs.len(), 1);
        assert_eq!(c.jobs[0].segment, 1);
        // Once rebuilt on node 6, segment 0 is healthy.
        r.set_holder(&id, 0, 3, Some(nodes[6]), t0);
        r.set_busy(&id, 0, false);
        let c = r.check(t0 + Duration::from_secs(61));
        assert_eq!(c.jobs.len(), 1);
        assert_eq!(c.jobs[0].segment, 1);
    }

    #[test]
    fn lazy_repair_waits_for_the_threshold() {
        // Threshold 0: repair only when no parity fragment is left (4 of 6).
        let (mut r, _, nodes, t0) = setup(1, config(0, 10));
        let later = t0 + Duration::from_secs(100);
        r.offline(nodes[0], t0);
        assert!(r.check(later).jobs.is_empty());
        r.offline(nodes[1], t0);
        let c = r.check(later);
        assert_eq!(c.jobs.len(), 1);
        assert_eq!(
            c.jobs[0].missing,
            vec![0, 1],
            "every missing index is rebuilt"
        );
    }

    #[test]
    fn the_most_endangered_come_first_and_the_brink_skips_the_delay() {
        let (mut r, id, nodes, t0) = setup(3, config(1, 3600));
        // Node 5 holds index 5 of every segment; segment 1 never got index 4; segment 2 has
        // index 0 on node 6.
        r.set_holder(&id, 1, 4, None, t0);
        r.set_holder(&id, 2, 0, Some(nodes[6]), t0);
        r.offline(nodes[5], t0);
        r.offline(nodes[6], t0);
        // Within the delay only the segments at the brink (k live) are repaired, pending
        // indices included; segment 0 (5 live, 1 pending) waits.
        let c = r.check(t0 + Duration::from_secs(1));
        let order: Vec<(u32, u16)> = c.jobs.iter().map(|j| (j.segment, j.live)).collect();
        assert_eq!(order, vec![(1, 4), (2, 4)]);
        assert_eq!(c.jobs[0].missing, vec![4, 5]);
        assert_eq!(c.jobs[1].missing, vec![0, 5]);
        // After the delay segment 0 is due too, after the more endangered ones.
        let c = r.check(t0 + Duration::from_secs(3600));
        let order: Vec<(u32, u16)> = c.jobs.iter().map(|j| (j.segment, j.live)).collect();
        assert_eq!(order, vec![(1, 4), (2, 4), (0, 5)]);
        assert_eq!(r.content_health(&id, t0), Some((4, 2)));
    }

    #[test]
    fn nothing_to_rebuild_from_below_k() {
        let (mut r, _, nodes, t0) = setup(1, config(1, 0));
        for n in &nodes[..3] {
            r.offline(*n, t0);
        }
        let c = r.check(t0 + Duration::from_secs(1));
        assert!(c.jobs.is_empty());
        assert_eq!(c.unreadable, 1);
    }

    #[test]
    fn demand_expands_into_spares_and_cooling_leaves_surplus() {
        let (mut r, id, nodes, t0) = setup(2, config(1, 60));
        assert_eq!(r.set_desired(&id, 100), Some(8), "clamped to k + m + spare");
        let c = r.check(t0);
        assert_eq!(c.jobs.len(), 2);
        assert!(c.jobs.iter().all(|j| j.kind == JobKind::Expand));
        assert_eq!(c.jobs[0].missing, vec![6, 7]);
        for s in 0..2 {
            r.set_holder(&id, s, 6, Some(nodes[6]), t0);
            r.set_holder(&id, s, 7, Some(nodes[7]), t0);
        }
        assert!(r.check(t0).jobs.is_empty());
        // Repairs outrank expansions.
        r.offline(nodes[0], t0);
        r.offline(nodes[1], t0);
        r.set_desired(&id, 7);
        let c = r.check(t0 + Duration::from_secs(60));
        assert_eq!(c.jobs[0].kind, JobKind::Repair);
        r.online(nodes[0], t0);
        r.online(nodes[1], t0);
        // Demand cooled to 7: index 7 of every segment is surplus.
        let c = r.check(t0 + Duration::from_secs(60));
        assert!(c.jobs.is_empty());
        let surplus: Vec<(u32, u16)> = c.surplus.iter().map(|s| (s.segment, s.index)).collect();
        assert_eq!(surplus, vec![(0, 7), (1, 7)]);
        assert_eq!(r.set_desired(&id, 0), Some(6));
        assert_eq!(r.check(t0).surplus.len(), 4);
    }
}
