//! The resume state: which segments of `PATH.part` are already written and synced.
//!
//! Saved as JSON next to the partial file (`PATH.part.state`), atomically, and only after the
//! segment's bytes reached the disk, so the state never claims data that a crash could lose.
//! Finished segments are stored as ranges: downloads advance roughly in order, so a handful of
//! ranges describe any number of segments.

use std::path::Path;

use overlay::ContentId;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::accounting::NodeTally;

/// Version of the state file format.
const VERSION: u32 = 1;
/// A state file larger than this is not one of ours.
const MAX_STATE_FILE: u64 = 64 << 20;

/// A set of finished segments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentSet {
    done: Vec<bool>,
    count: u64,
}

impl SegmentSet {
    /// An empty set over `segments` segments.
    pub fn new(segments: u64) -> Self {
        Self {
            done: vec![false; segments as usize],
            count: 0,
        }
    }

    /// Total number of segments.
    pub fn len(&self) -> u64 {
        self.done.len() as u64
    }

    /// True if the content has no segments.
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// Number of finished segments.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// True if `segment` is finished.
    pub fn contains(&self, segment: u64) -> bool {
        self.done.get(segment as usize).copied().unwrap_or(false)
    }

    /// Marks `segment` finished.
    pub fn insert(&mut self, segment: u64) {
        if let Some(d) = self.done.get_mut(segment as usize)
            && !*d
        {
            *d = true;
            self.count += 1;
        }
    }

    /// Half-open ranges `[start, end)` of finished segments, in order.
    pub fn ranges(&self) -> Vec<[u64; 2]> {
        let mut out: Vec<[u64; 2]> = Vec::new();
        for (i, _) in self.done.iter().enumerate().filter(|(_, d)| **d) {
            let i = i as u64;
            match out.last_mut() {
                Some(r) if r[1] == i => r[1] = i + 1,
                _ => out.push([i, i + 1]),
            }
        }
        out
    }

    /// The set described by `ranges`, or `None` if a range falls outside `segments`.
    pub fn from_ranges(segments: u64, ranges: &[[u64; 2]]) -> Option<Self> {
        let mut set = Self::new(segments);
        for &[start, end] in ranges {
            if start > end || end > segments {
                return None;
            }
            for s in start..end {
                set.insert(s);
            }
        }
        Some(set)
    }
}

/// The resume state as stored on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeState {
    pub version: u32,
    /// The content being downloaded; a state for another content is ignored.
    pub content: ContentId,
    /// Size of the content in bytes.
    pub size: u64,
    /// Number of segments.
    pub segments: u64,
    /// Finished segments as half-open ranges.
    pub done: Vec<[u64; 2]>,
    /// What each node delivered so far, for receipts and the completion report.
    #[serde(default)]
    pub nodes: Vec<NodeTally>,
}

/// A resume state that matched the content being downloaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumed {
    pub done: SegmentSet,
    pub nodes: Vec<NodeTally>,
}

impl ResumeState {
    /// The state of a download of `content`.
    pub fn new(content: ContentId, size: u64, done: &SegmentSet, nodes: Vec<NodeTally>) -> Self {
        Self {
            version: VERSION,
            content,
            size,
            segments: done.len(),
            done: done.ranges(),
            nodes,
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).expect("resume states always serialise");
        overlay::store::write_atomic(path, &json, false)
    }

    /// Reads the state at `path` if it describes a download of `content` with `size` bytes in
    /// `segments` segments. A missing, unreadable or foreign state yields `None`: the download
    /// starts over, which is always safe.
    pub fn load(path: &Path, content: &ContentId, size: u64, segments: u64) -> Option<Resumed> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read resume state; starting over");
                return None;
            }
        };
        if meta.len() > MAX_STATE_FILE {
            warn!(path = %path.display(), "resume state is implausibly large; starting over");
            return None;
        }
        let state: Self = match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "unreadable resume state; starting over");
                return None;
            }
        };
        if state.version != VERSION
            || &state.content != content
            || state.size != size
            || state.segments != segments
        {
            debug!(path = %path.display(), found = %state.content, "resume state is for another content");
            return None;
        }
        let done = SegmentSet::from_ranges(segments, &state.done)?;
        Some(Resumed {
            done,
            nodes: state.nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::PeerId;

    #[test]
    fn ranges_round_trip() {
        let mut set = SegmentSet::new(10);
        for s in [0, 1, 2, 5, 7, 8, 9, 9] {
            set.insert(s);
        }
        assert_eq!(set.count(), 7);
        assert_eq!(set.ranges(), vec![[0, 3], [5, 6], [7, 10]]);
        assert_eq!(SegmentSet::from_ranges(10, &set.ranges()), Some(set));
        assert_eq!(SegmentSet::from_ranges(10, &[[5, 11]]), None);
        assert_eq!(SegmentSet::from_ranges(10, &[[5, 4]]), None);
    }

    #[test]
    fn state_round_trips_and_foreign_state_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.part.state");
        let content = ContentId([1; 32]);
        assert_eq!(ResumeState::load(&path, &content, 100, 4), None);
        let mut done = SegmentSet::new(4);
        done.insert(0);
        done.insert(2);
        let nodes = vec![NodeTally {
            node: PeerId::random(),
            fragments: 3,
            bytes: 300,
            seq: 3,
        }];
        ResumeState::new(content, 100, &done, nodes.clone())
            .save(&path)
            .unwrap();
        let back = ResumeState::load(&path, &content, 100, 4).unwrap();
        assert_eq!(back.done, done);
        assert_eq!(back.nodes, nodes);
        // Another content, or the same ID with another shape: start over.
        assert_eq!(ResumeState::load(&path, &ContentId([2; 32]), 100, 4), None);
        assert_eq!(ResumeState::load(&path, &content, 101, 4), None);
        // Garbage: start over.
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(ResumeState::load(&path, &content, 100, 4), None);
    }
}
