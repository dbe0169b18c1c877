//! Placement: which nodes hold a segment's fragments. Sans-IO: candidates in, choices out.
//!
//! The rule that matters for durability: never two fragments of one segment on one node or
//! behind one network (an IPv4 /24, an IPv6 /48), since one home router or one ISP outage would
//! take them together. A lab may relax the network half of the rule; it is never relaxed silently.

use std::collections::HashSet;

use libp2p::multiaddr::Protocol;
use overlay::{Multiaddr, PeerId};
use rand::seq::SliceRandom;

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

/// A node that may receive fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: PeerId,
    pub subnet: Subnet,
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

/// The placement of one segment: chosen holders in order, then spares for failed pushes.
#[derive(Debug)]
pub struct SegmentPlan {
    rules: PlacementRules,
    spares: Vec<Candidate>,
    used_nodes: HashSet<PeerId>,
    used_subnets: HashSet<Subnet>,
}

impl SegmentPlan {
    /// Picks `n` holders at random among `candidates` under `rules`; `None` if impossible.
    pub fn new(
        candidates: &[Candidate],
        n: usize,
        rules: PlacementRules,
    ) -> Option<(Vec<PeerId>, Self)> {
        let mut pool = candidates.to_vec();
        pool.shuffle(&mut rand::rng());
        let mut plan = Self {
            rules,
            spares: Vec::new(),
            used_nodes: HashSet::new(),
            used_subnets: HashSet::new(),
        };
        let mut chosen = Vec::with_capacity(n);
        for c in pool {
            if chosen.len() < n && plan.admit(&c) {
                chosen.push(c.node);
            } else {
                plan.spares.push(c);
            }
        }
        (chosen.len() == n).then_some((chosen, plan))
    }

    fn admit(&mut self, c: &Candidate) -> bool {
        if self.used_nodes.contains(&c.node)
            || (self.rules.distinct_subnets && self.used_subnets.contains(&c.subnet))
        {
            return false;
        }
        self.used_nodes.insert(c.node);
        self.used_subnets.insert(c.subnet);
        true
    }

    /// A replacement for a holder whose push failed, still obeying the rules; the failed
    /// holder keeps its place in the used sets (its fragment may still have landed).
    pub fn replacement(&mut self) -> Option<PeerId> {
        while let Some(c) = self.spares.pop() {
            if self.admit(&c) {
                return Some(c.node);
            }
        }
        None
    }
}

/// How many fragments of one segment `candidates` can hold under `rules`.
pub fn capacity(candidates: &[Candidate], rules: PlacementRules) -> usize {
    if rules.distinct_subnets {
        candidates
            .iter()
            .map(|c| c.subnet)
            .collect::<HashSet<_>>()
            .len()
    } else {
        candidates
            .iter()
            .map(|c| c.node)
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
}
