//! The pay core: one reconciliation run's confirmed work per node in, double-entry ledger
//! entries and new per-node pay states out. Sans-IO: no clock (`now` comes in [`RunInfo`]), no
//! database (the caller persists [`NodeState`]s and appends the entries), so the simulator pays
//! a million nodes with the very same code.
//!
//! # Ledger convention
//!
//! Every [`Entry`] moves `amount` (always > 0) **out of `debit` into `credit`**: the balance of
//! `credit` rises by `amount`, the balance of `debit` falls by it. So a node's
//! [`Account::Available`] balance is what the CM owes it (negative: debt to work off),
//! [`Account::Work`] and [`Account::Bonuses`] go negative by what the CM has spent, and
//! [`Account::Penalties`], [`Account::Forfeits`] and [`Account::Payouts`] grow by what was
//! fined, forfeited and paid out. The sum over all accounts is zero by construction
//! ([`balances`]). Balances are derived from entries, never edited.
//!
//! # A node's settlement, in order
//!
//! 1. **Offences.** A run in which the node has conflicting claims is one offence: its level is
//!    cut by `cut_levels`, the time is recorded, everything held is forfeited
//!    (Held → Forfeits), and a fine of `fine_factor` × the claims' value is booked
//!    (Available → Penalties): in full from the `debt_after_offences`-th remembered offence on
//!    (the balance may go negative), otherwise only out of a positive available balance.
//! 2. **Accruals** per service at the (new) level's multiplier (Work → Available); no storage
//!    pay when an audit failed this period. In revenue-share mode every accrual and bonus is
//!    scaled by `pool / value` when the pool is smaller than the value of all work at the rates.
//! 3. **Bonuses** for bandwidth, location and availability, one entry per bonus and service
//!    (Bonuses → Available).
//! 4. **Hold-back**: the node's age step's fraction of accruals + bonuses (Available → Held),
//!    in debt too: a released tranche then pays the debt down.
//! 5. **Release** of matured held tranches (Held → Available), unless forfeited in step 1.
//! 6. **Raise** by at most one level when the node was clean long enough and meets the next
//!    level's criteria.
//!
//! # Arithmetic
//!
//! Amounts are integer micro-credits (µcr); rates are µcr per unit and multipliers and
//! fractions parts per million (converted from the policy by rounding, see
//! [`crate::policy`]). Each amount is computed from the exact product in 128-bit integers and
//! divided once, **rounding down**, so a node is never paid a fraction of a µcr it did not
//! earn. Amounts saturate at `i64::MAX` µcr rather than wrap (nine trillion credits: never in
//! practice).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::policy::{GB, MONTH_SECS, PPM, PayMode, PayPolicy, micro, ppm};

/// The run being settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// The time of the run (Unix seconds): offence times, level times and hold ages count from it.
    pub now: u64,
    /// Start of the period whose work is settled (Unix seconds, for memos).
    pub period_from: u64,
    /// End of the period whose work is settled (Unix seconds, for memos).
    pub period_to: u64,
    /// µcr of tickets sold in the period: the base of the pool in revenue-share mode.
    pub revenue: i64,
}

/// A node's work in the period, as confirmed by reconciliation (conflicting claims removed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Bytes delivered to ticket holders.
    pub served_bytes: u64,
    /// Bytes served to the CM's repair fetches.
    pub repair_bytes: u64,
    /// Fragments held, in byte-seconds.
    pub stored_byte_secs: u128,
}

/// What the CM knows about a node, measured by the caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Facts {
    /// Time since the node's identity was registered.
    pub age_secs: u64,
    /// Availability (0..=1) over the policy's `availability_window`.
    pub availability: f64,
    /// Upload bandwidth, bytes per second.
    pub upload_bps: u64,
    /// The share (0..=1) of online nodes in the node's location; 1.0 when unknown.
    pub location_share: f64,
    /// Audits the node has passed, in total.
    pub audits_passed: u32,
    /// The node's (decaying) audit score, 0..=1.
    pub audit_score: f64,
    /// An audit failed this period: no storage pay.
    pub lost_storage: bool,
}

/// What reconciliation held against a node this run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offences {
    /// Conflicting claims found (any number > 0 makes this run one offence).
    pub conflicts: u32,
    /// µcr the conflicting claims would have earned at the node's rate.
    pub conflict_value: i64,
    /// Statistical outliers flagged as suspected collusion: no raise, but no fine.
    pub suspected_collusion: u32,
}

/// A node's pay state between runs; persisted by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Index into the policy's levels (0: lowest).
    pub level: u32,
    /// When the node entered its current level.
    pub level_since: u64,
    /// When the node was last caught or suspected (or registered).
    pub clean_since: u64,
    /// Times of the remembered offences, oldest first; pruned by `offence_memory`.
    pub offences: Vec<u64>,
    /// Until when the node's storage is settled (paid, or lost to a failed audit). Set by the
    /// caller's storage pass and carried through; `None`: never settled.
    #[serde(default)]
    pub stored_to: Option<u64>,
}

impl NodeState {
    /// A new identity: the lowest level, clean from `now`.
    pub fn new(now: u64) -> Self {
        Self {
            level: 0,
            level_since: now,
            clean_since: now,
            offences: Vec::new(),
            stored_to: None,
        }
    }
}

/// A node's balances before the run, derived by the caller from the ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    /// Owed to the node now (negative: debt).
    pub available: i64,
    /// Held back, not yet released.
    pub held: i64,
    /// The part of `held` held at least `hold_for` ago and not forfeited: released this run
    /// (see [`matured_held`]).
    pub matured_held: i64,
}

/// Everything about one node for one run.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInput<Id> {
    pub node: Id,
    pub state: NodeState,
    pub work: Work,
    pub facts: Facts,
    pub offences: Offences,
    pub balances: Balances,
}

/// A paid service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Bytes delivered to ticket holders (per GB).
    Served,
    /// Fragments held (per GB-month).
    Stored,
    /// Bytes served to the CM's repair fetches (per GB).
    Repair,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Served => "served",
            Service::Stored => "stored",
            Service::Repair => "repair",
        })
    }
}

/// A ledger account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Account<Id> {
    /// What the CM owes the node now (negative: the node's debt).
    Available(Id),
    /// The node's held-back earnings.
    Held(Id),
    /// The CM's expense for work.
    Work,
    /// The CM's expense for bonuses.
    Bonuses,
    /// The CM's income from fines.
    Penalties,
    /// The CM's income from forfeited held earnings.
    Forfeits,
    /// Paid out to nodes.
    Payouts,
}

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Work → Available: pay for confirmed work.
    Accrual,
    /// Bonuses → Available: a bonus for scarce value.
    Bonus,
    /// Available → Held: hold-back.
    Hold,
    /// Held → Available: a matured tranche.
    Release,
    /// Held → Forfeits: held earnings lost on an offence.
    Forfeit,
    /// Available → Penalties: a fine.
    Penalty,
    /// Available → Payouts: money sent to the node's owner.
    Payout,
}

/// One ledger entry: `amount` µcr moves out of `debit` into `credit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<Id> {
    pub kind: EntryKind,
    /// The account the amount leaves (its balance falls).
    pub debit: Account<Id>,
    /// The account the amount enters (its balance rises).
    pub credit: Account<Id>,
    /// µcr, always > 0.
    pub amount: i64,
    /// The service an accrual or bonus pays for.
    pub service: Option<Service>,
    /// Why, for people.
    pub memo: String,
}

