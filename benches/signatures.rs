//! Signature checks per second, CCDS's next to the raw Ed25519 verification they are built on,
//! in one run:
//!
//! * `verify/ticket`: [`Ticket::verify`] as a node does it on every fetch: the partner
//!   certificate chained to the CM root, then the ticket signature (two Ed25519 verifications);
//! * `verify/receipt`: a client receipt checked against the ticket's client ([`Signed::verify_by`],
//!   one verification);
//! * `verify/identity`: [`overlay::identity::verify`] of a 64-byte message (Ed25519 key decoded
//!   from the signer's peer ID, domain-separated message);
//! * `verify/ed25519_dalek`: the baseline, one `VerifyingKey::verify` of a 64-byte message, the
//!   call overlay makes (not `verify_strict`).
//!
//! ed25519-dalek 3.0 has batch verification (`verify_batch`) behind its `batch` feature, which
//! CCDS does not enable, so it is not measured here.
//!
//!     cargo bench --bench signatures

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use overlay::cert::{self, Role};
use overlay::receipt::{Receipt, ReceiptBody};
use overlay::ticket::{Ticket, TicketBody};
use overlay::{ContentId, Identity, Signed};

const NOW: u64 = 1_750_000_000;

fn verify(c: &mut Criterion) {
    let cm = Identity::from_secret([1; 32]);
    let partner = Identity::from_secret([2; 32]);
    let client_secret = [3; 32];
    let client = Identity::from_secret(client_secret);
    let node = Identity::from_secret([4; 32]).peer_id();
    let content = ContentId([5; 32]);
    let partner_cert = cert::issue(&cm, partner.peer_id(), Role::Partner, 1, NOW, 3600);
    let ticket = Ticket::issue(
        &partner,
        partner_cert,
        TicketBody {
            ticket_id: [6; 16],
            content,
            client: client.peer_id(),
            not_after: NOW + 600,
            allowance: 1 << 30,
        },
    );
    let receipt: Receipt = Signed::sign(
        &client,
        ReceiptBody {
            ticket_id: [6; 16],
            content,
            node,
            fragments: 12,
            bytes: 12 << 20,
            seq: 1,
            time: NOW,
        },
    );
    let msg = [0x42u8; 64];
    let domain = b"ccds/bench/v1";
    let signature = client.sign(domain, &msg);
    // The client's key again, as ed25519-dalek sees it.
    let key = SigningKey::from_bytes(&client_secret);
    let raw_signature = key.sign(&msg);
    let verifying = key.verifying_key();

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ticket", |b| {
        b.iter(|| {
            black_box(&ticket)
                .verify(&cm.peer_id(), NOW)
                .unwrap()
                .allowance
        })
    });
    g.bench_function("receipt", |b| {
        b.iter(|| {
            black_box(&receipt)
                .verify_by(&client.peer_id())
                .unwrap()
                .bytes
        })
    });
    g.bench_function("identity", |b| {
        b.iter(|| {
            overlay::identity::verify(&client.peer_id(), domain, black_box(&msg), &signature)
                .unwrap()
        })
    });
    g.bench_function("ed25519_dalek", |b| {
        b.iter(|| verifying.verify(black_box(&msg), &raw_signature).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = signatures;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = verify
}
criterion_main!(signatures);
