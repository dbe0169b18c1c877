//! The pay policy: the `[pay]` section of the coordinator's config. What each unit of verified
//! work is worth, the pay levels a node climbs, what an offence costs, how much of a young
//! node's earnings is held back, the bonuses for scarce value, and the ticket price below which
//! self-dealing would pay. [`crate::pay`] applies it; this module only describes and checks it.
//!
//! Amounts in the file are credits (`f64`, for people); the pay core works in integer
//! micro-credits (µcr, 1 credit = 1 000 000 µcr) and parts per million (ppm) for multipliers
//! and fractions. Every conversion from the file rounds to the nearest µcr or ppm
//! ([`micro`], [`ppm`]), so `0.1` credits is exactly 100 000 µcr.
//!
//! A full section with the defaults:
//!
//! ```toml
//! [pay]
//! mode = "rates"                  # or: mode = { revenue_share = { share = 0.7 } }
//! served_per_gb = 1.0
//! stored_per_gb_month = 2.0
//! repair_per_gb = 0.8
//! raise_after = "7days"
//! availability_window = "7days"
//! cut_levels = "all"              # or a number of levels
//! fine_factor = 2.0
//! debt_after_offences = 2
//! offence_memory = "180days"
//! hold = [
//!     { age = "0s", fraction = 0.75 },
//!     { age = "30days", fraction = 0.5 },
//!     { age = "90days", fraction = 0.25 },
//!     { age = "180days", fraction = 0.0 },
//! ]
//! hold_for = "90days"
//! bandwidth_bonus = { min_bps = 10000000, fraction = 0.1 }
//! location_bonus = { max_share = 0.05, fraction = 0.1 }
//! availability_bonus = { min_availability = 0.98, fraction = 0.1 }
//!
//! [[pay.levels]]
//! name = "new"
//! multiplier = 1.0
//!
//! [[pay.levels]]
//! name = "steady"
//! multiplier = 1.2
//! min_availability = 0.8
//! min_audits_passed = 3
//! min_audit_score = 0.95
//!
//! [[pay.levels]]
//! name = "reliable"
//! multiplier = 1.4
//! min_availability = 0.95
//! min_audits_passed = 10
//! min_audit_score = 0.98
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Micro-credits per credit.
pub const MICRO: i64 = 1_000_000;
/// Parts per million in one whole (a multiplier of 1.0, a fraction of 100 %).
pub const PPM: i64 = 1_000_000;
/// Bytes per GB (decimal, like the prices people see).
pub const GB: u64 = 1_000_000_000;
/// Seconds per month of storage (30 days).
pub const MONTH_SECS: u64 = 30 * 24 * 3600;
/// The highest rate a policy may set, in credits per unit. Together with [`MAX_MULTIPLIER`] it
/// keeps the pay core's integer arithmetic exact for any amount of work.
pub const MAX_RATE: f64 = 1_000.0;
/// The highest level multiplier a policy may set.
pub const MAX_MULTIPLIER: f64 = 100.0;
/// The highest fine factor a policy may set.
pub const MAX_FINE_FACTOR: f64 = 1_000.0;

/// Credits to micro-credits, rounded to the nearest µcr (saturating at the `i64` range).
pub fn micro(credits: f64) -> i64 {
    (credits * MICRO as f64).round() as i64
}

/// A multiplier or fraction to parts per million, rounded to the nearest ppm.
pub fn ppm(x: f64) -> i64 {
    (x * PPM as f64).round() as i64
}

/// A policy that cannot be used, or a ticket the policy refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A field of the `[pay]` section has a value the pay core cannot work with.
    #[error("invalid [pay] policy: `{field}` {problem}")]
    Invalid {
        /// The field, as written in the config (e.g. `levels[1].multiplier`).
        field: String,
        /// What was expected and what was found.
        problem: String,
    },
    /// A ticket would let a node earn more by serving it than the ticket costs.
    #[error(
        "ticket too cheap: {price} µcr for {allowance_bytes} bytes is at most {floor_per_gb} µcr \
         per GB, the most a node can earn serving a GB; a ticket must cost more per GB than \
         that, or a node could buy tickets to download from itself at a profit: raise the \
         price or lower the allowance"
    )]
    TicketTooCheap {
        /// The ticket's price, in µcr.
        price: i64,
        /// The bytes the ticket allows.
        allowance_bytes: u64,
        /// The most a node can earn per GB served, in µcr (rounded up).
        floor_per_gb: i64,
    },
    /// A ticket that allows no bytes.
    #[error("a ticket must allow at least one byte, found an allowance of 0")]
    EmptyAllowance,
}

