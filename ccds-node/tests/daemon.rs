//! `ccds_node::run` against a scripted stand-in for the CM's control protocol, over real QUIC.

mod common;

use std::time::Duration;

use anyhow::Context as _;
use ccds_node::{NodeError, RunOptions};
use common::{next_request, scripted_cm, wait_for_file};
use overlay::cert::{self, Certificate, Role};
use overlay::proto::ControlRequest;
use overlay::time::now_secs;
use overlay::{Identity, Multiaddr};
use tokio::sync::oneshot;

#[tokio::test]
async fn registers_joins_heartbeats_rejoins_and_leaves() -> anyhow::Result<()> {
    let cm = Identity::generate();
    let (cm_net, mut requests) = scripted_cm(cm.clone()).await?;
    let tmp = tempfile::tempdir()?;
    let (data_dir, dir, node_id) = common::node_dir(tmp.path(), &cm, &cm_net, 1 << 20)?;

    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(ccds_node::run(
        RunOptions {
            heartbeat_interval: Duration::from_millis(200),
            ..RunOptions::new(&data_dir)
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let (peer, first) = next_request(&mut requests).await?;
    assert_eq!(peer, node_id);
    assert!(matches!(first, ControlRequest::Register), "{first:?}");
    let (_, join) = next_request(&mut requests).await?;
    match join {
        ControlRequest::Join {
            addrs,
            quota,
            used,
            boot_time,
            upload_bps,
        } => {
            assert_eq!((quota, used), (1 << 20, 0));
            assert!(!addrs.is_empty());
            // Nothing served yet, so no rate; the boot time comes from the host.
            assert_eq!(upload_bps, 0);
            if cfg!(target_os = "linux") {
                assert!(boot_time > 0 && boot_time <= now_secs(), "{boot_time}");
            }
        }
        other => anyhow::bail!("expected a join, got {other:?}"),
    }
    wait_for_file(&dir.addr(), true).await?;
    let addr: Multiaddr = std::fs::read_to_string(dir.addr())?.trim().parse()?;
    assert_eq!(
        overlay::net::split_peer(&addr).map(|(p, _)| p),
        Some(node_id)
    );
    let cert: Certificate = serde_json::from_slice(&std::fs::read(dir.cert())?)?;
    assert_eq!(
        cert::check(&cert, &cm.peer_id(), Role::Node, now_secs())?.subject,
        node_id
    );

    // The refused first heartbeat makes the node join again, then heartbeats go on.
    let (_, hb) = next_request(&mut requests).await?;
    assert!(matches!(hb, ControlRequest::Heartbeat { .. }), "{hb:?}");
    let (_, rejoin) = next_request(&mut requests).await?;
    assert!(matches!(rejoin, ControlRequest::Join { .. }), "{rejoin:?}");
    let (_, hb) = next_request(&mut requests).await?;
    assert!(matches!(hb, ControlRequest::Heartbeat { .. }), "{hb:?}");

    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .context("the node did not stop")???;
    let mut saw_leave = false;
    while let Ok((_, request)) = requests.try_recv() {
        saw_leave |= matches!(request, ControlRequest::Leave);
    }
    assert!(saw_leave, "the node did not send Leave");
    assert!(!dir.addr().exists());

    // A restart reuses the stored certificate: the first request is a join. The quota the
    // owner now sets (config file or flag) replaces the one from `init`, and the CM hears it,
    // with the announced address (a router's forwarded port) before the listen address.
    let announced: Multiaddr = "/ip4/203.0.113.7/udp/4001/quic-v1".parse()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(ccds_node::run(
        RunOptions {
            quota: Some(3 << 20),
            announce: vec![announced.clone()],
            ..RunOptions::new(&data_dir)
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let (_, first) = next_request(&mut requests).await?;
    match first {
        ControlRequest::Join { quota, addrs, .. } => {
            assert_eq!(quota, 3 << 20);
            assert_eq!(addrs.first(), Some(&announced), "{addrs:?}");
            assert!(addrs.len() >= 2, "the listen address follows: {addrs:?}");
        }
        other => anyhow::bail!("expected a join, got {other:?}"),
    }
    assert_eq!(dir.load()?.1.quota, 3 << 20);
    wait_for_file(&dir.addr(), true).await?;
    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .context("the node did not stop")???;
    Ok(())
}

#[tokio::test]
async fn run_refuses_an_uninitialised_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ccds_node::run(RunOptions::new(tmp.path()), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::NotInitialised { .. }), "{err}");
}
