//! Several coordinator processes on one database serve one collective.
//!
//! Each process watches the nodes that joined through it (its own liveness), and every few
//! seconds ([`ClusterConfig::interval`]) follows the others through the database:
//!
//! * it refreshes its heartbeat in `coordinators`, and stops if another process took over its
//!   instance (a copied data directory);
//! * it closes the sessions of coordinators whose heartbeat stopped (nobody watches those
//!   nodes any more);
//! * it reads every open session: nodes online through another coordinator become its remote
//!   list (contact lists, placement and repairs use them like its own); its own nodes that
//!   joined elsewhere since, or whose session another coordinator closed (they said leave
//!   there), leave its active list; heartbeats its own nodes sent to another coordinator count
//!   as heard;
//! * it follows placements made or closed by the others (publishes, repairs), so its repair
//!   view is the collective's;
//! * it takes or renews the maintenance lease: only its holder runs repairs and audits. The
//!   holder acts only within half the lease's length of its last renewal (a renewal delayed by
//!   a stalled process or database stops it before another may take over), only after the
//!   round that took the lease has followed the placements, and records a repair only while
//!   the lease row says it holds it (see [`crate::db::Db::record_repairs`]).
//!
//! With one coordinator (SQLite or PostgreSQL) all of this is cheap and changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay::manifest::SignedManifest;
use overlay::time::now_secs;
use overlay::{ContentId, Multiaddr, PeerId};
use tracing::{debug, error, info, warn};

use crate::db::PlacementChange;
use crate::liveness::Event;
use crate::placement::Subnet;
use crate::registry::OnlineNode;
use crate::server::Coordinator;

/// The lease whose holder runs repairs and audits.
pub const MAINTENANCE: &str = "maintenance";

/// How coordinators sharing a database follow each other.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// How often the others' nodes, placements and the lease are read.
    pub interval: Duration,
    /// A coordinator not heard from for this long is gone: its nodes' sessions are closed and
    /// its lease may be taken. At least three intervals.
    pub coordinator_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            coordinator_timeout: Duration::from_secs(30),
        }
    }
}

impl ClusterConfig {
    fn timeout_secs(&self) -> u64 {
        self.coordinator_timeout
            .max(self.interval * 3)
            .as_secs()
            .max(1)
    }
}

/// This process's place among the coordinators.
pub struct Cluster {
    /// Stable per data directory.
    pub instance: String,
    /// Random per process start.
    run: String,
    config: ClusterConfig,
    /// Holds the maintenance lease until this instant (half the lease's length after the round
    /// that renewed it started).
    leader_until: std::sync::Mutex<Option<Instant>>,
}

impl Cluster {
    pub fn new(instance: String, config: ClusterConfig) -> Self {
        Self {
            instance,
            run: hex::encode(rand::random::<[u8; 8]>()),
            config,
            leader_until: std::sync::Mutex::new(None),
        }
    }

    /// Whether this coordinator holds the maintenance lease (runs repairs and audits).
    pub fn is_leader(&self) -> bool {
        self.leader_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }
}

/// Most coordinator addresses a ticket file lists.
pub const MAX_TICKET_COORDINATORS: usize = 16;

