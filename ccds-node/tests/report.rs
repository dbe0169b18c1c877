//! Periodic reports and the status file of a running `ccds_node::run`, against a stand-in for
//! the CM's control protocol over real QUIC.

mod common;

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ccds_node::report::ReportState;
use ccds_node::{DataDir, NodeStatus, RunOptions};
use common::{loopback, next_request};
use futures::{AsyncWriteExt, StreamExt};
use overlay::cert::{self, Role};
use overlay::codec::fragment_hash;
use overlay::net::Net;
use overlay::proto::{self, ControlRequest, ControlResponse};
use overlay::receipt::{Receipt, ReceiptBody};
use overlay::report::{AccountView, NodeReport};
use overlay::store::{FragmentId, FragmentStore};
use overlay::time::now_secs;
use overlay::{ContentId, Identity, PeerId, Signed};
use tokio::sync::{mpsc, oneshot};

const BALANCE: i64 = 1_234_567;

/// A CM stand-in: answers reports from `script` first (then accepts them), accepts everything
/// else, and passes on every request it sees.
async fn cm(
    cm: Identity,
    script: Vec<ControlResponse>,
) -> anyhow::Result<(Net, mpsc::Receiver<(PeerId, ControlRequest)>)> {
    let net = Net::start(&cm, &[loopback()]).await?;
    let mut incoming = net.accept(proto::CONTROL)?;
    let (seen, requests) = mpsc::channel(256);
    let mut script = VecDeque::from(script);
    tokio::spawn(async move {
        let mut last_seq = 0;
        while let Some((peer, mut stream)) = incoming.next().await {
            let Ok(request) =
                proto::read_msg::<_, ControlRequest>(&mut stream, proto::MAX_REPORT_MSG).await
            else {
                continue;
            };
            let answer = match &request {
                ControlRequest::Register => ControlResponse::Registered {
                    cert: cert::issue(&cm, peer, Role::Node, 1, now_secs(), 3600),
                },
                ControlRequest::Report(report) => match script.pop_front() {
                    Some(answer) => answer,
                    None if report.body.seq <= last_seq => {
                        ControlResponse::StaleReport { last_seq }
                    }
                    None => {
                        last_seq = report.body.seq;
                        ControlResponse::ReportAccepted {
                            seq: report.body.seq,
                            new_receipts: report.body.served.len() as u32,
                            duplicate_receipts: 0,
                        }
                    }
                },
                ControlRequest::Account => ControlResponse::Account(AccountView {
                    level: "probation".into(),
                    level_index: 0,
                    balance: BALANCE,
                    held: 3 * BALANCE,
                    earned: 4 * BALANCE,
                    paid_out: 0,
                    reconciled_at: 0,
                    last_report_seq: last_seq,
                }),
                _ => ControlResponse::Ok,
            };
            let _ = seen.send((peer, request)).await;
            let _ = proto::write_msg(&mut stream, &answer).await;
            let _ = stream.close().await;
        }
    });
    Ok((net, requests))
}

fn receipt(client: &Identity, node: PeerId, ticket: u8, seq: u64, bytes: u64) -> Receipt {
    Signed::sign(
        client,
        ReceiptBody {
            ticket_id: [ticket; 16],
            content: ContentId([ticket; 32]),
            node,
            fragments: seq,
            bytes,
            seq,
            time: now_secs(),
        },
    )
}

