//! The accounting driver over a real database (each test on SQLite and on PostgreSQL) and real
//! signatures: reports in, exact ledger balances and verdicts out.

use overlay::identity::encode;
use overlay::manifest::{Cipher, Manifest};
use overlay::receipt::ReceiptBody;
use overlay::report::{HeldContent, NodeReport, NodeReportBody, ServedClaim};
use overlay::{ContentId, Identity, PeerId, Signed};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::db::testing::both_engines;
use crate::db::{ClaimRow, ContentRow, Db, Ingested, Placement, TicketRow};
use crate::policy::{GB, MONTH_SECS};

pub(crate) const T0: u64 = 1_000_000;
pub(crate) const NODES: usize = 4;
const SEGMENTS: u64 = 4;

/// A content held by four nodes, a partner and a ticket sold: the accounting tests' world (also
/// what `db::copy`'s tests fill a database with).
pub(crate) struct World {
    pub(crate) db: Db,
    pub(crate) nodes: Vec<Identity>,
    client: Identity,
    pub(crate) content: ContentId,
    pub(crate) flen: u64,
    ticket: [u8; 16],
    seqs: Vec<u64>,
    config: AccountingConfig,
}

/// Fragments of node `n`: one per segment, index `(n + s) % NODES`.
fn held_by(n: usize) -> Vec<(u32, u16)> {
    (0..SEGMENTS as u32)
        .map(|s| (s, ((n + s as usize) % NODES) as u16))
        .collect()
}

impl World {
    pub(crate) async fn new(db: Db) -> Self {
        let root = Identity::generate();
        let nodes: Vec<Identity> = (0..NODES).map(|_| Identity::generate()).collect();
        for (i, n) in nodes.iter().enumerate() {
            db.register_node(&n.peer_id(), i as u64 + 1, T0)
                .await
                .unwrap();
        }
        db.add_partner("p", &Identity::generate().peer_id(), b"cert", T0)
            .await
            .unwrap();
        let manifest = Manifest {
            size: SEGMENTS << 20,
            segment_size: 1 << 20,
            data_shards: 2,
            parity_shards: 2,
            spare_shards: 0,
            cipher: Cipher::Aes256Gcm,
            created: T0,
            hashes: vec![[0; 32]; SEGMENTS as usize * NODES],
        };
        let flen = manifest.fragment_len(0) as u64;
        let content = manifest.content_id();
        let signed = Signed::sign(&root, manifest);
        let placements: Vec<Placement> = (0..NODES)
            .flat_map(|n| {
                let node = nodes[n].peer_id();
                held_by(n)
                    .into_iter()
                    .map(move |(segment, index)| Placement {
                        segment,
                        index,
                        node,
                    })
            })
            .collect();
        db.add_content(
            &ContentRow {
                id: content,
                partner: "p".into(),
                size: SEGMENTS << 20,
                manifest: encode(&signed),
                content_key: [1; 32],
            },
            "file",
            2,
            2,
            &placements,
            T0,
        )
        .await
        .unwrap();
        let client = Identity::generate();
        let config = AccountingConfig::default();
        let ticket = [7; 16];
        let allowance = 2 * SEGMENTS * 2 * flen;
        db.add_ticket(&TicketRow {
            id: hex::encode(ticket),
            content: content.to_string(),
            client: client.peer_id().to_string(),
            partner: "p".into(),
            not_after: (T0 + 7 * 86_400) as i64,
            allowance: allowance as i64,
            issued_at: T0 as i64,
            price: config.default_price(allowance),
            source: "issued",
        })
        .await
        .unwrap();
        Self {
            db,
            nodes,
            client,
            content,
            flen,
            ticket,
            seqs: vec![0; NODES],
            config,
        }
    }

    fn receipt(&self, n: usize, fragments: u64, seq: u64) -> overlay::receipt::Receipt {
        Signed::sign(
            &self.client,
            ReceiptBody {
                ticket_id: self.ticket,
                content: self.content,
                node: self.nodes[n].peer_id(),
                fragments,
                bytes: fragments * self.flen,
                seq,
                time: T0 + 10,
            },
        )
    }

