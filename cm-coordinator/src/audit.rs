//! Storage audits, the CM's side: *when* each node is audited and what an outcome means.
//!
//! A sans-IO core (no sockets, no clock, no entropy of its own: `now` in Unix seconds and an
//! `&mut impl Rng` come in, decisions go out), driven by [`crate::auditor`] and, unchanged, by
//! the simulator.
//!
//! * **Unpredictable**: each node's next audit is drawn from an exponential distribution with
//!   the configured mean, so audits form a Poisson process per node: memoryless, with no
//!   quiet period after an audit that a node could rely on.
//! * **No false positives from bad luck (containment)**: a timed-out audit is re-checked on the
//!   *same fragment* after `retry_after`, then twice that, and so on; only when the first audit
//!   and all `retries` re-checks time out does it count as a failure. An answer in between ends
//!   the containment. Proving another fragment does not: a node cannot dodge a range it cannot
//!   prove by timing out and answering elsewhere.
//! * **Failures that are offences**: a bad proof or "not found" for a fragment the node is paid
//!   to store fails at once and is an offence (it claimed what it cannot prove). "Corrupt" fails
//!   the score but is no offence: the node admitted its disk lost the copy. In every case where
//!   the copy is gone ([`Failure::fragment_lost`]) the caller closes the placement.
//! * **Forgiving scores**: passes and failures are counts decayed with a half-life; the score is
//!   the decayed share of passes, with the benefit of the doubt worth one pass, so one bad day
//!   fades and a new node starts at 1.0.
//! * **Scale**: per node a few words of state; the schedule is a `BTreeSet` keyed by due time,
//!   so [`Auditor::due`] costs O(k log n) for the k nodes it returns, never a scan.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Duration;

use overlay::PeerId;
use overlay::store::FragmentId;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Audit timings.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditConfig {
    /// Mean time between two audits of one node (exponentially distributed).
    pub mean_interval: Duration,
    /// Re-checks of a timed-out audit before the timeout counts as a failure.
    pub retries: u32,
    /// Wait before the first re-check; doubled before each further one.
    pub retry_after: Duration,
    /// Time for a pass or failure to weigh half as much in the score.
    pub half_life: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            mean_interval: Duration::from_secs(6 * 3600),
            retries: 3,
            retry_after: Duration::from_secs(60),
            half_life: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What came of one audit, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The proof verified against the manifest's hash.
    Pass,
    /// The node answered with a proof that does not verify (or a malformed answer).
    BadProof,
    /// The node says it does not hold the fragment.
    NotFound,
    /// The node found its copy corrupt on disk (and dropped it).
    Corrupt,
    /// No answer in time, or the node could not be reached.
    Timeout,
}

/// Why an audit failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    BadProof,
    NotFound,
    Corrupt,
    /// The audit and every containment re-check timed out.
    Unresponsive,
}

impl Failure {
    /// Whether the node claimed a fragment it cannot prove (cheating, not bad luck).
    pub fn is_offence(self) -> bool {
        matches!(self, Failure::BadProof | Failure::NotFound)
    }

    /// Whether the node's copy is known to be gone: close the placement, repair elsewhere.
    /// (An unresponsive node may come back; liveness and repair decide about it.)
    pub fn fragment_lost(self) -> bool {
        !matches!(self, Failure::Unresponsive)
    }
}

/// What an outcome means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The node proved the range.
    Passed,
    /// No answer yet: `fragment` is audited again at `recheck_at` (re-check `attempt` of
    /// `retries`); nothing counts against the node so far.
    Contained {
        fragment: FragmentId,
        attempt: u32,
        recheck_at: u64,
    },
    /// A failure, counted in the node's score. `offence` is [`Failure::is_offence`].
    Failed {
        fragment: FragmentId,
        reason: Failure,
        offence: bool,
    },
    /// The node is not audited (removed meanwhile): nothing recorded.
    Ignored,
}

/// One audit to run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditTask<N> {
    pub node: N,
    /// `Some`: a containment re-check, audit exactly this fragment again. `None`: audit a
    /// fragment drawn at random from those the node is paid to store now.
    pub recheck: Option<FragmentId>,
}

/// A timed-out audit under re-check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Containment {
    pub fragment: FragmentId,
    /// Consecutive timeouts so far (the first audit's included).
    pub timeouts: u32,
}