fn append(log: &Path, receipts: &[&Receipt]) -> anyhow::Result<()> {
    let mut text = String::new();
    for r in receipts {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    let mut file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn start_node(
    dir: &DataDir,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), ccds_node::NodeError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(ccds_node::run(
        RunOptions {
            heartbeat_interval: Duration::from_secs(3600),
            report_interval: Duration::from_secs(1),
            ..RunOptions::new(dir.root())
        },
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, node)
}

/// The next report the CM receives, checked to be signed by `node` and well formed.
async fn next_report(
    requests: &mut mpsc::Receiver<(PeerId, ControlRequest)>,
    node: PeerId,
) -> anyhow::Result<NodeReport> {
    loop {
        let (peer, request) = next_request(requests).await?;
        if let ControlRequest::Report(report) = request {
            assert_eq!(peer, node);
            let body = report.verify_by(&node).context("report signature")?;
            assert_eq!(body.node, node);
            body.check_bounds().map_err(anyhow::Error::msg)?;
            return Ok(report);
        }
    }
}

fn claimed(report: &NodeReport) -> Vec<([u8; 16], u64, u64)> {
    report
        .body
        .served
        .iter()
        .map(|c| {
            let receipt = c.receipt.as_ref().expect("claims carry their receipt");
            assert_eq!(
                (c.bytes, c.fragments),
                (receipt.body.bytes, receipt.body.fragments)
            );
            (c.ticket_id, receipt.body.seq, c.bytes)
        })
        .collect()
}

async fn stop(
    stop: oneshot::Sender<()>,
    node: tokio::task::JoinHandle<Result<(), ccds_node::NodeError>>,
) -> anyhow::Result<()> {
    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .context("the node did not stop")???;
    Ok(())
}

async fn wait_for_status(
    dir: &DataDir,
    ok: impl Fn(&NodeStatus) -> bool,
) -> anyhow::Result<NodeStatus> {
    for _ in 0..300 {
        if let Ok(Some(status)) = NodeStatus::load(&dir.status())
            && ok(&status)
        {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("status.json never reached the expected state")
}

#[tokio::test]
async fn a_running_node_sends_signed_sequenced_reports_of_its_new_receipts() -> anyhow::Result<()> {
    let cm_id = Identity::generate();
    let (cm_net, mut requests) = cm(cm_id.clone(), Vec::new()).await?;
    let tmp = tempfile::tempdir()?;
    let (_, dir, node_id) = common::node_dir(tmp.path(), &cm_id, &cm_net, 1 << 20)?;

    // Work done before this run: two tickets' receipts in the log, three fragments held.
    let client = Identity::generate();
    let a1 = receipt(&client, node_id, 0xa, 1, 100);
    let a2 = receipt(&client, node_id, 0xa, 2, 200);
    let b1 = receipt(&client, node_id, 0xb, 1, 50);
    append(&dir.receipts(), &[&a1, &a2, &b1])?;
    {
        let store = FragmentStore::open(&dir.fragments(), 1 << 20, 0)?;
        for (content, segment, index) in [(2u8, 0u32, 1u16), (1, 4, 0), (2, 0, 0)] {
            let data = vec![content; 1000];
            let id = FragmentId {
                content: ContentId([content; 32]),
                segment,
                index,
            };
            store.put(&id, &fragment_hash(&data), &data)?;
        }
    }

    let (stop_node, node) = start_node(&dir);
    let first = next_report(&mut requests, node_id).await?;
    assert_eq!(first.body.seq, 1);
    assert_eq!(
        claimed(&first),
        vec![([0xa; 16], 2, 200), ([0xb; 16], 1, 50)],
        "the newest receipt per ticket, with its own totals"
    );
    let held = first
        .body
        .held
        .as_ref()
        .context("the first report lists holdings")?;
    let held: Vec<(ContentId, Vec<(u32, u16)>)> = held
        .iter()
        .map(|h| (h.content, h.fragments.clone()))
        .collect();
    assert_eq!(
        held,
        vec![
            (ContentId([1; 32]), vec![(4, 0)]),
            (ContentId([2; 32]), vec![(0, 0), (0, 1)]),
        ]
    );
    assert!(first.body.from <= first.body.to);
    assert!(!first.body.sessions.is_empty(), "the node is online");

    // A receipt accepted while the node runs goes into exactly one later report.
    let a3 = receipt(&client, node_id, 0xa, 3, 300);
    append(&dir.receipts(), &[&a3])?;
    let mut previous = first;
    let mut a3_claims = 0;
    for _ in 0..3 {
        let report = next_report(&mut requests, node_id).await?;
        assert_eq!(report.body.seq, previous.body.seq + 1);
        assert_eq!(
            report.body.from, previous.body.to,
            "periods follow each other"
        );
        for claim in claimed(&report) {
            assert_eq!(
                claim,
                ([0xa; 16], 3, 300),
                "only the new receipt is claimed"
            );
            a3_claims += 1;
        }
        previous = report;
    }
    assert_eq!(a3_claims, 1);

    // After each accepted report the node fetches its account into status.json.
    let status = wait_for_status(&dir, |s| s.account.balance == BALANCE).await?;
    assert_eq!(status.id, node_id);
    assert_eq!(status.pid, std::process::id());
    assert!(status.online);
    assert!(status.last_report_seq >= 1);
    let view = ccds_node::status(&dir)?;
    assert!(view.online);
    assert_eq!((view.balance, view.held), (BALANCE, 3 * BALANCE));

    // At shutdown: one more report, then the leave; the status file says offline.
    stop(stop_node, node).await?;
    let mut last_report = None;
    let mut leave_after_report = false;
    while let Ok((_, request)) = requests.try_recv() {
        match request {
            ControlRequest::Report(report) => last_report = Some(report.body.seq),
            ControlRequest::Leave => leave_after_report = last_report.is_some(),
            _ => {}
        }
    }
    assert!(leave_after_report, "no report before the leave");
    let last_seq = last_report.unwrap();
    let state = ReportState::load(&dir.report_state())
        .map_err(anyhow::Error::msg)?
        .context("no report state")?;
    assert_eq!(state.next_seq, last_seq + 1);
    let status = NodeStatus::load(&dir.status())
        .map_err(anyhow::Error::msg)?
        .context("no status")?;
    assert!(!status.online);
    let (start, end) = status.session.context("no session recorded")?;
    assert!(start <= end);
    assert!(!ccds_node::status(&dir)?.online);

    // A restart carries on from the saved sequence number, with nothing new to claim.
    let (stop_node, node) = start_node(&dir);
    let report = next_report(&mut requests, node_id).await?;
    assert_eq!(report.body.seq, last_seq + 1);
    assert!(report.body.served.is_empty());
    stop(stop_node, node).await?;
    Ok(())
}

#[tokio::test]
async fn claims_the_cm_did_not_take_are_sent_again() -> anyhow::Result<()> {
    let cm_id = Identity::generate();
    // The CM fails the first report, then says it already has reports up to 10 (this node's
    // state was lost).
    let script = vec![
        ControlResponse::Error("database busy".into()),
        ControlResponse::StaleReport { last_seq: 10 },
    ];
    let (cm_net, mut requests) = cm(cm_id.clone(), script).await?;
    let tmp = tempfile::tempdir()?;
    let (_, dir, node_id) = common::node_dir(tmp.path(), &cm_id, &cm_net, 1 << 20)?;
    let client = Identity::generate();
    let a1 = receipt(&client, node_id, 0xa, 1, 100);
    append(&dir.receipts(), &[&a1])?;

    let (stop_node, node) = start_node(&dir);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let report = next_report(&mut requests, node_id).await?;
        seen.push((report.body.seq, claimed(&report).len()));
    }
    assert_eq!(
        seen,
        vec![(1, 1), (1, 1), (11, 1), (12, 0)],
        "refused: resent; stale: renumbered after the CM's last and resent; then nothing new"
    );
    let status = wait_for_status(&dir, |s| s.last_report_seq >= 11).await?;
    assert_eq!(status.account.last_report_seq, status.last_report_seq);
    stop(stop_node, node).await?;
    Ok(())
}
