//! The `ccds-node` binary: its stdout contract, its one-line errors, and a clean exit on SIGTERM.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use common::{scripted_cm, wait_for_file};
use overlay::net::with_peer;
use overlay::proto::ControlRequest;
use overlay::{Identity, PeerId};

const BIN: &str = env!("CARGO_BIN_EXE_ccds-node");

fn node(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the ccds-node binary runs")
}

fn one_error_line(output: &Output) -> String {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    errors[0].to_string()
}

#[test]
fn init_prints_the_peer_id_alone_and_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let dir = dir.to_str().unwrap();
    let cm = Identity::generate().peer_id();
    let coordinator = format!("/ip4/127.0.0.1/udp/4000/quic-v1/p2p/{cm}");

    let out = node(&[
        "init",
        "--data-dir",
        dir,
        "--coordinator",
        &coordinator,
        "--quota",
        "500MB",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let id: PeerId = stdout.trim().parse().unwrap();
    assert_eq!(stdout, format!("{id}\n"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("node/node.json")).unwrap()).unwrap();
    assert_eq!(config["quota"], 500_000_000);

    // Idempotent for the same CM: same identity.
    let out = node(&["init", "--data-dir", dir, "--coordinator", &coordinator]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{id}\n"));

    let unpinned = node(&[
        "init",
        "--data-dir",
        dir,
        "--coordinator",
        "/ip4/127.0.0.1/udp/4000/quic-v1",
    ]);
    assert!(one_error_line(&unpinned).contains("/p2p/"));
    assert!(unpinned.stdout.is_empty());

    let other = format!(
        "/ip4/127.0.0.1/udp/4000/quic-v1/p2p/{}",
        Identity::generate().peer_id()
    );
    let out = node(&["init", "--data-dir", dir, "--coordinator", &other]);
    assert!(one_error_line(&out).contains("already initialised"));

    let missing = tmp.path().join("missing");
    let out = node(&["run", "--data-dir", missing.to_str().unwrap()]);
    assert!(one_error_line(&out).contains("ccds-node init"));

    // Upload limits take sizes, and must fit the limiter's counter.
    let run_limited = |rate: &str| {
        node(&[
            "run",
            "--data-dir",
            missing.to_str().unwrap(),
            "--upload-limit",
            rate,
        ])
    };
    for rate in ["200KiB", "5MiB", "0"] {
        assert!(one_error_line(&run_limited(rate)).contains("ccds-node init"));
    }
    for rate in ["4GiB", "fast"] {
        assert!(one_error_line(&run_limited(rate)).contains("--upload-limit"));
    }
    assert!(one_error_line(&run_limited("5GiB")).contains("below 4GiB"));
}

#[tokio::test]
async fn sigterm_leaves_the_collective_and_exits_zero() -> anyhow::Result<()> {
    let cm = Identity::generate();
    let (cm_net, mut requests) = scripted_cm(cm.clone()).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("node");
    let coordinator = with_peer(&cm_net.listen_addrs()[0], cm.peer_id()).to_string();
    let out = node(&[
        "init",
        "--data-dir",
        dir.to_str().unwrap(),
        "--coordinator",
        &coordinator,
    ]);
    assert!(out.status.success());

    let mut child = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--data-dir",
            dir.to_str().unwrap(),
            "--heartbeat-interval",
            "1h",
            "--upload-limit",
            "5MiB",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_for_file(&dir.join("node.addr"), true).await?;
    let pid = child.id().context("the node exited early")?;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("the node did not exit on SIGTERM")??;
    assert!(status.success(), "{status}");
    assert!(!dir.join("node.addr").exists());
    let mut seen = Vec::new();
    while let Ok((_, request)) = requests.try_recv() {
        seen.push(request);
    }
    assert!(
        seen.iter().any(|r| matches!(r, ControlRequest::Leave)),
        "no Leave among {seen:?}"
    );
    Ok(())
}

#[test]
fn status_shows_the_node_offline_before_it_ever_ran_and_refuses_other_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let dir = dir.to_str().unwrap();
    let cm = Identity::generate().peer_id();
    let coordinator = format!("/ip4/127.0.0.1/udp/4000/quic-v1/p2p/{cm}");
    let out = node(&["init", "--data-dir", dir, "--coordinator", &coordinator]);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let out = node(&["status", "--data-dir", dir]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&id), "{text}");
    assert!(text.contains("online        no"), "{text}");
    assert!(text.contains("balance       0.000000 cr"), "{text}");

    let out = node(&["status", "--data-dir", dir, "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let object = json.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "balance",
            "earned",
            "held",
            "id",
            "last_report_at",
            "last_report_seq",
            "level",
            "level_index",
            "live",
            "online",
            "paid_out",
            "paused",
            "reconciled_at",
            "running",
            "state"
        ]
    );
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["online"], false);
    assert_eq!(json["balance"], 0);

    let missing = tmp.path().join("missing");
    let out = node(&["status", "--data-dir", missing.to_str().unwrap()]);
    assert!(one_error_line(&out).contains("ccds-node init"));

    let out = node(&["run", "--data-dir", dir, "--report-interval", "0s"]);
    assert!(one_error_line(&out).contains("report interval"));
}

