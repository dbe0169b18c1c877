//! A real coordinator process and real `ccds-node` processes on loopback, for the tests of the
//! owner's controls as the CM sees them. The coordinator binary comes from the same target
//! directory (`cargo build --workspace` builds it). Processes are killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// Path of a workspace binary built next to this test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` before these tests",
        path.display()
    );
    path
}

pub const NODE: &str = env!("CARGO_BIN_EXE_ccds-node");

/// Runs a program that must succeed; returns its stdout.
pub fn run_ok(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = output(program, args)?;
    ensure!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs a program to completion.
pub fn output(program: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))
}

/// Polls `cond` every 50 ms until it holds; fails naming `what` after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        let killed = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()?;
        ensure!(killed.success(), "kill failed");
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait()? {
                ensure!(status.success(), "exited with {status}");
                return Ok(());
            }
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A coordinator whose heartbeat timeout is far longer than any test: a node it sees go
/// offline within seconds went by a leave, not by silence.
pub struct Coordinator {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub addr: String,
    pub proc: Proc,
}

impl Coordinator {
    pub fn start() -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("cm");
        let cm = workspace_bin("cm-coordinator");
        let d = dir.to_str().unwrap();
        run_ok(&cm, &["init", "--data-dir", d])?;
        let log = std::fs::File::create(tmp.path().join("cm.log"))?;
        let child = Command::new(&cm)
            .args(["run", "--data-dir", d, "--node-timeout", "10m"])
            .env("RUST_LOG", "info,libp2p=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let proc = Proc(child);
        let addr_file = dir.join("coordinator.addr");
        wait_until("the coordinator's address", Duration::from_secs(30), || {
            Ok(addr_file.exists())
        })?;
        let addr = std::fs::read_to_string(&addr_file)?.trim().to_string();
        Ok(Self {
            tmp,
            dir,
            addr,
            proc,
        })
    }

    /// `cm-coordinator nodes --json`.
    pub fn nodes(&self) -> anyhow::Result<serde_json::Value> {
        let out = run_ok(
            &workspace_bin("cm-coordinator"),
            &["nodes", "--data-dir", self.dir.to_str().unwrap(), "--json"],
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Whether the coordinator lists node `id` as online.
    pub fn is_online(&self, id: &str) -> anyhow::Result<bool> {
        Ok(self
            .nodes()?
            .as_array()
            .context("nodes --json is not a list")?
            .iter()
            .any(|n| n["id"] == id && n["online"] == true))
    }

    /// Waits until the coordinator lists node `id` as `online` (or not).
    pub fn wait_online(&self, id: &str, online: bool) -> anyhow::Result<()> {
        let what = format!("node {id} {}", if online { "online" } else { "offline" });
        wait_until(&what, Duration::from_secs(20), || {
            Ok(self.is_online(id)? == online)
        })
    }

    /// How many times the coordinator logged a node leaving.
    pub fn leaves(&self) -> anyhow::Result<usize> {
        let log = std::fs::read_to_string(self.tmp.path().join("cm.log"))?;
        Ok(log.matches("node left").count())
    }

    /// Initialises a node's data directory under the coordinator's temporary directory.
    pub fn init_node(&self, name: &str) -> anyhow::Result<(PathBuf, String)> {
        let dir = self.tmp.path().join(name);
        let id = run_ok(
            Path::new(NODE),
            &[
                "init",
                "--data-dir",
                dir.to_str().unwrap(),
                "--coordinator",
                &self.addr,
                "--quota",
                "64MiB",
            ],
        )?;
        Ok((dir, id.trim().to_string()))
    }
}

/// Starts `ccds-node run` on `dir` with `extra` arguments and waits for its control socket.
pub fn start_node(dir: &Path, extra: &[&str]) -> anyhow::Result<Proc> {
    let _ = std::fs::remove_file(dir.join("control.sock"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))?;
    let child = Command::new(NODE)
        .args([
            "run",
            "--data-dir",
            dir.to_str().unwrap(),
            "--heartbeat-interval",
            "1s",
        ])
        .args(extra)
        .env("RUST_LOG", "info,libp2p=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let proc = Proc(child);
    let socket = dir.join("control.sock");
    wait_until("the node's control socket", Duration::from_secs(30), || {
        Ok(socket.exists())
    })?;
    Ok(proc)
}

/// `ccds-node status --data-dir DIR --json`.
pub fn node_status(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let out = run_ok(
        Path::new(NODE),
        &["status", "--data-dir", dir.to_str().unwrap(), "--json"],
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// One HTTP/1.1 request to `addr` (`Host` as given); returns the status code and the body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the response head")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .context("no status code")?
        .parse()?;
    // The bodies here are small and sent whole or chunked; undo the chunking.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16)?;
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}
