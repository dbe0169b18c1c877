//! Log setup shared by the three programs: `tracing` output on stderr, filtered by `RUST_LOG` or
//! else by the program's default, either human-readable (coloured only on a terminal) or one
//! JSON object per line for log collectors (`--log-format json` or `CCDS_LOG_FORMAT=json`).

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// Environment variable that picks the log format when no flag does.
pub const FORMAT_ENV: &str = "CCDS_LOG_FORMAT";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event: `timestamp`, `level`, `target`, `fields`, `spans`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "human" | "text" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected human or json"
            )),
        }
    }
}

impl LogFormat {
    /// The format named by [`FORMAT_ENV`], or human when it is unset. An unknown value is
    /// reported on stderr and ignored, since logging is not set up yet.
    pub fn from_env() -> Self {
        match std::env::var(FORMAT_ENV) {
            Ok(v) => v.parse().unwrap_or_else(|e| {
                eprintln!("warning: {FORMAT_ENV}: {e}; logging as human");
                Self::Human
            }),
            Err(_) => Self::Human,
        }
    }
}

/// Installs the global subscriber in the format [`FORMAT_ENV`] names; `default` is the filter
/// used when `RUST_LOG` is unset or invalid.
pub fn init(default: &str) {
    init_with(default, LogFormat::from_env());
}

/// Installs the global subscriber in `format`.
pub fn init_with(default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("Human".parse::<LogFormat>(), Ok(LogFormat::Human));
        assert!(
            "xml"
                .parse::<LogFormat>()
                .unwrap_err()
                .contains("human or json")
        );
    }
}
