//! The node's store and fetch protocols, served in-process over real QUIC on loopback and
//! driven by a test CM, partner and clients.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ccds_node::{Limits, ServeOptions, Server};
use futures::{AsyncReadExt, AsyncWriteExt};
use overlay::cert::{self, Certificate, Role};
use overlay::codec::fragment_hash;
use overlay::net::Net;
use overlay::proto::{
    self, DeleteOrder, FetchRequest, FetchResponse, MAX_SMALL_MSG, StoreOrder, StoreRequest,
    StoreResponse,
};
use overlay::receipt::{Receipt, ReceiptBody};
use overlay::store::{FragmentId, FragmentStore};
use overlay::ticket::{Ticket, TicketBody};
use overlay::time::now_secs;
use overlay::{ContentId, Identity, Multiaddr, PeerId, Signed};

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

/// A node serving for a test CM, plus the parties that talk to it.
struct Fixture {
    cm: Identity,
    cm_net: Net,
    partner: Identity,
    partner_cert: Certificate,
    node: Server,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(quota: u64) -> anyhow::Result<Self> {
        let cm = Identity::generate();
        let dir = tempfile::tempdir()?;
        let store = FragmentStore::open(&dir.path().join("fragments"), quota, 1 << 20)?;
        let node = Server::start(ServeOptions {
            identity: Identity::generate(),
            cm: cm.peer_id(),
            store: Arc::new(store),
            receipts_log: dir.path().join("receipts.jsonl"),
            listen: vec![loopback()],
            limits: Limits::default(),
        })
        .await?;
        let cm_net = Net::start(&cm, &[loopback()]).await?;
        let partner = Identity::generate();
        let partner_cert = cert::issue(&cm, partner.peer_id(), Role::Partner, 7, now_secs(), 3600);
        Ok(Self {
            cm,
            cm_net,
            partner,
            partner_cert,
            node,
            dir,
        })
    }

    /// A network endpoint for another party, knowing where the node is.
    async fn peer(&self, identity: &Identity) -> anyhow::Result<Net> {
        let net = Net::start(identity, &[loopback()]).await?;
        self.know_node(&net);
        Ok(net)
    }

    fn know_node(&self, net: &Net) {
        net.add_addresses(self.node.peer_id(), vec![self.node.addr()]);
    }

    fn order(&self, signer: &Identity, fragment: FragmentId, data: &[u8]) -> Signed<StoreOrder> {
        Signed::sign(
            signer,
            StoreOrder {
                node: self.node.peer_id(),
                fragment,
                hash: fragment_hash(data),
                len: data.len() as u32,
                issued: now_secs(),
            },
        )
    }

    fn ticket(&self, client: PeerId, content: ContentId) -> Ticket {
        Ticket::issue(
            &self.partner,
            self.partner_cert.clone(),
            TicketBody {
                ticket_id: [42; 16],
                content,
                client,
                not_after: now_secs() + 600,
                allowance: 1 << 30,
            },
        )
    }
}

fn fragment(segment: u32, index: u16) -> FragmentId {
    FragmentId {
        content: ContentId([0xcc; 32]),
        segment,
        index,
    }
}

/// Pushes a store request (and `data`, for a store order) and returns the node's answer.
async fn push(
    net: &Net,
    node: PeerId,
    request: &StoreRequest,
    data: &[u8],
) -> anyhow::Result<StoreResponse> {
    let mut stream = net.open(node, proto::STORE).await?;
    proto::write_msg(&mut stream, request).await?;
    stream.write_all(data).await?;
    stream.flush().await?;
    let answer = proto::read_msg(&mut stream, MAX_SMALL_MSG).await?;
    let _ = stream.close().await;
    Ok(answer)
}

/// What a fetch returned: the answer, the fragment bytes, and anything sent after them.
struct Fetched {
    response: FetchResponse,
    data: Vec<u8>,
    trailing: Vec<u8>,
}

