//! A local collective for end-to-end tests: a coordinator and N node processes on loopback,
//! real QUIC, OS-chosen ports, readiness awaited through the files each program writes.
//! Every process is killed and every directory removed when the [`Collective`] is dropped.

#![allow(dead_code)]

pub mod adversary;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` before the end-to-end tests",
        path.display()
    );
    path
}

/// Runs a program to completion and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Runs a program that must succeed; returns its trimmed stdout.
pub fn run_ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Waits until `cond` holds, polling; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running node process.
pub struct Node {
    pub dir: PathBuf,
    pub id: String,
    pub ip: String,
    pub child: Option<Child>,
}

/// A coordinator and its nodes.
pub struct Collective {
    pub tmp: tempfile::TempDir,
    pub cm_dir: PathBuf,
    pub cm: Child,
    pub cm_addr: String,
    pub nodes: Vec<Node>,
    /// Extra arguments for every `ccds-node run`.
    pub node_args: Vec<String>,
    /// Each node's disk quota (`ccds-node init --quota`).
    pub node_quota: String,
}

fn spawn_logged(name: &str, args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "info,libp2p=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

impl Collective {
    /// Starts a coordinator with partner `acme` and `n` nodes, and waits until all are online.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// Like [`Collective::start`], with extra arguments for `cm-coordinator run`. Node `i`
    /// listens on 127.0.(i+1).1: every node behind its own /24, as on distinct home networks.
    pub fn start_with(n: usize, cm_args: &[&str]) -> Self {
        let ips: Vec<String> = (0..n).map(|i| format!("127.0.{}.1", i + 1)).collect();
        Self::start_on(&ips, cm_args)
    }

    /// Starts one node per loopback address in `ips`.
    pub fn start_on(ips: &[String], cm_args: &[&str]) -> Self {
        Self::start_full(ips, cm_args, &[])
    }

    /// Like [`Collective::start_on`], with extra arguments for every `ccds-node run`.
    pub fn start_full(ips: &[String], cm_args: &[&str], node_args: &[&str]) -> Self {
        Self::start_sized(ips, cm_args, node_args, "1GiB")
    }

    /// Like [`Collective::start_full`], with each node's disk quota.
    pub fn start_sized(ips: &[String], cm_args: &[&str], node_args: &[&str], quota: &str) -> Self {
        let n = ips.len();
        let tmp = tempfile::tempdir().unwrap();
        let cm_dir = tmp.path().join("cm");
        let cm_str = cm_dir.to_str().unwrap();
        run_ok("cm-coordinator", &["init", "--data-dir", cm_str]);
        run_ok(
            "cm-coordinator",
            &["partner", "add", "acme", "--data-dir", cm_str],
        );
        let mut args = vec!["run", "--data-dir", cm_str, "--http", "127.0.0.1:0"];
        args.extend_from_slice(cm_args);
        let cm = spawn_logged("cm-coordinator", &args, &tmp.path().join("cm.log"));
        let addr_file = cm_dir.join("coordinator.addr");
        wait_for("the coordinator address", Duration::from_secs(30), || {
            addr_file.exists()
        });
        let cm_addr = std::fs::read_to_string(&addr_file)
            .unwrap()
            .trim()
            .to_string();
        let mut collective = Self {
            tmp,
            cm_dir,
            cm,
            cm_addr,
            nodes: Vec::new(),
            node_args: node_args.iter().map(|a| a.to_string()).collect(),
            node_quota: quota.to_string(),
        };
        for (i, ip) in ips.iter().enumerate() {
            collective.add_node(i, ip);
        }
        collective.wait_online(n);
        collective
    }

    fn add_node(&mut self, i: usize, ip: &str) {
        let dir = self.tmp.path().join(format!("node{i}"));
        let d = dir.to_str().unwrap();
        let id = run_ok(
            "ccds-node",
            &[
                "init",
                "--data-dir",
                d,
                "--coordinator",
                &self.cm_addr,
                "--quota",
                &self.node_quota,
            ],
        );
        self.nodes.push(Node {
            dir,
            id,
            ip: ip.to_string(),
            child: None,
        });
        self.spawn_node(i);
    }

    /// Starts the process of node `i` and waits until it has joined.
    fn spawn_node(&mut self, i: usize) {
        self.spawn_node_with(i, &[]);
    }

    /// Like [`Collective::spawn_node`], with extra `ccds-node run` arguments for this start.
    fn spawn_node_with(&mut self, i: usize, extra: &[&str]) {
        let node = &self.nodes[i];
        let ready = node.dir.join("node.addr");
        let _ = std::fs::remove_file(&ready);
        // Each run appends to the node's log, so a restarted node's history stays readable.
        let log = self.tmp.path().join(format!("node{i}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin("ccds-node"))
            .args([
                "run",
                "--data-dir",
                node.dir.to_str().unwrap(),
                "--heartbeat-interval",
                "2s",
                "--listen",
                &format!("/ip4/{}/udp/0/quic-v1", node.ip),
            ])
            .args(&self.node_args)
            .args(extra)
            .env("RUST_LOG", "info,libp2p=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ccds-node: {e}"));
        wait_for("a node to join", Duration::from_secs(30), || ready.exists());
        self.nodes[i].child = Some(child);
    }

    /// Restarts node `i` (killed or terminated before) on its own address and data.
    pub fn restart_node(&mut self, i: usize) {
        self.restart_node_with(i, &[]);
    }

    /// Like [`Collective::restart_node`], with extra `ccds-node run` arguments for this start.
    pub fn restart_node_with(&mut self, i: usize, extra: &[&str]) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn_node_with(i, extra);
    }

    /// Fragments of `content` in node `i`'s store.
    pub fn fragments_on(&self, i: usize, content: &str) -> usize {
        std::fs::read_dir(self.nodes[i].dir.join("fragments").join(content))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    }

    /// `cm-coordinator content show ID --json`.
    pub fn content_show(&self, content: &str) -> serde_json::Value {
        let out = run_ok(
            "cm-coordinator",
            &[
                "content",
                "show",
                content,
                "--data-dir",
                self.cm(),
                "--json",
            ],
        );
        serde_json::from_str(&out).unwrap()
    }

    /// `cm-coordinator repairs --json`.
    pub fn repairs(&self) -> serde_json::Value {
        let out = run_ok(
            "cm-coordinator",
            &["repairs", "--data-dir", self.cm(), "--json"],
        );
        serde_json::from_str(&out).unwrap()
    }

    /// The coordinator data directory as a string.
    pub fn cm(&self) -> &str {
        self.cm_dir.to_str().unwrap()
    }

    /// Node list as the coordinator reports it.
    pub fn nodes_json(&self) -> serde_json::Value {
        serde_json::from_str(&run_ok(
            "cm-coordinator",
            &["nodes", "--data-dir", self.cm(), "--json"],
        ))
        .unwrap()
    }

    /// Waits until the coordinator counts `n` nodes online.
    pub fn wait_online(&self, n: usize) {
        wait_for("nodes online", Duration::from_secs(30), || {
            self.nodes_json()
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["online"] == true)
                .count()
                >= n
        });
    }

    /// A path inside the collective's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes `size` pseudo-random bytes (seeded) to a file and returns its path.
    pub fn make_file(&self, name: &str, size: usize, seed: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path(name);
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Written a MiB at a time: benchmarks make files of many GiB.
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut chunk = Vec::with_capacity(1 << 20);
        let mut left = size;
        while left > 0 {
            chunk.clear();
            while chunk.len() < (1 << 20).min(left) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.extend_from_slice(&state.to_le_bytes());
            }
            chunk.truncate((1 << 20).min(left));
            file.write_all(&chunk).unwrap();
            left -= chunk.len();
        }
        file.flush().unwrap();
        path
    }

    /// Publishes a file; returns the content ID.
    pub fn publish(&self, file: &Path, k: u8, m: u8, segment: &str) -> String {
        run_ok(
            "cm-coordinator",
            &[
                "publish",
                "--data-dir",
                self.cm(),
                "--partner",
                "acme",
                "--data-shards",
                &k.to_string(),
                "--parity-shards",
                &m.to_string(),
                "--segment-size",
                segment,
                file.to_str().unwrap(),
            ],
        )
    }

    /// Creates a client key; returns (key path, client ID).
    pub fn client(&self, name: &str) -> (PathBuf, String) {
        let key = self.path(&format!("{name}.key"));
        let id = run_ok("ccds-client", &["keygen", "--out", key.to_str().unwrap()]);
        (key, id)
    }

    /// Issues a ticket for `client` to `content`; returns the ticket file path.
    pub fn ticket(&self, content: &str, client: &str, expires: &str) -> PathBuf {
        self.ticket_with(content, client, expires, &[])
    }

    /// Like [`Collective::ticket`], with extra `ticket` arguments (e.g. `--allowance 10GiB`).
    pub fn ticket_with(
        &self,
        content: &str,
        client: &str,
        expires: &str,
        extra: &[&str],
    ) -> PathBuf {
        let out = self.path(&format!(
            "{}-{}.ticket",
            &content[..8],
            &client[client.len() - 8..]
        ));
        run_ok(
            "cm-coordinator",
            &[
                "ticket",
                "--data-dir",
                self.cm(),
                "--partner",
                "acme",
                "--content",
                content,
                "--client",
                client,
                "--expires",
                expires,
                "--out",
                out.to_str().unwrap(),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        );
        out
    }

    /// Starts `ccds-client get --json --no-progress` with output piped.
    pub fn spawn_get(&self, key: &Path, ticket: &Path, out: &Path, extra: &[&str]) -> Child {
        Command::new(bin("ccds-client"))
            .args(["get", "--json", "--no-progress", "--key"])
            .arg(key)
            .arg("--ticket")
            .arg(ticket)
            .arg("--out")
            .arg(out)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start ccds-client")
    }

    /// Runs `ccds-client get --json`; returns the output and the parsed summary on success.
    pub fn get(
        &self,
        key: &Path,
        ticket: &Path,
        out: &Path,
        extra: &[&str],
    ) -> (Output, Option<serde_json::Value>) {
        let output = self
            .spawn_get(key, ticket, out, extra)
            .wait_with_output()
            .unwrap();
        let summary = output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).expect("client --json summary"));
        (output, summary)
    }

    /// Downloads with `ccds-client get`, asserts success and that `out` is byte-identical to
    /// `original`; returns the client's JSON summary.
    pub fn get_verified(
        &self,
        key: &Path,
        ticket: &Path,
        out: &Path,
        original: &Path,
    ) -> serde_json::Value {
        let (output, summary) = self.get(key, ticket, out, &[]);
        assert!(
            output.status.success(),
            "download of {} failed: {}",
            original.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            file_hash(out),
            file_hash(original),
            "{} differs from {}",
            out.display(),
            original.display()
        );
        summary.expect("a successful download prints its summary")
    }

    /// Kills node `i` with SIGKILL (no leave message: the node just vanishes).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `i` with SIGTERM (a graceful leave) and waits for it to exit.
    pub fn terminate_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Stops the coordinator with SIGTERM (a graceful stop) and waits for it to exit.
    pub fn stop_cm(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.cm.id().to_string()])
            .status();
        let _ = self.cm.wait();
    }

    /// Starts the coordinator again (after [`Collective::stop_cm`]) with extra `run` arguments,
    /// its log appended to the first run's; waits until it listens.
    pub fn restart_cm(&mut self, cm_args: &[&str]) {
        let addr_file = self.cm_dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.tmp.path().join("cm.log"))
            .unwrap();
        self.cm = Command::new(bin("cm-coordinator"))
            .args(["run", "--data-dir", self.cm(), "--http", "127.0.0.1:0"])
            .args(cm_args)
            .env("RUST_LOG", "info,libp2p=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start cm-coordinator: {e}"));
        wait_for("the coordinator address", Duration::from_secs(30), || {
            addr_file.exists()
        });
        self.cm_addr = std::fs::read_to_string(&addr_file)
            .unwrap()
            .trim()
            .to_string();
    }

    /// Whether the coordinator lists node `i` as online.
    pub fn is_online(&self, i: usize) -> bool {
        let id = self.nodes[i].id.as_str();
        self.nodes_json()
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == id && n["online"] == true)
    }

    /// Problem reports held by the coordinator.
    pub fn reports(&self) -> serde_json::Value {
        serde_json::from_str(&run_ok(
            "cm-coordinator",
            &["reports", "--data-dir", self.cm(), "--json"],
        ))
        .unwrap()
    }

    /// The coordinator's HTTP address (`host:port`).
    pub fn http_addr(&self) -> String {
        std::fs::read_to_string(self.cm_dir.join("http.addr"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The `admin` token the coordinator keeps for its CLI.
    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(self.cm_dir.join("operator.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// GETs `path` from the coordinator's HTTP API with the operator's token; returns
    /// (status, JSON body).
    pub fn http_get(&self, path: &str) -> (u16, serde_json::Value) {
        let token = self.operator_token();
        let (status, _, body) = http(&self.http_addr(), "GET", path, Some(&token), None);
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `cm-coordinator reconcile --json`: runs a reconciliation now.
    pub fn reconcile(&self) -> serde_json::Value {
        serde_json::from_str(&run_ok(
            "cm-coordinator",
            &["reconcile", "--data-dir", self.cm(), "--json"],
        ))
        .unwrap()
    }

    /// `cm-coordinator node show ID --json` for node `i`.
    pub fn node_show(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(&run_ok(
            "cm-coordinator",
            &[
                "node",
                "show",
                &self.nodes[i].id,
                "--data-dir",
                self.cm(),
                "--json",
            ],
        ))
        .unwrap()
    }

    /// Node `i`'s balance plus held earnings, micro-credits.
    pub fn earnings(&self, i: usize) -> i64 {
        let show = self.node_show(i);
        show["balance"].as_i64().unwrap() + show["held"].as_i64().unwrap()
    }

    /// `ccds-node status --json` for node `i`.
    pub fn node_status(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(&run_ok(
            "ccds-node",
            &[
                "status",
                "--data-dir",
                self.nodes[i].dir.to_str().unwrap(),
                "--json",
            ],
        ))
        .unwrap()
    }

    /// Waits until node `i` has had a report accepted that was sent at or after `since` (Unix
    /// seconds).
    pub fn wait_reported(&self, i: usize, since: u64) {
        wait_for(
            "a node report to be accepted",
            Duration::from_secs(30),
            || self.node_status(i)["last_report_at"].as_u64() >= Some(since),
        );
    }

    /// The key file of node `i`.
    pub fn node_key(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("node.key")
    }

    /// The coordinator's peer ID.
    pub fn cm_id(&self) -> &str {
        self.cm_addr.rsplit('/').next().unwrap()
    }
}

impl Drop for Collective {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = self.cm.kill();
        let _ = self.cm.wait();
        if std::thread::panicking() {
            // Keep the logs of a failed test visible.
            for entry in std::fs::read_dir(self.tmp.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let log = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    eprintln!("---- {} (last lines) ----", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// BLAKE3 of a file, for byte-identity checks.
/// One HTTP/1.1 request to `addr` (`host:port`), with an optional bearer token and body
/// (content type, bytes); returns (status, headers in lower case, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some((kind, bytes)) = body {
        head.push_str(&format!(
            "Content-Type: {kind}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    } else if method != "GET" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    if let Some((_, bytes)) = body {
        conn.write_all(bytes).unwrap();
    }
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 4 + size..];
        }
        body = out;
    }
    (status.parse().unwrap(), headers, body)
}

pub fn file_hash(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hasher.finalize()
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
