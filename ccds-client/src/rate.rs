//! `--limit-rate`: a token bucket over the bytes received from all nodes together.
//!
//! The bucket itself ([`TokenBucket`]) is pure arithmetic over `now`; [`RateLimiter`] shares it
//! between fetches and sleeps. Readers account for bytes after receiving them; since QUIC only
//! grants the sender more credit as the client reads, pausing reads throttles the network too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket allowing `rate` bytes per second with bursts of `burst` bytes.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second; bursts of up to a tenth of a second of data.
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(1024.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` bytes' worth of tokens; returns how long to wait before going on.
    /// The debt is recorded at once, so concurrent takers queue up fairly.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// A read size that keeps the pacing smooth at this rate.
    pub fn chunk(&self) -> usize {
        (self.rate / 20.0).clamp(1024.0, 64.0 * 1024.0) as usize
    }
}

/// A shared limiter; the default one limits nothing.
#[derive(Clone, Debug, Default)]
pub struct RateLimiter(Option<Arc<Mutex<TokenBucket>>>);

/// Read size when no limit is set.
const UNLIMITED_CHUNK: usize = 256 * 1024;

impl RateLimiter {
    /// A limiter to `rate` bytes per second, or no limit.
    pub fn new(rate: Option<u64>) -> Self {
        Self(rate.map(|r| Arc::new(Mutex::new(TokenBucket::new(r, Instant::now())))))
    }

    /// How many bytes to read at a time.
    pub fn chunk(&self) -> usize {
        match &self.0 {
            Some(b) => b.lock().unwrap_or_else(|p| p.into_inner()).chunk(),
            None => UNLIMITED_CHUNK,
        }
    }

    /// Accounts for `n` received bytes, sleeping as long as the limit requires.
    pub async fn consume(&self, n: u64) {
        let Some(bucket) = &self.0 else { return };
        let wait = bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, t0);
        // The initial burst (1 KiB here) passes at once.
        assert_eq!(b.take(1024, t0), Duration::ZERO);
        // The next 10 kB must wait one second.
        let wait = b.take(10_000, t0);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        // A second taker queues behind the first.
        let wait = b.take(10_000, t0);
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6, "{wait:?}");
        // Time pays the debt back.
        let wait = b.take(0, t0 + Duration::from_secs(2));
        assert_eq!(wait, Duration::ZERO);
        // Idle time refills no more than the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.take(1024, later), Duration::ZERO);
        assert!(b.take(10_000, later) > Duration::from_millis(900));
    }

    #[test]
    fn chunks_shrink_with_the_rate() {
        let now = Instant::now();
        assert_eq!(TokenBucket::new(1_000, now).chunk(), 1024);
        assert_eq!(TokenBucket::new(100 << 20, now).chunk(), 64 * 1024);
    }
}