/// How the pay of a run is determined.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PayMode {
    /// Every unit of work is paid at the rates (times the node's level multiplier).
    Rates,
    /// A pool of `share` × the ticket revenue of the period is split among the nodes in
    /// proportion to their work valued at the rates. The rates are caps: when the pool exceeds
    /// the value of the work, each node gets its value and the rest stays with the CM.
    RevenueShare {
        /// The fraction of the period's ticket revenue paid to nodes, in (0, 1].
        share: f64,
    },
}

/// A pay level and the criteria to enter it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// A name for people (reports, dashboards); unique within the policy.
    pub name: String,
    /// Every rate is multiplied by this at this level; > 0.
    pub multiplier: f64,
    /// Availability (0..=1, over `availability_window`) needed to enter this level.
    #[serde(default)]
    pub min_availability: f64,
    /// Audits passed (in total) needed to enter this level.
    #[serde(default)]
    pub min_audits_passed: u32,
    /// Audit score (0..=1) needed to enter this level.
    #[serde(default)]
    pub min_audit_score: f64,
}

impl Level {
    fn new(name: &str, multiplier: f64, availability: f64, audits: u32, score: f64) -> Self {
        Self {
            name: name.to_owned(),
            multiplier,
            min_availability: availability,
            min_audits_passed: audits,
            min_audit_score: score,
        }
    }
}

/// The share of earnings held back from a node at least `age` old.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HoldStep {
    /// The node age from which this step applies.
    #[serde(with = "humantime_serde")]
    pub age: Duration,
    /// The fraction (0..=1) of each accrual and bonus held back.
    pub fraction: f64,
}

impl HoldStep {
    fn days(days: u64, fraction: f64) -> Self {
        Self {
            age: Duration::from_secs(days * 24 * 3600),
            fraction,
        }
    }
}

/// A bonus for nodes with fast uplinks, on served and repair pay.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BandwidthBonus {
    /// Upload bandwidth (bytes per second) a node needs for the bonus.
    pub min_bps: u64,
    /// The bonus as a fraction (0..=1) of the accrual; 0 turns it off.
    pub fraction: f64,
}

impl Default for BandwidthBonus {
    fn default() -> Self {
        Self {
            min_bps: 10_000_000,
            fraction: 0.1,
        }
    }
}

/// A bonus for nodes in under-represented locations, on served and stored pay.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocationBonus {
    /// The node's location may hold at most this share (0..=1) of the online nodes.
    pub max_share: f64,
    /// The bonus as a fraction (0..=1) of the accrual; 0 turns it off.
    pub fraction: f64,
}

impl Default for LocationBonus {
    fn default() -> Self {
        Self {
            max_share: 0.05,
            fraction: 0.1,
        }
    }
}

/// A bonus for very available nodes, on stored pay.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AvailabilityBonus {
    /// Availability (0..=1, over `availability_window`) a node needs for the bonus.
    pub min_availability: f64,
    /// The bonus as a fraction (0..=1) of the accrual; 0 turns it off.
    pub fraction: f64,
}

impl Default for AvailabilityBonus {
    fn default() -> Self {
        Self {
            min_availability: 0.98,
            fraction: 0.1,
        }
    }
}

