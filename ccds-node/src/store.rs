//! `/ccds/store/1`: store and delete orders.
//!
//! # Participants
//! A pusher (the CM, or a node repairing on the CM's order) and this node.
//!
//! # Goals
//! * Only the pinned CM orders: every order must carry the CM root's signature, whoever
//!   delivers it, and name this node. An order signed by anyone else (including the peer on
//!   the other end) is refused.
//! * A refused order stores nothing; a stored fragment matches the order's BLAKE3 hash and fits
//!   the quota (both checked by [`overlay::store::FragmentStore::put`]).
//! * The pusher learns why: the reason is sent back, and the fragment bytes already in flight
//!   are drained so it can read it.
//!
//! # Non-goals
//! Replay protection: replaying an order can only store the same bytes again or delete what the
//! CM already decided to delete; orders travel only between the CM and the nodes concerned.

use std::sync::Arc;

use futures::{AsyncReadExt, AsyncWriteExt};
use overlay::identity::{Domain, SignatureError};
use overlay::proto::{
    self, DeleteOrder, MAX_FRAGMENT, MAX_SMALL_MSG, StoreOrder, StoreRequest, StoreResponse,
};
use overlay::store::StoreError;
use overlay::{PeerId, Signed};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, error, field, info, info_span, warn};

use crate::serve::{Context, Stats, StreamError, within};

/// Why an order was refused; the text is sent to the pusher.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("bad signature: the order is not signed by this node's coordinator ({0})")]
    Signature(SignatureError),
    #[error("not for this node: the order is for {ordered}, this node is {me}")]
    NotForThisNode { ordered: PeerId, me: PeerId },
    #[error("fragment too large: {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: usize },
    #[error(
        "quota exceeded: storing {needed} bytes would exceed the quota ({used} of {quota} bytes used)"
    )]
    Quota { needed: u64, used: u64, quota: u64 },
    #[error("hash mismatch: the fragment data does not match the order's hash")]
    HashMismatch,
    #[error("stale order: issued at {issued}, now {now} (orders are valid for a day)")]
    Stale { issued: u64, now: u64 },
    #[error("storage error on the node: {0}")]
    Storage(String),
}

fn check_signed<'a, T>(
    order: &'a Signed<T>,
    cm: &PeerId,
    me: &PeerId,
    node: impl Fn(&T) -> (PeerId, u64),
) -> Result<&'a T, Refusal>
where
    T: Serialize + DeserializeOwned + Domain,
{
    let body = order.verify_by(cm).map_err(Refusal::Signature)?;
    let (ordered, issued) = node(body);
    if &ordered != me {
        return Err(Refusal::NotForThisNode { ordered, me: *me });
    }
    let now = overlay::time::now_secs();
    if !proto::order_is_fresh(issued, now) {
        return Err(Refusal::Stale { issued, now });
    }
    Ok(body)
}

/// Checks a store order: signed by the CM root `cm`, for node `me`, within the size limit.
pub fn check_store_order<'a>(
    order: &'a Signed<StoreOrder>,
    cm: &PeerId,
    me: &PeerId,
) -> Result<&'a StoreOrder, Refusal> {
    let body = check_signed(order, cm, me, |o| (o.node, o.issued))?;
    if body.len as usize > MAX_FRAGMENT {
        return Err(Refusal::TooLarge {
            len: body.len.into(),
            max: MAX_FRAGMENT,
        });
    }
    Ok(body)
}

/// Checks a delete order: signed by the CM root `cm`, for node `me`.
pub fn check_delete_order<'a>(
    order: &'a Signed<DeleteOrder>,
    cm: &PeerId,
    me: &PeerId,
) -> Result<&'a DeleteOrder, Refusal> {
    check_signed(order, cm, me, |o| (o.node, o.issued))
}

/// Serves one inbound `/ccds/store/1` stream.
pub(crate) async fn serve(ctx: Arc<Context>, remote: PeerId, mut stream: libp2p::Stream) {
    let span = info_span!(
        "store",
        peer = %remote,
        from_cm = remote == ctx.cm,
        fragment = field::Empty
    );
    async move {
        if let Err(e) = exchange(&ctx, &mut stream).await {
            warn!(error = %e, "store stream failed");
        }
        let _ = stream.close().await;
    }
    .instrument(span)
    .await
}

