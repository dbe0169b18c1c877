//! Heartbeats reach the database in batches.
//!
//! Who is online lives in memory ([`crate::registry`], [`crate::liveness`]); what the database
//! keeps of a heartbeat (the node's space used, its upload rate, when it was last seen) is
//! history, written in batches (DESIGN §6). A heartbeat replaces its node's pending entry, so
//! what waits is bounded by the number of online nodes. [`driver`] writes everything pending in
//! one transaction every [`FLUSH_INTERVAL`], or as soon as [`FLUSH_AT`] nodes wait. A write
//! that fails is merged back and tried again; the coordinator's shutdown writes what is left.
//!
//! Other coordinators sharing the database read `last_seen` to learn that their nodes are heard
//! here, so a flush must come well within their `coordinator_timeout`: a second does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use overlay::PeerId;
use tracing::{debug, warn};

use crate::db::{Db, DbError};
use crate::server::Coordinator;

/// How often pending heartbeats are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Pending nodes that trigger a write before the interval is over.
pub const FLUSH_AT: usize = 20_000;

/// What one heartbeat leaves in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Bytes of the node's quota in use.
    pub used: u64,
    /// When it was heard, in seconds since the epoch.
    pub at: u64,
    /// The upload rate it measured, bytes per second.
    pub upload_bps: u64,
}

/// Heartbeats waiting to be written, the latest per node.
#[derive(Debug, Default)]
pub struct Heartbeats {
    pending: Mutex<HashMap<PeerId, Seen>>,
    wake: tokio::sync::Notify,
}

impl Heartbeats {
    fn pending(&self) -> MutexGuard<'_, HashMap<PeerId, Seen>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat; an older one than the node's pending entry is dropped.
    pub fn record(&self, node: PeerId, seen: Seen) {
        let waiting = {
            let mut pending = self.pending();
            merge(&mut pending, node, seen);
            pending.len()
        };
        if waiting >= FLUSH_AT {
            self.wake.notify_one();
        }
    }

    /// Drops the node's pending heartbeat: a join has just written fresher figures.
    pub fn forget(&self, node: &PeerId) {
        self.pending().remove(node);
    }

    /// Nodes waiting to be written.
    pub fn len(&self) -> usize {
        self.pending().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes everything pending in one transaction; returns how many nodes it wrote. On
    /// failure the batch is merged back (newer heartbeats that arrived meanwhile win).
    pub async fn flush(&self, db: &Db) -> Result<usize, DbError> {
        let batch: Vec<(PeerId, Seen)> = std::mem::take(&mut *self.pending()).into_iter().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        match db.nodes_seen(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut pending = self.pending();
                for (node, seen) in batch {
                    merge(&mut pending, node, seen);
                }
                Err(e)
            }
        }
    }
}

/// Keeps the later of two heartbeats of one node.
fn merge(pending: &mut HashMap<PeerId, Seen>, node: PeerId, seen: Seen) {
    pending
        .entry(node)
        .and_modify(|held| {
            if seen.at >= held.at {
                *held = seen;
            }
        })
        .or_insert(seen);
}

/// Writes pending heartbeats every [`FLUSH_INTERVAL`], or sooner when many wait. Runs until
/// the coordinator stops; [`crate::server::run`] then writes what is left.
pub async fn driver(coord: Arc<Coordinator>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(FLUSH_INTERVAL) => {}
            () = coord.seen.wake.notified() => {}
        }
        let started = std::time::Instant::now();
        match coord.seen.flush(&coord.db).await {
            Ok(0) => {}
            Ok(n) => debug!(
                nodes = n,
                ms = started.elapsed().as_millis() as u64,
                "heartbeats written"
            ),
            Err(e) => {
                warn!(error = %e, waiting = coord.seen.len(), "cannot write heartbeats; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use overlay::identity::Identity;

    use super::*;
    use crate::db::testing;

    fn seen(used: u64, at: u64) -> Seen {
        Seen {
            used,
            at,
            upload_bps: used * 10,
        }
    }

    #[test]
    fn the_latest_heartbeat_of_a_node_wins_and_forget_drops_it() {
        let h = Heartbeats::default();
        let (a, b) = (
            Identity::generate().peer_id(),
            Identity::generate().peer_id(),
        );
        h.record(a, seen(1, 10));
        h.record(a, seen(2, 12));
        h.record(a, seen(3, 11)); // late and older: dropped
        h.record(b, seen(5, 10));
        assert_eq!(h.len(), 2);
        assert_eq!(h.pending()[&a], seen(2, 12));
        h.forget(&b);
        assert_eq!(h.len(), 1);
    }

    testing::both_engines! {
    async fn heartbeats_are_written_in_one_batch_and_never_go_back_in_time(db) {
        // More nodes than one statement carries.
        let nodes: Vec<PeerId> = (0..5_003).map(|_| Identity::generate().peer_id()).collect();
        for n in &nodes {
            db.register_node(n, 1, 1).await.unwrap();
        }
        // The last node joins at 100; a heartbeat from before the join must not overwrite it.
        let last = *nodes.last().unwrap();
        db.node_joined(&last, "test", &[], 1_000, 77, 100).await.unwrap();
        let h = Heartbeats::default();
        for (i, n) in nodes.iter().enumerate() {
            let at = if *n == last { 99 } else { 50 + (i % 7) as u64 };
            h.record(*n, seen(i as u64, at));
        }
        // A node nobody registered is skipped, not an error.
        h.record(Identity::generate().peer_id(), seen(1, 60));
        assert_eq!(h.flush(&db).await.unwrap(), 5_004);
        assert!(h.is_empty());
        assert_eq!(h.flush(&db).await.unwrap(), 0);

        let rows: HashMap<String, crate::db::NodeRow> = db
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        assert_eq!(rows.len(), nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let row = &rows[&n.to_string()];
            if *n == last {
                assert_eq!((row.used, row.last_seen), (77, Some(100)), "{i}");
            } else {
                assert_eq!(row.used, i as i64, "{i}");
                assert_eq!(row.last_seen, Some(50 + (i % 7) as i64), "{i}");
                assert_eq!(row.upload_bps, i as i64 * 10, "{i}");
            }
        }
    }
    }

    testing::both_engines! {
    async fn a_failed_write_keeps_the_heartbeats_for_the_next(db) {
        let node = Identity::generate().peer_id();
        db.register_node(&node, 1, 1).await.unwrap();
        let h = Heartbeats::default();
        h.record(node, seen(8, 40));
        db.close().await;
        assert!(h.flush(&db).await.is_err());
        // Merged back; an older heartbeat arriving late does not replace it, a newer one does.
        assert_eq!(h.len(), 1);
        assert_eq!(h.pending()[&node], seen(8, 40));
        h.record(node, seen(7, 39));
        assert_eq!(h.pending()[&node], seen(8, 40));
        h.record(node, seen(9, 41));
        assert_eq!(h.pending()[&node], seen(9, 41));
    }
    }
}
