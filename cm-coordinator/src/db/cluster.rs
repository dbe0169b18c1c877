//! Several coordinators on one database: their heartbeats, the maintenance lease, the open
//! sessions of every node (and which coordinator each joined through), and the placement changes
//! a coordinator follows to keep its repair view current.

use overlay::{ContentId, Multiaddr, PeerId};
use sqlx::Row;

use super::{Db, DbError, on_pool, parse_content, parse_peer};

/// A coordinator process registered in the database.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct CoordinatorRow {
    pub instance: String,
    /// The QUIC address nodes and clients dial.
    pub addr: String,
    /// The HTTP API's address.
    pub http: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

/// A node with an open session.
#[derive(Clone, Debug)]
pub struct OpenSession {
    pub node: PeerId,
    /// The coordinator it joined through (`None`: a session from before version 6).
    pub coordinator: Option<String>,
    pub addrs: Vec<Multiaddr>,
    pub quota: u64,
    pub used: u64,
    /// Its last heartbeat, at whichever coordinator received it.
    pub last_seen: Option<i64>,
}

/// One placement added or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementChange {
    pub content: ContentId,
    pub segment: u32,
    pub index: u16,
    pub node: PeerId,
    /// The placement is closed (the fragment was removed from the node).
    pub removed: bool,
}

