//! The simulator's configuration: a TOML file, every field documented, defaults that model a
//! collective of home desktops and laptops. `cm-coordinator simulate --print-config` prints them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::PayPolicy;
use crate::reconcile::ReconcileConfig;

/// Errors in a simulation's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: {field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

fn non_negative(x: f64) -> bool {
    x >= 0.0 && x.is_finite()
}

fn invalid(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// A whole simulation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Nodes registered at the start.
    pub nodes: u32,
    /// Simulated days.
    pub days: u32,
    /// Interval between two points of the time series (capacity, availability).
    #[serde(with = "humantime_serde")]
    pub sample_every: Duration,
    /// Who the nodes are and how they come and go.
    pub population: Population,
    /// The content stored, in each of the erasure-code schemes compared.
    pub catalog: Catalog,
    /// How the coordinator's liveness core is fed.
    pub liveness: LivenessSim,
    /// How the coordinator's repair core runs.
    pub repair: RepairSim,
    /// Downloads, claims, audits, reconciliation and pay, and the nodes that cheat.
    pub economy: Economy,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 10_000,
            days: 30,
            sample_every: Duration::from_secs(3600),
            population: Population::default(),
            catalog: Catalog::default(),
            liveness: LivenessSim::default(),
            repair: RepairSim::default(),
            economy: Economy::default(),
        }
    }
}

/// A probability distribution of durations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// Heavy-tailed: `P(X > x) = (min / x)^shape` for `x ≥ min`; mean `min × shape / (shape - 1)`.
    Pareto {
        #[serde(with = "humantime_serde")]
        min: Duration,
        /// Tail index, > 1 (the smaller, the heavier the tail).
        shape: f64,
    },
    /// `exp(N(ln median, sigma²))`.
    LogNormal {
        #[serde(with = "humantime_serde")]
        median: Duration,
        sigma: f64,
    },
    /// Memoryless.
    Exponential {
        #[serde(with = "humantime_serde")]
        mean: Duration,
    },
}

impl Dist {
    /// The mean, seconds.
    pub fn mean_secs(&self) -> f64 {
        match *self {
            Dist::Pareto { min, shape } => min.as_secs_f64() * shape / (shape - 1.0),
            Dist::LogNormal { median, sigma } => median.as_secs_f64() * (sigma * sigma / 2.0).exp(),
            Dist::Exponential { mean } => mean.as_secs_f64(),
        }
    }

    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        match *self {
            Dist::Pareto { min, shape } => {
                if min.is_zero() {
                    return Err(invalid(field, "min must be above zero"));
                }
                if !(positive(shape) && shape > 1.0) {
                    return Err(invalid(field, "shape must be above 1 (a finite mean)"));
                }
            }
            Dist::LogNormal { median, sigma } => {
                if median.is_zero() || !(0.0..5.0).contains(&sigma) {
                    return Err(invalid(field, "median above zero and 0 ≤ sigma < 5"));
                }
            }
            Dist::Exponential { mean } => {
                if mean.is_zero() {
                    return Err(invalid(field, "mean must be above zero"));
                }
            }
        }
        Ok(())
    }
}

/// A class of machines with its own on/off pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeClass {
    /// A name for reports.
    pub name: String,
    /// Share of the nodes (shares are normalised over the classes).
    pub share: f64,
    /// Length of an online session.
    pub online: Dist,
    /// Length of a gap between sessions.
    pub offline: Dist,
}

/// A log-normal quantity: `median × exp(N(0, sigma²))`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    pub median: f64,
    pub sigma: f64,
}

/// The node population.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Population {
    /// Machine classes (desktops left on, laptops and desktops switched off, ...).
    pub classes: Vec<NodeClass>,
    /// Each node's session and gap lengths are its class's, scaled by its own factor drawn
    /// from `exp(N(0, sigma²))`: some machines are on much more than others of their class.
    pub habit_sigma: f64,
    /// Mean time a node stays in the collective before leaving for good (exponential).
    #[serde(with = "humantime_serde")]
    pub mean_lifetime: Duration,
    /// New nodes per day as a share of `nodes`; by default one lifetime's worth, so the
    /// population stays level.
    pub arrivals_per_day: Option<f64>,
    /// Share of session ends announced with a leave; the rest are silent (power cut, lost
    /// network, sleep) and found by the liveness core.
    pub graceful_leave: f64,
    /// Hours a day the owner uses the machine.
    pub in_use_hours: f64,
    /// Share of the machine's resources offered while the owner uses it (all of them otherwise).
    pub in_use_free: f64,
    /// The UTC hour at which the owner's day starts, drawn uniformly from `[from, to)`: time
    /// zones and habits together.
    pub in_use_start_hours: (f64, f64),
    /// Upload bandwidth offered, Mbit/s.
    pub upload_mbit: Spread,
    /// Disk offered, GB.
    pub disk_gb: Spread,
    /// CPU cores offered, with their shares.
    pub cores: Vec<(u32, f64)>,
    /// Nodes per IPv4 /24 on average (home routers, ISP blocks); placement never puts two
    /// fragments of a segment behind one.
    pub nodes_per_subnet: f64,
}

