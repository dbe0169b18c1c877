//! Tickets: a partner-signed right for one client to download one content until a deadline.
//!
//! What nodes see is a [`Ticket`]: the signed body plus the partner's certificate, chained to
//! the CM root. The [`TicketFile`] a client holds adds the content key and the coordinator's
//! address; it never leaves the client.

use std::path::Path;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::cert::{self, CertError, Certificate, Role};
use crate::identity::{ContentId, Domain, Identity, SignatureError, Signed};

/// The signed content of a ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    pub ticket_id: [u8; 16],
    pub content: ContentId,
    pub client: PeerId,
    pub not_after: u64,
    /// Bytes the client may fetch in total under this ticket, across all nodes.
    pub allowance: u64,
}

impl Domain for TicketBody {
    const DOMAIN: &'static [u8] = b"ccds/ticket/v1";
}

/// A ticket as presented to nodes and to the CM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub signed: Signed<TicketBody>,
    pub partner_cert: Certificate,
}

/// Why a ticket was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("ticket issued by an unknown partner: {0}")]
    Partner(#[from] CertError),
    #[error("ticket signed by {signer}, but the partner certificate is for {subject}")]
    SignerMismatch { signer: PeerId, subject: PeerId },
    #[error("forged ticket: {0}")]
    Signature(#[from] SignatureError),
    #[error("ticket expired at {not_after} (now {now})")]
    Expired { now: u64, not_after: u64 },
    #[error("ticket is for content {found}, not {expected}")]
    WrongContent {
        expected: ContentId,
        found: ContentId,
    },
    #[error("ticket was issued to client {named}, not to {peer}")]
    WrongClient { named: PeerId, peer: PeerId },
}

impl Ticket {
    /// Signs a ticket with the partner's key.
    pub fn issue(partner: &Identity, partner_cert: Certificate, body: TicketBody) -> Self {
        Self {
            signed: Signed::sign(partner, body),
            partner_cert,
        }
    }

    /// The ticket's body (unverified).
    pub fn body(&self) -> &TicketBody {
        &self.signed.body
    }

    /// Verifies the chain (CM root → partner certificate → ticket) and the expiry.
    pub fn verify(&self, root: &PeerId, now: u64) -> Result<&TicketBody, TicketError> {
        let partner = cert::check(&self.partner_cert, root, Role::Partner, now)?;
        if partner.subject != self.signed.signer {
            return Err(TicketError::SignerMismatch {
                signer: self.signed.signer,
                subject: partner.subject,
            });
        }
        let body = self.signed.verify()?;
        if now > body.not_after {
            return Err(TicketError::Expired {
                now,
                not_after: body.not_after,
            });
        }
        Ok(body)
    }

    /// Verifies the ticket and that it lets `peer` fetch `content`.
    pub fn verify_for(
        &self,
        root: &PeerId,
        now: u64,
        content: &ContentId,
        peer: &PeerId,
    ) -> Result<&TicketBody, TicketError> {
        let body = self.verify(root, now)?;
        allows(body, content, peer)?;
        Ok(body)
    }

    /// Verifies the signature chain once and keeps what later checks of the same ticket need:
    /// see [`VerifiedTicket`].
    pub fn verify_once(&self, root: &PeerId, now: u64) -> Result<VerifiedTicket, TicketError> {
        self.verify(root, now)?;
        let partner = &self.partner_cert.body;
        Ok(VerifiedTicket {
            ticket: self.clone(),
            cert_window: (partner.not_before, partner.not_after),
        })
    }
}

fn allows(body: &TicketBody, content: &ContentId, peer: &PeerId) -> Result<(), TicketError> {
    if &body.content != content {
        return Err(TicketError::WrongContent {
            expected: *content,
            found: body.content,
        });
    }
    if &body.client != peer {
        return Err(TicketError::WrongClient {
            named: body.client,
            peer: *peer,
        });
    }
    Ok(())
}

/// A ticket whose signatures (CM root → partner certificate → ticket) were checked once. A node
/// serving one client many fragments under one ticket checks the signatures of the first request
/// only; every request still checks what time or the request can change: the certificate's and
/// the ticket's validity, the content and the client.
#[derive(Clone, Debug)]
pub struct VerifiedTicket {
    ticket: Ticket,
    cert_window: (u64, u64),
}

impl VerifiedTicket {
    /// Whether `other` is this very ticket, byte for byte (signatures included), so that what
    /// was verified of this one holds for it.
    pub fn is(&self, other: &Ticket) -> bool {
        &self.ticket == other
    }

    /// The checks of [`Ticket::verify_for`] that do not involve signatures, at `now`.
    pub fn allows(
        &self,
        now: u64,
        content: &ContentId,
        peer: &PeerId,
    ) -> Result<&TicketBody, TicketError> {
        let (not_before, not_after) = self.cert_window;
        if now < not_before || now > not_after {
            return Err(TicketError::Partner(CertError::Expired {
                now,
                not_before,
                not_after,
            }));
        }
        let body = self.ticket.body();
        if now > body.not_after {
            return Err(TicketError::Expired {
                now,
                not_after: body.not_after,
            });
        }
        allows(body, content, peer)?;
        Ok(body)
    }
}

/// What a client holds: the ticket, the key to decrypt the content, and where the CM is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TicketFile {
    pub ticket: Ticket,
    #[serde(with = "hex_key")]
    pub content_key: [u8; 32],
    /// The coordinators' addresses, each ending in `/p2p/<CM peer ID>` (one collective, one
    /// ID): the client asks whichever answers. Older files hold one, as `coordinator`.
    #[serde(alias = "coordinator", deserialize_with = "crate::net::one_or_many")]
    pub coordinators: Vec<Multiaddr>,
}

