//! Manifests: what a content is made of, signed by the CM. The content ID is the BLAKE3 hash of
//! the manifest's encoding, so a manifest cannot be swapped under a ticket.

use serde::{Deserialize, Serialize};

use crate::identity::{ContentId, Domain, Signed, encode};

/// AEAD tag appended to every encrypted segment.
pub const TAG_LEN: usize = 16;
/// Largest segment accepted from a manifest, bounding memory per segment in every process.
pub const MAX_SEGMENT_SIZE: u32 = 64 << 20;
/// Largest total number of shards per segment (Reed-Solomon over GF(2^8) allows 256).
pub const MAX_SHARDS: usize = 256;

/// The cipher used for segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cipher {
    /// AES-256-GCM, nonce = segment index; measured fastest on x86-64 with AES-NI.
    Aes256Gcm,
}

/// A content's layout and the BLAKE3 root of every fragment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub size: u64,
    pub segment_size: u32,
    pub data_shards: u8,
    pub parity_shards: u8,
    /// Further parity fragments beyond `k + m`, hashed here but placed only while demand is
    /// high: every extra holder of a hot content then adds distinct data, never a copy.
    pub spare_shards: u8,
    pub cipher: Cipher,
    pub created: u64,
    /// Fragment hashes, segment-major: `hashes[segment * (k + m + spare) + index]`.
    pub hashes: Vec<[u8; 32]>,
}

impl Domain for Manifest {
    const DOMAIN: &'static [u8] = b"ccds/manifest/v1";
}

/// A manifest with the CM's signature.
pub type SignedManifest = Signed<Manifest>;

/// A manifest whose numbers do not add up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid manifest: {0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// The content ID: BLAKE3 of the manifest's encoding.
    pub fn content_id(&self) -> ContentId {
        ContentId(*blake3::hash(&encode(self)).as_bytes())
    }

    /// k.
    pub fn k(&self) -> usize {
        self.data_shards as usize
    }

    /// k + m: the fragments every segment keeps under normal demand.
    pub fn target(&self) -> usize {
        self.data_shards as usize + self.parity_shards as usize
    }

    /// k + m + spare: every fragment index that may exist (and has a hash).
    pub fn shards(&self) -> usize {
        self.target() + self.spare_shards as usize
    }

    /// Parity fragments per segment counting the spares: the codec's `m`.
    pub fn all_parity(&self) -> usize {
        self.parity_shards as usize + self.spare_shards as usize
    }

    /// Number of segments.
    pub fn segments(&self) -> u64 {
        self.size.div_ceil(self.segment_size as u64)
    }

    /// Plaintext length of segment `i`.
    pub fn segment_len(&self, i: u64) -> usize {
        let start = i * self.segment_size as u64;
        (self.size - start).min(self.segment_size as u64) as usize
    }

    /// Length of every fragment of segment `i`.
    pub fn fragment_len(&self, i: u64) -> usize {
        fragment_len(self.segment_len(i), self.k())
    }

    /// Expected BLAKE3 root of fragment `index` of segment `segment`.
    pub fn hash(&self, segment: u64, index: usize) -> Option<&[u8; 32]> {
        let at = usize::try_from(segment).ok()? * self.shards() + index;
        (index < self.shards())
            .then(|| self.hashes.get(at))
            .flatten()
    }

    /// Checks the internal consistency of a manifest from an untrusted source.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError(s));
        if self.data_shards == 0 {
            return bad("zero data shards".into());
        }
        if self.shards() > MAX_SHARDS {
            return bad(format!("{} shards exceed {MAX_SHARDS}", self.shards()));
        }
        if self.segment_size == 0 || self.segment_size > MAX_SEGMENT_SIZE {
            return bad(format!("segment size {} out of range", self.segment_size));
        }
        let expected = self.segments().checked_mul(self.shards() as u64);
        if expected != Some(self.hashes.len() as u64) {
            return bad(format!(
                "{} hashes for {} segments of {} fragments",
                self.hashes.len(),
                self.segments(),
                self.shards()
            ));
        }
        Ok(())
    }
}

/// Fragment length for a plaintext segment of `plain_len` bytes split into `k` data shards.
pub fn fragment_len(plain_len: usize, k: usize) -> usize {
    (plain_len + TAG_LEN).div_ceil(k)
}
