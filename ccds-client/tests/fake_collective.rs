//! The client against a stand-in coordinator and stand-in nodes built from `overlay` alone, over
//! real QUIC on loopback. They speak the wire protocols and nothing more (no registry, no store),
//! so these tests pin the client's side of the protocols: the real daemons have their own tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ccds_client::{ClientError, GetOptions};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId};
use overlay::cert::{self, Role};
use overlay::codec::{SegmentCodec, fragment_hash};
use overlay::identity::{Identity, Signed};
use overlay::manifest::{Cipher, Manifest};
use overlay::net::{Net, with_peer};
use overlay::proto::{
    self, ClientRequest, ClientResponse, Contact, ContactList, FetchReceipt, FetchRequest,
    FetchResponse, Holder, ProblemKind, ProblemReport,
};
use overlay::receipt::CompletionReport;
use overlay::ticket::{Ticket, TicketBody, TicketFile};

/// Logs to the test's output, filtered by RUST_LOG.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

/// A published content: plaintext, manifest and every fragment.
struct Content {
    plain: Vec<u8>,
    key: [u8; 32],
    manifest: Manifest,
    fragments: Vec<Vec<Bytes>>,
}

fn publish(size: usize, segment_size: u32, k: u8, m: u8) -> Content {
    let plain: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
    let key = rand::random();
    let codec = SegmentCodec::new(&key, k as usize, m as usize).unwrap();
    let fragments: Vec<Vec<Bytes>> = plain
        .chunks(segment_size as usize)
        .enumerate()
        .map(|(i, chunk)| codec.encode(i as u64, chunk))
        .collect();
    let hashes = fragments
        .iter()
        .flat_map(|seg| seg.iter().map(|f| fragment_hash(f)))
        .collect();
    let manifest = Manifest {
        size: size as u64,
        segment_size,
        data_shards: k,
        parity_shards: m,
        spare_shards: 0,
        cipher: Cipher::Aes256Gcm,
        created: overlay::time::now_secs(),
        hashes,
    };
    manifest.validate().unwrap();
    Content {
        plain,
        key,
        manifest,
        fragments,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    /// Serves fragment bytes with one bit flipped.
    Liar,
    /// Answers NotFound to everything.
    Empty,
    /// Serves honest bytes, but so slowly that a spare fetch elsewhere always overtakes it.
    Slow,
}

/// How long a [`Behaviour::Slow`] node pauses before each sixteenth of a fragment: about three
/// seconds a fragment, hundreds of times slower than an honest node on loopback.
const SLOW_PAUSE: Duration = Duration::from_millis(200);

/// A stand-in node serving the fragments it was given.
struct FakeNode {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    receipts: Arc<Mutex<Vec<FetchReceipt>>>,
    max_streams: Arc<AtomicUsize>,
    _net: Net,
}

async fn fake_node(fragments: HashMap<(u32, u16), Bytes>, behaviour: Behaviour) -> FakeNode {
    let id = Identity::generate();
    let net = Net::start(&id, &[loopback()]).await.unwrap();
    let mut incoming = net.accept(proto::FETCH).unwrap();
    let receipts = Arc::new(Mutex::new(Vec::new()));
    let max_streams = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let fragments = Arc::new(fragments);
    {
        let (receipts, max_streams) = (receipts.clone(), max_streams.clone());
        tokio::spawn(async move {
            while let Some((_, mut s)) = incoming.next().await {
                let (receipts, max_streams, open, fragments) = (
                    receipts.clone(),
                    max_streams.clone(),
                    open.clone(),
                    fragments.clone(),
                );
                tokio::spawn(async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    max_streams.fetch_max(now, Ordering::SeqCst);
                    // The client may abandon a stream at any point (a spare fetch lost the
                    // race, or a stream opened for a request that timed out meanwhile).
                    let serve = async {
                        let req: FetchRequest =
                            proto::read_msg(&mut s, proto::MAX_SMALL_MSG).await?;
                        match fragments.get(&(req.segment, req.index)) {
                            Some(data) if behaviour != Behaviour::Empty => {
                                let mut data = data.to_vec();
                                if behaviour == Behaviour::Liar {
                                    data[0] ^= 1;
                                }
                                let len = data.len() as u32;
                                proto::write_msg(&mut s, &FetchResponse::Ok { len, receipt: None })
                                    .await?;
                                if behaviour == Behaviour::Slow {
                                    for chunk in data.chunks(data.len().div_ceil(16).max(1)) {
                                        tokio::time::sleep(SLOW_PAUSE).await;
                                        s.write_all(chunk).await?;
                                        s.flush().await?;
                                    }
                                } else {
                                    s.write_all(&data).await?;
                                }
                                s.flush().await?;
                                let r: FetchReceipt =
                                    proto::read_msg(&mut s, proto::MAX_SMALL_MSG).await?;
                                receipts.lock().unwrap().push(r);
                            }
                            _ => proto::write_msg(&mut s, &FetchResponse::NotFound).await?,
                        }
                        s.close().await?;
                        Ok::<_, proto::FrameError>(())
                    };
                    let _ = serve.await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    FakeNode {
        peer: id.peer_id(),
        addrs: net.listen_addrs().to_vec(),
        receipts,
        max_streams,
        _net: net,
    }
}

/// A stand-in coordinator answering with a fixed manifest and contact list.
struct FakeCm {
    id: Identity,
    addr: Multiaddr,
    problems: Arc<Mutex<Vec<ProblemReport>>>,
    completions: Arc<Mutex<Vec<CompletionReport>>>,
    /// Requests for a fresh contact list received.
    contact_requests: Arc<AtomicUsize>,
    _net: Net,
}

/// A fake CM whose fresh contact lists repeat the first one.
async fn fake_cm(manifest: Manifest, contacts: ContactList) -> FakeCm {
    fake_cm_refreshing(manifest, contacts.clone(), contacts).await
}

/// A fake CM that answers requests for fresh contacts with `fresh`.
async fn fake_cm_refreshing(
    manifest: Manifest,
    contacts: ContactList,
    fresh: ContactList,
) -> FakeCm {
    let id = Identity::generate();
    let net = Net::start(&id, &[loopback()]).await.unwrap();
    let mut incoming = net.accept(proto::CLIENT).unwrap();
    let problems = Arc::new(Mutex::new(Vec::new()));
    let completions = Arc::new(Mutex::new(Vec::new()));
    let contact_requests = Arc::new(AtomicUsize::new(0));
    let signed = Signed::sign(&id, manifest);
    {
        let (problems, completions, contact_requests) = (
            problems.clone(),
            completions.clone(),
            contact_requests.clone(),
        );
        tokio::spawn(async move {
            while let Some((_, mut s)) = incoming.next().await {
                let (problems, completions, contact_requests) = (
                    problems.clone(),
                    completions.clone(),
                    contact_requests.clone(),
                );
                let (signed, contacts, fresh) = (signed.clone(), contacts.clone(), fresh.clone());
                tokio::spawn(async move {
                    let req: ClientRequest =
                        proto::read_msg(&mut s, proto::MAX_SMALL_MSG).await.unwrap();
                    let resp = match req {
                        ClientRequest::Manifest { .. } => ClientResponse::Manifest {
                            manifest: signed,
                            contacts,
                        },
                        ClientRequest::Contacts { .. } => {
                            contact_requests.fetch_add(1, Ordering::SeqCst);
                            ClientResponse::Contacts(fresh)
                        }
                        ClientRequest::Problem(p) => {
                            problems.lock().unwrap().push(p);
                            ClientResponse::Ok
                        }
                        ClientRequest::Completion(c) => {
                            completions.lock().unwrap().push(c);
                            ClientResponse::Ok
                        }
                    };
                    proto::write_msg(&mut s, &resp).await.unwrap();
                    let _ = s.close().await;
                });
            }
        });
    }
    FakeCm {
        addr: net.listen_addrs()[0].clone(),
        id,
        problems,
        completions,
        contact_requests,
        _net: net,
    }
}

/// A client key and a ticket file for `content` from `cm`, in `dir`.
fn client_files(
    dir: &Path,
    cm: &FakeCm,
    content: &Content,
    key: [u8; 32],
) -> (PathBuf, PathBuf, PeerId) {
    let key_path = dir.join("client.key");
    let client = if key_path.exists() {
        Identity::load(&key_path).unwrap().peer_id()
    } else {
        ccds_client::keygen(&key_path).unwrap()
    };
    let partner = Identity::generate();
    let now = overlay::time::now_secs();
    let partner_cert = cert::issue(&cm.id, partner.peer_id(), Role::Partner, 1, now, 3600);
    let ticket = Ticket::issue(
        &partner,
        partner_cert,
        TicketBody {
            ticket_id: rand::random(),
            content: content.manifest.content_id(),
            client,
            not_after: now + 3600,
            allowance: 1 << 30,
        },
    );
    let ticket_path = dir.join("content.ticket");
    TicketFile {
        ticket,
        content_key: key,
        coordinators: vec![with_peer(&cm.addr, cm.id.peer_id())],
    }
    .save(&ticket_path)
    .unwrap();
    (key_path, ticket_path, client)
}

/// Places fragment `i` of every segment on node `i % nodes` and starts the nodes.
async fn place(content: &Content, behaviours: &[Behaviour]) -> (Vec<FakeNode>, ContactList) {
    let mut per_node: Vec<HashMap<(u32, u16), Bytes>> = vec![HashMap::new(); behaviours.len()];
    let mut holders = Vec::new();
    for (s, seg) in content.fragments.iter().enumerate() {
        for (i, f) in seg.iter().enumerate() {
            let node = i % behaviours.len();
            per_node[node].insert((s as u32, i as u16), f.clone());
            holders.push(Holder {
                segment: s as u32,
                index: i as u16,
                node: node as u32,
            });
        }
    }
    let mut nodes = Vec::new();
    for (frags, &b) in per_node.into_iter().zip(behaviours) {
        nodes.push(fake_node(frags, b).await);
    }
    let contacts = ContactList {
        nodes: nodes
            .iter()
            .map(|n| Contact {
                node: n.peer,
                addrs: n.addrs.clone(),
            })
            .collect(),
        holders,
    };
    (nodes, contacts)
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_verifies_reports_and_receipts() {
    logs();
    let content = publish(300_000, 16 * 1024, 3, 3);
    let (nodes, mut contacts) = place(
        &content,
        &[
            Behaviour::Honest,
            Behaviour::Liar,
            Behaviour::Honest,
            Behaviour::Honest,
            Behaviour::Empty,
            Behaviour::Honest,
        ],
    )
    .await;
    // A node first in the CM's order, believed to hold a copy of fragment 0 of every segment,
    // whose address now belongs to someone else: the handshake fails.
    let ghost = Identity::generate().peer_id();
    let squatter = Net::start(&Identity::generate(), &[loopback()])
        .await
        .unwrap();
    contacts.nodes.insert(
        0,
        Contact {
            node: ghost,
            addrs: squatter.listen_addrs().to_vec(),
        },
    );
    for h in &mut contacts.holders {
        h.node += 1;
    }
    for s in 0..content.fragments.len() as u32 {
        contacts.holders.insert(
            0,
            Holder {
                segment: s,
                index: 0,
                node: 0,
            },
        );
    }
    let cm = fake_cm(content.manifest.clone(), contacts).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, ticket, client) = client_files(dir.path(), &cm, &content, content.key);
    let out = dir.path().join("out.bin");
    let summary = ccds_client::get(&GetOptions::new(key, ticket, out.clone()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content.plain);
    assert!(!dir.path().join("out.bin.part").exists());
    assert!(!dir.path().join("out.bin.part.state").exists());
    assert_eq!(summary.bytes, 300_000);
    assert_eq!(summary.segments, 19);
    assert_eq!(summary.segments_fetched, 19);
    assert_eq!(summary.segments_resumed, 0);
    assert!(summary.fragments_fetched >= 19 * 3);
    assert!(!summary.per_node.contains_key(&nodes[1].peer.to_string()));
    assert!(summary.corrupt_reports >= 1);
    assert_eq!(summary.unreachable_reports, 1);

    // The client keeps one exchange per node at a time, but a node may still be finishing an
    // exchange the client has already completed (or abandoned to a faster spare) when the next
    // stream arrives, so one overlap is tolerated; a client fanning out per node would show many.
    for n in &nodes {
        let max = n.max_streams.load(Ordering::SeqCst);
        assert!(max <= 2, "{max} concurrent streams to one node");
    }
    // Receipts: signed by the client, cumulative, sequenced; only verified fragments count.
    assert!(nodes[1].receipts.lock().unwrap().is_empty());
    for n in [&nodes[0], &nodes[2], &nodes[3], &nodes[5]] {
        // The node records receipts as its stream tasks get to them: with one overlapping
        // exchange, receipt n + 1 may be recorded before receipt n. Check them in `seq` order.
        let mut receipts = n.receipts.lock().unwrap().clone();
        receipts.sort_by_key(|r| r.body.seq);
        for (i, r) in receipts.iter().enumerate() {
            let body = r.verify_by(&client).unwrap();
            assert_eq!(body.node, n.peer);
            assert_eq!(body.seq, i as u64 + 1);
            assert_eq!(body.fragments, i as u64 + 1);
        }
        if let Some(last) = receipts.last() {
            assert_eq!(
                summary.per_node[&n.peer.to_string()],
                last.body.bytes,
                "receipt totals match the summary"
            );
        }
    }
    // Reports reached the CM before `get` returned.
    let problems = cm.problems.lock().unwrap().clone();
    assert!(
        problems
            .iter()
            .any(|p| p.node == ghost && p.kind == ProblemKind::Unreachable)
    );
    assert!(
        problems
            .iter()
            .any(|p| p.node == nodes[1].peer && matches!(p.kind, ProblemKind::Corrupt { .. }))
    );
    let completions = cm.completions.lock().unwrap().clone();
    assert_eq!(completions.len(), 1);
    let completion = completions[0].verify_by(&client).unwrap();
    assert_eq!(completion.content, content.manifest.content_id());
    let total: u64 = completion.per_node.iter().map(|n| n.bytes).sum();
    assert_eq!(total, summary.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_download_resumes() {
    logs();
    let content = publish(400_000, 20_000, 2, 1);
    let (_nodes, contacts) = place(&content, &[Behaviour::Honest; 3]).await;
    let cm = fake_cm(content.manifest.clone(), contacts).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, ticket, _) = client_files(dir.path(), &cm, &content, content.key);
    let out = dir.path().join("big.bin");
    let mut slow = GetOptions::new(key.clone(), ticket.clone(), out.clone());
    // About 200 kB/s for 400 kB of content (plus parity): two seconds or so.
    slow.limit_rate = Some(200_000);
    let run = tokio::spawn(async move { ccds_client::get(&slow).await });
    let state = dir.path().join("big.bin.part.state");
    // Interrupt once a few segments are safely on disk.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(text) = std::fs::read_to_string(&state)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["done"].as_array().is_some_and(|r| {
                r.iter()
                    .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap())
                    .sum::<u64>()
                    >= 4
            })
        {
            break;
        }
        assert!(
            !run.is_finished(),
            "the download finished before it could be interrupted"
        );
    }
    run.abort();
    let _ = run.await;
    assert!(!out.exists());
    let summary = ccds_client::get(&GetOptions::new(key, ticket, out.clone()))
        .await
        .unwrap();
    assert!(summary.segments_resumed >= 4, "{summary:?}");
    assert_eq!(
        summary.segments_resumed + summary.segments_fetched,
        summary.segments
    );
    assert_eq!(std::fs::read(&out).unwrap(), content.plain);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_content_gives_an_empty_file() {
    logs();
    let content = publish(0, 1024, 2, 1);
    let (_nodes, contacts) = place(&content, &[Behaviour::Honest; 3]).await;
    let cm = fake_cm(content.manifest.clone(), contacts).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, ticket, _) = client_files(dir.path(), &cm, &content, content.key);
    let out = dir.path().join("empty");
    let summary = ccds_client::get(&GetOptions::new(key, ticket, out.clone()))
        .await
        .unwrap();
    assert_eq!(summary.segments, 0);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);
    assert_eq!(cm.completions.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_wrong_key_wrong_manifest_and_missing_holders() {
    logs();
    let content = publish(50_000, 10_000, 2, 1);
    let dir = tempfile::tempdir().unwrap();

    // Wrong content key: every fragment verifies, decryption does not.
    let (_nodes, contacts) = place(&content, &[Behaviour::Honest; 3]).await;
    let cm = fake_cm(content.manifest.clone(), contacts.clone()).await;
    let (key, ticket, _) = client_files(dir.path(), &cm, &content, [0; 32]);
    let err = ccds_client::get(&GetOptions::new(key, ticket, dir.path().join("a")))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Decrypt(_)), "{err}");

    // The CM answers with the manifest of another content.
    let other = publish(1000, 1000, 1, 1);
    let cm = fake_cm(other.manifest.clone(), ContactList::default()).await;
    let (key, ticket, _) = client_files(dir.path(), &cm, &content, content.key);
    let err = ccds_client::get(&GetOptions::new(key, ticket, dir.path().join("b")))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::WrongManifest { .. }), "{err}");

    // Only one node of three has anything: k = 2 cannot be reached.
    let (_nodes, contacts) = place(
        &content,
        &[Behaviour::Honest, Behaviour::Empty, Behaviour::Empty],
    )
    .await;
    let cm = fake_cm(content.manifest.clone(), contacts).await;
    let (key, ticket, _) = client_files(dir.path(), &cm, &content, content.key);
    let err = ccds_client::get(&GetOptions::new(key, ticket, dir.path().join("c")))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ClientError::Unfetchable(_)), "{msg}");
    assert!(msg.contains("2 did not have the fragment"), "{msg}");
    // Before giving up, the client asked for fresh contacts, as often as it may and no more.
    assert_eq!(cm.contact_requests.load(Ordering::SeqCst), 3);
    assert!(msg.contains("over 4 contact lists"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_someone_elses_ticket_and_an_absent_coordinator() {
    logs();
    let content = publish(1000, 1000, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let cm = fake_cm(content.manifest.clone(), ContactList::default()).await;
    let (_, ticket, _) = client_files(dir.path(), &cm, &content, content.key);
    let stranger = dir.path().join("stranger.key");
    ccds_client::keygen(&stranger).unwrap();
    let err = ccds_client::get(&GetOptions::new(
        stranger,
        ticket.clone(),
        dir.path().join("x"),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::WrongClient { .. }), "{err}");

    // The coordinator's process is gone.
    let gone_dir = tempfile::tempdir().unwrap();
    let (key, ticket, _) = {
        let cm = fake_cm(content.manifest.clone(), ContactList::default()).await;
        client_files(gone_dir.path(), &cm, &content, content.key)
    };
    let err = ccds_client::get(&GetOptions::new(key, ticket, gone_dir.path().join("x")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::CoordinatorUnreachable { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_contacts_replace_holders_that_do_not_answer() {
    logs();
    let content = publish(200_000, 16 * 1024, 2, 1);
    let segments = content.fragments.len() as u32;
    let (nodes, real) = place(&content, &[Behaviour::Honest; 3]).await;
    // The first list sends the second half of the segments to two nodes that no longer exist
    // (their address belongs to someone else: the handshake fails) and one that lost its data.
    let squatter = Net::start(&Identity::generate(), &[loopback()])
        .await
        .unwrap();
    let ghosts = [
        Identity::generate().peer_id(),
        Identity::generate().peer_id(),
    ];
    let empty = fake_node(HashMap::new(), Behaviour::Empty).await;
    let mut stale = real.clone();
    for ghost in ghosts {
        stale.nodes.push(Contact {
            node: ghost,
            addrs: squatter.listen_addrs().to_vec(),
        });
    }
    stale.nodes.push(Contact {
        node: empty.peer,
        addrs: empty.addrs.clone(),
    });
    let half = segments / 2;
    for h in stale.holders.iter_mut().filter(|h| h.segment >= half) {
        h.node = 3 + u32::from(h.index);
    }
    // The fresh list has the real holders, listed in another order.
    let fresh = ContactList {
        nodes: real.nodes.iter().rev().cloned().collect(),
        holders: real
            .holders
            .iter()
            .map(|h| Holder {
                node: 2 - h.node,
                ..*h
            })
            .collect(),
    };
    let cm = fake_cm_refreshing(content.manifest.clone(), stale, fresh).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, ticket, _) = client_files(dir.path(), &cm, &content, content.key);
    let out = dir.path().join("out.bin");
    let summary = ccds_client::get(&GetOptions::new(key, ticket, out.clone()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content.plain);
    let asked = cm.contact_requests.load(Ordering::SeqCst);
    assert!(asked >= 1, "no fresh contacts asked for");
    assert_eq!(summary.contact_refreshes, asked as u64);
    assert!(summary.contact_refreshes <= 3);
    // Every byte came from the real holders.
    for peer in summary.per_node.keys() {
        assert!(nodes.iter().any(|n| &n.peer.to_string() == peer), "{peer}");
    }
    let problems = cm.problems.lock().unwrap().clone();
    assert!(
        problems
            .iter()
            .any(|p| ghosts.contains(&p.node) && p.kind == ProblemKind::Unreachable),
        "{problems:?}"
    );
    assert_eq!(cm.completions.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_very_slow_node_is_reported_and_the_download_completes() {
    logs();
    // k = 3 of 4: fragment 0 and 3 on the first node, 1 on the second, 2 on the slow one. The
    // client waits for the slow node (it prefers a third node to loading the first one twice),
    // so it measures it on at least two fetches before the download can end.
    let content = publish(6 * 16 * 1024, 16 * 1024, 3, 1);
    let (nodes, contacts) = place(
        &content,
        &[Behaviour::Honest, Behaviour::Honest, Behaviour::Slow],
    )
    .await;
    let slow = nodes[2].peer;
    let cm = fake_cm(content.manifest.clone(), contacts).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, ticket, _) = client_files(dir.path(), &cm, &content, content.key);
    let out = dir.path().join("out.bin");
    let summary = ccds_client::get(&GetOptions::new(key, ticket, out.clone()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), content.plain);
    // Reported once, to the CM, as slow, and for nothing else.
    let problems = cm.problems.lock().unwrap().clone();
    let slow_reports: Vec<&ProblemReport> = problems
        .iter()
        .filter(|p| matches!(p.kind, ProblemKind::Slow { .. }))
        .collect();
    assert_eq!(slow_reports.len(), 1, "{problems:?}");
    assert_eq!(slow_reports[0].node, slow);
    assert_eq!(summary.slow_reports, 1);
    assert_eq!(summary.unreachable_reports, 0);
    assert_eq!(summary.contact_refreshes, 0);
    assert_eq!(cm.completions.lock().unwrap().len(), 1);
}
