//! The node's data directory and `ccds-node init`.
//!
//! ```text
//! DIR/node.key       Ed25519 secret key (0600); its peer ID is the node's identity
//! DIR/node.json      NodeConfig: the pinned coordinator's addresses and the quota
//! DIR/node.cert      the node certificate issued by the CM (JSON)
//! DIR/node.addr      this node's address while it is joined (the readiness signal)
//! DIR/receipts.jsonl accepted client receipts, one JSON object per line
//! DIR/report-state.json  the next report's sequence number and what was already reported
//! DIR/status.json    the node's own view for its owner, kept by `ccds-node run`
//! DIR/run.lock       held by the running daemon
//! DIR/paused         present while the owner has the node paused (`ccds-node pause`)
//! DIR/control.sock   the running daemon's control socket for its owner (0600)
//! DIR/fragments/     the fragment store
//! ```
//!
//! Re-running `init` on an initialised directory is allowed when it names the same CM peer ID:
//! it keeps the key, replaces the coordinator's addresses, and updates the quota only when
//! `--quota` is given. Naming a different CM is refused: a node belongs to one collective.
//!
//! Coordinators sharing one database share the CM's identity, so a node may be given the
//! address of each (`--coordinator` repeated, one peer ID): it reaches whichever answers, and
//! stays in the collective while one of them is down.

use std::path::{Path, PathBuf};

