//! Helpers shared by the integration tests: a scripted stand-in for the CM's control protocol.

#![allow(dead_code)]

pub mod fetching;
pub mod processes;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use futures::{AsyncWriteExt, StreamExt};
use overlay::cert::{self, Role};
use overlay::net::Net;
use overlay::proto::{self, ControlRequest, ControlResponse};
use overlay::time::now_secs;
use overlay::{Identity, Multiaddr, PeerId};
use tokio::sync::mpsc;

/// A node data directory `tmp/node` initialised for `cm_net`'s CM with `quota` bytes: its
/// path, the directory and the node's ID.
pub fn node_dir(
    tmp: &Path,
    cm: &Identity,
    cm_net: &Net,
    quota: u64,
) -> anyhow::Result<(std::path::PathBuf, ccds_node::DataDir, PeerId)> {
    let data_dir = tmp.join("node");
    let id = ccds_node::init(&ccds_node::InitOptions {
        data_dir: data_dir.clone(),
        coordinators: vec![overlay::net::with_peer(
            &cm_net.listen_addrs()[0],
            cm.peer_id(),
        )],
        quota: Some(quota),
    })?;
    Ok((data_dir.clone(), ccds_node::DataDir::new(data_dir), id))
}

pub fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

/// Answers control requests like a CM would, refusing the first heartbeat (as a CM that lost
/// track of the node does), and reports every request it sees.
pub async fn scripted_cm(
    cm: Identity,
) -> anyhow::Result<(Net, mpsc::Receiver<(PeerId, ControlRequest)>)> {
    let net = Net::start(&cm, &[loopback()]).await?;
    let mut incoming = net.accept(proto::CONTROL)?;
    let (seen, requests) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut heartbeats = 0;
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
                ControlRequest::Heartbeat { .. } => {
                    heartbeats += 1;
                    if heartbeats == 1 {
                        ControlResponse::Error("unknown node: join first".into())
                    } else {
                        ControlResponse::Ok
                    }
                }
                ControlRequest::Join { .. } | ControlRequest::Leave => ControlResponse::Ok,
                ControlRequest::Report(report) => ControlResponse::ReportAccepted {
                    seq: report.body.seq,
                    new_receipts: report.body.served.len() as u32,
                    duplicate_receipts: 0,
                },
                ControlRequest::Account => {
                    ControlResponse::Account(overlay::report::AccountView::default())
                }
            };
            // Reported before answering, so a node that saw the answer finds it reported.
            let _ = seen.send((peer, request)).await;
            let _ = proto::write_msg(&mut stream, &answer).await;
            let _ = stream.close().await;
        }
    });
    Ok((net, requests))
}

pub async fn next_request(
    requests: &mut mpsc::Receiver<(PeerId, ControlRequest)>,
) -> anyhow::Result<(PeerId, ControlRequest)> {
    tokio::time::timeout(Duration::from_secs(30), requests.recv())
        .await
        .context("no control request arrived")?
        .context("the scripted CM stopped")
}

pub async fn wait_for_file(path: &Path, present: bool) -> anyhow::Result<()> {
    for _ in 0..300 {
        if path.exists() == present {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "{} never became {}",
        path.display(),
        if present { "present" } else { "absent" }
    )
}
