//! `/ccds/fetch/1`: serving fragments to a ticket holder.
//!
//! # Participants
//! A client holding a ticket, and this node.
//!
//! # The exchange
//! request (ticket + fragment) → answer (+ the fragment's bytes) → receipt, then the client may
//! send its next request on the same stream: a download keeps one stream per node rather than
//! opening one per fragment. Every request carries its ticket and is checked on its own.
//!
//! # Goals
//! * Bytes go only to the client a valid ticket names: the ticket must chain to the pinned CM
//!   root through a partner certificate, be unexpired, and name the stream's authenticated
//!   peer. Otherwise the client gets the reason and not one fragment byte.
//! * A fragment found corrupt on disk is never served: the client is told to go elsewhere.
//! * After the bytes, the client's receipt is checked and kept as evidence of the work.
//! * With an upload limit, fragment bytes leave no faster than the limit, counted over all
//!   streams together (see [`crate::throttle`]).
//! * A client whose receipts lag more than the credit behind the bytes it received is refused
//!   until they catch up, and no ticket gets more bytes from this node than its allowance
//!   (see [`crate::credit`]). After a lag refusal the client may send its newest receipt on
//!   the same stream, and then fetch again.
//!
//! # Non-goals
//! Revocation; the allowance across nodes (each node only knows what it served itself; the CM
//! reconciles the total).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::AsyncWriteExt;
use overlay::PeerId;
use overlay::proto::{self, FetchReceipt, FetchRequest, FetchResponse, FrameError, MAX_SMALL_MSG};
use overlay::store::{FragmentId, StoreError};
use overlay::ticket::{TicketBody, VerifiedTicket};
use overlay::time::now_secs;
use tracing::{Instrument, debug, error, field, info, info_span, warn};

use crate::credit;
use crate::receipts::{self, Recorded};
use crate::serve::{Budget, Context, Stats, StreamError, within};

/// Fragment bytes are written in slices of at most this size, so one write never holds a whole
/// fragment's worth of stream buffer (smaller under a low upload limit: see
/// [`crate::throttle::UploadLimit::chunk`]).
const CHUNK: usize = 256 * 1024;

/// Serves one inbound `/ccds/fetch/1` stream: requests one after another, until the client
/// closes the stream, leaves it idle for [`Limits::fetch_idle`](crate::serve::Limits), or a
/// request ends it.
pub(crate) async fn serve(ctx: Arc<Context>, remote: PeerId, mut stream: libp2p::Stream) {
    let span = info_span!("fetch", peer = %remote);
    async move {
        let mut served = 0u64;
        // The ticket of the stream's last request, its signatures checked once.
        let mut verified = None;
        // The stream's place among the clients served, taken with its first request.
        let mut slot = None;
        loop {
            let request = if served == 0 {
                within(
                    ctx.limits.header_timeout,
                    "fetch request",
                    proto::read_msg::<_, FetchRequest>(&mut stream, MAX_SMALL_MSG),
                )
                .await
            } else {
                // Between requests the client may simply be done: an end, a reset or silence
                // here is not a failure.
                match within(
                    ctx.limits.fetch_idle,
                    "next fetch request",
                    proto::read_msg::<_, FetchRequest>(&mut stream, MAX_SMALL_MSG),
                )
                .await
                {
                    Err(StreamError::Frame(FrameError::Io(_)) | StreamError::Timeout { .. }) => {
                        debug!(requests = served, "fetch stream ended");
                        break;
                    }
                    other => other,
                }
            };
            // Checked before the ticket: a paused or busy node does no work for anyone.
            let refusal = match &request {
                Ok(_) if ctx.paused.load(Ordering::Relaxed) => {
                    Stats::bump(&ctx.stats.paused_refused);
                    debug!("fetch refused: paused");
                    Some(PAUSED.to_string())
                }
                Ok(_) if slot.is_none() => {
                    slot = ctx.admit_client(remote);
                    slot.is_none().then(|| {
                        Stats::bump(&ctx.stats.busy_refused);
                        let max = ctx.limits.max_clients.max(1);
                        info!(max, "fetch refused: serving the maximum of clients");
                        busy(max)
                    })
                }
                _ => None,
            };
            let outcome = match (request, refusal) {
                (Ok(_), Some(reason)) => refuse(&mut stream, reason).await,
                (Ok(request), None) => {
                    let span = info_span!(
                        "request",
                        ticket = %hex::encode(request.ticket.body().ticket_id),
                        fragment = field::Empty
                    );
                    exchange(&ctx, remote, &mut stream, request, &mut verified)
                        .instrument(span)
                        .await
                }
                (Err(e), _) => Err(e),
            };
            match outcome {
                Ok(Next::Continue) => served += 1,
                Ok(Next::End) => break,
                Err(e) => {
                    warn!(error = %e, "fetch stream failed");
                    break;
                }
            }
        }
        let _ = stream.close().await;
    }
    .instrument(span)
    .await
}

