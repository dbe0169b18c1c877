//! The accounting driver: ingested witnesses → reconciliation → pay → ledger, in one database
//! transaction per run; and the account views nodes and operators read.
//!
//! The decisions are made by the pure cores ([`crate::reconcile`], [`crate::pay`]); this module
//! only gathers their inputs from the database and writes their outputs back.

use std::time::Duration;

use overlay::PeerId;
use overlay::report::AccountView;
use serde::{Deserialize, Serialize};

use crate::db::accounts;
use crate::policy::PayPolicy;
use crate::reconcile::ReconcileConfig;
use crate::server::Coordinator;

/// Settings of accounting: the `[pay]` and `[reconcile]` sections of the config, and timers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountingConfig {
    /// Pay policy.
    pub pay: PayPolicy,
    /// Reconciliation tunables.
    pub reconcile: ReconcileConfig,
    /// Price of a ticket per GB of allowance when the issuer names none, credits. It must exceed
    /// what a node can earn per GB served, so that buying tickets to fetch from oneself never pays.
    pub ticket_price_per_gb: f64,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        Self {
            pay: PayPolicy::default(),
            reconcile: ReconcileConfig::default(),
            ticket_price_per_gb: 3.0,
        }
    }
}

impl AccountingConfig {
    /// Checks the policy, the tunables and that the default ticket price pays more than a node
    /// can earn per GB.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.pay.validate()?;
        self.reconcile
            .validate()
            .map_err(|e| anyhow::anyhow!("[reconcile] {e}"))?;
        self.pay
            .check_ticket_price(
                crate::policy::micro(self.ticket_price_per_gb),
                1_000_000_000,
            )
            .map_err(|e| anyhow::anyhow!("ticket_price_per_gb: {e}"))?;
        Ok(())
    }

    /// Price of a ticket with `allowance` bytes at the default price per GB, micro-credits.
    pub fn default_price(&self, allowance: u64) -> i64 {
        let per_gb = i128::from(crate::policy::micro(self.ticket_price_per_gb));
        ((per_gb * i128::from(allowance) + 999_999_999) / 1_000_000_000) as i64
    }
}

/// Timers of the accounting tasks.
#[derive(Clone, Debug)]
pub struct AccountingTimers {
    /// Reconcile this often (`None`: only on demand).
    pub reconcile_interval: Option<Duration>,
    /// Whether nodes are audited at all.
    pub audits: bool,
    /// Audit scheduling: mean interval per node, containment re-checks, score half-life.
    pub audit: crate::audit::AuditConfig,
}

/// A node's account as shown to the node itself.
pub async fn account_view(coord: &Coordinator, node: &PeerId) -> anyhow::Result<AccountView> {
    let id = node.to_string();
    let db = &coord.db;
    let level_index = match db.node_state(crate::db::StateTable::Pay, &id).await? {
        Some(state) => serde_json::from_str::<serde_json::Value>(&state)?["level"]
            .as_u64()
            .unwrap_or(0) as u32,
        None => 0,
    };
    let level = coord
        .accounting
        .pay
        .levels
        .get(level_index as usize)
        .map(|l| l.name.clone())
        .unwrap_or_default();
    Ok(AccountView {
        level,
        level_index,
        balance: db.balance(&accounts::available(&id)).await?,
        held: db.balance(&accounts::held(&id)).await?,
        earned: db.ledger_sum(&id, "accrual").await? + db.ledger_sum(&id, "bonus").await?,
        paid_out: db.ledger_sum(&id, "payout").await?,
        reconciled_at: db.last_run_end().await?,
        last_report_seq: db.last_report_seq(node).await?,
    })
}

/// What a reconciliation run did.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub run: i64,
    /// Counts and totals, as printed by `cm-coordinator reconcile`.
    pub summary: serde_json::Value,
    /// Placements closed because their holders no longer list them: `(content, segment, index,
    /// node)`; the repair core must forget these holders.
    pub lost: Vec<(String, u32, u16, String)>,
}

/// Content facts reconciliation needs.
struct ContentFacts {
    manifest: overlay::manifest::Manifest,
    largest_fragment: u64,
}

/// What one node did and was caught at in this run.
#[derive(Default)]
struct Tally {
    served: u64,
    repair: u64,
    stored: u128,
    conflicts: u32,
    conflict_value: i128,
    suspected: u32,
}

/// Wall time of a run's phases, reported in the returned summary (not stored).
#[derive(Default)]
struct Phases {
    mark: Option<std::time::Instant>,
    spent: Vec<(&'static str, Duration)>,
}

impl Phases {
    /// Ends the phase running since the previous mark as `name`.
    fn end(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        let since = self.mark.replace(now).unwrap_or(now);
        self.spent.push((name, now - since));
    }

    fn to_json(&self) -> serde_json::Value {
        self.spent
            .iter()
            .map(|(name, d)| ((*name).to_string(), (d.as_millis() as u64).into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Adds the time until it is dropped to a running total.
struct Timed<'a>(&'a mut Duration, std::time::Instant);

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        *self.0 += self.1.elapsed();
    }
}

/// Every node's tally, looked up with one hash of the node ID per claim.
#[derive(Default)]
struct Tallies {
    index: std::collections::HashMap<String, usize>,
    tallies: Vec<Tally>,
}

impl Tallies {
    /// The tally of `node`, created empty the first time.
    fn of(&mut self, node: &str) -> &mut Tally {
        let i = match self.index.get(node) {
            Some(&i) => i,
            None => {
                self.index.insert(node.to_string(), self.tallies.len());
                self.tallies.push(Tally::default());
                self.tallies.len() - 1
            }
        };
        &mut self.tallies[i]
    }

