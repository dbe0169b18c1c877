//! Placement: which nodes hold a segment's fragments. Sans-IO: candidates in, choices out.
//!
//! The rule that matters for durability: never two fragments of one segment on one node or
//! behind one network (an IPv4 /24, an IPv6 /48), since one home router or one ISP outage would
//! take them together. A lab may relax the network half of the rule; it is never relaxed silently.
//!
//! Within that rule, holders are drawn at random in proportion to a [`weight`] (availability and
//! upload bandwidth), without replacement: Efraimidis–Spirakis sampling, where every candidate
//! draws the key `u^(1/w)` (`u` uniform) and the highest keys win. Candidates that would break
//! the rule are skipped, so each pick is weighted among the candidates still allowed. New,
//! unvetted nodes get at most `ceil(n × max_new_share)` of a segment's `n` fragments, unless
//! vetted nodes alone cannot fill the segment; spares for failed pushes are vetted first too.
//!
//! Cost: one segment among `N` candidates is O(N) (a key each, then a partial selection of the
//! best) plus O(m log m) for the `m` best keys actually examined, about `2n` unless many
//! candidates share networks. [`Placer`] converts the candidates once for many segments.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use libp2p::multiaddr::Protocol;
use overlay::{Multiaddr, PeerId};
use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};

/// The network a node sits behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subnet {
    V4([u8; 3]),
    V6([u8; 6]),
    /// No IP address known: the node counts as a network of its own.
    Unknown(PeerId),
}

impl Subnet {
    /// The subnet of a node's first IP address.
    pub fn of(node: PeerId, addrs: &[Multiaddr]) -> Self {
        for addr in addrs {
            for p in addr.iter() {
                match p {
                    Protocol::Ip4(ip) => {
                        let o = ip.octets();
                        return Subnet::V4([o[0], o[1], o[2]]);
                    }
                    Protocol::Ip6(ip) => {
                        let o = ip.octets();
                        return Subnet::V6([o[0], o[1], o[2], o[3], o[4], o[5]]);
                    }
                    _ => {}
                }
            }
        }
        Subnet::Unknown(node)
    }
}

/// A node that may receive fragments, all equal: weight 1, vetted. See [`WeightedCandidate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: PeerId,
    pub subnet: Subnet,
}

impl Candidate {
    /// A candidate of weight 1, vetted.
    pub fn new(node: PeerId, subnet: Subnet) -> Self {
        Self { node, subnet }
    }

    /// This candidate with a placement weight (from [`weight`]) and its vetting state.
    pub fn weighted(self, weight: f64, vetted: bool) -> WeightedCandidate {
        WeightedCandidate {
            node: self.node,
            subnet: self.subnet,
            weight,
            vetted,
        }
    }
}

/// A node that may receive fragments, with how strongly placement favours it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightedCandidate {
    pub node: PeerId,
    pub subnet: Subnet,
    /// Relative chance of being picked, from [`weight`]; zero, negative or NaN count as a tiny
    /// positive weight, so every candidate can still be picked.
    pub weight: f64,
    /// Whether the node has proven itself (see [`crate::history::GroupRules::is_vetted`]).
    pub vetted: bool,
}

impl WeightedCandidate {
    /// A candidate of weight 1, vetted.
    pub fn new(node: PeerId, subnet: Subnet) -> Self {
        Candidate::new(node, subnet).weighted(1.0, true)
    }
}

impl From<Candidate> for WeightedCandidate {
    fn from(c: Candidate) -> Self {
        c.weighted(1.0, true)
    }
}

/// The share of a segment's fragments that may go to unvetted nodes, unless `Placer` is told
/// otherwise.
pub const DEFAULT_MAX_NEW_SHARE: f64 = 0.1;

/// The availability assumed for an unvetted node, whose own record is too short to mean much.
const NEW_NODE_AVAILABILITY: f64 = 0.5;
/// Floor of the availability factor, so a rarely-online node is rare, not excluded.
const MIN_AVAILABILITY_FACTOR: f64 = 0.01;
/// Upload bandwidth at which the bandwidth factor gains one (bytes per second: 1 MB/s).
const BANDWIDTH_UNIT: f64 = 1_000_000.0;
/// The bandwidth factor of a node whose bandwidth is unknown (0).
const MIN_BANDWIDTH_FACTOR: f64 = 0.5;
/// Bounds applied to caller-supplied weights.
const MIN_WEIGHT: f64 = 1e-9;
/// Pools at least this large are sampled per segment rather than keyed in full.
const SAMPLE_FROM: usize = 4096;
const MAX_WEIGHT: f64 = 1e9;

