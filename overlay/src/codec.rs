//! The content codec: a plaintext segment → AES-256-GCM → `k` data + `m` parity fragments
//! (Reed-Solomon over GF(2^8)) → BLAKE3 roots; and back from any `k` fragments.
//!
//! One segment at a time, so memory is bounded by the segment size whatever the content size.
//! The nonce is the segment index: every content has its own random key, so (key, nonce)
//! pairs never repeat.

mod gcm;

use bytes::Bytes;
use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::manifest::{TAG_LEN, fragment_len};
use gcm::{GcmError, Opener, Sealer};

/// Additional data bound into every segment's tag.
const AAD: &[u8] = b"ccds/segment/v1";

/// Errors decoding a segment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("invalid erasure-code parameters k={k}, m={m}: {reason}")]
    Params { k: usize, m: usize, reason: String },
    #[error("segment needs {needed} fragments, only {have} present")]
    TooFewFragments { needed: usize, have: usize },
    #[error("fragment has {found} bytes, expected {expected}")]
    FragmentLength { expected: usize, found: usize },
    #[error("segment {0} failed authentication: wrong content key or corrupted fragments")]
    Decrypt(u64),
    #[error("AES-GCM failed inside AWS-LC ({0}); the process may be out of memory")]
    Cipher(&'static str),
}

/// Encoder/decoder for one content's segments.
pub struct SegmentCodec {
    /// The content key (AES-256-GCM, through [`gcm`]).
    key: [u8; 32],
    rs: ReedSolomon,
    k: usize,
    m: usize,
}

/// The 96-bit nonce of a segment: its index, little-endian.
fn nonce_bytes(segment: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&segment.to_le_bytes());
    n
}

impl SegmentCodec {
    /// A codec for `k` data and `m` parity shards under `key`.
    pub fn new(key: &[u8; 32], k: usize, m: usize) -> Result<Self, CodecError> {
        let params = |reason: String| CodecError::Params { k, m, reason };
        if k == 0 || k + m > crate::manifest::MAX_SHARDS {
            return Err(params("need 1 ≤ k and k + m ≤ 256".into()));
        }
        // reed-solomon-erasure refuses m = 0; a codec without parity only splits.
        let rs = ReedSolomon::new(k, m.max(1)).map_err(|e| params(format!("{e:?}")))?;
        Ok(Self {
            key: *key,
            rs,
            k,
            m,
        })
    }

    /// Encrypts and erasure-codes segment `index`; returns its `k + m` fragments.
    pub fn encode(&self, index: u64, plain: &[u8]) -> Vec<Bytes> {
        let len = fragment_len(plain.len(), self.k);
        let parity = self.m.max(1);
        // Zeroed by the allocator (fresh pages), not by a pass over it. The cipher writes the
        // ciphertext straight from `plain`, the tag and the zero padding follow, then parity.
        let mut buf = vec![0u8; (self.k + parity) * len];
        let (ciphertext, rest) = buf.split_at_mut(plain.len());
        let tag = Sealer::new(&self.key, &nonce_bytes(index), AAD)
            .and_then(|mut sealer| {
                sealer.update(plain, ciphertext)?;
                sealer.finish()
            })
            .expect("AWS-LC seals any segment unless it is out of memory");
        rest[..TAG_LEN].copy_from_slice(&tag);
        {
            let mut shards: Vec<&mut [u8]> = buf.chunks_exact_mut(len).collect();
            self.rs
                .encode(&mut shards)
                .expect("shard count and sizes are consistent by construction");
        }
        let buf = Bytes::from(buf);
        (0..self.k + self.m)
            .map(|i| buf.slice(i * len..(i + 1) * len))
            .collect()
    }

