//! Adversarial end-to-end tests: a peer speaking the real protocols over real QUIC to real node
//! processes, presenting forged, expired and misdirected tickets and unauthorised store orders.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Collective;
use futures::{AsyncReadExt, AsyncWriteExt};
use overlay::cert::{self, Role};
use overlay::net::{Net, split_peer};
use overlay::proto::{
    self, DeleteOrder, FetchRequest, FetchResponse, StoreOrder, StoreRequest, StoreResponse,
};
use overlay::store::FragmentId;
use overlay::ticket::{Ticket, TicketFile};
use overlay::{ContentId, Identity, PeerId, Signed};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

async fn connect(me: &Identity, node_dir: &Path) -> (Net, PeerId) {
    let net = Net::start(me, &["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()])
        .await
        .unwrap();
    let addr = std::fs::read_to_string(node_dir.join("node.addr")).unwrap();
    let (peer, addr) = split_peer(&addr.trim().parse().unwrap()).unwrap();
    net.add_addresses(peer, vec![addr]);
    (net, peer)
}

/// The (segment, index) of some fragment of `content` that the node in `node_dir` holds.
fn held_fragment(node_dir: &Path, content: &str) -> (u32, u16) {
    let dir = node_dir.join("fragments").join(content);
    let name = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| !n.starts_with('.'))
        .expect("the node holds a fragment of the content");
    let (s, i) = name.split_once('.').unwrap();
    (s.parse().unwrap(), i.parse().unwrap())
}

/// Sends one fetch; returns the answer and how many bytes followed it.
async fn fetch(
    net: &Net,
    node: PeerId,
    ticket: &Ticket,
    content: ContentId,
    (segment, index): (u32, u16),
) -> (FetchResponse, usize) {
    let mut s = net.open(node, proto::FETCH).await.unwrap();
    let req = FetchRequest {
        ticket: ticket.clone(),
        content,
        segment,
        index,
    };
    proto::write_msg(&mut s, &req).await.unwrap();
    let answer: FetchResponse = proto::read_msg(&mut s, proto::MAX_SMALL_MSG).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    (answer, rest.len())
}

fn refused(answer: &FetchResponse, bytes: usize, expect: &str) {
    match answer {
        FetchResponse::Refused(reason) => {
            assert!(
                reason.contains(expect),
                "refusal `{reason}` should mention `{expect}`"
            )
        }
        other => panic!("expected a refusal mentioning `{expect}`, got {other:?}"),
    }
    assert_eq!(bytes, 0, "no fragment bytes after a refusal");
}

#[test]
fn nodes_refuse_bad_tickets_with_a_clear_reason_and_no_bytes() {
    let c = Collective::start(4);
    let a = c.publish(&c.make_file("a", 10_000, 1), 2, 2, "1MiB");
    let b = c.publish(&c.make_file("b", 10_000, 2), 2, 2, "1MiB");
    let content_a: ContentId = a.parse().unwrap();
    let content_b: ContentId = b.parse().unwrap();
    let me = Identity::generate();
    let other = Identity::generate();
    let me_id = me.peer_id().to_string();
    let good = TicketFile::load(&c.ticket(&a, &me_id, "1h"))
        .unwrap()
        .ticket;
    let for_other = TicketFile::load(&c.ticket(&a, &other.peer_id().to_string(), "1h"))
        .unwrap()
        .ticket;
    let short = TicketFile::load(&c.ticket(&a, &me_id, "1s"))
        .unwrap()
        .ticket;
    // A partner certified by some other root, not by this collective's CM.
    let rogue_root = Identity::generate();
    let rogue_partner = Identity::generate();
    let rogue_cert = cert::issue(
        &rogue_root,
        rogue_partner.peer_id(),
        Role::Partner,
        1,
        overlay::time::now_secs(),
        3600,
    );
    let unknown_partner = Ticket::issue(&rogue_partner, rogue_cert, good.body().clone());
    let mut forged = good.clone();
    forged.signed.body.allowance *= 10;

    let held = held_fragment(&c.nodes[0].dir, &a);
    runtime().block_on(async {
        let (net, node) = connect(&me, &c.nodes[0].dir).await;
        // The genuine ticket is served: the refusals below are about the tickets, not the setup.
        let (answer, bytes) = fetch(&net, node, &good, content_a, held).await;
        assert!(
            matches!(answer, FetchResponse::Ok { len, .. } if len as usize == bytes && bytes > 0),
            "{answer:?}"
        );

        let (answer, bytes) = fetch(&net, node, &forged, content_a, held).await;
        refused(&answer, bytes, "forged");
        let (answer, bytes) = fetch(&net, node, &for_other, content_a, held).await;
        refused(&answer, bytes, "issued to client");
        let (answer, bytes) = fetch(&net, node, &good, content_b, held).await;
        refused(&answer, bytes, "content");
        let (answer, bytes) = fetch(&net, node, &unknown_partner, content_a, held).await;
        refused(&answer, bytes, "unknown partner");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let (answer, bytes) = fetch(&net, node, &short, content_a, held).await;
        refused(&answer, bytes, "expired");
    });
}

#[test]
fn only_the_cm_can_order_a_node_to_store_or_delete() {
    let c = Collective::start(4);
    let a = c.publish(&c.make_file("a", 10_000, 3), 2, 2, "1MiB");
    let content: ContentId = a.parse().unwrap();
    let node_dir = &c.nodes[1].dir;
    let (segment, index) = held_fragment(node_dir, &a);
    let held = node_dir
        .join("fragments")
        .join(&a)
        .join(format!("{segment}.{index}"));
    let cm: PeerId = c.cm_id().parse().unwrap();
    let rogue = Identity::generate();

    runtime().block_on(async {
        let (net, node) = connect(&rogue, node_dir).await;
        let data = vec![7u8; 4096];
        let planted = FragmentId {
            content: ContentId([9; 32]),
            segment: 0,
            index: 0,
        };
        let order = StoreOrder {
            node,
            fragment: planted,
            hash: overlay::codec::fragment_hash(&data),
            len: data.len() as u32,
            issued: overlay::time::now_secs(),
        };
        // Signed by an unregistered peer.
        let own = Signed::sign(&rogue, order.clone());
        // Claiming to be the CM, with a signature that is not the CM's.
        let mut claimed = own.clone();
        claimed.signer = cm;
        for req in [StoreRequest::Store(own), StoreRequest::Store(claimed)] {
            let mut s = net.open(node, proto::STORE).await.unwrap();
            proto::write_msg(&mut s, &req).await.unwrap();
            let _ = s.write_all(&data).await;
            let _ = s.flush().await;
            let answer: Result<StoreResponse, _> =
                proto::read_msg(&mut s, proto::MAX_SMALL_MSG).await;
            assert!(
                !matches!(answer, Ok(StoreResponse::Ok)),
                "a store order not signed by the CM was accepted"
            );
        }
        assert!(
            !node_dir
                .join("fragments")
                .join(ContentId([9; 32]).to_string())
                .exists()
        );

        let delete = Signed::sign(
            &rogue,
            DeleteOrder {
                node,
                fragments: vec![FragmentId {
                    content,
                    segment,
                    index,
                }],
                issued: overlay::time::now_secs(),
            },
        );
        let mut s = net.open(node, proto::STORE).await.unwrap();
        proto::write_msg(&mut s, &StoreRequest::Delete(delete))
            .await
            .unwrap();
        let answer: Result<StoreResponse, _> = proto::read_msg(&mut s, proto::MAX_SMALL_MSG).await;
        assert!(
            !matches!(answer, Ok(StoreResponse::Ok)),
            "a delete order not signed by the CM was accepted"
        );
    });
    assert!(
        held.exists(),
        "the fragment survived the forged delete order"
    );
}