impl Db {
    /// Registers this coordinator process as running (`run` is random per start), replacing
    /// the row of an earlier run of the same instance.
    pub async fn coordinator_started(
        &self,
        instance: &str,
        run: &str,
        addr: &str,
        http: &str,
        now: u64,
    ) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO coordinators (instance, run, addr, http, started_at, heartbeat_at)
                 VALUES ($1, $2, $3, $4, $5, $5)
                 ON CONFLICT (instance) DO UPDATE SET run = excluded.run, addr = excluded.addr,
                    http = excluded.http, started_at = excluded.started_at,
                    heartbeat_at = excluded.heartbeat_at",
            )
            .bind(instance)
            .bind(run)
            .bind(addr)
            .bind(http)
            .bind(now as i64)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Refreshes this process's heartbeat. False when another process has since started with
    /// the same instance (a copied data directory): this one must stop.
    pub async fn coordinator_beat(
        &self,
        instance: &str,
        run: &str,
        now: u64,
    ) -> Result<bool, DbError> {
        on_pool!(self, |pool, sql| {
            let done = sqlx::query(
                "UPDATE coordinators SET heartbeat_at = $1 WHERE instance = $2 AND run = $3",
            )
            .bind(now as i64)
            .bind(instance)
            .bind(run)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Every coordinator that ever ran on this database, newest heartbeat first.
    pub async fn coordinators(&self) -> Result<Vec<CoordinatorRow>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT instance, addr, http, started_at, heartbeat_at FROM coordinators
                 ORDER BY heartbeat_at DESC, instance",
            )
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| CoordinatorRow {
                    instance: r.get(0),
                    addr: r.get(1),
                    http: r.get(2),
                    started_at: r.get(3),
                    heartbeat_at: r.get(4),
                })
                .collect())
        })
    }

    /// Takes or renews the lease `name` for `holder` until `expires_at`; true when `holder` has
    /// it. A lease is taken over only once it expired.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: u64,
        expires_at: u64,
    ) -> Result<bool, DbError> {
        on_pool!(self, |pool, sql| {
            let done = sqlx::query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                    expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
            )
            .bind(name)
            .bind(holder)
            .bind(expires_at as i64)
            .bind(now as i64)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Gives up the lease `name` if `holder` has it (a clean shutdown: another takes over at
    /// once rather than after the expiry).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// The holder of the lease `name` and when it expires.
    pub async fn lease(&self, name: &str) -> Result<Option<(String, i64)>, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(
                sqlx::query("SELECT holder, expires_at FROM leases WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| (r.get(0), r.get(1))),
            )
        })
    }

    /// Closes the open sessions of `instance` (its own, at its start: liveness restarts from
    /// scratch) and of every coordinator not heard from since `alive_since` (it stopped or
    /// crashed: nobody watches its nodes). Returns how many were closed.
    pub async fn close_orphan_sessions(
        &self,
        instance: &str,
        now: u64,
        alive_since: u64,
    ) -> Result<u64, DbError> {
        on_pool!(self, |pool, sql| {
            let done = sqlx::query(
                "UPDATE node_sessions SET ended_at = $1,
                    end_reason = CASE WHEN coordinator = $2 THEN 'coordinator restart'
                                      ELSE 'coordinator lost' END
                 WHERE ended_at IS NULL AND (coordinator IS NULL OR coordinator = $2
                    OR coordinator NOT IN
                        (SELECT instance FROM coordinators WHERE heartbeat_at >= $3))",
            )
            .bind(now as i64)
            .bind(instance)
            .bind(alive_since as i64)
            .execute(pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    /// Every node with an open session, with the coordinator it joined through.
    pub async fn open_sessions(&self) -> Result<Vec<OpenSession>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT s.node, s.coordinator, n.addrs, n.quota, n.used, n.last_seen
                 FROM node_sessions s JOIN nodes n ON n.id = s.node
                 WHERE s.ended_at IS NULL",
            )
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    let node: String = r.get(0);
                    let addrs: String = r.get(2);
                    let addrs: Vec<String> = serde_json::from_str(&addrs)
                        .map_err(|e| DbError::Corrupt(format!("node addresses: {e}")))?;
                    Ok(OpenSession {
                        node: parse_peer(&node)?,
                        coordinator: r.get(1),
                        addrs: addrs.iter().filter_map(|a| a.parse().ok()).collect(),
                        quota: r.get::<i64, _>(3) as u64,
                        used: r.get::<i64, _>(4) as u64,
                        last_seen: r.get(5),
                    })
                })
                .collect()
        })
    }

    /// The coordinator `node` has an open session with, if it has one (`Some(None)`: a
    /// session from before version 6).
    pub async fn session_owner(&self, node: &PeerId) -> Result<Option<Option<String>>, DbError> {
        on_pool!(self, |pool, sql| {
            Ok(sqlx::query(
                "SELECT coordinator FROM node_sessions WHERE node = $1 AND ended_at IS NULL
                 ORDER BY started_at DESC LIMIT 1",
            )
            .bind(node.to_string())
            .fetch_optional(pool)
            .await?
            .map(|r| r.get(0)))
        })
    }

    /// Marks this process stopped (cleanly) and gives up its leases: the others close its
    /// nodes' sessions and take over its maintenance at their next round, not after a timeout.
    pub async fn coordinator_stopped(&self, instance: &str, run: &str) -> Result<(), DbError> {
        on_pool!(self, |pool, sql| {
            let mut tx = pool.begin_with(sql.begin_write).await?;
            sqlx::query(
                "UPDATE coordinators SET heartbeat_at = 0 WHERE instance = $1 AND run = $2",
            )
            .bind(instance)
            .bind(run)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM leases WHERE holder = $1")
                .bind(instance)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Placements made or closed at or after `since` (seconds), oldest first; a placement
    /// made and closed in the window appears twice, closed last.
    pub async fn placement_changes(&self, since: u64) -> Result<Vec<PlacementChange>, DbError> {
        on_pool!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT content, segment, idx, node, 0 AS removed, placed_at AS at FROM placements
                    WHERE placed_at >= $1
                 UNION ALL
                 SELECT content, segment, idx, node, 1, removed_at FROM placements
                    WHERE removed_at >= $1
                 ORDER BY 6, 5",
            )
            .bind(since as i64)
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    let content: String = r.get(0);
                    let node: String = r.get(3);
                    Ok(PlacementChange {
                        content: parse_content(&content)?,
                        segment: r.get::<i64, _>(1) as u32,
                        index: r.get::<i64, _>(2) as u16,
                        node: parse_peer(&node)?,
                        removed: r.get::<i32, _>(4) != 0,
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay::Identity;

    crate::db::testing::both_engines! {
    async fn a_lease_has_one_holder_until_it_expires_or_is_released(db) {
        assert!(db.acquire_lease("maintenance", "a", 100, 130).await.unwrap());
        assert!(!db.acquire_lease("maintenance", "b", 110, 140).await.unwrap(), "a holds it");
        assert!(db.acquire_lease("maintenance", "a", 120, 150).await.unwrap(), "a renews");
        assert!(!db.acquire_lease("maintenance", "b", 149, 179).await.unwrap());
        assert!(db.acquire_lease("maintenance", "b", 151, 181).await.unwrap(), "expired");
        assert_eq!(db.lease("maintenance").await.unwrap(), Some(("b".into(), 181)));
        db.release_lease("maintenance", "a").await.unwrap();
        assert_eq!(db.lease("maintenance").await.unwrap().unwrap().0, "b", "not a's to release");
        db.release_lease("maintenance", "b").await.unwrap();
        assert!(db.acquire_lease("maintenance", "a", 152, 182).await.unwrap());
    }}

    crate::db::testing::both_engines! {
    async fn unreachable_reports_received_elsewhere_are_listed_once_per_node(db) {
        let (x, y) = (Identity::generate().peer_id(), Identity::generate().peer_id());
        let report = |node: PeerId, kind: &str, at: i64, coordinator: Option<&str>| {
            crate::db::ProblemRow {
                reporter: "client".into(),
                node: node.to_string(),
                content: "c".into(),
                kind: kind.into(),
                segment: None,
                index: None,
                detail: String::new(),
                at,
                coordinator: coordinator.map(Into::into),
            }
        };
        for r in [
            report(x, "unreachable", 100, Some("other")),
            report(x, "unreachable", 101, Some("other")), // the newest of x's
            report(y, "unreachable", 100, Some("me")),    // received here: acted on already
            report(y, "corrupt", 100, Some("other")),     // not about reachability
            report(y, "unreachable", 100, None),          // from before version 7
            report(y, "unreachable", 80, Some("other")),  // before the window
        ] {
            db.add_problem(&r).await.unwrap();
        }
        let listed = db.unreachable_elsewhere("me", 90).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].0, x);
        // Its id is that of the newer of x's two: the one the window from 101 still holds.
        let again = db.unreachable_elsewhere("me", 101).await.unwrap();
        assert_eq!(again, listed);
        let problems = db.problems().await.unwrap();
        assert_eq!(problems.len(), 6);
        assert_eq!(problems[2].coordinator.as_deref(), Some("me"));
        // Seen from the other coordinator: only y's report received by "me".
        let theirs = db.unreachable_elsewhere("other", 0).await.unwrap();
        assert_eq!(theirs.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [y]);
    }}

    crate::db::testing::both_engines! {
    async fn a_second_process_of_one_instance_is_detected(db) {
        db.coordinator_started("i1", "run1", "/ip4/1", "h1", 10).await.unwrap();
        assert!(db.coordinator_beat("i1", "run1", 11).await.unwrap());
        db.coordinator_started("i1", "run2", "/ip4/2", "h2", 12).await.unwrap();
        assert!(!db.coordinator_beat("i1", "run1", 13).await.unwrap());
        assert!(db.coordinator_beat("i1", "run2", 13).await.unwrap());
        let rows = db.coordinators().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].addr.as_str(), rows[0].heartbeat_at), ("/ip4/2", 13));
    }}

    crate::db::testing::both_engines! {
    async fn orphan_sessions_are_those_of_this_instance_or_of_silent_ones(db) {
        db.coordinator_started("me", "r", "a", "h", 100).await.unwrap();
        db.coordinator_started("alive", "r", "a", "h", 100).await.unwrap();
        db.coordinator_started("dead", "r", "a", "h", 50).await.unwrap();
        let mut nodes = Vec::new();
        for owner in ["me", "alive", "dead", "alive"] {
            let node = Identity::generate().peer_id();
            db.register_node(&node, 1, 1).await.unwrap();
            db.node_joined(&node, owner, &["/ip4/127.0.0.1/udp/1/quic-v1".into()], 9, 1, 90)
                .await
                .unwrap();
            nodes.push(node);
        }
        let open = db.open_sessions().await.unwrap();
        assert_eq!(open.len(), 4);
        assert!(open.iter().any(|s| s.node == nodes[1]
            && s.coordinator.as_deref() == Some("alive")
            && s.quota == 9
            && s.addrs.len() == 1));
        assert_eq!(
            db.session_owner(&nodes[1]).await.unwrap(),
            Some(Some("alive".to_string()))
        );
        assert_eq!(db.close_orphan_sessions("me", 100, 80).await.unwrap(), 2);
        assert_eq!(db.session_owner(&nodes[0]).await.unwrap(), None);
        let mut left: Vec<PeerId> = db.open_sessions().await.unwrap().iter().map(|s| s.node).collect();
        left.sort();
        let mut want = vec![nodes[1], nodes[3]];
        want.sort();
        assert_eq!(left, want, "the live coordinator's nodes stay online");
    }}

    crate::db::testing::both_engines! {
    async fn placement_changes_since_a_time_end_with_the_latest(db) {
        use crate::db::{ContentRow, Placement};
        use overlay::ContentId;
        let [x, y] = [(); 2].map(|()| Identity::generate().peer_id());
        for n in [x, y] {
            db.register_node(&n, 1, 1).await.unwrap();
        }
        db.add_partner("p", &Identity::generate().peer_id(), b"c", 1)
            .await
            .unwrap();
        let content = ContentRow {
            id: ContentId([9; 32]),
            partner: "p".into(),
            size: 10,
            manifest: vec![1],
            content_key: [7; 32],
        };
        let placed = |segment, index, node| Placement {
            segment,
            index,
            node,
        };
        db.add_content(&content, "f", 1, 1, &[placed(0, 0, x), placed(0, 1, y)], 100)
            .await
            .unwrap();
        assert!(db.placement_changes(101).await.unwrap().is_empty());
        // Fragment 0 moves from x to y at 120.
        let repair = crate::db::RepairRow {
            segment: 0,
            index: 0,
            kind: "repair",
            previous: Some(x),
            node: y,
            rebuilt_by: x,
            ticket: "t".into(),
            bytes_fetched: 1,
            bytes_stored: 1,
            at: 120,
        };
        assert!(
            db.record_repairs(&content.id, std::slice::from_ref(&repair), Some(("m", "me", 120)))
                .await
                .is_err(),
            "a repair without the lease is not recorded"
        );
        assert!(db.placement_changes(110).await.unwrap().is_empty());
        assert!(db.acquire_lease("m", "me", 115, 121).await.unwrap());
        db.record_repairs(&content.id, &[repair], Some(("m", "me", 120)))
            .await
            .unwrap();
        let change = |index, node, removed| PlacementChange {
            content: content.id,
            segment: 0,
            index,
            node,
            removed,
        };
        assert_eq!(
            db.placement_changes(110).await.unwrap(),
            vec![change(0, y, false), change(0, x, true)],
            "a removal after the placement of the same second"
        );
        let all = db.placement_changes(0).await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all.last(), Some(&change(0, x, true)));
    }}
}