/// One node's audit state, as persisted by the driver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeAuditState<N> {
    pub node: N,
    /// When the node is next audited (Unix seconds).
    pub due: u64,
    /// Decayed weight of passes, as of `scored_at`.
    pub passed: f64,
    /// Decayed weight of failures, as of `scored_at`.
    pub failed: f64,
    pub scored_at: u64,
    pub passed_total: u64,
    pub failed_total: u64,
    pub containment: Option<Containment>,
}

/// Every node's audit state: what [`Auditor::snapshot`] gives and [`Auditor::restore`] takes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditSnapshot<N> {
    pub nodes: Vec<NodeAuditState<N>>,
}

#[derive(Clone, Debug)]
struct NodeState {
    due: u64,
    passed: f64,
    failed: f64,
    scored_at: u64,
    passed_total: u64,
    failed_total: u64,
    /// Boxed: rare, and a fragment ID is five times the rest of the state.
    containment: Option<Box<Containment>>,
}

/// The audit scheduler and judge, over node IDs of type `N` (the CM uses [`PeerId`]; the
/// simulator a small integer).
pub struct Auditor<N = PeerId> {
    config: AuditConfig,
    nodes: HashMap<N, NodeState>,
    /// `(due, node)` for every node.
    schedule: BTreeSet<(u64, N)>,
}

impl<N: Clone + Eq + Hash + Ord> Auditor<N> {
    pub fn new(config: AuditConfig) -> Self {
        Self {
            config,
            nodes: HashMap::new(),
            schedule: BTreeSet::new(),
        }
    }

    /// The timings in force.
    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// Nodes audited.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is audited.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Starts auditing `node`, first at a random time from `now`. A node already audited keeps
    /// its schedule and history (returns `false`).
    pub fn add_node(&mut self, node: N, now: u64, rng: &mut impl Rng) -> bool {
        if self.nodes.contains_key(&node) {
            return false;
        }
        let due = now.saturating_add(self.draw_interval(rng));
        self.schedule.insert((due, node.clone()));
        self.nodes.insert(
            node,
            NodeState {
                due,
                passed: 0.0,
                failed: 0.0,
                scored_at: now,
                passed_total: 0,
                failed_total: 0,
                containment: None,
            },
        );
        true
    }

    /// Stops auditing `node` and forgets its history; returns whether it was audited.
    pub fn remove_node(&mut self, node: &N) -> bool {
        match self.nodes.remove(node) {
            Some(state) => {
                self.schedule.remove(&(state.due, node.clone()));
                true
            }
            None => false,
        }
    }

    /// At most `max` audits due at `now`, earliest first. Each node returned is rescheduled at
    /// once (a fresh draw, or its re-check if the outcome is a timeout), so an outcome that
    /// never arrives loses nothing and the node is not returned twice.
    pub fn due(&mut self, now: u64, max: usize, rng: &mut impl Rng) -> Vec<AuditTask<N>> {
        let mut tasks = Vec::new();
        while tasks.len() < max {
            let Some((due, _)) = self.schedule.first() else {
                break;
            };
            if *due > now {
                break;
            }
            let Some((_, node)) = self.schedule.pop_first() else {
                break;
            };
            let next = now.saturating_add(self.draw_interval(rng));
            let Some(state) = self.nodes.get_mut(&node) else {
                continue;
            };
            state.due = next;
            self.schedule.insert((next, node.clone()));
            tasks.push(AuditTask {
                recheck: state.containment.as_ref().map(|c| c.fragment),
                node,
            });
        }
        tasks
    }

    /// When the next audit is due, if any node is audited: how long the driver may sleep.
    pub fn next_due(&self) -> Option<u64> {
        self.schedule.first().map(|(due, _)| *due)
    }