/// What a run did to one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSummary<Id> {
    pub node: Id,
    /// Level before the run.
    pub level_before: u32,
    /// Level after the run (after any cut and raise).
    pub level_after: u32,
    /// Whether this run counted as an offence.
    pub offence: bool,
    /// µcr accrued for work (all services).
    pub accrued: i64,
    /// µcr of bonuses.
    pub bonuses: i64,
    /// µcr held back this run.
    pub held: i64,
    /// µcr of matured holds released.
    pub released: i64,
    /// µcr of held earnings forfeited.
    pub forfeited: i64,
    /// µcr fined (booked).
    pub fined: i64,
    /// µcr of the fine not booked because the node was below the debt rule and its balance
    /// did not cover it.
    pub fine_waived: i64,
    /// Balances after the run (`matured_held` is 0: any matured tranche was released).
    pub balances: Balances,
}

/// The revenue-share pool of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// `share` × revenue, µcr.
    pub pool: i64,
    /// All accruals and bonuses of the run valued at the rates, µcr.
    pub valued: i128,
    /// What was paid out of the pool (≤ both); the rest stays with the CM.
    pub paid: i64,
}

/// The result of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Settlement<Id> {
    /// Entries to append to the ledger, node by node in `Id` order.
    pub entries: Vec<Entry<Id>>,
    /// Every node's new state, in `Id` order.
    pub states: Vec<(Id, NodeState)>,
    /// What happened to each node, in `Id` order.
    pub summary: Vec<NodeSummary<Id>>,
    /// The pool, in revenue-share mode.
    pub pool: Option<Pool>,
}

/// The balance of every account touched by `entries`. The values always sum to zero (each
/// entry adds to one account what it takes from another); saturating at the `i64` range.
pub fn balances<'a, Id: Clone + Ord + 'a>(
    entries: impl IntoIterator<Item = &'a Entry<Id>>,
) -> BTreeMap<Account<Id>, i64> {
    let mut out = BTreeMap::new();
    for e in entries {
        let d = out.entry(e.debit.clone()).or_insert(0i64);
        *d = d.saturating_sub(e.amount);
        let c = out.entry(e.credit.clone()).or_insert(0i64);
        *c = c.saturating_add(e.amount);
    }
    out
}

/// A payout of a node's whole available balance, when it is positive and at least
/// `min_payout`; never while the node has debt or nothing to pay.
pub fn payout<Id: Clone>(node: &Id, available: i64, min_payout: i64) -> Option<Entry<Id>> {
    (available > 0 && available >= min_payout).then(|| Entry {
        kind: EntryKind::Payout,
        debit: Account::Available(node.clone()),
        credit: Account::Payouts,
        amount: available,
        service: None,
        memo: format!("payout of {}", credits(available)),
    })
}

/// The matured part of a node's held earnings: tranches held at least `hold_for` before `now`
/// since the last forfeit, less what was already released. `events` are the node's Hold,
/// Release and Forfeit entries as `(run time, kind, amount)` in ledger order (other kinds are
/// ignored). Releases take matured tranches oldest first, so the difference is exact.
pub fn matured_held(
    policy: &PayPolicy,
    now: u64,
    events: impl IntoIterator<Item = (u64, EntryKind, i64)>,
) -> i64 {
    let hold_for = policy.hold_for.as_secs();
    let (mut matured, mut released) = (0i64, 0i64);
    for (time, kind, amount) in events {
        match kind {
            EntryKind::Forfeit => (matured, released) = (0, 0),
            EntryKind::Hold if time.saturating_add(hold_for) <= now => {
                matured = matured.saturating_add(amount)
            }
            EntryKind::Release => released = released.saturating_add(amount),
            _ => {}
        }
    }
    (matured - released).max(0)
}

/// `floor(a × k / d)` without overflowing the product: `a = q·d + r`, so the result is
/// `q·k + floor(r·k / d)`. Exact while `(d - 1)·k` fits a `u128`, which the policy's limits on
/// rates and multipliers guarantee; saturates otherwise.
fn mul_div(a: u128, k: u128, d: u128) -> u128 {
    let (q, r) = (a / d, a % d);
    let low = r.checked_mul(k).map_or(u128::MAX, |x| x / d);
    q.saturating_mul(k).saturating_add(low)
}

fn to_i64(x: impl TryInto<i64>) -> i64 {
    x.try_into().unwrap_or(i64::MAX)
}

/// `floor(amount × part / PPM)` for a non-negative amount.
fn fraction(amount: i64, part: i64) -> i64 {
    to_i64(mul_div(
        amount.max(0) as u128,
        part.max(0) as u128,
        PPM as u128,
    ))
}

/// µcr as credits, for memos.
fn credits(micro_credits: i64) -> String {
    let sign = if micro_credits < 0 { "-" } else { "" };
    let m = micro_credits.unsigned_abs();
    format!("{sign}{}.{:06} cr", m / PPM as u64, m % PPM as u64)
}

/// ppm as a decimal, for memos.
fn decimal(parts: i64) -> String {
    let s = format!("{}.{:06}", parts / PPM, parts % PPM);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[derive(Clone, Copy, Debug)]
enum Bonus {
    Bandwidth,
    Location,
    Availability,
}

impl Bonus {
    fn name(self) -> &'static str {
        match self {
            Bonus::Bandwidth => "bandwidth",
            Bonus::Location => "location",
            Bonus::Availability => "availability",
        }
    }

    fn applies_to(self, service: Service) -> bool {
        matches!(
            (self, service),
            (Bonus::Bandwidth, Service::Served | Service::Repair)
                | (Bonus::Location, Service::Served | Service::Stored)
                | (Bonus::Availability, Service::Stored)
        )
    }
}

/// The policy in integer units.
struct Compiled<'a> {
    policy: &'a PayPolicy,
    /// µcr per GB served, per GB-month stored, per GB repaired.
    served: u128,
    stored: u128,
    repair: u128,
    multipliers: Vec<i64>,
    fine: i64,
    hold: Vec<(u64, i64)>,
}

impl<'a> Compiled<'a> {
    fn new(policy: &'a PayPolicy) -> Self {
        let rate = |credits: f64| micro(credits).max(0) as u128;
        Self {
            policy,
            served: rate(policy.served_per_gb),
            stored: rate(policy.stored_per_gb_month),
            repair: rate(policy.repair_per_gb),
            multipliers: policy
                .levels
                .iter()
                .map(|l| ppm(l.multiplier).max(0))
                .collect(),
            fine: ppm(policy.fine_factor).max(0),
            hold: policy
                .hold
                .iter()
                .map(|s| (s.age.as_secs(), ppm(s.fraction).clamp(0, PPM)))
                .collect(),
        }
    }

    fn top(&self) -> u32 {
        self.multipliers.len().saturating_sub(1) as u32
    }

    fn level_name(&self, level: u32) -> &str {
        self.policy
            .levels
            .get(level as usize)
            .map_or("?", |l| l.name.as_str())
    }

    /// Accruals at the rates for `level`, per service with a non-zero amount.
    fn accruals(&self, level: u32, work: &Work, lost_storage: bool) -> Vec<(Service, i64)> {
        let m = self.multipliers.get(level as usize).copied().unwrap_or(PPM) as u128;
        let per_gb = GB as u128 * PPM as u128;
        let per_gb_month = GB as u128 * MONTH_SECS as u128 * PPM as u128;
        let stored = if lost_storage {
            0
        } else {
            mul_div(work.stored_byte_secs, self.stored * m, per_gb_month)
        };
        [
            (
                Service::Served,
                mul_div(work.served_bytes as u128, self.served * m, per_gb),
            ),
            (Service::Stored, stored),
            (
                Service::Repair,
                mul_div(work.repair_bytes as u128, self.repair * m, per_gb),
            ),
        ]
        .into_iter()
        .map(|(s, a)| (s, to_i64(a)))
        .filter(|&(_, a)| a > 0)
        .collect()
    }

