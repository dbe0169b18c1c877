//! The node's own view of itself, for its owner: `DIR/status.json` and `ccds-node status`.
//!
//! The daemon rewrites the file atomically when it joins (online), when it leaves (offline)
//! and after each account refresh (which follows every accepted report). `ccds-node status`
//! reads it, and believes `online` only while the process that wrote it still runs: a killed
//! daemon never got to write `online: false`.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use overlay::PeerId;
use overlay::report::AccountView;
use serde::{Deserialize, Serialize};

use crate::NodeError;
use crate::datadir::DataDir;
use crate::report::ReportState;

/// Largest status file read; real ones are well under a kilobyte.
const MAX_STATUS_FILE: u64 = 64 * 1024;

/// `DIR/status.json`, as the daemon writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's peer ID.
    pub id: PeerId,
    /// The daemon process that wrote the file.
    pub pid: u32,
    /// Whether the node was joined to the collective when the file was written.
    pub online: bool,
    /// When the file was written, Unix seconds.
    pub updated_at: u64,
    /// The current online session, or the last one, Unix seconds; while online its end is the
    /// time of writing.
    #[serde(default)]
    pub session: Option<(u64, u64)>,
    /// The account as the CM last reported it (amounts in micro-credits).
    #[serde(default)]
    pub account: AccountView,
    /// When the account was fetched, Unix seconds (0: never).
    #[serde(default)]
    pub account_at: u64,
    /// The sequence number of the last report the CM accepted (0: none).
    #[serde(default)]
    pub last_report_seq: u64,
    /// The end of the period that report covered, Unix seconds (0: none).
    #[serde(default)]
    pub last_report_at: u64,
}

impl NodeStatus {
    /// An offline node that has not heard from the CM yet.
    pub fn new(id: PeerId, pid: u32) -> Self {
        Self {
            id,
            pid,
            online: false,
            updated_at: 0,
            session: None,
            account: AccountView::default(),
            account_at: 0,
            last_report_seq: 0,
            last_report_at: 0,
        }
    }

    /// Reads the status file; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, String> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATUS_FILE)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Writes the status file atomically. Blocking (file I/O).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).expect("the status always serialises");
        json.push(b'\n');
        overlay::store::write_atomic(path, &json, false)
    }
}

/// Where the node stands, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// The daemon is not running.
    Stopped,
    /// Running and joining (or rejoining) the collective.
    Joining,
    /// Running and in the collective.
    Online,
    /// Running, paused by the owner: out of the collective, refusing fetches.
    Paused,
    /// Running, out of the collective until the host is idle enough.
    WaitingForIdle,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stopped => "stopped",
            Self::Joining => "joining",
            Self::Online => "online",
            Self::Paused => "paused",
            Self::WaitingForIdle => "waiting for the host to be idle",
        })
    }
}

/// Fetches refused since the daemon started, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Bad, expired or misdirected tickets.
    pub ticket: u64,
    /// The client's receipts lagged beyond the credit.
    pub receipts_lag: u64,
    /// The ticket's allowance was spent on this node.
    pub allowance: u64,
    /// The node was serving its maximum of clients.
    pub busy: u64,
    /// The owner had paused the node.
    pub paused: u64,
}

/// What only a running daemon knows: the limits in force and recent traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveView {
    /// Disk quota for fragments, bytes.
    pub quota: u64,
    /// Bytes of fragments stored.
    pub used: u64,
    /// Fragments stored.
    pub fragments: u64,
    /// Upload limit in force now, bytes per second (0: unlimited).
    pub upload_limit: u64,
    /// The whole upload schedule, e.g. "5.0 MiB/s, 08:00-18:00 200.0 KiB/s".
    pub upload_schedule: String,
    /// Distinct clients served at once, at most.
    pub max_clients: usize,
    /// Distinct clients being served now.
    pub clients: usize,
    /// Whether the node joins only while the host is idle.
    pub idle_gating: bool,
    /// The host's idle CPU share over the last window, percent (with idle gating).
    pub idle_percent: Option<f64>,
    /// Measured upload rate, bytes per second (0: not yet known).
    pub upload_bps: u64,
    /// Fragment bytes served since the daemon started.
    pub bytes_served: u64,
    /// Fragments served since the daemon started.
    pub fragments_served: u64,
    /// Fetches refused since the daemon started, by reason.
    pub refused: Refused,
    /// Bytes served per minute over the last minutes.
    pub traffic: crate::traffic::TrafficView,
    /// The local status page's address.
    pub status_page: Option<String>,
}

