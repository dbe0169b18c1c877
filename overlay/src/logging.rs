//! Log setup shared by the three programs: human-readable `tracing` output on stderr, coloured
//! only on a terminal, filtered by `RUST_LOG` or else by the program's default.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default` is used when `RUST_LOG` is unset or invalid.
pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .init();
}
