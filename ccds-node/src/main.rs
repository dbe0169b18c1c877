//! `ccds-node`: the CCDS participating node daemon.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytesize::ByteSize;
use ccds_node::daemon::DEFAULT_LISTEN;
use ccds_node::{DataDir, InitOptions, Limits, RunOptions};
use clap::{Parser, Subcommand};
use overlay::Multiaddr;

/// Lends this machine's idle disk and upload bandwidth to a CCDS collective.
#[derive(Parser)]
#[command(name = "ccds-node", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as readable text or as one JSON object per line (`RUST_LOG` sets the filter).
    #[arg(long, global = true, env = overlay::logging::FORMAT_ENV, default_value = "human")]
    log_format: overlay::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Create the node's key and config, pinning the coordinator; prints the node's peer ID.
    Init {
        /// The node's data directory (created if needed).
        #[arg(long)]
        data_dir: PathBuf,
        /// The coordinator's address, ending in /p2p/<CM peer ID>.
        #[arg(long)]
        coordinator: Multiaddr,
        /// Disk space for fragments, e.g. "10GiB" or "500MB" [default: 10GiB, or the current
        /// quota when re-initialising].
        #[arg(long)]
        quota: Option<ByteSize>,
    },
    /// Join the collective and serve fragments until interrupted (SIGINT or SIGTERM).
    Run {
        /// The node's data directory, as given to `init`.
        #[arg(long)]
        data_dir: PathBuf,
        /// The QUIC multiaddr to listen on.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: Multiaddr,
        /// Time between heartbeats to the coordinator, e.g. "30s" or "2m".
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        heartbeat_interval: Duration,
        /// Time between signed work reports to the coordinator, e.g. "24h" or "10s" (one more
        /// is sent at shutdown).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        report_interval: Duration,
        /// Upload bandwidth for serving fragments, in bytes per second across all clients
        /// together, e.g. "5MiB" or "200KiB" (below 4GiB); 0 means unlimited [default:
        /// unlimited].
        #[arg(long, value_name = "RATE", value_parser = parse_rate)]
        upload_limit: Option<u32>,
    },
    /// Show the node's own view: online, pay level, balance, earnings, last report.
    Status {
        /// The node's data directory, as given to `init`.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print one JSON object (amounts in micro-credits) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    overlay::logging::init_with("info,libp2p=warn", cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            coordinator,
            quota,
        } => {
            let id = ccds_node::init(&InitOptions {
                data_dir,
                coordinator,
                quota: quota.map(|q| q.as_u64()),
            })?;
            println!("{id}");
        }
        Command::Run {
            data_dir,
            listen,
            heartbeat_interval,
            report_interval,
            upload_limit,
        } => {
            let shutdown = ccds_node::shutdown_signal()?;
            ccds_node::run(
                RunOptions {
                    listen,
                    heartbeat_interval,
                    report_interval,
                    limits: Limits {
                        upload_limit: upload_limit.and_then(NonZeroU32::new),
                        ..Limits::default()
                    },
                    ..RunOptions::new(data_dir)
                },
                shutdown,
            )
            .await?;
        }
        Command::Status { data_dir, json } => {
            let view = ccds_node::status(&DataDir::new(data_dir))?;
            if json {
                println!("{}", serde_json::to_string(&view)?);
            } else {
                print!("{view}");
            }
        }
    }
    Ok(())
}

/// A rate in bytes per second, with the sizes `--quota` takes; the limiter counts in `u32`.
fn parse_rate(text: &str) -> Result<u32, String> {
    let size: ByteSize = text.parse()?;
    u32::try_from(size.as_u64()).map_err(|_| {
        format!("{size} per second is too much: a limit must be below 4GiB; leave the flag out for no limit")
    })
}

/// The error and its causes on one line, skipping causes its message already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}