/// The addresses a ticket file lists: `own` first, then every other coordinator heard from
/// within `timeout`, all with the CM's peer ID, so that the client reaches whichever answers.
pub async fn ticket_addresses(
    db: &crate::db::Db,
    own: &Multiaddr,
    timeout: Duration,
) -> Result<Vec<Multiaddr>, crate::db::DbError> {
    let mut addrs = vec![own.clone()];
    let Some((cm, _)) = overlay::net::split_peer(own) else {
        return Ok(addrs);
    };
    let alive_since = now_secs().saturating_sub(timeout.as_secs()) as i64;
    for row in db.coordinators().await? {
        if addrs.len() >= MAX_TICKET_COORDINATORS {
            break;
        }
        let Ok(addr) = row.addr.parse::<Multiaddr>() else {
            continue;
        };
        let addr = overlay::net::with_peer(&addr, cm);
        if row.heartbeat_at >= alive_since && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}

/// Registers this process, closes the sessions nobody watches (its own earlier run's, and those
/// of coordinators gone), and reads the collective once. Called before serving nodes.
pub async fn start(coord: &Coordinator, http: &str) -> anyhow::Result<Follower> {
    let c = &coord.cluster;
    let now = now_secs();
    coord
        .db
        .coordinator_started(&c.instance, &c.run, &coord.addr.to_string(), http, now)
        .await?;
    let closed = coord
        .db
        .close_orphan_sessions(
            &c.instance,
            now,
            now.saturating_sub(c.config.timeout_secs()),
        )
        .await?;
    if closed > 0 {
        info!(closed, "closed the sessions of nodes nobody watches");
    }
    let mut follower = Follower {
        placements_since: now,
        heard: HashMap::new(),
        was_leader: false,
        reports_seen: HashMap::new(),
    };
    follower.round(coord).await?;
    Ok(follower)
}

/// Follows the other coordinators until this process must stop: returns the reason.
pub async fn driver(coord: Arc<Coordinator>, mut follower: Follower) -> anyhow::Error {
    let mut tick = tokio::time::interval(coord.cluster.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match coord
            .db
            .coordinator_beat(&coord.cluster.instance, &coord.cluster.run, now_secs())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return anyhow::anyhow!(
                    "another coordinator process started with instance {} (a copied data \
                     directory? delete its instance.id); stopping",
                    coord.cluster.instance
                );
            }
            Err(e) => {
                error!(error = %e, "cannot refresh this coordinator's heartbeat");
                continue;
            }
        }
        let started = Instant::now();
        if let Err(e) = follower.round(&coord).await {
            error!(error = %e, "cannot follow the other coordinators");
        }
        let took = started.elapsed();
        let (local, remote) = coord.registry.counts();
        debug!(
            took_ms = took.as_millis() as u64,
            local, remote, "cluster round"
        );
        if took > coord.cluster.config.interval {
            warn!(
                took_ms = took.as_millis() as u64,
                remote, "following the other coordinators took longer than cluster_interval"
            );
        }
    }
}

/// Marks this process stopped: the others take over at once.
pub async fn stop(coord: &Coordinator) {
    let c = &coord.cluster;
    if let Err(e) = coord.db.coordinator_stopped(&c.instance, &c.run).await {
        warn!(error = %e, "cannot mark this coordinator stopped");
    }
}

/// What a round needs to remember.
pub struct Follower {
    /// Placement changes are read from here on (with an overlap for clock differences).
    placements_since: u64,
    /// The newest heartbeat time read per own node.
    heard: HashMap<PeerId, i64>,
    /// Whether the last round held the lease.
    was_leader: bool,
    /// Per node reported unreachable to another coordinator within the window: the newest
    /// report acted on (or passed over: not this coordinator's node).
    reports_seen: HashMap<PeerId, i64>,
}

impl Follower {
    async fn round(&mut self, coord: &Coordinator) -> anyhow::Result<()> {
        let c = &coord.cluster;
        let started = Instant::now();
        let now = now_secs();
        let timeout = c.config.timeout_secs();
        let leader = coord
            .db
            .acquire_lease(MAINTENANCE, &c.instance, now, now + timeout)
            .await?;
        if !leader {
            c.leader_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
        let closed = coord
            .db
            .close_orphan_sessions("", now, now.saturating_sub(timeout))
            .await?;
        if closed > 0 {
            warn!(
                closed,
                "a coordinator stopped: its nodes are offline until they join again"
            );
        }
        self.follow_nodes(coord).await?;
        self.follow_reports(coord, now).await?;
        self.follow_placements(coord, now).await?;
        // Repairs and audits start (or go on) only now that the view is current.
        let was = c.is_leader();
        if leader {
            *c.leader_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(started + Duration::from_secs(timeout) / 2);
            if !was {
                info!("this coordinator now runs repairs and audits");
                coord.repair_wake.notify_one();
            }
        } else if self.was_leader {
            warn!("another coordinator runs repairs and audits now");
        }
        self.was_leader = leader;
        Ok(())
    }

    async fn follow_nodes(&mut self, coord: &Coordinator) -> anyhow::Result<()> {
        let me = coord.cluster.instance.as_str();
        let read_at = Instant::now();
        let sessions = coord.db.open_sessions().await?;
        let mut own = HashSet::new();
        let mut remote = Vec::new();
        let mut heard = Vec::new();
        for s in sessions {
            if s.coordinator.as_deref() == Some(me) {
                own.insert(s.node);
                if let Some(t) = s.last_seen {
                    let before = self.heard.insert(s.node, t);
                    if before.is_some_and(|b| b < t) {
                        heard.push(s.node);
                    }
                }
                continue;
            }
            remote.push(OnlineNode {
                id: s.node,
                addrs: s.addrs,
                quota: s.quota,
                used: s.used,
                joined: read_at,
                last_seen: read_at,
            });
        }
        self.heard.retain(|n, _| own.contains(n));
        // Heartbeats that reached another coordinator: this one's nodes are alive.
        for node in heard {
            if coord.registry.is_local(&node) {
                coord.liveness_event(Event::Heartbeat(node));
            }
        }
        let elsewhere: HashSet<PeerId> = remote.iter().map(|n| n.id).collect();
        // Own nodes whose session moved or was closed since (a join after the read stays).
        for n in coord.registry.local() {
            if own.contains(&n.id) || !coord.registry.leave_if_joined_before(&n.id, read_at) {
                continue;
            }
            coord
                .liveness
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget(&n.id);
            if elsewhere.contains(&n.id) {
                info!(node = %n.id, "node now online through another coordinator");
            } else {
                info!(node = %n.id, "node went offline through another coordinator");
                coord.repair().offline(n.id, Instant::now());
                coord.repair_wake.notify_one();
            }
        }
        let changes = coord.registry.set_remote(remote);
        for n in changes.appeared {
            coord.net.add_addresses(n.id, n.addrs.clone());
            coord
                .subnets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n.id, Subnet::of(n.id, &n.addrs));
            coord.repair().online(n.id, Instant::now());
            coord
                .auditor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add_node(n.id, now_secs(), &mut rand::rng());
        }
        if !changes.gone.is_empty() {
            let now = Instant::now();
            let mut repair = coord.repair();
            for n in changes.gone {
                repair.offline(n, now);
            }
            drop(repair);
            coord.repair_wake.notify_one();
        }
        Ok(())
    }

