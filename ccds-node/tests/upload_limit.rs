//! The upload limit over real QUIC on loopback: two clients fetching at once from a node
//! limited to 2 MiB/s get 2 MiB/s between them once the bucket's initial burst is spent, so the
//! limit holds for the node as a whole rather than per stream; the same fetches from an
//! unlimited node take a fraction of the time.

use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ccds_node::throttle::UploadLimit;
use ccds_node::{Limits, ServeOptions, Server};
use futures::{AsyncReadExt, AsyncWriteExt};
use overlay::cert::{self, Certificate, Role};
use overlay::codec::fragment_hash;
use overlay::net::Net;
use overlay::proto::{self, FetchRequest, FetchResponse, MAX_SMALL_MSG};
use overlay::receipt::{Receipt, ReceiptBody};
use overlay::store::{FragmentId, FragmentStore};
use overlay::ticket::{Ticket, TicketBody};
use overlay::time::now_secs;
use overlay::{ContentId, Identity, Multiaddr, PeerId, Signed};

const FRAGMENT: usize = 1 << 20;
const FRAGMENTS: u16 = 6;
/// The limit: 2 MiB/s, so the 6 MiB take about 2 s beyond the 2 MiB burst.
const RATE: u32 = 2 << 20;

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

fn fragment(index: u16) -> FragmentId {
    FragmentId {
        content: ContentId([0x1d; 32]),
        segment: 0,
        index,
    }
}

fn fragment_bytes(index: u16) -> Vec<u8> {
    vec![index as u8; FRAGMENT]
}

/// A node holding `FRAGMENTS` fragments of `FRAGMENT` bytes, and a partner selling tickets.
struct Fixture {
    partner: Identity,
    partner_cert: Certificate,
    node: Server,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(upload_limit: Option<NonZeroU32>) -> anyhow::Result<Self> {
        let cm = Identity::generate();
        let dir = tempfile::tempdir()?;
        let store = FragmentStore::open(&dir.path().join("fragments"), 1 << 30, 16 << 20)?;
        for index in 0..FRAGMENTS {
            let data = fragment_bytes(index);
            store.put(&fragment(index), &fragment_hash(&data), &data)?;
        }
        let node = Server::start(ServeOptions {
            identity: Identity::generate(),
            cm: cm.peer_id(),
            store: Arc::new(store),
            receipts_log: dir.path().join("receipts.jsonl"),
            listen: vec![loopback()],
            limits: Limits {
                upload_limit,
                ..Limits::default()
            },
        })
        .await?;
        let partner = Identity::generate();
        let partner_cert = cert::issue(&cm, partner.peer_id(), Role::Partner, 7, now_secs(), 3600);
        Ok(Self {
            partner,
            partner_cert,
            node,
            _dir: dir,
        })
    }

    /// A client with its own ticket and network endpoint, already connected to the node.
    async fn client(&self, ticket_id: u8) -> anyhow::Result<Client> {
        let identity = Identity::generate();
        let net = Net::start(&identity, &[loopback()]).await?;
        net.add_addresses(self.node.peer_id(), vec![self.node.addr()]);
        let ticket = Ticket::issue(
            &self.partner,
            self.partner_cert.clone(),
            TicketBody {
                ticket_id: [ticket_id; 16],
                content: fragment(0).content,
                client: identity.peer_id(),
                not_after: now_secs() + 600,
                allowance: 1 << 30,
            },
        );
        let mut client = Client {
            identity,
            net,
            ticket,
            node: self.node.peer_id(),
            fragments: 0,
            bytes: 0,
            seq: 0,
        };
        // Asking for a fragment the node lacks connects without taking any upload tokens, so
        // the timed fetches start with the bucket full and the connection up.
        let answer = client.fetch(u16::MAX).await?;
        ensure!(answer == FetchResponse::NotFound, "{answer:?}");
        Ok(client)
    }

    /// Waits until receipts cover every byte served under `ticket_id` (they arrive after the
    /// client closes its side); returns the bytes still uncovered.
    async fn settled(&self, ticket_id: u8) -> u64 {
        let ticket_id = [ticket_id; 16];
        for _ in 0..100 {
            if self.node.ticket_count(&ticket_id).outstanding == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.node.ticket_count(&ticket_id).outstanding
    }
}

/// A client keeping cumulative receipt totals for the one node.
struct Client {
    identity: Identity,
    net: Net,
    ticket: Ticket,
    node: PeerId,
    fragments: u64,
    bytes: u64,
    seq: u64,
}

impl Client {
    /// The next cumulative receipt, after `bytes` more arrived.
    fn receipt(&mut self, bytes: u64) -> Receipt {
        self.fragments += 1;
        self.bytes += bytes;
        self.seq += 1;
        Signed::sign(
            &self.identity,
            ReceiptBody {
                ticket_id: self.ticket.body().ticket_id,
                content: self.ticket.body().content,
                node: self.node,
                fragments: self.fragments,
                bytes: self.bytes,
                seq: self.seq,
                time: now_secs(),
            },
        )
    }

