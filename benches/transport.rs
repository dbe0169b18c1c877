//! Transport baselines on loopback, measured in one run: one QUIC stream carrying SIZE bytes
//! (default 1 GiB) over raw quinn, then over libp2p's QUIC transport with libp2p-stream as CCDS
//! uses it. Reports goodput and CPU-seconds per GiB (both endpoints live in this process).
//!
//!     cargo bench --bench transport [-- SIZE_MIB]

#[path = "support/transport.rs"]
mod transport;

use transport::{libp2p_stream, raw_quinn, raw_quinn_with};

fn report(name: &str, bytes: u64, secs: f64, cpu: f64) {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{name:<28} {:>8.1} MB/s  {:>6.2} CPU-s/GiB  ({} MiB in {secs:.2} s)",
        bytes as f64 / secs / 1e6,
        cpu / gib,
        bytes >> 20
    );
}

fn main() {
    overlay::net::install_crypto_provider();
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (secs, cpu) = rt.block_on(raw_quinn(size));
    report("raw quinn, one stream", size, secs, cpu);
    // The same raw quinn stream under each TLS 1.3 cipher suite: the AEAD is most of QUIC's
    // cost per byte, so the suite a transport negotiates decides much of its speed.
    use rustls::crypto::ring::cipher_suite as suite;
    for (name, suite) in [
        ("  AES-128-GCM", suite::TLS13_AES_128_GCM_SHA256),
        ("  AES-256-GCM", suite::TLS13_AES_256_GCM_SHA384),
        ("  ChaCha20-Poly1305", suite::TLS13_CHACHA20_POLY1305_SHA256),
    ] {
        let (secs, cpu) = rt.block_on(raw_quinn_with(size, Some(suite)));
        report(name, size, secs, cpu);
    }
    let (secs, cpu) = rt.block_on(libp2p_stream(size));
    report("libp2p QUIC + libp2p-stream", size, secs, cpu);
}
