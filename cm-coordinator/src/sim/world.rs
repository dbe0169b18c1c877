//! The simulated collective: nodes coming and going in virtual time, driving the coordinator's
//! own liveness, placement and repair cores, with the ground truth kept beside them to measure
//! what the cores achieve.
//!
//! Time is whole seconds from the start. Events (a node going up or down, leaving for good, a
//! new node arriving) sit in one queue ordered by (time, kind, node), so a run is a pure
//! function of its configuration and seed. Periodic work (heartbeats, repair checks, samples,
//! day boundaries) runs between events at its own times.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use overlay::manifest::fragment_len;
use overlay::{ContentId, PeerId};
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp};
use rand_pcg::Pcg64Mcg;

use super::config::SimConfig;
use super::economy::{ContentInfo, Economy, EconomyOutcome};
use super::population::{self, DAY, Node};
use crate::audit::{Outcome as AuditOutcome, Verdict as AuditVerdict};
use crate::history::{GroupRules, NodeProfile};
use crate::liveness::{Action, Event, Liveness, LivenessConfig};
use crate::placement::{self, PlacementRules, Placer, Subnet, WeightedCandidate};
use crate::repair::{Layout, Repair, RepairConfig};

/// No holder in a fragment slot.
const NONE: u32 = u32::MAX;
/// Day-of-use buckets for the capacity sums (15 minutes each).
const BUCKETS: usize = 96;
const BUCKET_SECS: u32 = (DAY / BUCKETS as u64) as u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Up,
    Down,
    Depart,
    Arrive,
    Download,
}

/// Where the simulator's own time goes.
#[derive(Clone, Copy)]
enum Phase {
    Churn,
    Downloads,
    Nightly,
    Audits,
    Heartbeats,
    Repair,
    Samples,
    Liveness,
}

/// A segment's ground truth.
#[derive(Clone, Debug)]
struct Seg {
    scheme: u8,
    k: u8,
    shards: u8,
    /// Holders running now.
    up: u8,
    /// Holders that have not left for good.
    alive: u8,
    lost: bool,
    content: u32,
    segment: u32,
    first_slot: u32,
    /// Unavailable (fewer than `k` holders up) since, or `u64::MAX`.
    down_since: u64,
}

/// Per-scheme outcome.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SchemeStats {
    pub name: String,
    pub k: u8,
    pub m: u8,
    pub repair: bool,
    /// Share of the stored bytes that is redundancy.
    pub overhead: f64,
    pub contents: u32,
    pub segments: u64,
    pub fragment_bytes: u64,
    /// Segments whose holders that have not left fell below `k`: lost for good.
    pub lost: u64,
    /// Segment-seconds with fewer than `k` holders up, since publishing.
    pub unavailable_secs: u128,
    /// Times a segment became unavailable.
    pub unavailable_events: u64,
    /// Segments unavailable now.
    pub unavailable_now: u64,
    /// Repair jobs carried out, and fragments rebuilt.
    pub repairs: u64,
    pub rebuilt: u64,
    /// Repair jobs that could not run: fewer than `k` holders answered.
    pub repairs_failed: u64,
    /// Bytes read from holders and written to new holders by repairs.
    pub repair_read: u128,
    pub repair_written: u128,
    /// Fragments that could not be placed at publishing (too few candidates).
    pub unplaced: u64,
}

/// One point of the time series.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub hours: f64,
    /// Nodes running, and nodes the coordinator's liveness core lists online.
    pub nodes_up: u64,
    pub nodes_listed: u64,
    /// Nodes registered and not gone.
    pub nodes: u64,
    /// Upload bandwidth offered now (owners' use taken off), bytes/s; and if none were in use.
    pub upload_bps: f64,
    pub upload_bps_idle: f64,
    /// CPU cores offered now (owners' use taken off).
    pub cores: f64,
    /// Disk offered by running nodes, and fragment bytes stored on them.
    pub disk_bytes: f64,
    pub stored_bytes: f64,
    /// Per scheme: share of its segments unavailable now.
    pub unavailable: Vec<f64>,
}

/// Everything a run measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcome {
    pub schemes: Vec<SchemeStats>,
    pub samples: Vec<Sample>,
    /// Nodes that arrived and departed during the run.
    pub arrivals: u64,
    pub departures: u64,
    /// Liveness: probes sent, nodes found unreachable, leaves announced.
    pub probes: u64,
    pub offline_unreachable: u64,
    pub events: u64,
    /// Caught whitewashers that came back under a new identity.
    pub whitewashed: u64,
    pub economy: Option<EconomyOutcome>,
}

#[derive(Clone, Copy, Default)]
struct Sums {
    upload: f64,
    cores: f64,
    disk: f64,
    stored: f64,
}

