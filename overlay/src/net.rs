//! The network: a libp2p swarm over QUIC, owned by one task, driven through a cloneable [`Net`]
//! handle. Protocols are plain async functions over [`libp2p::Stream`]s obtained from
//! [`Net::open`] (outbound) and [`Net::accept`] (inbound), via `libp2p-stream`.
//!
//! `libp2p-stream` dials unknown peers by ID only, so an [`AddressBook`] behaviour answers the
//! swarm's question "where is this peer?" from addresses the programs learnt (contact lists,
//! join messages, multiaddrs given on the command line).
//!
//! `libp2p-stream` also hands its own dial requests to the swarm through a one-slot channel and
//! drops them when the slot is taken (rust-libp2p #6157), so concurrent opens to unconnected
//! peers could wait forever. [`Net::open_with`] therefore asks the swarm task to dial first,
//! through a bounded command channel of its own; `open_stream` then rides on that connection.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, SwarmEvent, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use lru::LruCache;
use tracing::{debug, info, warn};

use crate::identity::Identity;

/// How many peers' addresses are remembered.
const ADDRESS_BOOK_CAPACITY: usize = 100_000;
/// How long opening a stream (including dialling) may take before it is retried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to open a stream before giving up.
const OPEN_ATTEMPTS: u32 = 3;

/// Network errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot build the QUIC transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot open {protocol} stream to {peer}: {reason}")]
    Open {
        peer: PeerId,
        protocol: StreamProtocol,
        reason: String,
    },
    #[error("protocol {0} already has an accept loop")]
    AlreadyAccepting(StreamProtocol),
}

type Book = Arc<Mutex<LruCache<PeerId, Vec<Multiaddr>>>>;

/// Supplies known addresses of peers to outgoing dials.
pub struct AddressBook {
    book: Book,
}

impl NetworkBehaviour for AddressBook {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        maybe_peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let Some(peer) = maybe_peer else {
            return Ok(vec![]);
        };
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        Ok(book.get(&peer).cloned().unwrap_or_default())
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour {
    addresses: AddressBook,
    stream: libp2p_stream::Behaviour,
}

/// Aborts the swarm task when the last [`Net`] handle is dropped.
struct TaskGuard(tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A handle on the running swarm.
#[derive(Clone)]
pub struct Net {
    local: PeerId,
    control: libp2p_stream::Control,
    book: Book,
    listen: Arc<Vec<Multiaddr>>,
    dial: tokio::sync::mpsc::Sender<PeerId>,
    _task: Arc<TaskGuard>,
}

/// Inbound streams of one protocol, from [`Net::accept`].
pub use libp2p_stream::IncomingStreams;

/// Pending dial requests to the swarm task.
const DIAL_QUEUE: usize = 1024;

/// Installs the process-wide TLS crypto provider. libp2p's QUIC and TLS crates pull in both
/// ring and aws-lc-rs, and rustls refuses to guess between them.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How long a listener on an unspecified address is given to report every interface's address.
const UNSPECIFIED_SETTLE: Duration = Duration::from_millis(200);

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(a) => a.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(a) => a.is_unspecified(),
        _ => false,
    })
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(a) => a.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(a) => a.is_loopback(),
        _ => false,
    })
}