    /// Takes the tally of `node` (empty if it has none).
    fn take(&mut self, node: &str) -> Tally {
        self.index
            .get(node)
            .map(|&i| std::mem::take(&mut self.tallies[i]))
            .unwrap_or_default()
    }
}

/// A verdict as stored, counted by kind.
fn new_verdict<P: Clone + Into<String> + Serialize>(
    by_kind: &mut std::collections::BTreeMap<String, u64>,
    v: &crate::reconcile::Verdict<P>,
) -> anyhow::Result<crate::db::NewVerdict> {
    let kind = serde_json::to_value(v.kind)?
        .as_str()
        .unwrap_or_default()
        .to_string();
    let outcome = serde_json::to_value(v.outcome)?
        .as_str()
        .unwrap_or_default()
        .to_string();
    *by_kind.entry(kind.clone()).or_default() += 1;
    Ok(crate::db::NewVerdict {
        node: v.node.clone().map(Into::into),
        client: v.client.clone().map(Into::into),
        ticket: v.ticket.clone(),
        outcome,
        kind,
        amount: v.amount,
        offence: v.offence,
        evidence: serde_json::to_string(&v.evidence)?,
    })
}

/// Audit score half-life used for pay levels.
const AUDIT_HALF_LIFE_SECS: f64 = 7.0 * 24.0 * 3600.0;

fn rate_value(bytes: u128, micro_per_unit: i64, unit: u128) -> i128 {
    (bytes.saturating_mul(micro_per_unit.max(0) as u128) / unit) as i128
}

fn entry_kind(kind: crate::pay::EntryKind) -> &'static str {
    use crate::pay::EntryKind::*;
    match kind {
        Accrual => "accrual",
        Bonus => "bonus",
        Hold => "hold",
        Release => "release",
        Forfeit => "forfeit",
        Penalty => "penalty",
        Payout => "payout",
    }
}

fn parse_entry_kind(kind: &str) -> Option<crate::pay::EntryKind> {
    use crate::pay::EntryKind::*;
    Some(match kind {
        "accrual" => Accrual,
        "bonus" => Bonus,
        "hold" => Hold,
        "release" => Release,
        "forfeit" => Forfeit,
        "penalty" => Penalty,
        "payout" => Payout,
        _ => return None,
    })
}

fn account_name(account: &crate::pay::Account<String>) -> String {
    use crate::pay::Account::*;
    match account {
        Available(n) => accounts::available(n),
        Held(n) => accounts::held(n),
        Work => accounts::WORK.into(),
        Bonuses => accounts::BONUSES.into(),
        Penalties => accounts::PENALTIES.into(),
        Forfeits => accounts::FORFEITS.into(),
        Payouts => accounts::PAYOUTS.into(),
    }
}

/// Verifies a claim's receipt signature in depth: the receipt body is rebuilt from the stored
/// columns and checked against its signer.
fn receipt_signature_holds(
    ticket: &str,
    content: &str,
    node: &str,
    r: &crate::db::ReceiptRow,
) -> bool {
    use std::str::FromStr;
    let parsed = (|| {
        let mut ticket_id = [0u8; 16];
        hex::decode_to_slice(ticket, &mut ticket_id).ok()?;
        let body = overlay::receipt::ReceiptBody {
            ticket_id,
            content: content.parse().ok()?,
            node: PeerId::from_str(node).ok()?,
            fragments: r.fragments,
            bytes: r.bytes,
            seq: r.seq,
            time: r.time,
        };
        let signer = PeerId::from_str(r.signer).ok()?;
        let signature = overlay::identity::Signature::from_slice(&r.signature()?).ok()?;
        Some((body, signer, signature))
    })();
    let Some((body, signer, signature)) = parsed else {
        return false;
    };
    overlay::identity::verify(
        &signer,
        <overlay::receipt::ReceiptBody as overlay::identity::Domain>::DOMAIN,
        &overlay::identity::encode(&body),
        &signature,
    )
    .is_ok()
}

/// Receipt signatures checked in depth ahead of the core, on worker threads.
///
/// The core decides per claim of a sold ticket, with one draw from the run's RNG (or always, for
/// a watched node), whether to verify its receipt signature: about 100 µs each, most of a large
/// run's CPU time. Tickets therefore wait in a short window between reading and the core. When a
/// ticket enters it, the draws the core will make for it are taken from the RNG in the core's
/// order and queued, and the claims they select are verified on worker threads; when it leaves,
/// the core gets the queued draws (then the RNG's next ones) and the answers (verifying on the
/// spot any claim the forecast missed). The core so sees exactly the RNG's sequence and real
/// verifications: its results are those of checking inline, only the CPU time moves.
mod ahead {
    use std::collections::{BTreeSet, VecDeque};
    use std::sync::{Arc, Mutex, mpsc};

    use rand::RngExt;

    use crate::db::{ClaimRow, SaleRow};

    /// Tickets waiting between reading and the core.
    const WINDOW: usize = 256;

    /// One ticket's claims as read.
    pub struct TicketClaims {
        pub hex: String,
        pub id: [u8; 16],
        pub sale: Option<SaleRow>,
        /// As [`ClaimRow::unpack`] reads them.
        pub packed: String,
        /// The ticket's settlement, as [`ClaimRow::unpack_settled`] reads it.
        pub paid: Option<String>,
    }

    /// A ticket leaving the window.
    pub struct Ready {
        pub claims: Arc<TicketClaims>,
        /// Signatures verified ahead: `(claim index in node order, whether it holds)`.
        pub verified: Vec<(usize, bool)>,
    }

    struct Waiting {
        claims: Arc<TicketClaims>,
        verified: Option<mpsc::Receiver<Vec<(usize, bool)>>>,
    }

    type Job = (
        Arc<TicketClaims>,
        Vec<usize>,
        mpsc::SyncSender<Vec<(usize, bool)>>,
    );

