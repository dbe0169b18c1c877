//! The simulated economy: tickets sold and downloads served, nodes' claims (honest or not),
//! storage audits, and the coordinator's own reconciliation ([`crate::reconcile`]), audit
//! ([`crate::audit`]) and pay ([`crate::pay`]) cores settling them once a day.
//!
//! Identities are `u32`: nodes by index, clients from [`CLIENTS`] up. A *machine* is what a
//! whitewasher keeps when it abandons an identity: earnings are summed per machine, so a
//! strategy is judged by what its owner ends up with.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, RngExt};
use rand_distr::{Distribution, StandardNormal};

use super::config;
use super::population::{DAY, Node};
use crate::audit::{AuditConfig, Auditor, Outcome as AuditOutcome, Verdict as AuditVerdict};
use crate::pay::{
    self, Account, Balances, EntryKind, Facts, NodeInput, NodeState, Offences, RunInfo, Work,
};
use crate::policy::{GB, MONTH_SECS, micro};
use crate::reconcile::{self, Completion, ReceiptFacts, Sale, SaleKind, ServedClaim, TicketCase};

/// First client identity.
pub const CLIENTS: u32 = 1 << 31;

/// What a node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Honest,
    OverClaim,
    DropData,
    Collude,
    Whitewash,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::Honest,
        Strategy::OverClaim,
        Strategy::DropData,
        Strategy::Collude,
        Strategy::Whitewash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Honest => "honest",
            Strategy::OverClaim => "over-claim",
            Strategy::DropData => "drop data",
            Strategy::Collude => "collude",
            Strategy::Whitewash => "whitewash",
        }
    }
}

/// What a content looks like to reconciliation.
#[derive(Clone, Copy, Debug)]
pub struct ContentInfo {
    pub segments: u32,
    pub k: u8,
    pub shards: u8,
    pub fragment_bytes: u64,
}

impl ContentInfo {
    pub fn bytes(&self) -> u64 {
        u64::from(self.segments) * u64::from(self.k) * self.fragment_bytes
    }
}

/// One identity's account and this period's tallies.
#[derive(Clone, Debug)]
struct Identity {
    machine: u32,
    strategy: Strategy,
    state: NodeState,
    available: i64,
    held: i64,
    /// Hold, Release and Forfeit entries, for the pay core's `matured_held`.
    holds: Vec<(u64, EntryKind, i64)>,
    served: u64,
    repair: u64,
    conflicts: u32,
    conflict_value: i128,
    suspected: u32,
    lost_storage: bool,
    offence_storage: bool,
    audits_passed: u32,
    /// Credits per day its owner expects (patience).
    expects: f64,
    /// Earnings of the last seven days, µcr, by day modulo 7.
    week: [i64; 7],
    retired: bool,
}

/// Per machine, what its owner ended up with.
#[derive(Clone, Debug, Default)]
struct Machine {
    strategy: Option<Strategy>,
    /// µcr: accruals and bonuses, fines, forfeits, and tickets bought (colluders).
    earned: i64,
    fined: i64,
    forfeited: i64,
    spent: i64,
    /// Offences it was charged with; identities it went through.
    offences: u32,
    identities: u32,
}

/// An open ticket: one download.
#[derive(Clone, Debug)]
struct Ticket {
    id: u64,
    content: u32,
    client: u32,
    at: u64,
    served: Vec<(u32, u64)>,
    completion: bool,
}

/// One day's figures for the reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Day {
    pub day: u32,
    /// Per strategy: mean over its machines of (available + held), credits.
    pub balance: BTreeMap<Strategy, f64>,
    /// Per strategy: mean over its machines of what was earned before penalties, credits.
    pub earned: BTreeMap<Strategy, f64>,
    pub downloads: u64,
    pub downloads_failed: u64,
    /// Claims reconciled, and those inflated with a forged receipt.
    pub claims: u64,
    pub inflated: u64,
    pub verdicts: BTreeMap<String, u64>,
    /// Identities at each pay level.
    pub levels: Vec<u64>,
    /// Share of the bytes paid as served today that the most available quarter of the
    /// registered identities (by 30-day availability) served.
    pub top_quarter_served: f64,
    /// Owners who quit today, paid less than they expect; and the mean age (days) of those.
    pub quits: u64,
    pub quit_age_days: f64,
    /// Mean age (days) of the identities registered.
    pub mean_age_days: f64,
}