    /// Node `n` reports claiming `claimed` bytes backed by a receipt for `fragments`.
    pub(crate) fn report(&mut self, n: usize, fragments: u64, claimed: u64, to: u64) -> NodeReport {
        self.seqs[n] += 1;
        let receipt = self.receipt(n, fragments, fragments);
        Signed::sign(
            &self.nodes[n],
            NodeReportBody {
                node: self.nodes[n].peer_id(),
                seq: self.seqs[n],
                from: T0,
                to,
                served: vec![ServedClaim {
                    ticket_id: self.ticket,
                    content: self.content,
                    fragments,
                    bytes: claimed,
                    receipt: Some(receipt),
                }],
                held: Some(vec![HeldContent {
                    content: self.content,
                    fragments: held_by(n),
                }]),
                sessions: vec![(T0, to)],
                upload_bps: 0,
            },
        )
    }

    pub(crate) async fn ingest(&self, report: &NodeReport, now: u64) -> Ingested {
        self.db.ingest_report(report, now).await.unwrap()
    }

    pub(crate) async fn reconcile(&self, now: u64) -> RunOutcome {
        let mut rng = StdRng::seed_from_u64(now);
        reconcile(&self.db, &self.config, now, &mut rng)
            .await
            .unwrap()
    }

    pub(crate) async fn balance(&self, n: usize) -> (i64, i64) {
        let id = self.nodes[n].peer_id().to_string();
        (
            self.db.balance(&accounts::available(&id)).await.unwrap(),
            self.db.balance(&accounts::held(&id)).await.unwrap(),
        )
    }

    fn peer(&self, n: usize) -> PeerId {
        self.nodes[n].peer_id()
    }
}

fn served_pay(bytes: u64) -> i64 {
    (u128::from(bytes) * 1_000_000 / u128::from(GB)) as i64
}

fn stored_pay(byte_secs: u128) -> i64 {
    (byte_secs * 2_000_000 / (u128::from(GB) * u128::from(MONTH_SECS))) as i64
}

both_engines! {
    async fn honest_nodes_are_paid_exactly_and_reports_count_once(db) {
        let mut w = World::new(db).await;
        let t1 = T0 + 100_000;
        for n in 0..NODES {
            let r = w.report(n, 2, 2 * w.flen, t1);
            assert_eq!(
                w.ingest(&r, t1).await,
                Ingested::Accepted {
                    new: 1,
                    duplicate: 0
                }
            );
            // The same report again is a replay: refused, nothing counted.
            assert_eq!(w.ingest(&r, t1).await, Ingested::Stale { last_seq: 1 });
        }
        let run = w.reconcile(t1).await;
        assert_eq!(run.summary["conflict"], 0, "{}", run.summary);
        assert_eq!(run.summary["confirmed"], NODES as u64);
        let fragments_bytes = u128::from(SEGMENTS * w.flen);
        for n in 0..NODES {
            let expected = served_pay(2 * w.flen) + stored_pay(fragments_bytes * u128::from(t1 - T0));
            let (available, held) = w.balance(n).await;
            assert_eq!(available + held, expected, "node {n}");
            // New identities have three quarters of their earnings held back.
            assert_eq!(held, (expected as i128 * 750_000 / 1_000_000) as i64);
        }

        // A new report with the same receipt: a duplicate, credited once; storage keeps accruing.
        let t2 = t1 + 50_000;
        let (before, before_held) = w.balance(0).await;
        let again = w.report(0, 2, 2 * w.flen, t2);
        assert_eq!(
            w.ingest(&again, t2).await,
            Ingested::Accepted {
                new: 0,
                duplicate: 1
            }
        );
        let run = w.reconcile(t2).await;
        assert_eq!(run.summary["claims"], 0, "nothing new to reconcile");
        let (after, after_held) = w.balance(0).await;
        assert_eq!(
            (after + after_held) - (before + before_held),
            stored_pay(fragments_bytes * u128::from(t2 - t1)),
            "only the storage of the second period"
        );
        // The ledger is double entry: every account together sums to zero.
        let sum: i64 = w.db.balances().await.unwrap().iter().map(|(_, b)| b).sum();
        assert_eq!(sum, 0);
    }
}