    /// The window, the draws taken ahead of the core, and the checking threads.
    pub struct Lookahead<'r, R: ?Sized> {
        rng: &'r mut R,
        drawn: VecDeque<u64>,
        rate: f64,
        window: VecDeque<Waiting>,
        jobs: Option<mpsc::SyncSender<Job>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl<'r, R: rand::Rng + ?Sized> Lookahead<'r, R> {
        pub fn new(rng: &'r mut R, deep_check_rate: f64) -> Self {
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
            let (jobs, queue) = mpsc::sync_channel::<Job>(WINDOW);
            let queue = Arc::new(Mutex::new(queue));
            let threads: Vec<_> = (0..workers)
                .filter_map(|i| {
                    let queue = queue.clone();
                    std::thread::Builder::new()
                        .name(format!("receipt-check-{i}"))
                        .spawn(move || {
                            loop {
                                let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                                let Ok((claims, picks, reply)) = job else {
                                    return;
                                };
                                let _ = reply.send(verify(&claims, &picks));
                            }
                        })
                        .ok()
                })
                .collect();
            Self {
                rng,
                drawn: VecDeque::new(),
                rate: deep_check_rate,
                // Without a thread every check runs inline.
                jobs: (!threads.is_empty()).then_some(jobs),
                window: VecDeque::with_capacity(WINDOW + 1),
                threads,
            }
        }

        /// Takes `claims` into the window: its draws now, its checks to the threads. Returns the
        /// ticket leaving the window, if it is full.
        pub fn push(&mut self, claims: TicketClaims, watched: &BTreeSet<&str>) -> Option<Ready> {
            let claims = Arc::new(claims);
            let picks = self.forecast(&claims, watched);
            let verified = (!picks.is_empty())
                .then(|| {
                    let (reply, answer) = mpsc::sync_channel(1);
                    // A full queue: the core checks these itself.
                    self.jobs
                        .as_ref()?
                        .try_send((claims.clone(), picks, reply))
                        .ok()?;
                    Some(answer)
                })
                .flatten();
            self.window.push_back(Waiting { claims, verified });
            (self.window.len() > WINDOW).then(|| self.pop()).flatten()
        }

        /// The oldest ticket in the window, waiting for its checks.
        pub fn pop(&mut self) -> Option<Ready> {
            let w = self.window.pop_front()?;
            Some(Ready {
                claims: w.claims,
                verified: w.verified.and_then(|a| a.recv().ok()).unwrap_or_default(),
            })
        }

        /// The RNG as the core must see it: the draws taken ahead first.
        pub fn rng(&mut self) -> Draws<'_, 'r, R> {
            Draws(self)
        }

        /// Whether every draw taken ahead went to the core (the forecast matched the core).
        pub fn settled(&self) -> bool {
            self.drawn.is_empty() && self.window.is_empty()
        }

        /// Draws, as the core will, whether each claim is checked in depth; returns the claims
        /// drawn (indices in node order).
        fn forecast(&mut self, t: &TicketClaims, watched: &BTreeSet<&str>) -> Vec<usize> {
            // The core settles unsold tickets (or leaves them pending) without a draw.
            if t.sale.is_none() {
                return Vec::new();
            }
            // Then, claim by claim: `watched.contains(node) || rng.random_bool(rate)`.
            let rate = self.rate;
            let mut draw = || Record(&mut *self).random_bool(rate);
            if watched.is_empty() {
                return (0..t.packed.split(',').count())
                    .filter(|_| draw())
                    .collect();
            }
            let Ok(claims) = ClaimRow::unpack(&t.packed) else {
                return Vec::new();
            };
            (0..claims.len())
                .filter(|&i| watched.contains(claims[i].node) || draw())
                .collect()
        }
    }

    impl<R: ?Sized> Drop for Lookahead<'_, R> {
        fn drop(&mut self) {
            drop(self.jobs.take());
            self.window.clear();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    /// Verifies the picked claims whose receipt the core would verify.
    fn verify(t: &TicketClaims, picks: &[usize]) -> Vec<(usize, bool)> {
        let Ok(claims) = ClaimRow::unpack(&t.packed) else {
            return Vec::new();
        };
        let client = t.sale.as_ref().map(|s| s.client.as_str());
        picks
            .iter()
            .filter_map(|&i| {
                let c = claims.get(i)?;
                let r = c.receipt.as_ref().filter(|r| Some(r.signer) == client)?;
                Some((
                    i,
                    super::receipt_signature_holds(&t.hex, c.content, c.node, r),
                ))
            })
            .collect()
    }

    /// The run's RNG for the core: the draws taken ahead, then fresh ones.
    pub struct Draws<'a, 'r, R: ?Sized>(&'a mut Lookahead<'r, R>);

    impl<R: rand::Rng + ?Sized> rand::TryRng for Draws<'_, '_, R> {
        type Error = std::convert::Infallible;

        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(match self.0.drawn.pop_front() {
                Some(v) => v,
                None => self.0.rng.next_u64(),
            })
        }

        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            assert!(
                self.0.drawn.is_empty(),
                "the reconciliation core drew a u32 while u64 draws were taken ahead for it"
            );
            Ok(self.0.rng.next_u32())
        }

        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            assert!(
                self.0.drawn.is_empty(),
                "the reconciliation core drew bytes while u64 draws were taken ahead for it"
            );
            self.0.rng.fill_bytes(dst);
            Ok(())
        }
    }

    /// The RNG for the forecast: every draw is queued for the core.
    struct Record<'a, 'r, R: ?Sized>(&'a mut Lookahead<'r, R>);

    impl<R: rand::Rng + ?Sized> rand::TryRng for Record<'_, '_, R> {
        type Error = std::convert::Infallible;

        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            let v = self.0.rng.next_u64();
            self.0.drawn.push_back(v);
            Ok(v)
        }

        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            unreachable!("a Bernoulli draw takes a u64")
        }

        fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), Self::Error> {
            unreachable!("a Bernoulli draw takes a u64")
        }
    }

    #[cfg(test)]
    mod tests {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        use super::*;

        fn ticket(claims: &[&str], sold: bool) -> TicketClaims {
            TicketClaims {
                hex: "00".repeat(16),
                id: [0; 16],
                sale: sold.then(|| SaleRow {
                    client: "client".into(),
                    allowance: 1 << 30,
                    not_after: 1_000,
                    source: "issued".into(),
                }),
                packed: claims
                    .iter()
                    .enumerate()
                    .map(|(i, node)| format!("{i} {node} c 10 1 1 5 1 client 10 1 1 5 00"))
                    .collect::<Vec<_>>()
                    .join(","),
                paid: None,
            }
        }

        #[test]
        fn the_core_sees_the_rngs_own_sequence_whatever_was_drawn_ahead() {
            let mut plain = StdRng::seed_from_u64(7);
            let mut rng = StdRng::seed_from_u64(7);
            let mut ahead = Lookahead::new(&mut rng, 0.5);
            // Three draws for a sold ticket, none for an unsold one or a watched node.
            let watched = BTreeSet::from(["b"]);
            assert!(
                ahead
                    .push(ticket(&["a", "b", "c", "d"], true), &watched)
                    .is_none()
            );
            assert!(ahead.push(ticket(&["a", "c"], false), &watched).is_none());
            assert_eq!(ahead.drawn.len(), 3);
            let seen: Vec<u64> = (0..5).map(|_| ahead.rng().next_u64()).collect();
            let expected: Vec<u64> = (0..5).map(|_| plain.next_u64()).collect();
            assert_eq!(seen, expected);
            // The picked claims carry a receipt by the client, but not a valid signature.
            let first = ahead.pop().expect("queued");
            assert!(first.verified.iter().all(|&(i, holds)| i < 4 && !holds));
            assert!(ahead.pop().expect("queued").verified.is_empty());
            assert!(ahead.settled());
        }
    }
}

