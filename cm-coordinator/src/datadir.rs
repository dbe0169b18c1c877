//! The coordinator's data directory.

use std::path::{Path, PathBuf};

use overlay::Identity;

/// Paths inside a coordinator data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The CM root key: signs certificates, manifests and orders.
    pub fn root_key(&self) -> PathBuf {
        self.root.join("cm.key")
    }

    /// The embedded database.
    pub fn database(&self) -> PathBuf {
        self.root.join("coordinator.db")
    }

    /// Held (locked) by the process that owns the data directory: a running coordinator, or a
    /// `db copy` of its database.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("coordinator.lock")
    }

    /// Takes the data directory's lock, held until the returned file is dropped; `None` while
    /// another process holds it.
    pub fn try_lock(&self) -> anyhow::Result<Option<std::fs::File>> {
        let path = self.lock_file();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        match lock.try_lock() {
            Ok(()) => Ok(Some(lock)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", path.display())
            }
        }
    }

    /// Written by `run` once listening: the coordinator's dialable multiaddr.
    pub fn addr_file(&self) -> PathBuf {
        self.root.join("coordinator.addr")
    }

    /// This coordinator's name among those sharing a database: read from `DIR/instance.id`,
    /// created (random) on first use. A data directory copied to start a second coordinator
    /// must not carry this file along; `run` refuses to share one with a running process.
    pub fn instance_id(&self) -> std::io::Result<String> {
        let path = self.root.join("instance.id");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Ok(_) => Err(std::io::Error::other(format!(
                "{} is empty",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = hex::encode(rand::random::<[u8; 8]>());
                overlay::store::write_atomic(&path, format!("{id}\n").as_bytes(), false)?;
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    /// Written by `run --http` once listening: the HTTP API's socket address.
    pub fn http_addr_file(&self) -> PathBuf {
        self.root.join("http.addr")
    }

    /// A partner's signing key, held by the CM on the partner's behalf.
    pub fn partner_key(&self, name: &str) -> PathBuf {
        self.root.join("partners").join(format!("{name}.key"))
    }

    /// Loads the root key, with a clear error when the directory was never initialised.
    pub fn load_root(&self) -> anyhow::Result<Identity> {
        let path = self.root_key();
        if !path.exists() {
            anyhow::bail!(
                "{} is not an initialised coordinator data directory (run `cm-coordinator init --data-dir {}`)",
                self.root.display(),
                self.root.display()
            );
        }
        Ok(Identity::load(&path)?)
    }
}
