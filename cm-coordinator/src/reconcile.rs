//! Reconciliation: nodes' claims against the witnesses they do not control.
//!
//! A pure core (records in, verdicts out; no I/O, no clock, randomness passed in), run by the
//! coordinator's accounting driver over its database and by the simulator over its model.
//!
//! # Participants
//! * **Claims** — what a node says it did: bytes served under a ticket (cumulative, with the
//!   client's newest receipt attached) and fragments it holds.
//! * **Witnesses** — client-signed receipts and completion reports, sales records (tickets sold
//!   through the CM or uploaded by partners, and the CM's own repair tickets), the CM's placement
//!   records, and audit outcomes.
//!
//! # Goals
//! * Every claim ends **confirmed** (the witnesses agree; the confirmed amount is what the
//!   weakest witness supports), **conflict** (beyond its receipt, for a content the node was never
//!   assigned, beyond the ticket's allowance, for an unsold or expired ticket, with a receipt
//!   another key signed, contradicted by the client's completion report, or storage of fragments
//!   never assigned), or **suspected collusion** (one ticket's bytes concentrate on a node far
//!   beyond what its share of the content's fragments explains under the CM's randomised
//!   contact lists).
//! * Every verdict carries references to its evidence.
//! * Cumulative claims make re-ingestion harmless: what was paid for a claim is remembered, and
//!   only growth of the confirmed total is paid again.
//! * Which claims get the expensive check (the receipt signature) is drawn at random per run, so
//!   a node cannot know which of its claims will be verified in depth.
//!
//! # Non-goals
//! Pricing: what a confirmed byte or byte-second earns is the pay core's business (`pay`).

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Tunables of reconciliation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Share of claims whose receipt signature is verified in depth each run (0..=1). Claims of
    /// nodes with a recent offence are always verified.
    pub deep_check_rate: f64,
    /// A node whose share of a ticket's bytes exceeds this multiple of its share of the
    /// content's fragments (and at least `n / k` times it, the most honest scheduling can
    /// explain) is suspected of colluding with the client.
    pub collusion_ratio: f64,
    /// Tickets with fewer bytes claimed in all are too small for the concentration statistic.
    pub collusion_min_bytes: u64,
    /// How long a claim under an unknown ticket waits for a partner's sales record before it is
    /// a conflict, seconds.
    pub sales_grace_secs: u64,
    /// Bytes a node may deliver under one ticket per byte of the content it holds (re-fetches
    /// after a client restart or a corrupt copy elsewhere); beyond it the claim is a conflict.
    pub refetch_factor: f64,
    /// Tolerance for clocks: receipts up to this many seconds after the ticket's expiry pass.
    pub clock_skew_secs: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            deep_check_rate: 0.05,
            collusion_ratio: 3.0,
            collusion_min_bytes: 8 << 20,
            sales_grace_secs: 24 * 3600,
            refetch_factor: 2.0,
            clock_skew_secs: 300,
        }
    }
}

impl ReconcileConfig {
    /// Refuses settings outside their ranges, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.deep_check_rate) {
            return Err(format!(
                "deep_check_rate must lie in 0..=1, found {}",
                self.deep_check_rate
            ));
        }
        if self.collusion_ratio.is_nan() || self.collusion_ratio < 1.0 {
            return Err(format!(
                "collusion_ratio must be at least 1, found {}",
                self.collusion_ratio
            ));
        }
        if self.refetch_factor.is_nan() || self.refetch_factor < 1.0 {
            return Err(format!(
                "refetch_factor must be at least 1, found {}",
                self.refetch_factor
            ));
        }
        Ok(())
    }
}

/// What a ticket was sold as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaleKind {
    /// Issued through the coordinator.
    Issued,
    /// Signed by the partner offline and uploaded as a sales record.
    Uploaded,
    /// The coordinator's own ticket for repair fetches: work paid as repair.
    Repair,
}

/// A sales record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale<P> {
    pub client: P,
    pub allowance: u64,
    pub not_after: u64,
    pub kind: SaleKind,
}

/// The client's newest receipt backing a claim, as far as the cheap checks need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFacts<P> {
    /// Who signed it (checked against the sale's client; the signature itself only in depth).
    pub signer: P,
    pub bytes: u64,
    pub fragments: u64,
    pub seq: u64,
    pub time: u64,
}

/// One node's cumulative claim under one ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedClaim<P> {
    pub node: P,
    pub bytes: u64,
    pub fragments: u64,
    pub receipt: Option<ReceiptFacts<P>>,
    /// Confirmed bytes already paid in earlier runs.
    pub paid_bytes: u64,
    /// When the claim was first seen (starts the sales grace period).
    pub first_seen: u64,
    /// The report that carried the claim's current totals.
    pub report_seq: u64,
    /// Fragments of the content the node was ever assigned: the bound on what it may serve.
    pub assigned: u64,
    /// Fragments of the content placed on the node at some time in the reconciliation window
    /// (placements not closed before it): the node's fair share of the ticket's bytes.
    pub held: u64,
}

