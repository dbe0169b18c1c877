//! `cm-coordinator run`: serves `/ccds/control/1` to nodes and `/ccds/client/1` to clients over
//! QUIC, and the HTTP API (`crate::http`) to partners, operators and the local CLI.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{Stream, StreamProtocol};
use overlay::cert::{self, Role};
use overlay::manifest::SignedManifest;
use overlay::net::{Net, with_peer};
use overlay::proto::{
    self, ClientRequest, ClientResponse, Contact, ContactList, ControlRequest, ControlResponse,
    Holder, ProblemKind,
};
use overlay::ticket::TicketFile;
use overlay::time::now_secs;
use overlay::{ContentId, Identity, Multiaddr, PeerId};
use rand::seq::SliceRandom;
use tokio::sync::Semaphore;
use tracing::{Instrument, error, info, info_span, warn};

use crate::admin::AdminRequest;
use crate::datadir::DataDir;
use crate::db::{ContentRow, Db, ProblemRow};
use crate::liveness::{Action, Event, Liveness, LivenessConfig, OfflineReason};
use crate::placement::{PlacementRules, Subnet};
use crate::publish::{self, PublishParams};
use crate::rebuild::{ContentMeta, DemandBook, RebuildConfig, RepairStats};
use crate::registry::{OnlineNode, Registry};
use crate::repair::{Repair, RepairConfig};
use std::collections::HashMap;

/// Validity of node certificates.
const NODE_CERT_SECS: u64 = 365 * 24 * 3600;
/// Concurrent inbound streams per protocol.
const MAX_STREAMS: usize = 1024;

/// Settings of a running coordinator.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The database URL (`postgres://…`, `sqlite://…`); `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    pub listen: Multiaddr,
    /// Where to serve the HTTP API [default: 127.0.0.1 on a port the OS picks; the bound
    /// address goes to `DIR/http.addr`].
    pub http: Option<std::net::SocketAddr>,
    /// Liveness timings: heartbeat timeout, probes and their back-off.
    pub liveness: LivenessConfig,
    /// How long one probe may take before it counts as failed.
    pub probe_timeout: Duration,
    /// Placement rules (distinct subnets per segment unless a lab relaxes it).
    pub placement: PlacementRules,
    /// Repair threshold and delay.
    pub repair: RepairConfig,
    /// Repair driver and demand settings.
    pub rebuild: RebuildConfig,
    /// Pay policy, reconciliation tunables, ticket prices.
    pub accounting: crate::accounting::AccountingConfig,
    /// Reconciliation and audit timers.
    pub timers: crate::accounting::AccountingTimers,
    /// How coordinators sharing the database follow each other.
    pub cluster: crate::cluster::ClusterConfig,
}

/// A running coordinator's shared state.
pub struct Coordinator {
    pub dir: DataDir,
    pub root: Identity,
    pub db: Db,
    pub net: Net,
    pub registry: Registry,
    /// Decides who is online; its actions are carried out by the liveness driver task.
    pub liveness: std::sync::Mutex<Liveness>,
    /// Wakes the liveness driver after an event.
    pub liveness_wake: tokio::sync::Notify,
    pub placement: PlacementRules,
    pub addr: Multiaddr,
    /// Decides which segments need fragments; its jobs are run by [`crate::rebuild::driver`].
    pub repair: std::sync::Mutex<Repair>,
    /// Wakes the repair driver (a node went offline, a job finished).
    pub repair_wake: tokio::sync::Notify,
    pub repair_stats: std::sync::Mutex<RepairStats>,
    /// Downloads in flight and slow reports.
    pub demand: std::sync::Mutex<DemandBook>,
    /// Manifests and keys of contents being repaired.
    pub metas: std::sync::Mutex<HashMap<ContentId, Arc<ContentMeta>>>,
    /// The network each node was last seen on, online or not.
    pub subnets: std::sync::Mutex<HashMap<PeerId, Subnet>>,
    /// Node profiles (availability, bandwidth, groups), recomputed every half minute.
    pub profiles: std::sync::Mutex<Option<Arc<crate::profiles::Profiles>>>,
    /// Bytes of large control frames (node reports) read at once.
    pub report_memory: Semaphore,
    /// Pay policy, reconciliation tunables, ticket prices.
    pub accounting: crate::accounting::AccountingConfig,
    /// Held by a reconciliation run or payout: one at a time.
    pub reconciling: tokio::sync::Mutex<()>,
    /// When each node is audited next, containment of timed-out audits, audit scores.
    pub auditor: std::sync::Mutex<crate::audit::Auditor>,
    /// This process among the coordinators sharing the database.
    pub cluster: crate::cluster::Cluster,
    /// Heartbeats waiting to be written to the database.
    pub seen: crate::seen::Heartbeats,
}