/// Runs one reconciliation over everything ingested since the last run, settles pay, and
/// writes verdicts, ledger entries, pay states and closed placements in one transaction.
pub async fn reconcile<R: rand::Rng + Send>(
    db: &crate::db::Db,
    config: &AccountingConfig,
    now: u64,
    rng: &mut R,
) -> anyhow::Result<RunOutcome> {
    let started = std::time::Instant::now();
    // One run at a time across every coordinator sharing the database; the run is written only
    // if no other was meanwhile (`RunWrites::after_run`).
    let lock = db.lock_accounting().await?;
    let outcome = reconcile_locked(db, config, now, rng, started).await;
    lock.release().await;
    outcome
}

async fn reconcile_locked<R: rand::Rng + Send>(
    db: &crate::db::Db,
    config: &AccountingConfig,
    now: u64,
    rng: &mut R,
    started: std::time::Instant,
) -> anyhow::Result<RunOutcome> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use crate::pay::{self, Balances, Facts, NodeInput, NodeState, Offences, RunInfo, Work};
    use crate::policy::{GB, MONTH_SECS, micro};
    use crate::reconcile::{
        Completion, HeldClaim, PlacementRecord, ReceiptFacts, Sale, SaleKind, ServedClaim,
        ServiceKind, TicketCase, reconcile_storage, reconcile_ticket,
    };

    let mut phases = Phases {
        mark: Some(started),
        ..Default::default()
    };
    let policy = &config.pay;
    let after_run = db.last_run_id().await?;
    let period_from = db.last_run_end().await?;
    let period_to = now.max(period_from);
    let mark = db.dirty_mark().await?;

    let mut contents: HashMap<String, ContentFacts> = HashMap::new();
    for row in db.all_contents().await? {
        let Ok(signed) = postcard::from_bytes::<overlay::manifest::SignedManifest>(&row.manifest)
        else {
            tracing::warn!(content = %row.id, "unreadable manifest: its claims cannot be confirmed");
            continue;
        };
        let manifest = signed.body;
        let largest_fragment = (0..manifest.segments())
            .map(|s| manifest.fragment_len(s) as u64)
            .max()
            .unwrap_or(0);
        contents.insert(
            row.id.to_string(),
            ContentFacts {
                manifest,
                largest_fragment,
            },
        );
    }
    let mut assigned: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for (content, node, count) in db.assigned_counts().await? {
        assigned.entry(content).or_default().insert(node, count);
    }
    // What was held during the period (and the sales grace before it, where tickets still
    // pending were served), for the concentration statistic's fair shares.
    let held_since = period_from.saturating_sub(config.reconcile.sales_grace_secs);
    let mut held: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for (content, node, count) in db.held_counts(held_since).await? {
        held.entry(content).or_default().insert(node, count);
    }
    let mut states: HashMap<String, NodeState> = HashMap::new();
    for (node, state) in db.node_states(crate::db::StateTable::Pay).await? {
        states.insert(node, serde_json::from_str(&state)?);
    }
    let watched: BTreeSet<&str> = states
        .iter()
        .filter(|(_, s)| !s.offences.is_empty())
        .map(|(n, _)| n.as_str())
        .collect();
    let mut completions: HashMap<String, Completion<String>> = HashMap::new();
    for (ticket, id, report, at) in db.dirty_completions(mark).await? {
        let Ok(report) = postcard::from_bytes::<overlay::receipt::CompletionReport>(&report) else {
            tracing::warn!(ticket, id, "unreadable completion report skipped");
            continue;
        };
        let per_node = report
            .body
            .per_node
            .iter()
            .map(|n| (n.node.to_string(), n.bytes))
            .collect();
        completions.insert(
            ticket,
            Completion {
                id,
                time: report.body.time.max(at),
                per_node,
            },
        );
    }

    let mut tallies = Tallies::default();
    let mut writes = crate::db::RunWrites {
        started_at: now,
        period_from,
        period_to,
        after_run,
        settled_upto: mark,
        ..Default::default()
    };
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let (
        mut tickets,
        mut pending,
        mut claims,
        mut confirmed,
        mut deep,
        mut conflicts,
        mut suspected,
    ) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut confirmed_bytes: u128 = 0;
    let rc = &config.reconcile;
    let served_rate = micro(policy.served_per_gb);
    let repair_rate = micro(policy.repair_per_gb);
    let stored_rate = micro(policy.stored_per_gb_month);
    let mut failure: Option<anyhow::Error> = None;
    phases.end("load");
    let mut core_time = Duration::ZERO;
    let mut ahead = ahead::Lookahead::new(rng, rc.deep_check_rate);
    let mut settle =
        |ticket: ahead::Ready, rng: &mut ahead::Draws<'_, '_, R>| -> anyhow::Result<()> {
            let t = &*ticket.claims;
            let group = crate::db::ClaimRow::unpack_settled(&t.packed, t.paid.as_deref())?;
            let first = &group[0];
            let meta = contents.get(first.content);
            let content_assigned = assigned.get(first.content);
            let content_held = held.get(first.content);
            let case = TicketCase {
                ticket: t.id,
                content: first.content.to_string(),
                sale: t.sale.as_ref().map(|s| Sale {
                    client: s.client.as_str(),
                    allowance: s.allowance,
                    not_after: s.not_after,
                    kind: match s.source.as_str() {
                        "repair" => SaleKind::Repair,
                        "uploaded" => SaleKind::Uploaded,
                        _ => SaleKind::Issued,
                    },
                }),
                claims: group
                    .iter()
                    .map(|c| ServedClaim {
                        node: c.node,
                        bytes: c.bytes,
                        fragments: c.fragments,
                        receipt: c.receipt.as_ref().map(|r| ReceiptFacts {
                            signer: r.signer,
                            bytes: r.bytes,
                            fragments: r.fragments,
                            seq: r.seq,
                            time: r.time,
                        }),
                        paid_bytes: c.paid_bytes,
                        first_seen: c.first_seen,
                        report_seq: c.report_seq,
                        assigned: content_assigned
                            .and_then(|a| a.get(c.node))
                            .copied()
                            .unwrap_or(0),
                        held: content_held
                            .and_then(|a| a.get(c.node))
                            .copied()
                            .unwrap_or(0),
                    })
                    .collect(),
                completion: completions.get(&t.hex).map(|c| Completion {
                    id: c.id,
                    time: c.time,
                    per_node: c.per_node.iter().map(|(n, b)| (n.as_str(), *b)).collect(),
                }),
                assigned_total: content_assigned.map_or(0, |a| a.values().sum()),
                held_total: content_held.map_or(0, |a| a.values().sum()),
                fragment_size: meta.map_or(0, |m| m.largest_fragment),
                k: meta.map_or(0, |m| m.manifest.k() as u32),
                n: meta.map_or(0, |m| m.manifest.target() as u32),
            };
            let result = reconcile_ticket(rc, &case, now, &watched, rng, |claim| {
                let Some(i) = group.iter().position(|c| c.node == claim.node) else {
                    return false;
                };
                match ticket.verified.iter().find(|&&(j, _)| j == i) {
                    Some(&(_, holds)) => holds,
                    None => group[i].receipt.as_ref().is_some_and(|r| {
                        receipt_signature_holds(&t.hex, group[i].content, group[i].node, r)
                    }),
                }
            });
            if result.pending {
                pending += 1;
                writes.pending.push(t.hex.clone());
                return Ok(());
            }
            if group
                .iter()
                .zip(&result.claims)
                .any(|(row, r)| r.confirmed != row.paid_bytes)
            {
                let paid = group.iter().zip(&result.claims);
                if let Some(packed) =
                    crate::db::ClaimRow::pack_settled(paid.map(|(row, r)| (row.rowid, r.confirmed)))
                {
                    writes.settled.push((t.hex.clone(), packed));
                }
            }
            let flagged: BTreeSet<&str> = result.verdicts.iter().filter_map(|v| v.node).collect();
            for (row, r) in group.iter().zip(&result.claims) {
                claims += 1;
                deep += u64::from(r.deep_checked);
                if !flagged.contains(row.node) {
                    confirmed += 1;
                }
                confirmed_bytes += u128::from(r.pay);
                let t = tallies.of(row.node);
                match r.service {
                    ServiceKind::Served => t.served += r.pay,
                    ServiceKind::Repair => t.repair += r.pay,
                }
            }
            for v in &result.verdicts {
                writes.verdicts.push(new_verdict(&mut by_kind, v)?);
                match v.outcome {
                    crate::reconcile::Outcome::Conflict => conflicts += 1,
                    crate::reconcile::Outcome::SuspectedCollusion => suspected += 1,
                }
                let Some(node) = v.node else { continue };
                let t = tallies.of(node);
                if v.offence {
                    t.conflicts += 1;
                    let rate = if case
                        .sale
                        .as_ref()
                        .is_some_and(|s| s.kind == SaleKind::Repair)
                    {
                        repair_rate
                    } else {
                        served_rate
                    };
                    t.conflict_value += rate_value(v.amount, rate, u128::from(GB));
                }
                if v.outcome == crate::reconcile::Outcome::SuspectedCollusion {
                    t.suspected += 1;
                }
            }
            Ok(())
        };
    db.dirty_claims(mark, |dirty| {
        let _timed = Timed(&mut core_time, std::time::Instant::now());
        if failure.is_some() {
            return;
        }
        tickets += 1;
        let mut id = [0u8; 16];
        if hex::decode_to_slice(&dirty.hex, &mut id).is_err() {
            tracing::warn!(
                ticket = dirty.hex,
                "claims under a malformed ticket ID skipped"
            );
            return;
        }
        let ticket = ahead::TicketClaims {
            hex: dirty.hex,
            id,
            sale: dirty.sale,
            packed: dirty.packed,
            paid: dirty.paid,
        };
        if let Some(ready) = ahead.push(ticket, &watched)
            && let Err(e) = settle(ready, &mut ahead.rng())
        {
            failure = Some(e);
        }
    })
    .await?;
    let drained = std::time::Instant::now();
    while failure.is_none()
        && let Some(ready) = ahead.pop()
    {
        if let Err(e) = settle(ready, &mut ahead.rng()) {
            failure = Some(e);
        }
    }
    core_time += drained.elapsed();
    debug_assert!(
        failure.is_some() || ahead.settled(),
        "draws taken ahead were left over: the forecast no longer matches the core"
    );
    drop(ahead);
    if let Some(e) = failure {
        return Err(e);
    }
    phases.end("claims_read");
    if let Some((_, read)) = phases.spent.last_mut() {
        *read = read.saturating_sub(core_time);
    }
    phases.spent.push(("claims_core", core_time));

    // Storage: every node that listed its holdings during the period.
    // Failed audits since the earliest point any node's storage is still unsettled from:
    // `(time, offence)` per node.
    let unsettled_from = states
        .values()
        .filter_map(|s| s.stored_to)
        .min()
        .map_or(period_from, |t| t.min(period_from));
    let mut failures: HashMap<String, Vec<(u64, bool)>> = HashMap::new();
    for (node, at, offence) in db.failed_audits(unsettled_from, period_to).await? {
        failures.entry(node).or_default().push((at, offence));
    }
    // Whether a node failed an audit after `from`, and whether that was an offence.
    let failed_since = |node: &str, from: u64| -> Option<bool> {
        let after: Vec<bool> = failures
            .get(node)?
            .iter()
            .filter(|&&(at, _)| at > from)
            .map(|&(_, offence)| offence)
            .collect();
        (!after.is_empty()).then(|| after.contains(&true))
    };
    let (mut storage_nodes, mut stored_byte_secs) = (0u64, 0u128);
    // Storage is settled up to the end of the period for every node that listed its holdings
    // in it. A node that did not (a report late by a moment, a node away) is settled later, from
    // where it was last settled, by the first run that sees its next listing.
    let mut stored_to: HashMap<String, u64> = HashMap::new();
    db.holdings_with_placements(
        period_from,
        0,
        |node, (report_seq, at, blob), placements| {
            if failure.is_some() {
                return;
            }
            let held: Vec<overlay::report::HeldContent> = match postcard::from_bytes(blob) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(node, error = %e, "unreadable holdings skipped");
                    return;
                }
            };
            let fragments = held
                .iter()
                .flat_map(|h| {
                    let content = h.content.to_string();
                    h.fragments
                        .iter()
                        .map(move |&(s, i)| (content.clone(), s, i))
                })
                .collect();
            let claim = HeldClaim {
                report_seq,
                at,
                fragments,
                node,
            };
            let records: Vec<PlacementRecord> = placements
                .into_iter()
                .map(|p| {
                    let size = contents
                        .get(&p.content)
                        .map_or(0, |m| m.manifest.fragment_len(u64::from(p.segment)) as u64);
                    PlacementRecord {
                        fragment: (p.content, p.segment, p.index),
                        size,
                        placed_at: p.placed_at,
                        removed_at: p.removed_at,
                    }
                })
                .collect();
            let from = states
                .get(node)
                .and_then(|s| s.stored_to)
                .map_or(period_from, |t| t.min(period_from));
            let result = reconcile_storage(&node, Some(&claim), &records, from, period_to);
            stored_to.insert(node.to_string(), period_to);
            storage_nodes += 1;
            let t = tallies.of(node);
            match failed_since(node, from) {
                // Storage pay is lost for the period; reconciliation still closes what is lost.
                Some(offence) => {
                    if offence {
                        t.conflicts += 1;
                        t.conflict_value += rate_value(
                            result.byte_secs,
                            stored_rate,
                            u128::from(GB) * u128::from(MONTH_SECS),
                        );
                    }
                }
                None => {
                    t.stored += result.byte_secs;
                    stored_byte_secs += result.byte_secs;
                }
            }
            for v in &result.verdicts {
                match new_verdict(&mut by_kind, v) {
                    Ok(verdict) => writes.verdicts.push(verdict),
                    Err(e) => {
                        failure = Some(e);
                        return;
                    }
                }
                conflicts += 1;
                t.conflicts += 1;
                t.conflict_value += rate_value(
                    v.amount,
                    stored_rate,
                    u128::from(GB) * u128::from(MONTH_SECS),
                );
            }
            for (content, segment, index) in result.lost {
                writes
                    .lost
                    .push((content, segment, index, node.to_string()));
            }
        },
    )
    .await?;
    if let Some(e) = failure {
        return Err(e);
    }

    phases.end("storage");

    // Facts about every node, then pay.
    let window = policy.availability_window.as_secs();
    let mut sessions: HashMap<String, Vec<crate::history::Session>> = HashMap::new();
    for (node, start, end) in db.sessions_since(now.saturating_sub(window)).await? {
        sessions.entry(node).or_default().push(match end {
            Some(end) => crate::history::Session::new(start, end),
            None => crate::history::Session::open(start),
        });
    }
    let passed: HashMap<String, u64> = db.audits_passed().await?.into_iter().collect();
    let mut decayed: HashMap<String, (f64, f64)> = HashMap::new();
    let horizon = (8.0 * AUDIT_HALF_LIFE_SECS) as u64;
    for (node, pass, at) in db.audits_since(now.saturating_sub(horizon)).await? {
        let w = 0.5f64.powf(now.saturating_sub(at) as f64 / AUDIT_HALF_LIFE_SECS);
        let e = decayed.entry(node).or_default();
        if pass {
            e.0 += w;
        } else {
            e.1 += w;
        }
    }
    let ledgers = db.node_ledger_summary().await?;
    let facts = db.node_facts().await?;
    let mut locations: HashMap<String, u64> = HashMap::new();
    let node_location = |addrs: &str| {
        let addrs: Vec<overlay::Multiaddr> = serde_json::from_str::<Vec<String>>(addrs)
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        crate::history::location(&addrs)
    };
    for (_, _, _, _, addrs) in &facts {
        *locations.entry(node_location(addrs)).or_default() += 1;
    }
    let total_nodes = facts.len().max(1) as f64;
    let mut inputs = Vec::with_capacity(facts.len());
    for (node, registered_at, _reported_bps, observed_bps, addrs) in &facts {
        let tally = tallies.take(node);
        let ledger = ledgers.get(node).cloned().unwrap_or_default();
        let events = ledger
            .events
            .iter()
            .filter_map(|(at, kind, amount)| Some((*at, parse_entry_kind(kind)?, *amount)));
        let (pass_w, fail_w) = decayed.get(node).copied().unwrap_or_default();
        let location = node_location(addrs);
        inputs.push(NodeInput {
            node: node.clone(),
            state: {
                let mut state = states
                    .remove(node)
                    .unwrap_or_else(|| NodeState::new(*registered_at));
                state.stored_to = stored_to.get(node).copied().or(state.stored_to);
                state
            },
            work: Work {
                served_bytes: tally.served,
                repair_bytes: tally.repair,
                stored_byte_secs: tally.stored,
            },
            facts: Facts {
                age_secs: now.saturating_sub(*registered_at),
                availability: crate::history::availability(
                    sessions.get(node).map_or(&[][..], |s| &s[..]),
                    now,
                    window,
                ),
                // Only what the CM measured itself: a node's own figure could buy it a bonus.
                upload_bps: *observed_bps,
                location_share: if location == "unknown" {
                    1.0
                } else {
                    locations.get(&location).copied().unwrap_or(0) as f64 / total_nodes
                },
                audits_passed: passed
                    .get(node)
                    .copied()
                    .unwrap_or(0)
                    .min(u64::from(u32::MAX)) as u32,
                // As the audit core scores: one imaginary pass keeps a new node at 1.0 and lets
                // old failures fade.
                audit_score: (pass_w + 1.0) / (pass_w + fail_w + 1.0),
                lost_storage: failed_since(node, period_from).is_some(),
            },
            offences: Offences {
                conflicts: tally.conflicts,
                conflict_value: tally.conflict_value.clamp(0, i128::from(i64::MAX)) as i64,
                suspected_collusion: tally.suspected,
            },
            balances: Balances {
                available: ledger.available,
                held: ledger.held,
                matured_held: pay::matured_held(policy, now, events),
            },
        });
    }
    let revenue = db.revenue(period_from, period_to).await?;
    phases.end("facts");
    let settlement = pay::settle(
        policy,
        &RunInfo {
            now,
            period_from,
            period_to,
            revenue,
        },
        inputs,
    );
    phases.end("settle");
    let mut paid: i64 = 0;
    let mut fined: i64 = 0;
    let mut forfeited: i64 = 0;
    for e in &settlement.entries {
        let node = match (&e.debit, &e.credit) {
            (pay::Account::Available(n) | pay::Account::Held(n), _)
            | (_, pay::Account::Available(n) | pay::Account::Held(n)) => Some(n.clone()),
            _ => None,
        };
        match e.kind {
            pay::EntryKind::Accrual | pay::EntryKind::Bonus => paid += e.amount,
            pay::EntryKind::Penalty => fined += e.amount,
            pay::EntryKind::Forfeit => forfeited += e.amount,
            _ => {}
        }
        writes.entries.push(crate::db::NewEntry {
            kind: entry_kind(e.kind).into(),
            debit: account_name(&e.debit),
            credit: account_name(&e.credit),
            amount: e.amount,
            service: e.service.map(|s| s.to_string()),
            node,
            memo: e.memo.clone(),
        });
    }
    for (node, state) in &settlement.states {
        writes
            .pay_states
            .push((node.clone(), serde_json::to_string(state)?));
    }
    let raised = settlement
        .summary
        .iter()
        .filter(|s| s.level_after > s.level_before)
        .count();
    let offenders = settlement.summary.iter().filter(|s| s.offence).count();
    writes.summary = serde_json::json!({
        "period_from": period_from,
        "period_to": period_to,
        "tickets": tickets,
        "pending_tickets": pending,
        "claims": claims,
        "deep_checked": deep,
        "confirmed": confirmed,
        "conflict": conflicts,
        "suspected_collusion": suspected,
        "by_kind": by_kind,
        "confirmed_bytes": confirmed_bytes.to_string(),
        "storage_nodes": storage_nodes,
        "stored_byte_secs": stored_byte_secs.to_string(),
        "lost_placements": writes.lost.len(),
        "nodes_settled": settlement.states.len(),
        "offenders": offenders,
        "levels_raised": raised,
        "paid": paid,
        "fined": fined,
        "forfeited": forfeited,
        "ledger_entries": writes.entries.len(),
        "revenue": revenue,
    });
    phases.end("entries");
    let run = db.write_run(&writes).await?;
    phases.end("write");
    let mut summary = writes.summary;
    summary["run"] = run.into();
    summary["millis"] = (started.elapsed().as_millis() as u64).into();
    summary["phases_ms"] = phases.to_json();
    tracing::info!(
        run,
        claims,
        conflicts,
        suspected,
        paid,
        "reconciliation run written"
    );
    Ok(RunOutcome {
        run,
        summary,
        lost: writes.lost,
    })
}