/// The placement weight of a node: `max(a², 0.01) × (0.5 + log2(1 + upload_bps / 1 MB/s))`,
/// where `a` is the 30-day availability (0.5 for an unvetted node, whose record is too short).
///
/// Availability is squared because a fragment on a node that is off half the time is worth
/// much less than half: the segment's other fragments must cover for it exactly when it is
/// missing. Bandwidth counts logarithmically so that a data-centre node is favoured but not
/// flooded: 0 (unknown) gives 0.5, 1 MB/s 1.5, 12.5 MB/s (100 Mbit/s) 4.2, 125 MB/s 7.5. The
/// result is never below 0.005: nobody is excluded, only made rare.
pub fn weight(availability_30d: f64, upload_bps: u64, vetted: bool) -> f64 {
    let a = if vetted {
        availability_30d
    } else {
        NEW_NODE_AVAILABILITY
    };
    let a = if a.is_nan() { 0.0 } else { a.clamp(0.0, 1.0) };
    let bandwidth = MIN_BANDWIDTH_FACTOR + (1.0 + upload_bps as f64 / BANDWIDTH_UNIT).log2();
    (a * a).max(MIN_AVAILABILITY_FACTOR) * bandwidth
}

/// How strict placement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacementRules {
    /// Never two fragments of a segment behind one subnet (always on outside labs).
    pub distinct_subnets: bool,
}

impl Default for PlacementRules {
    fn default() -> Self {
        Self {
            distinct_subnets: true,
        }
    }
}

/// What placement keeps of a candidate.
#[derive(Clone, Debug)]
struct Entry {
    node: PeerId,
    subnet: Subnet,
    vetted: bool,
    /// `1 / weight`, the weight made safe first.
    inv_weight: f64,
}

/// Candidates prepared once for placing many segments: `Placer::new(..)`, then
/// [`Placer::segment`] per segment and [`Placer::extend`] for extra holders.
#[derive(Clone)]
pub struct Placer {
    pool: Arc<[Entry]>,
    /// Running sums of the weights, for large pools: a segment then draws a small weighted
    /// sample instead of keying every candidate.
    cumulative: Option<Arc<[f64]>>,
    vetted: usize,
    /// Computed on first use: it hashes every candidate, which one-off placements skip.
    capacity: OnceLock<usize>,
    rules: PlacementRules,
    max_new_share: f64,
}

impl std::fmt::Debug for Placer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placer")
            .field("candidates", &self.pool.len())
            .field("vetted", &self.vetted)
            .field("capacity", &self.capacity.get())
            .field("rules", &self.rules)
            .field("max_new_share", &self.max_new_share)
            .finish()
    }
}

impl Placer {
    /// Prepares `candidates` (plain [`Candidate`]s or [`WeightedCandidate`]s) under `rules`,
    /// with [`DEFAULT_MAX_NEW_SHARE`].
    pub fn new<C: Copy + Into<WeightedCandidate>>(candidates: &[C], rules: PlacementRules) -> Self {
        let pool: Arc<[Entry]> = candidates
            .iter()
            .map(|&c| {
                let c: WeightedCandidate = c.into();
                let w = if c.weight.is_nan() {
                    MIN_WEIGHT
                } else {
                    c.weight.clamp(MIN_WEIGHT, MAX_WEIGHT)
                };
                Entry {
                    node: c.node,
                    subnet: c.subnet,
                    vetted: c.vetted,
                    inv_weight: 1.0 / w,
                }
            })
            .collect();
        let cumulative = (pool.len() >= SAMPLE_FROM).then(|| {
            pool.iter()
                .scan(0.0, |sum, e| {
                    *sum += 1.0 / e.inv_weight;
                    Some(*sum)
                })
                .collect()
        });
        Self {
            vetted: pool.iter().filter(|e| e.vetted).count(),
            cumulative,
            pool,
            capacity: OnceLock::new(),
            rules,
            max_new_share: DEFAULT_MAX_NEW_SHARE,
        }
    }

