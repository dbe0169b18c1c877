//! Receipt credit: how far the node serves a client ahead of its receipts, and never beyond
//! what the client's ticket sold.
//!
//! Per ticket (a ticket names exactly one client) the node counts the bytes it served under
//! the ticket, and the bytes served but not yet covered by a receipt: the *outstanding* bytes.
//! A delivery is admitted only while the outstanding bytes stay within the credit, so a client
//! that stops signing receipts gets at most one credit's worth of unpaid work out of the node.
//! A fragment larger than the whole credit is still served when nothing is outstanding, or it
//! could never be served at all.
//!
//! Receipts are cumulative, so each accepted one covers what its totals grew over the previous
//! one kept for the ticket. When no previous one is kept (after a restart of either side, or an
//! eviction) its full total counts: totals no longer line up then, and erring towards the
//! client keeps an honest one from being locked out. Outstanding bytes never go below zero.
//!
//! State is bounded: the least recently used tickets are forgotten beyond the capacity. No I/O
//! and no clock: the fetch handler feeds deliveries and receipts.

use std::num::NonZeroUsize;

use lru::LruCache;

/// Why a delivery was not admitted; the text is sent to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "ticket allowance exhausted: this node has served {served} of the ticket's {allowance} bytes and the fragment has {len} more; the ticket cannot buy more from this node"
    )]
    Allowance {
        served: u64,
        allowance: u64,
        len: u64,
    },
    #[error(
        "receipts lag: {outstanding} bytes delivered without a receipt (credit {credit}); send receipts to continue"
    )]
    ReceiptsLag { outstanding: u64, credit: u64 },
}

/// What the node counts for one ticket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TicketCount {
    /// Bytes this node delivered (or is delivering) under the ticket.
    pub served: u64,
    /// Bytes delivered and not yet covered by a receipt.
    pub outstanding: u64,
}

/// Served and outstanding bytes per ticket, for the least recently used `capacity` tickets.
pub struct CreditBook {
    tickets: LruCache<[u8; 16], TicketCount>,
    credit: u64,
}

impl CreditBook {
    /// Tracks up to `capacity` tickets, letting each run `credit` bytes ahead of its receipts.
    pub fn new(capacity: usize, credit: u64) -> Self {
        Self {
            tickets: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            credit,
        }
    }

    /// Admits the delivery of `len` bytes under a ticket whose allowance is `allowance`,
    /// counting them at once (so concurrent streams cannot all pass the same check); or says
    /// why not, counting nothing. A delivery that then fails is given back with [`undo`].
    ///
    /// [`undo`]: CreditBook::undo
    pub fn admit(&mut self, ticket_id: [u8; 16], allowance: u64, len: u64) -> Result<(), Refusal> {
        let credit = self.credit;
        let count = self
            .tickets
            .get_or_insert_mut(ticket_id, TicketCount::default);
        if count.served.saturating_add(len) > allowance {
            return Err(Refusal::Allowance {
                served: count.served,
                allowance,
                len,
            });
        }
        if count.outstanding > 0 && count.outstanding.saturating_add(len) > credit {
            return Err(Refusal::ReceiptsLag {
                outstanding: count.outstanding,
                credit,
            });
        }
        count.served = count.served.saturating_add(len);
        count.outstanding = count.outstanding.saturating_add(len);
        Ok(())
    }

    /// Gives back an admitted delivery of `len` bytes that did not reach the client.
    pub fn undo(&mut self, ticket_id: [u8; 16], len: u64) {
        if let Some(count) = self.tickets.get_mut(&ticket_id) {
            count.served = count.served.saturating_sub(len);
            count.outstanding = count.outstanding.saturating_sub(len);
        }
    }

    /// A newly accepted receipt covers `covered` more bytes of the ticket.
    pub fn receipted(&mut self, ticket_id: [u8; 16], covered: u64) {
        if let Some(count) = self.tickets.get_mut(&ticket_id) {
            count.outstanding = count.outstanding.saturating_sub(covered);
        }
    }

