//! `/ccds/fetch/1`, client side: one fragment from one node, verified, then receipted.
//!
//! # Participants
//! The client and one node, over one stream that carries the download's fetches from that
//! node one after another: a stream is parked after a good exchange and taken up by the next
//! fetch to the same node, which saves opening and negotiating a stream per fragment.
//!
//! # Goals
//! * The length the node announces must be the manifest's before anything is read, and the
//!   bytes must hash to the manifest's BLAKE3 root before they are used.
//! * Only verified fragments are receipted, with cumulative per-node totals signed by the client.
//! * A stalled node is given up after [`IO_TIMEOUT`] without progress (time spent waiting for
//!   `--limit-rate` does not count).
//!
//! # Non-goals
//! Choosing nodes or retrying: the outcome goes back to the [`crate::scheduler`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::PeerId;
use overlay::codec::fragment_hash;
use overlay::identity::{Identity, Signed};
use overlay::net::Net;
use overlay::proto::{self, FetchRequest, FetchResponse};
use overlay::receipt::Receipt;
use overlay::ticket::Ticket;
use tracing::{debug, instrument};

use crate::accounting::Accounting;
use crate::pool::BufferPool;
use crate::rate::RateLimiter;
use crate::scheduler::Outcome;

/// Time allowed to connect to a node and open a stream; a dead node is given up this fast.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a node may stay silent in the middle of an exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// What to fetch and what it must look like.
#[derive(Clone, Debug)]
pub struct FetchJob {
    pub node: PeerId,
    pub segment: u64,
    pub index: u16,
    /// Fragment length from the manifest.
    pub len: usize,
    /// BLAKE3 root from the manifest.
    pub hash: [u8; 32],
    /// Fragment bytes received so far, for the scheduler's rate of a fetch it overtakes.
    pub received: Arc<AtomicU64>,
}

/// What every fetch of one download shares.
pub struct FetchContext {
    pub net: Net,
    pub identity: Identity,
    pub ticket: Ticket,
    pub limiter: RateLimiter,
    pub accounting: Arc<Accounting>,
    /// Fragment buffers, reused across fetches.
    pub buffers: Arc<BufferPool>,
    /// Streams parked after a good exchange, at most one per node, for the next fetch there.
    pub idle: Mutex<HashMap<PeerId, libp2p::Stream>>,
}

impl FetchContext {
    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, libp2p::Stream>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the parked streams, telling their nodes the download is done with them.
    pub async fn close_idle(&self) {
        let streams: Vec<libp2p::Stream> = self.idle().drain().map(|(_, s)| s).collect();
        let closes = streams.into_iter().map(|mut s| async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), s.close()).await;
        });
        futures::future::join_all(closes).await;
    }
}

/// Fetches one fragment. Returns the outcome, and the bytes when they were verified.
#[instrument(skip_all, fields(node = %job.node, segment = job.segment, index = job.index))]
pub async fn fetch(ctx: &FetchContext, job: &FetchJob) -> (Outcome, Option<Vec<u8>>) {
    let parked = ctx.idle().remove(&job.node);
    if let Some(mut stream) = parked {
        match exchange(ctx, job, &mut stream).await {
            Ok(data) => return finish(ctx, job, stream, data),
            // The node may have ended the stream while it was parked: nothing came back, so
            // the request goes again on a fresh stream.
            Err(Outcome::Broken(reason)) if job.received.load(Ordering::Relaxed) == 0 => {
                debug!(%reason, "parked stream unusable; opening a fresh one");
            }
            Err(outcome) => {
                debug!(?outcome, "fetch failed");
                return (outcome, None);
            }
        }
    }
    let mut stream = match ctx
        .net
        .open_with(job.node, proto::FETCH, 1, OPEN_TIMEOUT)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "cannot open fetch stream");
            return (Outcome::Unreachable(e.to_string()), None);
        }
    };
    match exchange(ctx, job, &mut stream).await {
        Ok(data) => finish(ctx, job, stream, data),
        Err(outcome) => {
            debug!(?outcome, "fetch failed");
            (outcome, None)
        }
    }
}

