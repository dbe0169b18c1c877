//! `/ccds/client/1`, client side: manifest and contacts, fresh contacts, problem reports,
//! completion report.
//!
//! # Participants
//! The client and the CM named in the ticket file; one stream per request.
//!
//! # Goals
//! * The manifest is only accepted if the CM signed it, it is self-consistent, and it hashes to
//!   the content ID in the ticket: a CM (or anyone between) cannot swap the content.
//! * Problem reports never stall the download: they run in the background, a few at a time,
//!   and [`Reporter::flush`] waits (bounded) for them before the program exits.
//!
//! # Non-goals
//! Retrying reports forever: a report that cannot be delivered is logged and dropped.

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, PeerId};
use overlay::ContentId;
use overlay::manifest::SignedManifest;
use overlay::net::Net;
use overlay::proto::{
    self, ClientRequest, ClientResponse, ContactList, ProblemKind, ProblemReport,
};
use overlay::receipt::CompletionReport;
use overlay::ticket::Ticket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::error::ClientError;

/// Attempts at opening a stream to the CM, and the time each may take: a stream request lost
/// on the way (a busy machine, a connection being replaced) is retried rather than waited out.
const CM_OPEN_ATTEMPTS: u32 = 3;
const CM_OPEN_TIMEOUT: Duration = Duration::from_secs(4);
/// Time the CM may take to answer one request (a large manifest included).
const CM_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Problem reports in flight at once.
const REPORTS_IN_FLIGHT: usize = 4;

/// Where the CM is.
#[derive(Clone, Debug)]
pub struct Coordinator {
    pub peer: PeerId,
    /// Its addresses (several coordinators of one collective share its identity).
    pub addrs: Vec<Multiaddr>,
}