/// Fetches a fragment, answering with `receipt` (if any) after the bytes.
async fn fetch(
    net: &Net,
    node: PeerId,
    request: &FetchRequest,
    receipt: Option<&Receipt>,
) -> anyhow::Result<Fetched> {
    let mut stream = net.open(node, proto::FETCH).await?;
    proto::write_msg(&mut stream, request).await?;
    let response: FetchResponse = proto::read_msg(&mut stream, MAX_SMALL_MSG).await?;
    let data = match response {
        FetchResponse::Ok { len, .. } => proto::read_bytes(&mut stream, len as usize).await?,
        _ => Vec::new(),
    };
    if let Some(receipt) = receipt {
        proto::write_msg(&mut stream, receipt).await?;
    }
    stream.close().await?;
    // The node closes its side once it is done with the stream (receipt included).
    let mut trailing = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut trailing))
        .await
        .context("the node did not close the fetch stream")??;
    Ok(Fetched {
        response,
        data,
        trailing,
    })
}

fn receipt(client: &Identity, ticket: &Ticket, node: PeerId, bytes: u64) -> Receipt {
    Signed::sign(
        client,
        ReceiptBody {
            ticket_id: ticket.body().ticket_id,
            content: ticket.body().content,
            node,
            fragments: 1,
            bytes,
            seq: 1,
            time: now_secs(),
        },
    )
}

fn refused(answer: &StoreResponse, starting: &str) -> anyhow::Result<()> {
    match answer {
        StoreResponse::Refused(reason) if reason.starts_with(starting) => Ok(()),
        other => bail!("expected a refusal starting with {starting:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn cm_signed_store_then_ticketed_fetch_returns_the_same_bytes() -> anyhow::Result<()> {
    let f = Fixture::new(1 << 30).await?;
    f.know_node(&f.cm_net);
    // More than one write chunk, not a multiple of it.
    let data: Vec<u8> = (0..700_001u32).map(|i| (i * 31 % 251) as u8).collect();
    let id = fragment(3, 5);
    let order = f.order(&f.cm, id, &data);
    let answer = push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Store(order),
        &data,
    )
    .await?;
    assert_eq!(answer, StoreResponse::Ok);
    assert!(f.node.store().contains(&id));

    let client = Identity::generate();
    let client_net = f.peer(&client).await?;
    let ticket = f.ticket(client.peer_id(), id.content);
    let request = FetchRequest {
        content: id.content,
        ticket: ticket.clone(),
        segment: id.segment,
        index: id.index,
    };
    let receipt = receipt(&client, &ticket, f.node.peer_id(), data.len() as u64);
    assert_eq!(f.node.upload_bps(), 0, "no delivery timed yet");
    let got = fetch(&client_net, f.node.peer_id(), &request, Some(&receipt)).await?;
    assert_eq!(
        got.response,
        FetchResponse::Ok {
            len: data.len() as u32,
            receipt: None,
        }
    );
    assert!(got.data == data, "fetched bytes differ from stored bytes");
    assert!(got.trailing.is_empty());

    // The receipt was checked and kept, in memory and in the log.
    let stats = f.node.stats();
    assert_eq!((stats.stored, stats.served), (1, 1));
    assert_eq!(stats.receipts_accepted, 1);
    assert_eq!(f.node.latest_receipt(&[42; 16]), Some(receipt.clone()));
    // The delivery, large enough to time, gave the node its first upload rate.
    assert!(f.node.upload_bps() > 0);
    let log = std::fs::read_to_string(f.dir.path().join("receipts.jsonl"))?;
    let logged: Vec<Receipt> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(logged, vec![receipt]);

    // A fragment the node does not hold.
    let missing = FetchRequest {
        index: id.index + 1,
        ..request.clone()
    };
    let got = fetch(&client_net, f.node.peer_id(), &missing, None).await?;
    assert_eq!(got.response, FetchResponse::NotFound);

    // A fetch whose receipt is signed by someone else: served, but the receipt is refused.
    let forged = self::receipt(&Identity::generate(), &ticket, f.node.peer_id(), 1);
    let got = fetch(&client_net, f.node.peer_id(), &request, Some(&forged)).await?;
    assert!(got.data == data);
    assert_eq!(f.node.stats().receipts_invalid, 1);

    // The CM deletes the fragment.
    let delete = Signed::sign(
        &f.cm,
        DeleteOrder {
            node: f.node.peer_id(),
            fragments: vec![id],
            issued: now_secs(),
        },
    );
    let answer = push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Delete(delete),
        &[],
    )
    .await?;
    assert_eq!(answer, StoreResponse::Ok);
    assert!(!f.node.store().contains(&id));
    assert_eq!(f.node.store().used(), 0);
    Ok(())
}

