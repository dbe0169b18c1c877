//! The output file: `PATH.part` written segment by segment at its final offsets, the resume
//! state beside it, and the final rename to `PATH`.
//!
//! Order of writes, so that an interruption at any point loses at most the segments in flight:
//! segment bytes → `sync_data` → state (atomic replace). At the end: `sync_all` → rename →
//! state removed. A state whose content differs from the ticket's is ignored and overwritten.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use overlay::ContentId;
use tracing::{debug, info};

use crate::accounting::NodeTally;
use crate::error::ClientError;
use crate::resume::{ResumeState, SegmentSet};

/// `PATH` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Where the partial download of `out` lives.
pub fn part_path(out: &Path) -> PathBuf {
    with_suffix(out, ".part")
}

/// Where the resume state of `out` lives.
pub fn state_path(out: &Path) -> PathBuf {
    with_suffix(out, ".part.state")
}

struct Inner {
    file: File,
    done: SegmentSet,
}

/// A partial download on disk.
pub struct PartFile {
    out: PathBuf,
    part: PathBuf,
    state: PathBuf,
    content: ContentId,
    size: u64,
    segment_size: u64,
    inner: Mutex<Inner>,
}

/// What [`PartFile::open`] found.
pub struct Opened {
    pub file: PartFile,
    /// Segments already present from an earlier run.
    pub resumed: SegmentSet,
    /// Node counters saved by the earlier run.
    pub nodes: Vec<NodeTally>,
}

impl PartFile {
    /// Opens `out.part`, resuming from its state if that describes the same content,
    /// otherwise starting over with a file of `size` bytes.
    pub fn open(
        out: &Path,
        content: ContentId,
        size: u64,
        segment_size: u64,
        segments: u64,
    ) -> Result<Opened, ClientError> {
        let part = part_path(out);
        let state = state_path(out);
        let io = |what: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |source| ClientError::Output { what, path, source }
        };
        let resumed = ResumeState::load(&state, &content, size, segments).and_then(|r| {
            let len = std::fs::metadata(&part).ok()?.len();
            if len != size {
                debug!(len, size, "partial file has the wrong size; starting over");
                return None;
            }
            Some(r)
        });
        let (file, done, nodes) = match resumed {
            Some(r) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&part)
                    .map_err(io("open", &part))?;
                info!(
                    "resuming: {} of {} segments already present",
                    r.done.count(),
                    segments
                );
                (file, r.done, r.nodes)
            }
            None => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&part)
                    .map_err(io("create", &part))?;
                file.set_len(size).map_err(io("allocate", &part))?;
                let done = SegmentSet::new(segments);
                // A stale state (of this or another content) must not outlive the file it described.
                ResumeState::new(content, size, &done, Vec::new())
                    .save(&state)
                    .map_err(io("write", &state))?;
                (file, done, Vec::new())
            }
        };
        Ok(Opened {
            resumed: done.clone(),
            nodes,
            file: PartFile {
                out: out.to_owned(),
                part,
                state,
                content,
                size,
                segment_size,
                inner: Mutex::new(Inner { file, done }),
            },
        })
    }

    /// Writes segment `segment`, makes it durable, then records it in the resume state
    /// together with the node counters `nodes`. Blocking: call from a blocking task.
    pub fn write_segment(
        &self,
        segment: u64,
        data: &[u8],
        nodes: impl FnOnce() -> Vec<NodeTally>,
    ) -> Result<(), ClientError> {
        let offset = segment * self.segment_size;
        let part = self.part.display().to_string();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let write = |file: &mut File| -> std::io::Result<()> {
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(data)?;
            file.sync_data()
        };
        write(&mut inner.file).map_err(|source| ClientError::Output {
            what: "write",
            path: part,
            source,
        })?;
        inner.done.insert(segment);
        ResumeState::new(self.content, self.size, &inner.done, nodes())
            .save(&self.state)
            .map_err(|source| ClientError::Output {
                what: "write",
                path: self.state.display().to_string(),
                source,
            })
    }

    /// Segments written so far (earlier runs included).
    pub fn done_count(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .done
            .count()
    }

    /// Makes the whole file durable, renames it to its final name and removes the state.
    pub fn finish(self) -> Result<(), ClientError> {
        let inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        let err = |what: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |source| ClientError::Output { what, path, source }
        };
        inner.file.sync_all().map_err(err("sync", &self.part))?;
        drop(inner.file);
        std::fs::rename(&self.part, &self.out).map_err(err("rename", &self.out))?;
        if let Err(e) = std::fs::remove_file(&self.state)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(err("remove", &self.state)(e));
        }
        // Make the rename durable too.
        #[cfg(unix)]
        if let Some(dir) = self.out.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_the_same_content_and_restarts_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("file.bin");
        let content = ContentId([5; 32]);
        let opened = PartFile::open(&out, content, 25, 10, 3).unwrap();
        assert_eq!(opened.resumed.count(), 0);
        opened.file.write_segment(1, &[1u8; 10], Vec::new).unwrap();
        drop(opened);
        // Same content: segment 1 is already there.
        let again = PartFile::open(&out, content, 25, 10, 3).unwrap();
        assert!(again.resumed.contains(1));
        assert_eq!(again.resumed.count(), 1);
        again.file.write_segment(0, &[0u8; 10], Vec::new).unwrap();
        again.file.write_segment(2, &[2u8; 5], Vec::new).unwrap();
        drop(again);
        // Another content under the same name: start over.
        let other = PartFile::open(&out, ContentId([6; 32]), 25, 10, 3).unwrap();
        assert_eq!(other.resumed.count(), 0);
        drop(other);
        let fresh = PartFile::open(&out, content, 25, 10, 3).unwrap();
        assert_eq!(fresh.resumed.count(), 0, "the foreign run reset the state");
        for s in 0..3u8 {
            let len = if s == 2 { 5 } else { 10 };
            fresh
                .file
                .write_segment(s as u64, &vec![s; len], Vec::new)
                .unwrap();
        }
        fresh.file.finish().unwrap();
        let data = std::fs::read(&out).unwrap();
        assert_eq!(data.len(), 25);
        assert_eq!(&data[10..20], &[1u8; 10]);
        assert_eq!(&data[20..], &[2u8; 5]);
        assert!(!part_path(&out).exists());
        assert!(!state_path(&out).exists());
    }

    #[test]
    fn empty_content_gives_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("empty");
        let opened = PartFile::open(&out, ContentId([1; 32]), 0, 10, 0).unwrap();
        opened.file.finish().unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);
    }

    #[test]
    fn a_truncated_partial_file_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("f");
        let content = ContentId([3; 32]);
        let opened = PartFile::open(&out, content, 20, 10, 2).unwrap();
        opened.file.write_segment(0, &[9; 10], Vec::new).unwrap();
        drop(opened);
        std::fs::File::options()
            .write(true)
            .open(part_path(&out))
            .unwrap()
            .set_len(5)
            .unwrap();
        let again = PartFile::open(&out, content, 20, 10, 2).unwrap();
        assert_eq!(again.resumed.count(), 0);
    }
}