async fn exchange(ctx: &Context, stream: &mut libp2p::Stream) -> Result<(), StreamError> {
    let request: StoreRequest = within(
        ctx.limits.header_timeout,
        "store request",
        proto::read_msg(stream, MAX_SMALL_MSG),
    )
    .await?;
    match request {
        StoreRequest::Store(order) => store(ctx, &order, stream).await,
        StoreRequest::Delete(order) => {
            let response = respond(ctx, delete(ctx, &order).await);
            proto::write_msg(stream, &response).await?;
            Ok(())
        }
    }
}

fn respond(ctx: &Context, outcome: Result<(), Refusal>) -> StoreResponse {
    match outcome {
        Ok(()) => StoreResponse::Ok,
        Err(refusal) => {
            Stats::bump(&ctx.stats.store_refused);
            warn!(reason = %refusal, "order refused");
            StoreResponse::Refused(refusal.to_string())
        }
    }
}

async fn store(
    ctx: &Context,
    order: &Signed<StoreOrder>,
    stream: &mut libp2p::Stream,
) -> Result<(), StreamError> {
    let announced = u64::from(order.body.len);
    let checked = check_store_order(order, &ctx.cm, &ctx.me).and_then(|o| {
        tracing::Span::current().record("fragment", field::display(o.fragment));
        early_quota_check(ctx, o)?;
        Ok(o.clone())
    });
    let order = match checked {
        Ok(order) => order,
        Err(refusal) => {
            let too_large = matches!(refusal, Refusal::TooLarge { .. });
            proto::write_msg(stream, &respond(ctx, Err(refusal))).await?;
            // Drain what the pusher is sending so it gets to read the reason; a frame claiming
            // more than any fragment is not worth reading.
            if !too_large {
                within(
                    ctx.limits.transfer_timeout,
                    "refused fragment bytes",
                    futures::io::copy(
                        (&mut *stream).take(announced.min(MAX_FRAGMENT as u64)),
                        &mut futures::io::sink(),
                    ),
                )
                .await?;
            }
            return Ok(());
        }
    };
    let Ok(_memory) = ctx.store_memory.acquire_many(order.len).await else {
        let refusal = Refusal::Storage("the node is shutting down".into());
        proto::write_msg(stream, &respond(ctx, Err(refusal))).await?;
        return Ok(());
    };
    let data = within(
        ctx.limits.transfer_timeout,
        "fragment bytes",
        proto::read_bytes(stream, order.len as usize),
    )
    .await?;
    let store = ctx.store.clone();
    let put =
        tokio::task::spawn_blocking(move || store.put(&order.fragment, &order.hash, &data)).await;
    let outcome = match put {
        Ok(Ok(())) => {
            Stats::bump(&ctx.stats.stored);
            info!(bytes = announced, "fragment stored");
            Ok(())
        }
        Ok(Err(StoreError::HashMismatch)) => Err(Refusal::HashMismatch),
        Ok(Err(StoreError::QuotaExceeded {
            needed,
            used,
            quota,
        })) => Err(Refusal::Quota {
            needed,
            used,
            quota,
        }),
        Ok(Err(e)) => {
            error!(error = %e, "cannot store fragment");
            Err(Refusal::Storage(e.to_string()))
        }
        Err(e) => {
            error!(error = %e, "store task failed");
            Err(Refusal::Storage("internal error".into()))
        }
    };
    proto::write_msg(stream, &respond(ctx, outcome)).await?;
    Ok(())
}

/// Refuses a fragment that cannot fit before its bytes are received ([`FragmentStore::put`]
/// checks again, exactly, when storing).
///
/// [`FragmentStore::put`]: overlay::store::FragmentStore::put
fn early_quota_check(ctx: &Context, order: &StoreOrder) -> Result<(), Refusal> {
    let (used, quota, needed) = (ctx.store.used(), ctx.store.quota(), u64::from(order.len));
    if used.saturating_add(needed) > quota && !ctx.store.contains(&order.fragment) {
        return Err(Refusal::Quota {
            needed,
            used,
            quota,
        });
    }
    Ok(())
}

