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
        /// The client key the ticket was issued to.
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
        /// The ticket file bought from the seller.
        #[arg(long, value_name = "FILE")]
        ticket: PathBuf,
        /// Where to write the content.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Most bytes per second to receive, e.g. 500KiB or 2MiB.
        #[arg(long, value_name = "RATE", value_parser = ccds_client::parse_rate)]
        limit_rate: Option<u64>,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// Never draw a progress bar.
        #[arg(long)]
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

fn run(cli: Cli) -> Result<()> {
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
            let mut opts = ccds_client::GetOptions::new(key, ticket, out);
            opts.limit_rate = limit_rate;
            opts.progress = !no_progress && std::io::stderr().is_terminal();
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