/// The economy's figures over the run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EconomyOutcome {
    pub days: Vec<Day>,
    /// Per strategy: machines, offences charged, share of machines caught at least once,
    /// mean credits earned (net) per machine, and relative to honest machines.
    pub strategies: Vec<StrategyRow>,
    pub tickets: u64,
    pub audits: u64,
    pub audits_failed: u64,
    pub served_bytes: u128,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StrategyRow {
    pub strategy: String,
    pub machines: u64,
    pub identities: u64,
    pub offences: u64,
    pub caught_share: f64,
    pub net_per_machine: f64,
    pub fined_per_machine: f64,
    pub forfeited_per_machine: f64,
    pub spent_per_machine: f64,
    pub net_vs_honest: f64,
}

/// What the economy asks the world about placements.
pub struct Placements<'a> {
    /// Fragments of a content ever placed on a node: `(node, content)`.
    pub assigned: &'a dyn Fn(u32, u32) -> u64,
    /// Fragments of a content ever placed, on all nodes.
    pub assigned_total: &'a dyn Fn(u32) -> u64,
    /// Nodes holding fragments of a content at some time since the last settlement, with how
    /// many, sorted by node.
    pub held: &'a dyn Fn(u32) -> Vec<(u32, u64)>,
    /// A content of the economy's scheme the node holds a fragment of, picked by the given
    /// random number (a colluding client's pick).
    pub held_content: &'a dyn Fn(u32, u64) -> Option<u32>,
}

/// What the world must do after a settlement.
#[derive(Debug, Default)]
pub struct Consequences {
    /// Whitewashers caught: they abandon their identity and return as a new one.
    pub whitewash: Vec<u32>,
    /// Owners who quit, paid less than they expect.
    pub quit: Vec<u32>,
}

pub struct Economy {
    cfg: config::Economy,
    price_per_gb: i64,
    auditor: Auditor<u32>,
    accounts: Vec<Identity>,
    machines: Vec<Machine>,
    tickets: Vec<Ticket>,
    next_ticket: u64,
    next_client: u32,
    revenue: i64,
    period_from: u64,
    /// Nodes with a remembered offence: always checked in depth.
    watched: BTreeSet<u32>,
    out: EconomyOutcome,
    verdicts_today: BTreeMap<String, u64>,
    downloads_today: (u64, u64),
    claims_today: (u64, u64),
}

fn rate_value(bytes: u128, micro_per_unit: i64, unit: u128) -> i128 {
    (bytes.saturating_mul(micro_per_unit.max(0) as u128) / unit) as i128
}

impl Economy {
    pub fn new(cfg: &config::Economy) -> Self {
        let floor = cfg.pay.ticket_price_floor_per_gb();
        let price_per_gb = cfg
            .ticket_price_per_gb
            .map_or(floor + floor / 4, micro)
            .max(floor + 1);
        Self {
            auditor: Auditor::new(AuditConfig {
                mean_interval: cfg.audit_every,
                ..AuditConfig::default()
            }),
            cfg: cfg.clone(),
            price_per_gb,
            accounts: Vec::new(),
            machines: Vec::new(),
            tickets: Vec::new(),
            next_ticket: 0,
            next_client: CLIENTS,
            revenue: 0,
            period_from: 0,
            watched: BTreeSet::new(),
            out: EconomyOutcome::default(),
            verdicts_today: BTreeMap::new(),
            downloads_today: (0, 0),
            claims_today: (0, 0),
        }
    }

    fn draw_strategy(&self, rng: &mut impl Rng) -> Strategy {
        let s = &self.cfg.strategies;
        let mut x = rng.random::<f64>();
        for (share, strategy) in [
            (s.over_claim.share, Strategy::OverClaim),
            (s.drop_data.share, Strategy::DropData),
            (s.collude.share, Strategy::Collude),
            (s.whitewash.share, Strategy::Whitewash),
        ] {
            if x < share {
                return strategy;
            }
            x -= share;
        }
        Strategy::Honest
    }