    /// The bonuses a node qualifies for, with their fraction in ppm.
    fn bonuses(&self, facts: &Facts) -> Vec<(Bonus, i64)> {
        let p = self.policy;
        let mut out = Vec::new();
        if facts.upload_bps >= p.bandwidth_bonus.min_bps {
            out.push((Bonus::Bandwidth, ppm(p.bandwidth_bonus.fraction)));
        }
        if facts.location_share <= p.location_bonus.max_share {
            out.push((Bonus::Location, ppm(p.location_bonus.fraction)));
        }
        if facts.availability >= p.availability_bonus.min_availability {
            out.push((Bonus::Availability, ppm(p.availability_bonus.fraction)));
        }
        out.retain(|&(_, f)| f > 0);
        out
    }

    /// The hold-back fraction (ppm) for a node of this age: the step with the greatest age at
    /// most the node's; none below the first step.
    fn hold_fraction(&self, age_secs: u64) -> i64 {
        self.hold
            .iter()
            .rev()
            .find(|&&(age, _)| age <= age_secs)
            .map_or(0, |&(_, f)| f)
    }
}

/// Pass one: what a node's offences do, and its pay valued at the rates.
struct Plan {
    level_before: u32,
    /// After any cut.
    level: u32,
    offence: bool,
    /// Remembered offences, this run's included.
    offences: Vec<u64>,
    fine_due: i64,
    debt: bool,
    accruals: Vec<(Service, i64)>,
    bonuses: Vec<(Bonus, Service, i64)>,
}

impl Plan {
    fn valued(&self) -> i128 {
        let a: i128 = self.accruals.iter().map(|&(_, a)| a as i128).sum();
        let b: i128 = self.bonuses.iter().map(|&(_, _, a)| a as i128).sum();
        a + b
    }
}

fn plan<Id>(c: &Compiled<'_>, run: &RunInfo, n: &NodeInput<Id>) -> Plan {
    let p = c.policy;
    let memory = p.offence_memory.as_secs();
    let level_before = n.state.level.min(c.top());
    let mut offences: Vec<u64> = n
        .state
        .offences
        .iter()
        .copied()
        .filter(|&t| run.now.saturating_sub(t) <= memory)
        .collect();
    let offence = n.offences.conflicts > 0;
    let mut level = level_before;
    if offence {
        level = level.saturating_sub(p.cut_levels);
        offences.push(run.now);
    }
    let fine_due = fraction(n.offences.conflict_value, c.fine);
    let debt = offences.len() as u64 >= p.debt_after_offences as u64;
    let accruals = c.accruals(level, &n.work, n.facts.lost_storage);
    let qualifying = c.bonuses(&n.facts);
    let mut bonuses = Vec::new();
    for &(service, accrued) in &accruals {
        for &(bonus, part) in &qualifying {
            if bonus.applies_to(service) {
                let amount = fraction(accrued, part);
                if amount > 0 {
                    bonuses.push((bonus, service, amount));
                }
            }
        }
    }
    Plan {
        level_before,
        level,
        offence,
        offences,
        fine_due: if offence { fine_due } else { 0 },
        debt,
        accruals,
        bonuses,
    }
}