impl Default for Population {
    fn default() -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Self {
            classes: vec![
                NodeClass {
                    name: "desktop, always on".into(),
                    share: 0.35,
                    online: Dist::Pareto {
                        min: hours(24),
                        shape: 1.5,
                    },
                    offline: Dist::LogNormal {
                        median: hours(1),
                        sigma: 1.0,
                    },
                },
                NodeClass {
                    name: "desktop, switched off at night".into(),
                    share: 0.4,
                    online: Dist::Pareto {
                        min: hours(5),
                        shape: 1.8,
                    },
                    offline: Dist::LogNormal {
                        median: hours(10),
                        sigma: 0.6,
                    },
                },
                NodeClass {
                    name: "laptop".into(),
                    share: 0.25,
                    online: Dist::Pareto {
                        min: hours(1),
                        shape: 1.5,
                    },
                    offline: Dist::LogNormal {
                        median: hours(6),
                        sigma: 1.0,
                    },
                },
            ],
            habit_sigma: 0.4,
            mean_lifetime: Duration::from_secs(180 * 86_400),
            arrivals_per_day: None,
            graceful_leave: 0.7,
            in_use_hours: 10.0,
            in_use_free: 0.1,
            in_use_start_hours: (6.0, 18.0),
            upload_mbit: Spread {
                median: 10.0,
                sigma: 1.0,
            },
            disk_gb: Spread {
                median: 50.0,
                sigma: 0.8,
            },
            cores: vec![(2, 0.3), (4, 0.45), (8, 0.2), (16, 0.05)],
            nodes_per_subnet: 1.5,
        }
    }
}

/// One erasure-code scheme; every scheme stores the same catalog on the same nodes, so they
/// meet exactly the same churn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheme {
    /// A name for reports.
    pub name: String,
    /// Data fragments per segment: any `k` rebuild it (`k = 1`: full replicas).
    pub k: u8,
    /// Parity fragments (copies when `k = 1`).
    pub m: u8,
    /// Whether the repair core rebuilds what churn destroys.
    pub repair: bool,
}

impl Scheme {
    /// Share of the stored bytes that is redundancy: `m / (k + m)`.
    pub fn overhead(&self) -> f64 {
        f64::from(self.m) / f64::from(self.k + self.m)
    }
}

/// The content stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Catalog {
    /// Contents per scheme.
    pub contents: u32,
    /// Segments per content, uniform in `[min, max]`.
    pub segments: (u32, u32),
    /// Segment size, bytes.
    pub segment_bytes: u64,
    /// Day on which the catalog is published (nodes' records are built up before).
    pub publish_day: u32,
    /// The schemes compared.
    pub schemes: Vec<Scheme>,
}

impl Default for Catalog {
    fn default() -> Self {
        let scheme = |name: &str, k, m, repair| Scheme {
            name: name.into(),
            k,
            m,
            repair,
        };
        Self {
            contents: 100,
            segments: (16, 256),
            segment_bytes: 8 << 20,
            publish_day: 3,
            schemes: vec![
                scheme("RS(8,4) + repair", 8, 4, true),
                scheme("RS(16,4) + repair", 16, 4, true),
                scheme("RS(4,4) + repair", 4, 4, true),
                scheme("5 replicas + repair", 1, 4, true),
                scheme("5 replicas, no repair", 1, 4, false),
            ],
        }
    }
}

/// How liveness is fed. A real node heartbeats every 30 s; a million of them over 30 days
/// would be 86 billion events, so the simulated heartbeat is coarser: a silent node is found
/// within `heartbeat_every + heartbeat_timeout` plus the probes, and clients' reports of
/// unreachable nodes find it sooner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessSim {
    #[serde(with = "humantime_serde")]
    pub heartbeat_every: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    pub probe_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub probe_backoff: Duration,
}

impl Default for LivenessSim {
    fn default() -> Self {
        Self {
            heartbeat_every: Duration::from_secs(3600),
            heartbeat_timeout: Duration::from_secs(5400),
            probe_attempts: 3,
            probe_backoff: Duration::from_secs(60),
        }
    }
}