/// What `ccds-node status` shows; with `--json`, exactly these keys. Amounts are micro-credits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub id: String,
    pub online: bool,
    /// Whether the daemon is running (the view then comes from it, with `live`).
    pub running: bool,
    /// Whether the owner paused the node (persisted: a paused node starts paused).
    pub paused: bool,
    pub state: NodeState,
    pub level: String,
    pub level_index: u32,
    pub balance: i64,
    pub held: i64,
    pub earned: i64,
    pub paid_out: i64,
    pub reconciled_at: u64,
    pub last_report_seq: u64,
    pub last_report_at: u64,
    /// Present while the daemon runs.
    pub live: Option<LiveView>,
}

impl StatusView {
    /// The parts of the view the status file holds.
    pub fn from_status(status: &NodeStatus, running: bool, online: bool) -> Self {
        let account = &status.account;
        Self {
            id: status.id.to_string(),
            online,
            running,
            paused: false,
            state: if running {
                NodeState::Joining
            } else {
                NodeState::Stopped
            },
            level: account.level.clone(),
            level_index: account.level_index,
            balance: account.balance,
            held: account.held,
            earned: account.earned,
            paid_out: account.paid_out,
            reconciled_at: account.reconciled_at,
            last_report_seq: status.last_report_seq,
            last_report_at: status.last_report_at,
            live: None,
        }
    }
}

/// Whether process `pid` is running. Without `/proc` there is no way to tell without unsafe
/// code, so the recorded state is believed.
pub fn pid_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    pid != 0 && proc.join(pid.to_string()).exists()
}

/// `ccds-node status` without a daemon: the node's view of itself from its data directory.
pub fn status(dir: &DataDir) -> Result<StatusView, NodeError> {
    let (identity, _) = dir.load()?;
    let path = dir.status();
    let status = NodeStatus::load(&path)
        .map_err(|reason| NodeError::BadStatus {
            path: path.display().to_string(),
            reason,
        })?
        .unwrap_or_else(|| NodeStatus::new(identity.peer_id(), 0));
    let running = pid_running(status.pid) && status.pid != 0;
    let online = status.online && running;
    // The report state is saved as each report is accepted, the status a moment later (after
    // the account is fetched): the state may be newer.
    let (mut last_report_seq, mut last_report_at) = (status.last_report_seq, status.last_report_at);
    if let Ok(Some(state)) = ReportState::load(&dir.report_state())
        && state.last_seq() > last_report_seq
    {
        last_report_seq = state.last_seq();
        last_report_at = last_report_at.max(state.last_to);
    }
    let mut view = StatusView::from_status(&status, false, online);
    view.id = identity.peer_id().to_string();
    view.paused = dir.paused();
    if online {
        // A daemon that does not answer on its socket (an older one, or a stuck one).
        view.running = true;
        view.state = NodeState::Online;
    }
    view.last_report_seq = last_report_seq;
    view.last_report_at = last_report_at;
    Ok(view)
}

/// An amount of micro-credits as credits with six decimals, e.g. `-1.500000`.
pub fn credits(micro: i64) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let abs = micro.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

