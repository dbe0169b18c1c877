//! What the coordinator knows of the nodes on the active list (addresses, capacity); whether a
//! node is on it is decided by [`crate::liveness`]. The database keeps the history (sessions).

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
    pub last_seen: Instant,
}

/// The active list.
#[derive(Default)]
pub struct Registry {
    online: Mutex<HashMap<PeerId, OnlineNode>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, OnlineNode>> {
        self.online.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A node joined (a direct indication): on the active list at once.
    pub fn join(&self, node: OnlineNode) {
        self.lock().insert(node.id, node);
    }

    /// A heartbeat; returns false when the node is not on the active list (it must join).
    pub fn seen(&self, id: &PeerId, used: u64, now: Instant) -> bool {
        match self.lock().get_mut(id) {
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
        self.lock().remove(id).is_some()
    }

    pub fn is_online(&self, id: &PeerId) -> bool {
        self.lock().contains_key(id)
    }

    pub fn get(&self, id: &PeerId) -> Option<OnlineNode> {
        self.lock().get(id).cloned()
    }

    /// Every online node.
    pub fn online(&self) -> Vec<OnlineNode> {
        self.lock().values().cloned().collect()
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
}