/// The client's completion report: bytes it says each node delivered, and when it said so. A
/// node it does not list is no statement about that node: a later download under the same
/// ticket may not have needed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion<P> {
    pub id: i64,
    pub time: u64,
    pub per_node: BTreeMap<P, u64>,
}

/// Everything reconciliation needs about one ticket.
#[derive(Clone, Debug)]
pub struct TicketCase<P> {
    pub ticket: [u8; 16],
    pub content: String,
    pub sale: Option<Sale<P>>,
    /// Every claim under the ticket, new or already settled.
    pub claims: Vec<ServedClaim<P>>,
    pub completion: Option<Completion<P>>,
    /// Fragments of the content assigned to all nodes, ever.
    pub assigned_total: u64,
    /// Fragments of the content placed on any node at some time in the reconciliation window:
    /// the denominator of a node's fair share. Not `assigned_total`: every repair adds to
    /// that, so under churn an honest holder's share of all placements ever made shrinks
    /// below its share of the placements a download could use, and it would look concentrated.
    pub held_total: u64,
    /// Bytes of one fragment of the content (the largest, for bounds).
    pub fragment_size: u64,
    /// Data and total fragments per segment (`k`, `k + m`).
    pub k: u32,
    pub n: u32,
}

/// What a verdict says about a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// Claimed bytes beyond what the client's receipt signs (or no receipt at all).
    BeyondReceipts,
    /// Served a content the node was never assigned, or more of it than its fragments explain.
    NeverAssigned,
    /// This node's claim exceeds the ticket's allowance on its own.
    BeyondAllowance,
    /// The ticket's claims together exceed its allowance (the client over-fetched).
    TicketOverdrawn,
    /// No sales record for the ticket after the grace period.
    Unsold,
    /// Receipts signed after the ticket expired.
    Expired,
    /// The receipt was not signed by the ticket's client, or its signature does not verify.
    ForgedReceipt,
    /// The client's completion report says the node delivered less than claimed.
    ContradictedByClient,
    /// The node claims to store fragments it was never assigned.
    StorageNeverAssigned,
    /// The ticket's bytes concentrate on this node far beyond its share of the fragments.
    Concentration,
}

/// The outcome class of a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Conflict,
    SuspectedCollusion,
}

/// A reference to a witness.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "witness")]
pub enum Evidence<P> {
    /// The node's report that carried the claim.
    Report { node: P, seq: u64 },
    /// The newest receipt for (ticket, node).
    Receipt { ticket: String, node: P, seq: u64 },
    /// The sales record, or its absence.
    Sale { ticket: String, found: bool },
    /// The client's completion report.
    Completion { id: i64 },
    /// The CM's placement records for the node and content.
    Placements {
        node: P,
        content: String,
        fragments: u64,
    },
    /// A fragment held without a placement.
    Fragment {
        content: String,
        segment: u32,
        index: u16,
    },
}

/// A conflict or a suspicion, with its evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict<P> {
    pub outcome: Outcome,
    pub kind: VerdictKind,
    /// The node at fault (`None` when the client is: an overdrawn ticket).
    pub node: Option<P>,
    pub client: Option<P>,
    pub ticket: Option<String>,
    /// Bytes (or byte-seconds for storage) the verdict denies.
    pub amount: u128,
    /// Whether it counts as the node's offence (cut, forfeit, fine). A conflict the client
    /// caused is recorded but charged to no node.
    pub offence: bool,
    pub evidence: Vec<Evidence<P>>,
}

/// Which pay service a claim belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Served,
    Repair,
}

/// The settlement of one claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimResult<P> {
    pub node: P,
    pub service: ServiceKind,
    /// Bytes the witnesses support now (cumulative for the ticket).
    pub confirmed: u64,
    /// Bytes to pay in this run: growth of `confirmed` over what was paid before.
    pub pay: u64,
    /// Whether the claim was verified in depth this run.
    pub deep_checked: bool,
}

/// What one ticket's reconciliation decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketResult<P> {
    /// Still inside the sales grace period: nothing decided, look again next run.
    pub pending: bool,
    pub claims: Vec<ClaimResult<P>>,
    pub verdicts: Vec<Verdict<P>>,
}