/// How repair runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairSim {
    /// Time between two checks of every segment.
    #[serde(with = "humantime_serde")]
    pub check_every: Duration,
    /// An offline node's fragments count as lost after this long.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Repair when at most this many parity fragments remain; default `m / 2`.
    pub threshold: Option<u8>,
    /// Placement draws new holders from this many random online candidates (as the
    /// coordinator's placement samples large pools).
    pub candidates: u32,
    /// How often the candidate list is rebuilt from the online nodes.
    #[serde(with = "humantime_serde")]
    pub candidates_every: Duration,
}

impl Default for RepairSim {
    fn default() -> Self {
        Self {
            check_every: Duration::from_secs(3600),
            delay: Duration::from_secs(15 * 60),
            threshold: None,
            candidates: 20_000,
            candidates_every: Duration::from_secs(6 * 3600),
        }
    }
}

/// A burst of demand for one content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlashCrowd {
    /// When it starts (day, fractions allowed).
    pub day: f64,
    /// How long it lasts.
    pub hours: f64,
    /// The content's popularity rank (1: the most popular).
    pub rank: u32,
    /// Downloads of that content during the crowd, as a multiple of all downloads' usual rate.
    pub share_of_usual: f64,
}

/// Nodes that over-claim served bytes, with forged receipts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverClaim {
    /// Share of the nodes.
    pub share: f64,
    /// Probability that a claim is inflated.
    pub probability: f64,
    /// An inflated claim is this many times what was served.
    pub factor: f64,
}

/// Nodes that delete what they were paid to store and keep claiming it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropData {
    pub share: f64,
    /// Share of its fragments a dropper deletes.
    pub fraction: f64,
}

/// Nodes that collude with a client: the client buys tickets and signs receipts for bytes the
/// node never sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collude {
    pub share: f64,
    /// Tickets the colluding client buys per day.
    pub tickets_per_day: f64,
}

/// The cheating strategies and their shares of the nodes (the rest are honest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Strategies {
    pub over_claim: OverClaim,
    pub drop_data: DropData,
    pub collude: Collude,
    /// Over-claim as `over_claim` does, and abandon the identity to start afresh as soon as
    /// caught.
    pub whitewash: OverClaim,
}

impl Default for Strategies {
    fn default() -> Self {
        Self {
            over_claim: OverClaim {
                share: 0.02,
                probability: 0.5,
                factor: 2.0,
            },
            drop_data: DropData {
                share: 0.02,
                fraction: 1.0,
            },
            collude: Collude {
                share: 0.02,
                tickets_per_day: 1.0,
            },
            whitewash: OverClaim {
                share: 0.02,
                probability: 0.5,
                factor: 2.0,
            },
        }
    }
}

/// Owners who quit when the collective pays them less than they expect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Patience {
    /// Whether pay affects departures at all.
    pub enabled: bool,
    /// Credits per day an owner expects, log-normal across owners.
    pub expects_per_day: Spread,
    /// Chance per day that an owner paid less than expected (over the last week) quits.
    pub quit_per_day: f64,
}

impl Default for Patience {
    fn default() -> Self {
        Self {
            enabled: false,
            expects_per_day: Spread {
                median: 0.05,
                sigma: 1.0,
            },
            quit_per_day: 0.05,
        }
    }
}

/// Downloads, claims, audits, reconciliation and pay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Economy {
    /// Whether to simulate the economy at all.
    pub enabled: bool,
    /// The catalog scheme whose contents are downloaded and paid for.
    pub scheme: usize,
    /// Downloads (tickets sold) per day across the collective.
    pub downloads_per_day: f64,
    /// Zipf exponent of content popularity.
    pub zipf: f64,
    pub flash_crowds: Vec<FlashCrowd>,
    /// Share of downloads whose client sends a completion report.
    pub completion_reports: f64,
    /// A ticket's allowance as a multiple of its content's size.
    pub allowance_factor: f64,
    /// Ticket price, credits per GB of allowance; default 1.25 × the policy's floor (the most
    /// a node can earn per GB served).
    pub ticket_price_per_gb: Option<f64>,
    /// Mean time between two storage audits of one node.
    #[serde(with = "humantime_serde")]
    pub audit_every: Duration,
    /// The coordinator's reconciliation settings (`[reconcile]` of its configuration).
    pub reconcile: ReconcileConfig,
    /// The coordinator's pay policy (`[pay]` of its configuration).
    pub pay: PayPolicy,
    pub strategies: Strategies,
    pub patience: Patience,
}

