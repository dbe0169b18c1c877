//! Client-signed witnesses of delivered work: per-node receipts and the completion report.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::identity::{ContentId, Domain, Signed};

/// Cumulative record of what one node delivered to one client under one ticket.
/// Each new receipt supersedes the previous one (higher `seq`, totals never decrease).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    pub ticket_id: [u8; 16],
    pub content: ContentId,
    pub node: PeerId,
    pub fragments: u64,
    pub bytes: u64,
    pub seq: u64,
    pub time: u64,
}

impl Domain for ReceiptBody {
    const DOMAIN: &'static [u8] = b"ccds/receipt/v1";
}

/// A receipt signed by the client.
pub type Receipt = Signed<ReceiptBody>;

/// Bytes received from one node, as the client saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBytes {
    pub node: PeerId,
    pub fragments: u64,
    pub bytes: u64,
}

/// The client's report to the CM at the end of a download.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionBody {
    pub ticket_id: [u8; 16],
    pub content: ContentId,
    pub per_node: Vec<NodeBytes>,
    pub time: u64,
}

impl Domain for CompletionBody {
    const DOMAIN: &'static [u8] = b"ccds/completion/v1";
}

/// A completion report signed by the client.
pub type CompletionReport = Signed<CompletionBody>;