    /// The same placer with another share of fragments allowed on unvetted nodes (0 to 1).
    pub fn with_max_new_share(mut self, share: f64) -> Self {
        self.max_new_share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// How many fragments of one segment the candidates can hold (see [`capacity`]).
    pub fn capacity(&self) -> usize {
        *self.capacity.get_or_init(|| {
            if self.rules.distinct_subnets {
                self.pool
                    .iter()
                    .map(|e| e.subnet)
                    .collect::<HashSet<_>>()
                    .len()
            } else {
                self.pool
                    .iter()
                    .map(|e| e.node)
                    .collect::<HashSet<_>>()
                    .len()
            }
        })
    }

    /// Picks `n` holders for a new segment; `None` if the rules cannot be met.
    pub fn segment(&self, n: usize) -> Option<(Vec<PeerId>, SegmentPlan)> {
        self.segment_with(n, &mut fast_rng())
    }

    /// [`Placer::segment`] drawing from `rng` (seeded in tests and simulations).
    pub fn segment_with<R: Rng + ?Sized>(
        &self,
        n: usize,
        rng: &mut R,
    ) -> Option<(Vec<PeerId>, SegmentPlan)> {
        if self.capacity.get().is_some_and(|&c| n > c) {
            return None;
        }
        if let Some(mut plan) = self.sampled_plan(rng, n, &[]) {
            let chosen = plan.choose(n, self.new_cap(n));
            if chosen.len() == n {
                return Some((chosen, plan));
            }
        }
        let mut plan = self.plan(rng, n, &[]);
        let chosen = plan.choose(n, self.new_cap(n));
        (chosen.len() == n).then_some((chosen, plan))
    }

    /// Picks up to `n` more holders for a segment whose fragments are already on
    /// `existing` (node and subnet of each holder): never one of those nodes, nor (under
    /// `distinct_subnets`) one behind their subnets. Fewer than `n` when the candidates run
    /// out; the unvetted cap applies to the `n` new holders. For repair and extra parity.
    pub fn extend(&self, existing: &[(PeerId, Subnet)], n: usize) -> (Vec<PeerId>, SegmentPlan) {
        self.extend_with(existing, n, &mut fast_rng())
    }

    /// [`Placer::extend`] drawing from `rng`.
    pub fn extend_with<R: Rng + ?Sized>(
        &self,
        existing: &[(PeerId, Subnet)],
        n: usize,
        rng: &mut R,
    ) -> (Vec<PeerId>, SegmentPlan) {
        if let Some(mut plan) = self.sampled_plan(rng, n + existing.len(), existing) {
            let chosen = plan.choose(n, self.new_cap(n));
            if chosen.len() == n {
                return (chosen, plan);
            }
        }
        let mut plan = self.plan(rng, n + existing.len(), existing);
        let chosen = plan.choose(n, self.new_cap(n));
        (chosen, plan)
    }

    /// At most this many of `n` fragments go to unvetted nodes while vetted ones remain.
    fn new_cap(&self, n: usize) -> usize {
        // The epsilon keeps float noise (30 × 0.1 = 3.0000000000000004) from adding one.
        (n as f64 * self.max_new_share - 1e-9).ceil().max(0.0) as usize
    }

    /// For a large pool: draws candidates by weight, with replacement, until `8 × expected +
    /// 64` draws; the order of first appearance is a weighted sample without replacement (each
    /// next pick proportional to weight among those not yet picked), exactly what keying every
    /// candidate gives, at O(sample × log N) instead of O(N). `None` for small pools; the
    /// caller falls back to keying everyone when the sample cannot satisfy the rules.
    fn sampled_plan<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        expected: usize,
        existing: &[(PeerId, Subnet)],
    ) -> Option<SegmentPlan> {
        let cumulative = self.cumulative.as_ref()?;
        let draws = 8 * expected + 64;
        if draws * 16 > self.pool.len() {
            return None;
        }
        let total = *cumulative.last()?;
        let mut seen = HashSet::with_capacity(draws);
        let (mut vetted, mut unvetted) = (Vec::new(), Vec::new());
        for _ in 0..draws {
            let x = rng.random::<f64>() * total;
            let i = cumulative
                .partition_point(|&c| c <= x)
                .min(self.pool.len() - 1);
            if seen.insert(i) {
                // Earlier first appearance ranks higher.
                let key = -(seen.len() as f64);
                if self.pool[i].vetted {
                    vetted.push((key, i));
                } else {
                    unvetted.push((key, i));
                }
            }
        }
        Some(self.start_plan(vetted, unvetted, draws, existing))
    }

