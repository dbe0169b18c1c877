//! The node's upload limit (`ccds-node run --upload-limit`): one token bucket shared by every
//! `/ccds/fetch/1` stream, so the owner caps the node's upload as a whole however many clients
//! it serves at once.
//!
//! The bucket is `governor`'s GCRA and holds one second of the rate: a node that was idle sends
//! up to a second's worth at once (its burst), and over any longer span never more than the
//! rate. The fetch handler waits for a chunk's tokens before it writes the chunk.
//!
//! Chunks are at most a sixteenth of a second of the rate (and at most the fetch handler's
//! 256 KiB), not a fixed size. Concurrent streams take turns chunk by chunk, so each one makes
//! progress about every `streams / 16` seconds: inside the 20 s a client waits for a silent
//! node even with a couple of hundred streams on one node. It is also why a rate below one
//! 256 KiB chunk a second gets smaller chunks rather than a burst of one chunk: that burst
//! would send several seconds' worth of the rate at once, hogging the owner's uplink, and
//! leave each stream silent for seconds per chunk.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Chunks per second of the rate: the bucket holds this many.
const CHUNKS_PER_BURST: u32 = 16;

/// The most tokens the bucket gains per second. `governor` counts time in whole nanoseconds,
/// so a token must last long enough for that rounding not to matter: at a byte per token a
/// 1 GiB/s limit would be one token per 0 ns, no limit at all. With at most 2^20 tokens a
/// second a token lasts at least 954 ns, and the rounding costs at most 0.1 % of the rate.
/// Above 1 MiB/s a token is therefore several bytes.
const MAX_TOKENS_PER_SEC: u32 = 1 << 20;

/// The node's upload limit, shared by all fetch handlers.
#[derive(Debug)]
pub struct UploadLimit {
    /// Bytes per second.
    rate: NonZeroU32,
    bucket: DefaultDirectRateLimiter,
    /// Bytes per token.
    unit: u32,
    /// Tokens the bucket holds.
    burst: u32,
    /// The most bytes one wait covers.
    chunk: usize,
}

impl UploadLimit {
    /// A limit of `rate` bytes per second; the bucket starts full.
    pub fn new(rate: NonZeroU32) -> Self {
        let unit = rate.get().div_ceil(MAX_TOKENS_PER_SEC);
        // At least one token per second, since `unit` rounds up.
        let tokens = rate.get() / unit;
        // Rounded up, so that the node never sends faster than asked.
        let period = Duration::from_nanos(1_000_000_000u64.div_ceil(u64::from(tokens)));
        let burst = NonZeroU32::new(tokens).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .expect("a token period is at least one nanosecond")
            .allow_burst(burst);
        let chunk = (u64::from(tokens) * u64::from(unit) / u64::from(CHUNKS_PER_BURST)).max(1);
        Self {
            rate,
            bucket: RateLimiter::direct(quota),
            unit,
            burst: burst.get(),
            chunk: usize::try_from(chunk).unwrap_or(usize::MAX),
        }
    }

    /// The rate, bytes per second.
    pub fn rate(&self) -> NonZeroU32 {
        self.rate
    }

    /// The most bytes to write between two waits: a sixteenth of a second of the rate.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Bytes the node may send at once after a second or more without sending: one second of
    /// the rate (a little less when a token is several bytes).
    pub fn burst_bytes(&self) -> u64 {
        u64::from(self.burst) * u64::from(self.unit)
    }

    /// Waits until `bytes` may be sent, then counts them as sent. Waiters are served as the
    /// bucket refills, in no guaranteed order; `bytes` above a chunk are waited for a chunk at
    /// a time.
    pub async fn take(&self, mut bytes: usize) {
        while bytes > 0 {
            let piece = bytes.min(self.chunk);
            bytes -= piece;
            let tokens = u32::try_from(piece.div_ceil(self.unit as usize)).unwrap_or(u32::MAX);
            let Some(tokens) = NonZeroU32::new(tokens) else {
                continue;
            };
            // A chunk is at most the burst, so the bucket can always hold it.
            if let Err(e) = self.bucket.until_n_ready(tokens).await {
                unreachable!("{tokens} tokens exceed the bucket ({e})");
            }
        }
    }
}