/// Runs a reconciliation now (one at a time) and applies closed placements to the repair core.
pub async fn run_now(coord: &Coordinator) -> anyhow::Result<RunOutcome> {
    let _one = coord.reconciling.lock().await;
    let mut rng = rand::make_rng::<rand::rngs::StdRng>();
    let outcome = reconcile(
        &coord.db,
        &coord.accounting,
        overlay::time::now_secs(),
        &mut rng,
    )
    .await?;
    if !outcome.lost.is_empty() {
        let now = std::time::Instant::now();
        let mut repair = coord.repair.lock().unwrap_or_else(|p| p.into_inner());
        for (content, segment, index, node) in &outcome.lost {
            let (Ok(content), Ok(node)) = (
                content.parse::<overlay::ContentId>(),
                node.parse::<PeerId>(),
            ) else {
                continue;
            };
            if repair.holder(&content, *segment, *index) == Some(node) {
                repair.set_holder(&content, *segment, *index, None, now);
            }
        }
        drop(repair);
        coord.repair_wake.notify_one();
    }
    Ok(outcome)
}

/// Reconciles every `interval` until the coordinator stops.
pub async fn reconcile_loop(coord: std::sync::Arc<Coordinator>, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = run_now(&coord).await {
            tracing::error!(error = %e, "reconciliation run failed; the next one retries");
        }
    }
}

