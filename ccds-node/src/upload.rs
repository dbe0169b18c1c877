//! The node's upload rate, measured while it serves fetches, for the CM's bandwidth groups and
//! placement weights. No clock here: the fetch handler passes each delivery's bytes and time.
//!
//! A sample is one fragment delivery: its bytes over the time from the first byte written to
//! the arrival of the client's receipt, which the client sends only after reading and checking
//! every byte. Write time alone would not do: QUIC buffers a whole fragment at once, so the
//! writes return long before the bytes leave. The receipt adds one round trip, which slightly
//! understates the rate (the safe side). Fragments under [`MIN_SAMPLE_BYTES`] are not sampled:
//! their time is mostly round trips.
//!
//! Samples combine as an exponentially weighted moving average, the newest weighing 1/4,
//! rather than as the max over a recent window: one client on the node's own LAN would make a
//! max report LAN speed for the whole window, while the average moves part way and settles
//! back. The CM takes the better of this and what it observes itself. A known bias: fetches
//! served at the same time share the uplink, and each sees only its share.
//!
//! One atomic word, updated by compare-and-swap: no lock on the serving path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Deliveries smaller than this are not sampled.
pub const MIN_SAMPLE_BYTES: u64 = 64 * 1024;

/// The newest sample's weight in the average is `1 / EWMA_DIVISOR`.
const EWMA_DIVISOR: u128 = 4;

/// The measured upload rate, shared by all fetch handlers.
#[derive(Debug, Default)]
pub struct UploadRate {
    /// Bytes per second; 0 until the first sample.
    ewma: AtomicU64,
}

impl UploadRate {
    /// No sample yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one delivery of `bytes` that took `elapsed` into the average. Returns the
    /// delivery's rate in bytes per second, or `None` if it was too small or instantaneous to
    /// mean anything.
    pub fn record(&self, bytes: u64, elapsed: Duration) -> Option<u64> {
        if bytes < MIN_SAMPLE_BYTES || elapsed.is_zero() {
            return None;
        }
        let rate = (u128::from(bytes) * 1_000_000_000 / elapsed.as_nanos()).max(1);
        let rate = u64::try_from(rate).unwrap_or(u64::MAX);
        let _ = self
            .ewma
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    rate
                } else {
                    let old = u128::from(old);
                    let new = (old * (EWMA_DIVISOR - 1) + u128::from(rate)) / EWMA_DIVISOR;
                    u64::try_from(new.max(1)).unwrap_or(u64::MAX)
                })
            });
        Some(rate)
    }

    /// The current estimate in bytes per second; 0 while unknown.
    pub fn bytes_per_sec(&self) -> u64 {
        self.ewma.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_instant_deliveries_are_not_samples() {
        let rate = UploadRate::new();
        assert_eq!(
            rate.record(MIN_SAMPLE_BYTES - 1, Duration::from_secs(1)),
            None
        );
        assert_eq!(rate.record(1 << 20, Duration::ZERO), None);
        assert_eq!(rate.bytes_per_sec(), 0);
    }

    #[test]
    fn samples_form_a_moving_average() {
        let rate = UploadRate::new();
        // The first sample is the estimate.
        assert_eq!(
            rate.record(1_000_000, Duration::from_secs(1)),
            Some(1_000_000)
        );
        assert_eq!(rate.bytes_per_sec(), 1_000_000);
        // Then each moves it a quarter of the way: (3 × 1 MB/s + 5 MB/s) / 4.
        assert_eq!(
            rate.record(2_500_000, Duration::from_millis(500)),
            Some(5_000_000)
        );
        assert_eq!(rate.bytes_per_sec(), 2_000_000);
        // (3 × 2 MB/s + 1 MB/s) / 4.
        rate.record(100_000, Duration::from_millis(100));
        assert_eq!(rate.bytes_per_sec(), 1_750_000);
        // One outlier does not carry the estimate away.
        rate.record(1 << 30, Duration::from_millis(1));
        assert!(rate.bytes_per_sec() < (1 << 40) / 3);
    }

    #[test]
    fn concurrent_samples_are_all_counted() {
        let rate = std::sync::Arc::new(UploadRate::new());
        rate.record(1_000_000, Duration::from_secs(1));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rate = rate.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        rate.record(1_000_000, Duration::from_secs(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(rate.bytes_per_sec(), 1_000_000);
    }
}
