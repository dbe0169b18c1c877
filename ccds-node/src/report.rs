//! Periodic signed reports to the CM: the work the node claims, what it holds, when it was
//! online.
//!
//! # Participants
//! This node (the signer) and the pinned CM, over `/ccds/control/1`.
//!
//! # Goals
//! * An honest node claims exactly what its receipts say: for every ticket with receipts
//!   accepted since the last accepted report, the newest one, with its own totals.
//! * No report is lost because the CM was briefly unreachable: the claims of a period leave
//!   the node's books only once the CM has accepted every report of that period. Until then
//!   they are sent again, and the CM counts a receipt it has seen once.
//! * Reports fit the wire: at most [`MAX_CLAIMS_PER_REPORT`] claims and [`MAX_REPORT_MSG`]
//!   bytes each; a bigger period goes out as several reports with consecutive sequence
//!   numbers, the first carrying the holdings and sessions, the others only claims.
//! * The sequence number only grows; a node that lost its state learns the CM's last one from
//!   a [`StaleReport`](overlay::proto::ControlResponse::StaleReport) answer and resends once.
//!
//! # Non-goals
//! Proving anything: a report is a claim, which the CM reconciles against witnesses it trusts.
//!
//! # State
//! `DIR/report-state.json` ([`ReportState`]): the next sequence number, how far into
//! `DIR/receipts.jsonl` accepted reports have claimed, and the end of the last accepted period.
//! The log is read from that offset up to its last complete line, so a receipt being appended
//! while a report is built goes into the next one.
//!
//! The pure parts ([`newest_receipts`], [`group_held`], [`Sessions`], [`split`], [`Round`]) do
//! no I/O and read no clock; [`Reporter`] drives them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use overlay::identity::encode;
use overlay::receipt::Receipt;
use overlay::report::{
    HeldContent, MAX_CLAIMS_PER_REPORT, MAX_HELD_PER_REPORT, MAX_REPORT_MSG,
    MAX_SESSIONS_PER_REPORT, NodeReportBody, ServedClaim,
};
use overlay::store::{FragmentId, FragmentStore, StoreError};
use overlay::{ContentId, Identity, PeerId, Signed};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::control::{ControlError, Coordinator, ReportOutcome};

/// Room left in each frame for what wraps a report body: the request tag, the signer and the
/// signature, and the claims list's length prefix.
const ENVELOPE: usize = 1024;
/// Longest receipt log line read; real ones are well under a kilobyte.
const MAX_LOG_LINE: usize = 64 * 1024;
/// Largest report state file read; real ones are under a hundred bytes.
const MAX_STATE_FILE: u64 = 64 * 1024;

/// Why a round of reports was not completed. The report state keeps whatever the CM accepted,
/// so the next round resends the rest.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read the receipt log {path}: {source}")]
    ReceiptLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot list the fragments held: {0}")]
    Store(#[from] StoreError),
    #[error("cannot save the report state {path}: {source}")]
    SaveState {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("report not delivered: {0}")]
    Control(#[from] ControlError),
    #[error(
        "the coordinator refused report {seq} as stale again (its last is {last_seq}); the next round retries"
    )]
    StaleAgain { seq: u64, last_seq: u64 },
    #[error("a background task failed: {0}")]
    Task(String),
}

/// What the node remembers between reports (`DIR/report-state.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportState {
    /// Sequence number of the next report; the CM accepted the one before it.
    pub next_seq: u64,
    /// Bytes of `DIR/receipts.jsonl` whose receipts accepted reports have claimed.
    pub receipts_offset: u64,
    /// End of the last fully accepted period, Unix seconds (0: none yet).
    pub last_to: u64,
}

impl Default for ReportState {
    fn default() -> Self {
        Self {
            next_seq: 1,
            receipts_offset: 0,
            last_to: 0,
        }
    }
}

impl ReportState {
    /// The sequence number of the last report the CM accepted (0: none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Reads the state file; `Ok(None)` when there is none yet, `Err` with the reason when it
    /// cannot be used.
    pub fn load(path: &Path) -> Result<Option<Self>, String> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        let state: Self = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if state.next_seq == 0 {
            return Err("next_seq is 0; sequence numbers start at 1".into());
        }
        Ok(Some(state))
    }

    /// Writes the state file atomically. Blocking (file I/O).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).expect("the report state always serialises");
        json.push(b'\n');
        overlay::store::write_atomic(path, &json, false)
    }
}

