//! Identities: Ed25519 keys kept in files, their libp2p peer IDs, and domain-separated signatures.
//!
//! An entity's ID *is* the libp2p [`PeerId`] of its Ed25519 key: ed25519 peer IDs inline the
//! public key, so any signature can be checked against an ID alone, and the peer that QUIC
//! authenticated on a connection is the same identity that signs tickets, receipts and orders.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

pub use ed25519_dalek::Signature;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// First line of a key file: names the format so a wrong file is recognised as such.
const KEY_FILE_HEADER: &str = "CCDS ED25519 SECRET KEY V1";

/// Errors loading, saving or using identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a CCDS key file (expected a first line \"{KEY_FILE_HEADER}\" and 64 hex digits; create one with `ccds-client keygen`)"
    )]
    Malformed { path: String },
    #[error("key file {path} already exists; refusing to overwrite it")]
    Exists { path: String },
    #[error("peer ID {0} does not carry an Ed25519 public key")]
    NotEd25519(PeerId),
}

/// Errors verifying a signed object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signer {0} does not carry an Ed25519 public key")]
    BadSigner(PeerId),
    #[error("bad signature by {0}")]
    Invalid(PeerId),
    #[error("signed by {found}, expected {expected}")]
    WrongSigner { expected: PeerId, found: PeerId },
}

/// An Ed25519 key pair with its peer ID.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    peer_id: PeerId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Self::from_secret(rand::random())
    }

    /// The identity of a 32-byte Ed25519 secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        let peer_id = peer_id_of(&signing.verifying_key());
        Self { signing, peer_id }
    }

    /// Loads a key file written by [`Identity::save`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| IdentityError::Read {
            path: shown.clone(),
            source,
        })?;
        let malformed = || IdentityError::Malformed {
            path: shown.clone(),
        };
        // A key file is tiny; anything large is certainly something else.
        if text.len() > 1024 {
            return Err(malformed());
        }
        let text = std::str::from_utf8(&text).map_err(|_| malformed())?;
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(KEY_FILE_HEADER) {
            return Err(malformed());
        }
        let secret = lines
            .next()
            .and_then(|l| hex::decode(l.trim()).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(malformed)?;
        Ok(Self::from_secret(secret))
    }

    /// Writes the secret key to a new file readable only by its owner (mode 0600).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let shown = path.display().to_string();
        let write_err = |source| IdentityError::Write {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists {
                    path: shown.clone(),
                }
            } else {
                write_err(e)
            }
        })?;
        let body = format!(
            "{KEY_FILE_HEADER}\n{}\n",
            hex::encode(self.signing.to_bytes())
        );
        file.write_all(body.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        Ok(())
    }

    /// Loads the key at `path`, creating it first if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        if path.exists() {
            return Self::load(path);
        }
        let id = Self::generate();
        id.save(path)?;
        Ok(id)
    }

    /// This identity's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The libp2p key pair of the same key, for the transport.
    pub fn keypair(&self) -> libp2p::identity::Keypair {
        libp2p::identity::Keypair::ed25519_from_bytes(self.signing.to_bytes())
            .expect("a 32-byte secret is always a valid ed25519 key")
    }

    /// Signs `msg` under a domain-separation prefix.
    pub fn sign(&self, domain: &[u8], msg: &[u8]) -> Signature {
        self.signing.sign(&domain_separated(domain, msg))
    }
}

fn domain_separated(domain: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + domain.len() + msg.len());
    buf.push(domain.len() as u8);
    buf.extend_from_slice(domain);
    buf.extend_from_slice(msg);
    buf
}

/// The peer ID of an Ed25519 public key.
pub fn peer_id_of(key: &VerifyingKey) -> PeerId {
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())
        .expect("a dalek verifying key is a valid ed25519 public key");
    libp2p::identity::PublicKey::from(public).to_peer_id()
}

