//! Wire messages of the CCDS protocols and their framing.
//!
//! # Participants
//! * `/ccds/control/1` — node → CM: register, join, heartbeat, leave, periodic reports, account.
//! * `/ccds/store/1` — CM (or a node repairing on a CM order) → node: a CM-signed order to
//!   store a fragment, followed by its bytes; or to delete one.
//! * `/ccds/fetch/1` — client → node: a ticket and a fragment address → the fragment's bytes;
//!   the client answers with a signed receipt.
//! * `/ccds/client/1` — client → CM: manifest and contact list for a ticket; reports.
//! * `/ccds/probe/1` — CM → node: is the node's process alive and serving?
//! * `/ccds/audit/1` — CM → node: a random byte range of a fragment the node is paid to store →
//!   its BLAKE3 verified-streaming proof (see [`crate::audit`]).
//!
//! # Goals
//! Every message is one frame: a 4-byte little-endian length then a postcard body. The length is
//! checked against a per-message maximum *before* anything is allocated. Fragment bytes follow
//! their header frame raw, and are read in bounded chunks.
//!
//! # Non-goals
//! Confidentiality beyond QUIC's, and authentication of the peer (QUIC's TLS handshake already
//! binds every stream to the remote's peer ID).

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::cert::Certificate;
use crate::identity::{ContentId, Domain, Signed};
use crate::manifest::SignedManifest;
use crate::receipt::{CompletionReport, Receipt};
pub use crate::report::MAX_REPORT_MSG;
use crate::report::{AccountView, NodeReport};
use crate::store::FragmentId;
use crate::ticket::Ticket;

pub const CONTROL: StreamProtocol = StreamProtocol::new("/ccds/control/1");
pub const STORE: StreamProtocol = StreamProtocol::new("/ccds/store/1");
pub const FETCH: StreamProtocol = StreamProtocol::new("/ccds/fetch/1");
pub const CLIENT: StreamProtocol = StreamProtocol::new("/ccds/client/1");
/// CM → node liveness probe: 8 random bytes out, the same 8 bytes back.
pub const PROBE: StreamProtocol = StreamProtocol::new("/ccds/probe/1");

/// Largest control, store-header, fetch-header or report frame.
pub const MAX_SMALL_MSG: usize = 64 * 1024;
/// Largest manifest-and-contacts frame (a manifest of 1 M fragments is 32 MiB).
pub const MAX_MANIFEST_MSG: usize = 64 << 20;
/// Largest fragment accepted on any stream.
pub const MAX_FRAGMENT: usize = 32 << 20;

/// Framing and decoding errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Writes one framed message.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let body = crate::identity::encode(msg);
    w.write_all(&(body.len() as u32).to_le_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one framed message of at most `max` bytes.
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(postcard::from_bytes(&body)?)
}

/// Reads a frame's length prefix, refusing one above `max`; the caller may then reserve memory
/// for it before reading the body with [`read_body`].
pub async fn read_len<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<usize, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads and decodes a frame body of `len` bytes (from [`read_len`]).
pub async fn read_body<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    len: usize,
) -> Result<T, FrameError> {
    let body = read_bytes(r, len).await?;
    Ok(postcard::from_bytes(&body)?)
}

/// Reads exactly `len` raw bytes (already checked against a limit by the caller), growing the
/// buffer as data arrives rather than trusting the peer with a large up-front allocation.
pub async fn read_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    let got = r.take(len as u64).read_to_end(&mut out).await?;
    if got != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("stream ended after {got} of {len} bytes"),
        )
        .into());
    }
    Ok(out)
}

// ---- /ccds/probe/1 -----------------------------------------------------------------------------

/// Prober side: sends a random nonce and checks that it comes back, which proves the node's
/// process is serving (not merely that its host answers).
pub async fn probe<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<(), FrameError> {
    let nonce: [u8; 8] = rand::random();
    stream.write_all(&nonce).await?;
    stream.flush().await?;
    let mut echo = [0u8; 8];
    stream.read_exact(&mut echo).await?;
    if echo != nonce {
        return Err(
            std::io::Error::new(std::io::ErrorKind::InvalidData, "probe echo mismatch").into(),
        );
    }
    Ok(())
}

/// Node side: echoes the prober's nonce.
pub async fn answer_probe<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<(), FrameError> {
    let mut nonce = [0u8; 8];
    stream.read_exact(&mut nonce).await?;
    stream.write_all(&nonce).await?;
    stream.close().await?;
    Ok(())
}

// ---- /ccds/control/1 -------------------------------------------------------------------------