fn when(secs: u64) -> String {
    if secs == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

impl fmt::Display for StatusView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.level.is_empty() {
            format!("{}", self.level_index)
        } else {
            format!("{} ({})", self.level, self.level_index)
        };
        writeln!(f, "node          {}", self.id)?;
        writeln!(
            f,
            "online        {}",
            if self.online { "yes" } else { "no" }
        )?;
        writeln!(f, "state         {}", self.state)?;
        writeln!(
            f,
            "paused        {}",
            if self.paused { "yes" } else { "no" }
        )?;
        writeln!(f, "level         {level}")?;
        writeln!(f, "balance       {} cr", credits(self.balance))?;
        writeln!(f, "held back     {} cr", credits(self.held))?;
        writeln!(f, "earned        {} cr", credits(self.earned))?;
        writeln!(f, "paid out      {} cr", credits(self.paid_out))?;
        if self.last_report_seq == 0 {
            writeln!(f, "last report   none")?;
        } else {
            writeln!(
                f,
                "last report   #{} at {}",
                self.last_report_seq,
                when(self.last_report_at)
            )?;
        }
        writeln!(f, "reconciled    {}", when(self.reconciled_at))?;
        let Some(live) = &self.live else {
            return writeln!(f, "limits        (shown while the daemon runs)");
        };
        let size = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
        writeln!(
            f,
            "disk          {} of {} ({} fragments)",
            size(live.used),
            size(live.quota),
            live.fragments
        )?;
        let limit = match live.upload_limit {
            0 => "unlimited".to_string(),
            b => format!("{}/s", size(b)),
        };
        writeln!(
            f,
            "upload limit  {limit} now (schedule: {})",
            live.upload_schedule
        )?;
        writeln!(
            f,
            "clients       {} of at most {}",
            live.clients, live.max_clients
        )?;
        if live.idle_gating {
            let idle = live
                .idle_percent
                .map_or("not measured yet".into(), |p| format!("{p:.0} % idle"));
            writeln!(f, "idle gating   on, {idle}")?;
        }
        let minutes = live.traffic.per_minute.len();
        writeln!(
            f,
            "served        {} in {} fragments; {} in the last {minutes} minutes",
            size(live.bytes_served),
            live.fragments_served,
            size(live.traffic.total)
        )?;
        let r = &live.refused;
        writeln!(
            f,
            "refused       {} ticket, {} receipts lag, {} allowance, {} busy, {} paused",
            r.ticket, r.receipts_lag, r.allowance, r.busy, r.paused
        )?;
        if let Some(page) = &live.status_page {
            writeln!(f, "status page   {page}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::{InitOptions, init};
    use overlay::Identity;
    use overlay::net::with_peer;

    fn node_dir(tmp: &Path) -> (DataDir, PeerId) {
        let cm = Identity::generate();
        let id = init(&InitOptions {
            data_dir: tmp.join("node"),
            coordinators: vec![with_peer(
                &"/ip4/127.0.0.1/udp/4000/quic-v1".parse().unwrap(),
                cm.peer_id(),
            )],
            quota: None,
        })
        .unwrap();
        (DataDir::new(tmp.join("node")), id)
    }

    #[test]
    fn amounts_are_credits_with_six_decimals() {
        assert_eq!(credits(0), "0.000000");
        assert_eq!(credits(1_500_000), "1.500000");
        assert_eq!(credits(-42), "-0.000042");
        assert_eq!(credits(i64::MIN), "-9223372036854.775808");
    }

    #[test]
    fn without_a_status_file_the_node_is_offline_with_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, id) = node_dir(tmp.path());
        let view = status(&dir).unwrap();
        assert_eq!(view.id, id.to_string());
        assert!(!view.online);
        assert_eq!((view.balance, view.last_report_seq), (0, 0));
        let json = serde_json::to_value(&view).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "balance",
                "earned",
                "held",
                "id",
                "last_report_at",
                "last_report_seq",
                "level",
                "level_index",
                "live",
                "online",
                "paid_out",
                "paused",
                "reconciled_at",
                "running",
                "state"
            ]
        );
    }

    #[test]
    fn online_only_while_the_writer_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, id) = node_dir(tmp.path());
        let mut written = NodeStatus::new(id, std::process::id());
        written.online = true;
        written.account = AccountView {
            level: "bronze".into(),
            level_index: 1,
            balance: 2_500_000,
            held: 7,
            earned: 3_000_000,
            paid_out: 500_000,
            reconciled_at: 1_700_000_000,
            last_report_seq: 4,
        };
        written.last_report_seq = 4;
        written.last_report_at = 1_700_000_100;
        written.save(&dir.status()).unwrap();
        let view = status(&dir).unwrap();
        assert!(view.online);
        assert_eq!((view.level.as_str(), view.level_index), ("bronze", 1));
        assert_eq!((view.balance, view.earned), (2_500_000, 3_000_000));
        let text = view.to_string();
        assert!(text.contains("2.500000 cr"), "{text}");
        assert!(text.contains("#4 at 2023-11-14T22:15:00Z"), "{text}");
        assert!(text.contains("bronze (1)"), "{text}");

        // A newer accepted report than the status file knows.
        ReportState {
            next_seq: 6,
            receipts_offset: 0,
            last_to: 1_700_000_200,
        }
        .save(&dir.report_state())
        .unwrap();
        let view = status(&dir).unwrap();
        assert_eq!(
            (view.last_report_seq, view.last_report_at),
            (5, 1_700_000_200)
        );

        // The writer is gone (a killed daemon): not online, whatever the file says.
        if Path::new("/proc/self").exists() {
            written.pid = u32::MAX - 1;
            written.save(&dir.status()).unwrap();
            assert!(!status(&dir).unwrap().online);
        }
    }

    #[test]
    fn a_running_node_shows_its_limits_and_traffic() {
        let id = Identity::generate().peer_id();
        let mut view = StatusView::from_status(&NodeStatus::new(id, 1), true, false);
        view.paused = true;
        view.state = NodeState::Paused;
        let mut per_minute = vec![0; crate::traffic::MINUTES];
        per_minute[0] = 3 << 20;
        view.live = Some(LiveView {
            quota: 10 << 30,
            used: 1 << 30,
            fragments: 4096,
            upload_limit: 200 * 1024,
            upload_schedule: "5.0 MiB/s, 08:00-18:00 200.0 KiB/s".into(),
            max_clients: 32,
            clients: 3,
            idle_gating: true,
            idle_percent: Some(91.4),
            upload_bps: 0,
            bytes_served: 5 << 20,
            fragments_served: 20,
            refused: Refused {
                busy: 2,
                ..Refused::default()
            },
            traffic: crate::traffic::TrafficView {
                per_minute,
                total: 3 << 20,
            },
            status_page: Some("http://127.0.0.1:8480/".into()),
        });
        let text = view.to_string();
        for line in [
            "state         paused",
            "paused        yes",
            "disk          1.0 GiB of 10.0 GiB (4096 fragments)",
            "upload limit  200.0 KiB/s now (schedule: 5.0 MiB/s, 08:00-18:00 200.0 KiB/s)",
            "clients       3 of at most 32",
            "idle gating   on, 91 % idle",
            "served        5.0 MiB in 20 fragments; 3.0 MiB in the last 15 minutes",
            "refused       0 ticket, 0 receipts lag, 0 allowance, 2 busy, 0 paused",
            "status page   http://127.0.0.1:8480/",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        let stopped = StatusView::from_status(&NodeStatus::new(id, 0), false, false);
        assert!(stopped.to_string().contains("state         stopped"));
        assert!(stopped.to_string().contains("shown while the daemon runs"));
    }

    #[test]
    fn an_uninitialised_dir_or_a_bad_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = status(&DataDir::new(tmp.path())).unwrap_err();
        assert!(matches!(err, NodeError::NotInitialised { .. }), "{err}");
        let (dir, _) = node_dir(tmp.path());
        std::fs::write(dir.status(), "{").unwrap();
        let err = status(&dir).unwrap_err();
        assert!(matches!(err, NodeError::BadStatus { .. }), "{err}");
    }
}