/// The Ed25519 public key inlined in a peer ID.
pub fn verifying_key_of(peer: &PeerId) -> Result<VerifyingKey, IdentityError> {
    let mh = peer.as_ref();
    // ed25519 peer IDs use the identity multihash (code 0): the digest is the protobuf key.
    if mh.code() != 0 {
        return Err(IdentityError::NotEd25519(*peer));
    }
    let public = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest())
        .ok()
        .and_then(|p| p.try_into_ed25519().ok())
        .ok_or(IdentityError::NotEd25519(*peer))?;
    VerifyingKey::from_bytes(&public.to_bytes()).map_err(|_| IdentityError::NotEd25519(*peer))
}

/// Checks `signature` by `signer` over `msg` in `domain`.
pub fn verify(
    signer: &PeerId,
    domain: &[u8],
    msg: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    let key = verifying_key_of(signer).map_err(|_| SignatureError::BadSigner(*signer))?;
    key.verify(&domain_separated(domain, msg), signature)
        .map_err(|_| SignatureError::Invalid(*signer))
}

/// A kind of signed object: its domain-separation prefix.
pub trait Domain {
    /// The prefix signed before the object's encoding, e.g. `b"ccds/cert/v1"`.
    const DOMAIN: &'static [u8];
}

/// Deterministic encoding of a signed body: postcard over plain structs (no maps).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("in-memory encoding of plain structs cannot fail")
}

/// A body with its signer and signature. The signature covers the body's canonical
/// re-encoding, so a non-canonical encoding on the wire cannot change what was signed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signed<T> {
    pub body: T,
    pub signer: PeerId,
    pub signature: Signature,
}

impl<T: Serialize + DeserializeOwned + Domain> Signed<T> {
    /// Signs `body` with `identity`.
    pub fn sign(identity: &Identity, body: T) -> Self {
        let signature = identity.sign(T::DOMAIN, &encode(&body));
        Self {
            body,
            signer: identity.peer_id(),
            signature,
        }
    }

    /// Checks the signature against the embedded signer.
    pub fn verify(&self) -> Result<&T, SignatureError> {
        verify(
            &self.signer,
            T::DOMAIN,
            &encode(&self.body),
            &self.signature,
        )?;
        Ok(&self.body)
    }

    /// Checks the signature and that the signer is `expected`.
    pub fn verify_by(&self, expected: &PeerId) -> Result<&T, SignatureError> {
        if &self.signer != expected {
            return Err(SignatureError::WrongSigner {
                expected: *expected,
                found: self.signer,
            });
        }
        self.verify()
    }
}

/// A content ID: the BLAKE3 hash of the content's encoded manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({})", &hex::encode(&self.0[..6]))
    }
}

impl FromStr for ContentId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hex::decode(s.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(ContentId)
            .ok_or_else(|| format!("`{s}` is not a content ID (expected 64 hex digits)"))
    }
}

impl Serialize for ContentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(ContentId)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct A(u32);
    impl Domain for A {
        const DOMAIN: &'static [u8] = b"ccds/test-a/v1";
    }
    #[derive(Debug, Serialize, Deserialize)]
    struct B(u32);
    impl Domain for B {
        const DOMAIN: &'static [u8] = b"ccds/test-b/v1";
    }

    #[test]
    fn peer_id_round_trips_to_key() {
        let id = Identity::generate();
        assert_eq!(
            peer_id_of(&verifying_key_of(&id.peer_id()).unwrap()),
            id.peer_id()
        );
        assert_eq!(id.keypair().public().to_peer_id(), id.peer_id());
    }

    #[test]
    fn signatures_are_domain_separated() {
        let id = Identity::generate();
        let a = Signed::sign(&id, A(7));
        assert!(a.verify().is_ok());
        let b = Signed {
            body: B(7),
            signer: a.signer,
            signature: a.signature,
        };
        assert_eq!(
            b.verify().unwrap_err(),
            SignatureError::Invalid(id.peer_id())
        );
        let other = Identity::generate();
        assert!(matches!(
            a.verify_by(&other.peer_id()),
            Err(SignatureError::WrongSigner { .. })
        ));
        let tampered = Signed { body: A(8), ..a };
        assert!(tampered.verify().is_err());
    }

    #[test]
    fn key_files_round_trip_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let id = Identity::generate();
        id.save(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap().peer_id(), id.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(id.save(&path), Err(IdentityError::Exists { .. })));
        std::fs::write(&path, "hello").unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::Malformed { .. })
        ));
    }
}