/// Node → CM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Ask for a node certificate for the connection's peer ID.
    Register,
    /// Online and serving at these addresses.
    Join {
        addrs: Vec<Multiaddr>,
        quota: u64,
        used: u64,
        /// When the host booted (Unix seconds), for the node's history.
        boot_time: u64,
        /// Upload bandwidth the node measured while serving, bytes per second (0: not yet known).
        upload_bps: u64,
    },
    /// Still online; `upload_bps` as in `Join`.
    Heartbeat { used: u64, upload_bps: u64 },
    /// Going offline (shutdown or owner's suspend).
    Leave,
    /// A periodic report of work, holdings and uptime (frame up to [`MAX_REPORT_MSG`]).
    Report(NodeReport),
    /// The node's account: level, balance, held earnings.
    Account,
}

/// CM → node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControlResponse {
    Registered {
        cert: Certificate,
    },
    Ok,
    Error(String),
    /// The report was ingested: `new_receipts` advanced a ticket's totals, `duplicate_receipts`
    /// were already known (and count once).
    ReportAccepted {
        seq: u64,
        new_receipts: u32,
        duplicate_receipts: u32,
    },
    /// The report's sequence number was not above `last_seq` (a duplicate or a replay): nothing
    /// was counted. A node that lost its state continues from `last_seq + 1`.
    StaleReport {
        last_seq: u64,
    },
    Account(AccountView),
}

// ---- /ccds/store/1 ---------------------------------------------------------------------------

/// How old a CM order may be when a node executes it: a replayed old order is refused.
pub const MAX_ORDER_AGE_SECS: u64 = 24 * 3600;
/// How far in the future an order's time may lie (clock skew between CM and node).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Whether an order issued at `issued` may be executed at `now`.
pub fn order_is_fresh(issued: u64, now: u64) -> bool {
    issued <= now.saturating_add(MAX_CLOCK_SKEW_SECS)
        && now.saturating_sub(issued) <= MAX_ORDER_AGE_SECS
}

/// The CM's order to store one fragment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreOrder {
    pub node: PeerId,
    pub fragment: FragmentId,
    pub hash: [u8; 32],
    pub len: u32,
    pub issued: u64,
}

impl Domain for StoreOrder {
    const DOMAIN: &'static [u8] = b"ccds/store-order/v1";
}

/// The CM's order to delete fragments of a content from one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOrder {
    pub node: PeerId,
    pub fragments: Vec<FragmentId>,
    pub issued: u64,
}

impl Domain for DeleteOrder {
    const DOMAIN: &'static [u8] = b"ccds/delete-order/v1";
}

/// Pusher → node. A `Store` frame is followed by exactly `order.len` raw bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreRequest {
    Store(Signed<StoreOrder>),
    Delete(Signed<DeleteOrder>),
}

/// Node → pusher.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum StoreResponse {
    Ok,
    Refused(String),
}

// ---- /ccds/fetch/1 ---------------------------------------------------------------------------

/// Client → node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FetchRequest {
    pub ticket: Ticket,
    /// The content asked for; a node serves it only if the ticket is for this content.
    pub content: ContentId,
    pub segment: u32,
    pub index: u16,
}

/// Node → client. `Ok` is followed by exactly `len` raw bytes, after which the client sends
/// one [`Receipt`] frame.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum FetchResponse {
    Ok {
        len: u32,
        /// The newest receipt the node keeps for the ticket. Receipts are cumulative per
        /// (ticket, node), so a client that starts again under the same ticket (a second
        /// download, another device) continues its totals from this one instead of from zero,
        /// which the node would ignore as stale.
        receipt: Option<Box<Receipt>>,
    },
    /// Not served, and why: a bad ticket, the ticket's allowance spent on this node, or
    /// receipts lagging more than the node's credit behind the bytes delivered (after that
    /// refusal the client may send its newest [`Receipt`] on the same stream to catch up).
    Refused(String),
    NotFound,
    /// The node found its copy corrupt on disk (and dropped it): fetch from another holder.
    Corrupt,
}

/// Client → node, after the bytes of a fetch.
pub type FetchReceipt = Receipt;

// ---- /ccds/client/1 --------------------------------------------------------------------------

/// Where to reach a node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contact {
    pub node: PeerId,
    pub addrs: Vec<Multiaddr>,
}

/// One holder of one fragment: `node` indexes [`ContactList::nodes`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub segment: u32,
    pub index: u16,
    pub node: u32,
}

/// Who holds which fragments now, nodes in CM-chosen random order.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContactList {
    pub nodes: Vec<Contact>,
    pub holders: Vec<Holder>,
}

