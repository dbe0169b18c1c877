//! The repair driver: carries out the repair core's jobs ([`crate::repair`]) and its verdicts on
//! surplus fragments, and turns demand into a desired fragment count per content.
//!
//! A job is run by the coordinator itself: it fetches `k` fragments of the segment from live
//! holders over `/ccds/fetch/1`, under a short-lived ticket it issues for its own ID in the
//! content partner's name (so nodes serve it like any client and hold its signed receipts as
//! proof of the work), rebuilds the missing fragments, checks them against the manifest, pushes
//! them to new holders chosen by the placement rules, and records the new placements and the
//! work in one transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use overlay::cert::Certificate;
use overlay::codec::{SegmentCodec, fragment_hash};
use overlay::manifest::{Manifest, SignedManifest};
use overlay::proto::{self, DeleteOrder, FetchRequest, FetchResponse, StoreRequest};
use overlay::receipt::ReceiptBody;
use overlay::store::FragmentId;
use overlay::ticket::{Ticket, TicketBody};
use overlay::time::now_secs;
use overlay::{ContentId, Identity, PeerId, Signed};
use rand::seq::SliceRandom;
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::db::RepairRow;
use crate::placement::{SegmentPlan, Subnet, WeightedCandidate};
use crate::repair::{Job, JobKind, Layout};
use crate::server::Coordinator;

/// Repair driver and demand settings.
#[derive(Clone, Debug)]
pub struct RebuildConfig {
    /// How often the repair check runs.
    pub interval: Duration,
    /// Segments rebuilt at once.
    pub concurrency: usize,
    /// Demand counts what happened within this window.
    pub demand_window: Duration,
    /// Demand units (tickets issued, downloads in flight, hint levels, slow reports) per extra
    /// parity fragment.
    pub demand_per_fragment: u64,
    /// Time allowed for one fetch or push.
    pub transfer_timeout: Duration,
}

impl Default for RebuildConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            concurrency: 4,
            demand_window: Duration::from_secs(3600),
            demand_per_fragment: 10,
            transfer_timeout: Duration::from_secs(60),
        }
    }
}

/// What the driver needs of a content, cached.
pub struct ContentMeta {
    pub manifest: Manifest,
    pub key: [u8; 32],
    pub partner: String,
}

/// Demand seen in memory: downloads in flight and slow reports, per content.
#[derive(Default)]
pub struct DemandBook {
    /// Tickets that fetched a manifest and have not completed, with when they started.
    in_flight: HashMap<ContentId, HashMap<[u8; 16], Instant>>,
    /// Slow-download reports.
    slow: HashMap<ContentId, Vec<Instant>>,
}

impl DemandBook {
    /// Most downloads in flight tracked per content (a flood costs bounded memory).
    const MAX_PER_CONTENT: usize = 100_000;

    pub fn started(&mut self, content: ContentId, ticket: [u8; 16], now: Instant) {
        let m = self.in_flight.entry(content).or_default();
        if m.len() < Self::MAX_PER_CONTENT {
            m.insert(ticket, now);
        }
    }

    pub fn completed(&mut self, content: &ContentId, ticket: &[u8; 16]) {
        if let Some(m) = self.in_flight.get_mut(content) {
            m.remove(ticket);
        }
    }

    pub fn slow(&mut self, content: ContentId, now: Instant) {
        let v = self.slow.entry(content).or_default();
        if v.len() < Self::MAX_PER_CONTENT {
            v.push(now);
        }
    }

    /// Forgets what is older than `window` and returns the demand per content.
    pub fn tally(&mut self, now: Instant, window: Duration) -> HashMap<ContentId, u64> {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < window;
        let mut out = HashMap::new();
        self.in_flight.retain(|c, m| {
            m.retain(|_, t| fresh(t));
            *out.entry(*c).or_default() += m.len() as u64;
            !m.is_empty()
        });
        self.slow.retain(|c, v| {
            v.retain(fresh);
            *out.entry(*c).or_default() += v.len() as u64;
            !v.is_empty()
        });
        out
    }
}

/// Loads every content and its placements into the repair core.
pub async fn load(coord: &Coordinator) -> anyhow::Result<()> {
    let now = Instant::now();
    for row in coord.db.all_contents().await? {
        let manifest: SignedManifest = postcard::from_bytes(&row.manifest)?;
        let placements = coord.db.placements(&row.id).await?;
        let mut repair = coord.repair();
        add_content(&mut repair, row.id, &manifest.body);
        for p in placements {
            repair.set_holder(&row.id, p.segment, p.index, Some(p.node), now);
        }
    }
    Ok(())
}

