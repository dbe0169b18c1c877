//! Storage audits: proving that a node still holds a fragment, byte range by byte range.
//!
//! # Participants
//! * The **CM** (verifier) knows each fragment's BLAKE3 root and length from the signed manifest
//!   and keeps no fragment data. It picks a random range ([`random_range`]) and checks the
//!   node's answer with [`verify`].
//! * The **node** (prover) holds the fragment and answers with [`prove`]: the 1 KiB BLAKE3 chunks
//!   covering the range, plus the sibling hashes linking them to the root (a BLAKE3
//!   verified-streaming slice, bao-tree with 1 KiB blocks, so the root *is* `blake3::hash`).
//!
//! # Goals
//! * A node that does not hold the bytes of the range cannot produce a proof that verifies:
//!   every byte of a proof is either hashed data or a hash on the path to the root, so a single
//!   wrong byte anywhere fails, and a proof for another range or another fragment fails.
//! * Both sides are bounded: a range is at most [`MAX_AUDIT_RANGE`] bytes, a proof at most
//!   [`MAX_AUDIT_PROOF`] bytes, checked before any decoding. The CM's work per audit is a few
//!   dozen hashes; the node's is one pass over the fragment.
//! * Every byte of a fragment is equally likely to be audited ([`random_range`]), so dropping
//!   the start or end of a fragment is as risky for a cheating node as dropping its middle.
//!
//! # Non-goals
//! * Proving the node holds the *whole* fragment at every moment: one audit samples one range,
//!   and confidence comes from repeated unpredictable audits (the CM's scheduler).
//! * Stopping a node that fetches the range from another holder on demand (outsourcing); the
//!   audit timeout and the CM's randomised placement make that costly, not impossible.
//! * Authenticating the fragment's size: the verifier takes it from the signed manifest (a proof
//!   pins the size only when it includes the last chunk).
//! * Transport and who may ask: see `/ccds/audit/1` in [`crate::proto`].

use bao_tree::io::outboard::PostOrderMemOutboard;
use bao_tree::io::sync::{DecodeResponseIter, encode_ranges};
use bao_tree::io::{BaoContentItem, DecodeError, Leaf};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use rand::{Rng, RngExt};

/// Largest byte range one audit asks for.
pub const MAX_AUDIT_RANGE: u64 = 16 * 1024;

/// Largest proof accepted. A [`MAX_AUDIT_RANGE`] range spans at most 17 chunks (17 KiB of data)
/// and, in a 32 MiB fragment, some 40 hash pairs (2.5 KiB): about 20 KiB; the rest is headroom.
pub const MAX_AUDIT_PROOF: usize = 64 * 1024;

/// BLAKE3's own chunk size: with one chunk per block the bao-tree root equals `blake3::hash`.
const BLOCK: BlockSize = BlockSize::ZERO;
const CHUNK: u64 = 1024;

/// Why an audit range or proof was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit range of {len} bytes at offset {offset} lies outside the {size}-byte fragment")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("audit range of {len} bytes exceeds the {max}-byte limit; ask for a smaller range")]
    RangeTooLarge { len: u64, max: u64 },
    #[error("an audit range must cover at least one byte of a non-empty fragment")]
    EmptyRange,
    #[error("audit proof of {len} bytes exceeds the {max}-byte limit")]
    ProofTooLarge { len: usize, max: usize },
    #[error("audit proof does not match the fragment's hash ({at})")]
    Mismatch { at: String },
    #[error("audit proof is truncated: it ends before {at}")]
    Truncated { at: String },
    #[error("audit proof has {extra} bytes after the proven range")]
    TrailingBytes { extra: usize },
    #[error("cannot encode the audit proof: {0}")]
    Encode(String),
}

/// Checks a requested range against a fragment of `size` bytes.
fn check_range(size: u64, offset: u64, len: u64) -> Result<(), AuditError> {
    if len > MAX_AUDIT_RANGE {
        return Err(AuditError::RangeTooLarge {
            len,
            max: MAX_AUDIT_RANGE,
        });
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(AuditError::OutOfRange { offset, len, size });
    }
    if len == 0 && size > 0 {
        return Err(AuditError::EmptyRange);
    }
    Ok(())
}

/// The chunks covering `offset..offset + len` (already checked). An empty fragment still has
/// one (empty) chunk, the root, so its "proof" shows that the root is the hash of nothing.
fn chunks(size: u64, offset: u64, len: u64) -> ChunkRanges {
    if size == 0 {
        return ChunkRanges::from(ChunkNum(0)..ChunkNum(1));
    }
    ChunkRanges::from(ChunkNum(offset / CHUNK)..ChunkNum((offset + len).div_ceil(CHUNK)))
}

