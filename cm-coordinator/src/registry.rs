//! What the coordinator knows of the nodes online: those on its own active list (joined through
//! it; whether a node stays on it is decided by [`crate::liveness`]) and those online through
//! another coordinator sharing the database (followed by [`crate::cluster`]). The database
//! keeps the history (sessions).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use overlay::{Multiaddr, PeerId};

/// An online node.
#[derive(Clone, Debug)]
pub struct OnlineNode {
    pub id: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub quota: u64,
    pub used: u64,
    /// When it joined this coordinator's active list (or was first seen online elsewhere).
    pub joined: Instant,
    pub last_seen: Instant,
}

#[derive(Default)]
struct Lists {
    /// Joined through this coordinator.
    local: HashMap<PeerId, OnlineNode>,
    /// Online through another coordinator; never also in `local`.
    remote: HashMap<PeerId, OnlineNode>,
}

/// The active list, and the nodes online elsewhere.
#[derive(Default)]
pub struct Registry {
    lists: Mutex<Lists>,
}

/// What changed when the remote list was replaced.
#[derive(Debug, Default)]
pub struct RemoteChanges {
    /// Online now, not known online before.
    pub appeared: Vec<OnlineNode>,
    /// Online before, now offline everywhere.
    pub gone: Vec<PeerId>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node joined (a direct indication): on the active list at once.
    pub fn join(&self, node: OnlineNode) {
        let mut l = self.lock();
        l.remote.remove(&node.id);
        l.local.insert(node.id, node);
    }

    /// A heartbeat; returns false when the node is not on the active list (it must join).
    pub fn seen(&self, id: &PeerId, used: u64, now: Instant) -> bool {
        match self.lock().local.get_mut(id) {
            Some(n) => {
                n.used = used;
                n.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// A node left (a direct indication): off the active list at once.
    pub fn leave(&self, id: &PeerId) -> bool {
        self.lock().local.remove(id).is_some()
    }

    /// Off the active list if it joined before `before` (a newer join stays).
    pub fn leave_if_joined_before(&self, id: &PeerId, before: Instant) -> bool {
        let mut l = self.lock();
        if l.local.get(id).is_some_and(|n| n.joined < before) {
            l.local.remove(id);
            return true;
        }
        false
    }

    /// A node online through another coordinator went offline there (it said so to that one).
    pub fn remote_left(&self, id: &PeerId) -> bool {
        self.lock().remote.remove(id).is_some()
    }

    /// Online here or through another coordinator.
    pub fn is_online(&self, id: &PeerId) -> bool {
        let l = self.lock();
        l.local.contains_key(id) || l.remote.contains_key(id)
    }

    /// On this coordinator's active list.
    pub fn is_local(&self, id: &PeerId) -> bool {
        self.lock().local.contains_key(id)
    }

    pub fn get(&self, id: &PeerId) -> Option<OnlineNode> {
        let l = self.lock();
        l.local.get(id).or_else(|| l.remote.get(id)).cloned()
    }

    /// Every node online, here or elsewhere.
    pub fn online(&self) -> Vec<OnlineNode> {
        let l = self.lock();
        l.local.values().chain(l.remote.values()).cloned().collect()
    }

    /// The nodes on this coordinator's active list.
    pub fn local(&self) -> Vec<OnlineNode> {
        self.lock().local.values().cloned().collect()
    }

    /// Nodes online here / through other coordinators.
    pub fn counts(&self) -> (usize, usize) {
        let l = self.lock();
        (l.local.len(), l.remote.len())
    }

    /// Replaces the list of nodes online through other coordinators (those on the active
    /// list here are skipped: this coordinator watches them itself).
    pub fn set_remote(&self, nodes: Vec<OnlineNode>) -> RemoteChanges {
        let mut l = self.lock();
        let mut next: HashMap<PeerId, OnlineNode> = HashMap::with_capacity(nodes.len());
        let mut changes = RemoteChanges::default();
        for mut n in nodes {
            if l.local.contains_key(&n.id) {
                continue;
            }
            match l.remote.get(&n.id) {
                Some(old) => n.joined = old.joined,
                None => changes.appeared.push(n.clone()),
            }
            next.insert(n.id, n);
        }
        changes.gone = l
            .remote
            .keys()
            .filter(|id| !next.contains_key(id) && !l.local.contains_key(id))
            .copied()
            .collect();
        l.remote = next;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_seen_and_leave() {
        let r = Registry::default();
        let t0 = Instant::now();
        let a = overlay::Identity::generate().peer_id();
        let b = overlay::Identity::generate().peer_id();
        for id in [a, b] {
            r.join(OnlineNode {
                id,
                addrs: vec![],
                quota: 0,
                used: 0,
                joined: t0,
                last_seen: t0,
            });
        }
        assert!(r.seen(&a, 5, t0 + std::time::Duration::from_secs(50)));
        assert!(r.leave(&b));
        assert!(r.is_online(&a));
        assert!(!r.seen(&b, 0, t0));
        assert!(r.leave(&a));
        assert!(r.online().is_empty());
    }

    fn node(id: PeerId, t: Instant) -> OnlineNode {
        OnlineNode {
            id,
            addrs: vec![],
            quota: 0,
            used: 0,
            joined: t,
            last_seen: t,
        }
    }

    #[test]
    fn remote_nodes_are_online_but_not_on_the_active_list() {
        let r = Registry::default();
        let t0 = Instant::now();
        let [a, b, c] = [(); 3].map(|()| overlay::Identity::generate().peer_id());
        r.join(node(a, t0));
        let changes = r.set_remote(vec![node(a, t0), node(b, t0), node(c, t0)]);
        let mut appeared: Vec<PeerId> = changes.appeared.iter().map(|n| n.id).collect();
        appeared.sort();
        let mut want = vec![b, c];
        want.sort();
        assert_eq!(appeared, want, "a is watched here");
        assert!(r.is_online(&b) && !r.is_local(&b) && r.is_local(&a));
        assert_eq!(r.counts(), (1, 2));
        assert!(
            !r.seen(&b, 1, t0),
            "a heartbeat of a remote node asks it to join here"
        );
        // c moved here; b went offline elsewhere.
        r.join(node(c, t0));
        let changes = r.set_remote(vec![node(c, t0)]);
        assert!(changes.appeared.is_empty());
        assert_eq!(changes.gone, vec![b]);
        assert_eq!(r.counts(), (2, 0));
        // A join after the snapshot survives a removal meant for the older one.
        assert!(!r.leave_if_joined_before(&c, t0));
        assert!(r.leave_if_joined_before(&c, t0 + std::time::Duration::from_millis(1)));
        assert_eq!(r.online().len(), 1);
    }
}
