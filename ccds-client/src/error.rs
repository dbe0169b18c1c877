//! Errors of the client, each a complete sentence for the user.

use libp2p::PeerId;
use overlay::ContentId;
use overlay::identity::IdentityError;
use overlay::ticket::TicketFileError;

use crate::scheduler::Unfetchable;

/// Everything that can stop a download or a key generation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Key(IdentityError),
    #[error(transparent)]
    Ticket(TicketFileError),
    #[error(
        "the ticket {ticket} was issued to client {named}, but the key {key} is client {peer}; \
         use the key the ticket was bought with"
    )]
    WrongClient {
        ticket: String,
        key: String,
        named: PeerId,
        peer: PeerId,
    },
    #[error("the ticket's coordinator addresses are unusable ({0}); the ticket file is damaged")]
    CoordinatorAddress(String),
    #[error("cannot start networking: {0}")]
    Network(String),
    #[error(
        "cannot reach the coordinator {peer} at {addrs}: {reason}; check the network and try again later"
    )]
    CoordinatorUnreachable {
        peer: PeerId,
        /// Every address tried, comma-separated.
        addrs: String,
        reason: String,
    },
    #[error("the coordinator refused the request: {0}")]
    CoordinatorRefused(String),
    #[error("the coordinator {peer} answered with an invalid message: {reason}")]
    CoordinatorProtocol { peer: PeerId, reason: String },
    #[error("the coordinator sent a manifest with a bad signature: {0}")]
    ManifestSignature(String),
    #[error("the coordinator sent an inconsistent manifest: {0}")]
    ManifestInvalid(String),
    #[error(
        "the coordinator sent the manifest of content {found}, but the ticket is for {expected}; refusing it"
    )]
    WrongManifest {
        expected: ContentId,
        found: ContentId,
    },
    #[error("cannot {what} {path}: {source}")]
    Output {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Unfetchable(Unfetchable),
    #[error(
        "segment {0} does not decrypt with the ticket's content key although all its fragments \
         matched the manifest: the ticket file's content key is wrong"
    )]
    Decrypt(u64),
    #[error("cannot decode segment {segment}: {reason}")]
    Decode { segment: u64, reason: String },
    #[error(
        "interrupted with {saved} of {total} segments saved in {part}; run the same command again to resume"
    )]
    Interrupted {
        saved: u64,
        total: u64,
        part: String,
    },
    #[error("interrupted before the download started")]
    InterruptedEarly,
    #[error("internal error: {0}")]
    Internal(String),
}
