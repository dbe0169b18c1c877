//! Liveness: which nodes are online, decided from direct and indirect indications.
//!
//! A sans-IO state machine (events and `now` in, actions out), so it is tested with virtual time
//! and the simulator can drive a million nodes through the same code.
//!
//! * **Direct indications**: a join puts a node on the active list at once; a leave takes it off
//!   at once.
//! * **Indirect indications**: a report that a node could not be reached, or a node's silence
//!   past the heartbeat timeout, puts it on the check-alive list. The driver probes it
//!   ([`Action::Probe`]) up to `probe_attempts` times with doubling back-off; any sign of life
//!   (a probe answered, a heartbeat) clears the check, and only when every probe failed is the
//!   node marked offline. A false report therefore never takes a live node offline.
//! * **Bounded work**: a report about a node already being checked costs one map look-up; at
//!   most `max_checks` checks run at once, further reports are counted and dropped; silence is
//!   found through a queue ordered by deadline, not a scan of every node.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use overlay::PeerId;

/// Liveness timings and bounds.
#[derive(Clone, Debug)]
pub struct LivenessConfig {
    /// A node not heard from for this long is checked.
    pub heartbeat_timeout: Duration,
    /// Probes before a node is declared offline.
    pub probe_attempts: u32,
    /// Wait before the second probe; doubled before each further one.
    pub probe_backoff: Duration,
    /// Most nodes under check at once.
    pub max_checks: usize,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(90),
            probe_attempts: 3,
            probe_backoff: Duration::from_secs(5),
            max_checks: 10_000,
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Joined(PeerId),
    Left(PeerId),
    Heartbeat(PeerId),
    /// Someone could not reach the node.
    Unreachable(PeerId),
    ProbeAnswered(PeerId),
    ProbeFailed(PeerId),
}

/// Why a node went offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineReason {
    /// It said so (shutdown or its owner's suspend).
    Left,
    /// Every probe failed.
    Unreachable,
}

/// What the driver must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Probe the node and report [`Event::ProbeAnswered`] or [`Event::ProbeFailed`].
    Probe(PeerId),
    /// The node is off the active list.
    Offline(PeerId, OfflineReason),
}

#[derive(Debug)]
struct Check {
    failures: u32,
    in_flight: bool,
    due: Instant,
}

#[derive(Debug)]
struct Node {
    last_heard: Instant,
    check: Option<Check>,
}

/// Counters for operators and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LivenessStats {
    pub reports_ignored: u64,
    pub reports_dropped: u64,
    pub probes: u64,
    pub offline_unreachable: u64,
}

/// The liveness state machine.
pub struct Liveness {
    config: LivenessConfig,
    online: HashMap<PeerId, Node>,
    /// Probes due, by time (a counter breaks ties).
    due: BTreeMap<(Instant, u64), PeerId>,
    /// Heartbeat deadlines in order; stale entries are skipped when popped.
    silence: VecDeque<(Instant, PeerId)>,
    checks: usize,
    seq: u64,
    actions: VecDeque<Action>,
    stats: LivenessStats,
}

impl Liveness {
    pub fn new(config: LivenessConfig) -> Self {
        Self {
            config,
            online: HashMap::new(),
            due: BTreeMap::new(),
            silence: VecDeque::new(),
            checks: 0,
            seq: 0,
            actions: VecDeque::new(),
            stats: LivenessStats::default(),
        }
    }

    /// Whether `node` is on the active list.
    pub fn is_online(&self, node: &PeerId) -> bool {
        self.online.contains_key(node)
    }

    /// Nodes on the active list.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// Whether `node` is being checked.
    pub fn is_checking(&self, node: &PeerId) -> bool {
        self.online.get(node).is_some_and(|n| n.check.is_some())
    }

    pub fn stats(&self) -> LivenessStats {
        self.stats
    }

    fn heard(&mut self, node: PeerId, now: Instant) {
        let deadline = now + self.config.heartbeat_timeout;
        if let Some(n) = self.online.get_mut(&node) {
            n.last_heard = now;
            if n.check.take().is_some() {
                self.checks -= 1;
            }
            self.silence.push_back((deadline, node));
        }
    }

    fn start_check(&mut self, node: PeerId, now: Instant) -> bool {
        if self.checks >= self.config.max_checks {
            self.stats.reports_dropped += 1;
            return false;
        }
        let Some(n) = self.online.get_mut(&node) else {
            return false;
        };
        n.check = Some(Check {
            failures: 0,
            in_flight: false,
            due: now,
        });
        self.checks += 1;
        self.seq += 1;
        self.due.insert((now, self.seq), node);
        true
    }