/// Memory for node reports being read at once: four of the largest.
const REPORT_MEMORY: usize = 4 * proto::MAX_REPORT_MSG;

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(
    dir: DataDir,
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let root = dir.load_root()?;
    let db = Db::open(config.database_url.as_deref(), &dir.database()).await?;
    info!(engine = db.engine(), "database open");
    let instance = dir
        .instance_id()
        .map_err(|e| anyhow::anyhow!("cannot read this coordinator's instance id: {e}"))?;
    // One coordinator per data directory: the lock is held until the process ends.
    let Some(lock) = dir.try_lock()? else {
        anyhow::bail!(
            "a coordinator is already running for {}",
            dir.root().display()
        );
    };
    let net = Net::start(&root, std::slice::from_ref(&config.listen)).await?;
    let addr = with_peer(&net.listen_addrs()[0], root.peer_id());
    let coord = Arc::new(Coordinator {
        dir: dir.clone(),
        root,
        db,
        net,
        registry: Registry::default(),
        liveness: std::sync::Mutex::new(Liveness::new(config.liveness.clone())),
        liveness_wake: tokio::sync::Notify::new(),
        placement: config.placement,
        addr: addr.clone(),
        repair: std::sync::Mutex::new(Repair::new(config.repair.clone())),
        repair_wake: tokio::sync::Notify::new(),
        repair_stats: Default::default(),
        demand: Default::default(),
        metas: Default::default(),
        subnets: Default::default(),
        profiles: Default::default(),
        report_memory: Semaphore::new(REPORT_MEMORY),
        accounting: config.accounting.clone(),
        reconciling: tokio::sync::Mutex::new(()),
        auditor: std::sync::Mutex::new(crate::audit::Auditor::new(config.timers.audit.clone())),
        cluster: crate::cluster::Cluster::new(instance, config.cluster.clone()),
        seen: Default::default(),
    });
    crate::rebuild::load(&coord).await?;
    crate::admin::ensure_operator_token(&coord).await?;
    let http = config
        .http
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let bound = crate::http::serve(coord.clone(), http).await?;
    // Before any node joins: sessions left open by an earlier run are closed now.
    let follower = crate::cluster::start(&coord, &bound.to_string()).await?;
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel();
    tokio::spawn({
        let coord = coord.clone();
        async move {
            let _ = fatal_tx.send(crate::cluster::driver(coord, follower).await);
        }
    });
    spawn_accept(&coord, proto::CONTROL, handle_control)?;
    spawn_accept(&coord, proto::CLIENT, handle_client)?;
    tokio::spawn(liveness_driver(coord.clone(), config.probe_timeout));
    tokio::spawn(crate::seen::driver(coord.clone()));
    tokio::spawn(crate::rebuild::driver(
        coord.clone(),
        config.rebuild.clone(),
    ));
    if config.timers.audits {
        tokio::spawn(crate::auditor::driver(
            coord.clone(),
            config.probe_timeout.max(Duration::from_secs(5)),
        ));
    }
    if let Some(interval) = config.timers.reconcile_interval {
        tokio::spawn(crate::accounting::reconcile_loop(coord.clone(), interval));
    }
    overlay::store::write_atomic(
        &dir.http_addr_file(),
        format!("{bound}\n").as_bytes(),
        false,
    )?;
    overlay::store::write_atomic(&dir.addr_file(), format!("{addr}\n").as_bytes(), false)?;
    info!(%addr, instance = %coord.cluster.instance, "coordinator running");
    let fatal = tokio::select! {
        () = shutdown => None,
        Ok(e) = fatal_rx => Some(e),
    };
    info!("shutting down");
    if let Err(e) = coord.seen.flush(&coord.db).await {
        warn!(error = %e, "cannot write the last heartbeats");
    }
    crate::cluster::stop(&coord).await;
    let _ = std::fs::remove_file(dir.addr_file());
    let _ = std::fs::remove_file(dir.http_addr_file());
    drop(lock);
    fatal.map_or(Ok(()), Err)
}