/// Reconciles every claim under one ticket.
///
/// `watched` nodes (recent offenders) always get the deep check; others with probability
/// `config.deep_check_rate`. `deep_check(claim)` verifies the claim's receipt signature in
/// depth and says whether it holds.
pub fn reconcile_ticket<P, R>(
    config: &ReconcileConfig,
    case: &TicketCase<P>,
    now: u64,
    watched: &BTreeSet<P>,
    rng: &mut R,
    mut deep_check: impl FnMut(&ServedClaim<P>) -> bool,
) -> TicketResult<P>
where
    P: Clone + Ord,
    R: Rng + ?Sized,
{
    let ticket_hex = hex::encode(case.ticket);
    let mut verdicts = Vec::new();
    let sale_evidence = |found: bool| Evidence::Sale {
        ticket: ticket_hex.clone(),
        found,
    };
    let Some(sale) = &case.sale else {
        let oldest = case
            .claims
            .iter()
            .map(|c| c.first_seen)
            .min()
            .unwrap_or(now);
        if now < oldest.saturating_add(config.sales_grace_secs) {
            return TicketResult {
                pending: true,
                claims: Vec::new(),
                verdicts,
            };
        }
        for claim in &case.claims {
            verdicts.push(Verdict {
                outcome: Outcome::Conflict,
                kind: VerdictKind::Unsold,
                node: Some(claim.node.clone()),
                client: claim.receipt.as_ref().map(|r| r.signer.clone()),
                ticket: Some(ticket_hex.clone()),
                amount: u128::from(claim.bytes.saturating_sub(claim.paid_bytes)),
                offence: claim.bytes > claim.paid_bytes,
                evidence: vec![report_evidence(claim), sale_evidence(false)],
            });
        }
        return TicketResult {
            pending: false,
            claims: case
                .claims
                .iter()
                .map(|c| ClaimResult {
                    node: c.node.clone(),
                    service: ServiceKind::Served,
                    confirmed: c.paid_bytes,
                    pay: 0,
                    deep_checked: false,
                })
                .collect(),
            verdicts,
        };
    };
    let service = if sale.kind == SaleKind::Repair {
        ServiceKind::Repair
    } else {
        ServiceKind::Served
    };

    // Per claim: the most the witnesses support.
    let mut supported: Vec<u64> = Vec::with_capacity(case.claims.len());
    let mut checked: Vec<bool> = Vec::with_capacity(case.claims.len());
    for claim in &case.claims {
        let mut conflict =
            |kind: VerdictKind, denied: u64, offence: bool, evidence: Vec<Evidence<P>>| {
                verdicts.push(Verdict {
                    outcome: Outcome::Conflict,
                    kind,
                    node: Some(claim.node.clone()),
                    client: Some(sale.client.clone()),
                    ticket: Some(ticket_hex.clone()),
                    amount: u128::from(denied),
                    offence,
                    evidence,
                });
            };
        let receipt_evidence = |r: &ReceiptFacts<P>| Evidence::Receipt {
            ticket: ticket_hex.clone(),
            node: claim.node.clone(),
            seq: r.seq,
        };
        let mut ok = claim.bytes;
        let deep = watched.contains(&claim.node) || rng.random_bool(config.deep_check_rate);
        checked.push(deep);
        match &claim.receipt {
            None => {
                conflict(
                    VerdictKind::BeyondReceipts,
                    claim.bytes,
                    claim.bytes > 0,
                    vec![report_evidence(claim)],
                );
                ok = 0;
            }
            Some(r) if r.signer != sale.client || (deep && !deep_check(claim)) => {
                conflict(
                    VerdictKind::ForgedReceipt,
                    claim.bytes,
                    true,
                    vec![
                        report_evidence(claim),
                        receipt_evidence(r),
                        sale_evidence(true),
                    ],
                );
                ok = 0;
            }
            Some(r) => {
                if claim.bytes > r.bytes {
                    conflict(
                        VerdictKind::BeyondReceipts,
                        claim.bytes - r.bytes,
                        true,
                        vec![report_evidence(claim), receipt_evidence(r)],
                    );
                    ok = r.bytes;
                }
                if r.time > sale.not_after.saturating_add(config.clock_skew_secs) {
                    conflict(
                        VerdictKind::Expired,
                        ok,
                        true,
                        vec![
                            report_evidence(claim),
                            receipt_evidence(r),
                            sale_evidence(true),
                        ],
                    );
                    ok = 0;
                }
                if let Some(c) = &case.completion
                    && c.time >= r.time
                    && let Some(&said) = c.per_node.get(&claim.node)
                    && said < ok
                {
                    // The receipt is the client's own signature, so the node is blamed only for
                    // what it claimed beyond it (already a conflict above).
                    conflict(
                        VerdictKind::ContradictedByClient,
                        ok - said,
                        false,
                        vec![
                            report_evidence(claim),
                            receipt_evidence(r),
                            Evidence::Completion { id: c.id },
                        ],
                    );
                    ok = said;
                }
            }
        }
        if ok > 0 && service == ServiceKind::Served {
            let assigned = claim.assigned;
            let bound =
                (assigned as f64 * case.fragment_size as f64 * config.refetch_factor) as u64;
            if ok > bound {
                conflict(
                    VerdictKind::NeverAssigned,
                    ok - bound,
                    true,
                    vec![
                        report_evidence(claim),
                        Evidence::Placements {
                            node: claim.node.clone(),
                            content: case.content.clone(),
                            fragments: assigned,
                        },
                    ],
                );
                ok = bound;
            }
        }
        if ok > sale.allowance {
            conflict(
                VerdictKind::BeyondAllowance,
                ok - sale.allowance,
                true,
                vec![report_evidence(claim), sale_evidence(true)],
            );
            ok = sale.allowance;
        }
        supported.push(ok);
    }

    // The ticket as a whole: never pay beyond its allowance.
    let total: u128 = supported.iter().map(|&b| u128::from(b)).sum();
    if total > u128::from(sale.allowance) {
        verdicts.push(Verdict {
            outcome: Outcome::Conflict,
            kind: VerdictKind::TicketOverdrawn,
            node: None,
            client: Some(sale.client.clone()),
            ticket: Some(ticket_hex.clone()),
            amount: total - u128::from(sale.allowance),
            offence: false,
            evidence: std::iter::once(sale_evidence(true))
                .chain(case.claims.iter().map(report_evidence))
                .collect(),
        });
        for b in &mut supported {
            *b = (u128::from(*b) * u128::from(sale.allowance) / total) as u64;
        }
    }

    // Concentration: a node's share of the ticket's bytes against its share of the fragments.
    let mut suspected = vec![false; case.claims.len()];
    let total: u128 = supported.iter().map(|&b| u128::from(b)).sum();
    let held_total = case.held_total;
    if service == ServiceKind::Served
        && total >= u128::from(config.collusion_min_bytes)
        && held_total > 0
        && case.k > 0
    {
        let honest_max = f64::from(case.n.max(case.k)) / f64::from(case.k);
        let threshold = config.collusion_ratio.max(honest_max);
        for (i, claim) in case.claims.iter().enumerate() {
            let held = claim.held;
            if supported[i] == 0 || held == 0 {
                continue;
            }
            let share = supported[i] as f64 / total as f64;
            let expected = held as f64 / held_total as f64;
            if share > threshold * expected {
                suspected[i] = true;
                verdicts.push(Verdict {
                    outcome: Outcome::SuspectedCollusion,
                    kind: VerdictKind::Concentration,
                    node: Some(claim.node.clone()),
                    client: Some(sale.client.clone()),
                    ticket: Some(ticket_hex.clone()),
                    amount: u128::from(supported[i].saturating_sub(claim.paid_bytes)),
                    offence: false,
                    evidence: vec![
                        report_evidence(claim),
                        Evidence::Placements {
                            node: claim.node.clone(),
                            content: case.content.clone(),
                            fragments: held,
                        },
                        sale_evidence(true),
                    ],
                });
            }
        }
    }

    let claims = case
        .claims
        .iter()
        .enumerate()
        .map(|(i, claim)| {
            // A suspected claim is not paid (nor counted as paid): held for review.
            let confirmed = if suspected[i] {
                claim.paid_bytes
            } else {
                supported[i].max(claim.paid_bytes)
            };
            ClaimResult {
                node: claim.node.clone(),
                service,
                confirmed,
                pay: confirmed - claim.paid_bytes,
                deep_checked: checked[i],
            }
        })
        .collect();
    TicketResult {
        pending: false,
        claims,
        verdicts,
    }
}

