//! `ccds-node`: the CCDS participating node daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytesize::ByteSize;
use ccds_node::config::{IdleFileConfig, RunConfig, StatusPageConfig, UploadConfig};
use ccds_node::owner::{self, OwnerError, OwnerRequest};
use ccds_node::schedule::{Window, WindowConfig, parse_rate};
use ccds_node::{DataDir, InitOptions, StatusView};
use clap::{Args, Parser, Subcommand};
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
        #[arg(long, env = "CCDS_NODE_DATA_DIR")]
        data_dir: PathBuf,
        /// The coordinator's address, ending in /p2p/<CM peer ID>. Repeat it (or separate
        /// addresses with commas) for each coordinator of a collective whose coordinators share
        /// one database (one peer ID): the node reaches whichever answers.
        #[arg(
            long = "coordinator",
            env = "CCDS_NODE_COORDINATOR",
            value_name = "MULTIADDR",
            value_delimiter = ',',
            required = true
        )]
        coordinators: Vec<Multiaddr>,
        /// Disk space for fragments, e.g. "10GiB" or "500MB" [default: 10GiB, or the current
        /// quota when re-initialising].
        #[arg(long)]
        quota: Option<ByteSize>,
    },
    /// Join the collective and serve fragments until interrupted (SIGINT or SIGTERM).
    Run(RunArgs),
    /// Leave the collective and refuse fetches, keeping the daemon running; lasts across
    /// restarts until `resume`.
    Pause {
        /// The node's data directory, as given to `init`.
        #[arg(long, env = "CCDS_NODE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// End a pause: serve fetches and rejoin the collective.
    Resume {
        /// The node's data directory, as given to `init`.
        #[arg(long, env = "CCDS_NODE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Show the node's own view: online or paused, limits in force, recent traffic, pay level,
    /// balance, earnings, last report.
    Status {
        /// The node's data directory, as given to `init`.
        #[arg(long, env = "CCDS_NODE_DATA_DIR")]
        data_dir: PathBuf,
        /// Print one JSON object (amounts in micro-credits) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

/// `ccds-node run`: every setting can also come from the config file (`--config`); a flag or
/// its environment variable wins over the file.
#[derive(Args)]
struct RunArgs {
    /// A TOML config file (see ccds-node/config.example.toml).
    #[arg(long, env = "CCDS_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// The node's data directory, as given to `init`.
    #[arg(long, env = "CCDS_NODE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The QUIC multiaddr to listen on [default: /ip4/127.0.0.1/udp/0/quic-v1].
    #[arg(long, env = "CCDS_NODE_LISTEN")]
    listen: Option<String>,
    /// An address others reach this node at when it is not the listen address (a public
    /// address whose port the router forwards here, a VM's or container's host port), e.g.
    /// /ip4/203.0.113.7/udp/4001/quic-v1; repeat for several (the variable separates them by
    /// commas).
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "CCDS_NODE_ANNOUNCE",
        value_delimiter = ','
    )]
    announce: Vec<String>,
    /// Time between heartbeats to the coordinator, e.g. "30s" or "2m" [default: 30s].
    #[arg(long, env = "CCDS_NODE_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Time between signed work reports to the coordinator, e.g. "24h" or "10s" (one more is
    /// sent at shutdown) [default: 24h].
    #[arg(long, env = "CCDS_NODE_REPORT_INTERVAL", value_parser = humantime::parse_duration)]
    report_interval: Option<Duration>,
    /// Disk space for fragments, e.g. "50GiB"; replaces the quota given to `init`.
    #[arg(long, env = "CCDS_NODE_QUOTA", value_parser = size_arg)]
    quota: Option<String>,
    /// Upload bandwidth for serving fragments, in bytes per second across all clients
    /// together, e.g. "5MiB" or "200KiB" (below 4GiB); 0 means unlimited; outside the
    /// windows when there are any [default: unlimited].
    #[arg(long, value_name = "RATE", env = "CCDS_NODE_UPLOAD_LIMIT", value_parser = rate_arg)]
    upload_limit: Option<String>,
    /// A window of local time with an upload limit of its own, e.g. "08:00-18:00=200KiB" or
    /// "22:00-06:00=unlimited"; repeat for several (the variable separates them by commas).
    #[arg(
        long = "upload-window",
        value_name = "START-END=RATE",
        env = "CCDS_NODE_UPLOAD_WINDOWS",
        value_delimiter = ','
    )]
    upload_windows: Vec<Window>,
    /// Distinct clients served at once; one more is refused as busy [default: 64].
    #[arg(long, env = "CCDS_NODE_MAX_CLIENTS")]
    max_clients: Option<usize>,
    /// Join only while the host is idle enough (measured from /proc/stat), leave when not;
    /// `--idle-gating=false` turns it off even where the config file turns it on
    /// [default: false].
    #[arg(
        long,
        value_name = "BOOL",
        env = "CCDS_NODE_IDLE_GATING",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    idle_gating: Option<bool>,
    /// Percent of CPU time idle over the window at which the node joins [default: 80].
    #[arg(long, value_name = "PERCENT", env = "CCDS_NODE_IDLE_MIN_PERCENT")]
    idle_min_percent: Option<f64>,
    /// Points below the threshold at which the node leaves again [default: 15].
    #[arg(long, value_name = "PERCENT", env = "CCDS_NODE_IDLE_HYSTERESIS")]
    idle_hysteresis: Option<f64>,
    /// The window the idle share is measured over, e.g. "2m" [default: 2m].
    #[arg(long, env = "CCDS_NODE_IDLE_WINDOW", value_parser = humantime::parse_duration)]
    idle_window: Option<Duration>,
    /// Time between readings of the CPU counters [default: a tenth of the window].
    #[arg(long, env = "CCDS_NODE_IDLE_SAMPLE_EVERY", value_parser = humantime::parse_duration)]
    idle_sample_every: Option<Duration>,
    /// Where the CPU counters are read [default: /proc/stat].
    #[arg(long, env = "CCDS_NODE_IDLE_PROC_STAT")]
    idle_proc_stat: Option<PathBuf>,
    /// Where the status page and /metrics listen, a loopback address such as 127.0.0.1:8480,
    /// or "off" [default: 127.0.0.1 on a free port, shown by `ccds-node status`].
    #[arg(long, value_name = "ADDR", env = "CCDS_NODE_STATUS_PAGE")]
    status_page: Option<String>,
}