fn spawn_accept<F, Fut>(
    coord: &Arc<Coordinator>,
    protocol: StreamProtocol,
    handler: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<Coordinator>, PeerId, Stream) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // A dedicated loop keeps polling: libp2p-stream drops inbound streams nobody waits for.
    let mut incoming = coord.net.accept(protocol.clone())?;
    let coord = coord.clone();
    let limit = Arc::new(Semaphore::new(MAX_STREAMS));
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let span = info_span!("stream", %protocol, %peer);
            let fut = handler(coord.clone(), peer, stream);
            tokio::spawn(
                async move {
                    fut.await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    });
    Ok(())
}

async fn respond<T: serde::Serialize>(stream: &mut Stream, msg: &T) {
    if let Err(e) = proto::write_msg(stream, msg).await {
        warn!(error = %e, "cannot answer");
    }
    let _ = stream.close().await;
}

async fn handle_control(coord: Arc<Coordinator>, peer: PeerId, mut stream: Stream) {
    // Reports are the one large control message: memory for large frames is reserved from a
    // shared budget before the frame is read, so a crowd of reporting nodes waits its turn.
    let read = async {
        let len = proto::read_len(&mut stream, proto::MAX_REPORT_MSG).await?;
        let _reserved = if len > proto::MAX_SMALL_MSG {
            Some(coord.report_memory.acquire_many(len as u32).await)
        } else {
            None
        };
        proto::read_body::<_, ControlRequest>(&mut stream, len).await
    };
    let req: ControlRequest = match read.await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "bad control request");
            return respond(&mut stream, &ControlResponse::Error(e.to_string())).await;
        }
    };
    let answer = match control(&coord, peer, req).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "control request failed");
            ControlResponse::Error(e.to_string())
        }
    };
    respond(&mut stream, &answer).await;
}

async fn control(
    coord: &Arc<Coordinator>,
    peer: PeerId,
    req: ControlRequest,
) -> anyhow::Result<ControlResponse> {
    let now = now_secs();
    Ok(match req {
        ControlRequest::Register => {
            if overlay::identity::verifying_key_of(&peer).is_err() {
                return Ok(ControlResponse::Error(
                    "node identities must be Ed25519 keys".into(),
                ));
            }
            let not_after = now + NODE_CERT_SECS;
            let serial = coord
                .db
                .next_cert_serial(&peer, "node", now, not_after)
                .await?;
            let cert = cert::issue(&coord.root, peer, Role::Node, serial, now, NODE_CERT_SECS);
            coord.db.register_node(&peer, serial, now).await?;
            info!(node = %peer, serial, "node registered");
            ControlResponse::Registered { cert }
        }
        ControlRequest::Join {
            addrs,
            quota,
            used,
            boot_time,
            upload_bps,
        } => {
            if !coord.db.is_node(&peer).await? {
                return Ok(ControlResponse::Error(
                    "this node is not registered; register first".into(),
                ));
            }
            let addrs: Vec<Multiaddr> = addrs.into_iter().take(16).collect();
            let shown: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            coord.seen.forget(&peer);
            coord
                .db
                .node_joined(&peer, &coord.cluster.instance, &shown, quota, used, now)
                .await?;
            coord
                .db
                .node_measures(&peer, (boot_time > 0).then_some(boot_time), upload_bps)
                .await?;
            coord.net.add_addresses(peer, addrs.clone());
            coord
                .subnets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer, Subnet::of(peer, &addrs));
            coord.repair().online(peer, Instant::now());
            coord
                .auditor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add_node(peer, now_secs(), &mut rand::rng());
            coord.registry.join(OnlineNode {
                id: peer,
                addrs,
                quota,
                used,
                joined: Instant::now(),
                last_seen: Instant::now(),
            });
            coord.liveness_event(Event::Joined(peer));
            info!(node = %peer, "node joined");
            // Fragments replaced while it was away are now surplus on it.
            let coord = coord.clone();
            tokio::spawn(async move { crate::rebuild::send_deletes(&coord, peer).await });
            ControlResponse::Ok
        }
        ControlRequest::Heartbeat { used, upload_bps } => {
            if coord.registry.seen(&peer, used, Instant::now()) {
                coord.liveness_event(Event::Heartbeat(peer));
            } else if !online_elsewhere(coord, &peer).await? {
                return Ok(ControlResponse::Error("not joined; join again".into()));
            }
            coord.seen.record(
                peer,
                crate::seen::Seen {
                    used,
                    at: now,
                    upload_bps,
                },
            );
            ControlResponse::Ok
        }
        ControlRequest::Leave => {
            coord.liveness_event(Event::Left(peer));
            // A node that joined through another coordinator may say leave here: its session
            // is closed all the same (even if this one has not yet read that it is open), and
            // that coordinator follows.
            let local = coord.registry.leave(&peer);
            let remote = coord.registry.remote_left(&peer);
            if local || remote || coord.db.session_owner(&peer).await?.is_some() {
                coord.repair().offline(peer, Instant::now());
                coord.repair_wake.notify_one();
                coord.db.node_left(&peer, now, "leave").await?;
                info!(node = %peer, "node left");
            }
            ControlResponse::Ok
        }
        ControlRequest::Report(report) => {
            let body = match report.verify_by(&peer) {
                Ok(body) if body.node == peer => body,
                Ok(body) => {
                    return Ok(ControlResponse::Error(format!(
                        "report names node {}, not the sender {peer}",
                        body.node
                    )));
                }
                Err(e) => return Ok(ControlResponse::Error(format!("bad report signature: {e}"))),
            };
            if let Err(e) = body.check_bounds() {
                return Ok(ControlResponse::Error(format!("malformed report: {e}")));
            }
            if !coord.db.is_node(&peer).await? {
                return Ok(ControlResponse::Error(
                    "unknown node: register first".into(),
                ));
            }
            match coord.db.ingest_report(&report, now_secs()).await? {
                crate::db::Ingested::Accepted { new, duplicate } => {
                    info!(
                        seq = body.seq,
                        claims = body.served.len(),
                        new,
                        duplicate,
                        "node report ingested"
                    );
                    ControlResponse::ReportAccepted {
                        seq: body.seq,
                        new_receipts: new,
                        duplicate_receipts: duplicate,
                    }
                }
                crate::db::Ingested::Stale { last_seq } => {
                    warn!(
                        seq = body.seq,
                        last_seq, "stale or replayed node report refused"
                    );
                    ControlResponse::StaleReport { last_seq }
                }
            }
        }
        ControlRequest::Account => {
            if !coord.db.is_node(&peer).await? {
                return Ok(ControlResponse::Error(
                    "unknown node: register first".into(),
                ));
            }
            ControlResponse::Account(crate::accounting::account_view(coord, &peer).await?)
        }
    })
}