impl Default for Economy {
    fn default() -> Self {
        Self {
            enabled: true,
            scheme: 0,
            downloads_per_day: 2000.0,
            zipf: 0.9,
            flash_crowds: vec![FlashCrowd {
                day: 10.0,
                hours: 12.0,
                rank: 20,
                share_of_usual: 2.0,
            }],
            completion_reports: 0.5,
            allowance_factor: 1.5,
            ticket_price_per_gb: None,
            audit_every: Duration::from_secs(12 * 3600),
            reconcile: ReconcileConfig::default(),
            pay: PayPolicy::default(),
            strategies: Strategies::default(),
            patience: Patience::default(),
        }
    }
}

impl SimConfig {
    /// Parses a TOML file's text; missing fields take their defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes == 0 || self.nodes > 20_000_000 {
            return Err(invalid("nodes", "between 1 and 20,000,000"));
        }
        if self.days == 0 || self.days > 3650 {
            return Err(invalid("days", "between 1 and 3650"));
        }
        if self.sample_every < Duration::from_secs(60) {
            return Err(invalid("sample_every", "at least one minute"));
        }
        let p = &self.population;
        if p.classes.is_empty() || p.classes.iter().any(|c| !positive(c.share)) {
            return Err(invalid(
                "population.classes",
                "at least one class, every share above 0",
            ));
        }
        for c in &p.classes {
            c.online
                .validate(&format!("population.classes[{}].online", c.name))?;
            c.offline
                .validate(&format!("population.classes[{}].offline", c.name))?;
        }
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if !unit(p.graceful_leave) || !unit(p.in_use_free) {
            return Err(invalid(
                "population",
                "graceful_leave and in_use_free are shares (0..=1)",
            ));
        }
        if !(0.0..=24.0).contains(&p.in_use_hours) {
            return Err(invalid("population.in_use_hours", "between 0 and 24"));
        }
        let (from, to) = p.in_use_start_hours;
        if !(0.0 <= from && from <= to && to <= 24.0) {
            return Err(invalid(
                "population.in_use_start_hours",
                "0 ≤ from ≤ to ≤ 24",
            ));
        }
        if p.mean_lifetime < Duration::from_secs(3600) {
            return Err(invalid("population.mean_lifetime", "at least an hour"));
        }
        if p.arrivals_per_day
            .is_some_and(|a| !(0.0..=1.0).contains(&a))
        {
            return Err(invalid("population.arrivals_per_day", "a share, 0..=1"));
        }
        if !(0.0..5.0).contains(&p.habit_sigma) {
            return Err(invalid("population.habit_sigma", "0 ≤ sigma < 5"));
        }
        for (name, s) in [("upload_mbit", p.upload_mbit), ("disk_gb", p.disk_gb)] {
            if !(s.median > 0.0 && (0.0..5.0).contains(&s.sigma)) {
                return Err(invalid(
                    &format!("population.{name}"),
                    "median above 0, 0 ≤ sigma < 5",
                ));
            }
        }
        if p.cores.is_empty() || p.cores.iter().any(|&(c, s)| c == 0 || !positive(s)) {
            return Err(invalid(
                "population.cores",
                "at least one (cores, share), both above 0",
            ));
        }
        if p.nodes_per_subnet.is_nan() || p.nodes_per_subnet < 1.0 {
            return Err(invalid("population.nodes_per_subnet", "at least 1"));
        }
        let c = &self.catalog;
        if c.schemes.is_empty() {
            return Err(invalid("catalog.schemes", "at least one scheme"));
        }
        for s in &c.schemes {
            if s.k == 0 || s.m == 0 || usize::from(s.k) + usize::from(s.m) > 64 {
                return Err(invalid(
                    &format!("catalog.schemes[{}]", s.name),
                    "1 ≤ k, 1 ≤ m, k + m ≤ 64",
                ));
            }
        }
        if c.segments.0 == 0 || c.segments.0 > c.segments.1 {
            return Err(invalid("catalog.segments", "1 ≤ min ≤ max"));
        }
        if c.segment_bytes == 0 {
            return Err(invalid("catalog.segment_bytes", "above 0"));
        }
        if c.publish_day >= self.days {
            return Err(invalid("catalog.publish_day", "before the last day"));
        }
        let l = &self.liveness;
        if l.heartbeat_every.is_zero() || l.heartbeat_timeout < l.heartbeat_every {
            return Err(invalid(
                "liveness",
                "heartbeat_every above 0 and heartbeat_timeout at least as long",
            ));
        }
        if self.repair.check_every < Duration::from_secs(60)
            || self.repair.candidates_every < Duration::from_secs(60)
        {
            return Err(invalid(
                "repair",
                "check_every and candidates_every at least a minute",
            ));
        }
        if self.repair.candidates == 0 {
            return Err(invalid("repair.candidates", "at least 1"));
        }
        self.economy.validate(self.catalog.schemes.len())
    }
}

