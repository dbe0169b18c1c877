//! `ccds-node pause` / `resume` / `status` through the control socket, against a real
//! coordinator process: a pause is a leave the coordinator registers at once (its heartbeat
//! timeout is ten minutes), it outlives a restart of the daemon, and a resume rejoins.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::processes::{Coordinator, NODE, node_status, output, run_ok, start_node, wait_until};

fn node_cmd(command: &str, dir: &Path) -> anyhow::Result<String> {
    run_ok(
        Path::new(NODE),
        &[command, "--data-dir", dir.to_str().unwrap()],
    )
}

#[test]
fn pause_leaves_survives_a_restart_and_resume_rejoins() -> anyhow::Result<()> {
    let cm = Coordinator::start()?;
    let (dir, id) = cm.init_node("node")?;
    let node = start_node(&dir, &[])?;
    cm.wait_online(&id, true)?;
    let mode = std::fs::metadata(dir.join("control.sock"))?
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the control socket is the owner's alone"
    );
    let status = node_status(&dir)?;
    assert_eq!(
        (&status["state"], &status["running"], &status["paused"]),
        (&"online".into(), &true.into(), &false.into()),
        "{status}"
    );
    assert!(
        status["live"]["quota"].as_u64() == Some(64 << 20),
        "{status}"
    );

    // Pause: the coordinator hears a leave at once; the daemon keeps running.
    let leaves = cm.leaves()?;
    let said = node_cmd("pause", &dir)?;
    assert!(said.starts_with("paused"), "{said}");
    cm.wait_online(&id, false)?;
    wait_until(
        "the leave in the coordinator's log",
        std::time::Duration::from_secs(10),
        || Ok(cm.leaves()? > leaves),
    )?;
    assert!(!dir.join("node.addr").exists());
    let status = node_status(&dir)?;
    assert_eq!(
        (&status["state"], &status["running"]),
        (&"paused".into(), &true.into())
    );
    assert_eq!(status["online"], false);
    assert!(dir.join("paused").exists());
    // Pausing again is harmless.
    node_cmd("pause", &dir)?;

    // A restart stays paused: the daemon answers, and never joins.
    node.terminate()?;
    let stopped = node_status(&dir)?;
    assert_eq!(
        (&stopped["state"], &stopped["paused"], &stopped["running"]),
        (&"stopped".into(), &true.into(), &false.into()),
        "{stopped}"
    );
    assert!(stopped["live"].is_null(), "{stopped}");
    let node = start_node(&dir, &[])?;
    let status = node_status(&dir)?;
    assert_eq!(status["state"], "paused", "{status}");
    assert!(!cm.is_online(&id)?);

    // Resume: online again, as the coordinator sees it.
    let said = node_cmd("resume", &dir)?;
    assert!(said.starts_with("resumed"), "{said}");
    cm.wait_online(&id, true)?;
    wait_until(
        "the node to say it is online",
        std::time::Duration::from_secs(10),
        || Ok(node_status(&dir)?["state"] == "online"),
    )?;
    assert!(!dir.join("paused").exists());
    node.terminate()?;

    // Without a daemon, pause and resume only record the wish.
    let said = node_cmd("pause", &dir)?;
    assert!(said.contains("not running"), "{said}");
    assert!(dir.join("paused").exists());
    node_cmd("resume", &dir)?;
    assert!(!dir.join("paused").exists());
    let out = output(
        Path::new(NODE),
        &[
            "pause",
            "--data-dir",
            cm.tmp.path().join("nowhere").to_str().unwrap(),
        ],
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ccds-node init"));
    Ok(())
}