/// Whether `node`, not on this coordinator's active list, is online through another coordinator
/// sharing the database: its heartbeat may reach either (nodes reach the CM over any connection
/// to its identity), and it stays with the one it joined through.
async fn online_elsewhere(coord: &Coordinator, node: &PeerId) -> anyhow::Result<bool> {
    if coord.registry.is_online(node) {
        return Ok(true);
    }
    // Joined elsewhere since this coordinator last read the sessions.
    Ok(coord
        .db
        .session_owner(node)
        .await?
        .flatten()
        .is_some_and(|owner| owner != coord.cluster.instance))
}

async fn handle_client(coord: Arc<Coordinator>, peer: PeerId, mut stream: Stream) {
    let req: ClientRequest = match proto::read_msg(&mut stream, proto::MAX_SMALL_MSG).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "bad client request");
            return respond(&mut stream, &ClientResponse::Error(e.to_string())).await;
        }
    };
    let answer = match client(&coord, peer, req).await {
        Ok(a) => a,
        Err(e) => {
            error!(error = %e, "client request failed");
            ClientResponse::Error(format!("coordinator error: {e}"))
        }
    };
    respond(&mut stream, &answer).await;
}

async fn client(
    coord: &Coordinator,
    peer: PeerId,
    req: ClientRequest,
) -> anyhow::Result<ClientResponse> {
    let now = now_secs();
    Ok(match req {
        ClientRequest::Manifest { ticket } => {
            let content = ticket.body().content;
            if let Err(e) = ticket.verify_for(&coord.root.peer_id(), now, &content, &peer) {
                info!(error = %e, "ticket refused");
                return Ok(ClientResponse::Error(format!("ticket refused: {e}")));
            }
            let Some(row) = coord.db.content(&content).await? else {
                return Ok(ClientResponse::Error(format!("unknown content {content}")));
            };
            let manifest: SignedManifest = postcard::from_bytes(&row.manifest)?;
            let contacts = contact_list(coord, &content).await?;
            coord
                .demand
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .started(content, ticket.body().ticket_id, Instant::now());
            info!(%content, nodes = contacts.nodes.len(), "manifest and contacts sent");
            ClientResponse::Manifest { manifest, contacts }
        }
        ClientRequest::Contacts { ticket } => {
            let content = ticket.body().content;
            if let Err(e) = ticket.verify_for(&coord.root.peer_id(), now, &content, &peer) {
                info!(error = %e, "ticket refused");
                return Ok(ClientResponse::Error(format!("ticket refused: {e}")));
            }
            if coord.db.content(&content).await?.is_none() {
                return Ok(ClientResponse::Error(format!("unknown content {content}")));
            }
            let contacts = contact_list(coord, &content).await?;
            info!(%content, nodes = contacts.nodes.len(), "fresh contacts sent");
            ClientResponse::Contacts(contacts)
        }
        ClientRequest::Problem(p) => {
            let (kind, segment, index) = match p.kind {
                ProblemKind::Unreachable => ("unreachable", None, None),
                ProblemKind::Corrupt { segment, index } => {
                    ("corrupt", Some(segment as i64), Some(index as i64))
                }
                ProblemKind::Slow { .. } => ("slow", None, None),
            };
            if matches!(p.kind, ProblemKind::Slow { .. }) {
                // A slow download asks for more holders of the content.
                coord
                    .demand
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .slow(p.content, Instant::now());
            }
            warn!(node = %p.node, kind, detail = %p.detail, "problem reported");
            if p.kind == ProblemKind::Unreachable {
                coord.liveness_event(Event::Unreachable(p.node));
            }
            coord
                .db
                .add_problem(&ProblemRow {
                    reporter: peer.to_string(),
                    node: p.node.to_string(),
                    content: p.content.to_string(),
                    kind: kind.into(),
                    segment,
                    index,
                    detail: p.detail.chars().take(1024).collect(),
                    at: now as i64,
                    coordinator: Some(coord.cluster.instance.clone()),
                })
                .await?;
            ClientResponse::Ok
        }
        ClientRequest::Completion(report) => {
            let body = match report.verify_by(&peer) {
                Ok(b) => b,
                Err(e) => return Ok(ClientResponse::Error(format!("bad completion report: {e}"))),
            };
            coord
                .db
                .add_completion(
                    &hex::encode(body.ticket_id),
                    &peer,
                    &body.content,
                    &overlay::identity::encode(&report),
                    body.time,
                )
                .await?;
            coord
                .demand
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .completed(&body.content, &body.ticket_id);
            info!(content = %body.content, "download completed");
            ClientResponse::Ok
        }
    })
}