    /// Opens identity `node`'s account: a new machine, or (`machine`) a whitewasher's fresh
    /// identity on the machine it already was.
    pub fn add_node(&mut self, node: u32, machine: Option<u32>, now: u64, rng: &mut impl Rng) {
        debug_assert_eq!(node as usize, self.accounts.len());
        let machine = machine.unwrap_or_else(|| {
            self.machines.push(Machine::default());
            (self.machines.len() - 1) as u32
        });
        let strategy = match self.machines[machine as usize].strategy {
            Some(s) => s,
            None => {
                let s = self.draw_strategy(rng);
                self.machines[machine as usize].strategy = Some(s);
                s
            }
        };
        self.machines[machine as usize].identities += 1;
        let z: f64 = StandardNormal.sample(rng);
        let p = &self.cfg.patience.expects_per_day;
        self.accounts.push(Identity {
            machine,
            strategy,
            state: NodeState::new(now),
            available: 0,
            held: 0,
            holds: Vec::new(),
            served: 0,
            repair: 0,
            conflicts: 0,
            conflict_value: 0,
            suspected: 0,
            lost_storage: false,
            offence_storage: false,
            audits_passed: 0,
            expects: p.median * (p.sigma * z).exp(),
            week: [0; 7],
            retired: false,
        });
        self.auditor.add_node(node, now, rng);
    }

    pub fn strategy(&self, node: u32) -> Strategy {
        self.accounts[node as usize].strategy
    }

    pub fn machine(&self, node: u32) -> u32 {
        self.accounts[node as usize].machine
    }

    /// Share of its fragments a node deletes.
    pub fn drops(&self, node: u32) -> f64 {
        match self.strategy(node) {
            Strategy::DropData => self.cfg.strategies.drop_data.fraction,
            _ => 0.0,
        }
    }

    /// The identity is given up (whitewashed or left): no more audits.
    pub fn retire(&mut self, node: u32) {
        self.accounts[node as usize].retired = true;
        self.auditor.remove_node(&node);
    }

    /// Bytes a node served to a repair.
    pub fn repair_served(&mut self, node: u32, bytes: u64) {
        self.accounts[node as usize].repair += bytes;
    }

    /// A download: a ticket sold now and the bytes each node served under it (`None`: it
    /// failed, too few holders were up).
    pub fn download(
        &mut self,
        content: u32,
        served: Option<Vec<(u32, u64)>>,
        info: &ContentInfo,
        now: u64,
        rng: &mut impl Rng,
    ) {
        self.downloads_today.0 += 1;
        let client = self.new_client();
        self.sell(info);
        let Some(served) = served else {
            self.downloads_today.1 += 1;
            return;
        };
        let completion = rng.random_bool(self.cfg.completion_reports);
        self.tickets.push(Ticket {
            id: self.next_ticket,
            content,
            client,
            at: now,
            served,
            completion,
        });
        self.next_ticket += 1;
    }

    fn new_client(&mut self) -> u32 {
        let c = self.next_client;
        self.next_client = self.next_client.wrapping_add(1).max(CLIENTS);
        c
    }

    fn sell(&mut self, info: &ContentInfo) -> i64 {
        let allowance = (info.bytes() as f64 * self.cfg.allowance_factor) as u64;
        let price = rate_value(u128::from(allowance), self.price_per_gb, u128::from(GB)) as i64;
        self.revenue += price;
        price
    }

    /// Audits due now, each to be answered by the world with the node's fragment and outcome.
    pub fn audits_due(
        &mut self,
        now: u64,
        rng: &mut impl Rng,
    ) -> Vec<crate::audit::AuditTask<u32>> {
        self.auditor.due(now, usize::MAX, rng)
    }