/// The newest receipts (highest `seq`) per ticket among the complete lines of a receipt log,
/// sorted by ticket, and how many bytes those lines take. A trailing line without its newline
/// (still being written) is left for later; unreadable lines are skipped and counted.
pub fn newest_receipts(log: impl BufRead) -> std::io::Result<NewestReceipts> {
    let mut newest: HashMap<[u8; 16], Receipt> = HashMap::new();
    let mut out = NewestReceipts::default();
    let mut reader = log;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LOG_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            if n <= MAX_LOG_LINE {
                // The end of the log, mid-line.
                break;
            }
            // An absurdly long line: skip to its end, if it has one yet.
            let mut skipped = n as u64;
            let mut ended = false;
            loop {
                let buf = reader.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        reader.consume(i + 1);
                        skipped += i as u64 + 1;
                        ended = true;
                        break;
                    }
                    None => {
                        let len = buf.len();
                        reader.consume(len);
                        skipped += len as u64;
                    }
                }
            }
            if !ended {
                break;
            }
            out.consumed += skipped;
            out.unreadable += 1;
            continue;
        }
        out.consumed += n as u64;
        match serde_json::from_slice::<Receipt>(&line) {
            Ok(receipt) => {
                let ticket = receipt.body.ticket_id;
                match newest.get(&ticket) {
                    Some(kept) if kept.body.seq >= receipt.body.seq => {}
                    _ => {
                        newest.insert(ticket, receipt);
                    }
                }
            }
            Err(_) => out.unreadable += 1,
        }
    }
    out.receipts = newest.into_values().collect();
    out.receipts.sort_by_key(|r| r.body.ticket_id);
    Ok(out)
}

/// What [`newest_receipts`] found.
#[derive(Debug, Default)]
pub struct NewestReceipts {
    /// The newest receipt per ticket, sorted by ticket.
    pub receipts: Vec<Receipt>,
    /// Bytes of complete lines read.
    pub consumed: u64,
    /// Lines that were not receipts.
    pub unreadable: usize,
}

/// Reads the receipt log at `path` from `offset` (from the start if the log is now shorter
/// than that: it was replaced). Returns the receipts and the offset after the last complete
/// line. Blocking (file I/O).
pub fn read_receipt_log(path: &Path, offset: u64) -> std::io::Result<(Vec<Receipt>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = if offset > len {
        warn!(
            log = %path.display(),
            offset,
            len,
            "the receipt log is shorter than what was already reported; reading it all again"
        );
        0
    } else {
        offset
    };
    file.seek(SeekFrom::Start(start))?;
    let found = newest_receipts(BufReader::new(file))?;
    if found.unreadable > 0 {
        warn!(log = %path.display(), lines = found.unreadable, "unreadable receipt log lines skipped");
    }
    Ok((found.receipts, start + found.consumed))
}

/// The claim an honest node makes for a receipt: exactly its totals.
pub fn claim(receipt: Receipt) -> ServedClaim {
    ServedClaim {
        ticket_id: receipt.body.ticket_id,
        content: receipt.body.content,
        fragments: receipt.body.fragments,
        bytes: receipt.body.bytes,
        receipt: Some(receipt),
    }
}

/// Fragments grouped by content, both in order, at most [`MAX_HELD_PER_REPORT`] in all (the
/// second value says how many more there were).
pub fn group_held(fragments: impl IntoIterator<Item = FragmentId>) -> (Vec<HeldContent>, usize) {
    let mut by_content: BTreeMap<ContentId, Vec<(u32, u16)>> = BTreeMap::new();
    let mut left_out = 0;
    let mut count = 0;
    for id in fragments {
        if count == MAX_HELD_PER_REPORT {
            left_out += 1;
            continue;
        }
        count += 1;
        by_content
            .entry(id.content)
            .or_default()
            .push((id.segment, id.index));
    }
    let held = by_content
        .into_iter()
        .map(|(content, mut fragments)| {
            fragments.sort_unstable();
            fragments.dedup();
            HeldContent { content, fragments }
        })
        .collect();
    (held, left_out)
}