impl Economy {
    fn validate(&self, schemes: usize) -> Result<(), ConfigError> {
        if self.scheme >= schemes {
            return Err(invalid("economy.scheme", "an index into catalog.schemes"));
        }
        if !non_negative(self.downloads_per_day) || self.downloads_per_day > 1e8 {
            return Err(invalid("economy.downloads_per_day", "0 to 100,000,000"));
        }
        if !(0.0..10.0).contains(&self.zipf) {
            return Err(invalid("economy.zipf", "0 ≤ exponent < 10"));
        }
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if !unit(self.completion_reports) {
            return Err(invalid("economy.completion_reports", "a share, 0..=1"));
        }
        if self.allowance_factor.is_nan() || self.allowance_factor < 1.0 {
            return Err(invalid("economy.allowance_factor", "at least 1"));
        }
        if self.audit_every < Duration::from_secs(60) {
            return Err(invalid("economy.audit_every", "at least a minute"));
        }
        self.reconcile
            .validate()
            .map_err(|e| invalid("economy.reconcile", e))?;
        self.pay
            .validate()
            .map_err(|e| invalid("economy.pay", e.to_string()))?;
        let floor = self.pay.ticket_price_floor_per_gb() as f64 / 1e6;
        if let Some(price) = self.ticket_price_per_gb
            && (price.is_nan() || price <= floor)
        {
            return Err(invalid(
                "economy.ticket_price_per_gb",
                format!("above the most a node earns per GB served ({floor} credits)"),
            ));
        }
        let s = &self.strategies;
        let shares = [
            s.over_claim.share,
            s.drop_data.share,
            s.collude.share,
            s.whitewash.share,
        ];
        if shares.iter().any(|&x| !unit(x)) || shares.iter().sum::<f64>() > 1.0 {
            return Err(invalid(
                "economy.strategies",
                "shares in 0..=1 that add up to at most 1",
            ));
        }
        for (name, c) in [("over_claim", &s.over_claim), ("whitewash", &s.whitewash)] {
            if !unit(c.probability) || c.factor.is_nan() || c.factor < 1.0 {
                return Err(invalid(
                    &format!("economy.strategies.{name}"),
                    "probability in 0..=1, factor at least 1",
                ));
            }
        }
        if !unit(s.drop_data.fraction) || !(0.0..=100.0).contains(&s.collude.tickets_per_day) {
            return Err(invalid(
                "economy.strategies",
                "drop_data.fraction in 0..=1, collude.tickets_per_day in 0..=100",
            ));
        }
        for f in &self.flash_crowds {
            if f.rank == 0
                || !positive(f.hours)
                || !non_negative(f.share_of_usual)
                || !non_negative(f.day)
            {
                return Err(invalid(
                    "economy.flash_crowds",
                    "rank from 1, hours above 0, day and share_of_usual from 0",
                ));
            }
        }
        let p = &self.patience;
        if !unit(p.quit_per_day) || !non_negative(p.expects_per_day.median) {
            return Err(invalid(
                "economy.patience",
                "quit_per_day in 0..=1, median from 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_round_trip_through_toml() {
        let config = SimConfig::default();
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(SimConfig::from_toml(&text).unwrap(), config);
        assert_eq!(SimConfig::from_toml("").unwrap(), config);
    }

    #[test]
    fn bad_values_are_named() {
        let err = SimConfig::from_toml("nodes = 0").unwrap_err().to_string();
        assert!(err.contains("nodes"), "{err}");
        let err = SimConfig::from_toml("[population]\ngraceful_leave = 2.0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("graceful_leave"), "{err}");
        let err = SimConfig::from_toml("noodles = 3").unwrap_err().to_string();
        assert!(err.contains("noodles"), "{err}");
        let pareto = "[[population.classes]]\nname = \"x\"\nshare = 1.0\n\
            online = { dist = \"pareto\", min = \"1h\", shape = 0.9 }\n\
            offline = { dist = \"exponential\", mean = \"1h\" }";
        let err = SimConfig::from_toml(pareto).unwrap_err().to_string();
        assert!(err.contains("shape"), "{err}");
    }
}
