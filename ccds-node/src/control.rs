//! The node's side of `/ccds/control/1`: one stream per request, one answer per stream.
//!
//! # Participants
//! This node and the pinned CM (QUIC authenticates the CM's peer ID, which is its root key).
//!
//! # Goals
//! Register for a node certificate, join the active list, heartbeat, leave, send signed
//! periodic reports and read the node's account. Every exchange is bounded in time, so a stuck
//! CM never stalls the node.
//!
//! # Non-goals
//! Retrying: callers decide, using [`Backoff`].

use std::time::Duration;

use futures::AsyncWriteExt;
use overlay::cert::Certificate;
use overlay::net::{Net, NetError};
use overlay::proto::{self, ControlRequest, ControlResponse, FrameError, MAX_SMALL_MSG};
use overlay::report::{AccountView, NodeReport};
use overlay::{Multiaddr, PeerId};

/// Time allowed to reach the CM (one dial attempt; callers retry with back-off).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Stream opens tried per request (callers bound the whole request where it matters).
const OPEN_ATTEMPTS: u32 = 3;
/// Time allowed for the CM to answer once the stream is open.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to send a report (a frame of up to [`MAX_REPORT_MSG`]) and for the CM to
/// ingest it: it checks the signature of every receipt attached.
///
/// [`MAX_REPORT_MSG`]: overlay::report::MAX_REPORT_MSG
const REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// How the CM took a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Ingested: `new_receipts` advanced a ticket's totals, `duplicate_receipts` were known.
    Accepted {
        seq: u64,
        new_receipts: u32,
        duplicate_receipts: u32,
    },
    /// The sequence number was not above `last_seq`: nothing was counted.
    Stale { last_seq: u64 },
}

/// Why a control exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the coordinator: {0}")]
    Unreachable(#[from] NetError),
    #[error("control exchange with the coordinator failed: {0}")]
    Frame(#[from] FrameError),
    #[error("the coordinator did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("unexpected answer from the coordinator to {request}: {answer}")]
    Unexpected {
        request: &'static str,
        answer: String,
    },
}

/// A client for the pinned CM's control protocol.
#[derive(Clone)]
pub struct Coordinator {
    net: Net,
    cm: PeerId,
}

impl Coordinator {
    /// Talks to `cm` over `net` (whose address book must know where `cm` is).
    pub fn new(net: Net, cm: PeerId) -> Self {
        Self { net, cm }
    }

    /// Sends one request on a fresh stream and reads the answer.
    pub async fn request(&self, request: &ControlRequest) -> Result<ControlResponse, ControlError> {
        self.exchange(request, ANSWER_TIMEOUT).await
    }

    /// One request and its answer, the whole exchange within `timeout`. Every answer is a small
    /// frame, whatever the request's size.
    async fn exchange(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlResponse, ControlError> {
        // Several attempts: with several coordinator processes sharing the CM's identity, the
        // node may hold a connection to one that stopped (until it times out), and each attempt
        // picks one of the connections at random.
        let mut stream = self
            .net
            .open_with(self.cm, proto::CONTROL, OPEN_ATTEMPTS, OPEN_TIMEOUT)
            .await?;
        let exchange = async {
            proto::write_msg(&mut stream, request).await?;
            proto::read_msg::<_, ControlResponse>(&mut stream, MAX_SMALL_MSG).await
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ControlError::Timeout(timeout))?;
        let _ = stream.close().await;
        Ok(answer?)
    }

    /// Asks for a node certificate (to be checked by the caller).
    pub async fn register(&self) -> Result<Certificate, ControlError> {
        match self.request(&ControlRequest::Register).await? {
            ControlResponse::Registered { cert } => Ok(cert),
            other => Err(unexpected("register", other)),
        }
    }

    /// Announces the node online at `addrs`, with its quota and bytes used, the host's boot
    /// time (Unix seconds, 0 if unknown) and its measured upload rate (bytes per second, 0 if
    /// not yet known).
    pub async fn join(
        &self,
        addrs: Vec<Multiaddr>,
        quota: u64,
        used: u64,
        boot_time: u64,
        upload_bps: u64,
    ) -> Result<(), ControlError> {
        let answer = self
            .request(&ControlRequest::Join {
                addrs,
                quota,
                used,
                boot_time,
                upload_bps,
            })
            .await?;
        expect_ok("join", answer)
    }

    /// Tells the CM the node is still online, with its bytes used and measured upload rate
    /// (bytes per second, 0 if not yet known).
    pub async fn heartbeat(&self, used: u64, upload_bps: u64) -> Result<(), ControlError> {
        let answer = self
            .request(&ControlRequest::Heartbeat { used, upload_bps })
            .await?;
        expect_ok("heartbeat", answer)
    }

    /// Sends a signed report (its frame must stay within
    /// [`MAX_REPORT_MSG`](overlay::report::MAX_REPORT_MSG)).
    pub async fn report(&self, report: &NodeReport) -> Result<ReportOutcome, ControlError> {
        let request = ControlRequest::Report(report.clone());
        match self.exchange(&request, REPORT_TIMEOUT).await? {
            ControlResponse::ReportAccepted {
                seq,
                new_receipts,
                duplicate_receipts,
            } => Ok(ReportOutcome::Accepted {
                seq,
                new_receipts,
                duplicate_receipts,
            }),
            ControlResponse::StaleReport { last_seq } => Ok(ReportOutcome::Stale { last_seq }),
            other => Err(unexpected("report", other)),
        }
    }

    /// Asks for the node's account as the CM sees it.
    pub async fn account(&self) -> Result<AccountView, ControlError> {
        match self.request(&ControlRequest::Account).await? {
            ControlResponse::Account(view) => Ok(view),
            other => Err(unexpected("account", other)),
        }
    }

    /// Tells the CM the node is going offline.
    pub async fn leave(&self) -> Result<(), ControlError> {
        let answer = self.request(&ControlRequest::Leave).await?;
        expect_ok("leave", answer)
    }
}

fn expect_ok(request: &'static str, answer: ControlResponse) -> Result<(), ControlError> {
    match answer {
        ControlResponse::Ok => Ok(()),
        other => Err(unexpected(request, other)),
    }
}

fn unexpected(request: &'static str, answer: ControlResponse) -> ControlError {
    match answer {
        ControlResponse::Error(reason) => ControlError::Refused(reason),
        other => ControlError::Unexpected {
            request,
            answer: format!("{other:?}"),
        },
    }
}

/// Capped exponential back-off with jitter, so many nodes waiting for one CM do not retry in
/// lock-step.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            next: first.min(cap),
            cap,
        }
    }

    /// The next delay: the current step plus up to 25 % jitter, never above the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        let jitter = base.mul_f64(rand::random::<f64>() * 0.25);
        (base + jitter).min(self.cap)
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self, first: Duration) {
        self.next = first.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        let mut b = Backoff::new(first, cap);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= first && delays[0] <= first.mul_f64(1.25));
        assert!(delays[1] >= first * 2);
        assert!(delays.iter().all(|d| *d <= cap));
        assert_eq!(delays[7], cap);
        b.reset(first);
        assert!(b.next_delay() < first * 2);
    }
}