    /// Opens a stream, asks for fragment `index` and reads the node's answer.
    async fn ask(&self, index: u16) -> anyhow::Result<(libp2p::Stream, FetchResponse)> {
        let mut stream = self.net.open(self.node, proto::FETCH).await?;
        let request = FetchRequest {
            ticket: self.ticket.clone(),
            content: self.ticket.body().content,
            segment: 0,
            index,
        };
        proto::write_msg(&mut stream, &request).await?;
        let response = proto::read_msg(&mut stream, MAX_SMALL_MSG).await?;
        Ok((stream, response))
    }

    /// Fetches fragment `index` on a stream of its own, checks its bytes and signs a receipt.
    async fn fetch(&mut self, index: u16) -> anyhow::Result<FetchResponse> {
        // libp2p-stream drops an inbound stream that arrives before the node's accept loop has
        // taken the previous one (its queue holds one), so with two clients a stream is now and
        // then reset before the node even reads the request. Like a real client, try again:
        // nothing was served on it, so the timing is unaffected.
        let mut attempts = 0;
        let (mut stream, response) = loop {
            attempts += 1;
            match self.ask(index).await {
                Ok(answered) => break answered,
                Err(e) if attempts < 5 => eprintln!("fragment {index}: {e:#}; asking again"),
                Err(e) => return Err(e.context(format!("fragment {index}"))),
            }
        };
        if let FetchResponse::Ok { len, .. } = &response {
            let data = proto::read_bytes(&mut stream, *len as usize).await?;
            ensure!(
                data == fragment_bytes(index),
                "fragment {index} came back wrong"
            );
            let receipt = self.receipt(data.len() as u64);
            proto::write_msg(&mut stream, &receipt).await?;
        }
        stream.close().await?;
        // The node closes its side once it is done with the stream (receipt included).
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
            .await
            .context("the node did not close the fetch stream")??;
        Ok(response)
    }

    /// Fetches `indices` one after the other.
    async fn fetch_all(&mut self, indices: Range<u16>) -> anyhow::Result<()> {
        for index in indices {
            let answer = self.fetch(index).await?;
            ensure!(
                matches!(answer, FetchResponse::Ok { len, .. } if len as usize == FRAGMENT),
                "fragment {index}: {answer:?}"
            );
        }
        Ok(())
    }
}

/// Two clients at once, each fetching half of the fragments one after the other: the time from
/// the first request to the last receipt.
async fn two_clients_fetch_everything(f: &Fixture) -> anyhow::Result<Duration> {
    let (mut first, mut second) = (f.client(1).await?, f.client(2).await?);
    let half = FRAGMENTS / 2;
    let started = Instant::now();
    let (a, b) = tokio::join!(first.fetch_all(0..half), second.fetch_all(half..FRAGMENTS));
    let took = started.elapsed();
    a.context("first client")?;
    b.context("second client")?;
    let stats = f.node.stats();
    assert_eq!(stats.served, u64::from(FRAGMENTS));
    assert_eq!((f.settled(1).await, f.settled(2).await), (0, 0));
    assert_eq!(f.node.stats().receipts_accepted, u64::from(FRAGMENTS));
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_limit_holds_across_streams_and_the_default_is_unlimited() -> anyhow::Result<()>
{
    let rate = NonZeroU32::new(RATE).unwrap();
    let total = u64::from(FRAGMENTS) * FRAGMENT as u64;
    // The bucket starts full: its burst goes at once, the rest at the rate.
    let burst = UploadLimit::new(rate).burst_bytes();
    assert!(total >= 3 * burst, "the test must go well past the burst");

    let limited = Fixture::new(Some(rate)).await?;
    let took = two_clients_fetch_everything(&limited).await?;
    let measured = (total - burst) as f64 / took.as_secs_f64();
    let expected = Duration::from_secs_f64((total - burst) as f64 / f64::from(RATE));
    eprintln!(
        "limited node: {total} bytes in {took:?} (expected {expected:?} after a {burst}-byte \
         burst): {measured:.0} B/s against a limit of {RATE} B/s ({:.3}x)",
        measured / f64::from(RATE)
    );
    assert!(
        (0.9..=1.1).contains(&(measured / f64::from(RATE))),
        "measured {measured:.0} B/s, limit {RATE} B/s"
    );

    let unlimited = Fixture::new(Limits::default().upload_limit).await?;
    let quick = two_clients_fetch_everything(&unlimited).await?;
    eprintln!("unlimited node: {total} bytes in {quick:?}");
    assert!(
        quick * 4 < took,
        "the unlimited node took {quick:?}, the limited one {took:?}"
    );
    Ok(())
}