/// The node's own online sessions (join to leave), Unix seconds: the closed ones, newest
/// last and at most [`MAX_SESSIONS_PER_REPORT`], and the open one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    closed: VecDeque<(u64, u64)>,
    open: Option<u64>,
}

impl Sessions {
    /// Starts with the last session of a previous run, if one was persisted.
    pub fn with_previous(previous: Option<(u64, u64)>) -> Self {
        let mut sessions = Self::default();
        if let Some((start, end)) = previous {
            sessions.push((start, end.max(start)));
        }
        sessions
    }

    fn push(&mut self, session: (u64, u64)) {
        if self.closed.len() == MAX_SESSIONS_PER_REPORT {
            self.closed.pop_front();
        }
        self.closed.push_back(session);
    }

    /// The node came online at `now` (nothing changes if it already is).
    pub fn start(&mut self, now: u64) {
        self.open.get_or_insert(now);
    }

    /// The node went offline at `now`.
    pub fn end(&mut self, now: u64) {
        if let Some(start) = self.open.take() {
            self.push((start, now.max(start)));
        }
    }

    /// The open session up to `now`, else the last closed one.
    pub fn current(&self, now: u64) -> Option<(u64, u64)> {
        match self.open {
            Some(start) => Some((start, now.max(start))),
            None => self.closed.back().copied(),
        }
    }

    /// When the earliest known session started.
    pub fn earliest(&self) -> Option<u64> {
        self.closed.front().map(|s| s.0).or(self.open)
    }

    /// The sessions within `[from, to]`, clipped to it; the open one counts as running at `to`.
    pub fn within(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self
            .closed
            .iter()
            .map(|&(s, e)| (s.max(from), e.min(to)))
            .filter(|(s, e)| s < e)
            .collect();
        if let Some(start) = self.open.filter(|&s| s <= to) {
            out.push((start.max(from), to));
        }
        out
    }

    /// Forgets the closed sessions that ended by `t` (already reported).
    pub fn forget_before(&mut self, t: u64) {
        self.closed.retain(|&(_, end)| end > t);
    }
}

/// Everything one period's reports say, before it is cut into reports.
#[derive(Clone, Debug)]
pub struct Period {
    pub node: PeerId,
    pub from: u64,
    pub to: u64,
    pub claims: Vec<ServedClaim>,
    pub held: Vec<HeldContent>,
    pub sessions: Vec<(u64, u64)>,
    pub upload_bps: u64,
}

/// Cuts a period into report bodies that each fit the wire (sequence numbers left at 0, given
/// when sent). The first carries the holdings and sessions; each carries as many claims as
/// fit, at most [`MAX_CLAIMS_PER_REPORT`]. There is always at least one report.
pub fn split(period: Period) -> Vec<NodeReportBody> {
    split_within(period, MAX_REPORT_MSG - ENVELOPE, MAX_CLAIMS_PER_REPORT)
}

fn split_within(period: Period, budget: usize, max_claims: usize) -> Vec<NodeReportBody> {
    let Period {
        node,
        from,
        to,
        claims,
        mut held,
        mut sessions,
        upload_bps,
    } = period;
    if sessions.len() > MAX_SESSIONS_PER_REPORT {
        sessions.drain(..sessions.len() - MAX_SESSIONS_PER_REPORT);
    }
    let mut first = NodeReportBody {
        node,
        seq: 0,
        from,
        to,
        served: Vec::new(),
        held: None,
        sessions,
        upload_bps,
    };
    // Holdings too large for a frame of their own (millions of fragments): the tail is left
    // out rather than the whole report refused.
    let base = encode(&first).len();
    let listed = |held: &[HeldContent]| held.iter().map(|h| h.fragments.len()).sum::<usize>();
    let before = listed(&held);
    while base + encode(&held).len() > budget && !held.is_empty() {
        let mut cut = (listed(&held) / 10).max(1);
        while cut > 0 {
            let Some(last) = held.last_mut() else { break };
            let n = cut.min(last.fragments.len());
            last.fragments.truncate(last.fragments.len() - n);
            cut -= n;
            if last.fragments.is_empty() {
                held.pop();
            }
        }
    }
    if listed(&held) < before {
        warn!(
            held = before,
            listed = listed(&held),
            "too many fragments to list in one report; the rest are left out"
        );
    }
    let follow_up = NodeReportBody {
        sessions: Vec::new(),
        ..first.clone()
    };
    first.held = Some(held);

    let mut bodies = Vec::new();
    let mut current = first;
    let mut size = encode(&current).len();
    for claim in claims {
        let claim_size = encode(&claim).len();
        let full = current.served.len() >= max_claims
            || (!current.served.is_empty() && size + claim_size > budget);
        if full {
            bodies.push(std::mem::replace(&mut current, follow_up.clone()));
            size = encode(&current).len();
        }
        size += claim_size;
        current.served.push(claim);
    }
    bodies.push(current);
    bodies
}