use overlay::cert::Certificate;
use overlay::identity::verifying_key_of;
use overlay::net::{PeerAddrsError, split_one_peer};
use overlay::{Identity, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::NodeError;

/// Quota used when `init` is given none: 10 GiB.
pub const DEFAULT_QUOTA: u64 = 10 << 30;

/// Largest config or certificate file read; real ones are a few hundred bytes.
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// Paths inside a node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (nothing is touched on disk).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node's secret key.
    pub fn key(&self) -> PathBuf {
        self.root.join("node.key")
    }

    /// The node config (JSON).
    pub fn config(&self) -> PathBuf {
        self.root.join("node.json")
    }

    /// The node certificate issued by the CM (JSON).
    pub fn cert(&self) -> PathBuf {
        self.root.join("node.cert")
    }

    /// The readiness file: the node's multiaddr with `/p2p/<id>`, present while joined.
    pub fn addr(&self) -> PathBuf {
        self.root.join("node.addr")
    }

    /// The append-only log of accepted receipts.
    pub fn receipts(&self) -> PathBuf {
        self.root.join("receipts.jsonl")
    }

    /// The periodic reports' state (see [`crate::report::ReportState`]).
    pub fn report_state(&self) -> PathBuf {
        self.root.join("report-state.json")
    }

    /// The node's status for its owner (see [`crate::status::NodeStatus`]).
    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// Present while the owner has the node paused.
    pub fn paused_file(&self) -> PathBuf {
        self.root.join("paused")
    }

    /// Whether the owner has the node paused.
    pub fn paused(&self) -> bool {
        self.paused_file().exists()
    }

    /// Records the owner's pause (or its end) so that it outlives the daemon.
    pub fn set_paused(&self, paused: bool) -> Result<(), NodeError> {
        let path = self.paused_file();
        if paused {
            let note = format!(
                "paused by the owner at {}; `ccds-node resume` ends it\n",
                overlay::time::now_secs()
            );
            write_file(&path, note.as_bytes(), false)
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NodeError::Write {
                    path: path.display().to_string(),
                    source: e,
                }),
                _ => Ok(()),
            }
        }
    }

    /// The running daemon's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// The fragment store's root.
    pub fn fragments(&self) -> PathBuf {
        self.root.join("fragments")
    }

    fn not_initialised(&self) -> NodeError {
        NodeError::NotInitialised {
            dir: self.root.display().to_string(),
        }
    }

    /// Loads the node's key and config; a missing one means the directory is not initialised.
    pub fn load(&self) -> Result<(Identity, NodeConfig), NodeError> {
        if !self.key().exists() || !self.config().exists() {
            return Err(self.not_initialised());
        }
        let identity = Identity::load(&self.key())?;
        let config = self.load_config()?.ok_or_else(|| self.not_initialised())?;
        Ok((identity, config))
    }

    /// Reads the config, `None` when there is none.
    pub fn load_config(&self) -> Result<Option<NodeConfig>, NodeError> {
        let path = self.config();
        let Some(bytes) = read_small(&path)? else {
            return Ok(None);
        };
        let bad = |reason: String| NodeError::BadConfig {
            path: path.display().to_string(),
            reason,
        };
        let config: NodeConfig = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        config.coordinator_peer().map_err(|e| bad(e.to_string()))?;
        if config.quota == 0 {
            return Err(bad("the quota is zero".into()));
        }
        Ok(Some(config))
    }

    /// Writes the config atomically.
    pub fn save_config(&self, config: &NodeConfig) -> Result<(), NodeError> {
        let mut json =
            serde_json::to_vec_pretty(config).expect("the node config always serialises");
        json.push(b'\n');
        write_file(&self.config(), &json, false)
    }

    /// Reads the stored certificate; `None` when absent or unreadable (the node registers again).
    pub fn load_cert(&self) -> Result<Option<Certificate>, NodeError> {
        let Some(bytes) = read_small(&self.cert())? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Writes the certificate atomically.
    pub fn save_cert(&self, cert: &Certificate) -> Result<(), NodeError> {
        let json = serde_json::to_vec_pretty(cert).expect("certificates always serialise");
        write_file(&self.cert(), &json, false)
    }

    /// Publishes the readiness file.
    pub fn write_addr(&self, addr: &Multiaddr) -> Result<(), NodeError> {
        write_file(&self.addr(), format!("{addr}\n").as_bytes(), false)
    }

    /// Removes the readiness file (absent is fine).
    pub fn remove_addr(&self) -> Result<(), NodeError> {
        match std::fs::remove_file(self.addr()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NodeError::Write {
                path: self.addr().display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

fn read_small(path: &Path) -> Result<Option<Vec<u8>>, NodeError> {
    let read_err = |source| NodeError::Read {
        path: path.display().to_string(),
        source,
    };
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    if len > MAX_SMALL_FILE {
        return Err(NodeError::BadConfig {
            path: path.display().to_string(),
            reason: format!("{len} bytes is far larger than any node file"),
        });
    }
    std::fs::read(path).map(Some).map_err(read_err)
}

fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), NodeError> {
    overlay::store::write_atomic(path, data, private).map_err(|source| NodeError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// The node's persistent settings (`DIR/node.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// The coordinators' addresses, each ending in `/p2p/<CM peer ID>` (one peer ID: the pinned
    /// root of trust). Files written before several were allowed hold one, as `coordinator`.
    #[serde(alias = "coordinator", deserialize_with = "overlay::net::one_or_many")]
    pub coordinators: Vec<Multiaddr>,
    /// Disk space the fragment store may use, in bytes.
    pub quota: u64,
}

impl NodeConfig {
    /// The CM's peer ID (its root key) and its addresses without the `/p2p` suffix.
    pub fn coordinator_peer(&self) -> Result<(PeerId, Vec<Multiaddr>), NodeError> {
        pinned_coordinators(&self.coordinators)
    }
}

/// Most coordinator addresses a node keeps.
pub const MAX_COORDINATORS: usize = 16;

/// Checks that `addrs` name one CM (a pinned Ed25519 peer ID) and splits off the transport
/// addresses.
pub fn pinned_coordinators(addrs: &[Multiaddr]) -> Result<(PeerId, Vec<Multiaddr>), NodeError> {
    if addrs.len() > MAX_COORDINATORS {
        return Err(NodeError::TooManyCoordinators(addrs.len()));
    }
    let (cm, transports) = split_one_peer(addrs).map_err(|e| match e {
        PeerAddrsError::Empty => NodeError::NoCoordinator,
        PeerAddrsError::NoPeer(addr) => NodeError::CoordinatorWithoutPeer(addr),
        PeerAddrsError::TwoPeers { first, other } => {
            NodeError::CoordinatorsDisagree { first, other }
        }
    })?;
    verifying_key_of(&cm).map_err(|_| NodeError::CoordinatorNotEd25519(cm))?;
    Ok((cm, transports))
}

/// What `ccds-node init` was asked to do.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The data directory to create or update.
    pub data_dir: PathBuf,
    /// The coordinators' multiaddrs, each ending in `/p2p/<CM peer ID>` (the same one).
    pub coordinators: Vec<Multiaddr>,
    /// The fragment quota in bytes; `None` keeps the current one (or [`DEFAULT_QUOTA`]).
    pub quota: Option<u64>,
}

/// `ccds-node init`: creates the data directory, the node key (kept if present) and the
/// config pinning the CM. Returns the node's peer ID.
pub fn init(options: &InitOptions) -> Result<PeerId, NodeError> {
    let dir = DataDir::new(&options.data_dir);
    let (cm, _) = pinned_coordinators(&options.coordinators)?;
    if options.quota == Some(0) {
        return Err(NodeError::ZeroQuota);
    }
    let existing = match dir.load_config() {
        Ok(existing) => existing,
        Err(NodeError::BadConfig { path, reason }) => {
            warn!(%path, %reason, "replacing an unreadable node config");
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(existing) = &existing {
        let (existing_cm, _) = existing.coordinator_peer()?;
        if existing_cm != cm {
            return Err(NodeError::OtherCoordinator {
                dir: dir.root().display().to_string(),
                existing: existing_cm,
                requested: cm,
            });
        }
    }
    std::fs::create_dir_all(dir.root()).map_err(|source| NodeError::Write {
        path: dir.root().display().to_string(),
        source,
    })?;
    let identity = Identity::load_or_create(&dir.key())?;
    let config = NodeConfig {
        coordinators: options.coordinators.clone(),
        quota: options
            .quota
            .or(existing.as_ref().map(|c| c.quota))
            .unwrap_or(DEFAULT_QUOTA),
    };
    if existing.as_ref() != Some(&config) {
        dir.save_config(&config)?;
    }
    info!(
        node = %identity.peer_id(),
        coordinators = ?config.coordinators.iter().map(ToString::to_string).collect::<Vec<_>>(),
        quota = config.quota,
        updated = existing.is_some(),
        "initialised"
    );
    Ok(identity.peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay::net::with_peer;

    fn cm_addr(cm: &Identity) -> Multiaddr {
        with_peer(
            &"/ip4/127.0.0.1/udp/4000/quic-v1".parse().unwrap(),
            cm.peer_id(),
        )
    }

    #[test]
    fn init_creates_key_and_config_and_is_idempotent_for_the_same_cm() {
        let tmp = tempfile::tempdir().unwrap();
        let cm = Identity::generate();
        let options = InitOptions {
            data_dir: tmp.path().join("node"),
            coordinators: vec![cm_addr(&cm)],
            quota: None,
        };
        let id = init(&options).unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        let (identity, config) = dir.load().unwrap();
        assert_eq!(identity.peer_id(), id);
        assert_eq!(config.quota, DEFAULT_QUOTA);
        assert_eq!(config.coordinator_peer().unwrap().0, cm.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.key()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Same CM again: same key; a new quota is applied, an absent one keeps the old.
        let again = InitOptions {
            quota: Some(1 << 20),
            ..options.clone()
        };
        assert_eq!(init(&again).unwrap(), id);
        assert_eq!(dir.load().unwrap().1.quota, 1 << 20);
        assert_eq!(init(&options).unwrap(), id);
        assert_eq!(dir.load().unwrap().1.quota, 1 << 20);

        // Another CM is refused and changes nothing.
        let other = InitOptions {
            coordinators: vec![cm_addr(&Identity::generate())],
            ..options
        };
        assert!(matches!(
            init(&other),
            Err(NodeError::OtherCoordinator { .. })
        ));
        assert_eq!(
            dir.load().unwrap().1.coordinator_peer().unwrap().0,
            cm.peer_id()
        );
    }

    #[test]
    fn init_refuses_unpinned_coordinator_and_zero_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let err = init(&InitOptions {
            data_dir: tmp.path().join("n"),
            coordinators: vec!["/ip4/127.0.0.1/udp/4000/quic-v1".parse().unwrap()],
            quota: None,
        })
        .unwrap_err();
        assert!(matches!(err, NodeError::CoordinatorWithoutPeer(_)));
        assert!(err.to_string().contains("/p2p/"));
        assert!(!tmp.path().join("n").exists());
        let err = init(&InitOptions {
            data_dir: tmp.path().join("n"),
            coordinators: vec![cm_addr(&Identity::generate())],
            quota: Some(0),
        })
        .unwrap_err();
        assert!(matches!(err, NodeError::ZeroQuota));
    }

    #[test]
    fn several_coordinators_of_one_cm_are_kept_and_two_cms_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cm = Identity::generate();
        let second = with_peer(
            &"/ip4/10.0.0.2/udp/4000/quic-v1".parse().unwrap(),
            cm.peer_id(),
        );
        let options = InitOptions {
            data_dir: tmp.path().join("node"),
            coordinators: vec![cm_addr(&cm), second.clone(), cm_addr(&cm)],
            quota: None,
        };
        init(&options).unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        let (_, config) = dir.load().unwrap();
        let (peer, transports) = config.coordinator_peer().unwrap();
        assert_eq!(peer, cm.peer_id());
        // Duplicates are dialled once.
        assert_eq!(
            transports,
            [
                "/ip4/127.0.0.1/udp/4000/quic-v1"
                    .parse::<Multiaddr>()
                    .unwrap(),
                "/ip4/10.0.0.2/udp/4000/quic-v1".parse().unwrap()
            ]
        );
        let json = std::fs::read_to_string(dir.config()).unwrap();
        assert!(json.contains("\"coordinators\""), "{json}");

        let err = init(&InitOptions {
            coordinators: vec![second, cm_addr(&Identity::generate())],
            ..options.clone()
        })
        .unwrap_err();
        assert!(
            matches!(err, NodeError::CoordinatorsDisagree { .. }),
            "{err}"
        );
        let err = init(&InitOptions {
            coordinators: vec![],
            ..options
        })
        .unwrap_err();
        assert!(matches!(err, NodeError::NoCoordinator), "{err}");
        // Nothing changed.
        assert_eq!(dir.load().unwrap().1, config);
    }

    #[test]
    fn a_config_written_with_one_coordinator_still_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let cm = Identity::generate();
        let dir = DataDir::new(tmp.path());
        Identity::generate().save(&dir.key()).unwrap();
        std::fs::write(
            dir.config(),
            format!(r#"{{"coordinator": "{}", "quota": 1000}}"#, cm_addr(&cm)),
        )
        .unwrap();
        let (_, config) = dir.load().unwrap();
        assert_eq!(config.coordinators, [cm_addr(&cm)]);
        assert_eq!(config.quota, 1000);
    }

    #[test]
    fn uninitialised_and_broken_dirs_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let err = dir.load().unwrap_err();
        assert!(matches!(err, NodeError::NotInitialised { .. }));
        assert!(err.to_string().contains("ccds-node init"));
        Identity::generate().save(&dir.key()).unwrap();
        std::fs::write(dir.config(), b"{not json").unwrap();
        assert!(matches!(dir.load(), Err(NodeError::BadConfig { .. })));
        // A garbled certificate is not fatal: the node registers again.
        std::fs::write(dir.cert(), b"garbage").unwrap();
        assert!(dir.load_cert().unwrap().is_none());
    }
}