    /// Acts on clients' reports that one of this coordinator's nodes is unreachable, sent to
    /// another coordinator: the liveness core probes the node, as for a report received here.
    async fn follow_reports(&mut self, coord: &Coordinator, now: u64) -> anyhow::Result<()> {
        let since = now.saturating_sub(coord.cluster.config.timeout_secs());
        let reported = coord
            .db
            .unreachable_elsewhere(&coord.cluster.instance, since)
            .await?;
        let mut seen = HashMap::with_capacity(reported.len());
        for (node, newest) in reported {
            let before = self.reports_seen.get(&node).copied();
            if before.is_none_or(|b| b < newest) && coord.registry.is_local(&node) {
                info!(%node, "a client reported this node unreachable to another coordinator");
                coord.liveness_event(Event::Unreachable(node));
            }
            seen.insert(node, before.map_or(newest, |b| b.max(newest)));
        }
        // Nodes without reports in the window are forgotten: the map stays that small.
        self.reports_seen = seen;
        Ok(())
    }

    /// Applies placements made or closed by any coordinator since the last round.
    async fn follow_placements(&mut self, coord: &Coordinator, now: u64) -> anyhow::Result<()> {
        // Clocks of coordinators may differ by up to the timeout; re-reading is harmless.
        let since = self
            .placements_since
            .saturating_sub(coord.cluster.config.timeout_secs());
        let changes = coord.db.placement_changes(since).await?;
        self.placements_since = now;
        let mut known: HashMap<ContentId, bool> = HashMap::new();
        for change in changes {
            let PlacementChange {
                content,
                segment,
                index,
                node,
                removed,
            } = change;
            let apply = match known.get(&content) {
                Some(&k) => k,
                None => {
                    let k = coord.repair().target(&content).is_some();
                    if !k {
                        // Published through another coordinator: load it whole, once.
                        load_content(coord, &content).await?;
                    }
                    known.insert(content, k);
                    k
                }
            };
            if !apply {
                continue;
            }
            let t = Instant::now();
            let mut repair = coord.repair();
            if removed {
                if repair.holder(&content, segment, index) == Some(node) {
                    repair.set_holder(&content, segment, index, None, t);
                }
            } else {
                repair.set_holder(&content, segment, index, Some(node), t);
            }
        }
        Ok(())
    }
}

/// Registers a content published elsewhere with the repair core, with its placements.
async fn load_content(coord: &Coordinator, id: &ContentId) -> anyhow::Result<()> {
    let Some(row) = coord.db.content(id).await? else {
        return Ok(());
    };
    let manifest: SignedManifest = postcard::from_bytes(&row.manifest)?;
    let placements = coord.db.placements(id).await?;
    let now = Instant::now();
    let mut repair = coord.repair();
    crate::rebuild::add_content(&mut repair, *id, &manifest.body);
    for p in placements {
        repair.set_holder(id, p.segment, p.index, Some(p.node), now);
    }
    info!(content = %id, "following a content published through another coordinator");
    Ok(())
}