/// A verified fragment: its stream is parked for the next fetch from the node when the whole
/// exchange went through (the receipt included).
fn finish(
    ctx: &FetchContext,
    job: &FetchJob,
    stream: libp2p::Stream,
    (data, reusable): (Vec<u8>, bool),
) -> (Outcome, Option<Vec<u8>>) {
    if reusable {
        ctx.idle().insert(job.node, stream);
    }
    let bytes = data.len() as u64;
    (Outcome::Verified { bytes }, Some(data))
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Outcome> {
    match tokio::time::timeout(IO_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Outcome::Broken(format!("{what}: {e}"))),
        Err(_) => Err(Outcome::Broken(format!(
            "{what}: no answer within {IO_TIMEOUT:?}"
        ))),
    }
}

/// The exchange on an open stream; generic so that it can run over any byte stream. Returns
/// the verified bytes, and whether the stream can carry another exchange.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &FetchContext,
    job: &FetchJob,
    stream: &mut S,
) -> Result<(Vec<u8>, bool), Outcome> {
    let request = FetchRequest {
        ticket: ctx.ticket.clone(),
        content: ctx.ticket.body().content,
        segment: u32::try_from(job.segment)
            .map_err(|_| Outcome::Broken(format!("segment {} out of range", job.segment)))?,
        index: job.index,
    };
    timed("sending the request", proto::write_msg(stream, &request)).await?;
    let response: FetchResponse = timed(
        "reading the answer",
        proto::read_msg(stream, proto::MAX_SMALL_MSG),
    )
    .await?;
    let len = match response {
        FetchResponse::Ok { len, receipt } => {
            if let Some(kept) = receipt {
                continue_receipts(ctx, job, &kept);
            }
            len as usize
        }
        FetchResponse::Refused(reason) => return Err(Outcome::Refused(reason)),
        FetchResponse::NotFound => return Err(Outcome::NotFound),
        FetchResponse::Corrupt => return Err(Outcome::CorruptAtNode),
    };
    if len != job.len || len > proto::MAX_FRAGMENT {
        return Err(Outcome::Mismatch(format!(
            "announced a fragment of {len} bytes; the manifest says {}",
            job.len
        )));
    }
    let mut data = ctx.buffers.take(len);
    if let Err(outcome) = read_limited(ctx, stream, &mut data, &job.received).await {
        ctx.buffers.give(data);
        return Err(outcome);
    }
    let hash = fragment_hash(&data);
    if hash != job.hash {
        ctx.buffers.give(data);
        return Err(Outcome::Mismatch(format!(
            "fragment hashes to {}, the manifest says {}",
            hex::encode(&hash[..8]),
            hex::encode(&job.hash[..8])
        )));
    }
    let body = ctx
        .accounting
        .record(job.node, len as u64, overlay::time::now_secs());
    let receipt = Signed::sign(&ctx.identity, body);
    // The fragment is good whatever happens to the receipt; the node's problem if it is lost.
    match timed("sending the receipt", proto::write_msg(stream, &receipt)).await {
        Ok(()) => Ok((data, true)),
        Err(e) => {
            debug!(?e, "receipt not delivered");
            Ok((data, false))
        }
    }
}

/// Continues this client's receipt totals for the node from the receipt the node kept for the
/// ticket, when an earlier run of this client signed it and it is ahead of ours.
fn continue_receipts(ctx: &FetchContext, job: &FetchJob, kept: &Receipt) {
    if kept.body.node != job.node || !ctx.accounting.behind(&kept.body) {
        return;
    }
    match kept.verify_by(&ctx.identity.peer_id()) {
        Ok(body) => {
            debug!(
                seq = body.seq,
                bytes = body.bytes,
                "continuing from the node's receipt"
            );
            ctx.accounting.continue_from(body);
        }
        Err(e) => debug!(error = %e, "the node's receipt is not ours; ignored"),
    }
}

/// Fills `data` (its length already checked against the manifest) in chunks, paced by the
/// rate limiter, with a timeout on each chunk; `received` follows the progress.
async fn read_limited<S: AsyncRead + Unpin>(
    ctx: &FetchContext,
    stream: &mut S,
    data: &mut [u8],
    received: &AtomicU64,
) -> Result<(), Outcome> {
    let len = data.len();
    let mut filled = 0;
    while filled < len {
        let end = (filled + ctx.limiter.chunk()).min(len);
        let n = timed("reading the fragment", stream.read(&mut data[filled..end])).await?;
        if n == 0 {
            return Err(Outcome::Broken(format!(
                "the stream ended after {filled} of {len} bytes"
            )));
        }
        filled += n;
        received.store(filled as u64, Ordering::Relaxed);
        ctx.limiter.consume(n as u64).await;
    }
    Ok(())
}
