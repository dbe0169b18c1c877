//! `ccds-client`: create a client key, download a ticketed content.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use ccds_client::ClientError;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ccds-client",
    version,
    about = "Download content from a CCDS collective"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TOML settings file (see ccds-client/config.example.toml) [default:
    /// $XDG_CONFIG_HOME/ccds/client.toml or ~/.config/ccds/client.toml, when present].
    #[arg(long, global = true, env = "CCDS_CLIENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log lines as readable text or as one JSON object per line (`RUST_LOG` sets the filter).
    #[arg(long, global = true, env = overlay::logging::FORMAT_ENV, default_value = "human")]
    log_format: overlay::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Create a client key and print the client ID to give to the seller.
    Keygen {
        /// Where to write the key (never overwritten).
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
    },
    /// Download the content of a ticket (resumes an interrupted download of the same content).
    Get {
        /// The client key the ticket was issued to [default: `key` in the config file].
        #[arg(long, env = "CCDS_CLIENT_KEY", value_name = "KEYFILE")]
        key: Option<PathBuf>,
        /// The ticket file bought from the seller.
        #[arg(long, value_name = "FILE")]
        ticket: PathBuf,
        /// Where to write the content.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Most bytes per second to receive, e.g. 500KiB or 2MiB [default: `limit_rate` in the
        /// config file, else unlimited].
        #[arg(long, env = "CCDS_CLIENT_LIMIT_RATE", value_name = "RATE", value_parser = ccds_client::parse_rate)]
        limit_rate: Option<u64>,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// Never draw a progress bar (also `progress = false` in the config file).
        #[arg(long, env = "CCDS_CLIENT_NO_PROGRESS")]
        no_progress: bool,
    },
}

fn main() {
    return_large_buffers_to_the_os();
    let cli = Cli::parse();
    overlay::logging::init_with("warn,ccds_client=info", cli.log_format);
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        let interrupted = matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::Interrupted { .. } | ClientError::InterruptedEarly)
        );
        // 130: the shell's code for a process stopped by SIGINT.
        std::process::exit(if interrupted { 130 } else { 1 });
    }
}

/// Makes glibc serve every allocation of 256 KiB or more with its own mapping, returned to the
/// system when freed. By default glibc raises that threshold to the largest block freed so far,
/// so fragment and segment buffers land in its heaps, where fragmentation let a download's
/// peak RSS grow with the content's size (1 GiB: 115 MiB; 10 GiB: 156 MiB). The buffers the
/// download reuses are pooled, so this costs no extra system calls on the hot path.
fn return_large_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a tunable; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Completes on SIGINT (ctrl-c) or SIGTERM.
async fn stop_requested() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The client's settings file: defaults for `get`, below its flags and environment variables.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ClientConfig {
    /// The client key file used when `--key` is not given.
    key: Option<PathBuf>,
    /// Most bytes per second to receive, e.g. "2MiB"; absent: unlimited.
    limit_rate: Option<String>,
    /// Draw a progress bar on a terminal.
    progress: Option<bool>,
}

impl ClientConfig {
    /// The file named by `--config`, or the per-user default when it exists, or none.
    fn load(explicit: Option<&std::path::Path>) -> Result<Self> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match default_config_path().filter(|p| p.exists()) {
                Some(p) => p,
                None => return Ok(Self::default()),
            },
        };
        let config: Self = overlay::config::load_toml(&path).map_err(anyhow::Error::msg)?;
        if let Some(rate) = &config.limit_rate {
            ccds_client::parse_rate(rate).map_err(|e| {
                anyhow::anyhow!("invalid config {}: limit_rate: {e}", path.display())
            })?;
        }
        Ok(config)
    }
}

/// `$XDG_CONFIG_HOME/ccds/client.toml`, or `~/.config/ccds/client.toml`.
fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ccds").join("client.toml"))
}

fn run(cli: Cli) -> Result<()> {
    let config = ClientConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Keygen { out } => {
            let peer = ccds_client::keygen(&out)?;
            println!("{peer}");
        }
        Command::Get {
            key,
            ticket,
            out,
            limit_rate,
            json,
            no_progress,
        } => {
            let key = key.or(config.key).ok_or_else(|| {
                anyhow::anyhow!(
                    "no client key: give --key KEYFILE, set CCDS_CLIENT_KEY, or set `key` in the config file"
                )
            })?;
            let mut opts = ccds_client::GetOptions::new(key, ticket, out);
            opts.limit_rate = match limit_rate {
                Some(rate) => Some(rate),
                None => config
                    .limit_rate
                    .as_deref()
                    .map(ccds_client::parse_rate)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("limit_rate: {e}"))?,
            };
            opts.progress =
                !no_progress && config.progress.unwrap_or(true) && std::io::stderr().is_terminal();
            let runtime = tokio::runtime::Runtime::new()?;
            let summary = runtime.block_on(ccds_client::get_until(&opts, stop_requested()))?;
            eprintln!("{summary}");
            if json {
                println!("{}", summary.to_json());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let config: ClientConfig =
            overlay::config::parse_toml(include_str!("../config.example.toml")).unwrap();
        assert_eq!(
            config.key,
            Some(PathBuf::from("/home/me/.config/ccds/client.key"))
        );
        assert_eq!(
            config.limit_rate.as_deref().map(ccds_client::parse_rate),
            Some(Ok(2 << 20))
        );
        assert_eq!(config.progress, Some(true));
        assert!(
            overlay::config::parse_toml::<ClientConfig>("keys = 'x'").is_err(),
            "typos are errors"
        );
    }
}
