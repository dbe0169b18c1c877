//! The fragment store next to plain file I/O, in one run, in the same directory, on the same
//! sizes: 64 fragments of 1 MiB (one 8 MiB segment / k = 8) per iteration.
//!
//! * `store/put` (BLAKE3 check, quota, synced temporary file renamed into place) against
//!   `plain/atomic_write` (the same create, write, `sync_data`, rename as `store::write_atomic`,
//!   without the hash) and `plain/write` (a bare `fs::write`);
//! * `store/get` with the cache disabled (read the file and check its hash) against `plain/read`
//!   (`fs::read` of the very files the store reads), and `store/get_cached` (every fragment in the
//!   LRU cache).
//!
//! The files were just written, so reads come from the kernel's page cache, not the device;
//! writes are synced, so they do reach it. The temporary directory is `$TMPDIR` (default `/tmp`).
//!
//!     cargo bench --bench store

use std::fs;
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use overlay::ContentId;
use overlay::codec::fragment_hash;
use overlay::store::{FragmentId, FragmentStore};

const FRAGMENT: usize = 1 << 20;
const FRAGMENTS: usize = 64;

/// `store::write_atomic` reduced to its system calls.
fn atomic_write(path: &Path, tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    file.write_all(data)?;
    file.sync_data()?;
    fs::rename(tmp, path)
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0x5a; FRAGMENT];
    let hash = fragment_hash(&data);
    let content = ContentId([0x5e; 32]);
    let ids: Vec<FragmentId> = (0..FRAGMENTS as u16)
        .map(|index| FragmentId {
            content,
            segment: 0,
            index,
        })
        .collect();
    // The store's layout (`ROOT/<content hex>/<segment>.<index>`), for the plain baselines.
    let content_dir = dir.path().join(content.to_string());
    let stored: Vec<PathBuf> = ids
        .iter()
        .map(|id| content_dir.join(format!("{}.{}", id.segment, id.index)))
        .collect();
    let plain: Vec<(PathBuf, PathBuf)> = (0..FRAGMENTS)
        .map(|i| {
            let name = |prefix| content_dir.join(format!("{prefix}plain.{i}"));
            (name(""), name(".tmp-"))
        })
        .collect();

    let store = FragmentStore::open(dir.path(), u64::MAX, 0).unwrap();
    for id in &ids {
        store.put(id, &hash, &data).unwrap();
    }
    assert!(
        stored.iter().all(|p| p.exists()),
        "the store's layout changed"
    );
    let cached = FragmentStore::open(dir.path(), u64::MAX, FRAGMENTS * FRAGMENT).unwrap();

    let mut g = c.benchmark_group("store");
    // Synced writes of 64 MiB take tens of milliseconds: too slow for linear sampling in 3 s.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes((FRAGMENTS * FRAGMENT) as u64));
    g.bench_function("put", |b| {
        b.iter(|| {
            for id in &ids {
                store.put(id, &hash, black_box(&data)).unwrap();
            }
        })
    });
    g.bench_function("get", |b| {
        b.iter(|| {
            for id in &ids {
                black_box(store.get(id).unwrap());
            }
        })
    });
    // A hit clones a `Bytes` handle: the figure is lookups, not bytes moved.
    g.bench_function("get_cached", |b| {
        b.iter(|| {
            for id in &ids {
                black_box(cached.get(id).unwrap());
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("plain");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes((FRAGMENTS * FRAGMENT) as u64));
    g.bench_function("atomic_write", |b| {
        b.iter(|| {
            for (path, tmp) in &plain {
                atomic_write(path, tmp, black_box(&data)).unwrap();
            }
        })
    });
    g.bench_function("write", |b| {
        b.iter(|| {
            for (path, _) in &plain {
                fs::write(path, black_box(&data)).unwrap();
            }
        })
    });
    g.bench_function("read", |b| {
        b.iter(|| {
            for path in &stored {
                black_box(fs::read(path).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = store;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(store);
