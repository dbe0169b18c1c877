//! The node's `/ccds/audit/1` handler, served in-process over real QUIC on loopback and
//! audited by a test CM (and by a peer that is not the CM).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ccds_node::{Limits, ServeOptions, Server};
use overlay::audit::{self, MAX_AUDIT_RANGE};
use overlay::codec::fragment_hash;
use overlay::net::Net;
use overlay::proto::{self, AuditRequest, AuditResponse};
use overlay::store::{FragmentId, FragmentStore};
use overlay::{ContentId, Identity, Multiaddr, PeerId};

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

fn fragment(index: u16) -> FragmentId {
    FragmentId {
        content: ContentId([0xad; 32]),
        segment: 2,
        index,
    }
}

/// A node pinned to `cm`, holding `data` as fragment 0.
async fn node(cm: PeerId, data: &[u8]) -> anyhow::Result<(Server, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let store = FragmentStore::open(&dir.path().join("fragments"), 1 << 30, 1 << 20)?;
    store.put(&fragment(0), &fragment_hash(data), data)?;
    let node = Server::start(ServeOptions {
        identity: Identity::generate(),
        cm,
        store: Arc::new(store),
        receipts_log: dir.path().join("receipts.jsonl"),
        listen: vec![loopback()],
        limits: Limits::default(),
    })
    .await?;
    Ok((node, dir))
}

/// Opens an audit stream from `net` to `node` and returns the answer.
async fn ask(net: &Net, node: &Server, request: &AuditRequest) -> anyhow::Result<AuditResponse> {
    net.add_addresses(node.peer_id(), vec![node.addr()]);
    let mut stream = net.open(node.peer_id(), proto::AUDIT).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        proto::request_audit(&mut stream, request),
    )
    .await
    .context("the node did not answer the audit")??;
    Ok(answer)
}

#[tokio::test]
async fn the_cm_gets_proofs_that_verify_against_the_fragment_hash() -> anyhow::Result<()> {
    let cm = Identity::generate();
    let data: Vec<u8> = (0..1_234_567u32).map(|i| (i * 131 % 251) as u8).collect();
    let (node, _dir) = node(cm.peer_id(), &data).await?;
    let cm_net = Net::start(&cm, &[loopback()]).await?;
    let hash = fragment_hash(&data);
    let size = data.len() as u64;

    for (offset, len) in [
        (0, MAX_AUDIT_RANGE),
        (size - 1, 1),
        (617_001, MAX_AUDIT_RANGE),
    ] {
        let request = AuditRequest {
            fragment: fragment(0),
            offset,
            len,
        };
        let AuditResponse::Proof(proof) = ask(&cm_net, &node, &request).await? else {
            anyhow::bail!("expected a proof for {offset}+{len}");
        };
        let bytes = audit::verify(&hash, size, offset, len, &proof)?;
        assert_eq!(bytes, &data[offset as usize..(offset + len) as usize]);
        // The proof is for the fragment the manifest names, not any other.
        assert!(audit::verify(&fragment_hash(b"other"), size, offset, len, &proof).is_err());
    }

    let missing = AuditRequest {
        fragment: fragment(9),
        offset: 0,
        len: 10,
    };
    assert_eq!(
        ask(&cm_net, &node, &missing).await?,
        AuditResponse::NotFound
    );
    let outside = AuditRequest {
        fragment: fragment(0),
        offset: size,
        len: 1,
    };
    let AuditResponse::Refused(reason) = ask(&cm_net, &node, &outside).await? else {
        anyhow::bail!("a range outside the fragment must be refused");
    };
    assert!(reason.contains("outside"), "{reason}");

    let stats = node.stats();
    assert_eq!(stats.audits_answered, 4);
    assert_eq!(stats.audits_refused, 1);
    Ok(())
}

#[tokio::test]
async fn a_peer_that_is_not_the_cm_is_refused() -> anyhow::Result<()> {
    let cm = Identity::generate();
    let data = vec![7u8; 50_000];
    let (node, _dir) = node(cm.peer_id(), &data).await?;
    let stranger = Net::start(&Identity::generate(), &[loopback()]).await?;
    let request = AuditRequest {
        fragment: fragment(0),
        offset: 0,
        len: 1000,
    };
    let AuditResponse::Refused(reason) = ask(&stranger, &node, &request).await? else {
        anyhow::bail!("a non-CM peer must not get a proof");
    };
    assert!(reason.contains("only the coordinator"), "{reason}");
    let stats = node.stats();
    assert_eq!((stats.audits_answered, stats.audits_refused), (0, 1));
    Ok(())
}