    /// Records an audit's outcome. As the coordinator's audit driver does, a fragment the node
    /// no longer claims (`claimed` false) that it cannot show is an admitted loss, not an
    /// offence.
    pub fn audited(
        &mut self,
        node: u32,
        fragment: overlay::store::FragmentId,
        outcome: AuditOutcome,
        claimed: bool,
        now: u64,
    ) -> AuditVerdict {
        let verdict = match self.auditor.outcome(&node, fragment, outcome, now) {
            AuditVerdict::Failed {
                fragment,
                reason,
                offence,
            } => AuditVerdict::Failed {
                fragment,
                reason,
                offence: offence && claimed,
            },
            other => other,
        };
        self.out.audits += u64::from(!matches!(verdict, AuditVerdict::Ignored));
        let a = &mut self.accounts[node as usize];
        match verdict {
            AuditVerdict::Passed => a.audits_passed += 1,
            AuditVerdict::Failed { offence, .. } => {
                self.out.audits_failed += 1;
                a.lost_storage = true;
                a.offence_storage |= offence;
            }
            _ => {}
        }
        verdict
    }

    /// The nightly run: reconciles every ticket of the period, pays every identity, and says
    /// who whitewashes or quits.
    pub fn settle(
        &mut self,
        now: u64,
        nodes: &[Node],
        contents: &[ContentInfo],
        placements: &Placements<'_>,
        rng: &mut impl Rng,
    ) -> Consequences {
        let today = now / DAY;
        let policy = self.cfg.pay.clone();
        let stored_rate = micro(policy.stored_per_gb_month);
        // Colluding clients buy their tickets for the day: for a content the node holds, the
        // most bytes reconciliation's bounds allow.
        let colluders: Vec<u32> = (0..self.accounts.len() as u32)
            .filter(|&n| {
                let a = &self.accounts[n as usize];
                a.strategy == Strategy::Collude && !a.retired && !nodes[n as usize].departed
            })
            .collect();
        let per_day = self.cfg.strategies.collude.tickets_per_day;
        let mut collusions: Vec<(Ticket, u32)> = Vec::new();
        for n in colluders {
            let tickets = per_day.floor() as u32 + u32::from(rng.random::<f64>() < per_day.fract());
            for _ in 0..tickets {
                let Some(c) = (placements.held_content)(n, rng.random::<u64>()) else {
                    continue;
                };
                let info = contents[c as usize];
                let price = self.sell(&info);
                let m = self.accounts[n as usize].machine as usize;
                self.machines[m].spent += price;
                let bound = ((placements.assigned)(n, c) as f64
                    * info.fragment_bytes as f64
                    * self.cfg.reconcile.refetch_factor) as u64;
                let allowance = (info.bytes() as f64 * self.cfg.allowance_factor) as u64;
                let client = self.new_client();
                collusions.push((
                    Ticket {
                        id: self.next_ticket,
                        content: c,
                        client,
                        at: now,
                        served: vec![(n, bound.min(allowance))],
                        completion: true,
                    },
                    n,
                ));
                self.next_ticket += 1;
            }
        }
        let tickets = std::mem::take(&mut self.tickets);
        let all = tickets
            .into_iter()
            .map(|t| (t, None))
            .chain(collusions.into_iter().map(|(t, n)| (t, Some(n))));
        let t0 = std::time::Instant::now();
        // Holdings per content, computed once a night for all its tickets.
        let mut held: std::collections::HashMap<u32, Vec<(u32, u64)>> =
            std::collections::HashMap::new();
        for (ticket, _colluder) in all {
            let held = held
                .entry(ticket.content)
                .or_insert_with(|| (placements.held)(ticket.content));
            self.reconcile_ticket(&ticket, contents, placements, held, now, rng);
        }
        self.out.tickets = self.next_ticket;

        let t1 = std::time::Instant::now();
        // Storage and pay for every identity still registered.
        let period = now - self.period_from;
        let mut inputs = Vec::new();
        for (n, a) in self.accounts.iter_mut().enumerate() {
            let node = &nodes[n];
            if a.retired || node.departed {
                continue;
            }
            // Paid for what is placed on it (a dropper claims what it deleted too), unless an
            // audit failed in the period.
            let stored = u128::from(node.stored) * u128::from(period);
            if a.offence_storage {
                a.conflicts += 1;
                a.conflict_value +=
                    rate_value(stored, stored_rate, u128::from(GB) * u128::from(MONTH_SECS));
            }
            let stored = if a.lost_storage { 0 } else { stored };
            inputs.push(NodeInput {
                node: n as u32,
                state: a.state.clone(),
                work: Work {
                    served_bytes: a.served,
                    repair_bytes: a.repair,
                    stored_byte_secs: stored,
                },
                facts: Facts {
                    age_secs: now.saturating_sub(node.born),
                    availability: node.availability(today, now),
                    upload_bps: node.upload_bps,
                    location_share: 1.0,
                    audits_passed: a.audits_passed,
                    audit_score: self.auditor.score(&(n as u32), now),
                    lost_storage: a.lost_storage,
                },
                offences: Offences {
                    conflicts: a.conflicts,
                    conflict_value: a.conflict_value.clamp(0, i128::from(i64::MAX)) as i64,
                    suspected_collusion: a.suspected,
                },
                balances: Balances {
                    available: a.available,
                    held: a.held,
                    matured_held: pay::matured_held(&policy, now, a.holds.iter().copied()),
                },
            });
        }
        let mut by_availability: Vec<(f64, u64)> = inputs
            .iter()
            .map(|i| (i.facts.availability, i.work.served_bytes))
            .collect();
        by_availability.sort_by(|a, b| b.0.total_cmp(&a.0));
        let top = by_availability.len().div_ceil(4);
        let served_all: u128 = by_availability.iter().map(|x| u128::from(x.1)).sum();
        let served_top: u128 = by_availability[..top].iter().map(|x| u128::from(x.1)).sum();
        let top_quarter_served = if served_all > 0 {
            served_top as f64 / served_all as f64
        } else {
            0.0
        };
        let mean_age_days = inputs
            .iter()
            .map(|i| i.facts.age_secs as f64 / DAY as f64)
            .sum::<f64>()
            / inputs.len().max(1) as f64;
        let t2 = std::time::Instant::now();
        let settlement = pay::settle(
            &policy,
            &RunInfo {
                now,
                period_from: self.period_from,
                period_to: now,
                revenue: self.revenue,
            },
            inputs,
        );
        let t3 = std::time::Instant::now();
        let day_slot = (today % 7) as usize;
        for a in &mut self.accounts {
            a.week[day_slot] = 0;
        }
        for e in &settlement.entries {
            self.book(e, now, day_slot);
        }
        let mut consequences = Consequences::default();
        for (node, state) in settlement.states {
            self.accounts[node as usize].state = state;
        }
        for s in &settlement.summary {
            let a = &self.accounts[s.node as usize];
            if s.offence {
                self.machines[a.machine as usize].offences += 1;
                self.watched.insert(s.node);
                if a.strategy == Strategy::Whitewash {
                    consequences.whitewash.push(s.node);
                }
            }
        }
        if self.cfg.patience.enabled && now >= 7 * DAY {
            for (n, a) in self.accounts.iter().enumerate() {
                if a.retired || nodes[n].departed || now.saturating_sub(nodes[n].born) < 7 * DAY {
                    continue;
                }
                let week: i64 = a.week.iter().sum();
                if (week as f64 / 7.0) / 1e6 < a.expects
                    && rng.random::<f64>() < self.cfg.patience.quit_per_day
                {
                    consequences.quit.push(n as u32);
                }
            }
        }
        for a in &mut self.accounts {
            a.served = 0;
            a.repair = 0;
            a.conflicts = 0;
            a.conflict_value = 0;
            a.suspected = 0;
            a.lost_storage = false;
            a.offence_storage = false;
        }
        self.revenue = 0;
        self.period_from = now;
        self.record_day(today, nodes, policy.levels.len());
        tracing::trace!(
            tickets = ?(t1 - t0),
            inputs = ?(t2 - t1),
            pay = ?(t3 - t2),
            rest = ?t3.elapsed(),
            "nightly settlement"
        );
        let quit_age: f64 = consequences
            .quit
            .iter()
            .map(|&n| now.saturating_sub(nodes[n as usize].born) as f64 / DAY as f64)
            .sum();
        if let Some(day) = self.out.days.last_mut() {
            day.top_quarter_served = top_quarter_served;
            day.mean_age_days = mean_age_days;
            day.quits = consequences.quit.len() as u64;
            day.quit_age_days = quit_age / consequences.quit.len().max(1) as f64;
        }
        consequences
    }