impl RunArgs {
    /// The settings the flags and variables give.
    fn overrides(self) -> anyhow::Result<RunConfig> {
        let upload = (self.upload_limit.is_some() || !self.upload_windows.is_empty()).then(|| {
            UploadConfig {
                limit: self.upload_limit,
                window: self
                    .upload_windows
                    .iter()
                    .map(|w| WindowConfig {
                        from: w.start.to_string(),
                        to: w.end.to_string(),
                        limit: w.rate.map_or("unlimited".into(), |r| r.get().to_string()),
                    })
                    .collect(),
            }
        });
        let idle = IdleFileConfig {
            enabled: self.idle_gating,
            min_idle_percent: self.idle_min_percent,
            hysteresis_percent: self.idle_hysteresis,
            window: self.idle_window,
            sample_every: self.idle_sample_every,
            proc_stat: self.idle_proc_stat,
        };
        let status_page = match self.status_page.as_deref() {
            None => None,
            Some("off") => Some(StatusPageConfig {
                enabled: Some(false),
                listen: None,
            }),
            Some(addr) => Some(StatusPageConfig {
                enabled: Some(true),
                listen: Some(addr.parse().map_err(|e| {
                    anyhow::anyhow!(
                        "--status-page {addr}: {e} (expected e.g. 127.0.0.1:8480 or off)"
                    )
                })?),
            }),
        };
        Ok(RunConfig {
            data_dir: self.data_dir,
            listen: self.listen,
            announce: self.announce,
            heartbeat_interval: self.heartbeat_interval,
            report_interval: self.report_interval,
            quota: self.quota,
            max_clients: self.max_clients,
            upload,
            idle: (idle != IdleFileConfig::default()).then_some(idle),
            status_page,
        })
    }
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
            coordinators,
            quota,
        } => {
            let id = ccds_node::init(&InitOptions {
                data_dir,
                coordinators,
                quota: quota.map(|q| q.as_u64()),
            })?;
            println!("{id}");
        }
        Command::Run(args) => {
            let file = match &args.config {
                Some(path) => RunConfig::load(path)?,
                None => RunConfig::default(),
            };
            let options = file.overridden_by(args.overrides()?).into_options()?;
            let shutdown = ccds_node::shutdown_signal()?;
            ccds_node::run(options, shutdown).await?;
        }
        Command::Pause { data_dir } => {
            let dir = DataDir::new(data_dir);
            match owner::request(&dir, OwnerRequest::Pause).await {
                Ok(_) => println!(
                    "paused: the node left the collective and refuses fetches until `ccds-node resume`"
                ),
                Err(OwnerError::NotRunning(_)) => {
                    dir.load()?;
                    dir.set_paused(true)?;
                    println!("paused: the node is not running; it will start paused");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Resume { data_dir } => {
            let dir = DataDir::new(data_dir);
            match owner::request(&dir, OwnerRequest::Resume).await {
                Ok(_) => println!("resumed: the node serves fetches and rejoins the collective"),
                Err(OwnerError::NotRunning(_)) => {
                    dir.load()?;
                    dir.set_paused(false)?;
                    println!("resumed: the node is not running; it will join when started");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Status { data_dir, json } => {
            let dir = DataDir::new(data_dir);
            let view: StatusView = match owner::request(&dir, OwnerRequest::Status).await {
                Ok(view) => view,
                Err(OwnerError::NotRunning(_)) => ccds_node::status(&dir)?,
                Err(e) => {
                    eprintln!("warning: {e}; showing the last recorded status");
                    ccds_node::status(&dir)?
                }
            };
            if json {
                println!("{}", serde_json::to_string(&view)?);
            } else {
                print!("{view}");
            }
        }
    }
    Ok(())
}

/// A rate as `--upload-limit` takes it (checked here so the error names the flag).
fn rate_arg(text: &str) -> Result<String, String> {
    parse_rate(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// A size as `--quota` takes it.
fn size_arg(text: &str) -> Result<String, String> {
    text.parse::<ByteSize>().map(|_| text.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `ccds-node run ARGS` gates on idleness when the config file says `file`.
    fn gates(file: &str, args: &[&str]) -> bool {
        let argv = ["ccds-node", "run", "--data-dir", "/n"].iter().chain(args);
        let Command::Run(run) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!("parsed a run command")
        };
        let file = RunConfig::parse(file).unwrap();
        let options = file.overridden_by(run.overrides().unwrap());
        options.into_options().unwrap().idle.is_some()
    }

    #[test]
    fn the_command_line_turns_idle_gating_on_and_off_over_the_file() {
        let (on, off) = ("[idle]\nenabled = true\n", "[idle]\nenabled = false\n");
        assert!(!gates("", &[]));
        assert!(gates(on, &[]));
        assert!(!gates(off, &[]));
        for flag in ["--idle-gating", "--idle-gating=true"] {
            assert!(gates(off, &[flag]), "{flag}");
            assert!(gates("", &[flag]), "{flag}");
        }
        assert!(!gates(on, &["--idle-gating=false"]));
        // A value only after `=`: `--idle-gating false` leaves a stray argument.
        let stray = Cli::try_parse_from(["ccds-node", "run", "--idle-gating", "false"]);
        assert!(stray.is_err());
    }
}