/// The reports of one period on their way to the CM, as a state machine: [`Round::next`] says
/// what to sign and send, [`Round::answer`] takes the CM's answer and updates the
/// [`ReportState`] (which the caller saves whenever it changed).
#[derive(Debug)]
pub struct Round {
    bodies: VecDeque<NodeReportBody>,
    seq: u64,
    /// Whether the current report was already renumbered after a stale answer.
    renumbered: bool,
    receipts_end: u64,
    to: u64,
    claims: usize,
}

/// What a [`Round`] asks for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Sign and send this report.
    Send(NodeReportBody),
    /// Every report of the period was accepted.
    Done,
}

/// What an answer did to the [`ReportState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A report was accepted: the state's sequence number moved on (save it); more follow.
    Accepted,
    /// The last report was accepted: the period is claimed (save the state).
    Finished,
    /// The report was stale: send it again under a new number (the state is unchanged).
    Renumbered,
}

impl Round {
    /// A round sending `bodies` from the state's next sequence number; once all are accepted
    /// the state records `receipts_end` and `to`.
    pub fn new(state: &ReportState, bodies: Vec<NodeReportBody>, receipts_end: u64) -> Self {
        let to = bodies.first().map_or(state.last_to, |b| b.to);
        let claims = bodies.iter().map(|b| b.served.len()).sum();
        Self {
            bodies: bodies.into(),
            seq: state.next_seq,
            renumbered: false,
            receipts_end,
            to,
            claims,
        }
    }

    /// Reports in the round not yet accepted.
    pub fn remaining(&self) -> usize {
        self.bodies.len()
    }

    /// Claims in the whole round.
    pub fn claims(&self) -> usize {
        self.claims
    }

    /// The end of the period the round reports.
    pub fn to(&self) -> u64 {
        self.to
    }

    /// The next report to sign and send.
    pub fn next(&self) -> Step {
        match self.bodies.front() {
            Some(body) => Step::Send(NodeReportBody {
                seq: self.seq,
                ..body.clone()
            }),
            None => Step::Done,
        }
    }

    /// Takes the CM's answer to the report [`Round::next`] returned last.
    pub fn answer(
        &mut self,
        state: &mut ReportState,
        outcome: ReportOutcome,
    ) -> Result<Progress, ReportError> {
        match outcome {
            ReportOutcome::Accepted { seq, .. } => {
                if seq != self.seq {
                    warn!(
                        sent = self.seq,
                        acknowledged = seq,
                        "the coordinator acknowledged another report number"
                    );
                }
                self.bodies.pop_front();
                state.next_seq = self.seq + 1;
                self.seq += 1;
                self.renumbered = false;
                if self.bodies.is_empty() {
                    state.receipts_offset = self.receipts_end;
                    state.last_to = self.to;
                    Ok(Progress::Finished)
                } else {
                    Ok(Progress::Accepted)
                }
            }
            ReportOutcome::Stale { last_seq } => {
                if self.renumbered {
                    return Err(ReportError::StaleAgain {
                        seq: self.seq,
                        last_seq,
                    });
                }
                info!(
                    sent = self.seq,
                    last_seq, "the coordinator has newer reports; continuing after its last"
                );
                self.seq = last_seq.saturating_add(1);
                self.renumbered = true;
                Ok(Progress::Renumbered)
            }
        }
    }
}

