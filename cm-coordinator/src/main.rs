//! `cm-coordinator`: the collective manager.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cm_coordinator::DataDir;
use cm_coordinator::admin::{self, AdminRequest};
use cm_coordinator::server::{self, RunConfig};

#[derive(Parser)]
#[command(
    name = "cm-coordinator",
    version,
    about = "CCDS collective manager: registry, publishing, tickets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: the CM root key and the database.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Run the coordinator (writes DATA_DIR/coordinator.addr once listening).
    Run {
        #[arg(long)]
        data_dir: PathBuf,
        /// QUIC listen address.
        #[arg(long, default_value = "/ip4/127.0.0.1/udp/0/quic-v1")]
        listen: overlay::Multiaddr,
        /// Serve the HTTP API (health, nodes, reports as JSON) on this address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Check a node (probe it) after this long without a heartbeat.
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        node_timeout: Duration,
        /// Wait between the first and second probe of a node under check; doubled after each
        /// further failure.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        probe_interval: Duration,
        /// Failed probes before a node is marked offline.
        #[arg(long, default_value_t = 3)]
        probe_attempts: u32,
        /// Let fragments of one segment share a /24 (a lab on one network); never for production.
        #[arg(long)]
        allow_shared_subnet: bool,
    },
    /// List registered nodes (asks the running coordinator).
    Nodes {
        #[arg(long)]
        data_dir: PathBuf,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Manage partners.
    Partner {
        #[command(subcommand)]
        command: PartnerCommand,
    },
    /// Publish a file for a partner; prints the content ID.
    Publish {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        partner: String,
        /// Data fragments per segment (k): any k fragments rebuild a segment.
        #[arg(long, default_value_t = 8)]
        data_shards: u8,
        /// Parity fragments per segment (m): up to m holders may be lost.
        #[arg(long, default_value_t = 4)]
        parity_shards: u8,
        /// Further parity fragments hashed into the manifest but placed only while demand for
        /// the content is high (default: as many as --parity-shards, within 256 in all).
        #[arg(long)]
        spare_shards: Option<u8>,
        /// Segment size (e.g. 8MiB).
        #[arg(long, default_value = "8MiB")]
        segment_size: bytesize::ByteSize,
        file: PathBuf,
    },
    /// Issue a ticket: the right for one client to download one content.
    Ticket {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        partner: String,
        #[arg(long)]
        content: String,
        /// The client's ID, as printed by `ccds-client keygen`.
        #[arg(long)]
        client: String,
        /// How long the ticket is valid.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// Bytes the client may fetch in total (default: twice the encoded size).
        #[arg(long)]
        allowance: Option<bytesize::ByteSize>,
        /// Where to write the ticket file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Inspect published contents.
    Content {
        #[command(subcommand)]
        command: ContentCommand,
    },
    /// List client reports of unreachable nodes and corrupt fragments.
    Reports {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ContentCommand {
    /// A content's layout and redundancy health: fragments per segment held by online nodes.
    Show {
        id: String,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PartnerCommand {
    /// Register a partner and create its signing key.
    Add {
        name: String,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    overlay::logging::init("info,libp2p=warn,sqlx=warn");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cm-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn call(dir: &Path, req: AdminRequest) -> anyhow::Result<serde_json::Value> {
    let data = DataDir::new(dir);
    if !data.root_key().exists() {
        data.load_root()?;
    }
    admin::call(dir, &data.admin_socket(), &req).await
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { data_dir } => {
            let id = server::init(&DataDir::new(&data_dir)).await?;
            println!("{id}");
        }
        Command::Run {
            data_dir,
            listen,
            http,
            node_timeout,
            probe_interval,
            probe_attempts,
            allow_shared_subnet,
        } => {
            if allow_shared_subnet {
                tracing::warn!(
                    "--allow-shared-subnet: fragments of one segment may share a network; one router failing can then lose several"
                );
            }
            let config = RunConfig {
                listen,
                http,
                liveness: cm_coordinator::liveness::LivenessConfig {
                    heartbeat_timeout: node_timeout,
                    probe_attempts: probe_attempts.max(1),
                    probe_backoff: probe_interval,
                    ..Default::default()
                },
                probe_timeout: probe_interval
                    .clamp(Duration::from_millis(500), Duration::from_secs(10)),
                placement: cm_coordinator::placement::PlacementRules {
                    distinct_subnets: !allow_shared_subnet,
                },
            };
            server::run(DataDir::new(&data_dir), config, shutdown_signal()).await?;
        }
        Command::Nodes { data_dir, json } => {
            let nodes = call(&data_dir, AdminRequest::Nodes).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!(
                    "{:<54} {:<7} {:>10} {:>10}",
                    "NODE", "ONLINE", "FRAGMENTS", "USED"
                );
                for n in nodes.as_array().into_iter().flatten() {
                    println!(
                        "{:<54} {:<7} {:>10} {:>10}",
                        n["id"].as_str().unwrap_or("?"),
                        if n["online"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        n["fragments"],
                        bytesize::ByteSize(n["used"].as_u64().unwrap_or(0)).to_string(),
                    );
                }
            }
        }
        Command::Partner {
            command: PartnerCommand::Add { name, data_dir },
        } => {
            let id = server::add_partner(&DataDir::new(&data_dir), &name).await?;
            println!("{id}");
        }
        Command::Publish {
            data_dir,
            partner,
            data_shards,
            parity_shards,
            spare_shards,
            segment_size,
            file,
        } => {
            let spare_shards = spare_shards.unwrap_or_else(|| {
                let room = 256 - (data_shards as usize + parity_shards as usize).min(256);
                parity_shards.min(room.min(255) as u8)
            });
            let path = std::fs::canonicalize(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            if !path.is_file() {
                anyhow::bail!("{} is not a regular file", file.display());
            }
            let segment_size = u32::try_from(segment_size.as_u64())
                .map_err(|_| anyhow::anyhow!("segment size {segment_size} is too large"))?;
            let out = call(
                &data_dir,
                AdminRequest::Publish {
                    partner,
                    path,
                    data_shards,
                    parity_shards,
                    spare_shards,
                    segment_size,
                },
            )
            .await?;
            println!("{}", out["content"].as_str().unwrap_or_default());
        }
        Command::Ticket {
            data_dir,
            partner,
            content,
            client,
            expires,
            allowance,
            out,
        } => {
            let file = call(
                &data_dir,
                AdminRequest::Ticket {
                    partner,
                    content,
                    client,
                    expires_secs: expires.as_secs().max(1),
                    allowance: allowance.map(|a| a.as_u64()),
                },
            )
            .await?;
            let file: overlay::ticket::TicketFile = serde_json::from_value(file)?;
            file.save(&out)?;
        }
        Command::Content {
            command: ContentCommand::Show { id, data_dir, json },
        } => {
            let c = call(&data_dir, AdminRequest::Content { id }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!(
                    "content {}: {} bytes, {} segments, k={} target={} fragments per segment, fewest live in any segment: {}",
                    c["id"].as_str().unwrap_or("?"),
                    c["size"],
                    c["segments"],
                    c["k"],
                    c["target_fragments"],
                    c["min_live_fragments"],
                );
            }
        }
        Command::Reports { data_dir, json } => {
            let reports = call(&data_dir, AdminRequest::Reports).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in reports.as_array().into_iter().flatten() {
                    println!(
                        "{} {} node={} content={} {}",
                        r["at"],
                        r["kind"].as_str().unwrap_or("?"),
                        r["node"].as_str().unwrap_or("?"),
                        r["content"].as_str().unwrap_or("?"),
                        r["detail"].as_str().unwrap_or(""),
                    );
                }
            }
        }
    }
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