/// Why a paused node refuses fetches.
pub const PAUSED: &str = "paused: the node's owner has paused it; fetch from another node";

/// Why a node at its cap of clients refuses one more.
pub fn busy(max: usize) -> String {
    format!("busy: the node is serving its maximum of {max} clients; fetch from another node")
}

/// Answers a request with a refusal and ends the stream.
async fn refuse(stream: &mut libp2p::Stream, reason: String) -> Result<Next, StreamError> {
    proto::write_msg(stream, &FetchResponse::Refused(reason)).await?;
    Ok(Next::End)
}

/// Whether a stream may carry another request after one exchange.
enum Next {
    Continue,
    End,
}

async fn exchange(
    ctx: &Arc<Context>,
    remote: PeerId,
    stream: &mut libp2p::Stream,
    request: FetchRequest,
    verified: &mut Option<VerifiedTicket>,
) -> Result<Next, StreamError> {
    let span = tracing::Span::current();
    // A ticket seen on this stream before has its signatures checked already; every request
    // still checks its validity, content and client.
    let now = now_secs();
    let checked = match verified.as_ref().filter(|v| v.is(&request.ticket)) {
        Some(known) => known.allows(now, &request.content, &remote).cloned(),
        None => request.ticket.verify_once(&ctx.cm, now).and_then(|fresh| {
            let body = fresh.allows(now, &request.content, &remote).cloned();
            *verified = Some(fresh);
            body
        }),
    };
    let ticket = match checked {
        Ok(body) => body,
        Err(e) => {
            Stats::bump(&ctx.stats.fetch_refused);
            warn!(reason = %e, "fetch refused");
            proto::write_msg(stream, &FetchResponse::Refused(e.to_string())).await?;
            return Ok(Next::End);
        }
    };
    let id = FragmentId {
        content: ticket.content,
        segment: request.segment,
        index: request.index,
    };
    span.record("fragment", field::display(id));

    let store = ctx.store.clone();
    let data = match tokio::task::spawn_blocking(move || store.get(&id)).await {
        Ok(Ok(data)) => data,
        Ok(Err(StoreError::NotFound(_))) => {
            Stats::bump(&ctx.stats.not_found);
            debug!("fragment not held here");
            proto::write_msg(stream, &FetchResponse::NotFound).await?;
            return Ok(Next::Continue);
        }
        Ok(Err(StoreError::Corrupt { .. })) => {
            Stats::bump(&ctx.stats.corrupt);
            warn!("local copy of the fragment is corrupt; it has been dropped");
            proto::write_msg(stream, &FetchResponse::Corrupt).await?;
            return Ok(Next::Continue);
        }
        Ok(Err(e)) => {
            error!(error = %e, "cannot read fragment");
            let reason = "the node cannot read its copy of this fragment".to_string();
            proto::write_msg(stream, &FetchResponse::Refused(reason)).await?;
            return Ok(Next::Continue);
        }
        Err(e) => {
            error!(error = %e, "read task failed");
            let reason = "internal error on the node".to_string();
            proto::write_msg(stream, &FetchResponse::Refused(reason)).await?;
            return Ok(Next::Continue);
        }
    };
    // The store only ever accepts fragments up to MAX_FRAGMENT, far below u32::MAX.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let admitted = ctx
        .credit()
        .admit(ticket.ticket_id, ticket.allowance, u64::from(len));
    if let Err(refusal) = admitted {
        Stats::bump(match refusal {
            credit::Refusal::Allowance { .. } => &ctx.stats.allowance_refused,
            credit::Refusal::ReceiptsLag { .. } => &ctx.stats.receipts_lag_refused,
        });
        warn!(reason = %refusal, "fetch refused");
        proto::write_msg(stream, &FetchResponse::Refused(refusal.to_string())).await?;
        if matches!(refusal, credit::Refusal::ReceiptsLag { .. }) {
            catch_up(ctx, &ticket, stream).await;
            return Ok(Next::End);
        }
        return Ok(Next::Continue);
    }
    // The delivery is timed up to the receipt (see `crate::upload` for why), waits for the
    // upload limit included: the rate is what the client got.
    let started = Instant::now();
    let receipt = ctx.receipts.latest(&ticket.ticket_id).map(Box::new);
    let answer = FetchResponse::Ok { len, receipt };
    let delivered = deliver(ctx, stream, &answer, &data[..len as usize]).await;
    if delivered.is_err() {
        // The client did not get the fragment: it owes no receipt for it.
        ctx.credit().undo(ticket.ticket_id, u64::from(len));
    }
    delivered?;
    Stats::bump(&ctx.stats.served);
    ctx.served(u64::from(len));
    info!(bytes = len, "fragment served");

    let receipt = within(
        ctx.limits.receipt_timeout,
        "receipt",
        proto::read_msg::<_, FetchReceipt>(stream, MAX_SMALL_MSG),
    )
    .await;
    match receipt {
        Ok(receipt) => {
            if let Some(rate) = ctx.upload.record(u64::from(len), started.elapsed()) {
                debug!(rate, "upload rate sampled");
            }
            keep_receipt(ctx, &ticket, receipt).await;
            Ok(Next::Continue)
        }
        Err(StreamError::Frame(e @ (FrameError::Decode(_) | FrameError::TooLarge { .. }))) => {
            Stats::bump(&ctx.stats.receipts_invalid);
            warn!(error = %e, "malformed receipt");
            Ok(Next::End)
        }
        Err(e) => {
            Stats::bump(&ctx.stats.receipts_missing);
            warn!(error = %e, "no receipt for a served fragment");
            Ok(Next::End)
        }
    }
}