/// Encodes the proof for `offset..offset + len` of `data`: the covering chunks and the hashes
/// linking them to the fragment's BLAKE3 root, in verified-streaming (pre-order) order.
pub fn prove(data: &[u8], offset: u64, len: u64) -> Result<Vec<u8>, AuditError> {
    let size = data.len() as u64;
    check_range(size, offset, len)?;
    let outboard = PostOrderMemOutboard::create(data, BLOCK);
    let mut proof = Vec::new();
    encode_ranges(data, &outboard, &chunks(size, offset, len), &mut proof)
        .map_err(|e| AuditError::Encode(e.to_string()))?;
    Ok(proof)
}

/// Checks `proof` for `offset..offset + len` of the fragment with BLAKE3 `root` and `size`
/// bytes, and returns exactly the bytes of that range.
pub fn verify(
    root: &[u8; 32],
    size: u64,
    offset: u64,
    len: u64,
    proof: &[u8],
) -> Result<Vec<u8>, AuditError> {
    check_range(size, offset, len)?;
    if proof.len() > MAX_AUDIT_PROOF {
        return Err(AuditError::ProofTooLarge {
            len: proof.len(),
            max: MAX_AUDIT_PROOF,
        });
    }
    let ranges = chunks(size, offset, len);
    let tree = BaoTree::new(size, BLOCK);
    let mut rest = proof;
    let end = offset + len;
    let mut out = Vec::with_capacity(len as usize);
    // The verifier's own ranges drive the decoder, so the node cannot choose what is checked.
    for item in DecodeResponseIter::new(blake3::Hash::from_bytes(*root), tree, &mut rest, &ranges) {
        match item.map_err(decode_error)? {
            BaoContentItem::Parent(_) => {}
            BaoContentItem::Leaf(Leaf { offset: at, data }) => {
                let from = offset.max(at);
                let to = end.min(at + data.len() as u64);
                if from < to {
                    out.extend_from_slice(&data[(from - at) as usize..(to - at) as usize]);
                }
            }
        }
    }
    if !rest.is_empty() {
        return Err(AuditError::TrailingBytes { extra: rest.len() });
    }
    // Leaves arrive in order and cover the range, so this holds whenever decoding succeeded.
    if out.len() as u64 != len {
        return Err(AuditError::Truncated {
            at: format!("byte {}", offset + out.len() as u64),
        });
    }
    Ok(out)
}

fn decode_error(e: DecodeError) -> AuditError {
    match e {
        DecodeError::ParentHashMismatch(node) => AuditError::Mismatch {
            at: format!(
                "hash pair at level {}, chunk {}",
                node.level(),
                node.mid().0
            ),
        },
        DecodeError::LeafHashMismatch(chunk) => AuditError::Mismatch {
            at: format!("data at byte {}", chunk.to_bytes()),
        },
        DecodeError::ParentNotFound(node) => AuditError::Truncated {
            at: format!(
                "hash pair at level {}, chunk {}",
                node.level(),
                node.mid().0
            ),
        },
        DecodeError::LeafNotFound(chunk) => AuditError::Truncated {
            at: format!("data at byte {}", chunk.to_bytes()),
        },
        DecodeError::Io(e) => AuditError::Truncated {
            at: format!("the end of the data ({e})"),
        },
    }
}

