//! A node serving fragments over real QUIC, a partner selling tickets for it, and clients that
//! keep cumulative receipt totals: the fixture of the fetch-path tests.

use std::sync::Arc;

use ccds_node::{Limits, ServeOptions, Server};
use overlay::cert::{self, Certificate, Role};
use overlay::codec::fragment_hash;
use overlay::net::Net;
use overlay::proto::{self, FetchRequest, FetchResponse, MAX_SMALL_MSG};
use overlay::receipt::{Receipt, ReceiptBody};
use overlay::store::{FragmentId, FragmentStore};
use overlay::ticket::{Ticket, TicketBody};
use overlay::time::now_secs;
use overlay::{ContentId, Identity, PeerId, Signed};

use super::loopback;

/// The content every fixture serves.
const CONTENT: ContentId = ContentId([0x5e; 32]);

/// Fragment `index` of the fixture's content (segment 0).
pub fn fragment(index: u16) -> FragmentId {
    FragmentId {
        content: CONTENT,
        segment: 0,
        index,
    }
}

/// The bytes of fragment `index`: `len` bytes of `index`.
pub fn fragment_bytes(index: u16, len: usize) -> Vec<u8> {
    vec![index as u8; len]
}

/// A node holding `fragments` fragments of `len` bytes, and a partner selling tickets for them.
pub struct Fixture {
    pub partner: Identity,
    pub partner_cert: Certificate,
    pub node: Server,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new(fragments: u16, len: usize, limits: Limits) -> anyhow::Result<Self> {
        let cm = Identity::generate();
        let dir = tempfile::tempdir()?;
        let store = FragmentStore::open(&dir.path().join("fragments"), 1 << 30, 16 << 20)?;
        for index in 0..fragments {
            let data = fragment_bytes(index, len);
            store.put(&fragment(index), &fragment_hash(&data), &data)?;
        }
        let node = Server::start(ServeOptions {
            identity: Identity::generate(),
            cm: cm.peer_id(),
            store: Arc::new(store),
            receipts_log: dir.path().join("receipts.jsonl"),
            listen: vec![loopback()],
            limits,
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

    /// A client with its own ticket (`allowance` bytes) and network endpoint.
    pub async fn client(&self, ticket_id: u8, allowance: u64) -> anyhow::Result<Client> {
        let identity = Identity::generate();
        let net = Net::start(&identity, &[loopback()]).await?;
        net.add_addresses(self.node.peer_id(), vec![self.node.addr()]);
        let ticket = Ticket::issue(
            &self.partner,
            self.partner_cert.clone(),
            TicketBody {
                ticket_id: [ticket_id; 16],
                content: CONTENT,
                client: identity.peer_id(),
                not_after: now_secs() + 600,
                allowance,
            },
        );
        Ok(Client {
            identity,
            net,
            ticket,
            node: self.node.peer_id(),
            fragments: 0,
            bytes: 0,
            seq: 0,
            adopt: true,
        })
    }

    /// Waits until receipts cover every byte served under `ticket_id` (they arrive after the
    /// client closes its side); returns the bytes still uncovered.
    pub async fn settled(&self, ticket_id: &[u8; 16]) -> u64 {
        for _ in 0..100 {
            if self.node.ticket_count(ticket_id).outstanding == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.node.ticket_count(ticket_id).outstanding
    }
}

/// A client keeping cumulative receipt totals for the one node.
pub struct Client {
    pub identity: Identity,
    pub net: Net,
    pub ticket: Ticket,
    pub node: PeerId,
    pub fragments: u64,
    pub bytes: u64,
    pub seq: u64,
    /// Whether it continues from the receipt the node sends back when that one is newer.
    pub adopt: bool,
}

impl Client {
    /// The same client starting again under its ticket, its totals from zero.
    pub fn restarted(&self, adopt: bool) -> Self {
        Self {
            identity: self.identity.clone(),
            net: self.net.clone(),
            ticket: self.ticket.clone(),
            node: self.node,
            fragments: 0,
            bytes: 0,
            seq: 0,
            adopt,
        }
    }

    /// The next cumulative receipt, after `bytes` more arrived.
    pub fn receipt(&mut self, bytes: u64) -> Receipt {
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
    pub async fn ask(&self, index: u16) -> anyhow::Result<(libp2p::Stream, FetchResponse)> {
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
}

/// Closes the client's side of a fetch stream and waits for the node to close its own, which it
/// does once it is done with the stream (the receipt included).
pub async fn close_and_wait(stream: &mut libp2p::Stream) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use futures::{AsyncReadExt, AsyncWriteExt};
    stream.close().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut rest),
    )
    .await
    .context("the node did not close the fetch stream")??;
    Ok(())
}

/// Fetches fragment `index` (of `len` bytes) on a stream of its own, checks its bytes, signs a
/// receipt and waits for the node to finish with the stream; returns the node's answer.
///
/// libp2p-stream drops an inbound stream that arrives before the node's accept loop has taken
/// the previous one (its queue holds one), so with several clients a stream is now and then
/// reset before the node even reads the request. Like a real client, this asks again: nothing
/// was served on it.
pub async fn fetch_checked(
    c: &mut Client,
    index: u16,
    len: usize,
) -> anyhow::Result<FetchResponse> {
    let mut attempts = 0;
    let (mut stream, response) = loop {
        attempts += 1;
        match c.ask(index).await {
            Ok(answered) => break answered,
            Err(e) if attempts < 5 => {
                eprintln!("fragment {index}: {e:#}; asking again");
                // A node's accept loop starved of CPU drops streams for a moment.
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempts)).await;
            }
            Err(e) => return Err(e.context(format!("fragment {index}"))),
        }
    };
    if let FetchResponse::Ok { len: got, .. } = &response {
        let data = proto::read_bytes(&mut stream, *got as usize).await?;
        anyhow::ensure!(
            data == fragment_bytes(index, len),
            "fragment {index} came back wrong"
        );
        let receipt = c.receipt(data.len() as u64);
        proto::write_msg(&mut stream, &receipt).await?;
    }
    close_and_wait(&mut stream).await?;
    Ok(response)
}