    /// Draws every candidate's key and starts a plan with `existing` already in use.
    fn plan<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        expected: usize,
        existing: &[(PeerId, Subnet)],
    ) -> SegmentPlan {
        let mut vetted = Vec::with_capacity(self.vetted);
        let mut unvetted = Vec::with_capacity(self.pool.len() - self.vetted);
        for (i, e) in self.pool.iter().enumerate() {
            // ln(u^(1/w)) = ln(u) / w orders the same as u^(1/w), and u in (0, 1] keeps it finite.
            let u = 1.0 - rng.random::<f64>();
            let key = u.ln() * e.inv_weight;
            if e.vetted {
                vetted.push((key, i));
            } else {
                unvetted.push((key, i));
            }
        }
        self.start_plan(vetted, unvetted, 2 * expected + 16, existing)
    }

    /// A plan over ranked candidates (higher key first) with `existing` already in use.
    fn start_plan(
        &self,
        vetted: Vec<(f64, usize)>,
        unvetted: Vec<(f64, usize)>,
        first_chunk: usize,
        existing: &[(PeerId, Subnet)],
    ) -> SegmentPlan {
        SegmentPlan {
            pool: self.pool.clone(),
            rules: self.rules,
            vetted: Ranked::new(vetted, first_chunk),
            unvetted: Ranked::new(unvetted, first_chunk),
            used_nodes: existing.iter().map(|(n, _)| *n).collect(),
            used_subnets: existing.iter().map(|(_, s)| *s).collect(),
        }
    }
}

/// A fast generator for the keys (one per candidate per segment), seeded from the thread's
/// cryptographic one so placements stay unpredictable from outside.
fn fast_rng() -> SmallRng {
    SmallRng::from_rng(&mut rand::rng())
}

/// Candidate indices in decreasing key order, sorted lazily: a partial selection brings the
/// next best chunk to the front only when the sorted part runs out.
struct Ranked {
    keys: Vec<(f64, usize)>,
    sorted: usize,
    next: usize,
    chunk: usize,
}

impl Ranked {
    fn new(keys: Vec<(f64, usize)>, first_chunk: usize) -> Self {
        Self {
            keys,
            sorted: 0,
            next: 0,
            chunk: first_chunk.max(1),
        }
    }

    fn fill(&mut self) {
        if self.next < self.sorted || self.sorted == self.keys.len() {
            return;
        }
        let best_first = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0);
        let rest = &mut self.keys[self.sorted..];
        let take = self.chunk.min(rest.len());
        if take < rest.len() {
            rest.select_nth_unstable_by(take - 1, best_first);
        }
        rest[..take].sort_unstable_by(best_first);
        self.sorted += take;
        self.chunk = self.chunk.saturating_mul(2);
    }

    /// The best remaining key.
    fn peek(&mut self) -> Option<f64> {
        self.fill();
        self.keys.get(self.next).map(|k| k.0)
    }

    /// Takes the best remaining candidate.
    fn pop(&mut self) -> Option<usize> {
        self.fill();
        let (_, i) = *self.keys.get(self.next)?;
        self.next += 1;
        Some(i)
    }

    fn remaining(&self) -> usize {
        self.keys.len() - self.next
    }
}

/// The placement of one segment: chosen holders in order, then spares for failed pushes.
pub struct SegmentPlan {
    pool: Arc<[Entry]>,
    rules: PlacementRules,
    vetted: Ranked,
    unvetted: Ranked,
    used_nodes: HashSet<PeerId>,
    used_subnets: HashSet<Subnet>,
}

impl std::fmt::Debug for SegmentPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentPlan")
            .field("rules", &self.rules)
            .field("used_nodes", &self.used_nodes.len())
            .field("used_subnets", &self.used_subnets.len())
            .field(
                "unexamined",
                &(self.vetted.remaining() + self.unvetted.remaining()),
            )
            .finish()
    }
}

impl SegmentPlan {
    /// Picks `n` holders among `candidates` under `rules`, weighted, unvetted nodes capped at
    /// [`DEFAULT_MAX_NEW_SHARE`]; `None` if impossible. Plain [`Candidate`]s are all equal and
    /// vetted. For many segments over the same candidates, use a [`Placer`].
    pub fn new<C: Copy + Into<WeightedCandidate>>(
        candidates: &[C],
        n: usize,
        rules: PlacementRules,
    ) -> Option<(Vec<PeerId>, Self)> {
        Placer::new(candidates, rules).segment(n)
    }

