//! What each node delivered: the cumulative counters behind receipts and the completion report.
//!
//! Receipts are cumulative per node and superseding (a higher `seq` replaces a lower one), so
//! the counters survive an interrupted download in the resume state. Receipts signed after the
//! last save are lost with the crash; a resumed download therefore restarts `seq` far above the
//! saved value, so no new receipt ever reuses a sequence number an old one may have carried.

use std::collections::BTreeMap;
use std::sync::Mutex;

use libp2p::PeerId;
use overlay::ContentId;
use overlay::receipt::{CompletionBody, NodeBytes, ReceiptBody};
use serde::{Deserialize, Serialize};

/// How far `seq` jumps on resume: more receipts than one node can send between two saves.
pub const RESUME_SEQ_GAP: u64 = 1 << 20;

/// Cumulative counters for one node under one ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTally {
    pub node: PeerId,
    pub fragments: u64,
    pub bytes: u64,
    /// Sequence number of the last receipt signed for this node.
    pub seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Whole download, including earlier interrupted runs.
    total: BTreeMap<PeerId, NodeTally>,
    /// This run only: (fragments, bytes).
    run: BTreeMap<PeerId, (u64, u64)>,
}

/// Per-node counters shared by concurrent fetches.
#[derive(Debug)]
pub struct Accounting {
    ticket_id: [u8; 16],
    content: ContentId,
    inner: Mutex<Inner>,
}

impl Accounting {
    /// Counters for a download, continuing those saved by an interrupted run.
    pub fn new(ticket_id: [u8; 16], content: ContentId, saved: Vec<NodeTally>) -> Self {
        let total = saved
            .into_iter()
            .map(|mut t| {
                if t.seq > 0 {
                    t.seq = t.seq.saturating_add(RESUME_SEQ_GAP);
                }
                (t.node, t)
            })
            .collect();
        Self {
            ticket_id,
            content,
            inner: Mutex::new(Inner {
                total,
                run: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a verified fragment of `bytes` from `node`; returns the receipt body to sign.
    pub fn record(&self, node: PeerId, bytes: u64, time: u64) -> ReceiptBody {
        let mut inner = self.lock();
        let run = inner.run.entry(node).or_default();
        run.0 += 1;
        run.1 += bytes;
        let t = inner.total.entry(node).or_insert_with(|| NodeTally {
            node,
            fragments: 0,
            bytes: 0,
            seq: 0,
        });
        t.fragments += 1;
        t.bytes += bytes;
        t.seq += 1;
        ReceiptBody {
            ticket_id: self.ticket_id,
            content: self.content,
            node,
            fragments: t.fragments,
            bytes: t.bytes,
            seq: t.seq,
            time,
        }
    }

    /// Whether `body` (a receipt a node kept for this ticket) is ahead of the counters for its
    /// node: signed by an earlier run of this client under the same ticket.
    pub fn behind(&self, body: &ReceiptBody) -> bool {
        body.ticket_id == self.ticket_id
            && body.content == self.content
            && self
                .lock()
                .total
                .get(&body.node)
                .is_none_or(|t| body.seq > t.seq)
    }

    /// Continues the counters for the receipt's node from `body`, a receipt this client signed
    /// in an earlier run under the same ticket (its signature checked by the caller). Receipts
    /// are cumulative per (ticket, node): totals restarting from zero would be ignored by the
    /// node as stale, and the node would soon stop serving.
    pub fn continue_from(&self, body: &ReceiptBody) {
        if body.ticket_id != self.ticket_id || body.content != self.content {
            return;
        }
        let mut inner = self.lock();
        let t = inner.total.entry(body.node).or_insert_with(|| NodeTally {
            node: body.node,
            fragments: 0,
            bytes: 0,
            seq: 0,
        });
        t.fragments = t.fragments.max(body.fragments);
        t.bytes = t.bytes.max(body.bytes);
        t.seq = t.seq.max(body.seq);
    }

    /// The counters of the whole download, to persist.
    pub fn snapshot(&self) -> Vec<NodeTally> {
        self.lock().total.values().cloned().collect()
    }

    /// Bytes and fragments per node in this run.
    pub fn this_run(&self) -> BTreeMap<PeerId, (u64, u64)> {
        self.lock().run.clone()
    }

    /// The completion report's body: what every node delivered over the whole download.
    pub fn completion(&self, time: u64) -> CompletionBody {
        CompletionBody {
            ticket_id: self.ticket_id,
            content: self.content,
            per_node: self
                .lock()
                .total
                .values()
                .map(|t| NodeBytes {
                    node: t.node,
                    fragments: t.fragments,
                    bytes: t.bytes,
                })
                .collect(),
            time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_cumulative_and_sequenced_per_node() {
        let a = PeerId::random();
        let b = PeerId::random();
        let acc = Accounting::new([1; 16], ContentId([2; 32]), vec![]);
        let r1 = acc.record(a, 10, 100);
        let r2 = acc.record(b, 5, 101);
        let r3 = acc.record(a, 10, 102);
        assert_eq!((r1.fragments, r1.bytes, r1.seq), (1, 10, 1));
        assert_eq!((r2.fragments, r2.bytes, r2.seq), (1, 5, 1));
        assert_eq!((r3.fragments, r3.bytes, r3.seq), (2, 20, 2));
        assert_eq!(r3.ticket_id, [1; 16]);
        let c = acc.completion(200);
        assert_eq!(c.per_node.len(), 2);
        assert_eq!(c.per_node.iter().map(|n| n.bytes).sum::<u64>(), 25);
    }

    #[test]
    fn a_new_run_continues_from_a_receipt_of_an_earlier_one() {
        let a = PeerId::random();
        let earlier = Accounting::new([1; 16], ContentId([2; 32]), vec![]);
        earlier.record(a, 10, 1);
        let kept = earlier.record(a, 10, 2);
        let again = Accounting::new([1; 16], ContentId([2; 32]), vec![]);
        assert!(again.behind(&kept));
        again.continue_from(&kept);
        assert!(!again.behind(&kept));
        let r = again.record(a, 5, 3);
        assert_eq!((r.fragments, r.bytes, r.seq), (3, 25, 3));
        assert_eq!(again.this_run()[&a], (1, 5));
        // Another ticket's or content's receipt changes nothing.
        let other = Accounting::new([9; 16], ContentId([2; 32]), vec![]);
        assert!(!other.behind(&kept));
        other.continue_from(&kept);
        assert_eq!(other.record(a, 5, 3).bytes, 5);
    }

    #[test]
    fn resumed_counters_continue_and_seq_jumps() {
        let a = PeerId::random();
        let first = Accounting::new([1; 16], ContentId([2; 32]), vec![]);
        first.record(a, 10, 1);
        first.record(a, 10, 2);
        let saved = first.snapshot();
        let second = Accounting::new([1; 16], ContentId([2; 32]), saved);
        let r = second.record(a, 10, 3);
        assert_eq!((r.fragments, r.bytes), (3, 30));
        assert_eq!(r.seq, 3 + RESUME_SEQ_GAP);
        assert_eq!(second.this_run()[&a], (1, 10));
        assert_eq!(second.completion(4).per_node[0].bytes, 30);
    }
}
