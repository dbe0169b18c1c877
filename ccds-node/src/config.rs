//! `ccds-node run --config FILE`: the node's run settings as TOML.
//!
//! Every setting can also be given as a flag of `ccds-node run` or as a `CCDS_NODE_*`
//! environment variable; a flag or variable overrides the file, and the file overrides the
//! defaults. `ccds-node/config.example.toml` documents every field. A field the node does not
//! know is an error that names it, so a misspelt limit is never silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use overlay::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::daemon::{DEFAULT_LISTEN, IdleOptions, RunOptions};
use crate::idle::IdleConfig;
use crate::schedule::{Schedule, ScheduleError, Window, WindowConfig, parse_rate};
use crate::serve::{DEFAULT_MAX_CLIENTS, Limits};

/// Largest config file read.
const MAX_CONFIG: u64 = 256 * 1024;

/// Where the status page listens unless told otherwise: loopback, a port picked by the OS
/// (`ccds-node status` shows the address).
pub const DEFAULT_STATUS_PAGE: &str = "127.0.0.1:0";

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the config file {path} is larger than {MAX_CONFIG} bytes")]
    TooLarge { path: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error(
        "no data directory: give --data-dir, CCDS_NODE_DATA_DIR or data_dir in the config file"
    )]
    NoDataDir,
    #[error("`{value}` is not a valid {what}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("upload schedule: {0}")]
    Schedule(#[from] ScheduleError),
}

/// The settings of `ccds-node run`, as the config file, flags and environment give them.
/// Absent fields take the defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The node's data directory, as given to `ccds-node init`.
    pub data_dir: Option<PathBuf>,
    /// The QUIC multiaddr to listen on [default: /ip4/127.0.0.1/udp/0/quic-v1].
    pub listen: Option<String>,
    /// Addresses others reach this node at when they are not the listen address: a public
    /// address whose port the router forwards here, a VM's forwarded host port, a container's
    /// published port, e.g. "/ip4/203.0.113.7/udp/4001/quic-v1" [default: none].
    #[serde(default)]
    pub announce: Vec<String>,
    /// Time between heartbeats to the coordinator, e.g. "30s" [default: 30s].
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// Time between signed work reports to the coordinator, e.g. "24h" [default: 24h].
    #[serde(default, with = "humantime_serde")]
    pub report_interval: Option<Duration>,
    /// Disk space for fragments, e.g. "50GiB"; replaces the quota given to `init`
    /// [default: the quota given to `init`].
    pub quota: Option<String>,
    /// Distinct clients served at once; one more is refused as busy [default: 64].
    pub max_clients: Option<usize>,
    /// Upload bandwidth: a rate, and time-of-day windows with rates of their own.
    pub upload: Option<UploadConfig>,
    /// Idle gating: join the collective only while this machine is idle.
    pub idle: Option<IdleFileConfig>,
    /// The local status page and Prometheus `/metrics`.
    pub status_page: Option<StatusPageConfig>,
}

/// `[upload]`: the upload limit, across all clients together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Bytes per second outside every window, e.g. "5MiB", or "unlimited" [default:
    /// unlimited].
    pub limit: Option<String>,
    /// Windows of local time with a rate of their own (`[[upload.window]]`); they may not
    /// overlap, and one whose end is before its start runs past midnight.
    #[serde(default)]
    pub window: Vec<WindowConfig>,
}

/// `[idle]`: idle gating (off unless `enabled`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleFileConfig {
    /// Join only while the host is idle enough, and leave when it is not [default: false].
    pub enabled: Option<bool>,
    /// Percent of CPU time idle over the window at which the node joins [default: 80].
    pub min_idle_percent: Option<f64>,
    /// How many points below `min_idle_percent` the idle share must fall before the node
    /// leaves, so that it does not flap [default: 15].
    pub hysteresis_percent: Option<f64>,
    /// The window the idle share is measured over, e.g. "2m" [default: 2m].
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// Time between two readings of the CPU counters [default: a tenth of the window, at
    /// least 100ms].
    #[serde(default, with = "humantime_serde")]
    pub sample_every: Option<Duration>,
    /// Where the CPU counters are read [default: /proc/stat].
    pub proc_stat: Option<PathBuf>,
}