    fn reconcile_ticket(
        &mut self,
        t: &Ticket,
        contents: &[ContentInfo],
        placements: &Placements<'_>,
        held: &[(u32, u64)],
        now: u64,
        rng: &mut impl Rng,
    ) {
        let served_rate = micro(self.cfg.pay.served_per_gb);
        let assigned_total = (placements.assigned_total)(t.content);
        let held_by = |node: u32| {
            held.binary_search_by_key(&node, |e| e.0)
                .map_or(0, |i| held[i].1)
        };
        let info = contents[t.content as usize];
        let allowance = (info.bytes() as f64 * self.cfg.allowance_factor) as u64;
        let mut forged = BTreeSet::new();
        let mut claims = Vec::with_capacity(t.served.len());
        for &(node, bytes) in &t.served {
            let a = &self.accounts[node as usize];
            if a.retired {
                continue;
            }
            let cheat = match a.strategy {
                Strategy::OverClaim => Some(&self.cfg.strategies.over_claim),
                Strategy::Whitewash => Some(&self.cfg.strategies.whitewash),
                _ => None,
            };
            // An inflated claim carries a receipt the node signed itself in the client's name:
            // only a check of the signature in depth tells.
            let claimed = match cheat {
                Some(c) if rng.random_bool(c.probability) => {
                    forged.insert(node);
                    (bytes as f64 * c.factor) as u64
                }
                _ => bytes,
            };
            claims.push(ServedClaim {
                node,
                bytes: claimed,
                fragments: claimed.div_ceil(info.fragment_bytes.max(1)),
                receipt: Some(ReceiptFacts {
                    signer: t.client,
                    bytes: claimed,
                    fragments: claimed.div_ceil(info.fragment_bytes.max(1)),
                    seq: 1,
                    time: t.at,
                }),
                paid_bytes: 0,
                first_seen: now,
                report_seq: 1,
                assigned: (placements.assigned)(node, t.content),
                held: held_by(node),
            });
        }
        self.claims_today.0 += claims.len() as u64;
        self.claims_today.1 += forged.len() as u64;
        let completion = t.completion.then(|| Completion {
            id: t.id as i64,
            time: t.at,
            per_node: t.served.iter().copied().collect(),
        });
        let case = TicketCase {
            ticket: {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&t.id.to_le_bytes());
                id
            },
            content: String::new(),
            sale: Some(Sale {
                client: t.client,
                allowance,
                not_after: t.at + 7 * DAY,
                kind: SaleKind::Issued,
            }),
            claims,
            completion,
            assigned_total,
            held_total: held.iter().map(|e| e.1).sum(),
            fragment_size: info.fragment_bytes,
            k: u32::from(info.k),
            n: u32::from(info.shards),
        };
        let result = reconcile::reconcile_ticket(
            &self.cfg.reconcile,
            &case,
            now,
            &self.watched,
            rng,
            |claim| !forged.contains(&claim.node),
        );
        for c in &result.claims {
            self.accounts[c.node as usize].served += c.pay;
            self.out.served_bytes += u128::from(c.pay);
        }
        for v in &result.verdicts {
            *self
                .verdicts_today
                .entry(format!("{:?}", v.kind))
                .or_default() += 1;
            let Some(node) = v.node else { continue };
            let a = &mut self.accounts[node as usize];
            match v.outcome {
                reconcile::Outcome::Conflict if v.offence => {
                    a.conflicts += 1;
                    a.conflict_value += rate_value(v.amount, served_rate, u128::from(GB));
                }
                reconcile::Outcome::SuspectedCollusion => a.suspected += 1,
                _ => {}
            }
        }
    }

    fn book(&mut self, e: &pay::Entry<u32>, now: u64, day_slot: usize) {
        let mut touch = |account: &Account<u32>, sign: i64| match account {
            Account::Available(n) => self.accounts[*n as usize].available += sign * e.amount,
            Account::Held(n) => self.accounts[*n as usize].held += sign * e.amount,
            _ => {}
        };
        touch(&e.debit, -1);
        touch(&e.credit, 1);
        let node = match (&e.debit, &e.credit) {
            (Account::Available(n) | Account::Held(n), _)
            | (_, Account::Available(n) | Account::Held(n)) => *n,
            _ => return,
        };
        let a = &mut self.accounts[node as usize];
        let m = &mut self.machines[a.machine as usize];
        match e.kind {
            EntryKind::Accrual | EntryKind::Bonus => {
                m.earned += e.amount;
                a.week[day_slot] += e.amount;
            }
            EntryKind::Penalty => m.fined += e.amount,
            EntryKind::Forfeit => {
                m.forfeited += e.amount;
                a.holds.clear();
                a.holds.push((now, EntryKind::Forfeit, e.amount));
            }
            EntryKind::Hold | EntryKind::Release => a.holds.push((now, e.kind, e.amount)),
            _ => {}
        }
    }

    fn record_day(&mut self, today: u64, nodes: &[Node], levels: usize) {
        let mut balance: BTreeMap<Strategy, (f64, u64)> = BTreeMap::new();
        let mut per_machine: Vec<i64> = vec![0; self.machines.len()];
        for a in &self.accounts {
            per_machine[a.machine as usize] += a.available + a.held;
        }
        let mut earned: BTreeMap<Strategy, (f64, u64)> = BTreeMap::new();
        for (m, machine) in self.machines.iter().enumerate() {
            let Some(s) = machine.strategy else { continue };
            let b = balance.entry(s).or_default();
            b.0 += (per_machine[m] - machine.spent) as f64 / 1e6;
            b.1 += 1;
            let e = earned.entry(s).or_default();
            e.0 += machine.earned as f64 / 1e6;
            e.1 += 1;
        }
        let mut level_counts = vec![0u64; levels.max(1)];
        for (n, a) in self.accounts.iter().enumerate() {
            if !a.retired && !nodes[n].departed {
                level_counts[(a.state.level as usize).min(levels.max(1) - 1)] += 1;
            }
        }
        let mean = |m: BTreeMap<Strategy, (f64, u64)>| {
            m.into_iter()
                .map(|(s, (sum, n))| (s, sum / n.max(1) as f64))
                .collect()
        };
        self.out.days.push(Day {
            day: today as u32,
            balance: mean(balance),
            earned: mean(earned),
            downloads: self.downloads_today.0,
            downloads_failed: self.downloads_today.1,
            claims: self.claims_today.0,
            inflated: self.claims_today.1,
            verdicts: std::mem::take(&mut self.verdicts_today),
            levels: level_counts,
            ..Day::default()
        });
        self.downloads_today = (0, 0);
        self.claims_today = (0, 0);
    }

    /// The figures of the whole run.
    pub fn finish(mut self) -> EconomyOutcome {
        let mut rows: BTreeMap<Strategy, StrategyRow> = BTreeMap::new();
        let mut balance: Vec<i64> = vec![0; self.machines.len()];
        for a in &self.accounts {
            balance[a.machine as usize] += a.available + a.held;
        }
        for (m, machine) in self.machines.iter().enumerate() {
            let Some(s) = machine.strategy else { continue };
            let r = rows.entry(s).or_default();
            r.strategy = s.name().into();
            r.machines += 1;
            r.identities += u64::from(machine.identities);
            r.offences += u64::from(machine.offences);
            r.caught_share += f64::from(u8::from(machine.offences > 0));
            r.net_per_machine += (balance[m] - machine.spent) as f64 / 1e6;
            r.fined_per_machine += machine.fined as f64 / 1e6;
            r.forfeited_per_machine += machine.forfeited as f64 / 1e6;
            r.spent_per_machine += machine.spent as f64 / 1e6;
        }
        for r in rows.values_mut() {
            let n = r.machines.max(1) as f64;
            r.caught_share /= n;
            r.net_per_machine /= n;
            r.fined_per_machine /= n;
            r.forfeited_per_machine /= n;
            r.spent_per_machine /= n;
        }
        let honest = rows
            .get(&Strategy::Honest)
            .map_or(0.0, |r| r.net_per_machine);
        for r in rows.values_mut() {
            r.net_vs_honest = if honest > 0.0 {
                r.net_per_machine / honest
            } else {
                0.0
            };
        }
        self.out.strategies = rows.into_values().collect();
        self.out
    }
}