impl Net {
    /// Starts a swarm for `identity` listening on `listen` (QUIC multiaddrs; port 0 picks one),
    /// and returns once every listener has an address.
    pub async fn start(identity: &Identity, listen: &[Multiaddr]) -> Result<Self, NetError> {
        install_crypto_provider();
        let book: Book = Arc::new(Mutex::new(LruCache::new(
            ADDRESS_BOOK_CAPACITY.try_into().expect("non-zero"),
        )));
        let behaviour = Behaviour {
            addresses: AddressBook { book: book.clone() },
            stream: libp2p_stream::Behaviour::new(),
        };
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity.keypair())
            .with_tokio()
            .with_quic()
            .with_behaviour(|_| behaviour)
            .map_err(|e| NetError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let control = swarm.behaviour().stream.new_control();
        let mut pending = std::collections::HashSet::new();
        for addr in listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            pending.insert(id);
        }
        let mut addrs = Vec::new();
        while !pending.is_empty() {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    pending.remove(&listener_id);
                    addrs.push(address);
                }
                SwarmEvent::ListenerClosed {
                    addresses, reason, ..
                } => {
                    return Err(NetError::Listen {
                        addr: addresses.first().cloned().unwrap_or(Multiaddr::empty()),
                        reason: format!("{reason:?}"),
                    });
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(NetError::Listen {
                        addr: listen.first().cloned().unwrap_or(Multiaddr::empty()),
                        reason: error.to_string(),
                    });
                }
                _ => {}
            }
        }
        // A listener on an unspecified address (0.0.0.0, ::) reports one address per network
        // interface, all at once: take them all, not only the first (often loopback, which
        // nobody else can dial), and put the others first.
        if listen.iter().any(is_unspecified) {
            let settle = tokio::time::sleep(UNSPECIFIED_SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    () = &mut settle => break,
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::NewListenAddr { address, .. } = event {
                            addrs.push(address);
                        }
                    }
                }
            }
            addrs.sort_by_key(is_loopback);
            addrs.dedup();
        }
        let local = identity.peer_id();
        info!(peer = %local, addrs = ?addrs, "listening");
        let (dial, mut dials) = tokio::sync::mpsc::channel::<PeerId>(DIAL_QUEUE);
        let task = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = swarm.select_next_some() => event,
                    Some(peer) = dials.recv() => {
                        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                            .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        if let Err(error) = swarm.dial(opts) {
                            debug!(%peer, %error, "dial not started");
                        }
                        continue;
                    }
                };
                match event {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        debug!(peer = %peer_id, "connected")
                    }
                    SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                        debug!(peer = %peer_id, ?cause, "disconnected")
                    }
                    SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                        debug!(peer = ?peer_id, %error, "dial failed")
                    }
                    SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
                    _ => {}
                }
            }
        });
        Ok(Self {
            local,
            control,
            book,
            listen: Arc::new(addrs),
            dial,
            _task: Arc::new(TaskGuard(task.abort_handle())),
        })
    }

    /// This peer's ID.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// The addresses the listeners bound to.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen
    }

    /// Remembers where `peer` can be reached (replacing what was known).
    pub fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let addrs = addrs.into_iter().map(without_peer).collect();
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(peer, addrs);
    }

    /// Accepts inbound streams of `protocol`. The returned stream must be polled continuously
    /// (`libp2p-stream` drops inbound streams nobody is waiting for).
    pub fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, NetError> {
        self.control
            .clone()
            .accept(protocol.clone())
            .map_err(|_| NetError::AlreadyAccepting(protocol))
    }

    /// Opens a stream of `protocol` to `peer`, dialling if needed, retrying transient failures.
    pub async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<libp2p::Stream, NetError> {
        self.open_with(peer, protocol, OPEN_ATTEMPTS, OPEN_TIMEOUT)
            .await
    }

    /// Like [`Net::open`] with an explicit number of attempts and a timeout per attempt
    /// (a client with other holders to try gives up on a dead node sooner).
    pub async fn open_with(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        attempts: u32,
        timeout: Duration,
    ) -> Result<libp2p::Stream, NetError> {
        let mut last = String::new();
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            // A full queue means dials are already pending; libp2p-stream's own request remains.
            let _ = self.dial.try_send(peer);
            let mut control = self.control.clone();
            match tokio::time::timeout(timeout, control.open_stream(peer, protocol.clone())).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(p))) => {
                    return Err(NetError::Open {
                        peer,
                        protocol,
                        reason: format!("peer does not speak {p}"),
                    });
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("timed out after {timeout:?}"),
            }
            debug!(%peer, %protocol, attempt, error = %last, "stream open failed");
        }
        Err(NetError::Open {
            peer,
            protocol,
            reason: last,
        })
    }
}

/// Why a list of addresses of one peer is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PeerAddrsError {
    #[error("no address given")]
    Empty,
    #[error("address {0} does not end in /p2p/<peer ID>")]
    NoPeer(Multiaddr),
    #[error("the addresses name two peers, {first} and {other}; they must all name one")]
    TwoPeers { first: PeerId, other: PeerId },
}

/// Splits addresses that must all end in `/p2p/<one peer ID>` (the coordinators of one
/// collective share its identity) into that peer and its transport addresses, duplicates
/// dropped, in the order given.
pub fn split_one_peer(addrs: &[Multiaddr]) -> Result<(PeerId, Vec<Multiaddr>), PeerAddrsError> {
    let mut peer = None;
    let mut transports: Vec<Multiaddr> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let (p, transport) =
            split_peer(addr).ok_or_else(|| PeerAddrsError::NoPeer(addr.clone()))?;
        match peer {
            None => peer = Some(p),
            Some(first) if first != p => return Err(PeerAddrsError::TwoPeers { first, other: p }),
            Some(_) => {}
        }
        if !transports.contains(&transport) {
            transports.push(transport);
        }
    }
    Ok((peer.ok_or(PeerAddrsError::Empty)?, transports))
}