/// Online holders of every fragment of `content`, nodes in random order.
async fn contact_list(coord: &Coordinator, content: &ContentId) -> anyhow::Result<ContactList> {
    let mut nodes: Vec<PeerId> = Vec::new();
    let placements = coord.db.placements(content).await?;
    let mut seen = std::collections::HashSet::new();
    for p in &placements {
        if seen.insert(p.node) && coord.registry.is_online(&p.node) {
            nodes.push(p.node);
        }
    }
    nodes.shuffle(&mut rand::rng());
    let position: std::collections::HashMap<PeerId, u32> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, i as u32))
        .collect();
    // Holders in random order too: clients try holders in list order, so every holder of a
    // segment (spare parity included) gets its share rather than the lowest indices.
    let mut holders: Vec<Holder> = placements
        .iter()
        .filter_map(|p| {
            position.get(&p.node).map(|&node| Holder {
                segment: p.segment,
                index: p.index,
                node,
            })
        })
        .collect();
    holders.shuffle(&mut rand::rng());
    let nodes = nodes
        .into_iter()
        .map(|n| Contact {
            node: n,
            addrs: coord.registry.get(&n).map(|o| o.addrs).unwrap_or_default(),
        })
        .collect();
    Ok(ContactList { nodes, holders })
}

impl Coordinator {
    /// Feeds a liveness event and wakes the driver.
    pub fn liveness_event(&self, event: Event) {
        self.liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .handle(event, Instant::now());
        self.liveness_wake.notify_one();
    }
}