    /// Rebuilds segment `index` of `plain_len` bytes from at least `k` of its fragments
    /// (`None` for the missing ones), then decrypts it.
    pub fn decode(
        &self,
        index: u64,
        plain_len: usize,
        mut fragments: Vec<Option<Vec<u8>>>,
    ) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        self.decode_into(index, plain_len, &mut fragments, &mut out)?;
        Ok(out)
    }

    /// [`Self::decode`] into `out`, resized to the segment's length (a reused buffer is not
    /// zeroed first: decryption overwrites every byte). The fragments stay with the caller, data
    /// fragments that were missing now rebuilt, so that their buffers can be reused. On an
    /// error `out` is emptied: it never holds unauthenticated plaintext.
    pub fn decode_into(
        &self,
        index: u64,
        plain_len: usize,
        fragments: &mut Vec<Option<Vec<u8>>>,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let len = fragment_len(plain_len, self.k);
        fragments.resize(self.k + self.m.max(1), None);
        let have = fragments.iter().filter(|f| f.is_some()).count();
        if have < self.k {
            return Err(CodecError::TooFewFragments {
                needed: self.k,
                have,
            });
        }
        if let Some(bad) = fragments.iter().flatten().find(|f| f.len() != len) {
            return Err(CodecError::FragmentLength {
                expected: len,
                found: bad.len(),
            });
        }
        if fragments[..self.k].iter().any(Option::is_none) {
            self.rs
                .reconstruct_data(fragments)
                .map_err(|_| CodecError::TooFewFragments {
                    needed: self.k,
                    have,
                })?;
        }
        let data = fragments[..self.k]
            .iter()
            .map(|f| f.as_deref().expect("reconstructed"));
        out.resize(plain_len, 0);
        self.open(index, data, out).inspect_err(|_| out.clear())
    }

    /// Decrypts segment `index` from its data fragments in order (the ciphertext, then the tag,
    /// then padding) straight into `out`, as long as the plaintext.
    fn open<'a>(
        &self,
        index: u64,
        data: impl Iterator<Item = &'a [u8]>,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let library = |e| match e {
            GcmError::Authentication => CodecError::Decrypt(index),
            GcmError::Library(call) => CodecError::Cipher(call),
        };
        let mut opener = Opener::new(&self.key, &nonce_bytes(index), AAD).map_err(library)?;
        let (mut at, mut tag, mut tag_at) = (0, [0u8; TAG_LEN], 0);
        for fragment in data {
            let ciphertext = (out.len() - at).min(fragment.len());
            opener
                .update(&fragment[..ciphertext], &mut out[at..at + ciphertext])
                .map_err(library)?;
            at += ciphertext;
            // The tag follows the ciphertext, possibly across a fragment boundary.
            let rest = &fragment[ciphertext..];
            let take = (TAG_LEN - tag_at).min(rest.len());
            tag[tag_at..tag_at + take].copy_from_slice(&rest[..take]);
            tag_at += take;
            if tag_at == TAG_LEN {
                return opener.finish(&tag).map_err(library);
            }
        }
        Err(CodecError::Decrypt(index))
    }
}

impl SegmentCodec {
    /// Rebuilds every missing fragment of a segment, data and parity alike, from at least `k`
    /// present ones, without decrypting anything: what a repair does. Fragment `i` of a codec
    /// with more parity is the same as fragment `i` of one with less, so spare parity fragments
    /// rebuilt here match the manifest.
    pub fn rebuild(&self, fragments: &mut Vec<Option<Vec<u8>>>) -> Result<(), CodecError> {
        let have = fragments.iter().filter(|f| f.is_some()).count();
        if have < self.k {
            return Err(CodecError::TooFewFragments {
                needed: self.k,
                have,
            });
        }
        let len = fragments.iter().flatten().next().map_or(0, Vec::len);
        if let Some(bad) = fragments.iter().flatten().find(|f| f.len() != len) {
            return Err(CodecError::FragmentLength {
                expected: len,
                found: bad.len(),
            });
        }
        fragments.resize(self.k + self.m.max(1), None);
        self.rs
            .reconstruct(fragments)
            .map_err(|_| CodecError::TooFewFragments {
                needed: self.k,
                have,
            })?;
        fragments.truncate(self.k + self.m);
        Ok(())
    }
}