/// Deserializes a list of addresses, or the single address that files written before lists
/// were allowed hold (`#[serde(deserialize_with = "overlay::net::one_or_many")]`).
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Multiaddr),
        Many(Vec<Multiaddr>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    })
}

/// Splits `/…/p2p/<id>` into the peer ID and the address without it.
pub fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some((peer, without_peer(addr.clone()))),
        _ => None,
    }
}

fn without_peer(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// `addr` with `/p2p/<peer>` appended.
pub fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    without_peer(addr.clone()).with(Protocol::P2p(peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn addresses_of_one_peer_split_into_it_and_its_transports() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let t1: Multiaddr = "/ip4/10.0.0.1/udp/4000/quic-v1".parse().unwrap();
        let t2: Multiaddr = "/ip4/10.0.0.2/udp/4000/quic-v1".parse().unwrap();
        let (peer, transports) =
            split_one_peer(&[with_peer(&t1, a), with_peer(&t2, a), with_peer(&t1, a)]).unwrap();
        assert_eq!((peer, transports), (a, vec![t1.clone(), t2.clone()]));
        assert!(matches!(
            split_one_peer(&[with_peer(&t1, a), with_peer(&t2, b)]),
            Err(PeerAddrsError::TwoPeers { first, other }) if first == a && other == b
        ));
        assert!(matches!(
            split_one_peer(std::slice::from_ref(&t1)),
            Err(PeerAddrsError::NoPeer(x)) if x == t1
        ));
        assert!(matches!(split_one_peer(&[]), Err(PeerAddrsError::Empty)));
    }

    /// The dialer's order picks the TLS 1.3 suite that seals every QUIC packet; the workspace
    /// patches libp2p-tls to put AES-GCM first (vendor/libp2p-tls/README.md).
    #[test]
    fn quic_offers_aes_gcm_before_chacha20() {
        use libp2p::identity::Keypair;
        use rustls::CipherSuite;
        let keypair = Keypair::generate_ed25519();
        let client = libp2p_tls::make_client_config(&keypair, None).unwrap();
        let server = libp2p_tls::make_server_config(&keypair).unwrap();
        for provider in [client.crypto_provider(), server.crypto_provider()] {
            let suites: Vec<CipherSuite> =
                provider.cipher_suites.iter().map(|s| s.suite()).collect();
            assert_eq!(
                suites,
                [
                    CipherSuite::TLS13_AES_128_GCM_SHA256,
                    CipherSuite::TLS13_AES_256_GCM_SHA384,
                    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                ]
            );
        }
    }

    #[tokio::test]
    async fn an_unspecified_listener_reports_every_interface_routable_first() {
        let any: Multiaddr = "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap();
        let net = Net::start(&Identity::generate(), &[any]).await.unwrap();
        let ips: Vec<std::net::Ipv4Addr> = net
            .listen_addrs()
            .iter()
            .filter_map(|a| {
                a.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip),
                    _ => None,
                })
            })
            .collect();
        assert!(ips.contains(&std::net::Ipv4Addr::LOCALHOST), "{ips:?}");
        // The address this host sends from by default (no packet leaves: UDP connect only
        // picks a route); without a route there is only loopback.
        let routed = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
            .and_then(|s| s.local_addr())
            .ok()
            .and_then(|a| match a.ip() {
                std::net::IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
                _ => None,
            });
        if let Some(ip) = routed {
            assert!(ips.contains(&ip), "{ip} missing from {ips:?}");
            assert!(!ips[0].is_loopback(), "loopback first: {ips:?}");
        }
    }

    #[tokio::test]
    async fn streams_flow_between_two_swarms() {
        let listen: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
        let a = Net::start(&Identity::generate(), std::slice::from_ref(&listen))
            .await
            .unwrap();
        let b = Net::start(&Identity::generate(), &[listen]).await.unwrap();
        let proto = StreamProtocol::new("/ccds/test/1");
        let mut incoming = b.accept(proto.clone()).unwrap();
        tokio::spawn(async move {
            while let Some((_, mut s)) = incoming.next().await {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                buf.reverse();
                s.write_all(&buf).await.unwrap();
                s.close().await.unwrap();
            }
        });
        a.add_addresses(b.local_peer_id(), b.listen_addrs().to_vec());
        let mut s = a.open(b.local_peer_id(), proto).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.close().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"olleh");
    }
}
