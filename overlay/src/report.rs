//! Node-signed periodic reports: the work a node claims, the fragments it holds, its uptime.
//!
//! A report is a *claim*; the CM believes none of it until reconciliation has matched it against
//! the witnesses it does not control (client receipts, its own placement records, sales records,
//! audits). Each report carries a per-node sequence number that only grows, so a report seen
//! twice, or replayed later, is recognised and counts once.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::identity::{ContentId, Domain, Signed};
use crate::receipt::Receipt;

/// Largest report frame on `/ccds/control/1`.
pub const MAX_REPORT_MSG: usize = 16 << 20;
/// Most served claims in one report; a node with more sends several reports in a row.
pub const MAX_CLAIMS_PER_REPORT: usize = 20_000;
/// Most fragments listed as held in one report (about 6 bytes each on the wire).
pub const MAX_HELD_PER_REPORT: usize = 2_000_000;
/// Most online sessions in one report.
pub const MAX_SESSIONS_PER_REPORT: usize = 10_000;

/// Work a node claims under one ticket, backed (if honest) by the client's newest receipt.
///
/// Totals are cumulative for the ticket, like receipts: a later claim for the same ticket
/// supersedes an earlier one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedClaim {
    pub ticket_id: [u8; 16],
    pub content: ContentId,
    pub fragments: u64,
    pub bytes: u64,
    /// The newest receipt the client signed for this node and ticket.
    pub receipt: Option<Receipt>,
}

/// Fragments of one content a node holds: `(segment, index)` pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldContent {
    pub content: ContentId,
    pub fragments: Vec<(u32, u16)>,
}

/// What a node reports about one period of its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReportBody {
    pub node: PeerId,
    /// Strictly increasing per node; the CM refuses a sequence number it has already seen.
    pub seq: u64,
    /// Period covered, Unix seconds.
    pub from: u64,
    pub to: u64,
    /// Work served with its receipts (at most [`MAX_CLAIMS_PER_REPORT`]).
    pub served: Vec<ServedClaim>,
    /// Every fragment held at `to`; `None` in the follow-up reports of a period too large for
    /// one report.
    pub held: Option<Vec<HeldContent>>,
    /// Online sessions `(start, end)` as the node saw them within the period.
    pub sessions: Vec<(u64, u64)>,
    /// Upload bandwidth the node measured while serving, bytes per second (0: unknown).
    pub upload_bps: u64,
}

impl Domain for NodeReportBody {
    const DOMAIN: &'static [u8] = b"ccds/node-report/v1";
}

/// A report signed by its node.
pub type NodeReport = Signed<NodeReportBody>;

impl NodeReportBody {
    /// Fragments listed as held.
    pub fn held_count(&self) -> usize {
        self.held.iter().flatten().map(|h| h.fragments.len()).sum()
    }

    /// Checks the bounds a well-formed report keeps.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.from > self.to {
            return Err(format!(
                "report period starts ({}) after it ends ({})",
                self.from, self.to
            ));
        }
        if self.served.len() > MAX_CLAIMS_PER_REPORT {
            return Err(format!(
                "{} served claims exceed the {MAX_CLAIMS_PER_REPORT} per report",
                self.served.len()
            ));
        }
        if self.held_count() > MAX_HELD_PER_REPORT {
            return Err(format!(
                "{} held fragments exceed the {MAX_HELD_PER_REPORT} per report",
                self.held_count()
            ));
        }
        if self.sessions.len() > MAX_SESSIONS_PER_REPORT {
            return Err(format!(
                "{} sessions exceed the {MAX_SESSIONS_PER_REPORT} per report",
                self.sessions.len()
            ));
        }
        Ok(())
    }
}

/// A node's account as the CM sees it, for the node's owner. Amounts are micro-credits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// Pay level name and index (0 is the lowest).
    pub level: String,
    pub level_index: u32,
    /// Earned and not yet paid out (negative: debt to work off).
    pub balance: i64,
    /// Earned but held back until the node is older; forfeited if it is caught cheating.
    pub held: i64,
    /// Everything ever credited to the node, before penalties and payouts.
    pub earned: i64,
    pub paid_out: i64,
    /// When the node's claims were last reconciled (Unix seconds, 0: never).
    pub reconciled_at: u64,
    /// The newest report sequence number the CM has accepted.
    pub last_report_seq: u64,
}
