//! Node profiles from the database's history (sessions, measured bandwidth, location), cached
//! for a short while: what placement weighs candidates by and what `cm-coordinator nodes` shows.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay::{Multiaddr, PeerId};

use crate::db::NodeRow;
use crate::history::{self, GroupRules, Groups, NodeHistory, NodeProfile, Session};
use crate::placement::{self, Subnet, WeightedCandidate};
use crate::server::Coordinator;

/// Profiles older than this are recomputed on the next use.
const FRESH: Duration = Duration::from_secs(30);

/// Every registered node's profile and group at one moment.
pub struct Profiles {
    pub at: Instant,
    pub nodes: Vec<(NodeRow, NodeProfile, Groups)>,
    pub index: HashMap<PeerId, usize>,
}

impl Profiles {
    pub fn get(&self, node: &PeerId) -> Option<&(NodeRow, NodeProfile, Groups)> {
        self.index.get(node).map(|&i| &self.nodes[i])
    }
}

/// Builds every node's profile from the database at `now` (Unix seconds).
pub async fn load(coord: &Coordinator, now: u64) -> anyhow::Result<Profiles> {
    let rows = coord.db.nodes().await?;
    let mut sessions: HashMap<String, Vec<Session>> = HashMap::new();
    for (node, start, end) in coord
        .db
        .sessions_since(now.saturating_sub(history::WINDOW_30D))
        .await?
    {
        sessions
            .entry(node)
            .or_default()
            .push(Session { start, end });
    }
    let empty = Vec::new();
    let profiles: Vec<NodeProfile> = rows
        .iter()
        .map(|r| {
            let addrs: Vec<Multiaddr> = r.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            NodeProfile::new(
                &NodeHistory {
                    sessions: sessions.get(&r.id).unwrap_or(&empty),
                    registered_at: r.registered_at.max(0) as u64,
                    reported_upload_bps: r.upload_bps.max(0) as u64,
                    observed_upload_bps: r.observed_bps.max(0) as u64,
                    location: history::location(&addrs),
                },
                now,
            )
        })
        .collect();
    let groups = history::groups(&profiles, &GroupRules::default());
    let index = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| PeerId::from_str(&r.id).ok().map(|p| (p, i)))
        .collect();
    Ok(Profiles {
        at: Instant::now(),
        nodes: rows
            .into_iter()
            .zip(profiles)
            .zip(groups)
            .map(|((r, p), g)| (r, p, g))
            .collect(),
        index,
    })
}

impl Coordinator {
    /// Node profiles, recomputed when older than half a minute.
    pub async fn profiles(&self) -> anyhow::Result<Arc<Profiles>> {
        if let Some(p) = self
            .profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|p| p.at.elapsed() < FRESH)
        {
            return Ok(p.clone());
        }
        let fresh = Arc::new(load(self, overlay::time::now_secs()).await?);
        *self.profiles.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Online nodes with at least `min_free` bytes of quota left, as placement candidates,
    /// weighted by availability and bandwidth; nodes not yet vetted are marked so that they get
    /// only a small share.
    pub async fn candidates(&self, min_free: u64) -> anyhow::Result<Vec<WeightedCandidate>> {
        let profiles = self.profiles().await?;
        let rules = GroupRules::default();
        Ok(self
            .registry
            .online()
            .into_iter()
            .filter(|n| n.quota.saturating_sub(n.used) >= min_free)
            .map(|n| {
                let subnet = Subnet::of(n.id, &n.addrs);
                match profiles.get(&n.id) {
                    Some((_, p, _)) => {
                        let vetted = rules.is_vetted(p);
                        WeightedCandidate {
                            node: n.id,
                            subnet,
                            weight: placement::weight(p.availability_30d, p.upload_bps, vetted),
                            vetted,
                        }
                    }
                    // Joined after the profiles were computed: new by definition.
                    None => WeightedCandidate {
                        node: n.id,
                        subnet,
                        weight: placement::weight(0.0, 0, false),
                        vetted: false,
                    },
                }
            })
            .collect())
    }
}