    /// What is counted for a ticket (zero if it is not tracked).
    pub fn count(&self, ticket_id: &[u8; 16]) -> TicketCount {
        self.tickets.peek(ticket_id).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: [u8; 16] = [1; 16];
    const ALLOWANCE: u64 = 1 << 40;

    #[test]
    fn a_client_without_receipts_is_cut_off_at_the_credit() {
        let mut book = CreditBook::new(10, 1000);
        for _ in 0..3 {
            book.admit(T, ALLOWANCE, 300).unwrap();
        }
        assert_eq!(book.count(&T).outstanding, 900);
        let refusal = book.admit(T, ALLOWANCE, 300).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::ReceiptsLag {
                outstanding: 900,
                credit: 1000
            }
        );
        assert_eq!(
            refusal.to_string(),
            "receipts lag: 900 bytes delivered without a receipt (credit 1000); send receipts to continue"
        );
        // A refusal counts nothing; a delivery that still fits is served.
        book.admit(T, ALLOWANCE, 100).unwrap();
        assert_eq!(
            book.count(&T),
            TicketCount {
                served: 1000,
                outstanding: 1000
            }
        );
        assert!(book.admit(T, ALLOWANCE, 1).is_err());
    }

    #[test]
    fn receipts_cover_what_they_grew_and_never_below_zero() {
        let mut book = CreditBook::new(10, 1000);
        book.admit(T, ALLOWANCE, 600).unwrap();
        book.receipted(T, 600);
        assert_eq!(book.count(&T).outstanding, 0);
        for _ in 0..10 {
            book.admit(T, ALLOWANCE, 600).unwrap();
            book.receipted(T, 600);
        }
        assert_eq!(
            book.count(&T),
            TicketCount {
                served: 6600,
                outstanding: 0
            }
        );
        // A receipt covering more than was outstanding (the node restarted): lenient.
        book.admit(T, ALLOWANCE, 600).unwrap();
        book.receipted(T, 1 << 30);
        assert_eq!(book.count(&T).outstanding, 0);
        // A receipt for a ticket never served here changes nothing.
        book.receipted([2; 16], 100);
        assert_eq!(book.count(&[2; 16]), TicketCount::default());
    }

    #[test]
    fn a_fragment_larger_than_the_credit_is_served_when_nothing_is_outstanding() {
        let mut book = CreditBook::new(10, 1000);
        book.admit(T, ALLOWANCE, 5000).unwrap();
        assert!(matches!(
            book.admit(T, ALLOWANCE, 1),
            Err(Refusal::ReceiptsLag {
                outstanding: 5000,
                ..
            })
        ));
        book.receipted(T, 5000);
        book.admit(T, ALLOWANCE, 5000).unwrap();
    }

    #[test]
    fn never_beyond_the_allowance_even_with_receipts() {
        let mut book = CreditBook::new(10, 1 << 30);
        book.admit(T, 1000, 400).unwrap();
        book.receipted(T, 400);
        book.admit(T, 1000, 600).unwrap();
        book.receipted(T, 600);
        let refusal = book.admit(T, 1000, 1).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Allowance {
                served: 1000,
                allowance: 1000,
                len: 1
            }
        );
        assert!(
            refusal
                .to_string()
                .starts_with("ticket allowance exhausted")
        );
        assert!(
            book.admit(T, 5000, 1).is_ok(),
            "the allowance is the ticket's"
        );
    }

    #[test]
    fn an_undone_delivery_is_given_back() {
        let mut book = CreditBook::new(10, 1000);
        book.admit(T, 1000, 700).unwrap();
        book.undo(T, 700);
        assert_eq!(book.count(&T), TicketCount::default());
        book.admit(T, 1000, 1000).unwrap();
    }

    #[test]
    fn tickets_are_bounded_and_independent() {
        let mut book = CreditBook::new(2, 1000);
        book.admit([1; 16], ALLOWANCE, 900).unwrap();
        book.admit([2; 16], ALLOWANCE, 900).unwrap();
        assert!(book.admit([1; 16], ALLOWANCE, 900).is_err());
        // A third ticket evicts the least recently used one (ticket 2).
        book.admit([3; 16], ALLOWANCE, 900).unwrap();
        assert_eq!(book.count(&[2; 16]), TicketCount::default());
        assert_eq!(book.count(&[1; 16]).outstanding, 900);
    }
}
