//! Recent traffic for the owner: bytes served per minute over the last [`MINUTES`] minutes.
//! No clock here: callers pass Unix seconds.

use serde::Serialize;

/// Minutes of history kept.
pub const MINUTES: usize = 15;

/// Bytes served per minute, in a ring indexed by the minute's number.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// `(minute number, bytes)`; a slot whose minute is stale counts as zero.
    slots: [(u64, u64); MINUTES],
}

/// What the status shows: the last minutes, oldest first, the current (partial) one last.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TrafficView {
    /// Bytes served in each of the last minutes, oldest first; the last is the current minute.
    pub per_minute: Vec<u64>,
    /// Their sum.
    pub total: u64,
}

impl Traffic {
    /// No traffic yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `bytes` served at `now` (Unix seconds).
    pub fn record(&mut self, now: u64, bytes: u64) {
        let minute = now / 60;
        let slot = &mut self.slots[(minute % MINUTES as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(bytes);
    }

    /// The last [`MINUTES`] minutes up to `now`.
    pub fn view(&self, now: u64) -> TrafficView {
        let current = now / 60;
        let per_minute: Vec<u64> = (0..MINUTES as u64)
            .rev()
            .map(|ago| {
                let Some(minute) = current.checked_sub(ago) else {
                    return 0;
                };
                let (m, bytes) = self.slots[(minute % MINUTES as u64) as usize];
                if m == minute { bytes } else { 0 }
            })
            .collect();
        TrafficView {
            total: per_minute.iter().sum(),
            per_minute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_fill_and_age_out() {
        let mut t = Traffic::new();
        let start = 1_700_000_000 / 60 * 60;
        t.record(start, 100);
        t.record(start + 59, 50);
        t.record(start + 60, 7);
        let v = t.view(start + 61);
        assert_eq!(v.per_minute.len(), MINUTES);
        assert_eq!(v.per_minute[MINUTES - 1], 7);
        assert_eq!(v.per_minute[MINUTES - 2], 150);
        assert_eq!(v.total, 157);
        // Fifteen minutes on, the first minute is gone; its slot is reused without adding.
        let later = start + 60 * MINUTES as u64;
        assert_eq!(t.view(later).total, 7);
        t.record(later, 1);
        assert_eq!(t.view(later).per_minute[MINUTES - 1], 1);
        assert_eq!(t.view(later + 3600).total, 0);
    }
}