both_engines! {
    async fn over_claims_are_conflicts_that_forfeit_held_pay_and_repeat_offenders_owe_debt(db) {
        let mut w = World::new(db).await;
        let t1 = T0 + 100_000;
        for n in 0..NODES {
            let r = w.report(n, 2, 2 * w.flen, t1);
            w.ingest(&r, t1).await;
        }
        w.reconcile(t1).await;
        let (_, held) = w.balance(3).await;
        assert!(held > 0);

        // Node 3 claims ten times what its receipt signs.
        let t2 = t1 + 1_000;
        let r = w.report(3, 3, 30 * w.flen, t2);
        w.ingest(&r, t2).await;
        let run = w.reconcile(t2).await;
        assert_eq!(run.summary["conflict"], 1, "{}", run.summary);
        assert_eq!(run.summary["by_kind"]["beyond_receipts"], 1);
        let (available, _) = w.balance(3).await;
        let id3 = w.peer(3).to_string();
        assert_eq!(
            w.db.ledger_sum(&id3, "forfeit").await.unwrap(),
            held,
            "everything held before the offence is forfeited"
        );
        assert!(available >= 0, "a first offence never creates debt");
        let verdicts =
            w.db.verdicts(Some(&w.peer(3).to_string()), 10)
                .await
                .unwrap();
        assert_eq!(verdicts.len(), 1);
        assert!(verdicts[0].offence);
        let evidence = verdicts[0].evidence.to_string();
        assert!(
            evidence.contains("receipt") && evidence.contains("report"),
            "{evidence}"
        );

        // Again: the second offence books the fine in full, into debt.
        let t3 = t2 + 1_000;
        let r = w.report(3, 4, 60 * w.flen, t3);
        w.ingest(&r, t3).await;
        w.reconcile(t3).await;
        let (available, _) = w.balance(3).await;
        assert!(available < 0, "repeat offender owes: {available}");
        let state: serde_json::Value = serde_json::from_str(
            &w.db
                .node_state(crate::db::StateTable::Pay, &w.peer(3).to_string())
                .await
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(state["offences"].as_array().unwrap().len(), 2);
        // Honest neighbours were not touched.
        let (a0, h0) = w.balance(0).await;
        assert!(a0 > 0 && h0 > 0);
    }
}

both_engines! {
    async fn unsold_tickets_wait_for_the_sales_record_and_storage_never_assigned_is_a_conflict(db) {
        let mut w = World::new(db).await;
        w.config.reconcile.sales_grace_secs = 500;
        w.ticket = [9; 16]; // never sold
        let t1 = T0 + 100;
        let r = w.report(1, 2, 2 * w.flen, t1);
        w.ingest(&r, t1).await;
        let run = w.reconcile(t1).await;
        assert_eq!(run.summary["pending_tickets"], 1);
        assert_eq!(run.summary["conflict"], 0);
        // Past the grace period it is a conflict, paid nothing.
        let t2 = t1 + 1_000;
        let run = w.reconcile(t2).await;
        assert_eq!(run.summary["by_kind"]["unsold"], 1, "{}", run.summary);

        // Node 2 lists fragments it was never given.
        let mut body = w.report(2, 0, 0, t2 + 10).body;
        body.served.clear();
        body.seq = 10;
        body.held = Some(vec![HeldContent {
            content: w.content,
            fragments: vec![(0, 0), (1, 0), (2, 0)],
        }]);
        let r = Signed::sign(&w.nodes[2], body);
        w.ingest(&r, t2 + 10).await;
        let run = w.reconcile(t2 + 20).await;
        assert_eq!(
            run.summary["by_kind"]["storage_never_assigned"], 1,
            "{}",
            run.summary
        );
        // And the placements it no longer lists are closed: the node lost them.
        assert_eq!(run.summary["lost_placements"], 4 - 1);
    }
}

both_engines! {
    async fn a_claim_changed_while_a_run_reads_keeps_its_ticket_dirty(db) {
        let mut w = World::new(db).await;
        let t1 = T0 + 100;
        let r = w.report(0, 2, 2 * w.flen, t1);
        w.ingest(&r, t1).await;
        let read_upto = w.db.dirty_mark().await.unwrap();
        let dirty = |db: crate::db::Db| async move {
            let mark = db.dirty_mark().await.unwrap();
            let mut tickets = Vec::new();
            db.dirty_claims(mark, |t| tickets.push(t)).await.unwrap();
            tickets
        };
        assert_eq!(dirty(w.db.clone()).await.len(), 1);

        // Node 1's claim under the same ticket lands after a run read up to `read_upto`.
        let r = w.report(1, 2, 2 * w.flen, t1);
        w.ingest(&r, t1).await;
        let settled = |upto: i64, after_run: i64| crate::db::RunWrites {
            started_at: t1,
            period_from: T0,
            period_to: t1,
            after_run,
            settled_upto: upto,
            summary: serde_json::json!({}),
            ..Default::default()
        };
        assert_eq!(w.db.write_run(&settled(read_upto, 0)).await.unwrap(), 1);
        let left = dirty(w.db.clone()).await;
        assert_eq!(
            left.len(),
            1,
            "the ticket changed during the run stays dirty"
        );
        assert_eq!(ClaimRow::unpack(&left[0].packed).unwrap().len(), 2);

        // A run that began before run 1 was written (another coordinator's, say) is refused
        // whole: it would settle what run 1 settled.
        let upto = w.db.dirty_mark().await.unwrap();
        let refused = w.db.write_run(&settled(upto, 0)).await;
        assert!(
            matches!(refused, Err(crate::db::DbError::Conflict(_))),
            "{refused:?}"
        );
        assert_eq!(w.db.last_run_id().await.unwrap(), 1);
        assert_eq!(dirty(w.db.clone()).await.len(), 1, "nothing written");

        // A run that read everything settles it.
        w.db.write_run(&settled(upto, 1)).await.unwrap();
        assert!(dirty(w.db.clone()).await.is_empty());
    }
}

both_engines! {
    async fn storage_a_run_misses_is_paid_by_the_run_that_sees_the_next_listing(db) {
        let mut w = World::new(db).await;
        let bytes = u128::from(SEGMENTS * w.flen);
        let t1 = T0 + 100_000;
        for n in 0..NODES {
            let r = w.report(n, 2, 2 * w.flen, t1);
            w.ingest(&r, t1).await;
        }
        w.reconcile(t1).await;
        // A listing counts for the run whose period it falls in, bounds included: this run, at
        // t1 + 10, is the last one node 0's listing at t1 is fresh for.
        let t1 = t1 + 10;
        w.reconcile(t1).await;
        let total = |(available, held): (i64, i64)| available + held;
        let before = total(w.balance(0).await);
        let before_1 = total(w.balance(1).await);

        // Node 0's next listing is late: the run at t2 settles nothing of its storage...
        let t2 = t1 + 50_000;
        for n in 1..NODES {
            let r = w.report(n, 2, 2 * w.flen, t2);
            w.ingest(&r, t2).await;
        }
        w.reconcile(t2).await;
        assert_eq!(total(w.balance(0).await), before);
        assert!(
            total(w.balance(1).await) - before_1 >= stored_pay(bytes * u128::from(t2 - t1)),
            "a node that listed is settled as usual"
        );

        // ...and the run that sees it pays everything since t1, as if nothing had been late.
        let t3 = t2 + 1_000;
        for n in 0..2 {
            let r = w.report(n, 2, 2 * w.flen, t3);
            w.ingest(&r, t3).await;
        }
        w.reconcile(t3).await;
        let (late, punctual) = (
            total(w.balance(0).await) - before,
            total(w.balance(1).await) - before_1,
        );
        assert!(late >= stored_pay(bytes * u128::from(t3 - t1)), "{late}");
        // Node 1, which listed every time, earned the same over (t1, t3], up to a micro-credit of
        // rounding per run.
        assert!((late - punctual).abs() <= 2, "{late} against {punctual}");
    }
}
