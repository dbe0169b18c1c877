//! End to end: a download from 12 local node processes (k=8, m=4, 8 MiB segments) by the real
//! `ccds-client`, next to the transport baselines measured in the same run (one raw quinn stream
//! and one libp2p-stream, both endpoints in this process), then the same download with one node
//! throttled to a tenth of the others' upload rate (the tail), and last a plain write of the
//! same bytes to a new file: the part of a download's cost that is the disk's, not CCDS's.
//!
//!     cargo bench --bench e2e                      # 1 GiB
//!     CCDS_E2E_SIZE=10GiB cargo bench --bench e2e  # any size (disk: about 4.5 × the size)
//!
//! Reported per download: goodput, CPU-seconds per GiB delivered (the client, the nodes, the
//! coordinator, and all together) and the client's peak RSS. The release binaries are built
//! first (`cargo build --release --workspace --bins`), so the figures are always of this
//! checkout's code.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/transport.rs"]
mod transport;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use common::Collective;

const NODES: usize = 12;
const GIB: f64 = (1u64 << 30) as f64;

/// CPU seconds a live process has used so far (user + system, from /proc).
fn process_cpu(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(fields[i].parse::<u64>()? as f64) };
    // Fields 14 and 15 of stat(5) (utime, stime) are at 11 and 12 after the name.
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Waits for a child and returns its CPU seconds and peak RSS (bytes), from wait4's rusage.
fn wait_measured(child: &mut Child) -> anyhow::Result<(std::process::ExitStatus, f64, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: wait4 writes the status and the rusage it is given; the pid is our own child,
    // which std has not reaped (no wait() was called on it).
    let (pid, usage) = unsafe {
        let pid = libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr());
        (pid, usage.assume_init())
    };
    ensure!(
        pid == child.id() as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok((
        std::process::ExitStatus::from_raw(status),
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss as u64 * 1024,
    ))
}

/// One measured download.
struct Download {
    bytes: u64,
    seconds: f64,
    client_cpu: f64,
    nodes_cpu: f64,
    cm_cpu: f64,
    client_rss: u64,
    /// Bytes each node delivered, as the client counted them.
    per_node: Vec<u64>,
}

impl Download {
    fn goodput(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }

    fn cpu_per_gib(&self, cpu: f64) -> f64 {
        cpu / (self.bytes as f64 / GIB)
    }

    fn total_cpu(&self) -> f64 {
        self.client_cpu + self.nodes_cpu + self.cm_cpu
    }
}

fn pids(c: &Collective) -> Vec<u32> {
    c.nodes
        .iter()
        .filter_map(|n| n.child.as_ref().map(Child::id))
        .collect()
}

/// Downloads `content` with a fresh client key and ticket; checks the result byte for byte.
fn download(
    c: &Collective,
    content: &str,
    original: &Path,
    name: &str,
) -> anyhow::Result<Download> {
    let (key, client) = c.client(name);
    let ticket = c.ticket(content, &client, "2h");
    let out = c.path(&format!("{name}.out"));
    let nodes = pids(c);
    let cpu = |pids: &[u32]| -> anyhow::Result<f64> { pids.iter().map(|&p| process_cpu(p)).sum() };
    let (nodes_before, cm_before) = (cpu(&nodes)?, process_cpu(c.cm.id())?);
    let started = Instant::now();
    let mut child = c.spawn_get(&key, &ticket, &out, &[]);
    // Drained while the client runs, so a full pipe cannot stall it.
    let stdout = child.stdout.take().expect("spawn_get pipes stdout");
    let stderr = child.stderr.take().expect("spawn_get pipes stderr");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let (status, client_cpu, client_rss) = wait_measured(&mut child)?;
    let wall = started.elapsed().as_secs_f64();
    let (nodes_cpu, cm_cpu) = (
        cpu(&nodes)? - nodes_before,
        process_cpu(c.cm.id())? - cm_before,
    );
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    if !status.success() {
        bail!("the download failed: {stderr}");
    }
    ensure!(
        common::file_hash(&out) == common::file_hash(original),
        "the download is not byte-identical"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).context("client summary")?;
    let per_node = summary["per_node"]
        .as_object()
        .context("per_node")?
        .values()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    std::fs::remove_file(&out)?;
    Ok(Download {
        bytes: std::fs::metadata(original)?.len(),
        // The client's own figure (from the ticket to the last byte written) when it has one.
        seconds: summary["seconds"].as_f64().unwrap_or(wall),
        client_cpu,
        nodes_cpu,
        cm_cpu,
        client_rss,
        per_node,
    })
}

/// What writing the download costs by itself: `size` bytes written to a new file at `path` in
/// 8 MiB pieces, each made durable before the next, as the client writes segments. Returns
/// (wall seconds, CPU seconds of this thread).
fn plain_write(path: &Path, size: u64) -> anyhow::Result<(f64, f64)> {
    use std::io::Write;
    let thread_cpu = || transport::rusage_cpu(libc::RUSAGE_THREAD);
    let piece = vec![0x5au8; 8 << 20];
    let (started, cpu) = (Instant::now(), thread_cpu());
    let mut file = std::fs::File::create(path)?;
    let mut written = 0;
    while written < size {
        let n = (size - written).min(piece.len() as u64) as usize;
        file.write_all(&piece[..n])?;
        file.sync_data()?;
        written += n as u64;
    }
    let result = (started.elapsed().as_secs_f64(), thread_cpu() - cpu);
    drop(file);
    std::fs::remove_file(path)?;
    Ok(result)
}

