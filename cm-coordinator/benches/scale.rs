//! The coordinator's decision cores at Internet scale, one core, no I/O:
//! * liveness: joins and heartbeats handled per second with 1,000,000 nodes registered;
//! * placement: one decision for a 1 GiB content (128 segments of 8 MiB, 12 fragments each)
//!   among 1,000,000 weighted candidates;
//! * repair: one checker pass over 10,000,000 segments (k=8, m=4) held by 1,000,000 nodes.
//!
//! `cargo bench -p cm-coordinator --bench scale`

use std::hint::black_box;
use std::time::{Duration, Instant};

use cm_coordinator::liveness::{Event, Liveness, LivenessConfig};
use cm_coordinator::placement::{self, PlacementRules, Placer, Subnet, WeightedCandidate};
use cm_coordinator::repair::{Layout, Repair, RepairConfig};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use libp2p::PeerId;
use overlay::ContentId;

const NODES: usize = 1_000_000;

fn peers(n: usize) -> Vec<PeerId> {
    (0..n).map(|_| PeerId::random()).collect()
}

fn liveness(c: &mut Criterion) {
    let nodes = peers(NODES);
    let t0 = Instant::now();
    let mut live = Liveness::new(LivenessConfig::default());
    for n in &nodes {
        live.handle(Event::Joined(*n), t0);
    }
    let mut g = c.benchmark_group("liveness_1M_nodes");
    g.sample_size(10);
    g.throughput(Throughput::Elements(NODES as u64));
    // One heartbeat from every node, then the driver's poll: a whole heartbeat round.
    let mut round = 1u64;
    g.bench_function("heartbeat_round", |b| {
        b.iter(|| {
            let now = t0 + Duration::from_secs(30 * round);
            round += 1;
            for n in &nodes {
                live.handle(Event::Heartbeat(*n), now);
            }
            while let Some(a) = live.poll(now) {
                black_box(a);
            }
        })
    });
    // A million fresh nodes joining an active list that already holds a million.
    g.bench_function("join_1M_more", |b| {
        b.iter_batched(
            || peers(NODES),
            |fresh| {
                let mut l = Liveness::new(LivenessConfig::default());
                for n in &nodes {
                    l.handle(Event::Joined(*n), t0);
                }
                let start = Instant::now();
                for n in &fresh {
                    l.handle(Event::Joined(*n), t0);
                }
                black_box(l.online_count());
                start.elapsed()
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn repair(c: &mut Criterion) {
    const SEGMENTS: u32 = 10_000_000;
    const CONTENTS: u32 = 1_000;
    let nodes = peers(NODES);
    let t0 = Instant::now();
    let mut r = Repair::new(RepairConfig {
        threshold: Some(1),
        delay: Duration::from_secs(900),
    });
    for n in &nodes {
        r.online(*n, t0);
    }
    let layout = Layout {
        k: 8,
        m: 4,
        spare: 0,
    };
    let per = SEGMENTS / CONTENTS;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for c in 0..CONTENTS {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&c.to_le_bytes());
        let id = ContentId(id);
        r.add_content(id, layout, per);
        for s in 0..per {
            for i in 0..12u16 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                r.set_holder(&id, s, i, Some(nodes[(x % NODES as u64) as usize]), t0);
            }
        }
    }
    // 1 % of the nodes gone for longer than the repair delay: about 11 % of segments repair.
    for n in nodes.iter().step_by(100) {
        r.offline(*n, t0);
    }
    let later = t0 + Duration::from_secs(3600);
    let mut g = c.benchmark_group("repair_check");
    g.sample_size(10);
    g.throughput(Throughput::Elements(SEGMENTS as u64));
    g.bench_function("pass_10M_segments", |b| {
        b.iter(|| {
            // As the driver does: every segment checked, the most endangered 1024 described.
            let check = r.check_top(later, 1024);
            black_box((check.jobs.len(), check.below_target))
        })
    });
    g.finish();
}

fn placement(c: &mut Criterion) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let candidates: Vec<WeightedCandidate> = peers(NODES)
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            let availability = (next() % 1000) as f64 / 1000.0;
            let bps = next() % (20 << 20);
            let vetted = i % 10 != 0;
            WeightedCandidate {
                node,
                subnet: Subnet::V4([10 + (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                weight: placement::weight(availability, bps, vetted),
                vetted,
            }
        })
        .collect();
    let mut g = c.benchmark_group("placement_1M_candidates");
    g.sample_size(10);
    g.throughput(Throughput::Elements(128));
    g.bench_function("content_1GiB_128_segments", |b| {
        b.iter(|| {
            let placer = Placer::new(&candidates, PlacementRules::default());
            for _ in 0..128 {
                black_box(placer.segment(12).expect("a million candidates suffice"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, liveness, placement, repair);
criterion_main!(benches);