#[tokio::test]
async fn status_of_a_killed_daemon_is_offline() -> anyhow::Result<()> {
    let cm = Identity::generate();
    let (cm_net, _requests) = scripted_cm(cm.clone()).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("node");
    let dir_arg = dir.to_str().unwrap();
    let coordinator = with_peer(&cm_net.listen_addrs()[0], cm.peer_id()).to_string();
    assert!(
        node(&["init", "--data-dir", dir_arg, "--coordinator", &coordinator])
            .status
            .success()
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--data-dir", dir_arg, "--heartbeat-interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_for_file(&dir.join("node.addr"), true).await?;
    wait_for_file(&dir.join("status.json"), true).await?;
    let status = || -> anyhow::Result<serde_json::Value> {
        let out = node(&["status", "--data-dir", dir_arg, "--json"]);
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    assert_eq!(status()?["online"], true);

    child.start_kill()?;
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("the node did not die")??;
    // The daemon never wrote `online: false`, but it is gone.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("status.json"))?)?;
    assert_eq!(written["online"], true);
    assert_eq!(status()?["online"], false);
    Ok(())
}

#[test]
fn run_reads_its_config_file_and_flags_and_variables_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let config = tmp.path().join("node.toml");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(BIN)
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let config_arg = config.to_str().unwrap();

    // The example parses, and its data directory is used (missing here).
    let example = include_str!("../config.example.toml")
        .replace("/var/lib/ccds-node", missing.to_str().unwrap());
    std::fs::write(&config, example).unwrap();
    let out = run(&["--config", config_arg], &[]);
    assert!(one_error_line(&out).contains("ccds-node init"));

    // A misspelt field is named, with the file.
    std::fs::write(&config, "max_client = 3\n").unwrap();
    let line = one_error_line(&run(&["--config", config_arg], &[]));
    assert!(line.contains("unknown field `max_client`"), "{line}");
    assert!(line.contains("node.toml"), "{line}");

    // Variables and flags win over the file: the file's valid value is replaced by a bad one.
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\nmax_clients = 4\n", missing.display()),
    )
    .unwrap();
    let line = one_error_line(&run(
        &["--config", config_arg],
        &[("CCDS_NODE_MAX_CLIENTS", "0")],
    ));
    assert!(line.contains("max_clients"), "{line}");
    let line = one_error_line(&run(&["--config", config_arg, "--max-clients", "0"], &[]));
    assert!(line.contains("max_clients"), "{line}");
    let line = one_error_line(&run(
        &[
            "--config",
            config_arg,
            "--upload-window",
            "08:00-18:00=1MiB,17:00-19:00=2MiB",
        ],
        &[],
    ));
    assert!(line.contains("overlap"), "{line}");
    let line = one_error_line(&run(
        &["--config", config_arg],
        &[(
            "CCDS_NODE_UPLOAD_WINDOWS",
            "22:00-06:00=1MiB,05:00-07:00=1MiB",
        )],
    ));
    assert!(line.contains("overlap"), "{line}");
    let line = one_error_line(&run(
        &["--config", config_arg, "--status-page", "192.0.2.1:80"],
        &[],
    ));
    assert!(line.contains("loopback"), "{line}");
    // Without a data directory anywhere.
    std::fs::write(&config, "").unwrap();
    let line = one_error_line(&run(&["--config", config_arg], &[]));
    assert!(line.contains("CCDS_NODE_DATA_DIR"), "{line}");
}

#[test]
fn a_flag_or_variable_turns_idle_gating_off_or_on_whatever_the_file_says() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("node.toml");
    let config_arg = config.to_str().unwrap();
    // An impossible threshold is refused only when gating is on; with it off the run gets as far
    // as the data directory, which was never initialised.
    let error = |enabled: bool, args: &[&str], env: &[(&str, &str)]| {
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[idle]\nenabled = {enabled}\nmin_idle_percent = 120\n",
                tmp.path().join("missing").display()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["run", "--config", config_arg])
            .args(args)
            .env_remove("CCDS_NODE_IDLE_GATING")
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        one_error_line(&out)
    };
    let gated = |line: String| {
        if line.contains("idle threshold") {
            true
        } else {
            assert!(line.contains("ccds-node init"), "{line}");
            false
        }
    };

    assert!(gated(error(true, &[], &[])));
    assert!(!gated(error(true, &["--idle-gating=false"], &[])));
    assert!(!gated(error(
        true,
        &[],
        &[("CCDS_NODE_IDLE_GATING", "false")]
    )));
    // The flag wins over the variable, either way.
    assert!(!gated(error(
        true,
        &["--idle-gating=false"],
        &[("CCDS_NODE_IDLE_GATING", "true")]
    )));

    assert!(!gated(error(false, &[], &[])));
    assert!(gated(error(false, &["--idle-gating"], &[])));
    assert!(gated(error(
        false,
        &[],
        &[("CCDS_NODE_IDLE_GATING", "true")]
    )));
    assert!(gated(error(
        false,
        &["--idle-gating"],
        &[("CCDS_NODE_IDLE_GATING", "false")]
    )));
}