fn report_evidence<P: Clone>(claim: &ServedClaim<P>) -> Evidence<P> {
    Evidence::Report {
        node: claim.node.clone(),
        seq: claim.report_seq,
    }
}

/// A fragment address: content (hex), segment, index.
pub type FragmentKey = (String, u32, u16);

/// One of the CM's placement records for a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementRecord {
    pub fragment: FragmentKey,
    pub size: u64,
    pub placed_at: u64,
    pub removed_at: Option<u64>,
}

/// A node's latest claim of what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldClaim<P> {
    pub report_seq: u64,
    /// When the node listed its holdings.
    pub at: u64,
    pub fragments: BTreeSet<FragmentKey>,
    pub node: P,
}

/// What storage reconciliation decided for one node and one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageResult<P> {
    /// Confirmed byte-seconds within the period.
    pub byte_secs: u128,
    /// Placements the node no longer claims: it lost them (close them; repair rebuilds them).
    pub lost: Vec<FragmentKey>,
    pub verdicts: Vec<Verdict<P>>,
}

/// A placement is judged lost only if the node's listing was made at least this long after it:
/// the listing's time is the node's clock, the placement's the coordinator's, and a fragment
/// pushed while the node was writing its report is not in it.
pub const LISTING_GRACE_SECS: u64 = 60;