/// What a completed round sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Reports sent (several when the period had many claims).
    pub reports: usize,
    /// The last report's sequence number.
    pub last_seq: u64,
    /// The end of the period reported.
    pub to: u64,
    /// Claims sent, and receipts the CM counted as new or already known.
    pub claims: usize,
    pub new_receipts: u64,
    pub duplicate_receipts: u64,
}

/// Builds and sends the node's reports, keeping `DIR/report-state.json`.
pub struct Reporter {
    identity: Identity,
    state_path: PathBuf,
    receipts_path: PathBuf,
    state: ReportState,
    /// When this run of the node started (the first period's start when there is no state).
    started: u64,
}

impl Reporter {
    /// Loads the state at `state_path` (starting afresh, with a warning, if it is unusable: the
    /// CM's stale answers and duplicate counting make that safe).
    pub fn open(
        identity: Identity,
        state_path: PathBuf,
        receipts_path: PathBuf,
        started: u64,
    ) -> Self {
        let state = match ReportState::load(&state_path) {
            Ok(state) => state.unwrap_or_default(),
            Err(reason) => {
                warn!(path = %state_path.display(), %reason, "unusable report state; starting afresh");
                ReportState::default()
            }
        };
        Self {
            identity,
            state_path,
            receipts_path,
            state,
            started,
        }
    }

    /// The state as of the last accepted report.
    pub fn state(&self) -> &ReportState {
        &self.state
    }

    /// Builds the round for the period from the last accepted report (or the node's start, or
    /// its earliest known session) to `now`.
    pub async fn build(
        &self,
        store: Arc<FragmentStore>,
        sessions: &Sessions,
        upload_bps: u64,
        now: u64,
    ) -> Result<Round, ReportError> {
        let from = if self.state.last_to > 0 {
            self.state.last_to
        } else {
            sessions
                .earliest()
                .map_or(self.started, |s| s.min(self.started))
        };
        let to = now.max(from);
        let (path, offset) = (self.receipts_path.clone(), self.state.receipts_offset);
        let gathered = tokio::task::spawn_blocking(move || {
            let log = read_receipt_log(&path, offset)
                .map_err(|source| ReportError::ReceiptLog { path, source })?;
            let held = store.list()?;
            Ok::<_, ReportError>((log, held))
        })
        .await
        .map_err(|e| ReportError::Task(e.to_string()))??;
        let ((receipts, receipts_end), fragments) = gathered;
        let (held, left_out) = group_held(fragments);
        if left_out > 0 {
            warn!(left_out, "more fragments held than one report may list");
        }
        let bodies = split(Period {
            node: self.identity.peer_id(),
            from,
            to,
            claims: receipts.into_iter().map(claim).collect(),
            held,
            sessions: sessions.within(from, to),
            upload_bps,
        });
        Ok(Round::new(&self.state, bodies, receipts_end))
    }

    /// Sends every report of `round`, saving the state after each acceptance.
    pub async fn send(
        &mut self,
        coordinator: &Coordinator,
        mut round: Round,
    ) -> Result<Sent, ReportError> {
        let mut sent = Sent {
            reports: round.remaining(),
            last_seq: self.state.last_seq(),
            to: round.to(),
            claims: round.claims(),
            new_receipts: 0,
            duplicate_receipts: 0,
        };
        while let Step::Send(body) = round.next() {
            let seq = body.seq;
            let report = Signed::sign(&self.identity, body);
            let outcome = coordinator.report(&report).await?;
            debug!(seq, ?outcome, "report answered");
            if let ReportOutcome::Accepted {
                new_receipts,
                duplicate_receipts,
                ..
            } = outcome
            {
                sent.new_receipts += u64::from(new_receipts);
                sent.duplicate_receipts += u64::from(duplicate_receipts);
                sent.last_seq = seq;
            }
            let mut state = self.state.clone();
            let progress = round.answer(&mut state, outcome)?;
            if progress != Progress::Renumbered {
                self.save(state).await?;
            }
        }
        Ok(sent)
    }