/// The `[pay]` section: how verified work becomes credits.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PayPolicy {
    /// Fixed rates, or a share of ticket revenue with the rates as caps.
    pub mode: PayMode,
    /// Credits per GB delivered to ticket holders, at multiplier 1.0.
    pub served_per_gb: f64,
    /// Credits per GB stored for a month (30 days), at multiplier 1.0.
    pub stored_per_gb_month: f64,
    /// Credits per GB served to the CM's repair fetches (instead of `served_per_gb`), at
    /// multiplier 1.0.
    pub repair_per_gb: f64,
    /// Pay levels, lowest first; a new node starts at the first. Each names the criteria to
    /// enter it.
    pub levels: Vec<Level>,
    /// How long a node must be clean at its level before it may enter the next one.
    #[serde(with = "humantime_serde")]
    pub raise_after: Duration,
    /// The window over which the caller measures a node's availability.
    #[serde(with = "humantime_serde")]
    pub availability_window: Duration,
    /// Levels lost per offence (a run in which the node was caught over-claiming): a number,
    /// or `"all"` (back to the lowest level).
    #[serde(deserialize_with = "de_cut_levels", serialize_with = "ser_cut_levels")]
    pub cut_levels: u32,
    /// A fine is this factor times the value of the conflicting claims.
    pub fine_factor: f64,
    /// From this many remembered offences on (this one included), a fine is booked in full
    /// even when it drives the balance negative: debt worked off before any payout. Below it,
    /// a fine only takes what the available balance holds.
    pub debt_after_offences: u32,
    /// Offences older than this are forgotten.
    #[serde(with = "humantime_serde")]
    pub offence_memory: Duration,
    /// Hold-back by node age, youngest first: the step with the greatest age at most the
    /// node's applies. Held earnings are forfeited when the node is caught.
    pub hold: Vec<HoldStep>,
    /// A held tranche is released this long after it was held, unless forfeited.
    #[serde(with = "humantime_serde")]
    pub hold_for: Duration,
    /// Bonus for fast uplinks (on served and repair pay).
    pub bandwidth_bonus: BandwidthBonus,
    /// Bonus for scarce locations (on served and stored pay).
    pub location_bonus: LocationBonus,
    /// Bonus for very high availability (on stored pay).
    pub availability_bonus: AvailabilityBonus,
}

const DAY: u64 = 24 * 3600;

impl Default for PayPolicy {
    fn default() -> Self {
        Self {
            mode: PayMode::Rates,
            served_per_gb: 1.0,
            stored_per_gb_month: 2.0,
            repair_per_gb: 0.8,
            levels: vec![
                Level::new("new", 1.0, 0.0, 0, 0.0),
                Level::new("steady", 1.2, 0.8, 3, 0.95),
                Level::new("reliable", 1.4, 0.95, 10, 0.98),
            ],
            raise_after: Duration::from_secs(7 * DAY),
            availability_window: Duration::from_secs(7 * DAY),
            cut_levels: u32::MAX,
            fine_factor: 2.0,
            debt_after_offences: 2,
            offence_memory: Duration::from_secs(180 * DAY),
            hold: vec![
                HoldStep::days(0, 0.75),
                HoldStep::days(30, 0.5),
                HoldStep::days(90, 0.25),
                HoldStep::days(180, 0.0),
            ],
            hold_for: Duration::from_secs(90 * DAY),
            bandwidth_bonus: BandwidthBonus::default(),
            location_bonus: LocationBonus::default(),
            availability_bonus: AvailabilityBonus::default(),
        }
    }
}

fn de_cut_levels<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(u32),
        Word(String),
    }
    match Repr::deserialize(d)? {
        Repr::Number(n) => Ok(n),
        Repr::Word(w) if w == "all" => Ok(u32::MAX),
        Repr::Word(w) => Err(serde::de::Error::custom(format!(
            "expected a number of levels or \"all\", found {w:?}"
        ))),
    }
}

fn ser_cut_levels<S: serde::Serializer>(n: &u32, s: S) -> Result<S::Ok, S::Error> {
    if *n == u32::MAX {
        s.serialize_str("all")
    } else {
        s.serialize_u32(*n)
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `x` in `[lo, hi]` (NaN is not).
fn within(field: &str, x: f64, lo: f64, hi: f64) -> Result<(), PolicyError> {
    if (lo..=hi).contains(&x) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be in [{lo}, {hi}], found {x}"),
        ))
    }
}

fn positive(field: &str, d: Duration) -> Result<(), PolicyError> {
    if d.is_zero() {
        Err(invalid(field, "must be longer than 0s, found 0s"))
    } else {
        Ok(())
    }
}