/// The upload limit in force, which the owner's schedule switches as its windows start and
/// end. A switch replaces the bucket (a GCRA's rate is fixed): chunks already waiting finish
/// on the old one, the next chunk of every stream waits on the new one, and the new bucket
/// starts full, so a switch never stalls a stream.
#[derive(Debug, Default)]
pub struct Throttle {
    current: RwLock<Option<Arc<UploadLimit>>>,
}

impl Throttle {
    /// Starts at `rate` (`None`: unlimited).
    pub fn new(rate: Option<NonZeroU32>) -> Self {
        Self {
            current: RwLock::new(rate.map(|r| Arc::new(UploadLimit::new(r)))),
        }
    }

    /// The bucket in force now, if the upload is limited.
    pub fn current(&self) -> Option<Arc<UploadLimit>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The rate in force, bytes per second (`None`: unlimited).
    pub fn rate(&self) -> Option<NonZeroU32> {
        self.current().map(|l| l.rate)
    }

    /// Switches to `rate`; returns whether it changed.
    pub fn set(&self, rate: Option<NonZeroU32>) -> bool {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().map(|l| l.rate) == rate {
            return false;
        }
        *current = rate.map(|r| Arc::new(UploadLimit::new(r)));
        true
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn limit(rate: u32) -> UploadLimit {
        UploadLimit::new(NonZeroU32::new(rate).unwrap())
    }

    #[test]
    fn a_token_is_a_byte_up_to_a_mebibyte_per_second() {
        for rate in [1, 1000, 200 * 1024, 1 << 20] {
            let l = limit(rate);
            assert_eq!((l.unit, l.burst), (1, rate), "{rate} B/s");
            assert_eq!(l.burst_bytes(), u64::from(rate));
        }
        // Above, tokens grow so that there are never more than 2^20 a second.
        for rate in [(1 << 20) + 1, 5 << 20, 100_000_000, u32::MAX] {
            let l = limit(rate);
            assert!(l.unit > 1 && l.burst <= MAX_TOKENS_PER_SEC, "{rate} B/s");
            // Rounding loses less than one token's worth of bytes a second.
            let lost = u64::from(rate) - l.burst_bytes();
            assert!(lost < u64::from(l.unit), "{rate} B/s loses {lost} B/s");
        }
    }

    #[test]
    fn chunks_are_a_sixteenth_of_a_second_and_always_fit_the_bucket() {
        assert_eq!(limit(2 << 20).chunk(), 128 * 1024);
        assert_eq!(limit(200 * 1024).chunk(), 12_800);
        assert_eq!(limit(10).chunk(), 1);
        assert_eq!(limit(1).chunk(), 1);
        for rate in [1, 15, 16, 17, 1 << 20, (1 << 20) + 1, 3_333_333, u32::MAX] {
            let l = limit(rate);
            let tokens = l.chunk().div_ceil(l.unit as usize);
            assert!(tokens >= 1 && tokens <= l.burst as usize, "{rate} B/s");
        }
    }

    #[test]
    fn a_full_bucket_gives_its_burst_at_once_then_waits() {
        // 2 B/s: a burst of 2 bytes in 1-byte chunks, then a token every half second.
        let l = limit(2);
        assert_eq!((l.burst_bytes(), l.chunk()), (2, 1));
        assert_eq!(l.take(2).now_or_never(), Some(()));
        assert_eq!(l.take(1).now_or_never(), None);
    }

    #[test]
    fn a_switch_replaces_the_bucket_with_a_full_one() {
        let t = Throttle::new(NonZeroU32::new(2));
        let old = t.current().unwrap();
        assert_eq!(old.take(2).now_or_never(), Some(()));
        assert!(!t.set(NonZeroU32::new(2)), "the same rate keeps the bucket");
        assert_eq!(t.current().unwrap().take(1).now_or_never(), None);
        assert!(t.set(NonZeroU32::new(4)));
        assert_eq!(t.rate(), NonZeroU32::new(4));
        assert_eq!(t.current().unwrap().take(4).now_or_never(), Some(()));
        assert!(t.set(None));
        assert!(t.current().is_none());
    }
}
