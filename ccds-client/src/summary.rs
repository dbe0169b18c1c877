//! What a finished download reports: one or two human lines, or one JSON object (`--json`).

use std::collections::BTreeMap;
use std::fmt;

use bytesize::ByteSize;
use serde::Serialize;

/// The outcome of a successful download. The JSON field names are a stable interface.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Size of the content written.
    pub bytes: u64,
    /// Wall-clock duration of the run.
    pub seconds: f64,
    /// Segments of the content.
    pub segments: u64,
    /// Segments fetched, decoded and written in this run.
    pub segments_fetched: u64,
    /// Segments already present from an interrupted run.
    pub segments_resumed: u64,
    /// Verified fragments received in this run.
    pub fragments_fetched: u64,
    /// Fragment bytes received in this run, per node (peer ID).
    pub per_node: BTreeMap<String, u64>,
    /// Corrupt fragments reported to the coordinator.
    pub corrupt_reports: u64,
    /// Unreachable nodes reported to the coordinator.
    pub unreachable_reports: u64,
    /// Slow nodes reported to the coordinator.
    pub slow_reports: u64,
    /// Fresh contact lists asked of the coordinator because too few holders answered.
    pub contact_refreshes: u64,
    /// Where the content was written.
    #[serde(skip)]
    pub path: String,
}

impl Summary {
    /// The summary as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("summaries always serialise")
    }

    /// Fragment bytes received in this run, from all nodes.
    pub fn received(&self) -> u64 {
        self.per_node.values().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = self.received() as f64 / self.seconds.max(1e-3);
        write!(
            f,
            "downloaded {} to {} in {:.1} s ({}/s received): {} segments ({} fetched, {} resumed), \
             {} fragments from {} nodes",
            ByteSize(self.bytes).display().iec(),
            self.path,
            self.seconds,
            ByteSize(rate as u64).display().iec(),
            self.segments,
            self.segments_fetched,
            self.segments_resumed,
            self.fragments_fetched,
            self.per_node.len(),
        )?;
        if self.corrupt_reports + self.unreachable_reports + self.slow_reports > 0 {
            write!(
                f,
                "\nreported {} corrupt fragment(s), {} unreachable node(s) and {} slow node(s) \
                 to the coordinator",
                self.corrupt_reports, self.unreachable_reports, self.slow_reports
            )?;
        }
        if self.contact_refreshes > 0 {
            write!(
                f,
                "\nasked the coordinator for fresh contacts {} time(s)",
                self.contact_refreshes
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_keys() {
        let s = Summary {
            bytes: 10,
            seconds: 1.5,
            segments: 2,
            segments_fetched: 1,
            segments_resumed: 1,
            fragments_fetched: 4,
            per_node: BTreeMap::from([("12D3Koo".to_string(), 40)]),
            corrupt_reports: 1,
            unreachable_reports: 0,
            slow_reports: 2,
            contact_refreshes: 1,
            path: "x".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bytes",
                "contact_refreshes",
                "corrupt_reports",
                "fragments_fetched",
                "per_node",
                "seconds",
                "segments",
                "segments_fetched",
                "segments_resumed",
                "slow_reports",
                "unreachable_reports"
            ]
        );
        assert_eq!(v["per_node"]["12D3Koo"], 40);
        let text = s.to_string();
        assert!(text.contains("1 corrupt fragment(s)"), "{text}");
        assert!(text.contains("2 slow node(s)"), "{text}");
        assert!(text.contains("fresh contacts 1 time(s)"), "{text}");
    }
}
