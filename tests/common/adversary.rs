//! What a cheating participant can do with nothing but its own keys: sign reports and receipts
//! of its choosing and send them to the coordinator over the real protocol.

#![allow(dead_code)]

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use overlay::net::{Net, split_peer};
use overlay::proto::{self, ClientRequest, ClientResponse, ControlRequest, ControlResponse};
use overlay::receipt::{Receipt, ReceiptBody};
use overlay::report::{NodeReport, NodeReportBody};
use overlay::{Identity, Multiaddr, PeerId, Signed};

/// Loads a key file (a node's `node.key` or a client's key).
pub fn identity(key: &Path) -> Identity {
    Identity::load(key).unwrap_or_else(|e| panic!("cannot load {}: {e}", key.display()))
}

/// Signs a report with `node` and sends it to the coordinator at `cm_addr` as that node (whose
/// own process must be stopped: one peer ID, one connection). Returns the coordinator's answer.
pub fn send_report(cm_addr: &str, node: &Identity, body: NodeReportBody) -> ControlResponse {
    let report: NodeReport = Signed::sign(node, body);
    send(cm_addr, node, &ControlRequest::Report(report))
}

/// Sends a control request as `who`.
pub fn send(cm_addr: &str, who: &Identity, request: &ControlRequest) -> ControlResponse {
    exchange(cm_addr, who, proto::CONTROL, request)
}

/// Sends a client request as `who`.
pub fn send_client(cm_addr: &str, who: &Identity, request: &ClientRequest) -> ClientResponse {
    exchange(cm_addr, who, proto::CLIENT, request)
}

/// One request and its answer on a fresh stream of `protocol` to the coordinator at `cm_addr`.
fn exchange<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    cm_addr: &str,
    who: &Identity,
    protocol: libp2p::StreamProtocol,
    request: &Req,
) -> Resp {
    overlay::net::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listen: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
        let net = Net::start(who, &[listen]).await.expect("adversary swarm");
        let addr: Multiaddr = cm_addr.parse().unwrap();
        let (cm, bare) = split_peer(&addr).expect("coordinator address with /p2p");
        net.add_addresses(cm, vec![bare]);
        let mut stream = net
            .open_with(cm, protocol, 3, Duration::from_secs(5))
            .await
            .expect("a stream to the coordinator");
        proto::write_msg(&mut stream, request).await.unwrap();
        proto::read_msg::<_, Resp>(&mut stream, proto::MAX_SMALL_MSG)
            .await
            .expect("the coordinator's answer")
    })
}

/// A receipt signed by `client` saying `node` delivered `bytes` under `ticket`.
pub fn receipt(
    client: &Identity,
    ticket: &overlay::ticket::Ticket,
    node: &str,
    fragments: u64,
    bytes: u64,
    seq: u64,
) -> Receipt {
    let t = ticket.body();
    Signed::sign(
        client,
        ReceiptBody {
            ticket_id: t.ticket_id,
            content: t.content,
            node: PeerId::from_str(node).unwrap(),
            fragments,
            bytes,
            seq,
            time: overlay::time::now_secs(),
        },
    )
}
