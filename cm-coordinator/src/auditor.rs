//! The audit driver: carries out one storage audit over `/ccds/audit/1` and says what came of
//! it. When to audit whom, and what an outcome means, is [`crate::audit`]'s.

use std::time::Duration;

use futures::AsyncWriteExt;
use overlay::PeerId;
use overlay::audit::{random_range, verify};
use overlay::net::Net;
use overlay::proto::{self, AuditRequest, AuditResponse, FrameError};
use overlay::store::FragmentId;
use tracing::{debug, error, info, instrument, warn};

use crate::audit::Outcome;

/// Audits a random range of `fragment` (BLAKE3 `root`, `size` bytes, from the manifest) on
/// `node`, waiting at most `timeout` for the whole exchange.
///
/// Not reached, no answer in time, a dropped stream, or a refusal (the node is not serving
/// audits for us right now) are [`Outcome::Timeout`]: the caller's containment re-checks them
/// before anything counts. An answer that does not verify, or does not even decode, is
/// [`Outcome::BadProof`].
#[instrument(skip(net, root), fields(%node, %fragment))]
pub async fn audit_fragment(
    net: &Net,
    node: PeerId,
    fragment: FragmentId,
    root: [u8; 32],
    size: u64,
    timeout: Duration,
) -> Outcome {
    let (offset, len) = random_range(size, &mut rand::rng());
    let request = AuditRequest {
        fragment,
        offset,
        len,
    };
    let exchange = async {
        let mut stream = net.open_with(node, proto::AUDIT, 1, timeout).await?;
        let answer = proto::request_audit(&mut stream, &request).await;
        let _ = stream.close().await;
        Ok::<_, AskError>(answer?)
    };
    let answer = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(AskError::Frame(e @ (FrameError::Decode(_) | FrameError::TooLarge { .. })))) => {
            warn!(error = %e, "malformed audit answer");
            return Outcome::BadProof;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "audit not answered");
            return Outcome::Timeout;
        }
        Err(_) => {
            debug!(?timeout, "audit timed out");
            return Outcome::Timeout;
        }
    };
    match answer {
        AuditResponse::Proof(proof) => match verify(&root, size, offset, len, &proof) {
            Ok(_) => {
                debug!(offset, len, proof_bytes = proof.len(), "audit passed");
                Outcome::Pass
            }
            Err(e) => {
                warn!(offset, len, error = %e, "audit proof rejected");
                Outcome::BadProof
            }
        },
        AuditResponse::NotFound => {
            warn!("node does not hold a fragment placed on it");
            Outcome::NotFound
        }
        AuditResponse::Corrupt => {
            info!("node found its copy corrupt");
            Outcome::Corrupt
        }
        AuditResponse::Refused(reason) => {
            warn!(%reason, "node refused the audit");
            Outcome::Timeout
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("{0}")]
    Net(#[from] overlay::net::NetError),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Runs the coordinator's audits until it stops: asks the scheduling core which nodes are due,
/// audits a random fragment each is paid to store (or the one under containment), records the
/// outcome, and closes placements whose fragment is gone.
pub async fn driver(coord: std::sync::Arc<crate::server::Coordinator>, timeout: Duration) {
    use crate::audit::Verdict;
    /// Audits started per wake-up; the rest wait for the next one.
    const BATCH: usize = 32;
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCH));
    loop {
        // With several coordinators on one database, the maintenance lease holder audits.
        if !coord.cluster.is_leader() {
            tokio::time::sleep(coord.cluster.config().interval).await;
            continue;
        }
        let now = overlay::time::now_secs();
        let tasks = coord.auditor.lock().unwrap_or_else(|p| p.into_inner()).due(
            now,
            BATCH,
            &mut rand::rng(),
        );
        for task in tasks {
            if !coord.registry.is_online(&task.node) {
                continue;
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let coord = coord.clone();
            tokio::spawn(async move {
                let node = task.node;
                let fragment = match task.recheck {
                    Some(f) => Some(f),
                    None => match coord.db.random_placement(&node).await {
                        Ok(f) => f,
                        Err(e) => {
                            error!(error = %e, "cannot pick a fragment to audit");
                            None
                        }
                    },
                };
                let Some(fragment) = fragment else {
                    return; // nothing stored there yet
                };
                let Ok(meta) = coord.content_meta(&fragment.content).await else {
                    return;
                };
                let Some(root) = meta
                    .manifest
                    .hash(u64::from(fragment.segment), fragment.index as usize)
                    .copied()
                else {
                    return;
                };
                let size = meta.manifest.fragment_len(u64::from(fragment.segment)) as u64;
                let outcome = audit_fragment(&coord.net, node, fragment, root, size, timeout).await;
                let now = overlay::time::now_secs();
                let verdict = coord
                    .auditor
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .outcome(&node, fragment, outcome, now);
                // A fragment the node no longer lists is an admitted loss; only one it still
                // claims to store and cannot prove is an offence.
                let verdict = match verdict {
                    Verdict::Failed {
                        fragment,
                        reason: reason @ crate::audit::Failure::NotFound,
                        ..
                    } => Verdict::Failed {
                        fragment,
                        reason,
                        offence: coord
                            .db
                            .claims_fragment(&node, &fragment)
                            .await
                            .unwrap_or(true),
                    },
                    other => other,
                };
                let (label, failed, offence, lost) = match verdict {
                    Verdict::Passed => ("pass", false, false, false),
                    Verdict::Contained { attempt, .. } => {
                        info!(%node, %fragment, attempt, "audit timed out; re-checking before it counts");
                        ("timeout", false, false, false)
                    }
                    Verdict::Failed {
                        reason, offence, ..
                    } => {
                        warn!(%node, %fragment, ?reason, offence, "audit failed");
                        (failure_label(reason), true, offence, reason.fragment_lost())
                    }
                    Verdict::Ignored => return,
                };
                let row = crate::db::AuditRow {
                    node: node.to_string(),
                    content: fragment.content.to_string(),
                    segment: i64::from(fragment.segment),
                    index: i64::from(fragment.index),
                    outcome: label.into(),
                    failed,
                    offence,
                    detail: format!("{outcome:?}"),
                    at: now as i64,
                };
                if let Err(e) = coord.db.add_audit(&row).await {
                    error!(error = %e, "cannot record an audit");
                }
                if lost {
                    if let Err(e) = coord
                        .db
                        .remove_placement(
                            &fragment.content,
                            fragment.segment,
                            fragment.index,
                            &node,
                            now,
                        )
                        .await
                    {
                        error!(error = %e, "cannot close the placement of a lost fragment");
                    }
                    let mut repair = coord.repair();
                    if repair.holder(&fragment.content, fragment.segment, fragment.index)
                        == Some(node)
                    {
                        repair.set_holder(
                            &fragment.content,
                            fragment.segment,
                            fragment.index,
                            None,
                            std::time::Instant::now(),
                        );
                    }
                    drop(repair);
                    coord.repair_wake.notify_one();
                }
                drop(permit);
            });
        }
        let wait = {
            let auditor = coord.auditor.lock().unwrap_or_else(|p| p.into_inner());
            auditor
                .next_due()
                .map_or(1, |due| due.saturating_sub(overlay::time::now_secs()))
        };
        tokio::time::sleep(Duration::from_secs(wait.clamp(1, 60))).await;
    }
}

fn failure_label(reason: crate::audit::Failure) -> &'static str {
    use crate::audit::Failure::*;
    match reason {
        BadProof => "bad_proof",
        NotFound => "not_found",
        Corrupt => "corrupt",
        Unresponsive => "unresponsive",
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use overlay::{ContentId, Identity, Multiaddr};

    use super::*;

    /// How the scripted node answers.
    #[derive(Clone, Copy, Debug)]
    enum Script {
        Honest,
        /// Proves the range of other data.
        Forged,
        /// Flips one byte of an honest proof.
        Tampered,
        NotFound,
        Corrupt,
        Refuse,
        /// Reads the request and never answers.
        Silent,
        /// Sends bytes that are not a frame of an answer.
        Garbage,
    }

    fn loopback() -> Multiaddr {
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
    }

    /// A node holding `data` that answers audits as `script` says, over real QUIC.
    async fn scripted_node(data: Vec<u8>, script: Script) -> Net {
        let net = Net::start(&Identity::generate(), &[loopback()])
            .await
            .unwrap();
        let mut incoming = net.accept(proto::AUDIT).unwrap();
        tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let data = data.clone();
                tokio::spawn(async move {
                    let request: AuditRequest = proto::read_msg(&mut stream, proto::MAX_SMALL_MSG)
                        .await
                        .unwrap();
                    let prove =
                        |d: &[u8]| overlay::audit::prove(d, request.offset, request.len).unwrap();
                    let answer = match script {
                        Script::Honest => AuditResponse::Proof(prove(&data)),
                        Script::Forged => {
                            let other: Vec<u8> = data.iter().map(|b| b ^ 0x55).collect();
                            AuditResponse::Proof(prove(&other))
                        }
                        Script::Tampered => {
                            let mut proof = prove(&data);
                            let last = proof.len() - 1;
                            proof[last] ^= 1;
                            AuditResponse::Proof(proof)
                        }
                        Script::NotFound => AuditResponse::NotFound,
                        Script::Corrupt => AuditResponse::Corrupt,
                        Script::Refuse => AuditResponse::Refused("busy".into()),
                        Script::Silent => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        Script::Garbage => {
                            let _ = stream
                                .write_all(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
                                .await;
                            let _ = stream.close().await;
                            return;
                        }
                    };
                    let _ = proto::write_msg(&mut stream, &answer).await;
                    let _ = stream.close().await;
                });
            }
        });
        net
    }

    #[tokio::test]
    async fn outcomes_over_real_quic() {
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
        let root = *blake3::hash(&data).as_bytes();
        let size = data.len() as u64;
        let fragment = FragmentId {
            content: ContentId([1; 32]),
            segment: 0,
            index: 3,
        };
        let cm = Net::start(&Identity::generate(), &[loopback()])
            .await
            .unwrap();
        for (script, expected) in [
            (Script::Honest, Outcome::Pass),
            (Script::Forged, Outcome::BadProof),
            (Script::Tampered, Outcome::BadProof),
            (Script::NotFound, Outcome::NotFound),
            (Script::Corrupt, Outcome::Corrupt),
            (Script::Refuse, Outcome::Timeout),
            (Script::Silent, Outcome::Timeout),
            (Script::Garbage, Outcome::BadProof),
        ] {
            let node = scripted_node(data.clone(), script).await;
            let id = node.local_peer_id();
            cm.add_addresses(id, node.listen_addrs().to_vec());
            let timeout = Duration::from_secs(if matches!(script, Script::Silent) {
                1
            } else {
                20
            });
            let outcome = audit_fragment(&cm, id, fragment, root, size, timeout).await;
            assert_eq!(outcome, expected, "{script:?}");
        }
        // A node nobody can reach.
        let gone = Identity::generate().peer_id();
        cm.add_addresses(gone, vec!["/ip4/127.0.0.1/udp/9/quic-v1".parse().unwrap()]);
        let outcome = audit_fragment(&cm, gone, fragment, root, size, Duration::from_secs(1)).await;
        assert_eq!(outcome, Outcome::Timeout);
    }
}
