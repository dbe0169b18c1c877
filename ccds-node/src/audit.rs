//! `/ccds/audit/1`: answering the CM's storage audits.
//!
//! # Participants
//! The pinned CM (the auditor) and this node (the prover).
//!
//! # Goals
//! * The CM learns, for a random range of a fragment it pays this node to store, either a proof
//!   that the node holds those bytes (checked by the CM against the manifest's BLAKE3 root), or
//!   the truth: the fragment is not here, or its copy was found corrupt (and dropped).
//! * Only the CM may audit: anyone else is refused without the node reading its disk, so a peer
//!   cannot use audits to make the node hash fragments for it.
//! * The work is bounded: a few concurrent audits (see `serve`), one fragment read and one
//!   hashing pass each, on the blocking pool, within the node's header and transfer timeouts.
//!
//! # Non-goals
//! Deciding when audits happen or what a failure costs: that is the CM's (`cm-coordinator`'s
//! `audit` module).

use std::sync::Arc;

use futures::AsyncWriteExt;
use overlay::PeerId;
use overlay::audit::{self, MAX_AUDIT_RANGE};
use overlay::proto::{self, AuditRequest, AuditResponse, MAX_SMALL_MSG};
use overlay::store::{FragmentStore, StoreError};
use tracing::{Instrument, debug, error, field, info, info_span, warn};

use crate::serve::{Context, Stats, StreamError, within};

/// Serves one inbound `/ccds/audit/1` stream.
pub(crate) async fn serve(ctx: Arc<Context>, remote: PeerId, mut stream: libp2p::Stream) {
    let span = info_span!("audit", peer = %remote, fragment = field::Empty);
    async move {
        if let Err(e) = exchange(&ctx, remote, &mut stream).await {
            warn!(error = %e, "audit stream failed");
        }
        let _ = stream.close().await;
    }
    .instrument(span)
    .await
}

async fn exchange(
    ctx: &Arc<Context>,
    remote: PeerId,
    stream: &mut libp2p::Stream,
) -> Result<(), StreamError> {
    let request: AuditRequest = within(
        ctx.limits.header_timeout,
        "audit request",
        proto::read_msg(stream, MAX_SMALL_MSG),
    )
    .await?;
    tracing::Span::current().record("fragment", field::display(request.fragment));
    within(ctx.limits.transfer_timeout, "audit answer", async {
        let answer = answer(ctx, remote, request).await;
        match &answer {
            AuditResponse::Refused(reason) => {
                Stats::bump(&ctx.stats.audits_refused);
                warn!(%reason, "audit refused");
            }
            AuditResponse::Proof(proof) => {
                Stats::bump(&ctx.stats.audits_answered);
                info!(proof_bytes = proof.len(), "audit answered");
            }
            AuditResponse::NotFound => {
                Stats::bump(&ctx.stats.audits_answered);
                warn!("audited fragment is not held here");
            }
            AuditResponse::Corrupt => {
                Stats::bump(&ctx.stats.audits_answered);
                warn!("audited fragment was corrupt on disk; it has been dropped");
            }
        }
        proto::write_msg(stream, &answer).await?;
        stream.flush().await?;
        Ok::<_, StreamError>(())
    })
    .await
}

/// What to answer `remote`'s audit: refused unless it is the pinned CM; otherwise read the
/// fragment (hash-checked) and prove the range, off the async threads.
async fn answer(ctx: &Arc<Context>, remote: PeerId, request: AuditRequest) -> AuditResponse {
    if remote != ctx.cm {
        return AuditResponse::Refused(format!(
            "only the coordinator {} may audit this node",
            ctx.cm
        ));
    }
    let store = ctx.store.clone();
    match tokio::task::spawn_blocking(move || respond(&store, &request)).await {
        Ok(answer) => answer,
        Err(e) => {
            error!(error = %e, "audit task failed");
            AuditResponse::Refused("internal error on the node".into())
        }
    }
}

/// The answer to an authorised audit, from the store (blocking: file I/O and hashing).
fn respond(store: &FragmentStore, request: &AuditRequest) -> AuditResponse {
    // Checked before reading, so a malformed request costs no disk read.
    if request.len > MAX_AUDIT_RANGE {
        return AuditResponse::Refused(
            audit::AuditError::RangeTooLarge {
                len: request.len,
                max: MAX_AUDIT_RANGE,
            }
            .to_string(),
        );
    }
    // From the disk, never the cache: a copy held only in memory is not what the node is paid
    // to store, and would outlive the files on disk.
    let data = match store.read_from_disk(&request.fragment) {
        Ok(data) => data,
        Err(StoreError::NotFound(_)) => return AuditResponse::NotFound,
        Err(StoreError::Corrupt { .. }) => return AuditResponse::Corrupt,
        Err(e) => {
            error!(error = %e, "cannot read an audited fragment");
            return AuditResponse::Refused("the node cannot read its copy of this fragment".into());
        }
    };
    match audit::prove(&data, request.offset, request.len) {
        Ok(proof) => AuditResponse::Proof(proof),
        Err(e) => {
            debug!(error = %e, "unprovable audit range");
            AuditResponse::Refused(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use overlay::ContentId;
    use overlay::codec::fragment_hash;
    use overlay::store::FragmentId;

    use super::*;

    fn id(index: u16) -> FragmentId {
        FragmentId {
            content: ContentId([0xab; 32]),
            segment: 1,
            index,
        }
    }

    #[test]
    fn held_fragments_are_proven_missing_and_corrupt_ones_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path(), 1 << 30, 0).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let hash = fragment_hash(&data);
        store.put(&id(0), &hash, &data).unwrap();
        store.put(&id(1), &hash, &data).unwrap();

        let ask = |index, offset, len| {
            respond(
                &store,
                &AuditRequest {
                    fragment: id(index),
                    offset,
                    len,
                },
            )
        };
        let AuditResponse::Proof(proof) = ask(0, 123_456, 5_000) else {
            panic!("expected a proof");
        };
        let got = audit::verify(&hash, data.len() as u64, 123_456, 5_000, &proof).unwrap();
        assert_eq!(got, &data[123_456..128_456]);

        assert_eq!(ask(7, 0, 10), AuditResponse::NotFound);

        // Flip one byte of fragment 1 on disk, behind the store's back.
        let path = dir.path().join(id(1).content.to_string()).join("1.1");
        let mut raw = std::fs::read(&path).unwrap();
        raw[40_000] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert_eq!(ask(1, 0, 10), AuditResponse::Corrupt);
        // The store dropped the corrupt copy, so the next audit finds nothing.
        assert_eq!(ask(1, 0, 10), AuditResponse::NotFound);

        let AuditResponse::Refused(reason) = ask(0, 299_999, 2) else {
            panic!("expected a refusal");
        };
        assert!(reason.contains("outside"), "{reason}");
        let AuditResponse::Refused(reason) = ask(0, 0, MAX_AUDIT_RANGE + 1) else {
            panic!("expected a refusal");
        };
        assert!(reason.contains("exceeds"), "{reason}");
    }
}