    fn remove(&mut self, node: &PeerId) -> bool {
        match self.online.remove(node) {
            Some(n) => {
                if n.check.is_some() {
                    self.checks -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// Stops watching `node` without declaring it offline: another coordinator sharing the
    /// database watches it now (it joined there), or one closed its session. True if it was
    /// watched here.
    pub fn forget(&mut self, node: &PeerId) -> bool {
        self.remove(node)
    }

    /// Feeds one event.
    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Joined(node) => {
                self.online.entry(node).or_insert(Node {
                    last_heard: now,
                    check: None,
                });
                self.heard(node, now);
            }
            Event::Left(node) => {
                if self.remove(&node) {
                    self.actions
                        .push_back(Action::Offline(node, OfflineReason::Left));
                }
            }
            Event::Heartbeat(node) | Event::ProbeAnswered(node) => self.heard(node, now),
            Event::Unreachable(node) => match self.online.get(&node) {
                Some(n) if n.check.is_none() => {
                    self.start_check(node, now);
                }
                _ => self.stats.reports_ignored += 1,
            },
            Event::ProbeFailed(node) => {
                let attempts = self.config.probe_attempts.max(1);
                let Some(check) = self.online.get_mut(&node).and_then(|n| n.check.as_mut()) else {
                    return;
                };
                check.in_flight = false;
                check.failures += 1;
                if check.failures >= attempts {
                    self.remove(&node);
                    self.stats.offline_unreachable += 1;
                    self.actions
                        .push_back(Action::Offline(node, OfflineReason::Unreachable));
                } else {
                    let wait = self.config.probe_backoff * 2u32.saturating_pow(check.failures - 1);
                    check.due = now + wait;
                    self.seq += 1;
                    self.due.insert((check.due, self.seq), node);
                }
            }
        }
    }

    /// The next action due at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        // Nodes silent past their deadline go on the check-alive list.
        while let Some(&(deadline, node)) = self.silence.front() {
            if deadline > now {
                break;
            }
            self.silence.pop_front();
            let silent = self.online.get(&node).is_some_and(|n| {
                n.check.is_none() && n.last_heard + self.config.heartbeat_timeout <= now
            });
            if silent && !self.start_check(node, now) {
                // Too many checks running: look again after another timeout.
                self.silence
                    .push_back((now + self.config.heartbeat_timeout, node));
            }
        }
        while let Some((&(due, seq), &node)) = self.due.first_key_value() {
            if due > now {
                break;
            }
            self.due.remove(&(due, seq));
            let Some(check) = self.online.get_mut(&node).and_then(|n| n.check.as_mut()) else {
                continue; // cleared since
            };
            if check.in_flight || check.due != due {
                continue; // a stale entry
            }
            check.in_flight = true;
            self.stats.probes += 1;
            return Some(Action::Probe(node));
        }
        None
    }

    /// When [`Liveness::poll`] may next have something to do, absent new events.
    pub fn next_deadline(&self) -> Option<Instant> {
        let probe = self.due.first_key_value().map(|(&(t, _), _)| t);
        let silence = self.silence.front().map(|&(t, _)| t);
        match (probe, silence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LivenessConfig {
        LivenessConfig {
            heartbeat_timeout: Duration::from_secs(10),
            probe_attempts: 3,
            probe_backoff: Duration::from_secs(1),
            max_checks: 2,
        }
    }

    fn peer() -> PeerId {
        overlay::Identity::generate().peer_id()
    }

    fn drain(l: &mut Liveness, now: Instant) -> Vec<Action> {
        std::iter::from_fn(|| l.poll(now)).collect()
    }

    #[test]
    fn join_and_leave_are_immediate() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        let a = peer();
        l.handle(Event::Joined(a), t0);
        assert!(l.is_online(&a));
        l.handle(Event::Left(a), t0);
        assert!(!l.is_online(&a));
        assert_eq!(
            drain(&mut l, t0),
            vec![Action::Offline(a, OfflineReason::Left)]
        );
    }

    #[test]
    fn a_forgotten_node_is_neither_checked_nor_declared_offline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        let a = peer();
        l.handle(Event::Joined(a), t0);
        l.handle(Event::Unreachable(a), t0);
        assert_eq!(drain(&mut l, t0), vec![Action::Probe(a)]);
        assert!(l.forget(&a));
        assert!(!l.forget(&a));
        l.handle(Event::ProbeFailed(a), t0 + Duration::from_millis(10));
        assert_eq!(drain(&mut l, t0 + Duration::from_secs(3600)), vec![]);
        assert!(!l.is_online(&a));
    }

    #[test]
    fn a_false_report_never_takes_a_live_node_offline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        let a = peer();
        l.handle(Event::Joined(a), t0);
        l.handle(Event::Unreachable(a), t0);
        assert_eq!(drain(&mut l, t0), vec![Action::Probe(a)]);
        l.handle(Event::ProbeAnswered(a), t0 + Duration::from_millis(10));
        assert!(l.is_online(&a));
        assert!(!l.is_checking(&a));
        assert_eq!(drain(&mut l, t0 + Duration::from_secs(5)), vec![]);
    }

