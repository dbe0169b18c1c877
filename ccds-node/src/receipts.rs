//! Client receipts: the node's evidence of work done for accounting.
//!
//! After each fetch the client signs a cumulative receipt for this node and ticket. The node
//! checks it against the ticket it served ([`check`]), keeps the newest one per ticket in a
//! bounded map, and appends every newer receipt to `DIR/receipts.jsonl`, from which the node's
//! periodic reports claim its work (see [`crate::report`]). What each new receipt covers feeds
//! the receipt credit ([`crate::credit`]), which stops serving a client whose receipts lag.

use std::fs::File;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lru::LruCache;
use overlay::PeerId;
use overlay::identity::SignatureError;
use overlay::receipt::{Receipt, ReceiptBody};
use overlay::ticket::TicketBody;
use overlay::{ContentId, proto};

/// Why a receipt was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("receipt not signed by the ticket's client: {0}")]
    Signature(#[from] SignatureError),
    #[error("receipt is for node {found}, not this node")]
    WrongNode { found: PeerId },
    #[error("receipt is for ticket {found}, not the ticket served ({expected})")]
    WrongTicket { expected: String, found: String },
    #[error("receipt is for content {found}, the ticket for {expected}")]
    WrongContent {
        expected: ContentId,
        found: ContentId,
    },
}

/// Checks that `receipt` was signed by the ticket's client, for this node and this ticket.
pub fn check<'a>(
    receipt: &'a proto::FetchReceipt,
    ticket: &TicketBody,
    node: &PeerId,
) -> Result<&'a ReceiptBody, ReceiptError> {
    let body = receipt.verify_by(&ticket.client)?;
    if &body.node != node {
        return Err(ReceiptError::WrongNode { found: body.node });
    }
    if body.ticket_id != ticket.ticket_id {
        return Err(ReceiptError::WrongTicket {
            expected: hex::encode(ticket.ticket_id),
            found: hex::encode(body.ticket_id),
        });
    }
    if body.content != ticket.content {
        return Err(ReceiptError::WrongContent {
            expected: ticket.content,
            found: body.content,
        });
    }
    Ok(body)
}

/// What [`ReceiptBook::record`] did with a checked receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Newer than any kept for its ticket: kept and logged. `covered` is how much its byte
    /// total grew over the receipt kept before (its whole total when none was kept).
    New { covered: u64 },
    /// Not newer (same or lower `seq`): ignored, the newer one stays.
    Stale,
    /// Newer `seq` but lower totals than the kept one: receipts are cumulative, so it is
    /// ignored as invalid.
    Regressed,
}

/// The newest receipt per ticket, bounded, backed by an append-only JSON-lines log.
pub struct ReceiptBook {
    latest: Mutex<LruCache<[u8; 16], Receipt>>,
    log: Mutex<File>,
    path: PathBuf,
}

impl ReceiptBook {
    /// Opens (creating if needed) the log at `path`, keeping at most `capacity` tickets in memory.
    pub fn open(path: &Path, capacity: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let log = File::options().create(true).append(true).open(path)?;
        Ok(Self {
            latest: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            log: Mutex::new(log),
            path: path.to_path_buf(),
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps `receipt` (already [`check`]ed) if it supersedes the kept one, appending it to the
    /// log. Blocking (file I/O).
    pub fn record(&self, receipt: Receipt) -> std::io::Result<Recorded> {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let body = &receipt.body;
        let mut covered = body.bytes;
        if let Some(kept) = latest.get(&body.ticket_id) {
            if body.seq <= kept.body.seq {
                return Ok(Recorded::Stale);
            }
            if body.bytes < kept.body.bytes || body.fragments < kept.body.fragments {
                return Ok(Recorded::Regressed);
            }
            covered = body.bytes - kept.body.bytes;
        }
        let mut line = serde_json::to_vec(&receipt).expect("receipts always serialise");
        line.push(b'\n');
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&line)?;
        latest.put(body.ticket_id, receipt);
        Ok(Recorded::New { covered })
    }

    /// The newest receipt kept for a ticket.
    pub fn latest(&self, ticket_id: &[u8; 16]) -> Option<Receipt> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .peek(ticket_id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay::{Identity, Signed};

    fn ticket(client: &Identity) -> TicketBody {
        TicketBody {
            ticket_id: [3; 16],
            content: ContentId([4; 32]),
            client: client.peer_id(),
            not_after: u64::MAX,
            allowance: 1 << 30,
        }
    }

    fn receipt(
        client: &Identity,
        ticket: &TicketBody,
        node: PeerId,
        seq: u64,
        bytes: u64,
    ) -> Receipt {
        Signed::sign(
            client,
            ReceiptBody {
                ticket_id: ticket.ticket_id,
                content: ticket.content,
                node,
                fragments: seq,
                bytes,
                seq,
                time: 0,
            },
        )
    }

    #[test]
    fn check_refuses_foreign_signer_node_ticket_and_content() {
        let client = Identity::generate();
        let node = Identity::generate().peer_id();
        let t = ticket(&client);
        let good = receipt(&client, &t, node, 1, 10);
        assert!(check(&good, &t, &node).is_ok());
        let forged = receipt(&Identity::generate(), &t, node, 1, 10);
        assert!(matches!(
            check(&forged, &t, &node),
            Err(ReceiptError::Signature(_))
        ));
        let other_node = Identity::generate().peer_id();
        assert!(matches!(
            check(&good, &t, &other_node),
            Err(ReceiptError::WrongNode { .. })
        ));
        let other_ticket = TicketBody {
            ticket_id: [9; 16],
            ..t.clone()
        };
        assert!(matches!(
            check(&good, &other_ticket, &node),
            Err(ReceiptError::WrongTicket { .. })
        ));
        let other_content = TicketBody {
            content: ContentId([5; 32]),
            ..t
        };
        assert!(matches!(
            check(&good, &other_content, &node),
            Err(ReceiptError::WrongContent { .. })
        ));
    }

    #[test]
    fn keeps_the_newest_receipt_and_logs_each_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let book = ReceiptBook::open(&tmp.path().join("r.jsonl"), 10).unwrap();
        let client = Identity::generate();
        let node = Identity::generate().peer_id();
        let t = ticket(&client);
        assert_eq!(
            book.record(receipt(&client, &t, node, 1, 100)).unwrap(),
            Recorded::New { covered: 100 }
        );
        assert_eq!(
            book.record(receipt(&client, &t, node, 2, 250)).unwrap(),
            Recorded::New { covered: 150 }
        );
        assert_eq!(
            book.record(receipt(&client, &t, node, 2, 250)).unwrap(),
            Recorded::Stale
        );
        assert_eq!(
            book.record(receipt(&client, &t, node, 1, 100)).unwrap(),
            Recorded::Stale
        );
        assert_eq!(
            book.record(receipt(&client, &t, node, 3, 150)).unwrap(),
            Recorded::Regressed
        );
        assert_eq!(book.latest(&t.ticket_id).unwrap().body.seq, 2);
        let log = std::fs::read_to_string(book.path()).unwrap();
        let lines: Vec<Receipt> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].body.bytes, 250);
        assert!(lines[1].verify_by(&client.peer_id()).is_ok());
    }
}