async fn delete(ctx: &Context, order: &Signed<DeleteOrder>) -> Result<(), Refusal> {
    let order = check_delete_order(order, &ctx.cm, &ctx.me)?.clone();
    let store = ctx.store.clone();
    let removed = tokio::task::spawn_blocking(move || -> Result<usize, StoreError> {
        for id in &order.fragments {
            store.remove(id)?;
        }
        Ok(order.fragments.len())
    })
    .await;
    match removed {
        Ok(Ok(count)) => {
            Stats::bump(&ctx.stats.deleted);
            info!(fragments = count, "fragments deleted");
            Ok(())
        }
        Ok(Err(e)) => {
            error!(error = %e, "cannot delete fragment");
            Err(Refusal::Storage(e.to_string()))
        }
        Err(e) => {
            error!(error = %e, "delete task failed");
            Err(Refusal::Storage("internal error".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay::store::FragmentId;
    use overlay::{ContentId, Identity};

    fn order(signer: &Identity, node: PeerId, len: u32) -> Signed<StoreOrder> {
        Signed::sign(
            signer,
            StoreOrder {
                node,
                fragment: FragmentId {
                    content: ContentId([1; 32]),
                    segment: 0,
                    index: 0,
                },
                hash: [0; 32],
                len,
                issued: overlay::time::now_secs(),
            },
        )
    }

    #[test]
    fn replayed_old_orders_and_orders_from_the_future_are_refused() {
        let cm = Identity::generate();
        let me = Identity::generate().peer_id();
        let now = overlay::time::now_secs();
        for issued in [now - proto::MAX_ORDER_AGE_SECS - 10, now + 3600] {
            let mut body = order(&cm, me, 10).body;
            body.issued = issued;
            let stale = Signed::sign(&cm, body);
            let err = check_store_order(&stale, &cm.peer_id(), &me).unwrap_err();
            assert!(matches!(err, Refusal::Stale { .. }), "{err}");
            let delete = Signed::sign(
                &cm,
                DeleteOrder {
                    node: me,
                    fragments: vec![],
                    issued,
                },
            );
            assert!(matches!(
                check_delete_order(&delete, &cm.peer_id(), &me),
                Err(Refusal::Stale { .. })
            ));
        }
    }

    #[test]
    fn orders_must_be_cm_signed_for_this_node_and_bounded() {
        let cm = Identity::generate();
        let me = Identity::generate().peer_id();
        let good = order(&cm, me, 10);
        assert!(check_store_order(&good, &cm.peer_id(), &me).is_ok());

        let rogue = order(&Identity::generate(), me, 10);
        let err = check_store_order(&rogue, &cm.peer_id(), &me).unwrap_err();
        assert!(matches!(err, Refusal::Signature(_)));
        assert!(err.to_string().starts_with("bad signature"));

        // The CM's signer field with a body the CM never signed.
        let mut tampered = good.clone();
        tampered.body.len = 11;
        assert!(matches!(
            check_store_order(&tampered, &cm.peer_id(), &me),
            Err(Refusal::Signature(SignatureError::Invalid(_)))
        ));

        let other = order(&cm, Identity::generate().peer_id(), 10);
        let err = check_store_order(&other, &cm.peer_id(), &me).unwrap_err();
        assert!(err.to_string().starts_with("not for this node"));

        let huge = order(&cm, me, MAX_FRAGMENT as u32 + 1);
        assert!(matches!(
            check_store_order(&huge, &cm.peer_id(), &me),
            Err(Refusal::TooLarge { .. })
        ));

        let delete = Signed::sign(
            &Identity::generate(),
            DeleteOrder {
                node: me,
                fragments: vec![],
                issued: overlay::time::now_secs(),
            },
        );
        assert!(matches!(
            check_delete_order(&delete, &cm.peer_id(), &me),
            Err(Refusal::Signature(_))
        ));
    }
}