/// Settles one run: every node's offences, accruals, bonuses, hold-back, releases and level.
/// Nodes are settled in `Id` order whatever the input order, so the output is deterministic;
/// give each node once. The policy should have passed [`PayPolicy::validate`]; a level in a
/// state beyond the policy's levels (the policy shrank) counts as the top level.
pub fn settle<Id: Clone + Ord>(
    policy: &PayPolicy,
    run: &RunInfo,
    mut nodes: Vec<NodeInput<Id>>,
) -> Settlement<Id> {
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    debug_assert!(
        nodes.windows(2).all(|w| w[0].node != w[1].node),
        "a node given twice"
    );
    let c = Compiled::new(policy);
    let plans: Vec<Plan> = nodes.iter().map(|n| plan(&c, run, n)).collect();

    // Revenue share: scale every amount by pool / value when the pool cannot pay the rates.
    let valued: i128 = plans.iter().map(Plan::valued).sum();
    let (pool, scale) = match policy.mode {
        PayMode::Rates => (None, None),
        PayMode::RevenueShare { share } => {
            let pool = fraction(run.revenue, ppm(share).clamp(0, PPM));
            let scale = (valued > pool as i128).then_some((pool as i128, valued));
            (Some(pool), scale)
        }
    };
    let scaled = |amount: i64| match scale {
        // amount ≤ value and pool < value: the result fits and never exceeds the rate.
        Some((pool, valued)) => (amount as i128 * pool / valued) as i64,
        None => amount,
    };
    let pool_memo = match scale {
        Some((pool, valued)) => format!(
            ", × pool {} / value {}",
            credits(pool as i64),
            credits(to_i64(valued))
        ),
        None => String::new(),
    };

    let period = format!("[{}, {})", run.period_from, run.period_to);
    let mut out = Settlement {
        entries: Vec::new(),
        states: Vec::with_capacity(nodes.len()),
        summary: Vec::with_capacity(nodes.len()),
        pool: None,
    };
    let mut paid = 0i64;
    for (n, plan) in nodes.into_iter().zip(plans) {
        let id = n.node;
        let avail = || Account::Available(id.clone());
        let held_acc = || Account::Held(id.clone());
        let mut entries = Vec::new();
        let mut push = |kind, debit, credit, amount: i64, service, memo: String| {
            if amount > 0 {
                entries.push(Entry {
                    kind,
                    debit,
                    credit,
                    amount,
                    service,
                    memo,
                });
            }
        };
        let mut available = n.balances.available;
        let mut held = n.balances.held.max(0);

        // 1. Offence: forfeit everything held, then the fine.
        let (mut forfeited, mut fined, mut fine_waived) = (0, 0, 0);
        if plan.offence {
            forfeited = held;
            push(
                EntryKind::Forfeit,
                held_acc(),
                Account::Forfeits,
                forfeited,
                None,
                format!(
                    "held earnings forfeited: {} conflicting claims in {period}",
                    n.offences.conflicts
                ),
            );
            held = 0;
            fined = if plan.debt {
                plan.fine_due
            } else {
                plan.fine_due.min(available.max(0))
            };
            fine_waived = plan.fine_due - fined;
            let rule = if plan.debt {
                format!("offence {}: booked in full", plan.offences.len())
            } else {
                format!(
                    "offence {}: only out of the balance, {} waived",
                    plan.offences.len(),
                    credits(fine_waived)
                )
            };
            push(
                EntryKind::Penalty,
                avail(),
                Account::Penalties,
                fined,
                None,
                format!(
                    "fine {} × {} of conflicting claims ({rule})",
                    decimal(c.fine),
                    credits(n.offences.conflict_value.max(0))
                ),
            );
            available = available.saturating_sub(fined);
        }

        // 2. Accruals at the (new) level.
        let multiplier = c
            .multipliers
            .get(plan.level as usize)
            .copied()
            .unwrap_or(PPM);
        let mut accrued = 0i64;
        for &(service, at_rate) in &plan.accruals {
            let amount = scaled(at_rate);
            let work = match service {
                Service::Served => format!("{:.6} GB", n.work.served_bytes as f64 / GB as f64),
                Service::Repair => format!("{:.6} GB", n.work.repair_bytes as f64 / GB as f64),
                Service::Stored => format!(
                    "{:.6} GB-months",
                    n.work.stored_byte_secs as f64 / (GB as f64 * MONTH_SECS as f64)
                ),
            };
            push(
                EntryKind::Accrual,
                Account::Work,
                avail(),
                amount,
                Some(service),
                format!(
                    "{service} {work} in {period} at level {} (×{}){pool_memo}",
                    c.level_name(plan.level),
                    decimal(multiplier)
                ),
            );
            accrued = accrued.saturating_add(amount);
        }

        // 3. Bonuses.
        let mut bonuses = 0i64;
        for &(bonus, service, at_rate) in &plan.bonuses {
            let amount = scaled(at_rate);
            push(
                EntryKind::Bonus,
                Account::Bonuses,
                avail(),
                amount,
                Some(service),
                format!("{} bonus on {service} pay{pool_memo}", bonus.name()),
            );
            bonuses = bonuses.saturating_add(amount);
        }
        let earned = accrued.saturating_add(bonuses);
        available = available.saturating_add(earned);
        paid = paid.saturating_add(earned);

        // 4. Hold-back by age.
        let part = c.hold_fraction(n.facts.age_secs);
        let hold = fraction(earned, part);
        push(
            EntryKind::Hold,
            avail(),
            held_acc(),
            hold,
            None,
            format!(
                "hold-back {} % of {} (node age {} days)",
                decimal(part * 100),
                credits(earned),
                n.facts.age_secs / 86_400
            ),
        );

        // 5. Release matured tranches, unless forfeited above.
        let released = if plan.offence {
            0
        } else {
            n.balances.matured_held.clamp(0, held)
        };
        push(
            EntryKind::Release,
            held_acc(),
            avail(),
            released,
            None,
            "matured hold-back released".to_owned(),
        );
        available = available.saturating_sub(hold).saturating_add(released);
        held = held.saturating_add(hold) - released;
        out.entries.extend(entries);

        // 6. Level.
        let mut state = NodeState {
            level: plan.level,
            level_since: n.state.level_since,
            clean_since: n.state.clean_since,
            offences: plan.offences,
            stored_to: n.state.stored_to,
        };
        if plan.level != n.state.level {
            state.level_since = run.now;
        }
        let suspected = n.offences.suspected_collusion > 0;
        if plan.offence || suspected {
            state.clean_since = run.now;
        } else if let Some(next) = policy.levels.get(plan.level as usize + 1) {
            let clean_for = run
                .now
                .saturating_sub(state.level_since.max(state.clean_since));
            let f = &n.facts;
            if clean_for >= policy.raise_after.as_secs()
                && f.availability >= next.min_availability
                && f.audits_passed >= next.min_audits_passed
                && f.audit_score >= next.min_audit_score
            {
                state.level += 1;
                state.level_since = run.now;
            }
        }

        out.summary.push(NodeSummary {
            node: id.clone(),
            level_before: plan.level_before,
            level_after: state.level,
            offence: plan.offence,
            accrued,
            bonuses,
            held: hold,
            released,
            forfeited,
            fined,
            fine_waived,
            balances: Balances {
                available,
                held,
                matured_held: 0,
            },
        });
        out.states.push((id, state));
    }
    out.pool = pool.map(|pool| Pool { pool, valued, paid });
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::policy::{AvailabilityBonus, BandwidthBonus, LocationBonus};

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_000 * DAY;
    const MB: u64 = 1_000_000;

    /// The default policy without bonuses or hold-back, so each test turns on what it tests.
    fn plain() -> PayPolicy {
        PayPolicy {
            hold: vec![],
            bandwidth_bonus: BandwidthBonus {
                fraction: 0.0,
                ..Default::default()
            },
            location_bonus: LocationBonus {
                fraction: 0.0,
                ..Default::default()
            },
            availability_bonus: AvailabilityBonus {
                fraction: 0.0,
                ..Default::default()
            },
            ..PayPolicy::default()
        }
    }

    fn run() -> RunInfo {
        RunInfo {
            now: NOW,
            period_from: NOW - DAY,
            period_to: NOW,
            revenue: 0,
        }
    }

    /// An honest, unremarkable node: meets no bonus and no raise criterion.
    fn facts() -> Facts {
        Facts {
            age_secs: 0,
            availability: 0.5,
            upload_bps: 0,
            location_share: 1.0,
            audits_passed: 0,
            audit_score: 0.0,
            lost_storage: false,
        }
    }

    fn node(id: u32) -> NodeInput<u32> {
        NodeInput {
            node: id,
            state: NodeState::new(NOW - DAY),
            work: Work::default(),
            facts: facts(),
            offences: Offences::default(),
            balances: Balances::default(),
        }
    }

    /// One node's Work/Stored/Repair accruals: 1.5 GB served, 1 GB-month stored (2 GB for
    /// 15 days), 3 GB repair.
    fn busy(id: u32, level: u32) -> NodeInput<u32> {
        let mut n = node(id);
        n.state.level = level;
        n.work = Work {
            served_bytes: 1_500 * MB,
            repair_bytes: 3_000 * MB,
            stored_byte_secs: 2 * GB as u128 * 15 * DAY as u128,
        };
        n
    }

    fn one(policy: &PayPolicy, n: NodeInput<u32>) -> Settlement<u32> {
        settle(policy, &run(), vec![n])
    }

    fn amounts(s: &Settlement<u32>, kind: EntryKind) -> Vec<(Option<Service>, i64)> {
        s.entries
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| (e.service, e.amount))
            .collect()
    }

    fn check_ledger(s: &Settlement<u32>) {
        assert!(s.entries.iter().all(|e| e.amount > 0), "{:?}", s.entries);
        assert!(s.entries.iter().all(|e| e.debit != e.credit));
        let b = balances(&s.entries);
        assert_eq!(b.values().map(|&v| v as i128).sum::<i128>(), 0, "{b:?}");
    }

    #[test]
    fn honest_accrual_at_the_lowest_level() {
        let s = one(&plain(), busy(1, 0));
        check_ledger(&s);
        assert_eq!(
            amounts(&s, EntryKind::Accrual),
            vec![
                (Some(Service::Served), 1_500_000),
                (Some(Service::Stored), 2_000_000),
                (Some(Service::Repair), 2_400_000),
            ]
        );
        for e in &s.entries {
            assert_eq!(
                (&e.debit, &e.credit),
                (&Account::Work, &Account::Available(1))
            );
        }
        assert_eq!(s.entries.len(), 3);
        let sum = &s.summary[0];
        assert_eq!((sum.accrued, sum.bonuses, sum.held), (5_900_000, 0, 0));
        assert_eq!(sum.balances.available, 5_900_000);
        let b = balances(&s.entries);
        assert_eq!(b[&Account::Work], -5_900_000);
        assert_eq!(b[&Account::Available(1)], 5_900_000);
        assert!(s.pool.is_none());
    }

    #[test]
    fn honest_accrual_at_a_higher_level() {
        let s = one(&plain(), busy(1, 2));
        check_ledger(&s);
        // × 1.4
        assert_eq!(
            amounts(&s, EntryKind::Accrual),
            vec![
                (Some(Service::Served), 2_100_000),
                (Some(Service::Stored), 2_800_000),
                (Some(Service::Repair), 3_360_000),
            ]
        );
        assert!(
            s.entries[0].memo.contains("reliable"),
            "{}",
            s.entries[0].memo
        );
        let s = one(&plain(), busy(1, 1));
        assert_eq!(s.summary[0].accrued, 1_800_000 + 2_400_000 + 2_880_000);
    }

    #[test]
    fn amounts_round_down() {
        let p = plain();
        let mut n = node(1);
        n.state.level = 1; // × 1.2
        // 999 B × 1 cr/GB × 1.2 = 1.1988 µcr → 1; 833 B → 0.9996 µcr → no entry.
        n.work.served_bytes = 999;
        n.work.repair_bytes = 833 * 10 / 8; // 1041 B × 0.8 × 1.2 = 0.99936 → 0
        // 1 GB for a month minus a second: 1.999999228... cr × 1.2 → floor.
        n.work.stored_byte_secs = GB as u128 * (MONTH_SECS as u128 - 1);
        let s = one(&p, n.clone());
        check_ledger(&s);
        // 2e6 × 1.2 × (2591999 / 2592000) = 2_399_999.074… → 2_399_999
        assert_eq!(
            amounts(&s, EntryKind::Accrual),
            vec![
                (Some(Service::Served), 1),
                (Some(Service::Stored), 2_399_999)
            ]
        );
        // Bonus and hold-back floor too: 10 % of 1 µcr is nothing; 75 % of 3 µcr is 2.
        let p = PayPolicy {
            bandwidth_bonus: BandwidthBonus {
                min_bps: 0,
                fraction: 0.1,
            },
            ..PayPolicy::default()
        };
        let mut n = node(1);
        n.work.served_bytes = 1_000; // 1 µcr
        let s = one(&p, n.clone());
        assert_eq!(amounts(&s, EntryKind::Bonus), vec![]);
        n.work.served_bytes = 3_000; // 3 µcr
        let s = one(&p, n);
        assert_eq!(amounts(&s, EntryKind::Hold), vec![(None, 2)]);
        check_ledger(&s);
    }

    #[test]
    fn hold_back_by_age_step() {
        let p = PayPolicy {
            hold: PayPolicy::default().hold,
            ..plain()
        };
        for (age_days, held) in [
            (0, 750_000),
            (29, 750_000),
            (30, 500_000),
            (89, 500_000),
            (90, 250_000),
            (179, 250_000),
            (180, 0),
            (5_000, 0),
        ] {
            let mut n = node(1);
            n.work.served_bytes = GB; // 1 cr
            n.facts.age_secs = age_days * DAY;
            let s = one(&p, n);
            check_ledger(&s);
            let want = if held > 0 { vec![(None, held)] } else { vec![] };
            assert_eq!(amounts(&s, EntryKind::Hold), want, "age {age_days} days");
            let sum = &s.summary[0];
            assert_eq!(sum.held, held);
            assert_eq!(sum.balances.available, 1_000_000 - held);
            assert_eq!(sum.balances.held, held);
            if held > 0 {
                let e = s
                    .entries
                    .iter()
                    .find(|e| e.kind == EntryKind::Hold)
                    .unwrap();
                assert_eq!(
                    (&e.debit, &e.credit),
                    (&Account::Available(1), &Account::Held(1))
                );
            }
        }
        let c = Compiled::new(&p);
        assert_eq!(c.hold_fraction(30 * DAY - 1), 750_000);
        assert_eq!(c.hold_fraction(30 * DAY), 500_000);
    }

    #[test]
    fn hold_back_covers_accruals_and_bonuses() {
        let p = PayPolicy {
            hold: PayPolicy::default().hold,
            bandwidth_bonus: BandwidthBonus {
                min_bps: 1,
                fraction: 0.1,
            },
            ..plain()
        };
        let mut n = node(1);
        n.work.served_bytes = GB;
        n.facts.upload_bps = 1;
        let s = one(&p, n);
        check_ledger(&s);
        // (1 + 0.1) cr × 0.75
        assert_eq!(amounts(&s, EntryKind::Hold), vec![(None, 825_000)]);
        assert_eq!(s.summary[0].balances.available, 275_000);
    }

    #[test]
    fn matured_holds_are_released() {
        let mut n = node(1);
        n.balances = Balances {
            available: 10,
            held: 500_000,
            matured_held: 300_000,
        };
        let s = one(&plain(), n.clone());
        check_ledger(&s);
        assert_eq!(amounts(&s, EntryKind::Release), vec![(None, 300_000)]);
        let e = &s.entries[0];
        assert_eq!(
            (&e.debit, &e.credit),
            (&Account::Held(1), &Account::Available(1))
        );
        let sum = &s.summary[0];
        assert_eq!(sum.released, 300_000);
        assert_eq!(
            sum.balances,
            Balances {
                available: 300_010,
                held: 200_000,
                matured_held: 0
            }
        );
        // Never more than is held.
        n.balances.matured_held = 900_000;
        let s = one(&plain(), n);
        assert_eq!(amounts(&s, EntryKind::Release), vec![(None, 500_000)]);
    }

    #[test]
    fn matured_held_counts_tranches_since_the_last_forfeit() {
        let p = PayPolicy::default(); // hold_for 90 days
        let now = 200 * DAY;
        use EntryKind::*;
        let events = [
            (10 * DAY, Hold, 100),
            (20 * DAY, Forfeit, 100),
            (20 * DAY, Hold, 40), // after the forfeit, same run: kept
            (50 * DAY, Hold, 60),
            (105 * DAY, Accrual, 999),
            (110 * DAY, Hold, 7),     // matured exactly now
            (111 * DAY, Hold, 1_000), // not yet
            (140 * DAY, Release, 40),
        ];
        assert_eq!(matured_held(&p, now, events), 60 + 7);
        assert_eq!(matured_held(&p, now - 1, events), 60);
        assert_eq!(matured_held(&p, now, []), 0);
    }

    #[test]
    fn a_conflict_forfeits_everything_held_and_cuts_to_the_lowest_level() {
        let mut n = busy(1, 2);
        n.state.level_since = NOW - 100 * DAY;
        n.state.clean_since = NOW - 100 * DAY;
        n.balances = Balances {
            available: 0,
            held: 1_000_000,
            matured_held: 400_000,
        };
        n.offences = Offences {
            conflicts: 3,
            conflict_value: 0,
            suspected_collusion: 0,
        };
        n.facts = Facts {
            availability: 1.0,
            audits_passed: 100,
            audit_score: 1.0,
            ..facts()
        };
        let s = one(&plain(), n);
        check_ledger(&s);
        assert_eq!(amounts(&s, EntryKind::Forfeit), vec![(None, 1_000_000)]);
        assert_eq!(amounts(&s, EntryKind::Release), vec![]);
        assert_eq!(amounts(&s, EntryKind::Penalty), vec![]);
        let e = &s.entries[0];
        assert_eq!(
            (&e.debit, &e.credit),
            (&Account::Held(1), &Account::Forfeits)
        );
        // Paid at the lowest level this very run.
        assert_eq!(s.summary[0].accrued, 5_900_000);
        let (_, state) = &s.states[0];
        assert_eq!(
            state,
            &NodeState {
                level: 0,
                level_since: NOW,
                clean_since: NOW,
                offences: vec![NOW],
                stored_to: None,
            }
        );
        let sum = &s.summary[0];
        assert_eq!((sum.level_before, sum.level_after), (2, 0));
        assert!(sum.offence);
        assert_eq!((sum.forfeited, sum.balances.held), (1_000_000, 0));
    }

    #[test]
    fn cut_levels_takes_that_many_levels() {
        let p = PayPolicy {
            cut_levels: 1,
            ..plain()
        };
        let mut n = node(1);
        n.state.level = 2;
        n.offences.conflicts = 1;
        let s = one(&p, n.clone());
        assert_eq!(s.states[0].1.level, 1);
        n.state.level = 0;
        let s = one(&p, n);
        assert_eq!(s.states[0].1.level, 0);
        assert_eq!(s.states[0].1.level_since, NOW - DAY);
    }

    #[test]
    fn first_offence_fine_is_capped_at_the_positive_balance() {
        let offence = Offences {
            conflicts: 1,
            conflict_value: 1_000_000, // fine 2 cr
            suspected_collusion: 0,
        };
        for (available, fined) in [(300_000, 300_000), (5_000_000, 2_000_000), (-50, 0), (0, 0)] {
            let mut n = node(1);
            n.offences = offence;
            n.balances.available = available;
            let s = one(&plain(), n);
            check_ledger(&s);
            let want = if fined > 0 {
                vec![(None, fined)]
            } else {
                vec![]
            };
            assert_eq!(
                amounts(&s, EntryKind::Penalty),
                want,
                "available {available}"
            );
            let sum = &s.summary[0];
            assert_eq!(sum.fined, fined);
            assert_eq!(sum.fine_waived, 2_000_000 - fined);
            assert_eq!(sum.balances.available, available - fined);
        }
        let mut n = node(1);
        n.offences = offence;
        n.balances.available = 300_000;
        let s = one(&plain(), n);
        let e = s
            .entries
            .iter()
            .find(|e| e.kind == EntryKind::Penalty)
            .unwrap();
        assert_eq!(
            (&e.debit, &e.credit),
            (&Account::Available(1), &Account::Penalties)
        );
    }

    #[test]
    fn second_offence_books_the_fine_as_debt() {
        let mut n = node(1);
        n.state.offences = vec![NOW - 10 * DAY];
        n.balances.available = 300_000;
        n.work.served_bytes = GB; // 1 cr accrued after the fine
        n.offences = Offences {
            conflicts: 1,
            conflict_value: 1_000_000,
            suspected_collusion: 0,
        };
        let s = one(&plain(), n);
        check_ledger(&s);
        assert_eq!(amounts(&s, EntryKind::Penalty), vec![(None, 2_000_000)]);
        let sum = &s.summary[0];
        assert_eq!((sum.fined, sum.fine_waived), (2_000_000, 0));
        assert_eq!(sum.balances.available, 300_000 - 2_000_000 + 1_000_000);
        assert_eq!(s.states[0].1.offences, vec![NOW - 10 * DAY, NOW]);
        // Debt: no payout until worked off.
        assert!(payout(&1u32, sum.balances.available, 0).is_none());
    }

    #[test]
    fn offence_memory_forgets_old_offences() {
        let memory = PayPolicy::default().offence_memory.as_secs();
        // Remembered exactly at the limit: the second offence, debt.
        let mut n = node(1);
        n.state.offences = vec![NOW - memory - 1, NOW - memory];
        n.offences = Offences {
            conflicts: 1,
            conflict_value: 1_000_000,
            suspected_collusion: 0,
        };
        let s = one(&plain(), n.clone());
        assert_eq!(s.summary[0].fined, 2_000_000);
        assert_eq!(s.states[0].1.offences, vec![NOW - memory, NOW]);
        // A second older: forgotten, so this is a first offence again (fine capped at 0).
        n.state.offences = vec![NOW - memory - 1];
        let s = one(&plain(), n.clone());
        assert_eq!(
            (s.summary[0].fined, s.summary[0].fine_waived),
            (0, 2_000_000)
        );
        assert_eq!(s.states[0].1.offences, vec![NOW]);
        // Pruned in clean runs too.
        n.offences = Offences::default();
        n.state.offences = vec![NOW - memory - 1, NOW - 5];
        let s = one(&plain(), n);
        assert_eq!(s.states[0].1.offences, vec![NOW - 5]);
    }

    /// A node at level 0 that has been clean long enough and meets level 1's criteria.
    fn ready() -> NodeInput<u32> {
        let mut n = node(1);
        n.state = NodeState {
            level: 0,
            level_since: NOW - 30 * DAY,
            clean_since: NOW - 7 * DAY,
            offences: vec![],
            stored_to: None,
        };
        n.facts = Facts {
            availability: 0.8,
            audits_passed: 3,
            audit_score: 0.95,
            ..facts()
        };
        n
    }

    #[test]
    fn raise_after_a_clean_period_with_the_criteria() {
        let s = one(&plain(), ready());
        check_ledger(&s);
        assert_eq!(
            s.states[0].1,
            NodeState {
                level: 1,
                level_since: NOW,
                clean_since: NOW - 7 * DAY,
                offences: vec![],
                stored_to: None,
            }
        );
        assert_eq!(
            (s.summary[0].level_before, s.summary[0].level_after),
            (0, 1)
        );
        // The raise takes effect from the next run: this run was paid at level 0.
        let mut n = ready();
        n.work.served_bytes = GB;
        assert_eq!(one(&plain(), n).summary[0].accrued, 1_000_000);
    }

    #[test]
    fn no_raise_without_every_condition() {
        type Change = fn(&mut NodeInput<u32>);
        let cases: [(&str, Change); 7] = [
            ("flapping", |n| n.facts.availability = 0.79),
            ("few audits", |n| n.facts.audits_passed = 2),
            ("low score", |n| n.facts.audit_score = 0.94),
            ("offence", |n| n.offences.conflicts = 1),
            ("collusion", |n| n.offences.suspected_collusion = 1),
            ("recently caught", |n| {
                n.state.clean_since = NOW - 7 * DAY + 1
            }),
            ("recently raised", |n| {
                n.state.level_since = NOW - 7 * DAY + 1
            }),
        ];
        for (name, change) in cases {
            let mut n = ready();
            change(&mut n);
            let s = one(&plain(), n);
            assert_eq!(s.states[0].1.level, 0, "{name}");
        }
    }

    #[test]
    fn suspected_collusion_resets_the_clean_time_without_a_fine() {
        let mut n = ready();
        n.state.level = 1;
        n.balances = Balances {
            available: 5_000_000,
            held: 100,
            matured_held: 100,
        };
        n.offences = Offences {
            conflicts: 0,
            conflict_value: 1_000_000,
            suspected_collusion: 4,
        };
        let s = one(&plain(), n);
        check_ledger(&s);
        assert_eq!(amounts(&s, EntryKind::Penalty), vec![]);
        assert_eq!(amounts(&s, EntryKind::Forfeit), vec![]);
        assert_eq!(amounts(&s, EntryKind::Release), vec![(None, 100)]);
        let (_, state) = &s.states[0];
        assert_eq!((state.level, state.clean_since), (1, NOW));
        assert!(state.offences.is_empty());
        assert!(!s.summary[0].offence);
    }

    #[test]
    fn at_most_one_level_per_run() {
        let p = plain();
        let mut n = ready();
        n.facts = Facts {
            availability: 1.0,
            audits_passed: 1_000,
            audit_score: 1.0,
            ..facts()
        };
        n.state.level_since = 0;
        n.state.clean_since = 0;
        let s = one(&p, n.clone());
        assert_eq!(s.states[0].1.level, 1);
        // Same time again: just raised, so not yet.
        n.state = s.states[0].1.clone();
        let s = one(&p, n.clone());
        assert_eq!(s.states[0].1.level, 1);
        // raise_after later: the next level; then the top holds.
        let later = RunInfo {
            now: NOW + 7 * DAY,
            ..run()
        };
        let s = settle(&p, &later, vec![n.clone()]);
        assert_eq!(s.states[0].1.level, 2);
        n.state = s.states[0].1.clone();
        let much_later = RunInfo {
            now: NOW + 700 * DAY,
            ..run()
        };
        let s = settle(&p, &much_later, vec![n]);
        assert_eq!(s.states[0].1.level, 2);
    }

    #[test]
    fn lost_storage_removes_only_storage_pay() {
        let p = PayPolicy {
            location_bonus: LocationBonus {
                max_share: 1.0,
                fraction: 0.1,
            },
            ..plain()
        };
        let mut n = busy(1, 0);
        n.facts.lost_storage = true;
        let s = one(&p, n);
        check_ledger(&s);
        assert_eq!(
            amounts(&s, EntryKind::Accrual),
            vec![
                (Some(Service::Served), 1_500_000),
                (Some(Service::Repair), 2_400_000)
            ]
        );
        // No storage bonus either; the served location bonus stays.
        assert_eq!(
            amounts(&s, EntryKind::Bonus),
            vec![(Some(Service::Served), 150_000)]
        );
    }

    #[test]
    fn each_bonus_is_its_own_entry_on_its_services() {
        let p = PayPolicy::default(); // every bonus 10 %
        let p = PayPolicy { hold: vec![], ..p };
        let bonus = |change: &dyn Fn(&mut Facts)| {
            let mut n = busy(1, 0);
            change(&mut n.facts);
            let s = one(&p, n);
            check_ledger(&s);
            for e in s.entries.iter().filter(|e| e.kind == EntryKind::Bonus) {
                assert_eq!(
                    (&e.debit, &e.credit),
                    (&Account::Bonuses, &Account::Available(1))
                );
            }
            amounts(&s, EntryKind::Bonus)
        };
        // Accruals: served 1.5, stored 2.0, repair 2.4 credits.
        assert_eq!(bonus(&|_| {}), vec![]);
        assert_eq!(
            bonus(&|f| f.upload_bps = 10_000_000),
            vec![
                (Some(Service::Served), 150_000),
                (Some(Service::Repair), 240_000)
            ]
        );
        assert_eq!(bonus(&|f| f.upload_bps = 9_999_999), vec![]);
        assert_eq!(
            bonus(&|f| f.location_share = 0.05),
            vec![
                (Some(Service::Served), 150_000),
                (Some(Service::Stored), 200_000)
            ]
        );
        assert_eq!(bonus(&|f| f.location_share = 0.051), vec![]);
        assert_eq!(
            bonus(&|f| f.availability = 0.98),
            vec![(Some(Service::Stored), 200_000)]
        );
        assert_eq!(bonus(&|f| f.availability = 0.979), vec![]);
        // All three: five entries; summary adds them up.
        let mut n = busy(1, 0);
        n.facts = Facts {
            upload_bps: u64::MAX,
            location_share: 0.0,
            availability: 1.0,
            ..facts()
        };
        let s = one(&p, n);
        assert_eq!(amounts(&s, EntryKind::Bonus).len(), 5);
        assert_eq!(
            s.summary[0].bonuses,
            150_000 + 240_000 + 150_000 + 200_000 + 200_000
        );
        assert_eq!(balances(&s.entries)[&Account::Bonuses], -940_000);
    }

    #[test]
    fn revenue_share_splits_the_pool_in_proportion() {
        let p = PayPolicy {
            mode: PayMode::RevenueShare { share: 0.5 },
            ..plain()
        };
        let mut a = node(1);
        a.work.served_bytes = 3 * GB; // valued 3 cr
        let mut b = node(2);
        b.work.served_bytes = GB; // valued 1 cr
        let mut c = node(3);
        c.work.repair_bytes = 1_250 * MB; // valued 1 cr (at 0.8)
        // Pool 1 cr for work valued at 5 cr: a 0.6, b 0.2, c 0.2.
        let r = RunInfo {
            revenue: 2_000_000,
            ..run()
        };
        let s = settle(&p, &r, vec![c.clone(), a.clone(), b.clone()]);
        check_ledger(&s);
        let got: Vec<_> = s.summary.iter().map(|x| (x.node, x.accrued)).collect();
        assert_eq!(got, vec![(1, 600_000), (2, 200_000), (3, 200_000)]);
        assert_eq!(
            s.pool,
            Some(Pool {
                pool: 1_000_000,
                valued: 5_000_000,
                paid: 1_000_000
            })
        );
        // Floors: a pool of 1 µcr less leaves the fractions with the CM.
        let r = RunInfo {
            revenue: 1_999_998,
            ..run()
        };
        let s = settle(&p, &r, vec![a.clone(), b.clone(), c.clone()]);
        let got: Vec<_> = s.summary.iter().map(|x| x.accrued).collect();
        // 999_999 × 3/5 = 599_999.4, × 1/5 = 199_999.8
        assert_eq!(got, vec![599_999, 199_999, 199_999]);
        assert_eq!(s.pool.unwrap().paid, 999_997);
        // A rich period: every node gets its rate and no more; the rest is not distributed.
        let r = RunInfo {
            revenue: 1_000_000_000,
            ..run()
        };
        let s = settle(&p, &r, vec![a, b, c]);
        check_ledger(&s);
        let got: Vec<_> = s.summary.iter().map(|x| x.accrued).collect();
        assert_eq!(got, vec![3_000_000, 1_000_000, 1_000_000]);
        assert_eq!(balances(&s.entries)[&Account::Work], -5_000_000);
        assert_eq!(s.pool.unwrap().pool, 500_000_000);
        assert_eq!(s.pool.unwrap().paid, 5_000_000);
    }

    #[test]
    fn revenue_share_scales_bonuses_with_the_pool() {
        let p = PayPolicy {
            mode: PayMode::RevenueShare { share: 1.0 },
            bandwidth_bonus: BandwidthBonus {
                min_bps: 0,
                fraction: 0.25,
            },
            ..plain()
        };
        let mut a = node(1);
        a.work.served_bytes = 4 * GB; // 4 cr + 1 cr bonus
        let r = RunInfo {
            revenue: 1_000_000,
            ..run()
        };
        let s = settle(&p, &r, vec![a]);
        check_ledger(&s);
        assert_eq!(
            (s.summary[0].accrued, s.summary[0].bonuses),
            (800_000, 200_000)
        );
        // No revenue, no pay.
        let mut a = node(1);
        a.work.served_bytes = 4 * GB;
        let s = settle(&p, &run(), vec![a]);
        assert!(s.entries.is_empty());
        assert_eq!(s.pool.unwrap().paid, 0);
    }

    #[test]
    fn pay_per_gb_never_exceeds_the_ticket_floor() {
        let p = PayPolicy::default();
        let mut n = node(1);
        n.state.level = 2;
        n.work.served_bytes = 7 * GB + 123_456_789;
        n.facts = Facts {
            upload_bps: u64::MAX,
            location_share: 0.0,
            availability: 1.0,
            ..facts()
        };
        let s = one(&p, n.clone());
        let earned = (s.summary[0].accrued + s.summary[0].bonuses) as u128;
        let floor = p.max_pay_per_gb_served() as u128;
        assert!(earned * GB as u128 <= floor * n.work.served_bytes as u128);
        // Repair paid more than served: still under the floor.
        let p = PayPolicy {
            repair_per_gb: 3.0,
            ..p
        };
        n.work = Work {
            repair_bytes: n.work.served_bytes,
            ..Work::default()
        };
        let s = one(&p, n.clone());
        let earned = (s.summary[0].accrued + s.summary[0].bonuses) as u128;
        let floor = p.max_pay_per_gb_served() as u128;
        assert!(earned * GB as u128 <= floor * n.work.repair_bytes as u128);
    }

    #[test]
    fn payout_only_of_a_positive_balance_above_the_minimum() {
        let e = payout(&7u32, 5_000_000, 1_000_000).unwrap();
        assert_eq!(e.kind, EntryKind::Payout);
        assert_eq!(
            (e.debit, e.credit),
            (Account::Available(7), Account::Payouts)
        );
        assert_eq!(e.amount, 5_000_000);
        assert!(payout(&7u32, 999_999, 1_000_000).is_none());
        assert!(payout(&7u32, 0, 0).is_none());
        assert!(payout(&7u32, -10, -100).is_none());
        assert_eq!(payout(&7u32, 1, 0).unwrap().amount, 1);
    }

    #[test]
    fn huge_work_saturates_instead_of_wrapping() {
        let mut n = node(1);
        n.state.level = 2;
        n.work = Work {
            served_bytes: u64::MAX,
            repair_bytes: u64::MAX,
            stored_byte_secs: u128::MAX,
        };
        let s = one(&plain(), n);
        assert!(s.entries.iter().all(|e| e.amount > 0));
        // u64::MAX B × 1.4 cr/GB ≈ 25.8 G credits: fits; the storage saturates.
        assert_eq!(
            amounts(&s, EntryKind::Accrual)[0],
            (Some(Service::Served), 25_825_441_703_193_372)
        );
        assert_eq!(
            amounts(&s, EntryKind::Accrual)[1],
            (Some(Service::Stored), i64::MAX)
        );
    }

    #[test]
    fn memos_say_why() {
        let mut n = busy(1, 1);
        n.offences = Offences {
            conflicts: 2,
            conflict_value: 1_500_000,
            suspected_collusion: 0,
        };
        n.balances.available = 10_000_000;
        let s = one(&PayPolicy::default(), n);
        let memos: Vec<_> = s.entries.iter().map(|e| e.memo.as_str()).collect();
        assert!(memos[0].contains("fine 2 × 1.500000 cr"), "{memos:?}");
        assert!(memos[1].starts_with("served 1.500000 GB"), "{memos:?}");
        assert!(
            memos.iter().any(|m| m.starts_with("hold-back 75 %")),
            "{memos:?}"
        );
        assert_eq!(credits(-1_234_567), "-1.234567 cr");
        assert_eq!(decimal(1_200_000), "1.2");
        assert_eq!(decimal(2_000_000), "2");
    }

    /// Random nodes through random runs, carrying state and balances between runs like the
    /// caller does: the ledger always balances, every amount is positive, the summaries match
    /// the ledger, and the input order does not matter.
    #[test]
    fn ledger_balances_over_random_runs() {
        use EntryKind::*;
        let seed = 0x5eed_0001;
        let mut rng = SmallRng::seed_from_u64(seed);
        let policies = [
            PayPolicy::default(),
            PayPolicy {
                mode: PayMode::RevenueShare { share: 0.6 },
                cut_levels: 1,
                debt_after_offences: 1,
                ..PayPolicy::default()
            },
        ];
        for policy in &policies {
            let nodes = 40u32;
            let mut states: Vec<NodeState> = (0..nodes).map(|_| NodeState::new(0)).collect();
            let mut ledger: Vec<(u64, Entry<u32>)> = Vec::new();
            let mut now = 0;
            let (mut debts, mut raises) = (0, 0);
            for _ in 0..60 {
                now += rng.random_range(1..20) * DAY;
                let run = RunInfo {
                    now,
                    period_from: now - DAY,
                    period_to: now,
                    revenue: rng.random_range(0..50_000_000),
                };
                let derived = balances(ledger.iter().map(|(_, e)| e));
                let mut inputs: Vec<NodeInput<u32>> = (0..nodes)
                    .map(|id| {
                        let events = ledger
                            .iter()
                            .filter(|(_, e)| {
                                e.debit == Account::Held(id) || e.credit == Account::Held(id)
                            })
                            .map(|(t, e)| (*t, e.kind, e.amount));
                        let caught = rng.random_bool(0.03);
                        NodeInput {
                            node: id,
                            state: states[id as usize].clone(),
                            work: Work {
                                served_bytes: rng.random_range(0..5 * GB),
                                repair_bytes: rng.random_range(0..GB),
                                stored_byte_secs: rng
                                    .random_range(0..100 * GB as u128 * DAY as u128),
                            },
                            facts: Facts {
                                age_secs: now,
                                availability: rng.random::<f64>(),
                                upload_bps: rng.random_range(0..20_000_000),
                                location_share: rng.random::<f64>() * 0.2,
                                audits_passed: rng.random_range(0..20),
                                audit_score: 0.9 + rng.random::<f64>() * 0.1,
                                lost_storage: rng.random_bool(0.05),
                            },
                            offences: Offences {
                                conflicts: if caught { rng.random_range(1..4) } else { 0 },
                                conflict_value: if caught {
                                    rng.random_range(0..9_000_000)
                                } else {
                                    0
                                },
                                suspected_collusion: rng.random_bool(0.03) as u32,
                            },
                            balances: Balances {
                                available: derived
                                    .get(&Account::Available(id))
                                    .copied()
                                    .unwrap_or(0),
                                held: derived.get(&Account::Held(id)).copied().unwrap_or(0),
                                matured_held: matured_held(policy, now, events),
                            },
                        }
                    })
                    .collect();
                let s = settle(policy, &run, inputs.clone());
                check_ledger(&s);
                inputs.reverse();
                assert_eq!(settle(policy, &run, inputs.clone()), s, "seed {seed:#x}");
                // Summaries agree with the ledger after this run.
                ledger.extend(s.entries.iter().cloned().map(|e| (now, e)));
                let derived = balances(ledger.iter().map(|(_, e)| e));
                for sum in &s.summary {
                    let get = |a| derived.get(&a).copied().unwrap_or(0);
                    assert_eq!(sum.balances.available, get(Account::Available(sum.node)));
                    assert_eq!(sum.balances.held, get(Account::Held(sum.node)));
                    assert!(sum.balances.held >= 0);
                    if sum.offence {
                        assert_eq!(
                            sum.level_after,
                            sum.level_before.saturating_sub(policy.cut_levels)
                        );
                        assert_eq!(sum.balances.held, sum.held);
                    }
                    assert!(sum.level_after <= sum.level_before + 1);
                }
                if let Some(pool) = s.pool {
                    // Never more than the pool, never more than the rates.
                    assert!(pool.paid <= pool.pool || pool.paid as i128 == pool.valued);
                    assert!(pool.paid as i128 <= pool.valued);
                }
                debts += s
                    .summary
                    .iter()
                    .filter(|x| x.balances.available < 0)
                    .count();
                raises += s
                    .summary
                    .iter()
                    .filter(|x| x.level_after > x.level_before)
                    .count();
                for (i, (_, st)) in s.states.iter().enumerate() {
                    states[i] = st.clone();
                }
                // Pay some nodes out, as the caller would.
                for id in 0..nodes {
                    let available = derived.get(&Account::Available(id)).copied().unwrap_or(0);
                    if let Some(e) = payout(&id, available, 5_000_000) {
                        ledger.push((now, e));
                    }
                }
            }
            let all = Settlement {
                entries: ledger.into_iter().map(|(_, e)| e).collect(),
                states: vec![],
                summary: vec![],
                pool: None,
            };
            check_ledger(&all);
            // The batch reached every kind of entry, and some node fell into debt and rose.
            for kind in [Accrual, Bonus, Hold, Release, Forfeit, Penalty, Payout] {
                assert!(all.entries.iter().any(|e| e.kind == kind), "no {kind:?}");
            }
            assert!(debts > 0 && raises > 0, "debts {debts}, raises {raises}");
        }
    }

    #[test]
    fn policy_durations_are_used_in_seconds() {
        // raise_after of 1 hour: a node clean for an hour rises.
        let p = PayPolicy {
            raise_after: Duration::from_secs(3600),
            ..plain()
        };
        let mut n = ready();
        n.state.clean_since = NOW - 3600;
        assert_eq!(one(&p, n.clone()).states[0].1.level, 1);
        n.state.clean_since = NOW - 3599;
        assert_eq!(one(&p, n).states[0].1.level, 0);
    }
}