/// Carries out the liveness core's actions: probes nodes, takes dead ones off the active list.
async fn liveness_driver(coord: Arc<Coordinator>, probe_timeout: Duration) {
    loop {
        let (actions, deadline) = {
            let mut liveness = coord.liveness.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let actions: Vec<Action> = std::iter::from_fn(|| liveness.poll(now)).collect();
            (actions, liveness.next_deadline())
        };
        for action in actions {
            match action {
                Action::Probe(node) => {
                    let coord = coord.clone();
                    tokio::spawn(async move {
                        let alive = probe(&coord.net, node, probe_timeout).await;
                        match &alive {
                            Ok(()) => info!(%node, "probe answered"),
                            Err(e) => warn!(%node, error = %e, "probe failed"),
                        }
                        coord.liveness_event(if alive.is_ok() {
                            Event::ProbeAnswered(node)
                        } else {
                            Event::ProbeFailed(node)
                        });
                    });
                }
                Action::Offline(node, reason) => {
                    coord.registry.leave(&node);
                    coord.repair().offline(node, Instant::now());
                    coord.repair_wake.notify_one();
                    let why = match reason {
                        OfflineReason::Left => "leave",
                        OfflineReason::Unreachable => "unreachable",
                    };
                    if reason == OfflineReason::Unreachable {
                        warn!(%node, "every probe failed; marked offline");
                    }
                    if let Err(e) = coord.db.node_left(&node, now_secs(), why).await {
                        error!(error = %e, "cannot record a node going offline");
                    }
                }
            }
        }
        let sleep = match deadline {
            Some(at) => tokio::time::sleep_until(at.into()),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            () = sleep => {}
            () = coord.liveness_wake.notified() => {}
        }
    }
}