/// Errors reading or writing ticket files.
#[derive(Debug, thiserror::Error)]
pub enum TicketFileError {
    #[error("cannot read ticket file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write ticket file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a CCDS ticket file: {reason}")]
    Malformed { path: String, reason: String },
}

/// Largest ticket file accepted; real ones are about 1 KiB.
const MAX_TICKET_FILE: u64 = 64 * 1024;

impl TicketFile {
    /// Reads and parses a ticket file (signatures are checked by whoever relies on them).
    pub fn load(path: &Path) -> Result<Self, TicketFileError> {
        let shown = path.display().to_string();
        let read = |source| TicketFileError::Read {
            path: shown.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_TICKET_FILE {
            return Err(TicketFileError::Malformed {
                path: shown,
                reason: format!("{len} bytes is far larger than any ticket"),
            });
        }
        let text = std::fs::read(path).map_err(read)?;
        serde_json::from_slice(&text).map_err(|e| TicketFileError::Malformed {
            path: shown,
            reason: e.to_string(),
        })
    }

    /// Writes the ticket file atomically, readable only by its owner.
    pub fn save(&self, path: &Path) -> Result<(), TicketFileError> {
        let json = serde_json::to_vec_pretty(self).expect("ticket files always serialise");
        crate::store::write_atomic(path, &json, true).map_err(|source| TicketFileError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(key))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| serde::de::Error::custom("content key must be 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        root: Identity,
        partner: Identity,
        client: PeerId,
        content: ContentId,
        ticket: Ticket,
    }

    fn fixture() -> Fixture {
        let root = Identity::generate();
        let partner = Identity::generate();
        let cert = cert::issue(&root, partner.peer_id(), Role::Partner, 1, 1_000, 10_000);
        let client = Identity::generate().peer_id();
        let content = ContentId([7; 32]);
        let ticket = Ticket::issue(
            &partner,
            cert,
            TicketBody {
                ticket_id: [1; 16],
                content,
                client,
                not_after: 2_000,
                allowance: 1 << 20,
            },
        );
        Fixture {
            root,
            partner,
            client,
            content,
            ticket,
        }
    }

    #[test]
    fn valid_ticket_verifies() {
        let f = fixture();
        f.ticket
            .verify_for(&f.root.peer_id(), 1_500, &f.content, &f.client)
            .unwrap();
    }

    #[test]
    fn a_verified_ticket_rechecks_time_content_and_client() {
        let f = fixture();
        let root = f.root.peer_id();
        let mut forged = f.ticket.clone();
        forged.signed.body.allowance *= 2;
        assert!(matches!(
            forged.verify_once(&root, 1_500),
            Err(TicketError::Signature(_))
        ));
        let verified = f.ticket.verify_once(&root, 1_500).unwrap();
        assert!(verified.is(&f.ticket));
        assert!(!verified.is(&forged), "a changed ticket is another ticket");
        assert_eq!(
            verified.allows(1_900, &f.content, &f.client),
            Ok(f.ticket.body())
        );
        assert!(matches!(
            verified.allows(2_001, &f.content, &f.client),
            Err(TicketError::Expired { .. })
        ));
        // The partner certificate's window opens at 700 (issued at 1_000, 300 s of slack).
        assert!(matches!(
            verified.allows(699, &f.content, &f.client),
            Err(TicketError::Partner(CertError::Expired { .. }))
        ));
        assert!(matches!(
            verified.allows(1_500, &ContentId([8; 32]), &f.client),
            Err(TicketError::WrongContent { .. })
        ));
        let other = Identity::generate().peer_id();
        assert!(matches!(
            verified.allows(1_500, &f.content, &other),
            Err(TicketError::WrongClient { .. })
        ));
    }

    #[test]
    fn refuses_forged_expired_misdirected_and_unknown_partner() {
        let f = fixture();
        let root = f.root.peer_id();
        let mut forged = f.ticket.clone();
        forged.signed.body.allowance *= 2;
        assert!(matches!(
            forged.verify(&root, 1_500),
            Err(TicketError::Signature(_))
        ));
        assert!(matches!(
            f.ticket.verify(&root, 2_001),
            Err(TicketError::Expired { .. })
        ));
        assert!(matches!(
            f.ticket
                .verify_for(&root, 1_500, &ContentId([8; 32]), &f.client),
            Err(TicketError::WrongContent { .. })
        ));
        let other = Identity::generate().peer_id();
        assert!(matches!(
            f.ticket.verify_for(&root, 1_500, &f.content, &other),
            Err(TicketError::WrongClient { .. })
        ));
        let rogue_root = Identity::generate();
        let rogue_cert = cert::issue(
            &rogue_root,
            f.partner.peer_id(),
            Role::Partner,
            1,
            1_000,
            10_000,
        );
        let rogue = Ticket::issue(&f.partner, rogue_cert, f.ticket.body().clone());
        assert!(matches!(
            rogue.verify(&root, 1_500),
            Err(TicketError::Partner(_))
        ));
        // A genuine partner certificate attached to a ticket signed by someone else.
        let thief = Identity::generate();
        let stolen = Ticket::issue(
            &thief,
            f.ticket.partner_cert.clone(),
            f.ticket.body().clone(),
        );
        assert!(matches!(
            stolen.verify(&root, 1_500),
            Err(TicketError::SignerMismatch { .. })
        ));
    }

    #[test]
    fn ticket_file_round_trips() {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.ticket");
        let file = TicketFile {
            ticket: f.ticket.clone(),
            content_key: [9; 32],
            coordinators: vec!["/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap()],
        };
        file.save(&path).unwrap();
        let back = TicketFile::load(&path).unwrap();
        assert_eq!(back.ticket, f.ticket);
        assert_eq!(back.content_key, [9; 32]);
        assert_eq!(back.coordinators, file.coordinators);
        // A file from before several coordinators were listed names one, as `coordinator`.
        let mut old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let addrs = old.as_object_mut().unwrap().remove("coordinators").unwrap();
        old["coordinator"] = addrs[0].clone();
        std::fs::write(&path, old.to_string()).unwrap();
        assert_eq!(
            TicketFile::load(&path).unwrap().coordinators,
            file.coordinators
        );
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(
            TicketFile::load(&path),
            Err(TicketFileError::Malformed { .. })
        ));
    }
}