/// `node show`: a node's level, balances, audits and recent verdicts.
pub async fn node_show(coord: &Coordinator, id: &str) -> anyhow::Result<serde_json::Value> {
    use std::str::FromStr;
    let peer = PeerId::from_str(id).map_err(|e| anyhow::anyhow!("`{id}` is not a node ID: {e}"))?;
    if !coord.db.is_node(&peer).await? {
        anyhow::bail!("no node {id} is registered");
    }
    let view = account_view(coord, &peer).await?;
    let (audits_passed, audits_failed, audits_contained) = coord.db.audit_counts(id).await?;
    let mut pay_last_run = serde_json::json!({"served": 0, "stored": 0, "repair": 0});
    for (service, amount) in coord.db.last_run_accruals(id).await? {
        pay_last_run[service] = amount.into();
    }
    let state = match coord.db.node_state(crate::db::StateTable::Pay, id).await? {
        Some(s) => serde_json::from_str::<serde_json::Value>(&s)?,
        None => serde_json::Value::Null,
    };
    let verdicts = coord.db.verdicts(Some(id), 100).await?;
    let mut by_kind = std::collections::BTreeMap::<String, i64>::new();
    for e in coord.db.ledger_of(id).await? {
        *by_kind.entry(e.kind).or_default() += e.amount;
    }
    Ok(serde_json::json!({
        "id": id,
        "level": view.level,
        "level_index": view.level_index,
        "balance": view.balance,
        "held": view.held,
        "earned": view.earned,
        "paid_out": view.paid_out,
        "audits_passed": audits_passed,
        "audits_failed": audits_failed,
        "audits_contained": audits_contained,
        "pay_last_run": pay_last_run,
        "offences": state["offences"].as_array().map_or(0, |o| o.len()),
        "level_since": state["level_since"],
        "ledger": by_kind,
        "reconciled_at": view.reconciled_at,
        "last_report_seq": view.last_report_seq,
        "verdicts": verdicts,
    }))
}