/// Registers a content with the repair core.
pub fn add_content(repair: &mut crate::repair::Repair, id: ContentId, m: &Manifest) {
    let layout = Layout {
        k: m.data_shards,
        m: m.parity_shards,
        spare: m.spare_shards,
    };
    repair.add_content(id, layout, m.segments() as u32);
}

/// Per segment: no new job before this time, and the failures so far.
type Backoff = HashMap<(ContentId, u32), (Instant, u32)>;

/// Runs the check, surplus deletion, demand and the jobs, forever.
pub async fn driver(coord: Arc<Coordinator>, config: RebuildConfig) {
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    // Segments whose last job failed wait before the next try, doubling up to ten minutes.
    let backoff: Arc<std::sync::Mutex<Backoff>> = Default::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = coord.repair_wake.notified() => {}
        }
        if let Err(e) = update_demand(&coord, &config).await {
            error!(error = %e, "cannot compute demand");
        }
        // With several coordinators on one database, the maintenance lease holder repairs.
        if !coord.cluster.is_leader() {
            continue;
        }
        let free = slots.available_permits();
        let check = coord.repair().check_top(Instant::now(), free);
        for s in check.surplus {
            info!(content = %s.content, segment = s.segment, index = s.index, node = %s.node,
                "demand cooled; removing a spare fragment");
            coord
                .repair()
                .set_holder(&s.content, s.segment, s.index, None, Instant::now());
            if let Err(e) = coord
                .db
                .remove_placement(&s.content, s.segment, s.index, &s.node, now_secs())
                .await
            {
                error!(error = %e, "cannot record a removed placement");
            }
            if coord.registry.is_online(&s.node) {
                let coord = coord.clone();
                tokio::spawn(async move { send_deletes(&coord, s.node).await });
            }
        }
        let now = Instant::now();
        for job in check.jobs {
            if backoff
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(job.content, job.segment))
                .is_some_and(|(until, _)| *until > now)
            {
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let backoff = backoff.clone();
            coord.repair().set_busy(&job.content, job.segment, true);
            let coord = coord.clone();
            let config = config.clone();
            tokio::spawn(async move {
                let (content, segment) = (job.content, job.segment);
                match run_job(&coord, &config, job).await {
                    Ok(n) => {
                        backoff
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&(content, segment));
                        coord
                            .repair_stats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .jobs += 1;
                        debug!(%content, segment, fragments = n, "segment rebuilt");
                    }
                    Err(e) => {
                        let mut b = backoff.lock().unwrap_or_else(|p| p.into_inner());
                        let failures = b.get(&(content, segment)).map_or(0, |(_, n)| *n) + 1;
                        let wait = (config.interval * 2u32.saturating_pow(failures.min(16)))
                            .min(Duration::from_secs(600));
                        b.insert((content, segment), (Instant::now() + wait, failures));
                        drop(b);
                        coord
                            .repair_stats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .failed += 1;
                        warn!(%content, segment, error = %e, "repair job failed; will retry");
                    }
                }
                coord.repair().set_busy(&content, segment, false);
                drop(permit);
                coord.repair_wake.notify_one();
            });
        }
    }
}

/// Sets each content's desired fragment count from its demand.
async fn update_demand(coord: &Coordinator, config: &RebuildConfig) -> anyhow::Result<()> {
    let now = now_secs();
    let since = now.saturating_sub(config.demand_window.as_secs());
    let mut demand: HashMap<ContentId, u64> = coord
        .demand
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .tally(Instant::now(), config.demand_window);
    for (c, n) in coord.db.demand(since, now).await? {
        *demand.entry(c).or_default() += n;
    }
    let mut repair = coord.repair();
    let ids: Vec<ContentId> = repair.content_ids();
    for id in ids {
        let d = demand.get(&id).copied().unwrap_or(0);
        let extra = (d / config.demand_per_fragment.max(1)) as usize;
        let target = repair.target(&id).unwrap_or(0);
        let before = repair.desired(&id).unwrap_or(0);
        let after = repair.set_desired(&id, target + extra).unwrap_or(0);
        if after != before {
            info!(content = %id, demand = d, fragments = after, "desired fragments per segment changed");
        }
    }
    Ok(())
}