/// What went wrong with a node, as a client saw it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ProblemKind {
    Unreachable,
    Corrupt {
        segment: u32,
        index: u16,
    },
    /// The node delivered far below the client's other nodes: `bytes_per_sec` as measured by
    /// the client over its fetches from that node.
    Slow {
        bytes_per_sec: u64,
    },
}

/// A client's report about one node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProblemReport {
    pub content: ContentId,
    pub node: PeerId,
    pub kind: ProblemKind,
    pub detail: String,
}

/// Client → CM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientRequest {
    Manifest {
        ticket: Ticket,
    },
    /// A fresh contact list, for a client whose holders stopped answering.
    Contacts {
        ticket: Ticket,
    },
    Problem(ProblemReport),
    Completion(CompletionReport),
}

/// CM → client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientResponse {
    Manifest {
        manifest: SignedManifest,
        contacts: ContactList,
    },
    Contacts(ContactList),
    Ok,
    Error(String),
}

// ---- /ccds/audit/1 ---------------------------------------------------------------------------

/// CM → node storage audit: one [`AuditRequest`] frame, one [`AuditResponse`] frame back.
pub const AUDIT: StreamProtocol = StreamProtocol::new("/ccds/audit/1");

/// Largest [`AuditResponse`] frame: a maximal proof plus postcard's tag and length prefix.
pub const MAX_AUDIT_MSG: usize = crate::audit::MAX_AUDIT_PROOF + 64;

/// CM → node: prove that you hold bytes `offset..offset + len` of `fragment`. At most
/// [`MAX_SMALL_MSG`] on the wire; `len` at most [`crate::audit::MAX_AUDIT_RANGE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRequest {
    pub fragment: FragmentId,
    pub offset: u64,
    pub len: u64,
}

/// Node → CM, at most [`MAX_AUDIT_MSG`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditResponse {
    /// The range's proof, from [`crate::audit::prove`]; the CM checks it with
    /// [`crate::audit::verify`] against the manifest's hash.
    Proof(Vec<u8>),
    /// The fragment is not stored here.
    NotFound,
    /// The node's copy failed its hash check on disk (and was dropped).
    Corrupt,
    /// Not answered, and why (the asker is not the pinned CM, the range is malformed, ...).
    Refused(String),
}

/// Auditor side: sends `request` and reads the node's answer (the caller bounds the time).
pub async fn request_audit<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &AuditRequest,
) -> Result<AuditResponse, FrameError> {
    write_msg(stream, request).await?;
    read_msg(stream, MAX_AUDIT_MSG).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversize_is_refused_before_allocation() {
        futures::executor::block_on(async {
            let mut buf = Vec::new();
            write_msg(&mut buf, &StoreResponse::Refused("x".into()))
                .await
                .unwrap();
            let back: StoreResponse = read_msg(&mut &buf[..], 100).await.unwrap();
            assert_eq!(back, StoreResponse::Refused("x".into()));
            let huge = u32::MAX.to_le_bytes();
            let err = read_msg::<_, StoreResponse>(&mut &huge[..], 100)
                .await
                .unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { .. }));
            let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
            let err = read_msg::<_, StoreResponse>(&mut &garbage[..], 100)
                .await
                .unwrap_err();
            assert!(matches!(err, FrameError::Decode(_)));
            let short = [10u8, 0, 0, 0, 1];
            assert!(matches!(
                read_msg::<_, StoreResponse>(&mut &short[..], 100).await,
                Err(FrameError::Io(_))
            ));
            assert!(read_bytes(&mut &[1u8, 2][..], 3).await.is_err());
        });
    }

    #[test]
    fn largest_audit_answer_fits_its_frame() {
        futures::executor::block_on(async {
            let answer = AuditResponse::Proof(vec![0xa5; crate::audit::MAX_AUDIT_PROOF]);
            let mut buf = Vec::new();
            write_msg(&mut buf, &answer).await.unwrap();
            assert!(buf.len() - 4 <= MAX_AUDIT_MSG);
            let back: AuditResponse = read_msg(&mut &buf[..], MAX_AUDIT_MSG).await.unwrap();
            assert_eq!(back, answer);
            let request = AuditRequest {
                fragment: FragmentId {
                    content: ContentId([7; 32]),
                    segment: u32::MAX,
                    index: u16::MAX,
                },
                offset: u64::MAX,
                len: u64::MAX,
            };
            let mut buf = Vec::new();
            write_msg(&mut buf, &request).await.unwrap();
            let back: AuditRequest = read_msg(&mut &buf[..], MAX_SMALL_MSG).await.unwrap();
            assert_eq!(back, request);
        });
    }
}