    /// Records what came of auditing `fragment` on `node` at `now`, and judges it.
    pub fn outcome(
        &mut self,
        node: &N,
        fragment: FragmentId,
        outcome: Outcome,
        now: u64,
    ) -> Verdict {
        let retries = self.config.retries;
        let retry_after = self.config.retry_after;
        let half_life = self.config.half_life;
        let Some(state) = self.nodes.get_mut(node) else {
            return Verdict::Ignored;
        };
        let contained_on = state.containment.as_ref().map(|c| c.fragment);
        let failure = match outcome {
            Outcome::Pass => {
                if contained_on == Some(fragment) {
                    state.containment = None;
                }
                record(state, half_life, now, true);
                return Verdict::Passed;
            }
            Outcome::Timeout => {
                let containment = state.containment.get_or_insert_with(|| {
                    Box::new(Containment {
                        fragment,
                        timeouts: 0,
                    })
                });
                containment.timeouts += 1;
                let attempt = containment.timeouts;
                let fragment = containment.fragment;
                if attempt > retries {
                    state.containment = None;
                    Failure::Unresponsive
                } else {
                    let wait = retry_after
                        .checked_mul(1 << (attempt - 1).min(30))
                        .unwrap_or(Duration::MAX);
                    let recheck_at = now.saturating_add(wait.as_secs().max(1));
                    self.schedule.remove(&(state.due, node.clone()));
                    state.due = recheck_at;
                    self.schedule.insert((recheck_at, node.clone()));
                    return Verdict::Contained {
                        fragment,
                        attempt,
                        recheck_at,
                    };
                }
            }
            Outcome::BadProof => Failure::BadProof,
            Outcome::NotFound => Failure::NotFound,
            Outcome::Corrupt => Failure::Corrupt,
        };
        // An answer about the fragment under re-check ends the containment; one about another
        // fragment leaves that re-check in place.
        let fragment = match failure {
            Failure::Unresponsive => contained_on.unwrap_or(fragment),
            _ => {
                if contained_on == Some(fragment) {
                    state.containment = None;
                }
                fragment
            }
        };
        record(state, half_life, now, false);
        Verdict::Failed {
            fragment,
            reason: failure,
            offence: failure.is_offence(),
        }
    }

    /// The node's score at `now`: the decayed share of passes, with one pass's worth of
    /// benefit of the doubt; 1.0 for a node without history (or not audited).
    pub fn score(&self, node: &N, now: u64) -> f64 {
        let (passed, failed) = self.weights(node, now);
        (passed + 1.0) / (passed + failed + 1.0)
    }

    /// Decayed weights `(passes, failures)` at `now`: an event one half-life ago weighs 1/2.
    pub fn weights(&self, node: &N, now: u64) -> (f64, f64) {
        match self.nodes.get(node) {
            Some(state) => {
                let f = decay(self.config.half_life, state.scored_at, now);
                (state.passed * f, state.failed * f)
            }
            None => (0.0, 0.0),
        }
    }

    /// Undecayed totals `(passed, failed)` since the node was first audited.
    pub fn counts(&self, node: &N) -> (u64, u64) {
        self.nodes
            .get(node)
            .map_or((0, 0), |s| (s.passed_total, s.failed_total))
    }

    /// The containment in progress for `node`, if any.
    pub fn containment(&self, node: &N) -> Option<&Containment> {
        self.nodes.get(node)?.containment.as_deref()
    }

    /// When `node` is next audited.
    pub fn due_at(&self, node: &N) -> Option<u64> {
        self.nodes.get(node).map(|s| s.due)
    }

    /// Every node's state, for the driver to persist.
    pub fn snapshot(&self) -> AuditSnapshot<N> {
        AuditSnapshot {
            nodes: self
                .nodes
                .iter()
                .map(|(node, s)| NodeAuditState {
                    node: node.clone(),
                    due: s.due,
                    passed: s.passed,
                    failed: s.failed,
                    scored_at: s.scored_at,
                    passed_total: s.passed_total,
                    failed_total: s.failed_total,
                    containment: s.containment.as_deref().cloned(),
                })
                .collect(),
        }
    }

    /// An auditor continuing from `snapshot` (due times in the past are due at once; a node
    /// listed twice keeps its last entry).
    pub fn restore(config: AuditConfig, snapshot: AuditSnapshot<N>) -> Self {
        let mut auditor = Self::new(config);
        for n in snapshot.nodes {
            let state = NodeState {
                due: n.due,
                passed: finite_weight(n.passed),
                failed: finite_weight(n.failed),
                scored_at: n.scored_at,
                passed_total: n.passed_total,
                failed_total: n.failed_total,
                containment: n.containment.map(Box::new),
            };
            if let Some(old) = auditor.nodes.insert(n.node.clone(), state) {
                auditor.schedule.remove(&(old.due, n.node.clone()));
            }
            auditor.schedule.insert((n.due, n.node));
        }
        auditor
    }

    /// A random interval (seconds, at least 1) from an exponential distribution with the
    /// configured mean.
    fn draw_interval(&self, rng: &mut impl Rng) -> u64 {
        let mean = self.config.mean_interval.as_secs_f64();
        // 1 - u lies in (0, 1], so the logarithm is finite: at most about 37 means.
        let u: f64 = rng.random();
        let secs = -mean * (1.0 - u).ln();
        (secs.round() as u64).max(1)
    }
}