/// Reconciles one node's storage over `[from, to)`: a placement earns its overlap with the
/// period when the node's latest holdings (listed at or after `from`) include it.
///
/// Fragments held without ever being placed on the node are a conflict; placements the node
/// stopped listing are lost (no pay, no offence: an honest admission).
pub fn reconcile_storage<P: Clone>(
    node: &P,
    held: Option<&HeldClaim<P>>,
    placements: &[PlacementRecord],
    from: u64,
    to: u64,
) -> StorageResult<P> {
    let mut out = StorageResult {
        byte_secs: 0,
        lost: Vec::new(),
        verdicts: Vec::new(),
    };
    let Some(held) = held else {
        return out;
    };
    let placed: BTreeMap<&FragmentKey, &PlacementRecord> =
        placements.iter().map(|p| (&p.fragment, p)).collect();
    let fresh = held.at >= from;
    for p in placements {
        let listed = held.fragments.contains(&p.fragment);
        let active_at_listing = p.placed_at.saturating_add(LISTING_GRACE_SECS) <= held.at
            && p.removed_at.is_none_or(|r| r > held.at);
        if !listed {
            if active_at_listing && p.removed_at.is_none() {
                out.lost.push(p.fragment.clone());
            }
            continue;
        }
        if !fresh {
            continue;
        }
        let start = p.placed_at.max(from);
        let end = p.removed_at.unwrap_or(to).min(to);
        if end > start {
            out.byte_secs += u128::from(p.size) * u128::from(end - start);
        }
    }
    let never: Vec<&FragmentKey> = held
        .fragments
        .iter()
        .filter(|f| !placed.contains_key(f))
        .collect();
    if !never.is_empty() && fresh {
        let evidence = std::iter::once(Evidence::Report {
            node: node.clone(),
            seq: held.report_seq,
        })
        .chain(never.iter().take(32).map(|(c, s, i)| Evidence::Fragment {
            content: c.clone(),
            segment: *s,
            index: *i,
        }))
        .collect();
        let typical = placements.iter().map(|p| p.size).max().unwrap_or(0);
        out.verdicts.push(Verdict {
            outcome: Outcome::Conflict,
            kind: VerdictKind::StorageNeverAssigned,
            node: Some(node.clone()),
            client: None,
            ticket: None,
            amount: u128::from(typical) * never.len() as u128 * u128::from(to.saturating_sub(from)),
            offence: true,
            evidence,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MIB: u64 = 1 << 20;

    fn claim(node: u32, bytes: u64, receipt_bytes: Option<u64>) -> ServedClaim<u32> {
        ServedClaim {
            node,
            bytes,
            fragments: bytes / MIB,
            receipt: receipt_bytes.map(|b| ReceiptFacts {
                signer: 100,
                bytes: b,
                fragments: b / MIB,
                seq: 7,
                time: 1_000,
            }),
            paid_bytes: 0,
            first_seen: 1_000,
            report_seq: 3,
            assigned: if node < 12 { 16 } else { 0 },
            held: if node < 12 { 16 } else { 0 },
        }
    }

    /// A content of 12 fragments per segment over 12 nodes, 16 segments, 1 MiB fragments.
    fn case(claims: Vec<ServedClaim<u32>>) -> TicketCase<u32> {
        TicketCase {
            ticket: [1; 16],
            content: "c0".into(),
            sale: Some(Sale {
                client: 100,
                allowance: 400 * MIB,
                not_after: 10_000,
                kind: SaleKind::Issued,
            }),
            claims,
            completion: None,
            assigned_total: 12 * 16,
            held_total: 12 * 16,
            fragment_size: MIB,
            k: 8,
            n: 12,
        }
    }

    fn run(c: &TicketCase<u32>) -> TicketResult<u32> {
        run_with(c, &ReconcileConfig::default(), |_| true)
    }

    fn run_with(
        c: &TicketCase<u32>,
        config: &ReconcileConfig,
        deep: impl FnMut(&ServedClaim<u32>) -> bool,
    ) -> TicketResult<u32> {
        let mut rng = StdRng::seed_from_u64(1);
        reconcile_ticket(config, c, 2_000, &BTreeSet::new(), &mut rng, deep)
    }

    fn kinds(r: &TicketResult<u32>) -> Vec<VerdictKind> {
        r.verdicts.iter().map(|v| v.kind).collect()
    }

    /// An honest download: 8 of 12 nodes deliver 16 fragments each... spread evenly.
    fn honest() -> Vec<ServedClaim<u32>> {
        (0..12)
            .map(|n| claim(n, 10 * MIB + MIB / 2, Some(10 * MIB + MIB / 2)))
            .collect()
    }

    #[test]
    fn honest_claims_are_confirmed_in_full_and_paid_once() {
        let mut c = case(honest());
        let r = run(&c);
        assert!(r.verdicts.is_empty(), "{:?}", r.verdicts);
        assert!(r.claims.iter().all(|x| x.confirmed == 10 * MIB + MIB / 2));
        assert!(r.claims.iter().all(|x| x.pay == x.confirmed));
        // Settled: the same claims again pay nothing.
        for claim in &mut c.claims {
            claim.paid_bytes = claim.bytes;
        }
        let again = run(&c);
        assert!(again.claims.iter().all(|x| x.pay == 0));
        // Growth of a cumulative claim pays only the growth.
        c.claims[0].bytes += MIB;
        c.claims[0].receipt.as_mut().unwrap().bytes += MIB;
        let grown = run(&c);
        assert_eq!(grown.claims[0].pay, MIB);
        assert!(grown.verdicts.is_empty());
    }

    #[test]
    fn claims_beyond_the_receipt_or_without_one_are_conflicts_paid_up_to_the_receipt() {
        let mut claims = honest();
        claims[2].bytes = 30 * MIB; // receipt says 10.5 MiB
        claims[3].receipt = None;
        let r = run(&case(claims));
        assert_eq!(
            kinds(&r),
            vec![VerdictKind::BeyondReceipts, VerdictKind::BeyondReceipts]
        );
        assert_eq!(r.verdicts[0].node, Some(2));
        assert_eq!(
            r.verdicts[0].amount,
            u128::from(30 * MIB - (10 * MIB + MIB / 2))
        );
        assert!(r.verdicts.iter().all(|v| v.offence));
        assert_eq!(r.claims[2].pay, 10 * MIB + MIB / 2);
        assert_eq!(r.claims[3].pay, 0);
        assert!(matches!(
            r.verdicts[0].evidence[1],
            Evidence::Receipt { seq: 7, .. }
        ));
    }

    #[test]
    fn a_receipt_signed_by_someone_else_or_failing_the_deep_check_is_forged() {
        let mut claims = honest();
        claims[1].receipt.as_mut().unwrap().signer = 55;
        let r = run(&case(claims));
        assert_eq!(kinds(&r), vec![VerdictKind::ForgedReceipt]);
        assert_eq!(r.claims[1].pay, 0);

        let all = ReconcileConfig {
            deep_check_rate: 1.0,
            ..Default::default()
        };
        let r = run_with(&case(honest()), &all, |c| c.node != 4);
        assert_eq!(kinds(&r), vec![VerdictKind::ForgedReceipt]);
        assert_eq!(r.verdicts[0].node, Some(4));
        assert!(r.claims.iter().all(|c| c.deep_checked));
    }

    #[test]
    fn deep_checks_are_drawn_at_the_configured_rate_and_always_for_watched_nodes() {
        let claims: Vec<_> = (0..2000).map(|n| claim(n % 12, MIB, Some(MIB))).collect();
        let c = TicketCase {
            sale: Some(Sale {
                allowance: u64::MAX,
                ..case(vec![]).sale.unwrap()
            }),
            ..case(claims)
        };
        let config = ReconcileConfig {
            deep_check_rate: 0.1,
            collusion_min_bytes: u64::MAX,
            ..Default::default()
        };
        let mut checks = 0;
        let r = run_with(&c, &config, |_| {
            checks += 1;
            true
        });
        let drawn = r.claims.iter().filter(|x| x.deep_checked).count();
        assert_eq!(drawn, checks);
        assert!((150..250).contains(&drawn), "{drawn} of 2000 at 10%");
        let watched: BTreeSet<u32> = [5].into();
        let mut rng = StdRng::seed_from_u64(9);
        let r = reconcile_ticket(&config, &c, 2_000, &watched, &mut rng, |_| true);
        assert!(
            r.claims
                .iter()
                .filter(|x| x.node == 5)
                .all(|x| x.deep_checked)
        );
    }

    #[test]
    fn unsold_tickets_wait_for_a_sales_record_then_conflict() {
        let mut c = case(honest());
        c.sale = None;
        let config = ReconcileConfig {
            sales_grace_secs: 5_000,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let r = reconcile_ticket(&config, &c, 2_000, &BTreeSet::new(), &mut rng, |_| true);
        assert!(r.pending);
        assert!(r.verdicts.is_empty() && r.claims.is_empty());
        let r = reconcile_ticket(&config, &c, 7_000, &BTreeSet::new(), &mut rng, |_| true);
        assert!(!r.pending);
        assert_eq!(r.verdicts.len(), 12);
        assert!(
            r.verdicts
                .iter()
                .all(|v| v.kind == VerdictKind::Unsold && v.offence)
        );
        assert!(r.claims.iter().all(|c| c.pay == 0));
    }

    #[test]
    fn receipts_after_expiry_are_conflicts() {
        let mut claims = honest();
        claims[0].receipt.as_mut().unwrap().time = 10_000 + 301;
        claims[1].receipt.as_mut().unwrap().time = 10_000 + 300;
        let r = run(&case(claims));
        assert_eq!(kinds(&r), vec![VerdictKind::Expired]);
        assert_eq!(r.verdicts[0].node, Some(0));
    }

    #[test]
    fn serving_a_content_never_assigned_is_a_conflict() {
        let mut claims = honest();
        claims.push(claim(40, 5 * MIB, Some(5 * MIB)));
        let r = run(&case(claims));
        assert_eq!(kinds(&r), vec![VerdictKind::NeverAssigned]);
        assert_eq!(r.verdicts[0].node, Some(40));
        assert_eq!(r.claims[12].pay, 0);
        // More than the node's fragments explain (twice over, for re-fetches) is cut to that.
        let mut claims = honest();
        claims[0] = claim(0, 40 * MIB, Some(40 * MIB));
        let r = run(&case(claims));
        assert!(kinds(&r).contains(&VerdictKind::NeverAssigned));
        assert_eq!(r.claims[0].confirmed, 32 * MIB);
    }

    #[test]
    fn allowance_bounds_each_node_and_the_ticket() {
        let mut c = case(honest());
        c.sale.as_mut().unwrap().allowance = 60 * MIB;
        let r = run(&c);
        // 12 × 10.5 MiB = 126 MiB claimed against 60 MiB sold: the client over-fetched.
        assert_eq!(kinds(&r), vec![VerdictKind::TicketOverdrawn]);
        assert!(!r.verdicts[0].offence);
        assert_eq!(r.verdicts[0].node, None);
        let paid: u64 = r.claims.iter().map(|c| c.pay).sum();
        assert!(paid <= 60 * MIB && paid > 59 * MIB, "{paid}");

        let mut c = case(vec![claim(0, 20 * MIB, Some(20 * MIB))]);
        c.sale.as_mut().unwrap().allowance = 8 * MIB;
        c.claims[0].assigned = 100;
        c.claims[0].held = 100;
        c.assigned_total += 100 - 16;
        c.held_total += 100 - 16;
        let r = run(&c);
        assert!(kinds(&r).contains(&VerdictKind::BeyondAllowance));
        assert_eq!(r.claims[0].confirmed, 8 * MIB);
    }

    #[test]
    fn the_clients_completion_report_bounds_and_contradicts() {
        let mut c = case(honest());
        c.completion = Some(Completion {
            id: 9,
            time: 1_500,
            per_node: (0..12)
                .map(|n| (n, if n == 6 { 4 * MIB } else { 10 * MIB + MIB / 2 }))
                .collect(),
        });
        let r = run(&c);
        assert_eq!(kinds(&r), vec![VerdictKind::ContradictedByClient]);
        assert!(
            !r.verdicts[0].offence,
            "the client signed the receipt itself"
        );
        assert_eq!(r.claims[6].pay, 4 * MIB);
        // A completion not listing the node says nothing about it (a later download under the
        // same ticket that did not need it).
        c.completion.as_mut().unwrap().per_node.remove(&6);
        assert!(run(&c).verdicts.is_empty());
        assert_eq!(run(&c).claims[6].pay, 10 * MIB + MIB / 2);
        // A completion older than the receipt (a resumed download) contradicts nothing.
        c.completion.as_mut().unwrap().per_node.insert(6, 4 * MIB);
        c.completion.as_mut().unwrap().time = 900;
        assert!(run(&c).verdicts.is_empty());
    }

    #[test]
    fn concentration_on_one_node_is_suspected_collusion_and_unpaid() {
        // The client credits node 3 with nearly everything: 30 MiB from a node holding 16
        // fragments of 192 (within what its fragments explain, twice over).
        let c = case(vec![
            claim(3, 30 * MIB, Some(30 * MIB)),
            claim(4, MIB, Some(MIB)),
        ]);
        let r = run(&c);
        assert_eq!(kinds(&r), vec![VerdictKind::Concentration]);
        assert_eq!(r.verdicts[0].outcome, Outcome::SuspectedCollusion);
        assert_eq!(r.verdicts[0].node, Some(3));
        assert_eq!(r.claims[0].pay, 0);
        assert_eq!(r.claims[1].pay, MIB);
        // Honest scheduling that favours fast nodes stays below n/k times the fair share.
        let mut claims = honest();
        for c in claims.iter_mut().take(4) {
            c.bytes = 16 * MIB;
            c.receipt.as_mut().unwrap().bytes = 16 * MIB;
        }
        assert!(run(&case(claims)).verdicts.is_empty());
    }

    /// Repairs add placements all the time; they must not shrink an honest holder's fair share.
    #[test]
    fn repairs_elsewhere_do_not_make_a_steady_holder_look_concentrated() {
        let mut claims = honest();
        for c in claims.iter_mut().take(4) {
            c.bytes = 16 * MIB;
            c.receipt.as_mut().unwrap().bytes = 16 * MIB;
        }
        let mut c = case(claims);
        // Five times as many placements were ever made as are in use: churn and repair.
        c.assigned_total *= 5;
        assert!(run(&c).verdicts.is_empty(), "{:?}", run(&c).verdicts);
        // A node that held far fewer fragments in the window than it was ever assigned is
        // judged on what it held.
        let mut c = case(vec![
            claim(3, 30 * MIB, Some(30 * MIB)),
            claim(4, MIB, Some(MIB)),
        ]);
        c.claims[0].assigned = 160;
        c.assigned_total = 2000;
        assert_eq!(kinds(&run(&c)), vec![VerdictKind::Concentration]);
    }

    #[test]
    fn repair_tickets_pay_as_repair_and_skip_the_statistic() {
        let mut c = case(vec![claim(2, 16 * MIB, Some(16 * MIB))]);
        c.sale.as_mut().unwrap().kind = SaleKind::Repair;
        let r = run(&c);
        assert!(r.verdicts.is_empty());
        assert_eq!(r.claims[0].service, ServiceKind::Repair);
        assert_eq!(r.claims[0].pay, 16 * MIB);
    }

    fn placement(seg: u32, placed: u64, removed: Option<u64>) -> PlacementRecord {
        PlacementRecord {
            fragment: ("c0".into(), seg, 0),
            size: MIB,
            placed_at: placed,
            removed_at: removed,
        }
    }

    fn held(at: u64, segs: &[u32]) -> HeldClaim<u32> {
        HeldClaim {
            report_seq: 4,
            at,
            fragments: segs.iter().map(|&s| ("c0".to_string(), s, 0)).collect(),
            node: 1,
        }
    }

    #[test]
    fn storage_pays_the_overlap_of_listed_placements_with_the_period() {
        let placements = vec![
            placement(0, 0, None),        // whole period
            placement(1, 1_500, None),    // from mid-period
            placement(2, 0, Some(1_200)), // removed mid-period
            placement(3, 0, None),        // not listed: lost
        ];
        let r = reconcile_storage(
            &1,
            Some(&held(1_800, &[0, 1, 2])),
            &placements,
            1_000,
            2_000,
        );
        let expected = u128::from(MIB) * (1_000 + 500 + 200);
        assert_eq!(r.byte_secs, expected);
        assert_eq!(r.lost, vec![("c0".to_string(), 3, 0)]);
        assert!(r.verdicts.is_empty());
        // No holdings reported in the period: no storage pay (and nothing declared lost).
        let r = reconcile_storage(&1, Some(&held(900, &[0])), &placements, 1_000, 2_000);
        assert_eq!(r.byte_secs, 0);
        let r = reconcile_storage(&1, None, &placements, 1_000, 2_000);
        assert_eq!(r.byte_secs, 0);
        assert!(r.lost.is_empty());
    }

    #[test]
    fn placements_made_after_the_listing_are_not_lost() {
        let placements = vec![placement(0, 0, None), placement(1, 1_900, None)];
        let r = reconcile_storage(&1, Some(&held(1_800, &[0])), &placements, 1_000, 2_000);
        assert!(r.lost.is_empty());
        // Nor those made just before it (a push racing the report, or a node's clock behind).
        let placements = vec![placement(0, 0, None), placement(1, 1_799, None)];
        let r = reconcile_storage(&1, Some(&held(1_800, &[0])), &placements, 1_000, 2_000);
        assert!(r.lost.is_empty());
        let placements = vec![
            placement(0, 0, None),
            placement(1, 1_800 - LISTING_GRACE_SECS, None),
        ];
        let r = reconcile_storage(&1, Some(&held(1_800, &[0])), &placements, 1_000, 2_000);
        assert_eq!(r.lost, vec![("c0".to_string(), 1, 0)]);
        assert_eq!(r.byte_secs, u128::from(MIB) * 1_000);
    }

    #[test]
    fn storage_claimed_for_fragments_never_placed_is_a_conflict() {
        let placements = vec![placement(0, 0, None)];
        let r = reconcile_storage(
            &1,
            Some(&held(1_800, &[0, 7, 8])),
            &placements,
            1_000,
            2_000,
        );
        assert_eq!(r.verdicts.len(), 1);
        let v = &r.verdicts[0];
        assert_eq!(v.kind, VerdictKind::StorageNeverAssigned);
        assert!(v.offence);
        assert_eq!(v.evidence.len(), 3);
        assert_eq!(
            r.byte_secs,
            u128::from(MIB) * 1_000,
            "the real placement still pays"
        );
    }
}