    #[test]
    fn a_dead_node_goes_offline_after_every_probe_failed_with_backoff() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        let a = peer();
        l.handle(Event::Joined(a), t0);
        l.handle(Event::Unreachable(a), t0);
        assert_eq!(drain(&mut l, t0), vec![Action::Probe(a)]);
        l.handle(Event::ProbeFailed(a), t0);
        // Second probe after 1 s, third after 2 s more.
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(drain(&mut l, t0 + Duration::from_millis(999)), vec![]);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(drain(&mut l, t1), vec![Action::Probe(a)]);
        l.handle(Event::ProbeFailed(a), t1);
        assert_eq!(drain(&mut l, t1 + Duration::from_millis(1999)), vec![]);
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(drain(&mut l, t2), vec![Action::Probe(a)]);
        assert!(l.is_online(&a), "online until the last probe fails");
        l.handle(Event::ProbeFailed(a), t2);
        assert_eq!(
            drain(&mut l, t2),
            vec![Action::Offline(a, OfflineReason::Unreachable)]
        );
        assert!(!l.is_online(&a));
    }

    #[test]
    fn silent_nodes_are_probed_and_heartbeats_keep_nodes_unchecked() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        let (a, b) = (peer(), peer());
        l.handle(Event::Joined(a), t0);
        l.handle(Event::Joined(b), t0);
        for s in 1..=3 {
            l.handle(Event::Heartbeat(a), t0 + Duration::from_secs(5 * s));
        }
        assert_eq!(
            drain(&mut l, t0 + Duration::from_secs(10)),
            vec![Action::Probe(b)]
        );
        assert!(!l.is_checking(&a));
    }

    #[test]
    fn a_flood_of_reports_costs_one_probe_and_checks_are_bounded() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        let nodes: Vec<PeerId> = (0..4).map(|_| peer()).collect();
        for n in &nodes {
            l.handle(Event::Joined(*n), t0);
        }
        for _ in 0..10_000 {
            l.handle(Event::Unreachable(nodes[0]), t0);
        }
        assert_eq!(drain(&mut l, t0), vec![Action::Probe(nodes[0])]);
        assert_eq!(l.stats().reports_ignored, 9_999);
        l.handle(Event::Unreachable(nodes[1]), t0);
        l.handle(Event::Unreachable(nodes[2]), t0); // max_checks = 2
        assert_eq!(l.stats().reports_dropped, 1);
        assert!(!l.is_checking(&nodes[2]));
        // Reports about unknown nodes change nothing.
        l.handle(Event::Unreachable(peer()), t0);
        assert_eq!(l.online_count(), 4);
    }

    #[test]
    fn a_node_that_leaves_while_checked_frees_its_check() {
        let t0 = Instant::now();
        let mut l = Liveness::new(config());
        let (a, b, c) = (peer(), peer(), peer());
        for n in [a, b, c] {
            l.handle(Event::Joined(n), t0);
        }
        l.handle(Event::Unreachable(a), t0);
        l.handle(Event::Unreachable(b), t0);
        l.handle(Event::Left(a), t0);
        l.handle(Event::Unreachable(c), t0);
        assert!(l.is_checking(&c));
        let actions = drain(&mut l, t0);
        assert_eq!(actions[0], Action::Offline(a, OfflineReason::Left));
        assert!(actions.contains(&Action::Probe(b)) && actions.contains(&Action::Probe(c)));
        assert!(!actions.contains(&Action::Probe(a)));
    }
}