/// One liveness probe over `/ccds/probe/1`.
async fn probe(net: &Net, node: PeerId, timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, async {
        let mut stream = net.open_with(node, proto::PROBE, 1, timeout).await?;
        proto::probe(&mut stream).await?;
        let _ = stream.close().await;
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}

/// Executes one coordinator command (the HTTP API's handlers share these).
pub async fn admin(coord: &Coordinator, req: AdminRequest) -> anyhow::Result<serde_json::Value> {
    match req {
        AdminRequest::Nodes => {
            let profiles = load_profiles(coord).await?;
            let list: Vec<serde_json::Value> = profiles
                .nodes
                .iter()
                .map(|(r, p, g)| {
                    let online = PeerId::from_str(&r.id)
                        .map(|p| coord.registry.is_online(&p))
                        .unwrap_or(false);
                    serde_json::json!({
                        "id": r.id,
                        "online": online,
                        "addrs": r.addrs,
                        "location": p.location,
                        "quota": r.quota,
                        "used": r.used,
                        "fragments": r.fragments,
                        "last_seen": r.last_seen,
                        "registered_at": r.registered_at,
                        "boot_time": r.boot_time,
                        "availability_5d": p.availability_5d,
                        "availability_30d": p.availability_30d,
                        "typical_hours": crate::history::render_hours(p.typical_hours),
                        "upload_bps": p.upload_bps,
                        "reported_upload_bps": r.upload_bps,
                        "observed_upload_bps": r.observed_bps,
                        "group": g.label(),
                    })
                })
                .collect();
            Ok(serde_json::Value::Array(list))
        }
        AdminRequest::Content { id } => {
            let content: ContentId = id.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let Some(row) = coord.db.content(&content).await? else {
                anyhow::bail!("unknown content {content}");
            };
            let manifest: SignedManifest = postcard::from_bytes(&row.manifest)?;
            let m = &manifest.body;
            let mut placed = vec![0u32; m.segments() as usize];
            for p in coord.db.placements(&content).await? {
                if let Some(slot) = placed.get_mut(p.segment as usize) {
                    *slot += 1;
                }
            }
            let (min_live, repairs_pending, desired) = {
                let repair = coord.repair();
                let (min_live, pending) = repair
                    .content_health(&content, Instant::now())
                    .unwrap_or((0, 0));
                (
                    min_live,
                    pending,
                    repair.desired(&content).unwrap_or(m.target()),
                )
            };
            let (fragments, fetched, stored) = coord.db.repair_totals(&content).await?;
            Ok(serde_json::json!({
                "id": content.to_string(),
                "size": m.size,
                "segments": m.segments(),
                "segment_size": m.segment_size,
                "k": m.data_shards,
                "m": m.parity_shards,
                "spare": m.spare_shards,
                "target_fragments": m.target(),
                "desired_fragments": desired,
                "min_placed_fragments": placed.iter().min().copied().unwrap_or(0),
                "min_live_fragments": min_live,
                "repairs_pending": repairs_pending,
                "repaired_fragments": fragments,
                "repair_bytes_fetched": fetched,
                "repair_bytes_stored": stored,
            }))
        }
        AdminRequest::Repairs => {
            let stats = coord
                .repair_stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            Ok(serde_json::json!({
                "since_start": stats,
                "records": coord.db.repairs().await?,
            }))
        }
        AdminRequest::Demand {
            content,
            level,
            for_secs,
        } => {
            let content: ContentId = content.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            if coord.db.content(&content).await?.is_none() {
                anyhow::bail!("unknown content {content}");
            }
            let now = now_secs();
            coord
                .db
                .add_demand_hint(&content, level, now + for_secs, now)
                .await?;
            coord.repair_wake.notify_one();
            info!(%content, level, for_secs, "demand hint recorded");
            Ok(
                serde_json::json!({ "content": content.to_string(), "level": level, "until": now + for_secs }),
            )
        }
        AdminRequest::Cluster => {
            let now = now_secs() as i64;
            let alive_since = now - coord.cluster.config().coordinator_timeout.as_secs() as i64;
            let lease = coord.db.lease(crate::cluster::MAINTENANCE).await?;
            let (local, remote) = coord.registry.counts();
            let coordinators: Vec<serde_json::Value> = coord
                .db
                .coordinators()
                .await?
                .into_iter()
                .map(|c| {
                    serde_json::json!({
                        "instance": c.instance,
                        "addr": c.addr,
                        "http": c.http,
                        "started_at": c.started_at,
                        "heartbeat_at": c.heartbeat_at,
                        "alive": c.heartbeat_at >= alive_since,
                    })
                })
                .collect();
            Ok(serde_json::json!({
                "instance": coord.cluster.instance,
                "leader": coord.cluster.is_leader(),
                "maintenance_lease": lease.map(|(holder, until)| {
                    serde_json::json!({ "holder": holder, "expires_at": until })
                }),
                "nodes_online_here": local,
                "nodes_online_elsewhere": remote,
                "coordinators": coordinators,
            }))
        }
        AdminRequest::Liveness => {
            let liveness = coord.liveness.lock().unwrap_or_else(|p| p.into_inner());
            let stats = liveness.stats();
            Ok(serde_json::json!({
                "online": liveness.online_count(),
                "probes": stats.probes,
                "reports_ignored": stats.reports_ignored,
                "reports_dropped": stats.reports_dropped,
                "offline_unreachable": stats.offline_unreachable,
            }))
        }
        AdminRequest::Publish {
            partner,
            path,
            name,
            data_shards,
            parity_shards,
            spare_shards,
            segment_size,
        } => {
            if coord.db.partner_cert(&partner).await?.is_none() {
                anyhow::bail!(
                    "unknown partner `{partner}` (add it with `cm-coordinator partner add {partner}`)"
                );
            }
            // Room for at least one fragment; a node that fills up refuses the push and the
            // fragment moves on to a replacement.
            let first = std::fs::metadata(&path)
                .map(|m| m.len())
                .unwrap_or(0)
                .min(segment_size as u64);
            let fragment =
                overlay::manifest::fragment_len(first as usize, data_shards.max(1) as usize);
            let online = coord.candidates(fragment as u64).await?;
            let params = PublishParams {
                data_shards,
                parity_shards,
                spare_shards,
                segment_size,
            };
            let published = publish::publish(
                &coord.root,
                &coord.net,
                online,
                coord.placement,
                &path,
                &params,
            )
            .await?;
            let name = name.unwrap_or_else(|| {
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let row = ContentRow {
                id: published.content,
                partner,
                size: published.manifest.body.size,
                manifest: overlay::identity::encode(&published.manifest),
                content_key: published.content_key,
            };
            coord
                .db
                .add_content(
                    &row,
                    &name,
                    data_shards,
                    parity_shards,
                    &published.placements,
                    now_secs(),
                )
                .await?;
            {
                let mut repair = coord.repair();
                let now = Instant::now();
                crate::rebuild::add_content(
                    &mut repair,
                    published.content,
                    &published.manifest.body,
                );
                for p in &published.placements {
                    repair.set_holder(&published.content, p.segment, p.index, Some(p.node), now);
                }
            }
            info!(content = %published.content, fragments = published.placements.len(), "published");
            Ok(serde_json::json!({
                "content": published.content.to_string(),
                "size": row.size,
                "segments": published.manifest.body.segments(),
                "fragments": published.placements.len(),
            }))
        }
        AdminRequest::Ticket {
            partner,
            content,
            client,
            expires_secs,
            allowance,
            price,
        } => {
            let order = crate::sales::TicketOrder {
                partner,
                content,
                client,
                expires_secs,
                allowance,
                price,
            };
            let sold =
                crate::sales::sign_ticket(&coord.dir, &coord.db, &coord.accounting, order).await?;
            coord.db.add_ticket(&sold.row("issued")).await?;
            let coordinators = crate::cluster::ticket_addresses(
                &coord.db,
                &coord.addr,
                coord.cluster.config().coordinator_timeout,
            )
            .await?;
            let file = TicketFile {
                ticket: sold.ticket,
                content_key: sold.content_key,
                coordinators,
            };
            Ok(serde_json::to_value(file)?)
        }
        AdminRequest::Reports => Ok(serde_json::to_value(coord.db.problems().await?)?),
        AdminRequest::Reconcile => Ok(crate::accounting::run_now(coord).await?.summary),
        AdminRequest::NodeShow { id } => crate::accounting::node_show(coord, &id).await,
        AdminRequest::Ledger => crate::accounting::ledger(coord).await,
        AdminRequest::Payout { period } => crate::accounting::payout(coord, &period).await,
        AdminRequest::SalesImport { records } => crate::sales::import(coord, records).await,
        AdminRequest::Verdicts { limit } => {
            Ok(serde_json::to_value(coord.db.verdicts(None, limit).await?)?)
        }
    }
}

/// Fresh profiles for a listing (an operator wants now, not half a minute ago).
async fn load_profiles(coord: &Coordinator) -> anyhow::Result<Arc<crate::profiles::Profiles>> {
    let fresh = Arc::new(crate::profiles::load(coord, now_secs()).await?);
    *coord.profiles.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
    Ok(fresh)
}

/// Registers a partner: creates its key and a partner certificate. Works without a running
/// coordinator (the database is shared safely).
pub async fn add_partner(
    dir: &DataDir,
    database_url: Option<&str>,
    name: &str,
) -> anyhow::Result<PeerId> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        anyhow::bail!("partner names are 1-64 letters, digits, `-` or `_`; got `{name}`");
    }
    let root = dir.load_root()?;
    let db = Db::open(database_url, &dir.database()).await?;
    if db.partner_cert(name).await?.is_some() {
        anyhow::bail!("partner `{name}` already exists");
    }
    let key_path: PathBuf = dir.partner_key(name);
    let key = Identity::load_or_create(&key_path)?;
    let now = now_secs();
    let validity = 10 * 365 * 24 * 3600;
    let serial = db
        .next_cert_serial(&key.peer_id(), "partner", now, now + validity)
        .await?;
    let cert = cert::issue(&root, key.peer_id(), Role::Partner, serial, now, validity);
    if !db
        .add_partner(name, &key.peer_id(), &overlay::identity::encode(&cert), now)
        .await?
    {
        anyhow::bail!("partner `{name}` already exists");
    }
    Ok(key.peer_id())
}

/// `db copy`: copies the coordinator's SQLite database (`from`, a `sqlite://PATH` URL, or the
/// data directory's) into the new, empty PostgreSQL database `to`. Holds the data directory's
/// lock throughout: no coordinator runs on it meanwhile.
pub async fn copy_database(
    dir: &DataDir,
    from: Option<&str>,
    to: &str,
) -> anyhow::Result<crate::db::copy::CopySummary> {
    dir.load_root()?;
    let Some(_lock) = dir.try_lock()? else {
        anyhow::bail!(
            "a coordinator is running for {}: stop it before copying its database",
            dir.root().display()
        );
    };
    let path = match from {
        None => dir.database(),
        Some(url) => PathBuf::from(
            url.strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!("--from takes a SQLite database as sqlite://PATH")
                })?,
        ),
    };
    // Opening would create an empty database, and copying that would look like success.
    if !path.is_file() {
        anyhow::bail!("there is no SQLite database at {}", path.display());
    }
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        anyhow::bail!(
            "--to takes a PostgreSQL database as postgres://user:password@host:port/database"
        );
    }
    let source = Db::open_sqlite(&path).await?;
    let target = Db::open_url(to).await?;
    info!(source = %path.display(), "copying the database to PostgreSQL");
    Ok(crate::db::copy::copy(&source, &target).await?)
}

/// Creates a data directory with a new CM root key, and the database (SQLite in the directory
/// unless `database_url` names another).
pub async fn init(dir: &DataDir, database_url: Option<&str>) -> anyhow::Result<PeerId> {
    if dir.root_key().exists() {
        anyhow::bail!(
            "{} is already initialised (coordinator {})",
            dir.root().display(),
            Identity::load(&dir.root_key())?.peer_id()
        );
    }
    std::fs::create_dir_all(dir.root())?;
    // The database first: a wrong URL leaves no key behind, and `init` can simply run again.
    Db::open(database_url, &dir.database()).await?;
    let root = Identity::generate();
    root.save(&dir.root_key())?;
    Ok(root.peer_id())
}