    /// Picks up to `n` extra holders for a segment already on `existing`; see
    /// [`Placer::extend`].
    pub fn extend<C: Copy + Into<WeightedCandidate>>(
        candidates: &[C],
        existing: &[(PeerId, Subnet)],
        n: usize,
        rules: PlacementRules,
    ) -> (Vec<PeerId>, Self) {
        Placer::new(candidates, rules).extend(existing, n)
    }

    /// Up to `n` holders: best keys first, at most `new_cap` unvetted while vetted candidates
    /// remain, then unvetted ones if the vetted could not fill the segment.
    fn choose(&mut self, n: usize, new_cap: usize) -> Vec<PeerId> {
        let mut chosen = Vec::with_capacity(n);
        let mut new = 0;
        while chosen.len() < n {
            let vetted = self.vetted.peek();
            let unvetted = if new < new_cap {
                self.unvetted.peek()
            } else {
                None
            };
            let from_vetted = match (vetted, unvetted) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(v), Some(u)) => v >= u,
            };
            let i = if from_vetted {
                self.vetted.pop()
            } else {
                self.unvetted.pop()
            }
            .expect("peeked");
            if self.admit(i) {
                chosen.push(self.pool[i].node);
                new += usize::from(!from_vetted);
            }
        }
        while chosen.len() < n {
            let Some(i) = self.unvetted.pop() else { break };
            if self.admit(i) {
                chosen.push(self.pool[i].node);
            }
        }
        chosen
    }

    fn admit(&mut self, i: usize) -> bool {
        let c = &self.pool[i];
        if self.used_nodes.contains(&c.node)
            || (self.rules.distinct_subnets && self.used_subnets.contains(&c.subnet))
        {
            return false;
        }
        self.used_nodes.insert(c.node);
        self.used_subnets.insert(c.subnet);
        true
    }

    /// A replacement for a holder whose push failed, still obeying the rules: vetted nodes
    /// first (by their drawn keys), unvetted ones only when no vetted node is left. The failed
    /// holder keeps its place in the used sets (its fragment may still have landed).
    pub fn replacement(&mut self) -> Option<PeerId> {
        while let Some(i) = self.vetted.pop().or_else(|| self.unvetted.pop()) {
            if self.admit(i) {
                return Some(self.pool[i].node);
            }
        }
        None
    }
}