/// Decays a node's weights to `now` and adds one pass or failure.
fn record(state: &mut NodeState, half_life: Duration, now: u64, passed: bool) {
    let f = decay(half_life, state.scored_at, now);
    state.passed *= f;
    state.failed *= f;
    // Outcomes reported out of order never move the clock backwards.
    state.scored_at = state.scored_at.max(now);
    if passed {
        state.passed += 1.0;
        state.passed_total += 1;
    } else {
        state.failed += 1.0;
        state.failed_total += 1;
    }
}

/// The factor by which a weight recorded at `then` has decayed at `now`.
fn decay(half_life: Duration, then: u64, now: u64) -> f64 {
    let elapsed = now.saturating_sub(then) as f64;
    if elapsed == 0.0 {
        return 1.0;
    }
    let half_life = half_life.as_secs_f64();
    if half_life == 0.0 {
        return 0.0;
    }
    (-elapsed / half_life).exp2()
}

/// A persisted weight, sanitised (a hand-edited or corrupt snapshot must not poison scores).
fn finite_weight(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 { w } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use overlay::ContentId;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;
    const T0: u64 = 1_700_000_000;

    fn frag(i: u16) -> FragmentId {
        FragmentId {
            content: ContentId([3; 32]),
            segment: 0,
            index: i,
        }
    }

    fn auditor() -> Auditor<u32> {
        Auditor::new(AuditConfig::default())
    }

    /// Runs the schedule from `from` to `until` in steps of `step`, collecting each audit's time.
    fn run(
        a: &mut Auditor<u32>,
        rng: &mut StdRng,
        from: u64,
        until: u64,
        step: u64,
    ) -> Vec<(u64, AuditTask<u32>)> {
        let mut seen = Vec::new();
        let mut now = from;
        while now <= until {
            for task in a.due(now, usize::MAX, rng) {
                seen.push((now, task));
            }
            now += step;
        }
        seen
    }

    #[test]
    fn audits_come_at_the_configured_mean_and_are_spread_out() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut a = auditor();
        for n in 0..1000 {
            a.add_node(n, T0, &mut rng);
        }
        let days = 30;
        let audits = run(&mut a, &mut rng, T0, T0 + days * DAY, 60);
        // 1000 nodes × 30 days × 4 per day = 120 000 expected.
        let expected = 1000.0 * (days * DAY) as f64 / (6 * HOUR) as f64;
        let ratio = audits.len() as f64 / expected;
        assert!(
            (0.97..1.03).contains(&ratio),
            "{} audits, ratio {ratio}",
            audits.len()
        );
        // Memoryless: about 1 - e^-1 ≈ 63 % of gaps are shorter than the mean, and a good
        // share are much shorter (no safe quiet period after an audit).
        let mut last: HashMap<u32, u64> = HashMap::new();
        let (mut gaps, mut short, mut very_short) = (0u32, 0u32, 0u32);
        for (at, task) in &audits {
            if let Some(prev) = last.insert(task.node, *at) {
                gaps += 1;
                short += u32::from(at - prev < 6 * HOUR);
                very_short += u32::from(at - prev < HOUR);
            }
        }
        let short = f64::from(short) / f64::from(gaps);
        let very_short = f64::from(very_short) / f64::from(gaps);
        assert!((0.60..0.66).contains(&short), "{short}");
        // 1 - e^(-1/6) ≈ 15 %.
        assert!((0.13..0.18).contains(&very_short), "{very_short}");
        assert!(audits.iter().all(|(_, t)| t.recheck.is_none()));
    }

    #[test]
    fn due_is_bounded_and_earliest_first_and_never_repeats_a_node() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut a = auditor();
        for n in 0..100 {
            a.add_node(n, T0, &mut rng);
        }
        let mut by_due: Vec<(u64, u32)> = (0..100).map(|n| (a.due_at(&n).unwrap(), n)).collect();
        by_due.sort_unstable();
        let far = T0 + 1000 * DAY;
        let first = a.due(far, 30, &mut rng);
        let earliest: Vec<u32> = by_due[..30].iter().map(|(_, n)| *n).collect();
        assert_eq!(first.iter().map(|t| t.node).collect::<Vec<_>>(), earliest);
        let rest = a.due(far, 1000, &mut rng);
        assert_eq!(rest.len(), 70);
        let mut all: Vec<u32> = first.iter().chain(&rest).map(|t| t.node).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 100);
        // Everyone was rescheduled after `far`.
        assert!(a.due(far, 1000, &mut rng).is_empty());
        assert!(a.next_due().unwrap() > far);
        assert!(a.remove_node(&5));
        assert!(!a.remove_node(&5));
        assert_eq!(a.len(), 99);
        assert!(
            !a.add_node(6, far, &mut rng),
            "adding twice keeps the schedule"
        );
    }

    #[test]
    fn one_timeout_then_a_pass_is_no_failure() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut a = auditor();
        a.add_node(1, T0, &mut rng);
        let now = a.due_at(&1).unwrap();
        assert_eq!(a.due(now, 10, &mut rng)[0].recheck, None);
        let verdict = a.outcome(&1, frag(4), Outcome::Timeout, now + 30);
        assert_eq!(
            verdict,
            Verdict::Contained {
                fragment: frag(4),
                attempt: 1,
                recheck_at: now + 30 + 60
            }
        );
        // The re-check is due after retry_after, for the same fragment.
        assert!(a.due(now + 89, 10, &mut rng).is_empty());
        let tasks = a.due(now + 90, 10, &mut rng);
        assert_eq!(
            tasks,
            vec![AuditTask {
                node: 1,
                recheck: Some(frag(4))
            }]
        );
        assert_eq!(
            a.outcome(&1, frag(4), Outcome::Pass, now + 95),
            Verdict::Passed
        );
        assert_eq!(a.counts(&1), (1, 0));
        assert!(a.containment(&1).is_none());
        assert_eq!(a.score(&1, now + 95), 1.0);
        // Back on the ordinary schedule.
        assert!(a.due_at(&1).unwrap() > now + 95);
    }

    #[test]
    fn only_the_audit_and_every_recheck_timing_out_is_a_failure() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut a = auditor();
        a.add_node(1, T0, &mut rng);
        let mut now = a.due_at(&1).unwrap();
        a.due(now, 1, &mut rng);
        // The first audit and re-checks 1 and 2 time out: contained, with doubling waits.
        for (attempt, wait) in [(1, 60), (2, 120), (3, 240)] {
            let verdict = a.outcome(&1, frag(9), Outcome::Timeout, now);
            assert_eq!(
                verdict,
                Verdict::Contained {
                    fragment: frag(9),
                    attempt,
                    recheck_at: now + wait
                }
            );
            assert_eq!(a.counts(&1), (0, 0));
            now += wait;
            let tasks = a.due(now, 10, &mut rng);
            assert_eq!(tasks.len(), 1);
            assert_eq!(tasks[0].recheck, Some(frag(9)));
        }
        // The third re-check times out too: now it counts, and it is no offence.
        assert_eq!(
            a.outcome(&1, frag(9), Outcome::Timeout, now),
            Verdict::Failed {
                fragment: frag(9),
                reason: Failure::Unresponsive,
                offence: false
            }
        );
        assert!(!Failure::Unresponsive.fragment_lost());
        assert_eq!(a.counts(&1), (0, 1));
        assert!(a.containment(&1).is_none());
        assert!(a.score(&1, now) < 1.0);
    }

    #[test]
    fn passing_another_fragment_does_not_end_a_containment() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut a = auditor();
        a.add_node(1, T0, &mut rng);
        a.outcome(&1, frag(1), Outcome::Timeout, T0);
        assert_eq!(
            a.outcome(&1, frag(2), Outcome::Pass, T0 + 10),
            Verdict::Passed
        );
        assert_eq!(a.containment(&1).unwrap().fragment, frag(1));
        // Timeouts are consecutive per node, and the re-check stays on the first fragment.
        let verdict = a.outcome(&1, frag(2), Outcome::Timeout, T0 + 60);
        assert!(matches!(
            verdict,
            Verdict::Contained { fragment, attempt: 2, .. } if fragment == frag(1)
        ));
        // Any answer about the contained fragment ends it.
        let verdict = a.outcome(&1, frag(1), Outcome::Corrupt, T0 + 200);
        assert_eq!(
            verdict,
            Verdict::Failed {
                fragment: frag(1),
                reason: Failure::Corrupt,
                offence: false
            }
        );
        assert!(a.containment(&1).is_none());
    }

    #[test]
    fn a_bad_proof_or_a_missing_fragment_is_an_offence_at_once() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut a = auditor();
        a.add_node(1, T0, &mut rng);
        for (outcome, reason) in [
            (Outcome::BadProof, Failure::BadProof),
            (Outcome::NotFound, Failure::NotFound),
        ] {
            assert_eq!(
                a.outcome(&1, frag(0), outcome, T0),
                Verdict::Failed {
                    fragment: frag(0),
                    reason,
                    offence: true
                }
            );
            assert!(reason.fragment_lost());
        }
        assert_eq!(
            a.outcome(&1, frag(0), Outcome::Corrupt, T0),
            Verdict::Failed {
                fragment: frag(0),
                reason: Failure::Corrupt,
                offence: false
            }
        );
        assert!(Failure::Corrupt.fragment_lost());
        assert_eq!(a.counts(&1), (0, 3));
        assert!(a.score(&1, T0) < 0.5);
        // Outcomes for nodes no longer audited are ignored.
        a.remove_node(&1);
        assert_eq!(
            a.outcome(&1, frag(0), Outcome::BadProof, T0),
            Verdict::Ignored
        );
        assert_eq!(a.counts(&1), (0, 0));
    }

    #[test]
    fn scores_decay_with_the_half_life() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut a = auditor();
        a.add_node(1, T0, &mut rng);
        assert_eq!(a.score(&1, T0), 1.0, "no history");
        assert_eq!(a.score(&99, T0), 1.0, "unknown node");
        a.outcome(&1, frag(0), Outcome::NotFound, T0);
        assert_eq!(a.score(&1, T0), 0.5);
        // Three half-lives later the failure weighs 1/8.
        let later = T0 + 3 * 7 * DAY;
        assert_eq!(a.weights(&1, later), (0.0, 0.125));
        assert!((a.score(&1, later) - 1.0 / 1.125).abs() < 1e-12);
        a.outcome(&1, frag(1), Outcome::Pass, later);
        assert_eq!(a.weights(&1, later), (1.0, 0.125));
        assert!((a.score(&1, later) - 2.0 / 2.125).abs() < 1e-12);
        // Totals do not decay.
        assert_eq!(a.counts(&1), (1, 1));
        // A steady record of passes scores close to 1, and one bad day is soon forgiven.
        let mut now = later;
        for i in 0..50 {
            now += 6 * HOUR;
            a.outcome(&1, frag(i), Outcome::Pass, now);
        }
        a.outcome(&1, frag(0), Outcome::BadProof, now);
        let just_after = a.score(&1, now);
        assert!(just_after > 0.9, "{just_after}");
    }

    #[test]
    fn same_seed_same_schedule() {
        let schedule = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut a = auditor();
            for n in 0..200 {
                a.add_node(n, T0, &mut rng);
            }
            run(&mut a, &mut rng, T0, T0 + 3 * DAY, 300)
        };
        assert_eq!(schedule(42), schedule(42));
        assert_ne!(schedule(42), schedule(43));
    }

    #[test]
    fn snapshot_and_restore_continue_where_they_stopped() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut a: Auditor<PeerId> = Auditor::new(AuditConfig::default());
        let (x, y) = (PeerId::random(), PeerId::random());
        a.add_node(x, T0, &mut rng);
        a.add_node(y, T0, &mut rng);
        a.outcome(&x, frag(0), Outcome::Pass, T0 + 10);
        a.outcome(&y, frag(1), Outcome::Timeout, T0 + 20);
        a.outcome(&y, frag(5), Outcome::BadProof, T0 + 30);
        let snapshot = a.snapshot();
        // Plain serde: the driver may persist it as JSON (or anything else).
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: AuditSnapshot<PeerId> = serde_json::from_str(&json).unwrap();
        let b = Auditor::restore(AuditConfig::default(), back);
        let later = T0 + 5 * DAY;
        for node in [x, y] {
            assert_eq!(b.counts(&node), a.counts(&node));
            assert_eq!(b.score(&node, later), a.score(&node, later));
            assert_eq!(b.due_at(&node), a.due_at(&node));
            assert_eq!(b.containment(&node), a.containment(&node));
        }
        assert_eq!(b.containment(&y).unwrap().fragment, frag(1));
        assert_eq!(b.next_due(), a.next_due());
        // A corrupt weight is not trusted.
        let mut bad = a.snapshot();
        bad.nodes[0].failed = f64::NAN;
        let c = Auditor::restore(AuditConfig::default(), bad);
        let node = c.snapshot().nodes[0].node;
        assert!(c.score(&node, T0).is_finite());
    }
}