/// `[status_page]`: the owner's page and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusPageConfig {
    /// Serve the page at all [default: true].
    pub enabled: Option<bool>,
    /// Loopback address and port, e.g. "127.0.0.1:8480"; port 0 picks one, which
    /// `ccds-node status` shows [default: 127.0.0.1:0].
    pub listen: Option<SocketAddr>,
}

/// An announced address: a QUIC multiaddr with a specific IP or DNS name and port, without a
/// `/p2p/` suffix (the node's own ID is implied).
fn parse_announce(text: &str) -> Result<Multiaddr, ConfigError> {
    use overlay::multiaddr::Protocol;
    let invalid = |reason: &str| ConfigError::Invalid {
        what: "announce address",
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let addr: Multiaddr = text
        .parse()
        .map_err(|e: overlay::multiaddr::Error| invalid(&e.to_string()))?;
    let parts: Vec<Protocol> = addr.iter().collect();
    match parts.as_slice() {
        [ip, Protocol::Udp(port), Protocol::QuicV1] => {
            let unspecified = match ip {
                Protocol::Ip4(a) => a.is_unspecified(),
                Protocol::Ip6(a) => a.is_unspecified(),
                Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) => false,
                _ => return Err(invalid("expected /ip4/…, /ip6/… or /dns…/ first")),
            };
            if unspecified || *port == 0 {
                return Err(invalid(
                    "others cannot dial an unspecified address or port 0",
                ));
            }
            Ok(addr)
        }
        _ => Err(invalid(
            "expected /ip4/A.B.C.D/udp/PORT/quic-v1 (or /ip6/…, without /p2p/…)",
        )),
    }
}

