//! The segment codec next to the raw primitives it is built on, in one run, on the same buffers,
//! at the publishing defaults (k = 8, m = 4, 8 MiB segments):
//!
//! * `encode/ccds`: [`SegmentCodec::encode`] plus [`fragment_hash`] of every fragment, exactly as
//!   `cm-coordinator`'s publishing does per segment; `encode/primitives`: AES-256-GCM in place,
//!   Reed-Solomon parity and BLAKE3 of the `k + m` fragments on a buffer allocated once.
//! * `decode/{ccds,primitives}/{fast,reconstruct}`: BLAKE3 check of the `k` fragments received (as
//!   the client does), Reed-Solomon reconstruction when data fragments are missing (`reconstruct`:
//!   `m` of them, parity used instead), AES-GCM decryption into a reused segment buffer (the
//!   primitives: aws-lc-rs's out-of-place opening of the contiguous ciphertext, its fastest).
//!   The received fragments are handed over as owned buffers outside the timing, as the network
//!   hands them to the client.
//! * `encode_parallel/{ccds,primitives}/N`: N segments encoded on N threads, N = available cores,
//!   to see whether encoding scales with cores.
//!
//! Throughput is plaintext segment bytes. The gap between `ccds` and `primitives` is the codec's
//! glue: fresh fragment buffers and the copies into and out of them.
//!
//!     cargo bench --bench codec

use std::hint::black_box;
use std::thread;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use overlay::codec::{SegmentCodec, fragment_hash};
use overlay::manifest::{TAG_LEN, fragment_len};
use reed_solomon_erasure::galois_8::ReedSolomon;

/// `cm-coordinator publish` defaults: 8 data shards, 4 parity shards, 8 MiB segments.
const K: usize = 8;
const M: usize = 4;
const SEGMENT: usize = 8 << 20;
const LEN: usize = (SEGMENT + TAG_LEN).div_ceil(K);
const KEY: [u8; 32] = [7; 32];
const INDEX: u64 = 3;
/// What `overlay::codec` binds into every tag, so the primitives read the codec's fragments.
const AAD: &[u8] = b"ccds/segment/v1";

/// The codec's building blocks used directly, on one buffer of `k + m` contiguous shards.
struct Primitives {
    cipher: LessSafeKey,
    rs: ReedSolomon,
}

impl Primitives {
    fn new() -> Self {
        Self {
            cipher: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap()),
            rs: ReedSolomon::new(K, M).unwrap(),
        }
    }

    /// The codec's nonce: the segment index, little-endian.
    fn nonce() -> Nonce {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&INDEX.to_le_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts the plaintext in `buf[..SEGMENT]` in place and turns `buf` into `k + m`
    /// fragments; returns their hashes.
    fn encode(&self, buf: &mut [u8]) -> Vec<[u8; 32]> {
        let tag = self
            .cipher
            .seal_in_place_separate_tag(Self::nonce(), Aad::from(AAD), &mut buf[..SEGMENT])
            .unwrap();
        buf[SEGMENT..SEGMENT + TAG_LEN].copy_from_slice(tag.as_ref());
        let mut shards: Vec<&mut [u8]> = buf.chunks_exact_mut(LEN).collect();
        self.rs.encode(&mut shards).unwrap();
        buf.chunks_exact(LEN)
            .map(|f| *blake3::hash(f).as_bytes())
            .collect()
    }

    /// Checks the `present` fragments of `buf` against `hashes`, rebuilds missing data ones and
    /// decrypts into `out` (out of place: faster than in place with AWS-LC).
    fn decode(&self, buf: &mut [u8], present: &[bool], hashes: &[[u8; 32]], out: &mut [u8]) {
        let mut shards: Vec<(&mut [u8], bool)> = buf
            .chunks_exact_mut(LEN)
            .zip(present.iter().copied())
            .collect();
        for ((f, _), hash) in shards.iter().zip(hashes).filter(|((_, p), _)| *p) {
            assert!(blake3::hash(f).as_bytes() == hash, "fragment corrupted");
        }
        if !present[..K].iter().all(|&p| p) {
            self.rs.reconstruct_data(&mut shards).unwrap();
        }
        self.cipher
            .open_separate_gather(
                Self::nonce(),
                Aad::from(AAD),
                &buf[..SEGMENT],
                &buf[SEGMENT..SEGMENT + TAG_LEN],
                out,
            )
            .unwrap();
    }
}

/// What publishing does per segment (`cm-coordinator/src/publish.rs`, `encode_file`).
fn publish_segment(codec: &SegmentCodec, plain: &[u8]) -> Vec<[u8; 32]> {
    let fragments = codec.encode(INDEX, plain);
    fragments.iter().map(|f| fragment_hash(f)).collect()
}