/// `ledger`: every node's balances, and the CM's accounts.
pub async fn ledger(coord: &Coordinator) -> anyhow::Result<serde_json::Value> {
    let mut nodes = std::collections::BTreeMap::<String, (i64, i64)>::new();
    let mut cm = serde_json::Map::new();
    let mut total: i64 = 0;
    for (account, balance) in coord.db.balances().await? {
        total = total.saturating_add(balance);
        if let Some(rest) = account.strip_prefix("node:") {
            if let Some(node) = rest.strip_suffix(":available") {
                nodes.entry(node.into()).or_default().0 = balance;
            } else if let Some(node) = rest.strip_suffix(":held") {
                nodes.entry(node.into()).or_default().1 = balance;
            }
        } else {
            cm.insert(account, balance.into());
        }
    }
    let nodes: Vec<serde_json::Value> = nodes
        .into_iter()
        .map(
            |(id, (balance, held))| serde_json::json!({"id": id, "balance": balance, "held": held}),
        )
        .collect();
    Ok(serde_json::json!({ "nodes": nodes, "accounts": cm, "sum": total }))
}

/// `payout`: pays every positive available balance for `period` (once per period) and returns
/// the statement rows.
pub async fn payout(coord: &Coordinator, period: &str) -> anyhow::Result<serde_json::Value> {
    let _one = coord.reconciling.lock().await;
    let lock = coord.db.lock_accounting().await?;
    let paid = payout_locked(coord, period).await;
    lock.release().await;
    paid
}

