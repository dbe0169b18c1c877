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
    /// Log lines as readable text or as one JSON object per line (`RUST_LOG` sets the filter).
    #[arg(long, global = true, env = overlay::logging::FORMAT_ENV, default_value = "human")]
    log_format: overlay::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: the CM root key and the database.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// The coordinator's database, as `run --database-url`: created or migrated now, so a
        /// wrong URL shows at once [default: SQLite in the data directory].
        #[arg(long, env = "CCDS_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Run the coordinator (writes DATA_DIR/coordinator.addr once listening). Every setting
    /// may also come from a TOML file (--config); a flag given here wins over the file.
    Run {
        #[arg(long)]
        data_dir: PathBuf,
        /// TOML file with the settings below (same names, `-` as `_`), e.g. `repair_delay = "10m"`.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: RunSettings,
    },
    /// List registered nodes (asks the running coordinator).
    Nodes {
        #[arg(long)]
        data_dir: PathBuf,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Simulate a collective of simulated nodes over virtual time through the coordinator's
    /// own liveness, placement and repair code; writes tables, a JSON summary and SVG charts
    /// into --out. The same configuration and seed always give the same files.
    Simulate {
        /// TOML configuration (see `--print-config` for every field and its default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seed of the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory (created if missing).
        #[arg(long, required_unless_present = "print_config")]
        out: Option<PathBuf>,
        /// Nodes at the start (overrides the file).
        #[arg(long)]
        nodes: Option<u32>,
        /// Simulated days (overrides the file).
        #[arg(long)]
        days: Option<u32>,
        /// Print the configuration that would run (defaults filled in) and exit.
        #[arg(long)]
        print_config: bool,
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
        /// What the client paid, credits (default: the coordinator's price per GB of allowance).
        #[arg(long)]
        price: Option<f64>,
        /// Where to write the ticket file.
        #[arg(long)]
        out: PathBuf,
        /// Sign with the partner's key without recording the sale, as a partner selling
        /// offline does; the coordinator pays for work under it only once the sales record
        /// (`--sales-record`) is imported with `sales import`.
        #[arg(long)]
        offline: bool,
        /// With --offline: append the ticket's sales record (one JSON line) to this file.
        #[arg(long, requires = "offline")]
        sales_record: Option<PathBuf>,
        /// With --offline: the coordinator's database, as `run --database-url` [default: SQLite
        /// in the data directory].
        #[arg(long, env = "CCDS_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Reconcile node claims against receipts, sales, completions, placements and audits now,
    /// and settle pay; prints the verdict counts.
    Reconcile {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A node's account: level, balance, held earnings, audits, verdicts.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Every node's balance and held earnings, and the collective's own accounts.
    Ledger {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Pay out every positive balance for a period (once per period) and write the statement.
    Payout {
        #[arg(long)]
        data_dir: PathBuf,
        /// The period's name, e.g. 2026-11.
        #[arg(long)]
        period: String,
        /// Where to write the statement (CSV: node, amount in micro-credits and credits, held).
        #[arg(long)]
        out: PathBuf,
    },
    /// API tokens for partners and operators (asks the running coordinator).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Sales records uploaded by partners.
    Sales {
        #[command(subcommand)]
        command: SalesCommand,
    },
    /// The newest reconciliation verdicts with their evidence.
    Verdicts {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
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
    /// The coordinators sharing this database, and which one runs repairs and audits.
    Cluster {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The coordinator's database.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Fragments rebuilt by repair or added for demand, with the traffic they cost.
    Repairs {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A partner's demand hint: more distinct fragments of a content for a while.
    Demand {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        content: String,
        /// Demand units, counted like tickets issued (see `run --demand-per-fragment`).
        #[arg(long)]
        level: u64,
        /// How long the hint holds.
        #[arg(long = "for", default_value = "1h", value_parser = humantime::parse_duration)]
        duration: Duration,
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
enum NodeCommand {
    /// One node's account.
    Show {
        id: String,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print its secret (shown this once). A partner token (--partner) gets
    /// every `partner:*` scope unless --scope names some; an operator token needs --scope.
    Create {
        #[arg(long)]
        data_dir: PathBuf,
        /// What the token is for, e.g. "acme publishing pipeline".
        #[arg(long)]
        label: String,
        /// The partner the token acts for.
        #[arg(long)]
        partner: Option<String>,
        /// A scope to grant (repeatable): admin, operator:read, partner:publish,
        /// partner:tickets, partner:sales, partner:demand, partner:read.
        #[arg(long = "scope")]
        scopes: Vec<cm_coordinator::auth::Scope>,
        /// Print the token's record as JSON (with its secret) instead of the secret alone.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once.
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SalesCommand {
    /// Record tickets a partner signed offline as sold (a file of JSON lines, as written by
    /// `ticket --offline --sales-record`); a record imported twice counts once.
    Import {
        #[arg(long)]
        data_dir: PathBuf,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Copy the SQLite database into a new, empty PostgreSQL database, all or nothing (the
    /// coordinator must be stopped); then start it with `run --database-url`.
    Copy {
        #[arg(long)]
        data_dir: PathBuf,
        /// The PostgreSQL database to fill: postgres://user:password@host:port/database. It must
        /// exist and hold no data.
        #[arg(long, env = "CCDS_DATABASE_URL", hide_env_values = true)]
        to: String,
        /// The SQLite database to copy, as sqlite://PATH [default: the data directory's].
        #[arg(long)]
        from: Option<String>,
        /// Print the summary as JSON.
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
        /// The coordinator's database, as `run --database-url` [default: SQLite in the data
        /// directory].
        #[arg(long, env = "CCDS_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    overlay::logging::init_with("info,libp2p=warn,sqlx=warn", cli.log_format);
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
    admin::ApiClient::for_data_dir(dir)?.call(req).await
}

/// Settings of `cm-coordinator run`: flags, then `CCDS_CM_*` environment variables, then the
/// `--config` file, then the defaults (the first that sets a value wins). `config.example.toml`
/// in the crate documents every field.
#[derive(clap::Args, serde::Deserialize, Default, Debug)]
#[serde(default, deny_unknown_fields)]
struct RunSettings {
    /// The database: postgres://user:password@host:port/database to run on PostgreSQL (several
    /// coordinators may share one), or sqlite://path [default: SQLite in the data directory].
    #[arg(long, env = "CCDS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// QUIC listen address [default: /ip4/127.0.0.1/udp/0/quic-v1].
    #[arg(long, env = "CCDS_CM_LISTEN")]
    listen: Option<overlay::Multiaddr>,
    /// Serve the HTTP API (health, nodes, reports as JSON) on this address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "CCDS_CM_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// Check a node (probe it) after this long without a heartbeat [default: 90s].
    #[arg(long, env = "CCDS_CM_NODE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    node_timeout: Option<Duration>,
    /// Wait between the first and second probe of a node under check; doubled after each
    /// further failure [default: 5s].
    #[arg(long, env = "CCDS_CM_PROBE_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    probe_interval: Option<Duration>,
    /// With several coordinators on one database: how often each reads the others' nodes,
    /// placements and the maintenance lease [default: 5s].
    #[arg(long, env = "CCDS_CM_CLUSTER_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    cluster_interval: Option<Duration>,
    /// A coordinator silent this long is gone: the others close its nodes' sessions and take
    /// over repairs and audits [default: 30s, at least three cluster intervals].
    #[arg(long, env = "CCDS_CM_COORDINATOR_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    coordinator_timeout: Option<Duration>,
    /// Failed probes before a node is marked offline [default: 3].
    #[arg(long, env = "CCDS_CM_PROBE_ATTEMPTS")]
    probe_attempts: Option<u32>,
    /// Let fragments of one segment share a /24 (a lab on one network); never for production.
    #[arg(long, env = "CCDS_CM_ALLOW_SHARED_SUBNET")]
    allow_shared_subnet: bool,
    /// How long a node may stay offline before its fragments are rebuilt elsewhere; a node
    /// back sooner costs nothing [default: 15m].
    #[arg(long, env = "CCDS_CM_REPAIR_DELAY", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    repair_delay: Option<Duration>,
    /// Repair a segment when at most this many of its parity fragments remain
    /// (0 ..= m-1; default: m/2).
    #[arg(long, env = "CCDS_CM_REPAIR_THRESHOLD")]
    repair_threshold: Option<u8>,
    /// How often segments are checked for repair and demand [default: 30s, at most the
    /// repair delay].
    #[arg(long, env = "CCDS_CM_REPAIR_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    repair_interval: Option<Duration>,
    /// Segments rebuilt at once [default: 4].
    #[arg(long, env = "CCDS_CM_REPAIR_CONCURRENCY")]
    repair_concurrency: Option<usize>,
    /// Demand (tickets issued, downloads in flight, partner hints, slow reports) counts over
    /// this window [default: 1h].
    #[arg(long, env = "CCDS_CM_DEMAND_WINDOW", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    demand_window: Option<Duration>,
    /// Demand units per extra parity fragment placed for a content [default: 10].
    #[arg(long, env = "CCDS_CM_DEMAND_PER_FRAGMENT")]
    demand_per_fragment: Option<u64>,
    /// Reconcile node claims and settle pay this often (0s: only on demand); `reconcile` runs
    /// one at any time [default: 1d].
    #[arg(long, env = "CCDS_CM_RECONCILE_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    reconcile_interval: Option<Duration>,
    /// Mean time between two unannounced storage audits of one node (exponentially
    /// distributed, so never predictable; 0s: no audits) [default: 6h].
    #[arg(long, env = "CCDS_CM_AUDIT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    audit_interval: Option<Duration>,
    /// Price of a ticket per GB of allowance when `ticket --price` is not given, credits
    /// [default: 3].
    #[arg(long, env = "CCDS_CM_TICKET_PRICE_PER_GB")]
    ticket_price_per_gb: Option<f64>,
    /// The pay policy (`[pay]` section of the config file only).
    #[arg(skip)]
    pay: Option<cm_coordinator::policy::PayPolicy>,
    /// Reconciliation tunables (`[reconcile]` section of the config file only).
    #[arg(skip)]
    reconcile: Option<cm_coordinator::reconcile::ReconcileConfig>,
}

impl RunSettings {
    /// Flags over the file over the defaults.
    fn merge(self, file: RunSettings) -> anyhow::Result<RunConfig> {
        use cm_coordinator::rebuild::RebuildConfig;
        use cm_coordinator::repair::RepairConfig;
        let allow_shared_subnet = self.allow_shared_subnet || file.allow_shared_subnet;
        if allow_shared_subnet {
            tracing::warn!(
                "allow_shared_subnet: fragments of one segment may share a network; one router failing can then lose several"
            );
        }
        let listen = match self.listen.or(file.listen) {
            Some(l) => l,
            None => "/ip4/127.0.0.1/udp/0/quic-v1".parse()?,
        };
        let probe_interval = self
            .probe_interval
            .or(file.probe_interval)
            .unwrap_or(Duration::from_secs(5));
        let repair = RepairConfig {
            threshold: self.repair_threshold.or(file.repair_threshold),
            delay: self
                .repair_delay
                .or(file.repair_delay)
                .unwrap_or(RepairConfig::default().delay),
        };
        let defaults = RebuildConfig::default();
        let rebuild = RebuildConfig {
            interval: self.repair_interval.or(file.repair_interval).unwrap_or(
                defaults
                    .interval
                    .min(repair.delay.max(Duration::from_millis(100))),
            ),
            concurrency: self
                .repair_concurrency
                .or(file.repair_concurrency)
                .unwrap_or(defaults.concurrency)
                .max(1),
            demand_window: self
                .demand_window
                .or(file.demand_window)
                .unwrap_or(defaults.demand_window),
            demand_per_fragment: self
                .demand_per_fragment
                .or(file.demand_per_fragment)
                .unwrap_or(defaults.demand_per_fragment)
                .max(1),
            ..defaults
        };
        let defaults = cm_coordinator::accounting::AccountingConfig::default();
        let accounting = cm_coordinator::accounting::AccountingConfig {
            pay: file.pay.unwrap_or(defaults.pay),
            reconcile: file.reconcile.unwrap_or(defaults.reconcile),
            ticket_price_per_gb: self
                .ticket_price_per_gb
                .or(file.ticket_price_per_gb)
                .unwrap_or(defaults.ticket_price_per_gb),
        };
        accounting.validate()?;
        let audit_interval = Some(
            self.audit_interval
                .or(file.audit_interval)
                .unwrap_or(Duration::from_secs(6 * 3600)),
        )
        .filter(|d| !d.is_zero());
        let timers = cm_coordinator::accounting::AccountingTimers {
            reconcile_interval: Some(
                self.reconcile_interval
                    .or(file.reconcile_interval)
                    .unwrap_or(Duration::from_secs(24 * 3600)),
            )
            .filter(|d| !d.is_zero()),
            audits: audit_interval.is_some(),
            audit: cm_coordinator::audit::AuditConfig {
                mean_interval: audit_interval.unwrap_or(Duration::from_secs(6 * 3600)),
                // Re-check a timed-out audit well within the audit interval.
                retry_after: audit_interval.map_or(Duration::from_secs(60), |i| {
                    (i / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
                }),
                ..Default::default()
            },
        };
        Ok(RunConfig {
            database_url: self.database_url.or(file.database_url),
            accounting,
            timers,
            listen,
            http: self.http.or(file.http),
            liveness: cm_coordinator::liveness::LivenessConfig {
                heartbeat_timeout: self
                    .node_timeout
                    .or(file.node_timeout)
                    .unwrap_or(Duration::from_secs(90)),
                probe_attempts: self
                    .probe_attempts
                    .or(file.probe_attempts)
                    .unwrap_or(3)
                    .max(1),
                probe_backoff: probe_interval,
                ..Default::default()
            },
            probe_timeout: probe_interval
                .clamp(Duration::from_millis(500), Duration::from_secs(10)),
            placement: cm_coordinator::placement::PlacementRules {
                distinct_subnets: !allow_shared_subnet,
            },
            repair,
            rebuild,
            cluster: {
                let defaults = cm_coordinator::cluster::ClusterConfig::default();
                cm_coordinator::cluster::ClusterConfig {
                    interval: self
                        .cluster_interval
                        .or(file.cluster_interval)
                        .unwrap_or(defaults.interval)
                        .max(Duration::from_millis(100)),
                    coordinator_timeout: self
                        .coordinator_timeout
                        .or(file.coordinator_timeout)
                        .unwrap_or(defaults.coordinator_timeout),
                }
            },
        })
    }
}

/// `token create | list | revoke`.
async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            data_dir,
            label,
            partner,
            scopes,
            json,
        } => {
            let made = admin::ApiClient::for_data_dir(&data_dir)?
                .post(
                    "/tokens",
                    &serde_json::json!({ "label": label, "partner": partner, "scopes": scopes }),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&made)?);
            } else {
                println!("{}", made["secret"].as_str().unwrap_or_default());
                eprintln!(
                    "token {} ({}){}; keep the secret above: it is not shown again",
                    made["id"].as_str().unwrap_or("?"),
                    made["scopes"].as_str().unwrap_or("?"),
                    made["partner"]
                        .as_str()
                        .map(|p| format!(" for partner `{p}`"))
                        .unwrap_or_default(),
                );
            }
        }
        TokenCommand::List { data_dir, json } => {
            let list = admin::ApiClient::for_data_dir(&data_dir)?
                .get("/tokens")
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<16} {:<8} {:<14} {:<40} LABEL",
                    "ID", "STATE", "PARTNER", "SCOPES"
                );
                for t in list.as_array().into_iter().flatten() {
                    println!(
                        "{:<16} {:<8} {:<14} {:<40} {}",
                        t["id"].as_str().unwrap_or("?"),
                        if t["revoked_at"].is_null() {
                            "live"
                        } else {
                            "revoked"
                        },
                        t["partner"].as_str().unwrap_or("-"),
                        t["scopes"].as_str().unwrap_or("?"),
                        t["label"].as_str().unwrap_or(""),
                    );
                }
            }
        }
        TokenCommand::Revoke { id, data_dir } => {
            admin::ApiClient::for_data_dir(&data_dir)?
                .delete(&format!("/tokens/{id}"))
                .await?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

/// Reads a `--config` file.
fn read_config(path: &Path) -> anyhow::Result<RunSettings> {
    overlay::config::load_toml(path).map_err(anyhow::Error::msg)
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init {
            data_dir,
            database_url,
        } => {
            let id = server::init(&DataDir::new(&data_dir), database_url.as_deref()).await?;
            println!("{id}");
        }
        Command::Run {
            data_dir,
            config,
            settings,
        } => {
            let file = match &config {
                Some(path) => read_config(path)?,
                None => RunSettings::default(),
            };
            let config = settings.merge(file)?;
            server::run(DataDir::new(&data_dir), config, shutdown_signal()).await?;
        }
        Command::Nodes { data_dir, json } => {
            let nodes = call(&data_dir, AdminRequest::Nodes).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!(
                    "{:<52} {:<6} {:>6} {:>6} {:<12} {:>11} {:<14} {:<10} {:>9} {:>10}",
                    "NODE",
                    "ONLINE",
                    "AV-5D",
                    "AV-30D",
                    "HOURS",
                    "UPLOAD",
                    "GROUP",
                    "LOCATION",
                    "FRAGMENTS",
                    "USED"
                );
                for n in nodes.as_array().into_iter().flatten() {
                    let pct = |k: &str| format!("{:.0}%", n[k].as_f64().unwrap_or(0.0) * 100.0);
                    let upload = match n["upload_bps"].as_u64().unwrap_or(0) {
                        0 => "-".to_string(),
                        b => format!("{}/s", bytesize::ByteSize(b)),
                    };
                    println!(
                        "{:<52} {:<6} {:>6} {:>6} {:<12} {:>11} {:<14} {:<10} {:>9} {:>10}",
                        n["id"].as_str().unwrap_or("?"),
                        if n["online"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        pct("availability_5d"),
                        pct("availability_30d"),
                        n["typical_hours"].as_str().unwrap_or("-"),
                        upload,
                        n["group"].as_str().unwrap_or("-"),
                        n["location"].as_str().unwrap_or("-"),
                        n["fragments"],
                        bytesize::ByteSize(n["used"].as_u64().unwrap_or(0)).to_string(),
                    );
                }
            }
        }
        Command::Token { command } => token(command).await?,
        Command::Partner {
            command:
                PartnerCommand::Add {
                    name,
                    data_dir,
                    database_url,
                },
        } => {
            let id = server::add_partner(&DataDir::new(&data_dir), database_url.as_deref(), &name)
                .await?;
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
                cm_coordinator::publish::PublishParams::default_spare_shards(
                    data_shards,
                    parity_shards,
                )
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
                    name: None,
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
            price,
            out,
            offline,
            sales_record,
            database_url,
        } => {
            if let Some(p) = price
                && !(p.is_finite() && p >= 0.0)
            {
                anyhow::bail!("--price must be a non-negative number of credits, found {p}");
            }
            if offline {
                let dir = DataDir::new(&data_dir);
                let db =
                    cm_coordinator::db::Db::open(database_url.as_deref(), &dir.database()).await?;
                let coordinator = std::fs::read_to_string(dir.addr_file())
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "no coordinator address in {}: the ticket must name a running coordinator",
                            dir.addr_file().display()
                        )
                    })?
                    .trim()
                    .parse()?;
                let order = cm_coordinator::sales::TicketOrder {
                    partner,
                    content,
                    client,
                    expires_secs: expires.as_secs().max(1),
                    allowance: allowance.map(|a| a.as_u64()),
                    price: price.map(|p| cm_coordinator::policy::micro(p) as u64),
                };
                let accounting = cm_coordinator::accounting::AccountingConfig::default();
                let sold =
                    cm_coordinator::sales::sign_ticket(&dir, &db, &accounting, order).await?;
                if let Some(path) = sales_record {
                    use std::io::Write;
                    let mut line = serde_json::to_vec(&sold.record())?;
                    line.push(b'\n');
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(&line))
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                }
                let coordinators = cm_coordinator::cluster::ticket_addresses(
                    &db,
                    &coordinator,
                    cm_coordinator::cluster::ClusterConfig::default().coordinator_timeout,
                )
                .await?;
                overlay::ticket::TicketFile {
                    ticket: sold.ticket,
                    content_key: sold.content_key,
                    coordinators,
                }
                .save(&out)?;
                return Ok(());
            }
            let file = call(
                &data_dir,
                AdminRequest::Ticket {
                    partner,
                    content,
                    client,
                    expires_secs: expires.as_secs().max(1),
                    allowance: allowance.map(|a| a.as_u64()),
                    price: price.map(|p| cm_coordinator::policy::micro(p) as u64),
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
        Command::Db {
            command:
                DbCommand::Copy {
                    data_dir,
                    to,
                    from,
                    json,
                },
        } => {
            let summary =
                server::copy_database(&DataDir::new(&data_dir), from.as_deref(), &to).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
        }
        Command::Cluster { data_dir, json } => {
            let out = call(&data_dir, AdminRequest::Cluster).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let holder = out["maintenance_lease"]["holder"]
                    .as_str()
                    .unwrap_or("nobody");
                println!(
                    "this coordinator: {} ({} nodes online here, {} through others)",
                    out["instance"].as_str().unwrap_or("?"),
                    out["nodes_online_here"],
                    out["nodes_online_elsewhere"],
                );
                println!("repairs and audits: {holder}");
                for c in out["coordinators"].as_array().into_iter().flatten() {
                    println!(
                        "{:<18} {:<8} {:<50} {}",
                        c["instance"].as_str().unwrap_or("?"),
                        if c["alive"] == true { "alive" } else { "gone" },
                        c["addr"].as_str().unwrap_or(""),
                        c["http"].as_str().unwrap_or(""),
                    );
                }
            }
        }
        Command::Repairs { data_dir, json } => {
            let out = call(&data_dir, AdminRequest::Repairs).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let records = out["records"].as_array().cloned().unwrap_or_default();
                let sum =
                    |key: &str| -> u64 { records.iter().filter_map(|r| r[key].as_u64()).sum() };
                println!(
                    "{} fragments rebuilt; {} fetched, {} stored",
                    records.len(),
                    bytesize::ByteSize(sum("bytes_fetched")),
                    bytesize::ByteSize(sum("bytes_stored")),
                );
                for r in &records {
                    println!(
                        "{} {:<6} content={} segment={} index={} {} -> {}",
                        r["at"],
                        r["kind"].as_str().unwrap_or("?"),
                        r["content"].as_str().unwrap_or("?"),
                        r["segment"],
                        r["index"],
                        r["previous"].as_str().unwrap_or("-"),
                        r["node"].as_str().unwrap_or("?"),
                    );
                }
            }
        }
        Command::Demand {
            data_dir,
            content,
            level,
            duration,
        } => {
            let out = call(
                &data_dir,
                AdminRequest::Demand {
                    content,
                    level,
                    for_secs: duration.as_secs().max(1),
                },
            )
            .await?;
            println!("demand hint recorded until {}", out["until"]);
        }
        Command::Reconcile { data_dir, json } => {
            let out = call(&data_dir, AdminRequest::Reconcile).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "run {}: {} claims under {} tickets ({} waiting for a sales record): {} confirmed, {} conflict, {} suspected collusion; {} nodes settled, {} paid, {} fined, {} forfeited",
                    out["run"],
                    out["claims"],
                    out["tickets"],
                    out["pending_tickets"],
                    out["confirmed"],
                    out["conflict"],
                    out["suspected_collusion"],
                    out["nodes_settled"],
                    credits(out["paid"].as_i64().unwrap_or(0)),
                    credits(out["fined"].as_i64().unwrap_or(0)),
                    credits(out["forfeited"].as_i64().unwrap_or(0)),
                );
                if let Some(kinds) = out["by_kind"].as_object() {
                    for (kind, n) in kinds {
                        println!("  {kind}: {n}");
                    }
                }
            }
        }
        Command::Node {
            command: NodeCommand::Show { id, data_dir, json },
        } => {
            let out = call(&data_dir, AdminRequest::NodeShow { id }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("node {}", out["id"].as_str().unwrap_or("?"));
                println!(
                    "  level {} ({}), balance {}, held {}, earned {}, paid out {}",
                    out["level"].as_str().unwrap_or("?"),
                    out["level_index"],
                    credits(out["balance"].as_i64().unwrap_or(0)),
                    credits(out["held"].as_i64().unwrap_or(0)),
                    credits(out["earned"].as_i64().unwrap_or(0)),
                    credits(out["paid_out"].as_i64().unwrap_or(0)),
                );
                println!(
                    "  audits passed {}, failed {}; offences remembered {}",
                    out["audits_passed"], out["audits_failed"], out["offences"]
                );
                for v in out["verdicts"].as_array().into_iter().flatten() {
                    println!(
                        "  run {} {} {} amount={} ticket={}",
                        v["run"],
                        v["outcome"].as_str().unwrap_or("?"),
                        v["kind"].as_str().unwrap_or("?"),
                        v["amount"].as_str().unwrap_or("?"),
                        v["ticket"].as_str().unwrap_or("-"),
                    );
                }
            }
        }
        Command::Ledger { data_dir, json } => {
            let out = call(&data_dir, AdminRequest::Ledger).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{:<52} {:>20} {:>20}", "NODE", "BALANCE", "HELD");
                for n in out["nodes"].as_array().into_iter().flatten() {
                    println!(
                        "{:<52} {:>20} {:>20}",
                        n["id"].as_str().unwrap_or("?"),
                        credits(n["balance"].as_i64().unwrap_or(0)),
                        credits(n["held"].as_i64().unwrap_or(0)),
                    );
                }
                for (account, balance) in out["accounts"].as_object().into_iter().flatten() {
                    println!(
                        "{account:<52} {:>20}",
                        credits(balance.as_i64().unwrap_or(0))
                    );
                }
            }
        }
        Command::Payout {
            data_dir,
            period,
            out,
        } => {
            let statement = call(
                &data_dir,
                AdminRequest::Payout {
                    period: period.clone(),
                },
            )
            .await?;
            let mut csv = String::from("node,period,amount_ucr,amount_credits,held_ucr\n");
            let mut total = 0i64;
            for r in statement["rows"].as_array().into_iter().flatten() {
                let amount = r["amount"].as_i64().unwrap_or(0);
                total += amount;
                csv.push_str(&format!(
                    "{},{},{},{},{}\n",
                    r["node"].as_str().unwrap_or("?"),
                    period,
                    amount,
                    credits(amount).trim_end_matches(" cr"),
                    r["held"].as_i64().unwrap_or(0),
                ));
            }
            overlay::store::write_atomic(&out, csv.as_bytes(), false)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            println!(
                "period {period}: {} paid to {} nodes; statement in {}",
                credits(total),
                statement["rows"].as_array().map_or(0, |r| r
                    .iter()
                    .filter(|r| r["amount"].as_i64() > Some(0))
                    .count()),
                out.display()
            );
        }
        Command::Sales {
            command: SalesCommand::Import { data_dir, file },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let mut records = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                records.push(serde_json::from_str(line).map_err(|e| {
                    anyhow::anyhow!("{} line {}: not a sales record: {e}", file.display(), i + 1)
                })?);
            }
            let out = call(&data_dir, AdminRequest::SalesImport { records }).await?;
            println!(
                "{} sales records added, {} already known",
                out["added"], out["duplicate"]
            );
            let refused = out["refused"].as_array().cloned().unwrap_or_default();
            for r in &refused {
                eprintln!("refused: {}", r.as_str().unwrap_or("?"));
            }
            if !refused.is_empty() {
                anyhow::bail!("{} sales records refused", refused.len());
            }
        }
        Command::Verdicts {
            data_dir,
            limit,
            json,
        } => {
            let out = call(&data_dir, AdminRequest::Verdicts { limit }).await?;
            print_rows(&out, json, |v| {
                format!(
                    "run {} {} {} node={} client={} ticket={} amount={} evidence={}",
                    v["run"],
                    v["outcome"].as_str().unwrap_or("?"),
                    v["kind"].as_str().unwrap_or("?"),
                    v["node"].as_str().unwrap_or("-"),
                    v["client"].as_str().unwrap_or("-"),
                    v["ticket"].as_str().unwrap_or("-"),
                    v["amount"].as_str().unwrap_or("?"),
                    v["evidence"],
                )
            })?;
        }
        Command::Simulate {
            config,
            seed,
            out,
            nodes,
            days,
            print_config,
        } => simulate(config, seed, out, nodes, days, print_config)?,
        Command::Reports { data_dir, json } => {
            let reports = call(&data_dir, AdminRequest::Reports).await?;
            print_rows(&reports, json, |r| {
                format!(
                    "{} {} node={} content={} {}",
                    r["at"],
                    r["kind"].as_str().unwrap_or("?"),
                    r["node"].as_str().unwrap_or("?"),
                    r["content"].as_str().unwrap_or("?"),
                    r["detail"].as_str().unwrap_or(""),
                )
            })?;
        }
    }
    Ok(())
}

fn simulate(
    config: Option<PathBuf>,
    seed: u64,
    out: Option<PathBuf>,
    nodes: Option<u32>,
    days: Option<u32>,
    print_config: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use cm_coordinator::sim::{self, SimConfig, variants};
    let mut plan = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            variants::plan(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => variants::Plan {
            base: SimConfig::default(),
            variants: Vec::new(),
            x_label: String::new(),
        },
    };
    let configs = std::iter::once(&mut plan.base).chain(plan.variants.iter_mut().map(|v| &mut v.1));
    for cfg in configs {
        if let Some(n) = nodes {
            cfg.nodes = n;
        }
        if let Some(d) = days {
            cfg.days = d;
        }
        cfg.validate()?;
    }
    if print_config {
        print!("{}", toml::to_string(&plan.base)?);
        return Ok(());
    }
    let out = out.context("--out is required")?;
    let started = std::time::Instant::now();
    if plan.variants.is_empty() {
        let cfg = &plan.base;
        tracing::info!(nodes = cfg.nodes, days = cfg.days, seed, "simulating");
        let summary = sim::simulate(cfg, seed, &out)?;
        tracing::info!(
            events = summary.events,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            peak_rss_mib = peak_rss_mib(),
            out = %out.display(),
            "simulation done"
        );
        println!("{}", std::fs::read_to_string(out.join("report.md"))?);
    } else {
        let runs = variants::run(&plan, seed, &out)?;
        tracing::info!(
            variants = runs.len(),
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            peak_rss_mib = peak_rss_mib(),
            out = %out.display(),
            "simulations done"
        );
        println!("{}", std::fs::read_to_string(out.join("variants.md"))?);
    }
    Ok(())
}

/// The process's peak resident memory, MiB (Linux; 0 elsewhere).
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// Prints a JSON array as pretty JSON, or one `line` per element.
fn print_rows(
    rows: &serde_json::Value,
    json: bool,
    line: impl Fn(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else {
        for row in rows.as_array().into_iter().flatten() {
            println!("{}", line(row));
        }
    }
    Ok(())
}

/// Micro-credits as credits with six decimals.
fn credits(micro: i64) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let m = micro.unsigned_abs();
    format!("{sign}{}.{:06} cr", m / 1_000_000, m % 1_000_000)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_flags_win() {
        let text = include_str!("../config.example.toml");
        let file: RunSettings = toml::from_str(text).unwrap();
        assert_eq!(file.repair_delay, Some(Duration::from_secs(15 * 60)));
        assert_eq!(file.probe_attempts, Some(3));
        let flags = RunSettings {
            repair_delay: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let config = flags.merge(file).unwrap();
        assert_eq!(config.repair.delay, Duration::from_secs(2), "a flag wins");
        assert_eq!(config.repair.threshold, Some(2), "the file fills the rest");
        assert_eq!(config.rebuild.demand_per_fragment, 10);
        assert_eq!(config.http, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(
            config.accounting,
            cm_coordinator::accounting::AccountingConfig::default(),
            "the example documents the defaults"
        );
        assert_eq!(
            config.timers.reconcile_interval,
            Some(Duration::from_secs(86_400))
        );
        assert!(config.timers.audits);
    }

    #[test]
    fn a_ticket_price_that_would_let_self_dealing_pay_is_refused_at_start() {
        let file: RunSettings = toml::from_str("ticket_price_per_gb = 1.5").unwrap();
        let err = RunSettings::default().merge(file).unwrap_err().to_string();
        assert!(err.contains("ticket_price_per_gb"), "{err}");
        let file: RunSettings = toml::from_str("[pay]\nserved_per_gb = -1.0\n").unwrap();
        assert!(RunSettings::default().merge(file).is_err());
    }

    #[test]
    fn unknown_or_malformed_settings_are_refused() {
        assert!(toml::from_str::<RunSettings>("repair_dealy = \"1s\"").is_err());
        assert!(toml::from_str::<RunSettings>("repair_delay = \"soon\"").is_err());
        assert!(toml::from_str::<RunSettings>("probe_attempts = -1").is_err());
    }
}