#[tokio::test]
async fn orders_not_signed_by_the_cm_store_nothing() -> anyhow::Result<()> {
    let f = Fixture::new(1 << 30).await?;
    let data = vec![7u8; 10_000];

    // A stranger pushing an order it signed itself.
    let rogue = Identity::generate();
    let rogue_net = f.peer(&rogue).await?;
    let order = f.order(&rogue, fragment(0, 0), &data);
    let answer = push(
        &rogue_net,
        f.node.peer_id(),
        &StoreRequest::Store(order),
        &data,
    )
    .await?;
    refused(&answer, "bad signature")?;

    // The CM's own connection does not make a non-CM signature acceptable.
    f.know_node(&f.cm_net);
    let order = f.order(&rogue, fragment(0, 1), &data);
    let answer = push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Store(order),
        &data,
    )
    .await?;
    refused(&answer, "bad signature")?;

    // A CM-signed order delivered by another peer is valid (repairs travel that way), but a
    // copy of it with the body altered is not.
    let mut tampered = f.order(&f.cm, fragment(0, 2), &data);
    tampered.body.fragment.index = 3;
    let answer = push(
        &rogue_net,
        f.node.peer_id(),
        &StoreRequest::Store(tampered),
        &data,
    )
    .await?;
    refused(&answer, "bad signature")?;

    // A CM order for another node.
    let mut order = f.order(&f.cm, fragment(0, 4), &data);
    order.body.node = rogue.peer_id();
    let order = Signed::sign(&f.cm, order.body);
    let answer = push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Store(order),
        &data,
    )
    .await?;
    refused(&answer, "not for this node")?;

    // A CM order whose bytes do not match its hash.
    let order = f.order(&f.cm, fragment(0, 5), &data);
    let wrong = vec![8u8; data.len()];
    let answer = push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Store(order),
        &wrong,
    )
    .await?;
    refused(&answer, "hash mismatch")?;

    // A rogue delete order.
    let delete = Signed::sign(
        &rogue,
        DeleteOrder {
            node: f.node.peer_id(),
            fragments: vec![fragment(0, 0)],
            issued: now_secs(),
        },
    );
    let answer = push(
        &rogue_net,
        f.node.peer_id(),
        &StoreRequest::Delete(delete),
        &[],
    )
    .await?;
    refused(&answer, "bad signature")?;

    assert_eq!(f.node.store().used(), 0);
    assert!(f.node.store().list()?.is_empty());
    assert_eq!(f.node.stats().stored, 0);
    assert_eq!(f.node.stats().store_refused, 6);
    Ok(())
}

#[tokio::test]
async fn over_quota_orders_are_refused_before_the_bytes() -> anyhow::Result<()> {
    let f = Fixture::new(20_000).await?;
    f.know_node(&f.cm_net);
    let data = vec![1u8; 15_000];
    let first = f.order(&f.cm, fragment(1, 0), &data);
    let answer = push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Store(first),
        &data,
    )
    .await?;
    assert_eq!(answer, StoreResponse::Ok);
    let second = f.order(&f.cm, fragment(1, 1), &data);
    let answer = push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Store(second),
        &data,
    )
    .await?;
    refused(&answer, "quota exceeded")?;
    assert_eq!(f.node.store().list()?, vec![fragment(1, 0)]);
    Ok(())
}

