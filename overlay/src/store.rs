//! The fragment store on a node's disk.
//!
//! Layout: `ROOT/<content hex>/<segment>.<index>`; each file is the fragment's expected BLAKE3
//! root (32 bytes, from the CM's signed order) followed by the fragment. Writes go to a
//! temporary file that is synced and renamed into place, so a crash never leaves a partial
//! fragment under a real name. Reads check the hash, so a fragment corrupted on disk is never
//! served. The quota counts every stored byte. Hot fragments stay in an LRU cache bounded in
//! bytes. All calls are blocking file I/O: async callers use `spawn_blocking`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::codec::fragment_hash;
use crate::identity::ContentId;

const HEADER: usize = 32;
const TMP_PREFIX: &str = ".tmp-";

/// The address of a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FragmentId {
    pub content: ContentId,
    pub segment: u32,
    pub index: u16,
}

impl std::fmt::Display for FragmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}.{}", self.content, self.segment, self.index)
    }
}

/// Errors from the fragment store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("fragment {0} is not stored here")]
    NotFound(FragmentId),
    #[error("fragment {id} is corrupt on disk (hash mismatch); it has been removed")]
    Corrupt { id: FragmentId },
    #[error("fragment data does not match its expected hash")]
    HashMismatch,
    #[error("storing {needed} bytes would exceed the quota ({used} of {quota} bytes used)")]
    QuotaExceeded { needed: u64, used: u64, quota: u64 },
    #[error("fragment store I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A fragment store with a quota and an LRU cache.
pub struct FragmentStore {
    root: PathBuf,
    quota: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    used: u64,
    cache: LruCache<FragmentId, Bytes>,
    cached_bytes: usize,
    cache_budget: usize,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FragmentStore {
    /// Opens (creating if needed) a store at `root` with `quota` bytes and a cache of
    /// `cache_bytes`. Leftover temporary files from a crash are removed.
    pub fn open(root: &Path, quota: u64, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        let mut used = 0;
        for dir in std::fs::read_dir(root).map_err(io_err(root))? {
            let dir = dir.map_err(io_err(root))?.path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let file = file.map_err(io_err(&dir))?;
                let path = file.path();
                if file.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                used += file.metadata().map_err(io_err(&path))?.len();
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            quota,
            inner: Mutex::new(Inner {
                used,
                cache: LruCache::unbounded(),
                cached_bytes: 0,
                cache_budget: cache_bytes,
            }),
        })
    }

    fn path(&self, id: &FragmentId) -> PathBuf {
        self.root
            .join(id.content.to_string())
            .join(format!("{}.{}", id.segment, id.index))
    }

    /// Bytes stored now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The configured quota in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a fragment is stored (without checking its data).
    pub fn contains(&self, id: &FragmentId) -> bool {
        self.path(id).exists()
    }

    /// Stores `data` as fragment `id` after checking it against `hash`. Replaces an existing copy.
    pub fn put(&self, id: &FragmentId, hash: &[u8; 32], data: &[u8]) -> Result<(), StoreError> {
        if &fragment_hash(data) != hash {
            return Err(StoreError::HashMismatch);
        }
        let path = self.path(id);
        let old = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let needed = (HEADER + data.len()) as u64;
        {
            let mut inner = self.lock();
            let after = inner.used - old + needed;
            if after > self.quota {
                return Err(StoreError::QuotaExceeded {
                    needed,
                    used: inner.used,
                    quota: self.quota,
                });
            }
            // Reserve now so concurrent writers cannot overshoot the quota together.
            inner.used = after;
        }
        let mut content = Vec::with_capacity(HEADER + data.len());
        content.extend_from_slice(hash);
        content.extend_from_slice(data);
        if let Err(e) = write_atomic(&path, &content, false) {
            let mut inner = self.lock();
            inner.used = inner.used + old - needed;
            return Err(io_err(&path)(e));
        }
        let mut inner = self.lock();
        if let Some(old) = inner.cache.pop(id) {
            inner.cached_bytes -= old.len();
        }
        Ok(())
    }

    /// Reads fragment `id`, verifying it against the hash recorded when it was stored.
    /// A corrupt fragment is deleted (it can never be served) and reported as [`StoreError::Corrupt`].
    pub fn get(&self, id: &FragmentId) -> Result<Bytes, StoreError> {
        if let Some(hit) = self.lock().cache.get(id) {
            return Ok(hit.clone());
        }
        let data = self.read_from_disk(id)?;
        self.cache(id, &data);
        Ok(data)
    }