impl Coordinator {
    /// Sends one request on a fresh stream and reads the answer.
    async fn request(
        &self,
        net: &Net,
        request: &ClientRequest,
        max: usize,
    ) -> Result<ClientResponse, ClientError> {
        let mut stream = net
            .open_with(self.peer, proto::CLIENT, CM_OPEN_ATTEMPTS, CM_OPEN_TIMEOUT)
            .await
            .map_err(|e| ClientError::CoordinatorUnreachable {
                peer: self.peer,
                addrs: self
                    .addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: match e {
                    overlay::net::NetError::Open { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
        let protocol = |reason: String| ClientError::CoordinatorProtocol {
            peer: self.peer,
            reason,
        };
        let exchange = async {
            proto::write_msg(&mut stream, request).await?;
            let response: ClientResponse = proto::read_msg(&mut stream, max).await?;
            Ok::<_, proto::FrameError>(response)
        };
        let response = tokio::time::timeout(CM_ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| protocol(format!("no answer within {CM_ANSWER_TIMEOUT:?}")))?
            .map_err(|e| protocol(e.to_string()))?;
        let _ = stream.close().await;
        Ok(response)
    }

    /// Asks for the manifest and contact list of the ticket's content and checks the manifest.
    pub async fn manifest(
        &self,
        net: &Net,
        ticket: &Ticket,
    ) -> Result<(SignedManifest, ContactList), ClientError> {
        let request = ClientRequest::Manifest {
            ticket: ticket.clone(),
        };
        let (manifest, contacts) = match self
            .request(net, &request, proto::MAX_MANIFEST_MSG)
            .await?
        {
            ClientResponse::Manifest { manifest, contacts } => (manifest, contacts),
            ClientResponse::Error(reason) => return Err(ClientError::CoordinatorRefused(reason)),
            ClientResponse::Ok | ClientResponse::Contacts(_) => {
                return Err(ClientError::CoordinatorProtocol {
                    peer: self.peer,
                    reason: "answered something other than a manifest".into(),
                });
            }
        };
        check_manifest(&manifest, &self.peer, &ticket.body().content)?;
        Ok((manifest, contacts))
    }

    /// Asks for a fresh contact list for the ticket's content (the CM checks the ticket again),
    /// for a download whose holders stopped answering.
    pub async fn contacts(&self, net: &Net, ticket: &Ticket) -> Result<ContactList, ClientError> {
        let request = ClientRequest::Contacts {
            ticket: ticket.clone(),
        };
        // A contact list is as large as the manifest's fragment table, so it gets that limit.
        match self.request(net, &request, proto::MAX_MANIFEST_MSG).await? {
            ClientResponse::Contacts(contacts) => Ok(contacts),
            ClientResponse::Error(reason) => Err(ClientError::CoordinatorRefused(reason)),
            ClientResponse::Ok | ClientResponse::Manifest { .. } => {
                Err(ClientError::CoordinatorProtocol {
                    peer: self.peer,
                    reason: "answered something other than a contact list".into(),
                })
            }
        }
    }

    /// Sends the signed completion report.
    pub async fn complete(&self, net: &Net, report: CompletionReport) -> Result<(), ClientError> {
        match self
            .request(
                net,
                &ClientRequest::Completion(report),
                proto::MAX_SMALL_MSG,
            )
            .await?
        {
            ClientResponse::Ok => Ok(()),
            ClientResponse::Error(reason) => Err(ClientError::CoordinatorRefused(reason)),
            ClientResponse::Manifest { .. } | ClientResponse::Contacts(_) => {
                Err(ClientError::CoordinatorProtocol {
                    peer: self.peer,
                    reason: "answered something other than Ok to a completion report".into(),
                })
            }
        }
    }
}

/// Checks that `manifest` was signed by the CM, is consistent, and is the ticket's content.
pub fn check_manifest(
    manifest: &SignedManifest,
    cm: &PeerId,
    content: &ContentId,
) -> Result<(), ClientError> {
    let body = manifest
        .verify_by(cm)
        .map_err(|e| ClientError::ManifestSignature(e.to_string()))?;
    body.validate()
        .map_err(|e| ClientError::ManifestInvalid(e.to_string()))?;
    let found = body.content_id();
    if &found != content {
        return Err(ClientError::WrongManifest {
            expected: *content,
            found,
        });
    }
    Ok(())
}

/// Sends problem reports in the background.
pub struct Reporter {
    net: Net,
    cm: Arc<Coordinator>,
    content: ContentId,
    tasks: JoinSet<()>,
    slots: Arc<Semaphore>,
    /// Corrupt-fragment reports sent (or attempted).
    pub corrupt: u64,
    /// Unreachable-node reports sent (or attempted).
    pub unreachable: u64,
    /// Slow-node reports sent (or attempted).
    pub slow: u64,
}

impl Reporter {
    /// A reporter to `cm` about `content`.
    pub fn new(net: Net, cm: Coordinator, content: ContentId) -> Self {
        Self {
            net,
            cm: Arc::new(cm),
            content,
            tasks: JoinSet::new(),
            slots: Arc::new(Semaphore::new(REPORTS_IN_FLIGHT)),
            corrupt: 0,
            unreachable: 0,
            slow: 0,
        }
    }

    /// Queues a report about `node`.
    pub fn report(&mut self, node: PeerId, kind: ProblemKind, detail: String) {
        match kind {
            ProblemKind::Unreachable => {
                self.unreachable += 1;
                warn!(%node, %detail, "node unreachable; reporting it to the coordinator");
            }
            ProblemKind::Corrupt { segment, index } => {
                self.corrupt += 1;
                warn!(%node, segment, index, %detail, "corrupt fragment; reporting it to the coordinator");
            }
            ProblemKind::Slow { bytes_per_sec } => {
                self.slow += 1;
                warn!(%node, bytes_per_sec, %detail, "slow node; reporting it to the coordinator");
            }
        }
        let report = ProblemReport {
            content: self.content,
            node,
            kind,
            detail,
        };
        let (net, cm, slots) = (self.net.clone(), self.cm.clone(), self.slots.clone());
        self.tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            match cm
                .request(&net, &ClientRequest::Problem(report), proto::MAX_SMALL_MSG)
                .await
            {
                Ok(ClientResponse::Ok) => debug!(%node, "report delivered"),
                Ok(other) => info!(%node, answer = ?other, "coordinator did not accept the report"),
                Err(e) => info!(%node, error = %e, "report not delivered"),
            }
        });
        // Reap finished reports so the set does not grow with the download.
        while self.tasks.try_join_next().is_some() {}
    }

    /// Waits for the queued reports, at most `limit`.
    pub async fn flush(&mut self, limit: Duration) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!(
                left = self.tasks.len(),
                "giving up on problem reports the coordinator did not take in time"
            );
            self.tasks.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay::Identity;
    use overlay::identity::Signed;
    use overlay::manifest::{Cipher, Manifest};

    fn manifest() -> Manifest {
        Manifest {
            size: 10,
            segment_size: 8,
            data_shards: 1,
            parity_shards: 1,
            spare_shards: 0,
            cipher: Cipher::Aes256Gcm,
            created: 1,
            hashes: vec![[0; 32]; 4],
        }
    }

    #[test]
    fn only_the_cms_consistent_manifest_of_the_ticketed_content_is_accepted() {
        let cm = Identity::generate();
        let body = manifest();
        let id = body.content_id();
        let signed = Signed::sign(&cm, body.clone());
        check_manifest(&signed, &cm.peer_id(), &id).unwrap();
        let rogue = Identity::generate();
        assert!(matches!(
            check_manifest(&Signed::sign(&rogue, body.clone()), &cm.peer_id(), &id),
            Err(ClientError::ManifestSignature(_))
        ));
        assert!(matches!(
            check_manifest(&signed, &cm.peer_id(), &ContentId([0; 32])),
            Err(ClientError::WrongManifest { .. })
        ));
        let mut bad = body;
        bad.hashes.pop();
        let bad_id = bad.content_id();
        assert!(matches!(
            check_manifest(&Signed::sign(&cm, bad), &cm.peer_id(), &bad_id),
            Err(ClientError::ManifestInvalid(_))
        ));
    }
}
