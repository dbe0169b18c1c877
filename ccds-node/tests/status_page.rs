//! The owner's status page on loopback HTTP: the page and the JSON it polls, pause and resume
//! through its POST endpoints (which the coordinator hears as a leave and a join), and the
//! guards against requests from other sites.

mod common;

use std::time::Duration;

use anyhow::Context as _;
use ccds_node::owner::{self, OwnerRequest};
use ccds_node::{NodeError, RunOptions};
use common::processes::http;
use common::{next_request, scripted_cm, wait_for_file};
use overlay::Identity;
use overlay::proto::ControlRequest;
use tokio::sync::oneshot;

async fn request(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let (addr, method, path, host) = (
        addr.to_string(),
        method.to_string(),
        path.to_string(),
        host.to_string(),
    );
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        http(&addr, &method, &path, &host, &headers)
    })
    .await?
}

#[tokio::test]
async fn the_page_shows_the_node_and_its_buttons_pause_and_resume_it() -> anyhow::Result<()> {
    let cm = Identity::generate();
    let (cm_net, mut requests) = scripted_cm(cm.clone()).await?;
    let tmp = tempfile::tempdir()?;
    let (data_dir, dir, node_id) = common::node_dir(tmp.path(), &cm, &cm_net, 1 << 20)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(ccds_node::run(
        RunOptions {
            heartbeat_interval: Duration::from_secs(3600),
            status_page: Some("127.0.0.1:0".parse()?),
            ..RunOptions::new(&data_dir)
        },
        async move {
            let _ = stopped.await;
        },
    ));
    wait_for_file(&dir.addr(), true).await?;
    let status = owner::request(&dir, OwnerRequest::Status).await?;
    let url = status.live.and_then(|l| l.status_page).context("no page")?;
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();

    // The page, with its per-start token, and nothing from elsewhere.
    let (code, page) = request(&addr, "GET", "/", &addr, &[]).await?;
    assert_eq!(code, 200);
    assert!(page.contains("<title>CCDS node</title>"), "{page}");
    let token = page
        .split("name=\"ccds-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no token in the page")?
        .to_string();
    assert_eq!(token.len(), 32, "{token}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "external resources"
    );
    assert!(page.contains("/api/pause") || page.contains("\"/api/\" + what"));

    // The JSON it polls.
    let (code, json) = request(&addr, "GET", "/api/status", &addr, &[]).await?;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(json["id"], node_id.to_string());
    assert_eq!(
        (&json["state"], &json["paused"]),
        (&"online".into(), &false.into())
    );
    assert_eq!(json["level_index"], 0);
    assert!(json["live"]["traffic"]["per_minute"].is_array(), "{json}");
    // `localhost` names the page too.
    let localhost = format!("localhost:{port}");
    assert_eq!(
        request(&addr, "GET", "/api/status", &localhost, &[])
            .await?
            .0,
        200
    );

    // What another site could send is refused, and changes nothing.
    let refused = [
        request(&addr, "POST", "/api/pause", &addr, &[]).await?,
        request(
            &addr,
            "POST",
            "/api/pause",
            &addr,
            &[("X-CCDS-Token", "0000")],
        )
        .await?,
        request(
            &addr,
            "POST",
            "/api/pause",
            &addr,
            &[("X-CCDS-Token", &token), ("Origin", "http://evil.example")],
        )
        .await?,
        request(
            &addr,
            "POST",
            "/api/pause",
            "evil.example",
            &[("X-CCDS-Token", &token)],
        )
        .await?,
        request(&addr, "GET", "/", "rebound.example:80", &[]).await?,
    ];
    let codes: Vec<u16> = refused.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [403, 403, 403, 421, 421], "{refused:?}");
    assert!(!dir.paused());

    // The pause button: the node leaves and says it is paused.
    let origin = format!("http://{addr}");
    let (code, json) = request(
        &addr,
        "POST",
        "/api/pause",
        &addr,
        &[("X-CCDS-Token", &token), ("Origin", &origin)],
    )
    .await?;
    assert_eq!(code, 200, "{json}");
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(
        (&json["paused"], &json["state"]),
        (&true.into(), &"paused".into())
    );
    loop {
        let (_, request) = next_request(&mut requests).await?;
        if matches!(request, ControlRequest::Leave) {
            break;
        }
    }
    wait_for_file(&dir.addr(), false).await?;
    assert!(dir.paused());

    // The resume button: the node joins again.
    let (code, json) = request(
        &addr,
        "POST",
        "/api/resume",
        &addr,
        &[("X-CCDS-Token", &token)],
    )
    .await?;
    assert_eq!(code, 200, "{json}");
    loop {
        let (_, request) = next_request(&mut requests).await?;
        if matches!(request, ControlRequest::Join { .. }) {
            break;
        }
    }
    wait_for_file(&dir.addr(), true).await?;
    let (_, json) = request(&addr, "GET", "/api/status", &addr, &[]).await?;
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(
        (&json["state"], &json["paused"]),
        (&"online".into(), &false.into())
    );

    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .context("the node did not stop")???;
    Ok(())
}

#[tokio::test]
async fn the_page_listens_on_loopback_only() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ccds_node::run(
        RunOptions {
            status_page: Some("0.0.0.0:0".parse().unwrap()),
            ..RunOptions::new(tmp.path())
        },
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NodeError::StatusPageNotLocal(_)), "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
}