/// How many fragments of one segment `candidates` can hold under `rules`.
pub fn capacity<C: Copy + Into<WeightedCandidate>>(
    candidates: &[C],
    rules: PlacementRules,
) -> usize {
    let all = candidates.iter().map(|&c| c.into());
    if rules.distinct_subnets {
        all.map(|c: WeightedCandidate| c.subnet)
            .collect::<HashSet<_>>()
            .len()
    } else {
        all.map(|c: WeightedCandidate| c.node)
            .collect::<HashSet<_>>()
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(subnets: &[u8]) -> Vec<Candidate> {
        subnets
            .iter()
            .map(|&s| Candidate {
                node: overlay::Identity::generate().peer_id(),
                subnet: Subnet::V4([127, 0, s]),
            })
            .collect()
    }

    #[test]
    fn subnets_come_from_the_first_ip_address() {
        let node = overlay::Identity::generate().peer_id();
        let a: Multiaddr = "/ip4/10.1.2.3/udp/5/quic-v1".parse().unwrap();
        let b: Multiaddr = "/ip4/10.1.2.200/udp/5/quic-v1".parse().unwrap();
        assert_eq!(Subnet::of(node, &[a]), Subnet::of(node, &[b]));
        let c: Multiaddr = "/ip4/10.1.3.3/udp/5/quic-v1".parse().unwrap();
        assert_eq!(Subnet::of(node, &[c]), Subnet::V4([10, 1, 3]));
        assert_eq!(Subnet::of(node, &[]), Subnet::Unknown(node));
    }

    #[test]
    fn never_two_fragments_behind_one_subnet() {
        // 12 nodes, two per /24: six networks.
        let all = candidates(&[1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
        let rules = PlacementRules::default();
        assert_eq!(capacity(&all, rules), 6);
        for _ in 0..200 {
            let (chosen, mut plan) = SegmentPlan::new(&all, 5, rules).unwrap();
            let mut with_spare = chosen.clone();
            with_spare.extend(plan.replacement());
            assert_eq!(with_spare.len(), 6);
            let subnets: HashSet<Subnet> = with_spare
                .iter()
                .map(|n| all.iter().find(|c| c.node == *n).unwrap().subnet)
                .collect();
            assert_eq!(subnets.len(), 6, "two fragments behind one /24");
            assert_eq!(plan.replacement(), None, "no seventh network exists");
        }
        assert!(SegmentPlan::new(&all, 7, rules).is_none());
    }

    #[test]
    fn a_lab_may_share_subnets_but_never_nodes() {
        let all = candidates(&[1, 1, 1, 1]);
        let rules = PlacementRules {
            distinct_subnets: false,
        };
        assert_eq!(capacity(&all, rules), 4);
        let (chosen, _) = SegmentPlan::new(&all, 4, rules).unwrap();
        assert_eq!(chosen.iter().collect::<HashSet<_>>().len(), 4);
        assert!(SegmentPlan::new(&all, 5, rules).is_none());
    }

    fn seeded(seed: u64) -> rand::rngs::SmallRng {
        use rand::SeedableRng;
        rand::rngs::SmallRng::seed_from_u64(seed)
    }

    /// One candidate per `(subnet, weight, vetted)`.
    fn weighted(spec: &[(u8, f64, bool)]) -> Vec<WeightedCandidate> {
        spec.iter()
            .map(|&(s, w, v)| {
                Candidate::new(PeerId::random(), Subnet::V4([10, 0, s])).weighted(w, v)
            })
            .collect()
    }

    fn find(all: &[WeightedCandidate], node: PeerId) -> WeightedCandidate {
        *all.iter().find(|c| c.node == node).unwrap()
    }

    #[test]
    fn weights_favour_availability_and_bandwidth_but_never_exclude() {
        assert_eq!(weight(0.0, 0, true), 0.005);
        assert_eq!(weight(1.0, 1_000_000, true), 1.5);
        assert_eq!(weight(1.0, 0, true), 0.5);
        // An unvetted node is judged as half available, whatever its short record says.
        assert_eq!(weight(0.0, 0, false), 0.125);
        assert_eq!(weight(1.0, 0, false), 0.125);
        assert_eq!(weight(f64::NAN, 0, true), 0.005);
        assert!(weight(0.9, 1_000_000, true) > weight(0.8, 1_000_000, true));
        assert!(weight(0.9, 10_000_000, true) > weight(0.9, 1_000_000, true));
        // Logarithmic: a hundred times the bandwidth is not a hundred times the weight.
        assert!(weight(0.9, 100_000_000, true) < 6.0 * weight(0.9, 1_000_000, true));
    }

    #[test]
    fn weighted_draws_keep_the_subnet_rule() {
        let mut rng = seeded(1);
        for round in 0..300u32 {
            // 12 nodes, two per /24, random weights, some unvetted.
            let spec: Vec<(u8, f64, bool)> = (0..12)
                .map(|i: u8| {
                    (
                        i / 2,
                        rng.random::<f64>() * 10.0,
                        (u32::from(i) + round) % 3 != 0,
                    )
                })
                .collect();
            let all = weighted(&spec);
            let placer = Placer::new(&all, PlacementRules::default());
            assert_eq!(placer.capacity(), 6);
            let (chosen, mut plan) = placer.segment_with(5, &mut rng).unwrap();
            let mut with_spare = chosen.clone();
            with_spare.extend(plan.replacement());
            let subnets: HashSet<Subnet> =
                with_spare.iter().map(|n| find(&all, *n).subnet).collect();
            assert_eq!(subnets.len(), 6, "two fragments behind one /24");
            assert_eq!(plan.replacement(), None, "no seventh network exists");
            assert!(placer.segment_with(7, &mut rng).is_none());
        }
    }

    #[test]
    fn heavy_nodes_are_chosen_more_often() {
        // Weights 8 and 1 among eight others of weight 1: one pick each time, so the heavy node
        // is expected 8 times as often. Seeded, and asserted with a factor 2 margin.
        let mut spec = vec![(0, 8.0, true), (1, 1.0, true)];
        spec.extend((2..10).map(|s| (s, 1.0, true)));
        let all = weighted(&spec);
        let placer = Placer::new(&all, PlacementRules::default());
        let mut rng = seeded(2);
        let (mut heavy, mut light) = (0u32, 0u32);
        for _ in 0..10_000 {
            let (chosen, _) = placer.segment_with(1, &mut rng).unwrap();
            heavy += u32::from(chosen[0] == all[0].node);
            light += u32::from(chosen[0] == all[1].node);
        }
        assert!(heavy > 4 * light, "heavy {heavy}, light {light}");
        assert!(heavy < 16 * light, "heavy {heavy}, light {light}");
        // Over several picks a well-placed node is nearly always in, a poor one rarely.
        let spec = [
            (0, weight(0.99, 50_000_000, true), true),
            (1, weight(0.3, 0, true), true),
            (2, weight(0.7, 1_000_000, true), true),
            (3, weight(0.7, 1_000_000, true), true),
            (4, weight(0.7, 1_000_000, true), true),
            (5, weight(0.7, 1_000_000, true), true),
        ];
        let all = weighted(&spec);
        let placer = Placer::new(&all, PlacementRules::default());
        let (mut heavy, mut light) = (0u32, 0u32);
        for _ in 0..10_000 {
            let (chosen, _) = placer.segment_with(3, &mut rng).unwrap();
            heavy += u32::from(chosen.contains(&all[0].node));
            light += u32::from(chosen.contains(&all[1].node));
        }
        assert!(heavy > 2 * light, "heavy {heavy}, light {light}");
    }

    #[test]
    fn unvetted_nodes_get_a_small_share() {
        // 20 vetted nodes and 20 far heavier unvetted ones, each on its own /24.
        let spec: Vec<(u8, f64, bool)> = (0..40)
            .map(|s| (s, if s < 20 { 1.0 } else { 100.0 }, s < 20))
            .collect();
        let all = weighted(&spec);
        let placer = Placer::new(&all, PlacementRules::default());
        let mut rng = seeded(3);
        let mut total_new = 0;
        for _ in 0..300 {
            let (chosen, mut plan) = placer.segment_with(10, &mut rng).unwrap();
            let new = chosen.iter().filter(|n| !find(&all, **n).vetted).count();
            assert!(new <= 1, "ceil(10 × 0.1) = 1, got {new}");
            total_new += new;
            // Spares: every remaining vetted node before any unvetted one.
            let spares: Vec<bool> = std::iter::from_fn(|| plan.replacement())
                .map(|n| find(&all, n).vetted)
                .collect();
            assert_eq!(spares.len(), 30);
            assert!(spares.windows(2).all(|w| w[0] >= w[1]), "{spares:?}");
        }
        // Heavy as they are, the unvetted nodes do take their share.
        assert!(total_new > 250, "{total_new}");
        let placer = placer.with_max_new_share(0.5);
        for _ in 0..100 {
            let (chosen, _) = placer.segment_with(10, &mut rng).unwrap();
            assert!(chosen.iter().filter(|n| !find(&all, **n).vetted).count() <= 5);
        }
        let placer = placer.with_max_new_share(0.0);
        let (chosen, _) = placer.segment_with(10, &mut rng).unwrap();
        assert!(chosen.iter().all(|n| find(&all, *n).vetted));
    }

    #[test]
    fn unvetted_nodes_fill_in_when_vetted_ones_run_out() {
        // Three vetted networks, ten unvetted ones; one unvetted node shares a vetted /24.
        let mut spec: Vec<(u8, f64, bool)> = (0..3).map(|s| (s, 1.0, true)).collect();
        spec.extend((3..13).map(|s| (s, 1.0, false)));
        spec.push((0, 50.0, false));
        let all = weighted(&spec);
        let mut rng = seeded(4);
        for share in [0.1, 0.0] {
            let placer = Placer::new(&all, PlacementRules::default()).with_max_new_share(share);
            for _ in 0..100 {
                let (chosen, _) = placer.segment_with(6, &mut rng).unwrap();
                let vetted = chosen.iter().filter(|n| find(&all, **n).vetted).count();
                let subnets: HashSet<Subnet> =
                    chosen.iter().map(|n| find(&all, *n).subnet).collect();
                assert_eq!(subnets.len(), 6);
                // The heavy unvetted node on the first /24 may take it from the vetted one,
                // but only within the cap.
                assert!((2..=3).contains(&vetted), "{vetted}");
                if share == 0.0 {
                    assert_eq!(vetted, 3);
                }
            }
            assert!(placer.segment_with(14, &mut rng).is_none());
            assert!(placer.segment_with(13, &mut rng).is_some());
        }
    }

    #[test]
    fn extend_never_reuses_a_node_or_subnet() {
        // 20 nodes on 10 networks; the segment already sits on one node of networks 0-3.
        let spec: Vec<(u8, f64, bool)> =
            (0..20).map(|i| (i / 2, 1.0 + f64::from(i), true)).collect();
        let all = weighted(&spec);
        let existing: Vec<(PeerId, Subnet)> = all
            .iter()
            .step_by(2)
            .take(4)
            .map(|c| (c.node, c.subnet))
            .collect();
        let taken: HashSet<Subnet> = existing.iter().map(|e| e.1).collect();
        let placer = Placer::new(&all, PlacementRules::default());
        let mut rng = seeded(5);
        for _ in 0..200 {
            let (more, mut plan) = placer.extend_with(&existing, 10, &mut rng);
            assert_eq!(more.len(), 6, "only six networks are free");
            let subnets: HashSet<Subnet> = more.iter().map(|n| find(&all, *n).subnet).collect();
            assert_eq!(subnets.len(), 6);
            assert!(subnets.is_disjoint(&taken));
            assert_eq!(plan.replacement(), None);
            let (more, _) = placer.extend_with(&existing, 3, &mut rng);
            assert_eq!(more.len(), 3);
        }
        // A lab shares networks, never nodes.
        let lab = PlacementRules {
            distinct_subnets: false,
        };
        for _ in 0..50 {
            let (more, mut plan) = SegmentPlan::extend(&all, &existing, 20, lab);
            assert_eq!(more.len(), 16);
            assert!(more.iter().all(|n| !existing.iter().any(|e| e.0 == *n)));
            assert_eq!(more.iter().collect::<HashSet<_>>().len(), 16);
            assert_eq!(plan.replacement(), None);
        }
    }

    #[test]
    fn many_candidates_many_segments() {
        // Not a benchmark: a quadratic placement would make this test take minutes.
        let all: Vec<WeightedCandidate> = (0..100_000u32)
            .map(|i| {
                let [_, a, b, c] = i.to_be_bytes();
                Candidate::new(PeerId::random(), Subnet::V4([a, b, c])).weighted(
                    weight(
                        f64::from(i % 100) / 100.0,
                        u64::from(i % 7) * 1_000_000,
                        i % 10 != 0,
                    ),
                    i % 10 != 0,
                )
            })
            .collect();
        let placer = Placer::new(&all, PlacementRules::default());
        let mut rng = seeded(6);
        for _ in 0..16 {
            let (chosen, mut plan) = placer.segment_with(30, &mut rng).unwrap();
            assert_eq!(chosen.iter().collect::<HashSet<_>>().len(), 30);
            assert!(plan.replacement().is_some());
        }
    }

    #[test]
    fn a_large_pool_is_sampled_with_the_same_weighting_and_rules() {
        // 20,000 candidates, two per /24; every fifth weighs 8 times the others.
        let all: Vec<WeightedCandidate> = (0..20_000u32)
            .map(|i| {
                let [_, a, b, _] = (i / 2).to_be_bytes();
                let w = if i % 5 == 0 { 8.0 } else { 1.0 };
                Candidate::new(PeerId::random(), Subnet::V4([10, a, b])).weighted(w, true)
            })
            .collect();
        let placer = Placer::new(&all, PlacementRules::default());
        assert!(placer.cumulative.is_some(), "the sampled path is taken");
        let heavy: HashSet<PeerId> = all.iter().step_by(5).map(|c| c.node).collect();
        let mut rng = seeded(9);
        let (mut heavy_picks, mut picks) = (0, 0);
        for _ in 0..2_000 {
            let (chosen, mut plan) = placer.segment_with(12, &mut rng).unwrap();
            let subnets: HashSet<Subnet> = chosen
                .iter()
                .map(|n| all.iter().find(|c| c.node == *n).unwrap().subnet)
                .collect();
            assert_eq!(subnets.len(), 12, "two fragments behind one /24");
            assert!(plan.replacement().is_some());
            picks += chosen.len();
            heavy_picks += chosen.iter().filter(|n| heavy.contains(n)).count();
        }
        // Heavy nodes are 1/5 of the pool and 8/12 of the weight: about two thirds of picks.
        let share = heavy_picks as f64 / picks as f64;
        assert!((0.55..0.78).contains(&share), "heavy share {share}");
        // Extra holders avoid the segment's nodes and networks on the sampled path too.
        let existing: Vec<(PeerId, Subnet)> =
            all[..12].iter().map(|c| (c.node, c.subnet)).collect();
        let (more, _) = placer.extend_with(&existing, 8, &mut rng);
        assert_eq!(more.len(), 8);
        for n in &more {
            let c = all.iter().find(|c| c.node == *n).unwrap();
            assert!(
                !existing
                    .iter()
                    .any(|(en, es)| *en == c.node || *es == c.subnet)
            );
        }
    }
}
