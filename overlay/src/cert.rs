//! Certificates: the CM's root key binds a peer ID to a role for a validity window.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::identity::{Domain, Identity, SignatureError, Signed};

/// What a certified identity may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Node,
    Client,
    Partner,
}

/// The signed content of a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertBody {
    pub subject: PeerId,
    pub role: Role,
    pub serial: u64,
    pub not_before: u64,
    pub not_after: u64,
}

impl Domain for CertBody {
    const DOMAIN: &'static [u8] = b"ccds/cert/v1";
}

/// A certificate: a [`CertBody`] signed by the CM root.
pub type Certificate = Signed<CertBody>;

/// Why a certificate was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("certificate not issued by this collective's CM: {0}")]
    Signature(#[from] SignatureError),
    #[error("certificate is for role {found:?}, expected {expected:?}")]
    Role { expected: Role, found: Role },
    #[error("certificate not valid at {now} (valid from {not_before} to {not_after})")]
    Expired {
        now: u64,
        not_before: u64,
        not_after: u64,
    },
}

/// Issues a certificate for `subject`, valid from now for `validity_secs`.
pub fn issue(
    root: &Identity,
    subject: PeerId,
    role: Role,
    serial: u64,
    now: u64,
    validity_secs: u64,
) -> Certificate {
    Signed::sign(
        root,
        CertBody {
            subject,
            role,
            serial,
            not_before: now.saturating_sub(300),
            not_after: now.saturating_add(validity_secs),
        },
    )
}

/// Checks that `cert` was signed by `root`, has `role` and is valid at `now`.
pub fn check<'a>(
    cert: &'a Certificate,
    root: &PeerId,
    role: Role,
    now: u64,
) -> Result<&'a CertBody, CertError> {
    let body = cert.verify_by(root)?;
    if body.role != role {
        return Err(CertError::Role {
            expected: role,
            found: body.role,
        });
    }
    if now < body.not_before || now > body.not_after {
        return Err(CertError::Expired {
            now,
            not_before: body.not_before,
            not_after: body.not_after,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_issuer_role_and_validity() {
        let root = Identity::generate();
        let subject = Identity::generate().peer_id();
        let cert = issue(&root, subject, Role::Partner, 1, 1_000, 100);
        assert_eq!(
            check(&cert, &root.peer_id(), Role::Partner, 1_050)
                .unwrap()
                .subject,
            subject
        );
        assert!(matches!(
            check(&cert, &root.peer_id(), Role::Node, 1_050),
            Err(CertError::Role { .. })
        ));
        assert!(matches!(
            check(&cert, &root.peer_id(), Role::Partner, 1_101),
            Err(CertError::Expired { .. })
        ));
        let other_root = Identity::generate();
        assert!(matches!(
            check(&cert, &other_root.peer_id(), Role::Partner, 1_050),
            Err(CertError::Signature(_))
        ));
    }
}