impl PayPolicy {
    /// Checks every field; the error names the first bad one, what it must be and what it is.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let PayMode::RevenueShare { share } = self.mode
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(invalid(
                "mode.revenue_share.share",
                format!("must be in (0, 1], found {share}"),
            ));
        }
        within("served_per_gb", self.served_per_gb, 0.0, MAX_RATE)?;
        within(
            "stored_per_gb_month",
            self.stored_per_gb_month,
            0.0,
            MAX_RATE,
        )?;
        within("repair_per_gb", self.repair_per_gb, 0.0, MAX_RATE)?;

        if self.levels.is_empty() {
            return Err(invalid(
                "levels",
                "must name at least one level, found none",
            ));
        }
        for (i, level) in self.levels.iter().enumerate() {
            let field = |f: &str| format!("levels[{i}].{f}");
            if level.name.trim().is_empty() {
                return Err(invalid(field("name"), "must not be empty"));
            }
            if self.levels[..i].iter().any(|l| l.name == level.name) {
                return Err(invalid(
                    field("name"),
                    format!("must be unique, found {:?} twice", level.name),
                ));
            }
            let m = level.multiplier;
            if !(m > 0.0 && m <= MAX_MULTIPLIER) {
                return Err(invalid(
                    field("multiplier"),
                    format!("must be greater than 0 and at most {MAX_MULTIPLIER}, found {m}"),
                ));
            }
            if i > 0 && m < self.levels[i - 1].multiplier {
                return Err(invalid(
                    field("multiplier"),
                    format!(
                        "levels must be ordered lowest first: found {m} after {}",
                        self.levels[i - 1].multiplier
                    ),
                ));
            }
            within(&field("min_availability"), level.min_availability, 0.0, 1.0)?;
            within(&field("min_audit_score"), level.min_audit_score, 0.0, 1.0)?;
        }

        positive("availability_window", self.availability_window)?;
        if self.cut_levels == 0 {
            return Err(invalid(
                "cut_levels",
                "must be at least 1 (or \"all\"): an offence always costs a level, found 0",
            ));
        }
        within("fine_factor", self.fine_factor, 0.0, MAX_FINE_FACTOR)?;
        if self.debt_after_offences == 0 {
            return Err(invalid(
                "debt_after_offences",
                "must be at least 1 (1: debt from the first offence), found 0",
            ));
        }
        positive("offence_memory", self.offence_memory)?;

        for (i, step) in self.hold.iter().enumerate() {
            within(&format!("hold[{i}].fraction"), step.fraction, 0.0, 1.0)?;
            if i == 0 && !step.age.is_zero() {
                return Err(invalid(
                    "hold[0].age",
                    format!(
                        "must be 0s so every node has a hold-back fraction, found {}",
                        humantime::format_duration(step.age)
                    ),
                ));
            }
            if i > 0 && step.age <= self.hold[i - 1].age {
                return Err(invalid(
                    format!("hold[{i}].age"),
                    format!(
                        "steps must be ordered by increasing age: found {} after {}",
                        humantime::format_duration(step.age),
                        humantime::format_duration(self.hold[i - 1].age)
                    ),
                ));
            }
        }
        positive("hold_for", self.hold_for)?;

        within(
            "bandwidth_bonus.fraction",
            self.bandwidth_bonus.fraction,
            0.0,
            1.0,
        )?;
        within(
            "location_bonus.max_share",
            self.location_bonus.max_share,
            0.0,
            1.0,
        )?;
        within(
            "location_bonus.fraction",
            self.location_bonus.fraction,
            0.0,
            1.0,
        )?;
        within(
            "availability_bonus.min_availability",
            self.availability_bonus.min_availability,
            0.0,
            1.0,
        )?;
        within(
            "availability_bonus.fraction",
            self.availability_bonus.fraction,
            0.0,
            1.0,
        )?;
        Ok(())
    }

    /// The highest level multiplier, in ppm.
    pub fn top_multiplier_ppm(&self) -> i64 {
        self.levels
            .iter()
            .map(|l| ppm(l.multiplier))
            .max()
            .unwrap_or(PPM)
    }

    /// The most a node can ever earn per GB served, in µcr, rounded up: the top multiplier ×
    /// the higher of the served and repair rates × (1 + every bonus that applies to served
    /// bytes). Revenue share only ever pays less.
    pub fn max_pay_per_gb_served(&self) -> i64 {
        let rate = micro(self.served_per_gb).max(micro(self.repair_per_gb)) as i128;
        let bonus = ppm(self.bandwidth_bonus.fraction) + ppm(self.location_bonus.fraction);
        let num = self.top_multiplier_ppm() as i128 * rate * (PPM + bonus) as i128;
        let den = PPM as i128 * PPM as i128;
        // Ceiling: the floor must never sit below what a node can really earn.
        i64::try_from((num + den - 1).div_euclid(den)).unwrap_or(i64::MAX)
    }

    /// The price per GB of allowance (µcr) a ticket must exceed: [`Self::max_pay_per_gb_served`].
    pub fn ticket_price_floor_per_gb(&self) -> i64 {
        self.max_pay_per_gb_served()
    }

    /// Refuses a ticket whose price (µcr) per GB of its allowance does not exceed the most a
    /// node can earn per GB served, so that buying a ticket to download from oneself never pays.
    pub fn check_ticket_price(&self, price: i64, allowance_bytes: u64) -> Result<(), PolicyError> {
        if allowance_bytes == 0 {
            return Err(PolicyError::EmptyAllowance);
        }
        let floor = self.ticket_price_floor_per_gb();
        // price / (allowance / GB) > floor, without division: (2^63)(2^64) fits in u128.
        let ok = price > 0
            && (price as u128) * (GB as u128) > (floor.max(0) as u128) * (allowance_bytes as u128);
        if ok {
            Ok(())
        } else {
            Err(PolicyError::TicketTooCheap {
                price,
                allowance_bytes,
                floor_per_gb: floor,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section as an operator writes it, under a `[pay]` table.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        pay: PayPolicy,
    }

    fn parse(toml_text: &str) -> Result<PayPolicy, toml::de::Error> {
        toml::from_str::<Config>(toml_text).map(|c| c.pay)
    }

    const FULL: &str = r#"
[pay]
mode = { revenue_share = { share = 0.7 } }
served_per_gb = 1.5
stored_per_gb_month = 3.0
repair_per_gb = 0.5
raise_after = "14days"
availability_window = "5days"
cut_levels = 1
fine_factor = 3.0
debt_after_offences = 3
offence_memory = "90days"
hold = [
    { age = "0s", fraction = 0.8 },
    { age = "60days", fraction = 0.2 },
]
hold_for = "30days"
bandwidth_bonus = { min_bps = 5000000, fraction = 0.05 }
location_bonus = { max_share = 0.1, fraction = 0.2 }
availability_bonus = { min_availability = 0.99, fraction = 0.15 }

[[pay.levels]]
name = "new"
multiplier = 1.0

[[pay.levels]]
name = "proven"
multiplier = 1.5
min_availability = 0.9
min_audits_passed = 5
min_audit_score = 0.97
"#;

    #[test]
    fn default_policy_validates() {
        PayPolicy::default().validate().unwrap();
    }

    #[test]
    fn full_section_parses() {
        let p = parse(FULL).unwrap();
        p.validate().unwrap();
        assert_eq!(p.mode, PayMode::RevenueShare { share: 0.7 });
        assert_eq!(p.served_per_gb, 1.5);
        assert_eq!(p.stored_per_gb_month, 3.0);
        assert_eq!(p.repair_per_gb, 0.5);
        assert_eq!(p.raise_after, Duration::from_secs(14 * DAY));
        assert_eq!(p.availability_window, Duration::from_secs(5 * DAY));
        assert_eq!(p.cut_levels, 1);
        assert_eq!(p.fine_factor, 3.0);
        assert_eq!(p.debt_after_offences, 3);
        assert_eq!(p.offence_memory, Duration::from_secs(90 * DAY));
        assert_eq!(
            p.hold,
            vec![HoldStep::days(0, 0.8), HoldStep::days(60, 0.2)]
        );
        assert_eq!(p.hold_for, Duration::from_secs(30 * DAY));
        assert_eq!(
            p.bandwidth_bonus,
            BandwidthBonus {
                min_bps: 5_000_000,
                fraction: 0.05
            }
        );
        assert_eq!(
            p.location_bonus,
            LocationBonus {
                max_share: 0.1,
                fraction: 0.2
            }
        );
        assert_eq!(
            p.availability_bonus,
            AvailabilityBonus {
                min_availability: 0.99,
                fraction: 0.15
            }
        );
        assert_eq!(
            p.levels,
            vec![
                Level::new("new", 1.0, 0.0, 0, 0.0),
                Level::new("proven", 1.5, 0.9, 5, 0.97),
            ]
        );
    }

    #[test]
    fn module_doc_example_is_the_default() {
        let doc = include_str!("policy.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| {
                l.strip_prefix("//!")
                    .unwrap()
                    .strip_prefix(' ')
                    .unwrap_or("")
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse(&doc).unwrap(), PayPolicy::default());
    }

    #[test]
    fn empty_section_is_the_default_and_rates_mode_parses() {
        assert_eq!(parse("[pay]").unwrap(), PayPolicy::default());
        let p = parse("[pay]\nmode = \"rates\"\ncut_levels = \"all\"").unwrap();
        assert_eq!(p.mode, PayMode::Rates);
        assert_eq!(p.cut_levels, u32::MAX);
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in [
            "[pay]\nserved_per_tb = 1.0",
            "[pay]\nbandwidth_bonus = { min_bps = 1, fraction = 0.1, extra = 1 }",
            "[pay]\nhold = [{ age = \"0s\", fraction = 0.5, until = \"1d\" }]",
            "[pay]\nmode = { revenue_share = { share = 0.5, cap = 1 } }",
            "[pay]\nmode = \"lottery\"",
            "[[pay.levels]]\nname = \"x\"\nmultiplier = 1.0\nbonus = 2",
        ] {
            assert!(parse(text).is_err(), "accepted {text}");
        }
        let err = parse("[pay]\nserved_per_tb = 1.0").unwrap_err().to_string();
        assert!(err.contains("served_per_tb"), "{err}");
        let err = parse("[pay]\ncut_levels = \"some\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"all\""), "{err}");
    }

    fn refused(change: impl FnOnce(&mut PayPolicy), field: &str) {
        let mut p = PayPolicy::default();
        change(&mut p);
        match p.validate() {
            Err(PolicyError::Invalid { field: f, problem }) => {
                assert_eq!(f, field, "{problem}");
                let msg = p.validate().unwrap_err().to_string();
                assert!(msg.contains(field), "{msg}");
            }
            other => panic!("{field}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn validate_refuses_each_bad_field() {
        refused(
            |p| p.mode = PayMode::RevenueShare { share: 0.0 },
            "mode.revenue_share.share",
        );
        refused(
            |p| p.mode = PayMode::RevenueShare { share: 1.01 },
            "mode.revenue_share.share",
        );
        refused(
            |p| p.mode = PayMode::RevenueShare { share: f64::NAN },
            "mode.revenue_share.share",
        );
        refused(|p| p.served_per_gb = -0.1, "served_per_gb");
        refused(|p| p.served_per_gb = f64::NAN, "served_per_gb");
        refused(|p| p.served_per_gb = MAX_RATE * 2.0, "served_per_gb");
        refused(|p| p.stored_per_gb_month = -1.0, "stored_per_gb_month");
        refused(|p| p.repair_per_gb = -1.0, "repair_per_gb");
        refused(|p| p.levels.clear(), "levels");
        refused(|p| p.levels[0].multiplier = 0.0, "levels[0].multiplier");
        refused(|p| p.levels[1].multiplier = -1.2, "levels[1].multiplier");
        refused(|p| p.levels[2].multiplier = 1.1, "levels[2].multiplier");
        refused(|p| p.levels[2].multiplier = 1e6, "levels[2].multiplier");
        refused(|p| p.levels[1].name = " ".into(), "levels[1].name");
        refused(|p| p.levels[2].name = "new".into(), "levels[2].name");
        refused(
            |p| p.levels[1].min_availability = 1.5,
            "levels[1].min_availability",
        );
        refused(
            |p| p.levels[2].min_audit_score = -0.1,
            "levels[2].min_audit_score",
        );
        refused(
            |p| p.availability_window = Duration::ZERO,
            "availability_window",
        );
        refused(|p| p.cut_levels = 0, "cut_levels");
        refused(|p| p.fine_factor = -2.0, "fine_factor");
        refused(|p| p.debt_after_offences = 0, "debt_after_offences");
        refused(|p| p.offence_memory = Duration::ZERO, "offence_memory");
        refused(|p| p.hold[1].fraction = 1.5, "hold[1].fraction");
        refused(|p| p.hold[0].fraction = -0.5, "hold[0].fraction");
        refused(|p| p.hold[0].age = Duration::from_secs(1), "hold[0].age");
        refused(|p| p.hold.swap(1, 2), "hold[2].age");
        refused(|p| p.hold[3].age = p.hold[2].age, "hold[3].age");
        refused(|p| p.hold_for = Duration::ZERO, "hold_for");
        refused(
            |p| p.bandwidth_bonus.fraction = 2.0,
            "bandwidth_bonus.fraction",
        );
        refused(
            |p| p.location_bonus.max_share = -0.1,
            "location_bonus.max_share",
        );
        refused(
            |p| p.location_bonus.fraction = 1.1,
            "location_bonus.fraction",
        );
        refused(
            |p| p.availability_bonus.min_availability = 2.0,
            "availability_bonus.min_availability",
        );
        refused(
            |p| p.availability_bonus.fraction = -1.0,
            "availability_bonus.fraction",
        );
    }

    #[test]
    fn empty_hold_and_zero_rates_are_allowed() {
        let p = PayPolicy {
            hold: vec![],
            served_per_gb: 0.0,
            ..PayPolicy::default()
        };
        p.validate().unwrap();
    }

    #[test]
    fn conversions_round_to_the_nearest_unit() {
        assert_eq!(micro(0.1), 100_000);
        assert_eq!(micro(1.2), 1_200_000);
        assert_eq!(micro(0.000_000_4), 0);
        assert_eq!(micro(0.000_000_6), 1);
        assert_eq!(ppm(0.7), 700_000);
        assert_eq!(ppm(1.4), 1_400_000);
    }

    #[test]
    fn max_pay_per_gb_served_is_top_rate_with_served_bonuses() {
        // Default: 1.4 × max(1.0, 0.8) × (1 + 0.1 + 0.1) = 1.68 credits.
        let p = PayPolicy::default();
        assert_eq!(p.max_pay_per_gb_served(), 1_680_000);
        assert_eq!(p.ticket_price_floor_per_gb(), 1_680_000);
        // Repair rate above the served rate counts instead; bonuses off.
        let p = PayPolicy {
            repair_per_gb: 2.0,
            bandwidth_bonus: BandwidthBonus {
                fraction: 0.0,
                ..Default::default()
            },
            location_bonus: LocationBonus {
                fraction: 0.0,
                ..Default::default()
            },
            ..PayPolicy::default()
        };
        assert_eq!(p.max_pay_per_gb_served(), 2_800_000);
        // Rounded up: 1.4 × 0.000_001 × 1.2 = 0.00000168 credits → 2 µcr, not 1.
        let p = PayPolicy {
            served_per_gb: 0.000_001,
            repair_per_gb: 0.0,
            ..PayPolicy::default()
        };
        assert_eq!(p.max_pay_per_gb_served(), 2);
    }

    #[test]
    fn check_ticket_price_refuses_at_or_below_max_pay() {
        let p = PayPolicy::default();
        let max = p.max_pay_per_gb_served(); // 1.68 credits per GB
        // Exactly the max per GB: refused; one µcr more: accepted.
        assert!(matches!(
            p.check_ticket_price(max, GB),
            Err(PolicyError::TicketTooCheap { .. })
        ));
        p.check_ticket_price(max + 1, GB).unwrap();
        // 10 GB for 10 × max: refused; below: refused; above: accepted.
        assert!(p.check_ticket_price(10 * max, 10 * GB).is_err());
        assert!(p.check_ticket_price(10 * max - 1, 10 * GB).is_err());
        p.check_ticket_price(10 * max + 1, 10 * GB).unwrap();
        // A fraction of a GB: per-GB price is price × GB / allowance.
        assert!(p.check_ticket_price(max / 2, GB / 2).is_err());
        p.check_ticket_price(max / 2 + 1, GB / 2).unwrap();
        // Free or negative tickets, huge allowances, no allowance.
        assert!(p.check_ticket_price(0, 1).is_err());
        assert!(p.check_ticket_price(-5, 1).is_err());
        assert!(p.check_ticket_price(1_000_000, u64::MAX).is_err());
        p.check_ticket_price(i64::MAX, u64::MAX).unwrap(); // ~500 credits per GB
        assert_eq!(
            p.check_ticket_price(100, 0),
            Err(PolicyError::EmptyAllowance)
        );
        let msg = p.check_ticket_price(max, GB).unwrap_err().to_string();
        assert!(msg.contains("1680000 µcr per GB"), "{msg}");
    }
}