impl RunConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut text = String::new();
        file.take(MAX_CONFIG + 1)
            .read_to_string(&mut text)
            .map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
        if text.len() as u64 > MAX_CONFIG {
            return Err(ConfigError::TooLarge { path: shown });
        }
        Self::parse(&text).map_err(|reason| ConfigError::Parse {
            path: shown,
            reason,
        })
    }

    /// Parses config text; the error names the offending field and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    /// These settings, with every one that `over` gives replacing ours.
    pub fn overridden_by(self, over: RunConfig) -> RunConfig {
        let upload = match (self.upload, over.upload) {
            (Some(mine), Some(theirs)) => Some(UploadConfig {
                limit: theirs.limit.or(mine.limit),
                window: if theirs.window.is_empty() {
                    mine.window
                } else {
                    theirs.window
                },
            }),
            (mine, theirs) => theirs.or(mine),
        };
        let idle = match (self.idle, over.idle) {
            (Some(mine), Some(theirs)) => Some(IdleFileConfig {
                enabled: theirs.enabled.or(mine.enabled),
                min_idle_percent: theirs.min_idle_percent.or(mine.min_idle_percent),
                hysteresis_percent: theirs.hysteresis_percent.or(mine.hysteresis_percent),
                window: theirs.window.or(mine.window),
                sample_every: theirs.sample_every.or(mine.sample_every),
                proc_stat: theirs.proc_stat.or(mine.proc_stat),
            }),
            (mine, theirs) => theirs.or(mine),
        };
        let status_page = match (self.status_page, over.status_page) {
            (Some(mine), Some(theirs)) => Some(StatusPageConfig {
                enabled: theirs.enabled.or(mine.enabled),
                listen: theirs.listen.or(mine.listen),
            }),
            (mine, theirs) => theirs.or(mine),
        };
        RunConfig {
            data_dir: over.data_dir.or(self.data_dir),
            listen: over.listen.or(self.listen),
            announce: if over.announce.is_empty() {
                self.announce
            } else {
                over.announce
            },
            heartbeat_interval: over.heartbeat_interval.or(self.heartbeat_interval),
            report_interval: over.report_interval.or(self.report_interval),
            quota: over.quota.or(self.quota),
            max_clients: over.max_clients.or(self.max_clients),
            upload,
            idle,
            status_page,
        }
    }

    /// The daemon's options, defaults filled in, every value checked.
    pub fn into_options(self) -> Result<RunOptions, ConfigError> {
        let data_dir = self.data_dir.ok_or(ConfigError::NoDataDir)?;
        let mut options = RunOptions::new(data_dir);
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        options.listen = listen
            .parse::<Multiaddr>()
            .map_err(|e| ConfigError::Invalid {
                what: "listen address",
                value: listen.to_string(),
                reason: e.to_string(),
            })?;
        options.announce = self
            .announce
            .iter()
            .map(|a| parse_announce(a))
            .collect::<Result<_, _>>()?;
        if let Some(every) = self.heartbeat_interval {
            options.heartbeat_interval = every;
        }
        if let Some(every) = self.report_interval {
            options.report_interval = every;
        }
        options.quota = self
            .quota
            .map(|q| {
                q.parse::<ByteSize>()
                    .map(|size| size.as_u64())
                    .map_err(|reason| ConfigError::Invalid {
                        what: "quota",
                        value: q.clone(),
                        reason,
                    })
            })
            .transpose()?;
        options.limits = Limits {
            max_clients: self.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS),
            ..Limits::default()
        };
        if options.limits.max_clients == 0 {
            return Err(ConfigError::Invalid {
                what: "max_clients",
                value: "0".into(),
                reason: "at least one client must be served; pause the node instead".into(),
            });
        }
        let upload = self.upload.unwrap_or_default();
        let default_rate = upload
            .limit
            .as_deref()
            .map(parse_rate)
            .transpose()?
            .flatten();
        let windows = upload
            .window
            .iter()
            .map(Window::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        options.schedule = Schedule::new(default_rate, windows)?;
        let idle = self.idle.unwrap_or_default();
        if idle.enabled.unwrap_or(false) {
            let window = idle.window.unwrap_or(Duration::from_secs(120));
            let config = IdleConfig {
                min_idle: idle.min_idle_percent.unwrap_or(80.0) / 100.0,
                hysteresis: idle.hysteresis_percent.unwrap_or(15.0) / 100.0,
                window,
                sample_every: idle
                    .sample_every
                    .unwrap_or((window / 10).max(Duration::from_millis(100))),
            };
            config.check().map_err(|reason| ConfigError::Invalid {
                what: "idle gating setting",
                value: format!(
                    "{}% idle, {}% hysteresis, {:?} window",
                    config.min_idle * 100.0,
                    config.hysteresis * 100.0,
                    config.window
                ),
                reason,
            })?;
            options.idle = Some(IdleOptions {
                config,
                proc_stat: idle.proc_stat.unwrap_or_else(|| "/proc/stat".into()),
            });
        }
        let page = self.status_page.unwrap_or_default();
        if page.enabled.unwrap_or(true) {
            let addr = page.listen.unwrap_or_else(|| {
                DEFAULT_STATUS_PAGE
                    .parse()
                    .expect("the default status page address is valid")
            });
            options.status_page = Some(addr);
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn the_example_config_parses_and_means_what_it_says() {
        let text = include_str!("../config.example.toml");
        let config = RunConfig::parse(text).unwrap();
        let options = config.into_options().unwrap();
        assert_eq!(options.quota, Some(50 * (1 << 30)));
        assert_eq!(options.limits.max_clients, 32);
        assert_eq!(
            options.schedule.rate_at(9 * 60),
            NonZeroU32::new(200 * 1024)
        );
        assert_eq!(options.schedule.rate_at(20 * 60), NonZeroU32::new(5 << 20));
        assert!(options.idle.is_none(), "idle gating is off by default");
        assert_eq!(options.status_page, Some("127.0.0.1:8480".parse().unwrap()));
    }

    #[test]
    fn unknown_fields_are_errors_that_name_them() {
        for (text, field) in [
            ("max_client = 3\n", "max_client"),
            ("[upload]\nlimits = \"1MiB\"\n", "limits"),
            (
                "[[upload.window]]\nfrom = \"08:00\"\nto = \"09:00\"\nlimit = \"1KiB\"\nrate = 1\n",
                "rate",
            ),
            ("[idle]\nthreshold = 50\n", "threshold"),
        ] {
            let err = RunConfig::parse(text).unwrap_err();
            assert!(err.contains(&format!("unknown field `{field}`")), "{err}");
        }
    }

    #[test]
    fn flags_override_the_file_field_by_field() {
        let file = RunConfig::parse(
            "data_dir = \"/srv/node\"\nmax_clients = 8\n[upload]\nlimit = \"1MiB\"\n\
             [[upload.window]]\nfrom = \"08:00\"\nto = \"18:00\"\nlimit = \"100KiB\"\n\
             [idle]\nenabled = true\nwindow = \"10s\"\n",
        )
        .unwrap();
        let flags = RunConfig {
            max_clients: Some(2),
            upload: Some(UploadConfig {
                limit: Some("2MiB".into()),
                window: vec![],
            }),
            idle: Some(IdleFileConfig {
                min_idle_percent: Some(50.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = file.overridden_by(flags).into_options().unwrap();
        assert_eq!(options.data_dir, PathBuf::from("/srv/node"));
        assert_eq!(options.limits.max_clients, 2);
        assert_eq!(options.schedule.rate_at(0), NonZeroU32::new(2 << 20));
        // The file's window stays: the flags gave none.
        assert_eq!(
            options.schedule.rate_at(9 * 60),
            NonZeroU32::new(100 * 1024)
        );
        let idle = options.idle.unwrap();
        assert_eq!(idle.config.min_idle, 0.5);
        assert_eq!(idle.config.window, Duration::from_secs(10));
        assert_eq!(idle.config.sample_every, Duration::from_secs(1));
        assert_eq!(idle.proc_stat, PathBuf::from("/proc/stat"));
    }

    #[test]
    fn announced_addresses_come_from_the_flags_or_else_the_file() {
        let file = RunConfig::parse(
            "data_dir = \"/n\"\nannounce = [\"/ip4/203.0.113.7/udp/4001/quic-v1\", \
             \"/dns4/node.example.net/udp/4001/quic-v1\"]\n",
        )
        .unwrap();
        let options = file
            .clone()
            .overridden_by(RunConfig::default())
            .into_options()
            .unwrap();
        assert_eq!(options.announce.len(), 2);
        assert_eq!(
            options.announce[1].to_string(),
            "/dns4/node.example.net/udp/4001/quic-v1"
        );
        let flags = RunConfig {
            announce: vec!["/ip6/2001:db8::7/udp/4002/quic-v1".into()],
            ..Default::default()
        };
        let options = file.overridden_by(flags).into_options().unwrap();
        assert_eq!(
            options.announce,
            vec![
                "/ip6/2001:db8::7/udp/4002/quic-v1"
                    .parse::<Multiaddr>()
                    .unwrap()
            ]
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let options = |text: &str| {
            RunConfig::parse(&format!("data_dir = \"/n\"\n{text}"))
                .unwrap()
                .into_options()
        };
        assert!(matches!(options(""), Ok(RunOptions { idle: None, .. })));
        assert!(matches!(
            RunConfig::default().into_options(),
            Err(ConfigError::NoDataDir)
        ));
        let err = options("quota = \"lots\"").unwrap_err();
        assert!(err.to_string().contains("quota"), "{err}");
        let err = options("max_clients = 0").unwrap_err();
        assert!(err.to_string().contains("max_clients"), "{err}");
        let err = options(
            "[[upload.window]]\nfrom = \"22:00\"\nto = \"06:00\"\nlimit = \"1MiB\"\n\
             [[upload.window]]\nfrom = \"05:00\"\nto = \"07:00\"\nlimit = \"1MiB\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
        let err = options("[idle]\nenabled = true\nmin_idle_percent = 120\n").unwrap_err();
        assert!(err.to_string().contains("threshold"), "{err}");
        let err = options("listen = \"nowhere\"").unwrap_err();
        assert!(err.to_string().contains("listen address"), "{err}");
        for bad in [
            "nowhere",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
            "/ip4/203.0.113.7/udp/0/quic-v1",
            "/ip4/203.0.113.7/tcp/4001",
            "/ip4/203.0.113.7/udp/4001/quic-v1/p2p/12D3KooWCbnfxmTA19TbsfTqeimhZJYsiEJbYfyb1HRU56wLmHAV",
        ] {
            let err = options(&format!("announce = [\"{bad}\"]")).unwrap_err();
            assert!(err.to_string().contains("announce address"), "{bad}: {err}");
        }
        assert!(RunConfig::parse("heartbeat_interval = \"soon\"\n").is_err());
    }
}
