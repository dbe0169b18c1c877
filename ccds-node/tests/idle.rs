//! Idle gating on a synthetic load: the test writes the node's `/proc/stat` (a file of its
//! own, passed with --idle-proc-stat) as a busy or an idle host would advance it, and a real
//! coordinator sees the node join only once the host is idle, leave when it gets busy, and
//! rejoin when it is idle again.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::processes::{Coordinator, node_status, start_node, wait_until};

/// Advances fake CPU counters every 20 ms: 95 % idle while `idle` is set, 5 % otherwise.
struct FakeProcStat {
    idle: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl FakeProcStat {
    fn start(path: PathBuf) -> Self {
        let idle = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (i, s) = (idle.clone(), stop.clone());
        let write = move |user: u64, idle: u64| {
            let text = format!(
                "cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {user} 0 0 {idle} 0 0 0 0 0 0\nctxt 1\n"
            );
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        write(0, 0);
        let writer = std::thread::spawn(move || {
            let (mut user, mut idle) = (0u64, 0u64);
            while !s.load(Ordering::Relaxed) {
                let share = if i.load(Ordering::Relaxed) { 95 } else { 5 };
                idle += share;
                user += 100 - share;
                write(user, idle);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            idle,
            stop,
            writer: Some(writer),
        }
    }

    fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
    }
}

impl Drop for FakeProcStat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn idle_percent(dir: &Path) -> anyhow::Result<Option<f64>> {
    Ok(node_status(dir)?["live"]["idle_percent"].as_f64())
}

#[test]
fn the_node_joins_only_while_the_host_is_idle() -> anyhow::Result<()> {
    let cm = Coordinator::start()?;
    let (dir, id) = cm.init_node("node")?;
    let stat = cm.tmp.path().join("proc-stat");
    let fake = FakeProcStat::start(stat.clone());
    let node = start_node(
        &dir,
        &[
            "--idle-gating",
            "--idle-window",
            "1s",
            "--idle-sample-every",
            "100ms",
            "--idle-min-percent",
            "80",
            "--idle-hysteresis",
            "15",
            "--idle-proc-stat",
            stat.to_str().unwrap(),
        ],
    )?;
    let long = Duration::from_secs(20);

    // Busy: once the node has measured a whole window, it has decided to stay out.
    wait_until("a busy measurement", long, || {
        Ok(idle_percent(&dir)?.is_some_and(|p| p < 20.0))
    })?;
    let status = node_status(&dir)?;
    assert_eq!(status["state"], "waiting-for-idle", "{status}");
    assert!(!cm.is_online(&id)?, "joined on a busy host");

    // Idle: it joins.
    fake.set_idle(true);
    cm.wait_online(&id, true)?;
    assert!(idle_percent(&dir)?.is_some_and(|p| p >= 80.0));

    // The owner comes back: it leaves (a leave, not a timeout: the CM's is ten minutes).
    let leaves = cm.leaves()?;
    fake.set_idle(false);
    cm.wait_online(&id, false)?;
    wait_until("the leave in the coordinator's log", long, || {
        Ok(cm.leaves()? > leaves)
    })?;
    assert_eq!(node_status(&dir)?["state"], "waiting-for-idle");

    // Idle again: it rejoins.
    fake.set_idle(true);
    cm.wait_online(&id, true)?;
    wait_until("the node to say it is online", long, || {
        Ok(node_status(&dir)?["state"] == "online")
    })?;
    node.terminate()?;
    Ok(())
}