/// The simulated world.
pub struct World {
    cfg: SimConfig,
    /// Churn, placement and repair draws.
    rng: Pcg64Mcg,
    /// The economy's draws (downloads, claims, audits, reconciliation), a stream of its own so
    /// that variants of the economy meet the same churn.
    erng: Pcg64Mcg,
    now: u64,
    end: u64,
    base: Instant,
    nodes: Vec<Node>,
    events: BinaryHeap<Reverse<(u64, Kind, u32)>>,
    liveness: Liveness,
    /// The coordinator's view: listed online by liveness.
    listed: Vec<bool>,
    repair: Repair,
    group_rules: GroupRules,
    subnets: u32,
    segs: Vec<Seg>,
    holders: Vec<u32>,
    slot_seg: Vec<u32>,
    placer: Option<Placer>,
    placer_at: u64,
    /// Capacity of running nodes, by day-of-use bucket.
    buckets: Vec<Sums>,
    in_use_secs: u32,
    up_count: u64,
    listed_count: u64,
    alive_count: u64,
    out: Outcome,
    economy: Option<Economy>,
    /// Every content of the catalog, by global index.
    contents: Vec<ContentInfo>,
    /// First segment of every content.
    content_seg: Vec<u32>,
    /// Fragments of every content ever placed, on all nodes.
    content_ever: Vec<u64>,
    /// Placements closed since the last settlement: (node, content).
    closed: Vec<(u32, u32)>,
    /// Slots whose holder deleted the fragment (droppers): not readable, whatever it claims.
    phantom: Vec<bool>,
    /// Contents of the economy's scheme, in popularity order.
    popular: Vec<u32>,
    zipf: Option<rand_distr::Zipf<f64>>,
}

fn content_id(index: u32) -> ContentId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&index.to_le_bytes());
    id[4..12].copy_from_slice(b"ccds-sim");
    ContentId(id)
}

fn content_index(id: &ContentId) -> u32 {
    u32::from_le_bytes(id.0[..4].try_into().expect("4 bytes"))
}