#[tokio::test]
async fn tickets_for_another_client_or_another_root_get_no_bytes() -> anyhow::Result<()> {
    let f = Fixture::new(1 << 30).await?;
    f.know_node(&f.cm_net);
    let data = vec![9u8; 50_000];
    let id = fragment(0, 0);
    let order = f.order(&f.cm, id, &data);
    let answer = push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Store(order),
        &data,
    )
    .await?;
    assert_eq!(answer, StoreResponse::Ok);

    // A valid ticket, but issued to someone else than the peer presenting it.
    let buyer = Identity::generate();
    let thief = Identity::generate();
    let thief_net = f.peer(&thief).await?;
    let request = FetchRequest {
        content: id.content,
        ticket: f.ticket(buyer.peer_id(), id.content),
        segment: id.segment,
        index: id.index,
    };
    let got = fetch(&thief_net, f.node.peer_id(), &request, None).await?;
    match &got.response {
        FetchResponse::Refused(reason) => assert!(reason.contains("issued to client"), "{reason}"),
        other => bail!("expected a refusal, got {other:?}"),
    }
    assert!(got.data.is_empty() && got.trailing.is_empty());

    // A ticket whose partner certificate comes from another root.
    let other_root = Identity::generate();
    let fake_cert = cert::issue(
        &other_root,
        f.partner.peer_id(),
        Role::Partner,
        1,
        now_secs(),
        3600,
    );
    let request = FetchRequest {
        content: id.content,
        ticket: Ticket::issue(
            &f.partner,
            fake_cert,
            f.ticket(thief.peer_id(), id.content).signed.body,
        ),
        segment: id.segment,
        index: id.index,
    };
    let got = fetch(&thief_net, f.node.peer_id(), &request, None).await?;
    assert!(matches!(got.response, FetchResponse::Refused(_)));
    assert!(got.data.is_empty() && got.trailing.is_empty());

    // An expired ticket for the right client.
    let mut body = f.ticket(thief.peer_id(), id.content).signed.body;
    body.not_after = now_secs() - 10;
    let request = FetchRequest {
        content: id.content,
        ticket: Ticket::issue(&f.partner, f.partner_cert.clone(), body),
        segment: id.segment,
        index: id.index,
    };
    let got = fetch(&thief_net, f.node.peer_id(), &request, None).await?;
    match &got.response {
        FetchResponse::Refused(reason) => assert!(reason.contains("expired"), "{reason}"),
        other => bail!("expected a refusal, got {other:?}"),
    }
    assert!(got.data.is_empty() && got.trailing.is_empty());

    let stats = f.node.stats();
    assert_eq!((stats.served, stats.fetch_refused), (0, 3));
    Ok(())
}

#[tokio::test]
async fn a_fragment_corrupted_on_disk_is_reported_not_served() -> anyhow::Result<()> {
    let f = Fixture::new(1 << 30).await?;
    f.know_node(&f.cm_net);
    let data = vec![5u8; 4096];
    let id = fragment(2, 2);
    let order = f.order(&f.cm, id, &data);
    push(
        &f.cm_net,
        f.node.peer_id(),
        &StoreRequest::Store(order),
        &data,
    )
    .await?;
    let path = f
        .dir
        .path()
        .join("fragments")
        .join(id.content.to_string())
        .join("2.2");
    let mut raw = std::fs::read(&path)?;
    raw[100] ^= 1;
    std::fs::write(&path, raw)?;

    let client = Identity::generate();
    let client_net = f.peer(&client).await?;
    let request = FetchRequest {
        content: id.content,
        ticket: f.ticket(client.peer_id(), id.content),
        segment: id.segment,
        index: id.index,
    };
    let got = fetch(&client_net, f.node.peer_id(), &request, None).await?;
    assert_eq!(got.response, FetchResponse::Corrupt);
    assert!(got.data.is_empty() && got.trailing.is_empty());
    assert!(!f.node.store().contains(&id));
    Ok(())
}