    /// Reads fragment `id` from the disk, never from the cache, verifying it as [`Self::get`]
    /// does: what an audit must see, since a copy only in memory is not stored.
    pub fn read_from_disk(&self, id: &FragmentId) -> Result<Bytes, StoreError> {
        let path = self.path(id);
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*id));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        if raw.len() < HEADER || fragment_hash(&raw[HEADER..]) != raw[..HEADER] {
            self.remove(id)?;
            return Err(StoreError::Corrupt { id: *id });
        }
        Ok(Bytes::from(raw).slice(HEADER..))
    }

    fn cache(&self, id: &FragmentId, data: &Bytes) {
        let mut inner = self.lock();
        if data.len() <= inner.cache_budget {
            inner.cached_bytes += data.len();
            if let Some(old) = inner.cache.put(*id, data.clone()) {
                inner.cached_bytes -= old.len();
            }
            while inner.cached_bytes > inner.cache_budget {
                match inner.cache.pop_lru() {
                    Some((_, old)) => inner.cached_bytes -= old.len(),
                    None => break,
                }
            }
        }
    }

    /// Deletes fragment `id`; deleting a missing fragment is not an error.
    pub fn remove(&self, id: &FragmentId) -> Result<(), StoreError> {
        let path = self.path(id);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        let mut inner = self.lock();
        inner.used = inner.used.saturating_sub(len);
        if let Some(old) = inner.cache.pop(id) {
            inner.cached_bytes -= old.len();
        }
        Ok(())
    }

    /// Every fragment stored, by scanning the disk.
    pub fn list(&self) -> Result<Vec<FragmentId>, StoreError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for dir in std::fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let dir = dir.map_err(io_err(&self.root))?;
            let Ok(content) = dir.file_name().to_string_lossy().parse::<ContentId>() else {
                continue;
            };
            for file in std::fs::read_dir(dir.path()).map_err(io_err(&dir.path()))? {
                let name = file.map_err(io_err(&dir.path()))?.file_name();
                let name = name.to_string_lossy();
                let Some((s, i)) = name.split_once('.') else {
                    continue;
                };
                if let (Ok(segment), Ok(index)) = (s.parse(), i.parse()) {
                    let id = FragmentId {
                        content,
                        segment,
                        index,
                    };
                    if seen.insert(id) {
                        out.push(id);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Writes `data` to `path` atomically: a synced temporary file in the same directory renamed
/// over the target. With `private`, the file is readable only by its owner.
pub fn write_atomic(path: &Path, data: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(data)?;
        file.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(segment: u32, index: u16) -> FragmentId {
        FragmentId {
            content: ContentId([1; 32]),
            segment,
            index,
        }
    }

    #[test]
    fn put_get_remove_and_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path(), 200, 1 << 20).unwrap();
        let data = vec![5u8; 100];
        let hash = fragment_hash(&data);
        store.put(&id(0, 0), &hash, &data).unwrap();
        assert_eq!(store.used(), 132);
        assert_eq!(&store.get(&id(0, 0)).unwrap()[..], &data[..]);
        assert!(matches!(
            store.put(&id(0, 1), &hash, &data),
            Err(StoreError::QuotaExceeded { .. })
        ));
        assert!(matches!(
            store.put(&id(0, 1), &[0; 32], &data),
            Err(StoreError::HashMismatch)
        ));
        assert_eq!(store.list().unwrap(), vec![id(0, 0)]);
        // Reopening recounts what is on disk.
        drop(store);
        let store = FragmentStore::open(dir.path(), 200, 1 << 20).unwrap();
        assert_eq!(store.used(), 132);
        store.remove(&id(0, 0)).unwrap();
        assert_eq!(store.used(), 0);
        assert!(matches!(store.get(&id(0, 0)), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn corrupt_fragment_is_detected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path(), 1 << 20, 0).unwrap();
        let data = vec![9u8; 1000];
        store.put(&id(2, 3), &fragment_hash(&data), &data).unwrap();
        let path = store.path(&id(2, 3));
        let mut raw = std::fs::read(&path).unwrap();
        raw[500] ^= 0xff;
        std::fs::write(&path, raw).unwrap();
        assert!(matches!(
            store.get(&id(2, 3)),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!path.exists());
        assert_eq!(store.used(), 0);
    }

    #[test]
    fn reading_from_disk_never_answers_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let data = vec![4u8; 100];
        store.put(&id(1, 1), &fragment_hash(&data), &data).unwrap();
        assert_eq!(&store.get(&id(1, 1)).unwrap()[..], &data[..]);
        // The file goes behind the store's back: the cached copy still serves fetches, but a
        // read from the disk (what audits use) finds nothing.
        std::fs::remove_file(store.path(&id(1, 1))).unwrap();
        assert_eq!(&store.get(&id(1, 1)).unwrap()[..], &data[..]);
        assert!(matches!(
            store.read_from_disk(&id(1, 1)),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn cache_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path(), 1 << 20, 250).unwrap();
        for i in 0..5 {
            let data = vec![i as u8; 100];
            store.put(&id(0, i), &fragment_hash(&data), &data).unwrap();
            store.get(&id(0, i)).unwrap();
        }
        let inner = store.lock();
        assert!(inner.cached_bytes <= 250);
        assert_eq!(inner.cache.len(), 2);
    }
}