/// Writes the answer and the fragment's bytes, waiting for the upload limit (if any) before
/// each chunk. The transfer timeout counts only the stream's time, not the waits: under a low
/// limit shared by many streams they can add up to far more than a slow client ever takes. The
/// waits end as the bucket refills; a client that gave up meanwhile is found out at the next
/// write.
async fn deliver(
    ctx: &Context,
    stream: &mut libp2p::Stream,
    answer: &FetchResponse,
    bytes: &[u8],
) -> Result<(), StreamError> {
    let mut budget = Budget::new("fragment delivery", ctx.limits.transfer_timeout);
    budget.spend(proto::write_msg(stream, answer)).await?;
    // The limit is looked up for every chunk: the schedule may switch it mid-fragment.
    let mut rest = bytes;
    while !rest.is_empty() {
        let limit = ctx.throttle.current();
        let chunk = limit.as_ref().map_or(CHUNK, |l| l.chunk().min(CHUNK));
        let (piece, after) = rest.split_at(chunk.min(rest.len()));
        rest = after;
        if let Some(limit) = limit {
            limit.take(piece.len()).await;
        }
        budget.spend(stream.write_all(piece)).await?;
    }
    budget.spend(stream.flush()).await
}

/// After a receipts-lag refusal the client may still send its newest receipt on the same
/// stream, as it would after bytes: receipts travel only on fetch streams, so without this a
/// client whose receipts were lost could never catch up. Most clients just close the stream.
async fn catch_up(ctx: &Arc<Context>, ticket: &TicketBody, stream: &mut libp2p::Stream) {
    let receipt = within(
        ctx.limits.receipt_timeout,
        "catch-up receipt",
        proto::read_msg::<_, FetchReceipt>(stream, MAX_SMALL_MSG),
    )
    .await;
    match receipt {
        Ok(receipt) => keep_receipt(ctx, ticket, receipt).await,
        Err(e) => debug!(error = %e, "no catch-up receipt"),
    }
}

async fn keep_receipt(ctx: &Arc<Context>, ticket: &TicketBody, receipt: FetchReceipt) {
    if let Err(e) = receipts::check(&receipt, ticket, &ctx.me) {
        Stats::bump(&ctx.stats.receipts_invalid);
        warn!(reason = %e, "invalid receipt");
        return;
    }
    let (seq, bytes) = (receipt.body.seq, receipt.body.bytes);
    let book = ctx.clone();
    match tokio::task::spawn_blocking(move || book.receipts.record(receipt)).await {
        Ok(Ok(Recorded::New { covered })) => {
            Stats::bump(&ctx.stats.receipts_accepted);
            ctx.credit().receipted(ticket.ticket_id, covered);
            debug!(seq, bytes, covered, "receipt kept");
        }
        Ok(Ok(Recorded::Stale)) => debug!(seq, "receipt superseded by a newer one"),
        Ok(Ok(Recorded::Regressed)) => {
            Stats::bump(&ctx.stats.receipts_invalid);
            warn!(seq, bytes, "receipt totals went backwards; ignored");
        }
        Ok(Err(e)) => error!(error = %e, "cannot append to the receipt log"),
        Err(e) => error!(error = %e, "receipt task failed"),
    }
}