/// A random range of at most [`MAX_AUDIT_RANGE`] bytes inside a fragment of `size` bytes.
///
/// A window of fixed length is placed with its start uniform over every position where it
/// still overlaps the fragment, then clipped to the fragment: each byte is then covered with
/// the same probability, the first and last ones included (a window kept wholly inside would
/// almost never reach the ends). An empty fragment gives `(0, 0)`.
pub fn random_range<R: Rng + ?Sized>(size: u64, rng: &mut R) -> (u64, u64) {
    if size == 0 {
        return (0, 0);
    }
    let window = MAX_AUDIT_RANGE.min(size);
    // Start positions -(window-1) ..= size-1, shifted by window-1 to stay unsigned.
    let shifted = rng.random_range(0..size.saturating_add(window - 1));
    let start = shifted.saturating_sub(window - 1);
    let end = (shifted + 1).min(size);
    (start, end - start)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    fn root(data: &[u8]) -> [u8; 32] {
        *blake3::hash(data).as_bytes()
    }

    fn round_trip(data: &[u8], offset: u64, len: u64) {
        let proof = prove(data, offset, len).unwrap();
        assert!(
            proof.len() <= MAX_AUDIT_PROOF,
            "proof of {} bytes",
            proof.len()
        );
        let got = verify(&root(data), data.len() as u64, offset, len, &proof)
            .unwrap_or_else(|e| panic!("{offset}+{len} of {}: {e}", data.len()));
        assert_eq!(got, &data[offset as usize..(offset + len) as usize]);
    }

    #[test]
    fn bao_root_with_1k_blocks_is_the_plain_blake3_hash() {
        for len in [0, 1, 1023, 1024, 1025, 4096, 100_000, 1 << 20] {
            let d = data(len, 7);
            let outboard = PostOrderMemOutboard::create(&d, BLOCK);
            assert_eq!(outboard.root, blake3::hash(&d), "len {len}");
            assert_eq!(*outboard.root.as_bytes(), crate::codec::fragment_hash(&d));
        }
    }

    #[test]
    fn ranges_at_start_end_middle_and_unaligned_verify() {
        let d = data(1_000_003, 1);
        let size = d.len() as u64;
        round_trip(&d, 0, MAX_AUDIT_RANGE);
        round_trip(&d, 0, 1);
        round_trip(&d, size - MAX_AUDIT_RANGE, MAX_AUDIT_RANGE);
        round_trip(&d, size - 1, 1);
        round_trip(&d, size / 2, MAX_AUDIT_RANGE);
        round_trip(&d, 1023, 2);
        round_trip(&d, 1024, 1024);
        round_trip(&d, 12_345, 9_876);
        round_trip(&d, 500_001, MAX_AUDIT_RANGE);
    }

    #[test]
    fn whole_small_fragments_verify() {
        for len in [1u64, 100, 1023, 1024, 1025, 2048, 5000, MAX_AUDIT_RANGE] {
            let d = data(len as usize, 2);
            round_trip(&d, 0, len);
        }
        // One chunk: the proof is the data itself, the root is its hash.
        let d = data(700, 3);
        assert_eq!(prove(&d, 0, 700).unwrap(), d);
    }

    #[test]
    fn empty_fragment_proves_the_empty_root_only() {
        let proof = prove(&[], 0, 0).unwrap();
        assert!(proof.is_empty());
        assert_eq!(
            verify(&root(&[]), 0, 0, 0, &proof).unwrap(),
            Vec::<u8>::new()
        );
        // A node claiming an empty fragment where the manifest says otherwise fails.
        let err = verify(&root(b"x"), 0, 0, 0, &proof).unwrap_err();
        assert!(matches!(err, AuditError::Mismatch { .. }), "{err}");
        assert_eq!(random_range(0, &mut StdRng::seed_from_u64(0)), (0, 0));
        assert_eq!(
            prove(&[], 0, 1),
            Err(AuditError::OutOfRange {
                offset: 0,
                len: 1,
                size: 0
            })
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_in_the_proof_fails() {
        for (len, offset, range) in [
            (1_000_003usize, 300_000u64, 3_000u64),
            (1500, 0, 1500),
            (700, 10, 20),
        ] {
            let d = data(len, 4);
            let r = root(&d);
            let proof = prove(&d, offset, range).unwrap();
            for i in 0..proof.len() {
                for bit in [0x01, 0x80] {
                    let mut bad = proof.clone();
                    bad[i] ^= bit;
                    let err = verify(&r, len as u64, offset, range, &bad).unwrap_err();
                    assert!(
                        matches!(err, AuditError::Mismatch { .. }),
                        "byte {i}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_proof_for_another_range_or_fragment_fails() {
        let d = data(200_000, 5);
        let other = data(200_000, 6);
        let size = d.len() as u64;
        let proof = prove(&d, 50_000, 4_000).unwrap();
        // Another range, same length: different chunks, so the hashes do not line up.
        assert!(verify(&root(&d), size, 100_000, 4_000, &proof).is_err());
        // Same range of another fragment of the same size.
        let err = verify(&root(&other), size, 50_000, 4_000, &proof).unwrap_err();
        assert!(matches!(err, AuditError::Mismatch { .. }), "{err}");
        // The right proof of the other fragment, checked against this one's root.
        let theirs = prove(&other, 50_000, 4_000).unwrap();
        assert!(verify(&root(&d), size, 50_000, 4_000, &theirs).is_err());
        // A size that changes the tree's shape along the range's path fails even with the right
        // proof. (A size differing only in subtrees the proof does not open would pass: a proof
        // authenticates the size only when it includes the last chunk; the CM's size comes from
        // the signed manifest, so that is no weakness.)
        assert!(verify(&root(&d), size * 2, 50_000, 4_000, &proof).is_err());
        // A proof answers exactly the chunks asked for: one covering more (here, a sub-range
        // of it) is refused, while another range with the same covering chunks verifies.
        assert!(verify(&root(&d), size, 50_100, 100, &proof).is_err());
        assert!(verify(&root(&d), size, 48 * 1024 + 1, 4 * 1024, &proof).is_ok());
    }

    #[test]
    fn truncated_or_padded_proofs_fail() {
        let d = data(300_000, 8);
        let r = root(&d);
        let proof = prove(&d, 70_000, 10_000).unwrap();
        for cut in [0, 1, 63, 64, proof.len() / 2, proof.len() - 1] {
            let err = verify(&r, 300_000, 70_000, 10_000, &proof[..cut]).unwrap_err();
            assert!(
                matches!(err, AuditError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
        let mut padded = proof.clone();
        padded.push(0);
        assert_eq!(
            verify(&r, 300_000, 70_000, 10_000, &padded),
            Err(AuditError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn bad_ranges_and_oversized_proofs_are_refused_before_decoding() {
        let d = data(10_000, 9);
        let r = root(&d);
        assert_eq!(
            prove(&d, 9_000, 1_001),
            Err(AuditError::OutOfRange {
                offset: 9_000,
                len: 1_001,
                size: 10_000
            })
        );
        assert!(matches!(
            prove(&d, u64::MAX, 2),
            Err(AuditError::OutOfRange { .. })
        ));
        assert!(matches!(
            verify(&r, 10_000, 10_000, 1, &[]),
            Err(AuditError::OutOfRange { .. })
        ));
        assert_eq!(prove(&d, 5, 0), Err(AuditError::EmptyRange));
        let big = data(100_000, 9);
        assert_eq!(
            prove(&big, 0, MAX_AUDIT_RANGE + 1),
            Err(AuditError::RangeTooLarge {
                len: MAX_AUDIT_RANGE + 1,
                max: MAX_AUDIT_RANGE
            })
        );
        let huge = vec![0u8; MAX_AUDIT_PROOF + 1];
        assert_eq!(
            verify(&r, 10_000, 0, 100, &huge),
            Err(AuditError::ProofTooLarge {
                len: MAX_AUDIT_PROOF + 1,
                max: MAX_AUDIT_PROOF
            })
        );
        let msg = prove(&d, 9_000, 1_001).unwrap_err().to_string();
        assert_eq!(
            msg,
            "audit range of 1001 bytes at offset 9000 lies outside the 10000-byte fragment"
        );
    }

    #[test]
    fn random_ranges_stay_inside_and_reach_both_ends() {
        let mut rng = StdRng::seed_from_u64(0xa0d1);
        for size in [1u64, 2, 1000, MAX_AUDIT_RANGE, MAX_AUDIT_RANGE + 1, 1 << 20] {
            let (mut first, mut last) = (false, false);
            for _ in 0..20_000 {
                let (offset, len) = random_range(size, &mut rng);
                assert!((1..=MAX_AUDIT_RANGE).contains(&len) && offset + len <= size);
                first |= offset == 0;
                last |= offset + len == size;
            }
            assert!(first && last, "size {size}: ends never audited");
        }
    }

    #[test]
    fn random_ranges_of_random_fragments_verify() {
        let mut rng = StdRng::seed_from_u64(0xb1a3e);
        for _ in 0..200 {
            let size = match rng.random_range(0..4u8) {
                0 => rng.random_range(1..3_000u64),
                1 => rng.random_range(1..40_000u64),
                _ => rng.random_range(1..2_000_000u64),
            };
            let d = data(size as usize, rng.random());
            let (offset, len) = random_range(size, &mut rng);
            round_trip(&d, offset, len);
            // And an arbitrary (not window-shaped) range.
            let len = rng.random_range(1..=MAX_AUDIT_RANGE.min(size));
            let offset = rng.random_range(0..=size - len);
            round_trip(&d, offset, len);
        }
    }

    #[test]
    fn largest_fragment_proof_fits_the_bound() {
        let d = data(crate::proto::MAX_FRAGMENT, 10);
        let size = d.len() as u64;
        // Unaligned (17 chunks) and straddling the root's split, so both paths to the root
        // are opened: the worst case, 17 KiB of data and 40 hash pairs (19.5 KiB).
        let offset = size / 2 - MAX_AUDIT_RANGE / 2 + 1;
        let proof = prove(&d, offset, MAX_AUDIT_RANGE).unwrap();
        assert_eq!(proof.len(), 17 * 1024 + 40 * 64);
        assert!(verify(&root(&d), size, offset, MAX_AUDIT_RANGE, &proof).is_ok());
    }
}