/// What the client does with the `k` fragments it received for a segment
/// (`ccds-client/src/fetch.rs` hashes each one, then the segment is decoded into a reused
/// segment buffer, `out`). Returns the fragments, which the client puts back in its pool.
fn fetch_segment(
    codec: &SegmentCodec,
    mut received: Vec<Option<Vec<u8>>>,
    hashes: &[[u8; 32]],
    out: &mut Vec<u8>,
) -> Vec<Option<Vec<u8>>> {
    for (f, hash) in received.iter().zip(hashes) {
        if let Some(f) = f {
            assert!(&fragment_hash(f) == hash, "fragment corrupted");
        }
    }
    codec
        .decode_into(INDEX, SEGMENT, &mut received, out)
        .unwrap();
    received
}

fn plaintext() -> Vec<u8> {
    (0..SEGMENT).map(|i| (i * 31 + i / 7) as u8).collect()
}

/// A buffer of `k + m` shards holding the plaintext, ready for [`Primitives::encode`].
fn shard_buffer(plain: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; (K + M) * LEN];
    buf[..SEGMENT].copy_from_slice(plain);
    buf
}

fn encode(c: &mut Criterion) {
    assert_eq!(LEN, fragment_len(SEGMENT, K));
    let plain = plaintext();
    let codec = SegmentCodec::new(&KEY, K, M).unwrap();
    let raw = Primitives::new();
    let mut buf = shard_buffer(&plain);
    assert_eq!(
        raw.encode(&mut buf),
        publish_segment(&codec, &plain),
        "the primitives must produce the codec's fragments"
    );

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(SEGMENT as u64));
    g.bench_function("ccds", |b| {
        b.iter(|| publish_segment(&codec, black_box(&plain)))
    });
    // Re-encrypting the previous iteration's ciphertext costs the same as encrypting plaintext.
    g.bench_function("primitives", |b| b.iter(|| raw.encode(black_box(&mut buf))));
    g.finish();
}

fn decode(c: &mut Criterion) {
    let plain = plaintext();
    let codec = SegmentCodec::new(&KEY, K, M).unwrap();
    let raw = Primitives::new();
    let fragments = codec.encode(INDEX, &plain);
    let hashes: Vec<[u8; 32]> = fragments.iter().map(|f| fragment_hash(f)).collect();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(SEGMENT as u64));
    // `fast`: the k data fragments; `reconstruct`: the last k - m data fragments and m parity.
    for (path, first) in [("fast", 0), ("reconstruct", M)] {
        let present: Vec<bool> = (0..K + M)
            .map(|i| (first..first + K).contains(&i))
            .collect();
        let received: Vec<Option<Vec<u8>>> = fragments
            .iter()
            .zip(&present)
            .map(|(f, &p)| p.then(|| f.to_vec()))
            .collect();
        let mut contiguous = vec![0u8; (K + M) * LEN];
        for (shard, f) in contiguous.chunks_exact_mut(LEN).zip(&received) {
            if let Some(f) = f {
                shard.copy_from_slice(f);
            }
        }
        let mut out = Vec::new();
        fetch_segment(&codec, received.clone(), &hashes, &mut out);
        assert_eq!(out, plain);
        let mut check = contiguous.clone();
        let mut plain_out = vec![0u8; SEGMENT];
        raw.decode(&mut check, &present, &hashes, &mut plain_out);
        assert_eq!(
            plain_out, plain,
            "the primitives must decode the codec's fragments"
        );

        g.bench_function(format!("ccds/{path}"), |b| {
            b.iter_batched(
                || received.clone(),
                |received| fetch_segment(&codec, received, &hashes, &mut out),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("primitives/{path}"), |b| {
            b.iter_batched(
                || contiguous.clone(),
                |mut buf| {
                    raw.decode(&mut buf, &present, &hashes, &mut plain_out);
                    buf
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn encode_parallel(c: &mut Criterion) {
    let n = thread::available_parallelism().map_or(1, |n| n.get());
    let plain = plaintext();
    let codec = SegmentCodec::new(&KEY, K, M).unwrap();
    let raw = Primitives::new();
    let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| shard_buffer(&plain)).collect();

    let mut g = c.benchmark_group("encode_parallel");
    g.throughput(Throughput::Bytes((n * SEGMENT) as u64));
    g.bench_function(format!("ccds/{n}"), |b| {
        b.iter(|| {
            thread::scope(|s| {
                for _ in 0..n {
                    s.spawn(|| publish_segment(&codec, black_box(&plain)));
                }
            })
        })
    });
    g.bench_function(format!("primitives/{n}"), |b| {
        b.iter(|| {
            thread::scope(|s| {
                for buf in &mut bufs {
                    s.spawn(|| raw.encode(black_box(buf)));
                }
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = encode, decode, encode_parallel
}
criterion_main!(benches);