fn size_from_env() -> anyhow::Result<u64> {
    match std::env::var("CCDS_E2E_SIZE") {
        Ok(s) => Ok(s
            .parse::<bytesize::ByteSize>()
            .map_err(|e| anyhow::anyhow!("CCDS_E2E_SIZE={s}: {e}"))?
            .as_u64()),
        Err(_) => Ok(1 << 30),
    }
}

fn build_binaries() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--release", "--workspace", "--bins", "--locked"]);
    // What cargo sets for the benchmark's own run describes this package, not the build: ring's
    // build script reruns when CARGO_MANIFEST_DIR changes, so passing it on rebuilt half the
    // workspace on every run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            build.env_remove(name.as_ref());
        }
    }
    let status = build.status().context("running cargo build")?;
    ensure!(status.success(), "cargo build --release failed");
    Ok(())
}

fn row(name: &str, bytes: u64, secs: f64, cpu: f64, baseline: (f64, f64)) {
    let goodput = bytes as f64 / secs;
    let cpu_gib = cpu / (bytes as f64 / GIB);
    println!(
        "{name:<44} {:>9.1} MB/s {:>6.2}×   {:>6.2} CPU-s/GiB {:>6.2}×",
        goodput / 1e6,
        goodput / baseline.0,
        cpu_gib,
        cpu_gib / baseline.1,
    );
}

fn main() -> anyhow::Result<()> {
    overlay::net::install_crypto_provider();
    let size = size_from_env()?;
    build_binaries()?;
    println!(
        "== end to end: {} from {NODES} node processes, k=8 m=4, 8 MiB segments",
        bytesize::ByteSize(size)
    );

    let rt = tokio::runtime::Runtime::new()?;
    let quinn = rt.block_on(transport::raw_quinn(size));
    let libp2p = rt.block_on(transport::libp2p_stream(size));
    drop(rt);
    let baseline = (size as f64 / quinn.0, quinn.1 / (size as f64 / GIB));

    let ips: Vec<String> = (0..NODES).map(|i| format!("127.0.{}.1", i + 1)).collect();
    let quota = format!("{}", size * 2 / NODES as u64 + (256 << 20));
    let mut c = Collective::start_sized(&ips, &[], &[], &quota);
    let file = c.make_file("content.bin", size as usize, 5);
    let started = Instant::now();
    let content = c.publish(&file, 8, 4, "8MiB");
    let publish_secs = started.elapsed().as_secs_f64();

    // A first download warms what every later one finds warm (connections, page cache, the
    // coordinator's caches); it is checked but not reported.
    download(&c, &content, &file, "warm-up")?;
    let fast = download(&c, &content, &file, "fast")?;
    // The tail: one node at a tenth of the median node's rate in the download above.
    let mut rates: Vec<f64> = fast
        .per_node
        .iter()
        .map(|&b| b as f64 / fast.seconds)
        .collect();
    rates.sort_by(f64::total_cmp);
    let limit = (rates[rates.len() / 2] / 10.0).max(64.0 * 1024.0) as u64;
    c.terminate_node(0);
    c.restart_node_with(0, &["--upload-limit", &limit.to_string()]);
    let tail = download(&c, &content, &file, "tail")?;
    let write = plain_write(&c.path("plain-write.out"), size)?;

    println!();
    println!(
        "{:<44} {:>14} {:>7}   {:>16} {:>7}",
        "", "goodput", "ratio", "CPU", "ratio"
    );
    row(
        "raw quinn, one stream (baseline)",
        size,
        quinn.0,
        quinn.1,
        baseline,
    );
    row(
        "libp2p QUIC + libp2p-stream, one stream",
        size,
        libp2p.0,
        libp2p.1,
        baseline,
    );
    row(
        "plain write of the same bytes to a new file",
        size,
        write.0,
        write.1,
        baseline,
    );
    for (name, d) in [
        ("ccds download, 12 nodes", &fast),
        ("ccds download, one node at 1/10 rate", &tail),
    ] {
        row(name, d.bytes, d.seconds, d.total_cpu(), baseline);
        println!(
            "    {:.2} s; CPU-s/GiB: client {:.2}, nodes {:.2}, coordinator {:.2}; client peak RSS {:.1} MiB",
            d.seconds,
            d.cpu_per_gib(d.client_cpu),
            d.cpu_per_gib(d.nodes_cpu),
            d.cpu_per_gib(d.cm_cpu),
            d.client_rss as f64 / f64::from(1 << 20),
        );
    }
    println!(
        "tail: one node limited to {}/s: {:.2} s against {:.2} s, {:.2}× the unthrottled time",
        bytesize::ByteSize(limit),
        tail.seconds,
        fast.seconds,
        tail.seconds / fast.seconds
    );
    println!(
        "publish: {:.2} s ({:.1} MB/s)",
        publish_secs,
        size as f64 / publish_secs / 1e6
    );
    println!(
        "targets: goodput ≥ 0.75× raw quinn ({:.2}×), CPU ≤ 1.35× raw quinn's ({:.2}×), client RSS ≤ 128 MiB ({:.1} MiB), tail ≤ 1.15× ({:.2}×)",
        fast.goodput() / baseline.0,
        fast.cpu_per_gib(fast.total_cpu()) / baseline.1,
        fast.client_rss as f64 / f64::from(1 << 20),
        tail.seconds / fast.seconds
    );
    Ok(())
}