    async fn save(&mut self, state: ReportState) -> Result<(), ReportError> {
        let (path, copy) = (self.state_path.clone(), state.clone());
        tokio::task::spawn_blocking(move || copy.save(&path))
            .await
            .map_err(|e| ReportError::Task(e.to_string()))?
            .map_err(|source| ReportError::SaveState {
                path: self.state_path.clone(),
                source,
            })?;
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay::receipt::ReceiptBody;

    fn receipt(client: &Identity, ticket: u8, seq: u64, bytes: u64) -> Receipt {
        Signed::sign(
            client,
            ReceiptBody {
                ticket_id: [ticket; 16],
                content: ContentId([ticket; 32]),
                node: Identity::generate().peer_id(),
                fragments: seq,
                bytes,
                seq,
                time: 0,
            },
        )
    }

    fn line(receipt: &Receipt) -> String {
        format!("{}\n", serde_json::to_string(receipt).unwrap())
    }

    #[test]
    fn claims_are_the_newest_receipt_per_ticket_from_the_offset() {
        let client = Identity::generate();
        let old = receipt(&client, 1, 9, 9000);
        let a1 = receipt(&client, 1, 1, 100);
        let b2 = receipt(&client, 2, 2, 200);
        let a3 = receipt(&client, 1, 3, 300);
        let b1 = receipt(&client, 2, 1, 100);
        let before = line(&old);
        let log = format!(
            "{before}{}{}{}not json\n{}",
            line(&a1),
            line(&b2),
            line(&a3),
            line(&b1)
        );
        // A receipt being appended: not yet a complete line.
        let partial = &line(&receipt(&client, 3, 1, 1))[..40];
        let full = format!("{log}{partial}");

        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("receipts.jsonl");
        std::fs::write(&path, &full).unwrap();
        let (receipts, end) = read_receipt_log(&path, before.len() as u64).unwrap();
        assert_eq!(receipts, vec![a3.clone(), b2.clone()]);
        assert_eq!(end, log.len() as u64);
        let claims: Vec<ServedClaim> = receipts.into_iter().map(claim).collect();
        assert_eq!(
            (claims[0].ticket_id, claims[0].fragments, claims[0].bytes),
            ([1; 16], 3, 300)
        );
        assert_eq!(claims[0].receipt.as_ref(), Some(&a3));

        // Nothing new past the end; a log shorter than the offset is read again from the start.
        assert_eq!(read_receipt_log(&path, end).unwrap(), (vec![], end));
        let (all, _) = read_receipt_log(&path, 1 << 40).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], old, "seq 9 beats seq 3 for ticket 1");
        // No log yet: nothing to claim.
        assert_eq!(
            read_receipt_log(&tmp.path().join("none"), 0).unwrap(),
            (vec![], 0)
        );
    }

    #[test]
    fn an_overlong_log_line_is_skipped() {
        let client = Identity::generate();
        let r = receipt(&client, 1, 1, 1);
        let junk = "x".repeat(MAX_LOG_LINE * 3);
        let log = format!("{junk}\n{}", line(&r));
        let found = newest_receipts(std::io::Cursor::new(log.as_bytes())).unwrap();
        assert_eq!(found.receipts, vec![r]);
        assert_eq!(found.unreadable, 1);
        assert_eq!(found.consumed, log.len() as u64);
        // Without its newline yet, it waits like any partial line.
        let found = newest_receipts(std::io::Cursor::new(junk.as_bytes())).unwrap();
        assert_eq!(found.consumed, 0);
    }

    #[test]
    fn holdings_are_grouped_by_content_in_order() {
        let id = |c: u8, segment: u32, index: u16| FragmentId {
            content: ContentId([c; 32]),
            segment,
            index,
        };
        let (held, left_out) = group_held(vec![
            id(2, 0, 1),
            id(1, 3, 0),
            id(2, 0, 0),
            id(1, 0, 7),
            id(2, 0, 1),
        ]);
        assert_eq!(left_out, 0);
        assert_eq!(
            held,
            vec![
                HeldContent {
                    content: ContentId([1; 32]),
                    fragments: vec![(0, 7), (3, 0)]
                },
                HeldContent {
                    content: ContentId([2; 32]),
                    fragments: vec![(0, 0), (0, 1)]
                },
            ]
        );
    }

    #[test]
    fn sessions_are_clipped_to_the_period_and_bounded() {
        let mut s = Sessions::with_previous(Some((10, 40)));
        s.start(100);
        s.start(120); // already online
        s.end(150);
        s.start(200);
        assert_eq!(s.earliest(), Some(10));
        assert_eq!(s.within(30, 250), vec![(30, 40), (100, 150), (200, 250)]);
        assert_eq!(s.within(40, 120), vec![(100, 120)]);
        assert_eq!(s.current(260), Some((200, 260)));
        s.end(300);
        assert_eq!(s.current(400), Some((200, 300)));
        s.forget_before(150);
        assert_eq!(s.within(0, 1000), vec![(200, 300)]);
        for t in 0..MAX_SESSIONS_PER_REPORT as u64 + 5 {
            s.start(1000 + 2 * t);
            s.end(1001 + 2 * t);
        }
        assert_eq!(s.within(0, u64::MAX).len(), MAX_SESSIONS_PER_REPORT);
    }

    fn period(claims: usize) -> Period {
        let client = Identity::generate();
        let one = claim(receipt(&client, 1, 1, 100));
        Period {
            node: Identity::generate().peer_id(),
            from: 10,
            to: 20,
            claims: (0..claims)
                .map(|i| {
                    let mut c = one.clone();
                    c.ticket_id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    c
                })
                .collect(),
            held: vec![HeldContent {
                content: ContentId([7; 32]),
                fragments: vec![(0, 0), (0, 1)],
            }],
            sessions: vec![(12, 18)],
            upload_bps: 5,
        }
    }

    #[test]
    fn a_small_period_is_one_report_with_everything() {
        let bodies = split(period(3));
        assert_eq!(bodies.len(), 1);
        let b = &bodies[0];
        assert_eq!((b.from, b.to, b.upload_bps), (10, 20, 5));
        assert_eq!(b.served.len(), 3);
        assert_eq!(b.held_count(), 2);
        assert_eq!(b.sessions, vec![(12, 18)]);
        b.check_bounds().unwrap();
        // Nothing to claim: still one report, for the holdings and uptime.
        let bodies = split(period(0));
        assert_eq!(bodies.len(), 1);
        assert!(bodies[0].served.is_empty() && bodies[0].held.is_some());
    }

    #[test]
    fn claims_beyond_the_limit_go_into_follow_up_reports() {
        let claims = MAX_CLAIMS_PER_REPORT * 2 + 1;
        let bodies = split(period(claims));
        assert_eq!(bodies.len(), 3);
        assert_eq!(
            bodies.iter().map(|b| b.served.len()).collect::<Vec<_>>(),
            vec![MAX_CLAIMS_PER_REPORT, MAX_CLAIMS_PER_REPORT, 1]
        );
        assert!(bodies[0].held.is_some() && !bodies[0].sessions.is_empty());
        for b in &bodies[1..] {
            assert!(b.held.is_none() && b.sessions.is_empty());
            assert_eq!((b.from, b.to, b.upload_bps), (10, 20, 5));
        }
        for b in &bodies {
            b.check_bounds().unwrap();
            let signed = Signed::sign(&Identity::generate(), b.clone());
            let request = overlay::proto::ControlRequest::Report(signed);
            assert!(encode(&request).len() <= MAX_REPORT_MSG);
        }
        // Every claim sent once, in order.
        let sent: Vec<_> = bodies.iter().flat_map(|b| &b.served).collect();
        assert_eq!(sent.len(), claims);
        assert!(sent.windows(2).all(|w| w[0].ticket_id != w[1].ticket_id));
    }

    #[test]
    fn claims_also_split_by_frame_size() {
        let one = encode(&period(1).claims[0]).len();
        let base = encode(&split(period(0))[0]).len();
        // Room for about 10 claims per report.
        let bodies = split_within(period(25), base + 10 * one + 5, MAX_CLAIMS_PER_REPORT);
        assert!(bodies.len() >= 3, "{}", bodies.len());
        assert_eq!(bodies.iter().map(|b| b.served.len()).sum::<usize>(), 25);
        assert!(bodies.iter().all(|b| !b.served.is_empty()));
    }

    fn round(state: &ReportState, parts: usize) -> Round {
        let bodies = split_within(period(parts * 2), usize::MAX, 2);
        assert_eq!(bodies.len(), parts);
        Round::new(state, bodies, 777)
    }

    fn accepted(seq: u64) -> ReportOutcome {
        ReportOutcome::Accepted {
            seq,
            new_receipts: 2,
            duplicate_receipts: 0,
        }
    }

    fn sent_seq(round: &Round) -> u64 {
        match round.next() {
            Step::Send(body) => body.seq,
            Step::Done => panic!("the round is done"),
        }
    }

    #[test]
    fn the_state_moves_only_on_acceptance() {
        let mut state = ReportState {
            next_seq: 5,
            receipts_offset: 100,
            last_to: 10,
        };
        let mut r = round(&state, 3);
        assert_eq!(sent_seq(&r), 5);
        assert_eq!(
            r.answer(&mut state, accepted(5)).unwrap(),
            Progress::Accepted
        );
        // Part of the period accepted: the number moves on, the claims stay unclaimed.
        assert_eq!(
            state,
            ReportState {
                next_seq: 6,
                receipts_offset: 100,
                last_to: 10
            }
        );
        assert_eq!(sent_seq(&r), 6);
        // The CM is unreachable for the second part: the caller drops the round. A new round
        // from the saved state resends the whole period under fresh numbers.
        let mut r = round(&state, 3);
        assert_eq!(sent_seq(&r), 6);
        assert_eq!(
            r.answer(&mut state, accepted(6)).unwrap(),
            Progress::Accepted
        );
        assert_eq!(
            r.answer(&mut state, accepted(7)).unwrap(),
            Progress::Accepted
        );
        assert_eq!(
            r.answer(&mut state, accepted(8)).unwrap(),
            Progress::Finished
        );
        assert_eq!(r.next(), Step::Done);
        assert_eq!(
            state,
            ReportState {
                next_seq: 9,
                receipts_offset: 777,
                last_to: 20
            }
        );
        assert_eq!(state.last_seq(), 8);
    }

    #[test]
    fn a_stale_report_is_renumbered_after_the_cms_last_and_resent_once() {
        // A node that lost its state starts again at 1; the CM knows up to 41.
        let mut state = ReportState::default();
        let mut r = round(&state, 2);
        assert_eq!(sent_seq(&r), 1);
        let before = state.clone();
        assert_eq!(
            r.answer(&mut state, ReportOutcome::Stale { last_seq: 41 })
                .unwrap(),
            Progress::Renumbered
        );
        assert_eq!(state, before, "a stale answer counts nothing");
        assert_eq!(sent_seq(&r), 42);
        assert_eq!(
            r.answer(&mut state, accepted(42)).unwrap(),
            Progress::Accepted
        );
        assert_eq!(sent_seq(&r), 43);
        // Stale twice for the same report: give up this round, keeping the state.
        assert_eq!(
            r.answer(&mut state, ReportOutcome::Stale { last_seq: 50 })
                .unwrap(),
            Progress::Renumbered
        );
        assert_eq!(sent_seq(&r), 51);
        let err = r
            .answer(&mut state, ReportOutcome::Stale { last_seq: 60 })
            .unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::StaleAgain {
                    seq: 51,
                    last_seq: 60
                }
            ),
            "{err}"
        );
        assert_eq!(
            state,
            ReportState {
                next_seq: 43,
                receipts_offset: 0,
                last_to: 0
            }
        );
    }

    #[test]
    fn the_state_file_round_trips_and_bad_ones_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("report-state.json");
        assert_eq!(ReportState::load(&path).unwrap(), None);
        let state = ReportState {
            next_seq: 3,
            receipts_offset: 1234,
            last_to: 99,
        };
        state.save(&path).unwrap();
        assert_eq!(ReportState::load(&path).unwrap(), Some(state));
        std::fs::write(
            &path,
            "{\"next_seq\": 0, \"receipts_offset\": 0, \"last_to\": 0}",
        )
        .unwrap();
        assert!(ReportState::load(&path).is_err());
        std::fs::write(&path, "garbage").unwrap();
        assert!(ReportState::load(&path).is_err());
    }
}