impl World {
    /// A world at time zero: the starting nodes drawn, each up or down as its habits make
    /// likely, their first transitions queued.
    pub fn new(cfg: SimConfig, seed: u64) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let subnets = ((f64::from(cfg.nodes) / cfg.population.nodes_per_subnet).ceil() as u32)
            .clamp(1, 1 << 24);
        let liveness = Liveness::new(LivenessConfig {
            heartbeat_timeout: cfg.liveness.heartbeat_timeout,
            probe_attempts: cfg.liveness.probe_attempts,
            probe_backoff: cfg.liveness.probe_backoff,
            max_checks: usize::MAX,
        });
        let repair = Repair::new(RepairConfig {
            threshold: cfg.repair.threshold,
            delay: cfg.repair.delay,
        });
        let end = u64::from(cfg.days) * DAY;
        let in_use_secs = (cfg.population.in_use_hours * 3600.0) as u32;
        let mut world = Self {
            rng: Pcg64Mcg::seed_from_u64(rng.random()),
            erng: Pcg64Mcg::seed_from_u64(rng.random()),
            now: 0,
            end,
            base: Instant::now(),
            nodes: Vec::with_capacity(cfg.nodes as usize),
            events: BinaryHeap::new(),
            liveness,
            listed: Vec::new(),
            repair,
            group_rules: GroupRules::default(),
            subnets,
            segs: Vec::new(),
            holders: Vec::new(),
            slot_seg: Vec::new(),
            placer: None,
            placer_at: 0,
            buckets: vec![Sums::default(); BUCKETS],
            in_use_secs,
            up_count: 0,
            listed_count: 0,
            alive_count: 0,
            out: Outcome::default(),
            economy: cfg.economy.enabled.then(|| Economy::new(&cfg.economy)),
            contents: Vec::new(),
            content_seg: Vec::new(),
            content_ever: Vec::new(),
            closed: Vec::new(),
            phantom: Vec::new(),
            popular: Vec::new(),
            zipf: None,
            cfg,
        };
        for _ in 0..world.cfg.nodes {
            world.add_node(true);
        }
        world.schedule_arrival();
        world
    }

    fn instant(&self, t: u64) -> Instant {
        self.base + Duration::from_secs(t)
    }

    /// Registers a node now. Starting nodes have a history: they registered long ago, and
    /// their last 30 days match their habits.
    fn add_node(&mut self, at_start: bool) {
        let node = population::new_node(
            &self.cfg.population,
            self.nodes.len() as u32,
            self.now,
            self.subnets,
            &mut self.rng,
        );
        self.register(node, at_start, None);
    }

    /// Registers `node` (a new machine, or a whitewasher's machine under a fresh identity).
    fn register(&mut self, mut node: Node, at_start: bool, machine: Option<u32>) {
        let index = self.nodes.len() as u32;
        let availability = population::expected_availability(&self.cfg.population, &node);
        let starts_up = if at_start {
            node.born = 0;
            node.online_by_day = [(availability * DAY as f64) as u32; population::WINDOW_DAYS];
            node.online_by_day[0] = 0;
            self.rng.random::<f64>() < availability
        } else {
            true
        };
        let departs = node.departs;
        self.nodes.push(node);
        if let Some(e) = &mut self.economy {
            e.add_node(index, machine, self.now, &mut self.erng);
        }
        self.listed.push(false);
        self.alive_count += 1;
        if departs < self.end {
            self.events.push(Reverse((departs, Kind::Depart, index)));
        }
        if starts_up {
            self.up(index);
        } else {
            let gap = self.draw_gap(index);
            self.events.push(Reverse((self.now + gap, Kind::Up, index)));
        }
    }

    fn draw_session(&mut self, i: u32) -> u64 {
        let n = &self.nodes[i as usize];
        let class = &self.cfg.population.classes[n.class as usize];
        population::draw(&class.online, n.on_scale, &mut self.rng)
    }

    fn draw_gap(&mut self, i: u32) -> u64 {
        let n = &self.nodes[i as usize];
        let class = &self.cfg.population.classes[n.class as usize];
        population::draw(&class.offline, n.off_scale, &mut self.rng)
    }

    fn schedule_arrival(&mut self) {
        let per_day = self
            .cfg
            .population
            .arrivals_per_day
            .unwrap_or(DAY as f64 / self.cfg.population.mean_lifetime.as_secs_f64())
            * f64::from(self.cfg.nodes);
        if per_day <= 0.0 {
            return;
        }
        let wait = Exp::new(per_day / DAY as f64)
            .expect("positive rate")
            .sample(&mut self.rng);
        let at = self.now + wait.max(1.0) as u64;
        if at < self.end {
            self.events.push(Reverse((at, Kind::Arrive, 0)));
        }
    }

    fn bucket(&self, i: u32) -> usize {
        (self.nodes[i as usize].use_start / BUCKET_SECS) as usize % BUCKETS
    }

    fn add_capacity(&mut self, i: u32, sign: f64) {
        let b = self.bucket(i);
        let n = &self.nodes[i as usize];
        let s = &mut self.buckets[b];
        s.upload += sign * n.upload_bps as f64;
        s.cores += sign * f64::from(n.cores);
        s.disk += sign * n.disk_bytes as f64;
        s.stored += sign * n.stored as f64;
    }

    /// A node starts a session: its fragments are readable again, and it joins.
    fn up(&mut self, i: u32) {
        let now = self.now;
        let node = &mut self.nodes[i as usize];
        if node.departed || node.up {
            return;
        }
        node.up = true;
        node.up_since = now;
        let peer = node.peer;
        self.up_count += 1;
        self.add_capacity(i, 1.0);
        for f in 0..self.nodes[i as usize].fragments.len() {
            let slot = self.nodes[i as usize].fragments[f];
            if !self.phantom[slot as usize] {
                self.seg_up(self.slot_seg[slot as usize], 1);
            }
        }
        self.liveness.handle(Event::Joined(peer), self.instant(now));
        if !self.listed[i as usize] {
            self.listed[i as usize] = true;
            self.listed_count += 1;
        }
        self.repair.online(peer, self.instant(now));
        let session = self.draw_session(i);
        self.events.push(Reverse((now + session, Kind::Down, i)));
    }

    /// A node's session ends: announced with a leave, or silent.
    fn down(&mut self, i: u32, next: bool) {
        let now = self.now;
        let node = &mut self.nodes[i as usize];
        if node.departed || !node.up {
            return;
        }
        node.book(now);
        node.up = false;
        let peer = node.peer;
        self.up_count -= 1;
        self.add_capacity(i, -1.0);
        for f in 0..self.nodes[i as usize].fragments.len() {
            let slot = self.nodes[i as usize].fragments[f];
            if !self.phantom[slot as usize] {
                self.seg_up(self.slot_seg[slot as usize], -1);
            }
        }
        if self.rng.random::<f64>() < self.cfg.population.graceful_leave {
            self.liveness.handle(Event::Left(peer), self.instant(now));
        }
        if next {
            let gap = self.draw_gap(i);
            self.events.push(Reverse((now + gap, Kind::Up, i)));
        }
    }

    /// A node leaves for good: its fragments are gone.
    fn depart(&mut self, i: u32) {
        self.down(i, false);
        let node = &mut self.nodes[i as usize];
        if node.departed {
            return;
        }
        node.departed = true;
        node.stored = 0;
        let fragments = std::mem::take(&mut node.fragments);
        self.alive_count -= 1;
        self.out.departures += 1;
        if let Some(e) = &mut self.economy {
            e.retire(i);
        }
        for slot in fragments {
            if !self.phantom[slot as usize] {
                let s = self.slot_seg[slot as usize];
                self.seg_alive(s, -1);
            }
        }
    }

    fn seg_up(&mut self, s: u32, delta: i8) {
        let now = self.now;
        let seg = &mut self.segs[s as usize];
        let before = seg.up;
        seg.up = seg.up.wrapping_add_signed(delta);
        let stats = &mut self.out.schemes[seg.scheme as usize];
        if before >= seg.k && seg.up < seg.k {
            seg.down_since = now;
            stats.unavailable_events += 1;
            stats.unavailable_now += 1;
        } else if before < seg.k && seg.up >= seg.k {
            stats.unavailable_secs += u128::from(now - seg.down_since);
            seg.down_since = u64::MAX;
            stats.unavailable_now -= 1;
        }
    }

    fn seg_alive(&mut self, s: u32, delta: i8) {
        let seg = &mut self.segs[s as usize];
        seg.alive = seg.alive.wrapping_add_signed(delta);
        // Only a loss counts: a segment being placed starts with no holders.
        if delta < 0 && seg.alive < seg.k && !seg.lost {
            seg.lost = true;
            self.out.schemes[seg.scheme as usize].lost += 1;
        }
    }

    /// Puts node `i` in `slot` (replacing whoever held it).
    fn assign(&mut self, slot: u32, i: u32) {
        let s = self.slot_seg[slot as usize];
        let frag = self.out.schemes[self.segs[s as usize].scheme as usize].fragment_bytes;
        self.release(slot);
        self.holders[slot as usize] = i;
        let drops = self.economy.as_ref().map_or(0.0, |e| e.drops(i));
        let phantom = drops > 0.0 && self.erng.random::<f64>() < drops;
        self.phantom[slot as usize] = phantom;
        let content = self.segs[s as usize].content;
        self.content_ever[content as usize] += 1;
        let n = &mut self.nodes[i as usize];
        n.fragments.push(slot);
        n.placed(content);
        n.stored += frag;
        let up = n.up;
        if up {
            let b = self.bucket(i);
            self.buckets[b].stored += frag as f64;
        }
        if !phantom {
            self.seg_alive(s, 1);
            if up {
                self.seg_up(s, 1);
            }
        }
        let seg = &self.segs[s as usize];
        let index = (slot - seg.first_slot) as u16;
        let (content, segment) = (content_id(seg.content), seg.segment);
        let peer = self.nodes[i as usize].peer;
        self.repair
            .set_holder(&content, segment, index, Some(peer), self.instant(self.now));
    }

    /// Takes `slot` from its holder (the placement is closed): the fragment no longer counts.
    fn release(&mut self, slot: u32) {
        let old = self.holders[slot as usize];
        if old == NONE {
            return;
        }
        let s = self.slot_seg[slot as usize];
        let frag = self.out.schemes[self.segs[s as usize].scheme as usize].fragment_bytes;
        self.holders[slot as usize] = NONE;
        if self.economy.is_some() {
            self.closed.push((old, self.segs[s as usize].content));
        }
        let was_up = self.nodes[old as usize].up;
        let o = &mut self.nodes[old as usize];
        if o.departed {
            return;
        }
        if let Some(p) = o.fragments.iter().position(|&f| f == slot) {
            o.fragments.swap_remove(p);
        }
        o.stored -= frag;
        if was_up {
            let b = self.bucket(old);
            self.buckets[b].stored -= frag as f64;
        }
        if !self.phantom[slot as usize] {
            if was_up {
                self.seg_up(s, -1);
            }
            self.seg_alive(s, -1);
        }
    }

    /// Whether node `i` can take a fragment of `bytes` now.
    fn accepts(&self, i: u32, bytes: u64) -> bool {
        let n = &self.nodes[i as usize];
        n.up && !n.departed && n.stored + bytes <= n.disk_bytes
    }

    /// The placer over a random sample of the nodes liveness lists online, weighted as the
    /// coordinator weighs them (30-day availability, bandwidth, vetting).
    fn placer(&mut self) -> &Placer {
        let stale = self.now >= self.placer_at + self.cfg.repair.candidates_every.as_secs();
        if self.placer.is_none() || stale {
            let today = self.now / DAY;
            let want = f64::from(self.cfg.repair.candidates);
            let p = (want / self.listed_count.max(1) as f64).min(1.0);
            let mut candidates = Vec::with_capacity(self.cfg.repair.candidates as usize);
            for (i, n) in self.nodes.iter().enumerate() {
                if !self.listed[i] || n.departed || n.stored >= n.disk_bytes {
                    continue;
                }
                if p < 1.0 && self.rng.random::<f64>() >= p {
                    continue;
                }
                let profile = NodeProfile {
                    availability_5d: 0.0,
                    availability_30d: n.availability(today, self.now),
                    typical_hours: 0,
                    upload_bps: n.upload_bps,
                    age: self.now - n.born,
                    online_secs: n.online_secs(today, self.now),
                    location: String::new(),
                };
                let vetted = self.group_rules.is_vetted(&profile);
                candidates.push(WeightedCandidate {
                    node: n.peer,
                    subnet: n.subnet,
                    weight: placement::weight(profile.availability_30d, n.upload_bps, vetted),
                    vetted,
                });
            }
            self.placer = Some(Placer::new(&candidates, PlacementRules::default()));
            self.placer_at = self.now;
        }
        self.placer.as_ref().expect("built")
    }

    /// Publishes the catalog: every scheme's contents, placed by the coordinator's placement.
    fn publish(&mut self) {
        let catalog = self.cfg.catalog.clone();
        for (si, scheme) in catalog.schemes.iter().enumerate() {
            let shards = usize::from(scheme.k) + usize::from(scheme.m);
            let frag = fragment_len(catalog.segment_bytes as usize, usize::from(scheme.k)) as u64;
            {
                let st = &mut self.out.schemes[si];
                st.fragment_bytes = frag;
                st.contents = catalog.contents;
            }
            for c in 0..catalog.contents {
                let content = si as u32 * catalog.contents + c;
                let segments = self
                    .rng
                    .random_range(catalog.segments.0..=catalog.segments.1);
                let id = content_id(content);
                self.contents.push(ContentInfo {
                    segments,
                    k: scheme.k,
                    shards: shards as u8,
                    fragment_bytes: frag,
                });
                self.content_seg.push(self.segs.len() as u32);
                self.content_ever.push(0);
                self.repair.add_content(
                    id,
                    Layout {
                        k: scheme.k,
                        m: scheme.m,
                        spare: 0,
                    },
                    segments,
                );
                for segment in 0..segments {
                    let s = self.segs.len() as u32;
                    let first_slot = self.holders.len() as u32;
                    self.segs.push(Seg {
                        scheme: si as u8,
                        k: scheme.k,
                        shards: shards as u8,
                        up: 0,
                        alive: 0,
                        lost: false,
                        content,
                        segment,
                        first_slot,
                        // Nothing is readable until placed.
                        down_since: self.now,
                    });
                    self.holders.extend(std::iter::repeat_n(NONE, shards));
                    self.slot_seg.extend(std::iter::repeat_n(s, shards));
                    self.phantom.extend(std::iter::repeat_n(false, shards));
                    self.out.schemes[si].segments += 1;
                    self.out.schemes[si].unavailable_now += 1;
                    let mut rng = Pcg64Mcg::seed_from_u64(self.rng.random());
                    let placed = self.placer().segment_with(shards, &mut rng);
                    let Some((chosen, mut plan)) = placed else {
                        self.out.schemes[si].unplaced += shards as u64;
                        continue;
                    };
                    for (idx, mut peer) in chosen.into_iter().enumerate() {
                        loop {
                            let i = population::index(&peer).expect("a simulated node");
                            if self.accepts(i, frag) {
                                self.assign(first_slot + idx as u32, i);
                                break;
                            }
                            match plan.replacement() {
                                Some(p) => peer = p,
                                None => {
                                    self.out.schemes[si].unplaced += 1;
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Starts the downloads once the catalog exists: the economy's scheme's contents in a random
    /// popularity order, Zipf-distributed.
    fn open_shop(&mut self) {
        if self.economy.is_none() || self.cfg.economy.downloads_per_day <= 0.0 {
            return;
        }
        let contents = self.cfg.catalog.contents;
        let first = self.cfg.economy.scheme as u32 * contents;
        self.popular = (first..first + contents).collect();
        for i in (1..self.popular.len()).rev() {
            let j = self.erng.random_range(0..=i);
            self.popular.swap(i, j);
        }
        self.zipf = rand_distr::Zipf::new(f64::from(contents), self.cfg.economy.zipf).ok();
        self.schedule_download();
    }

    /// Downloads per second now: the usual rate plus any flash crowd.
    fn download_rate(&self) -> f64 {
        let usual = self.cfg.economy.downloads_per_day / DAY as f64;
        let crowd: f64 = self
            .cfg
            .economy
            .flash_crowds
            .iter()
            .filter(|f| self.in_crowd(f))
            .map(|f| f.share_of_usual)
            .sum();
        usual * (1.0 + crowd)
    }

    fn in_crowd(&self, f: &super::config::FlashCrowd) -> bool {
        let start = f.day * DAY as f64;
        let t = self.now as f64;
        t >= start && t < start + f.hours * 3600.0
    }

    fn schedule_download(&mut self) {
        let rate = self.download_rate();
        if rate <= 0.0 {
            return;
        }
        let wait = Exp::new(rate)
            .expect("positive rate")
            .sample(&mut self.erng);
        // A wait beyond an hour is cut short by an empty event that draws again, so that a
        // flash crowd's start is never jumped over (memoryless: the same process).
        let (at, real) = if wait > 3600.0 {
            (self.now + 3600, false)
        } else {
            (self.now + wait.max(1.0) as u64, true)
        };
        if at < self.end {
            self.events
                .push(Reverse((at, Kind::Download, u32::from(real))));
        }
    }

    /// One download: a content drawn by popularity (or the flash crowd's), `k` fragments of
    /// each segment fetched from holders that are up and really have them.
    fn download(&mut self, real: bool) {
        self.schedule_download();
        if !real {
            return;
        }
        let crowd_share: Vec<(u32, f64)> = self
            .cfg
            .economy
            .flash_crowds
            .iter()
            .filter(|f| self.in_crowd(f))
            .map(|f| (f.rank, f.share_of_usual))
            .collect();
        let total: f64 = 1.0 + crowd_share.iter().map(|c| c.1).sum::<f64>();
        let mut x = self.erng.random::<f64>() * total;
        let mut rank = None;
        for (r, share) in &crowd_share {
            if x < *share {
                rank = Some(*r);
                break;
            }
            x -= share;
        }
        let rank = match (rank, &self.zipf) {
            (Some(r), _) => r,
            (None, Some(z)) => z.sample(&mut self.erng) as u32,
            (None, None) => 1,
        };
        let content = self.popular[(rank.max(1) as usize - 1).min(self.popular.len() - 1)];
        let info = self.contents[content as usize];
        let first = self.content_seg[content as usize];
        let mut served: Vec<(u32, u64)> = Vec::new();
        let mut ok = true;
        let mut up = Vec::with_capacity(usize::from(info.shards));
        for s in first..first + info.segments {
            let seg = &self.segs[s as usize];
            up.clear();
            for slot in seg.first_slot..seg.first_slot + u32::from(seg.shards) {
                let h = self.holders[slot as usize];
                if h != NONE && self.nodes[h as usize].up && !self.phantom[slot as usize] {
                    up.push(h);
                }
            }
            if up.len() < usize::from(info.k) {
                ok = false;
                break;
            }
            for j in 0..usize::from(info.k) {
                let pick = self.erng.random_range(j..up.len());
                up.swap(j, pick);
                served.push((up[j], info.fragment_bytes));
            }
        }
        served.sort_unstable();
        let mut merged: Vec<(u32, u64)> = Vec::with_capacity(served.len());
        for (n, b) in served {
            match merged.last_mut() {
                Some(last) if last.0 == n => last.1 += b,
                _ => merged.push((n, b)),
            }
        }
        let now = self.now;
        if let Some(e) = &mut self.economy {
            e.download(content, ok.then_some(merged), &info, now, &mut self.erng);
        }
    }

    /// Storage audits due now, answered from the ground truth: a node that is down times out,
    /// a dropper has not got what it deleted. A fragment found missing is taken off the node.
    fn audits(&mut self) {
        let now = self.now;
        let Some(tasks) = self
            .economy
            .as_mut()
            .map(|e| e.audits_due(now, &mut self.erng))
        else {
            return;
        };
        for task in tasks {
            let node = task.node;
            let n = &self.nodes[node as usize];
            let slot = match task.recheck {
                Some(f) => {
                    let content = content_index(&f.content);
                    self.find_seg(content, f.segment)
                        .map(|s| self.segs[s as usize].first_slot + u32::from(f.index))
                }
                None if n.fragments.is_empty() => None,
                None => Some(n.fragments[self.erng.random_range(0..n.fragments.len())]),
            };
            let Some(slot) = slot else { continue };
            let seg = &self.segs[self.slot_seg[slot as usize] as usize];
            let fragment = overlay::store::FragmentId {
                content: content_id(seg.content),
                segment: seg.segment,
                index: (slot - seg.first_slot) as u16,
            };
            // A re-check may be about a fragment repair has since placed elsewhere: an honest
            // node still has its copy (nobody told it to delete yet), a dropper has not.
            let claimed = self.holders[slot as usize] == node;
            let dropper = self.economy.as_ref().is_some_and(|e| e.drops(node) > 0.0);
            let outcome = if !n.up {
                AuditOutcome::Timeout
            } else if (claimed && self.phantom[slot as usize]) || (!claimed && dropper) {
                AuditOutcome::NotFound
            } else {
                AuditOutcome::Pass
            };
            let e = self.economy.as_mut().expect("checked");
            if let AuditVerdict::Failed { reason, .. } =
                e.audited(node, fragment, outcome, claimed, now)
                && reason.fragment_lost()
                && self.holders[slot as usize] == node
            {
                self.release(slot);
                self.repair.set_holder(
                    &fragment.content,
                    fragment.segment,
                    fragment.index,
                    None,
                    self.instant(now),
                );
            }
        }
    }

    /// The nightly accounting run, and what follows from it: caught whitewashers start again
    /// under a new identity, underpaid owners quit.
    fn settle(&mut self) {
        let Some(mut e) = self.economy.take() else {
            return;
        };
        let scheme = self.cfg.economy.scheme as u8;
        let (nodes, segs, slot_seg) = (&self.nodes, &self.segs, &self.slot_seg);
        let ever = &self.content_ever;
        let assigned = |node: u32, content: u32| nodes[node as usize].ever_assigned(content);
        let assigned_total = |content: u32| ever[content as usize];
        self.closed.sort_unstable_by_key(|c| (c.1, c.0));
        let (holders, content_seg, contents, closed) = (
            &self.holders,
            &self.content_seg,
            &self.contents,
            &self.closed,
        );
        let held = |content: u32| -> Vec<(u32, u64)> {
            let first = content_seg[content as usize];
            let mut nodes: Vec<u32> = (first..first + contents[content as usize].segments)
                .flat_map(|s| {
                    let seg = &segs[s as usize];
                    seg.first_slot..seg.first_slot + u32::from(seg.shards)
                })
                .map(|slot| holders[slot as usize])
                .filter(|&h| h != NONE)
                .chain({
                    let from = closed.partition_point(|c| c.1 < content);
                    let to = closed.partition_point(|c| c.1 <= content);
                    closed[from..to].iter().map(|c| c.0)
                })
                .collect();
            nodes.sort_unstable();
            let mut out: Vec<(u32, u64)> = Vec::new();
            for n in nodes {
                match out.last_mut() {
                    Some(last) if last.0 == n => last.1 += 1,
                    _ => out.push((n, 1)),
                }
            }
            out
        };
        let colluder_content = |node: u32, draw: u64| -> Option<u32> {
            let f = &nodes[node as usize].fragments;
            if f.is_empty() {
                return None;
            }
            let slot = f[(draw % f.len() as u64) as usize];
            let seg = &segs[slot_seg[slot as usize] as usize];
            (seg.scheme == scheme).then_some(seg.content)
        };
        let consequences = e.settle(
            self.now,
            &self.nodes,
            &self.contents,
            &super::economy::Placements {
                assigned: &assigned,
                assigned_total: &assigned_total,
                held: &held,
                held_content: &colluder_content,
            },
            &mut self.erng,
        );
        self.closed.clear();
        self.economy = Some(e);
        for node in consequences.quit {
            self.depart(node);
        }
        for node in consequences.whitewash {
            self.whitewash(node);
        }
    }

    /// A caught whitewasher wipes its identity and rejoins as a new node on the same machine:
    /// what it stored is gone, its record starts again.
    fn whitewash(&mut self, i: u32) {
        if self.nodes[i as usize].departed {
            return;
        }
        let machine = self.economy.as_ref().map(|e| e.machine(i));
        let old = self.nodes[i as usize].clone();
        self.depart(i);
        self.out.departures -= 1;
        let mut fresh = old;
        fresh.peer = population::peer(self.nodes.len() as u32);
        fresh.born = self.now;
        fresh.departed = false;
        fresh.up = false;
        fresh.online_by_day = [0; population::WINDOW_DAYS];
        fresh.stored = 0;
        fresh.fragments = Vec::new();
        fresh.ever = Vec::new();
        self.out.whitewashed += 1;
        self.register(fresh, false, machine);
    }

    /// One repair round: the repair core's jobs, carried out at once where `k` holders answer.
    fn repair_round(&mut self) {
        let check = self.repair.check(self.instant(self.now));
        for job in check.jobs {
            let content = content_index(&job.content);
            let Some(s) = self.find_seg(content, job.segment) else {
                continue;
            };
            let seg = self.segs[s as usize].clone();
            let scheme = seg.scheme as usize;
            if !self.cfg.catalog.schemes[scheme].repair {
                continue;
            }
            let frag = self.out.schemes[scheme].fragment_bytes;
            // The rebuilder reads k fragments from holders the core lists live; those that
            // do not answer are reported unreachable, as a real repair driver does.
            let mut sources = Vec::new();
            for &(index, peer) in &job.holders {
                let i = population::index(&peer).expect("a simulated node");
                let slot = seg.first_slot + u32::from(index);
                if self.phantom[slot as usize] {
                    continue;
                }
                if self.nodes[i as usize].up {
                    if sources.len() < usize::from(seg.k) {
                        sources.push(i);
                    }
                } else {
                    self.liveness
                        .handle(Event::Unreachable(peer), self.instant(self.now));
                }
            }
            if sources.len() < usize::from(seg.k) {
                self.out.schemes[scheme].repairs_failed += 1;
                continue;
            }
            let existing: Vec<(PeerId, Subnet)> = (0..u32::from(seg.shards))
                .filter(|idx| !job.missing.contains(&(*idx as u16)))
                .filter_map(|idx| {
                    let h = self.holders[(seg.first_slot + idx) as usize];
                    (h != NONE).then(|| {
                        let n = &self.nodes[h as usize];
                        (n.peer, n.subnet)
                    })
                })
                .collect();
            let mut rng = Pcg64Mcg::seed_from_u64(self.rng.random());
            let (chosen, mut plan) =
                self.placer()
                    .extend_with(&existing, job.missing.len(), &mut rng);
            let mut chosen = chosen.into_iter();
            let mut rebuilt = 0u64;
            for &idx in &job.missing {
                let mut next = chosen.next().or_else(|| plan.replacement());
                while let Some(peer) = next {
                    let i = population::index(&peer).expect("a simulated node");
                    if self.accepts(i, frag) {
                        self.assign(seg.first_slot + u32::from(idx), i);
                        rebuilt += 1;
                        break;
                    }
                    next = plan.replacement();
                }
            }
            if let Some(e) = &mut self.economy {
                for &i in &sources {
                    e.repair_served(i, frag);
                }
            }
            let st = &mut self.out.schemes[scheme];
            st.repairs += 1;
            st.rebuilt += rebuilt;
            st.repair_read += u128::from(seg.k) * u128::from(frag);
            st.repair_written += u128::from(rebuilt) * u128::from(frag);
        }
    }

    fn find_seg(&self, content: u32, segment: u32) -> Option<u32> {
        // Segments of a content are contiguous and in order.
        let first = self.segs.partition_point(|s| s.content < content);
        let s = first + segment as usize;
        (self
            .segs
            .get(s)
            .is_some_and(|x| x.content == content && x.segment == segment))
        .then_some(s as u32)
    }

    /// Feeds liveness its due work: probes answered from the ground truth, nodes found offline
    /// handed to the repair core.
    fn drain_liveness(&mut self) {
        let now = self.instant(self.now);
        while let Some(action) = self.liveness.poll(now) {
            match action {
                Action::Probe(peer) => {
                    let i = population::index(&peer).expect("a simulated node");
                    let event = if self.nodes[i as usize].up {
                        Event::ProbeAnswered(peer)
                    } else {
                        Event::ProbeFailed(peer)
                    };
                    self.liveness.handle(event, now);
                }
                Action::Offline(peer, _) => {
                    let i = population::index(&peer).expect("a simulated node") as usize;
                    if self.listed[i] {
                        self.listed[i] = false;
                        self.listed_count -= 1;
                    }
                    self.repair.offline(peer, now);
                }
            }
        }
    }

    fn heartbeats(&mut self) {
        let now = self.instant(self.now);
        for n in &self.nodes {
            if n.up {
                self.liveness.handle(Event::Heartbeat(n.peer), now);
            }
        }
    }

    fn new_day(&mut self) {
        let day = self.now / DAY;
        for n in &mut self.nodes {
            n.book(self.now);
            n.new_day(day);
        }
    }

    fn sample(&mut self) {
        let mut s = Sample {
            hours: self.now as f64 / 3600.0,
            nodes_up: self.up_count,
            nodes_listed: self.listed_count,
            nodes: self.alive_count,
            ..Sample::default()
        };
        let free = self.cfg.population.in_use_free;
        for (b, sums) in self.buckets.iter().enumerate() {
            let start = b as u32 * BUCKET_SECS;
            // A bucket's nodes start their day within its 15 minutes: judged at its middle.
            let busy = population::in_use(self.now, start + BUCKET_SECS / 2, self.in_use_secs);
            let share = if busy { free } else { 1.0 };
            s.upload_bps += sums.upload * share;
            s.upload_bps_idle += sums.upload;
            s.cores += sums.cores * share;
            s.disk_bytes += sums.disk;
            s.stored_bytes += sums.stored;
        }
        s.unavailable = self
            .out
            .schemes
            .iter()
            .map(|st| {
                if st.segments == 0 {
                    0.0
                } else {
                    st.unavailable_now as f64 / st.segments as f64
                }
            })
            .collect();
        self.out.samples.push(s);
    }

    /// Runs to the end and returns what was measured.
    pub fn run(mut self) -> Outcome {
        self.out.schemes = self
            .cfg
            .catalog
            .schemes
            .iter()
            .map(|s| SchemeStats {
                name: s.name.clone(),
                k: s.k,
                m: s.m,
                repair: s.repair,
                overhead: s.overhead(),
                ..SchemeStats::default()
            })
            .collect();
        let every = |d: Duration| d.as_secs().max(1);
        let (hb, check, sample) = (
            every(self.cfg.liveness.heartbeat_every),
            every(self.cfg.repair.check_every),
            every(self.cfg.sample_every),
        );
        let publish_at = u64::from(self.cfg.catalog.publish_day) * DAY;
        let (mut next_hb, mut next_check, mut next_sample, mut next_day) = (hb, publish_at, 0, DAY);
        let mut next_audit = 3600;
        let mut published = false;
        let mut times = [Duration::ZERO; 8];
        loop {
            let event_at = self.events.peek().map_or(u64::MAX, |Reverse(e)| e.0);
            let live_at = self
                .liveness
                .next_deadline()
                .map_or(u64::MAX, |t| t.duration_since(self.base).as_secs());
            let tick = next_hb
                .min(next_check)
                .min(next_sample)
                .min(next_day)
                .min(next_audit);
            let at = event_at.min(live_at).min(tick);
            if at >= self.end {
                break;
            }
            self.now = self.now.max(at);
            let started = std::time::Instant::now();
            let phase = if at == event_at {
                let Reverse((_, kind, i)) = self.events.pop().expect("peeked");
                self.out.events += 1;
                match kind {
                    Kind::Up => self.up(i),
                    Kind::Down => self.down(i, true),
                    Kind::Depart => self.depart(i),
                    Kind::Arrive => {
                        self.out.arrivals += 1;
                        self.add_node(false);
                        self.schedule_arrival();
                    }
                    Kind::Download => self.download(i == 1),
                }
                if kind == Kind::Download {
                    Phase::Downloads
                } else {
                    Phase::Churn
                }
            } else if at == next_day {
                self.new_day();
                if published {
                    self.settle();
                }
                next_day += DAY;
                Phase::Nightly
            } else if at == next_audit {
                if published {
                    self.audits();
                }
                next_audit += 3600;
                Phase::Audits
            } else if at == next_hb {
                self.heartbeats();
                next_hb += hb;
                Phase::Heartbeats
            } else if at == next_check {
                if !published {
                    self.publish();
                    self.open_shop();
                    published = true;
                } else {
                    self.repair_round();
                }
                next_check += check;
                Phase::Repair
            } else if at == next_sample {
                self.sample();
                next_sample += sample;
                Phase::Samples
            } else {
                Phase::Liveness
            };
            self.drain_liveness();
            times[phase as usize] += started.elapsed();
        }
        // Wall time per phase, for whoever tunes the simulator (not part of the results,
        // which must not depend on the machine).
        tracing::debug!(
            churn = ?times[Phase::Churn as usize],
            downloads = ?times[Phase::Downloads as usize],
            nightly = ?times[Phase::Nightly as usize],
            audits = ?times[Phase::Audits as usize],
            heartbeats = ?times[Phase::Heartbeats as usize],
            repair = ?times[Phase::Repair as usize],
            samples = ?times[Phase::Samples as usize],
            liveness = ?times[Phase::Liveness as usize],
            "simulator time by phase"
        );
        self.now = self.end;
        for seg in &self.segs {
            if seg.down_since != u64::MAX {
                self.out.schemes[seg.scheme as usize].unavailable_secs +=
                    u128::from(self.end - seg.down_since);
            }
        }
        let stats = self.liveness.stats();
        self.out.economy = self.economy.take().map(Economy::finish);
        self.out.probes = stats.probes;
        self.out.offline_unreachable = stats.offline_unreachable;
        self.out
    }
}
