//! The transport baselines CCDS is built on, measured in this process: one QUIC stream
//! carrying `size` bytes over raw quinn, then over libp2p's QUIC transport with libp2p-stream as
//! CCDS uses it. Each returns (wall seconds, CPU seconds of this process, both endpoints).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use overlay::Identity;
use overlay::net::Net;

pub const CHUNK: usize = 1 << 20;

pub fn cpu_seconds() -> f64 {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// CPU seconds (user + system) of `who`: `RUSAGE_SELF` (this process) or `RUSAGE_THREAD`.
pub fn rusage_cpu(who: libc::c_int) -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    #[allow(unsafe_code)]
    let usage = unsafe {
        libc::getrusage(who, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// One raw quinn stream with rustls' default cipher suites (AES-256-GCM negotiated).
pub async fn raw_quinn(size: u64) -> (f64, f64) {
    raw_quinn_with(size, None).await
}

/// One raw quinn stream whose TLS 1.3 handshake negotiates `suite` (QUIC needs AES-128-GCM
/// offered as well, for its initial packets).
#[allow(dead_code)] // the end-to-end benchmark uses only the default suite
pub async fn raw_quinn_with(size: u64, suite: Option<rustls::SupportedCipherSuite>) -> (f64, f64) {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suite) = suite {
        provider.cipher_suites = vec![
            suite,
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ];
    }
    let provider = Arc::new(provider);
    let tls13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(tls13)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap(),
    ));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(tls13)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
    ));
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_config);

    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut stream = conn.accept_uni().await.unwrap();
        let mut total = 0u64;
        while let Some(chunk) = stream.read_chunk(usize::MAX, true).await.unwrap() {
            total += chunk.bytes.len() as u64;
        }
        total
    });
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let data = Bytes::from(vec![0xa5u8; CHUNK]);
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let mut stream = conn.open_uni().await.unwrap();
    let mut sent = 0;
    while sent < size {
        let n = (size - sent).min(CHUNK as u64) as usize;
        stream.write_chunk(data.slice(..n)).await.unwrap();
        sent += n as u64;
    }
    stream.finish().unwrap();
    let got = receiver.await.unwrap();
    assert_eq!(got, size);
    (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0)
}

pub async fn libp2p_stream(size: u64) -> (f64, f64) {
    let listen: overlay::Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
    let a = Net::start(&Identity::generate(), std::slice::from_ref(&listen))
        .await
        .unwrap();
    let b = Net::start(&Identity::generate(), &[listen]).await.unwrap();
    let proto = libp2p::StreamProtocol::new("/ccds/bench/1");
    let mut incoming = b.accept(proto.clone()).unwrap();
    let receiver = tokio::spawn(async move {
        let (_, mut s) = incoming.next().await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break total;
            }
            total += n as u64;
        }
    });
    a.add_addresses(b.local_peer_id(), b.listen_addrs().to_vec());
    let data = vec![0xa5u8; CHUNK];
    // Connect first so the handshake is not timed, as for quinn.
    drop(
        a.open(
            b.local_peer_id(),
            libp2p::StreamProtocol::new("/ccds/none/1"),
        )
        .await,
    );
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let mut s = a.open(b.local_peer_id(), proto).await.unwrap();
    let mut sent = 0;
    while sent < size {
        let n = (size - sent).min(CHUNK as u64) as usize;
        s.write_all(&data[..n]).await.unwrap();
        sent += n as u64;
    }
    s.close().await.unwrap();
    let got = receiver.await.unwrap();
    assert_eq!(got, size);
    (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0)
}