/// BLAKE3 root of a fragment.
pub fn fragment_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    /// Published content must stay readable: the fragments of a fixed segment under a fixed key
    /// are pinned (AES-256-GCM, nonce = segment index, AAD, tag after the ciphertext, padding,
    /// Reed-Solomon), whatever AES-GCM implementation computes them.
    #[test]
    fn fragment_format_is_pinned() {
        let codec = SegmentCodec::new(&[3; 32], 4, 2).unwrap();
        let frags = codec.encode(5, &sample(1000));
        let mut all = blake3::Hasher::new();
        for f in &frags {
            all.update(f);
        }
        assert_eq!(
            all.finalize().to_hex().as_str(),
            "0eb8d27555fa35e611bd002a2eea8538ca3d90e6d7c4ba478f44bf86c3158f3a"
        );
        assert_eq!(
            codec.decode(5, 1000, frags.iter().map(|f| Some(f.to_vec())).collect()),
            Ok(sample(1000))
        );
    }

    #[test]
    fn decodes_from_any_k_fragments() {
        let codec = SegmentCodec::new(&[3; 32], 4, 2).unwrap();
        for len in [0, 1, 15, 16, 17, 1000, 4099] {
            let plain = sample(len);
            let frags = codec.encode(9, &plain);
            assert_eq!(frags.len(), 6);
            // Every pair of missing fragments.
            for a in 0..6 {
                for b in a + 1..6 {
                    let mut got: Vec<Option<Vec<u8>>> =
                        frags.iter().map(|f| Some(f.to_vec())).collect();
                    got[a] = None;
                    got[b] = None;
                    assert_eq!(codec.decode(9, len, got).unwrap(), plain, "len {len}");
                }
            }
        }
    }

    #[test]
    fn refuses_too_few_wrong_key_and_corruption() {
        let codec = SegmentCodec::new(&[3; 32], 4, 2).unwrap();
        let plain = sample(1000);
        let frags = codec.encode(0, &plain);
        let mut got: Vec<Option<Vec<u8>>> = frags.iter().map(|f| Some(f.to_vec())).collect();
        got[0] = None;
        got[1] = None;
        got[2] = None;
        assert!(matches!(
            codec.decode(0, 1000, got),
            Err(CodecError::TooFewFragments { .. })
        ));
        let all = || -> Vec<Option<Vec<u8>>> { frags.iter().map(|f| Some(f.to_vec())).collect() };
        let other = SegmentCodec::new(&[4; 32], 4, 2).unwrap();
        assert_eq!(other.decode(0, 1000, all()), Err(CodecError::Decrypt(0)));
        assert_eq!(codec.decode(1, 1000, all()), Err(CodecError::Decrypt(1)));
        let mut corrupt = all();
        corrupt[1].as_mut().unwrap()[5] ^= 1;
        assert_eq!(codec.decode(0, 1000, corrupt), Err(CodecError::Decrypt(0)));
    }

    #[test]
    fn decoding_overwrites_a_reused_buffer_and_empties_it_on_failure() {
        let codec = SegmentCodec::new(&[3; 32], 4, 2).unwrap();
        let plain = sample(1000);
        let all = || -> Vec<Option<Vec<u8>>> {
            codec
                .encode(2, &plain)
                .iter()
                .map(|f| Some(f.to_vec()))
                .collect()
        };
        let mut out = vec![0xAA; 3000];
        codec.decode_into(2, 1000, &mut all(), &mut out).unwrap();
        assert_eq!(out, plain);
        let mut short = vec![0x55; 10];
        codec.decode_into(2, 1000, &mut all(), &mut short).unwrap();
        assert_eq!(short, plain);
        assert_eq!(
            codec.decode_into(3, 1000, &mut all(), &mut out),
            Err(CodecError::Decrypt(3))
        );
        assert!(out.is_empty(), "no unauthenticated plaintext is left");
    }

    #[test]
    fn more_parity_extends_the_same_fragments() {
        let plain = sample(5000);
        let base = SegmentCodec::new(&[7; 32], 4, 2).unwrap().encode(3, &plain);
        let wide = SegmentCodec::new(&[7; 32], 4, 6).unwrap();
        let all = wide.encode(3, &plain);
        assert_eq!(
            &all[..6],
            &base[..],
            "parity rows do not depend on the parity count"
        );
        // A repair from fragments 1, 5, 7 and 9 rebuilds every other one, spares included.
        let mut got: Vec<Option<Vec<u8>>> = vec![None; 10];
        for i in [1, 5, 7, 9] {
            got[i] = Some(all[i].to_vec());
        }
        wide.rebuild(&mut got).unwrap();
        let rebuilt: Vec<Vec<u8>> = got.into_iter().map(Option::unwrap).collect();
        let expected: Vec<Vec<u8>> = all.iter().map(|f| f.to_vec()).collect();
        assert_eq!(rebuilt, expected);
        let mut too_few: Vec<Option<Vec<u8>>> = vec![None; 10];
        too_few[0] = Some(all[0].to_vec());
        assert!(matches!(
            wide.rebuild(&mut too_few),
            Err(CodecError::TooFewFragments { needed: 4, have: 1 })
        ));
    }

    #[test]
    fn works_without_parity() {
        let codec = SegmentCodec::new(&[3; 32], 3, 0).unwrap();
        let plain = sample(100);
        let frags = codec.encode(0, &plain);
        assert_eq!(frags.len(), 3);
        let got = frags.iter().map(|f| Some(f.to_vec())).collect();
        assert_eq!(codec.decode(0, 100, got).unwrap(), plain);
    }
}