/// Tells `node` to delete every fragment whose placement was closed while it was away.
pub async fn send_deletes(coord: &Coordinator, node: PeerId) {
    let fragments = match coord.db.undeleted(&node).await {
        Ok(f) if f.is_empty() => return,
        Ok(f) => f,
        Err(e) => return error!(error = %e, "cannot list surplus fragments"),
    };
    // One order per content, at most a bounded number of fragments each.
    let mut by_content: HashMap<ContentId, Vec<FragmentId>> = HashMap::new();
    for (content, segment, index) in &fragments {
        by_content.entry(*content).or_default().push(FragmentId {
            content: *content,
            segment: *segment,
            index: *index,
        });
    }
    let mut sent = Vec::new();
    for (content, ids) in by_content {
        for chunk in ids.chunks(1000) {
            let order = Signed::sign(
                &coord.root,
                DeleteOrder {
                    node,
                    fragments: chunk.to_vec(),
                    issued: now_secs(),
                },
            );
            match crate::publish::store_request(&coord.net, node, StoreRequest::Delete(order), None)
                .await
            {
                Ok(()) => {
                    info!(%node, %content, fragments = chunk.len(), "surplus fragments deleted");
                    sent.extend(chunk.iter().map(|f| (f.content, f.segment, f.index)));
                }
                Err(e) => warn!(%node, error = %e, "delete order failed; retried at its next join"),
            }
        }
    }
    if let Err(e) = coord.db.deletes_sent(&node, &sent, now_secs()).await {
        error!(error = %e, "cannot record delete orders");
    }
}

/// Issues a ticket for the coordinator's own fetches of `content`.
async fn repair_ticket(
    coord: &Coordinator,
    content: ContentId,
    meta: &ContentMeta,
    allowance: u64,
) -> anyhow::Result<Ticket> {
    let Some(cert) = coord.db.partner_cert(&meta.partner).await? else {
        anyhow::bail!("partner {} of {content} is gone", meta.partner);
    };
    let cert: Certificate = postcard::from_bytes(&cert)?;
    let key = Identity::load(&coord.dir.partner_key(&meta.partner))?;
    let now = now_secs();
    let body = TicketBody {
        ticket_id: rand::random(),
        content,
        client: coord.root.peer_id(),
        not_after: now + 3600,
        allowance,
    };
    // The sales record that lets reconciliation pay the holders' repair traffic.
    coord
        .db
        .add_ticket(&crate::db::TicketRow {
            id: hex::encode(body.ticket_id),
            content: content.to_string(),
            client: body.client.to_string(),
            partner: meta.partner.clone(),
            not_after: body.not_after as i64,
            allowance: allowance as i64,
            issued_at: now as i64,
            price: 0,
            source: "repair",
        })
        .await?;
    Ok(Ticket::issue(&key, cert, body))
}