async fn payout_locked(coord: &Coordinator, period: &str) -> anyhow::Result<serde_json::Value> {
    let memo = format!("payout for period {period}");
    if coord.db.has_payout(&memo).await? {
        anyhow::bail!("payouts for period {period} were already recorded; a period is paid once");
    }
    let mut entries = Vec::new();
    let mut rows = Vec::new();
    for (account, balance) in coord.db.balances().await? {
        let Some(node) = account
            .strip_prefix("node:")
            .and_then(|r| r.strip_suffix(":available"))
        else {
            continue;
        };
        let held = coord.db.balance(&accounts::held(node)).await?;
        let node = node.to_string();
        match crate::pay::payout(&node, balance, 1) {
            Some(e) => {
                entries.push(crate::db::NewEntry {
                    kind: "payout".into(),
                    debit: account_name(&e.debit),
                    credit: account_name(&e.credit),
                    amount: e.amount,
                    service: None,
                    node: Some(node.clone()),
                    memo: memo.clone(),
                });
                rows.push(serde_json::json!({"node": node, "amount": e.amount, "balance_after": 0, "held": held}));
            }
            None => {
                rows.push(serde_json::json!({"node": node, "amount": 0, "balance_after": balance, "held": held}))
            }
        }
    }
    coord
        .db
        .append_entries(overlay::time::now_secs(), &entries)
        .await?;
    Ok(serde_json::json!({ "period": period, "rows": rows }))
}

#[cfg(test)]
pub(crate) mod tests;