/// Fetches one fragment as a client would, verifies it and signs the node a receipt.
async fn fetch(
    coord: &Coordinator,
    ticket: &Ticket,
    node: PeerId,
    fragment: FragmentId,
    hash: [u8; 32],
    len: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    tokio::time::timeout(timeout, async {
        let mut stream = coord.net.open_with(node, proto::FETCH, 1, timeout).await?;
        let request = FetchRequest {
            ticket: ticket.clone(),
            content: fragment.content,
            segment: fragment.segment,
            index: fragment.index,
        };
        proto::write_msg(&mut stream, &request).await?;
        match proto::read_msg(&mut stream, proto::MAX_SMALL_MSG).await? {
            FetchResponse::Ok { len: n, .. } if n as usize == len => {}
            FetchResponse::Ok { len: n, .. } => {
                anyhow::bail!("announced {n} bytes, expected {len}")
            }
            other => anyhow::bail!("node answered {other:?}"),
        }
        let mut data = vec![0u8; len];
        let started = Instant::now();
        stream.read_exact(&mut data).await?;
        let secs = started.elapsed().as_secs_f64();
        // Fragments big enough to say something about the node's upload rate.
        if len >= 64 * 1024
            && secs > 0.0
            && let Err(e) = coord
                .db
                .observe_bps(&node, (len as f64 / secs) as u64)
                .await
        {
            warn!(error = %e, "cannot record an observed rate");
        }
        if fragment_hash(&data) != hash {
            anyhow::bail!("fragment {fragment} does not match the manifest");
        }
        let receipt = Signed::sign(
            &coord.root,
            ReceiptBody {
                ticket_id: ticket.body().ticket_id,
                content: fragment.content,
                node,
                fragments: 1,
                bytes: len as u64,
                seq: 1,
                time: now_secs(),
            },
        );
        let _ = proto::write_msg(&mut stream, &receipt).await;
        let _ = stream.close().await;
        Ok(data)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no fragment from {node} within {timeout:?}"))?
}

/// Carries out one job; returns the number of fragments placed.
async fn run_job(coord: &Coordinator, config: &RebuildConfig, job: Job) -> anyhow::Result<usize> {
    let meta = coord.content_meta(&job.content).await?;
    let m = &meta.manifest;
    let (segment, k) = (job.segment, m.k());
    let len = m.fragment_len(segment as u64);
    let hash = |i: u16| -> anyhow::Result<[u8; 32]> {
        m.hash(segment as u64, i as usize).copied().ok_or_else(|| {
            anyhow::anyhow!("fragment {i} of segment {segment} is not in the manifest")
        })
    };
    // New holders, chosen before any fragment is fetched (repair traffic is paid for): never a
    // node or network already holding a fragment of this segment.
    let avoid_nodes = {
        let repair = coord.repair();
        let missing: HashSet<u16> = job.missing.iter().copied().collect();
        let mut avoid = HashSet::new();
        for i in 0..m.shards() as u16 {
            if missing.contains(&i) {
                continue;
            }
            if let Some(n) = repair.holder(&job.content, segment, i) {
                avoid.insert(n);
            }
        }
        avoid
    };
    let candidates = coord.candidates(len as u64).await?;
    let avoid_subnets: HashSet<Subnet> = avoid_nodes
        .iter()
        .filter_map(|n| coord.subnet_of(n))
        .collect();
    let pool: Vec<WeightedCandidate> = candidates
        .into_iter()
        .filter(|c| {
            let shared = coord.placement.distinct_subnets && avoid_subnets.contains(&c.subnet);
            !avoid_nodes.contains(&c.node) && !shared
        })
        .collect();
    let Some((chosen, plan)) = SegmentPlan::new(&pool, job.missing.len(), coord.placement) else {
        anyhow::bail!(
            "no {} online nodes on networks not already holding segment {segment}",
            job.missing.len()
        );
    };
    let ticket = repair_ticket(coord, job.content, &meta, (2 * k * len) as u64).await?;

    // Fetch k fragments, k at a time, moving on to other holders after a failure.
    let mut holders = job.holders.clone();
    holders.shuffle(&mut rand::rng());
    let mut queue = holders.into_iter();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; m.shards()];
    let mut got = 0;
    let start = |(index, node): (u16, PeerId)| {
        let ticket = &ticket;
        async move {
            let fragment = FragmentId {
                content: job.content,
                segment,
                index,
            };
            let r = match hash(index) {
                Ok(h) => {
                    fetch(
                        coord,
                        ticket,
                        node,
                        fragment,
                        h,
                        len,
                        config.transfer_timeout,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            (index, node, r)
        }
    };
    for h in queue.by_ref().take(k) {
        running.push(start(h));
    }
    while let Some((index, node, result)) = running.next().await {
        match result {
            Ok(data) => {
                shards[index as usize] = Some(data);
                got += 1;
                if got == k {
                    break;
                }
            }
            Err(e) => {
                warn!(%node, segment, index, error = %e, "repair fetch failed");
                if let Some(h) = queue.next() {
                    running.push(start(h));
                }
            }
        }
    }
    drop(running);
    if got < k {
        anyhow::bail!("only {got} of the {k} fragments needed could be fetched");
    }
    let bytes_fetched = (k * len) as u64;

    // Rebuild and check against the manifest.
    let codec = SegmentCodec::new(&meta.key, k, m.all_parity())?;
    let rebuilt =
        tokio::task::spawn_blocking(move || codec.rebuild(&mut shards).map(|()| shards)).await??;
    let mut fragments = Vec::with_capacity(job.missing.len());
    for &i in &job.missing {
        let data = rebuilt[i as usize]
            .clone()
            .ok_or_else(|| anyhow::anyhow!("fragment {i} was not rebuilt"))?;
        if fragment_hash(&data) != hash(i)? {
            anyhow::bail!("rebuilt fragment {i} of segment {segment} does not match the manifest");
        }
        fragments.push((i, Bytes::from(data)));
    }

    let plan = std::sync::Mutex::new(plan);
    let pushes = fragments.iter().zip(chosen).map(|((index, data), first)| {
        let plan = &plan;
        async move {
            let fragment = FragmentId {
                content: job.content,
                segment,
                index: *index,
            };
            let mut node = first;
            loop {
                let result = crate::publish::push(
                    &coord.root,
                    &coord.net,
                    node,
                    fragment,
                    fragment_hash(data),
                    data.clone(),
                )
                .await;
                match result {
                    Ok(()) => return Ok::<_, anyhow::Error>((*index, node, data.len())),
                    Err(e) => {
                        warn!(%node, %fragment, error = %e, "repair push failed; trying another node");
                        let next = plan.lock().unwrap_or_else(|p| p.into_inner()).replacement();
                        match next {
                            Some(n) => node = n,
                            None => anyhow::bail!("fragment {fragment} could not be placed: {e}"),
                        }
                    }
                }
            }
        }
    });
    let placed = futures::future::join_all(pushes).await;

    // Record what landed, even if some pushes failed (the next check retries the rest).
    let now = now_secs();
    let kind = match job.kind {
        JobKind::Repair => "repair",
        JobKind::Expand => "expand",
    };
    let mut rows = Vec::new();
    let mut first_error = None;
    {
        let repair = coord.repair();
        for p in placed {
            match p {
                Ok((index, node, bytes)) => rows.push(RepairRow {
                    segment,
                    index,
                    kind,
                    previous: repair.holder(&job.content, segment, index),
                    node,
                    rebuilt_by: coord.root.peer_id(),
                    ticket: hex::encode(ticket.body().ticket_id),
                    bytes_fetched: if rows.is_empty() { bytes_fetched } else { 0 },
                    bytes_stored: bytes as u64,
                    at: now,
                }),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    // Only while this coordinator holds the maintenance lease: a coordinator that took it over
    // meanwhile may be rebuilding the same segment. The fragments pushed are then surplus.
    let fence = (
        crate::cluster::MAINTENANCE,
        coord.cluster.instance.as_str(),
        now_secs(),
    );
    if let Err(e) = coord
        .db
        .record_repairs(&job.content, &rows, Some(fence))
        .await
    {
        for r in &rows {
            let order = Signed::sign(
                &coord.root,
                DeleteOrder {
                    node: r.node,
                    fragments: vec![FragmentId {
                        content: job.content,
                        segment,
                        index: r.index,
                    }],
                    issued: now_secs(),
                },
            );
            if let Err(e) =
                crate::publish::store_request(&coord.net, r.node, StoreRequest::Delete(order), None)
                    .await
            {
                warn!(node = %r.node, error = %e, "cannot delete a fragment rebuilt in vain");
            }
        }
        return Err(e.into());
    }
    {
        let mut repair = coord.repair();
        let t = Instant::now();
        for r in &rows {
            repair.set_holder(&job.content, segment, r.index, Some(r.node), t);
        }
    }
    {
        let mut stats = coord.repair_stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.fragments += rows.len() as u64;
        stats.bytes_fetched += rows.iter().map(|r| r.bytes_fetched).sum::<u64>();
        stats.bytes_stored += rows.iter().map(|r| r.bytes_stored).sum::<u64>();
    }
    info!(content = %job.content, segment, kind, live = job.live, placed = rows.len(),
        "fragments rebuilt on new holders");
    // Previous holders that are online again (a returned node whose copy was replaced in the
    // meantime) get their delete orders now; the others at their next join.
    for r in &rows {
        if let Some(prev) = r.previous
            && coord.registry.is_online(&prev)
        {
            send_deletes(coord, prev).await;
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(rows.len()),
    }
}

/// Repair counters since start.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairStats {
    pub jobs: u64,
    pub failed: u64,
    pub fragments: u64,
    pub bytes_fetched: u64,
    pub bytes_stored: u64,
}

impl Coordinator {
    /// The repair core, locked.
    pub fn repair(&self) -> std::sync::MutexGuard<'_, crate::repair::Repair> {
        self.repair.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Manifest, key and partner of a content (cached).
    pub async fn content_meta(&self, id: &ContentId) -> anyhow::Result<Arc<ContentMeta>> {
        if let Some(m) = self.metas.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(m.clone());
        }
        let Some(row) = self.db.content(id).await? else {
            anyhow::bail!("unknown content {id}");
        };
        let manifest: SignedManifest = postcard::from_bytes(&row.manifest)?;
        let meta = Arc::new(ContentMeta {
            manifest: manifest.body,
            key: row.content_key,
            partner: row.partner,
        });
        self.metas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id, meta.clone());
        Ok(meta)
    }

    /// The network a node was last seen on.
    pub fn subnet_of(&self, node: &PeerId) -> Option<Subnet> {
        self.subnets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .copied()
    }
}
