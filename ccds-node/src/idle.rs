//! Idle gating: the node joins only while the host is idle enough, and leaves when its owner
//! comes back.
//!
//! The measure is the share of CPU time spent idle (idle + iowait) over a sliding window,
//! from the kernel's cumulative counters in `/proc/stat`. [`parse`] reads them and
//! [`IdleGate`] decides, both without I/O or clock: the daemon's sampler reads the file
//! (its path is configurable, so tests drive it with a file of their own) every
//! [`IdleConfig::sample_every`] and feeds the gate the counters with the time.
//!
//! Hysteresis keeps the node from flapping: it joins once the window's idle share reaches
//! `min_idle`, and leaves only when it falls below `min_idle - hysteresis`. It starts
//! "busy" and decides nothing until it has a whole window of samples, so a node started on a
//! busy host never joins for a moment.

use std::collections::VecDeque;
use std::time::Duration;

/// Cumulative CPU time counters (in the kernel's ticks) from the `cpu` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// idle + iowait.
    pub idle: u64,
    /// Every field that is time spent (user nice system idle iowait irq softirq steal).
    pub total: u64,
}

/// Why `/proc/stat` could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProcStatError {
    #[error("no `cpu ` line: not a /proc/stat file")]
    NoCpuLine,
    #[error("the `cpu` line has {0} counters, at least 4 expected (user nice system idle)")]
    TooFew(usize),
    #[error("`{0}` on the `cpu` line is not a counter")]
    NotANumber(String),
}

/// Reads the aggregate `cpu` line of a `/proc/stat` text.
pub fn parse(text: &str) -> Result<CpuTimes, ProcStatError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or(ProcStatError::NoCpuLine)?;
    let fields = line
        .split_whitespace()
        .skip(1)
        // guest and guest_nice are already counted in user and nice.
        .take(8)
        .map(|f| {
            f.parse::<u64>()
                .map_err(|_| ProcStatError::NotANumber(f.to_string()))
        })
        .collect::<Result<Vec<u64>, _>>()?;
    if fields.len() < 4 {
        return Err(ProcStatError::TooFew(fields.len()));
    }
    let iowait = fields.get(4).copied().unwrap_or(0);
    Ok(CpuTimes {
        idle: fields[3].saturating_add(iowait),
        total: fields.iter().fold(0u64, |a, f| a.saturating_add(*f)),
    })
}

/// The gate's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct IdleConfig {
    /// Share of CPU time idle over the window (0 to 1) at which the node joins.
    pub min_idle: f64,
    /// How far below `min_idle` the share must fall before the node leaves.
    pub hysteresis: f64,
    /// The window the share is measured over.
    pub window: Duration,
    /// Time between two samples.
    pub sample_every: Duration,
}

impl IdleConfig {
    /// Checks the settings make sense.
    pub fn check(&self) -> Result<(), String> {
        if !(self.min_idle > 0.0 && self.min_idle <= 1.0) {
            return Err(format!(
                "the idle threshold must be above 0 % and at most 100 %, not {:.0} %",
                self.min_idle * 100.0
            ));
        }
        if !(0.0..self.min_idle).contains(&self.hysteresis) {
            return Err(format!(
                "the hysteresis ({:.0} %) must be at least 0 % and below the idle threshold ({:.0} %)",
                self.hysteresis * 100.0,
                self.min_idle * 100.0
            ));
        }
        if self.window.is_zero() || self.sample_every.is_zero() || self.sample_every > self.window {
            return Err(format!(
                "the idle window ({:?}) must be positive and at least one sample interval ({:?})",
                self.window, self.sample_every
            ));
        }
        Ok(())
    }
}

/// The gate's verdict after a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The host is idle enough: be online.
    Idle,
    /// The owner is using the host: stay or go offline.
    Busy,
}

/// The sans-IO decision: samples in, verdicts out.
#[derive(Clone, Debug)]
pub struct IdleGate {
    config: IdleConfig,
    /// `(time, counters)`, oldest first, spanning a little more than the window.
    samples: VecDeque<(Duration, CpuTimes)>,
    verdict: Verdict,
    share: Option<f64>,
}

impl IdleGate {
    /// A gate that starts busy.
    pub fn new(config: IdleConfig) -> Self {
        Self {
            config,
            samples: VecDeque::new(),
            verdict: Verdict::Busy,
            share: None,
        }
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The idle share over the last whole window, once there is one.
    pub fn share(&self) -> Option<f64> {
        self.share
    }

    /// Takes the counters read at `now` (any monotonic origin) and returns the verdict.
    pub fn sample(&mut self, now: Duration, times: CpuTimes) -> Verdict {
        // Counters that went backwards (a reboot under a restored VM, a test rewriting the
        // file) make every older sample meaningless.
        if let Some(&(_, last)) = self.samples.back()
            && (times.total < last.total || times.idle < last.idle)
        {
            self.samples.clear();
        }
        self.samples.push_back((now, times));
        // Keep the newest sample at least a window old, so the share covers a whole window.
        while self.samples.len() > 2 && now.saturating_sub(self.samples[1].0) >= self.config.window
        {
            self.samples.pop_front();
        }
        let (then, old) = self.samples[0];
        if now.saturating_sub(then) < self.config.window {
            return self.verdict;
        }
        let total = times.total - old.total;
        if total == 0 {
            // No CPU time passed (counters not updated): nothing to judge by.
            return self.verdict;
        }
        let share = (times.idle - old.idle) as f64 / total as f64;
        self.share = Some(share);
        self.verdict = match self.verdict {
            Verdict::Busy if share >= self.config.min_idle => Verdict::Idle,
            Verdict::Idle if share < self.config.min_idle - self.config.hysteresis => Verdict::Busy,
            unchanged => unchanged,
        };
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "cpu  4705 356 584 3699176 23 0 19 0 0 0\n\
                        cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0\n\
                        intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]\n\
                        ctxt 1990473\nbtime 1062191376\n";

    #[test]
    fn the_aggregate_cpu_line_is_read() {
        let t = parse(REAL).unwrap();
        assert_eq!(t.idle, 3_699_176 + 23);
        assert_eq!(t.total, 4705 + 356 + 584 + 3_699_176 + 23 + 19);
        // Old kernels have only four counters; guest time is not counted twice.
        assert_eq!(
            parse("cpu 1 2 3 4\n").unwrap(),
            CpuTimes { idle: 4, total: 10 }
        );
        assert_eq!(parse("cpu 1 0 0 1 0 0 0 0 100 100\n").unwrap().total, 2);
        assert_eq!(parse("cpu0 1 2 3 4\n"), Err(ProcStatError::NoCpuLine));
        assert_eq!(parse("cpu 1 2 3\n"), Err(ProcStatError::TooFew(3)));
        assert!(matches!(
            parse("cpu 1 2 x 4\n"),
            Err(ProcStatError::NotANumber(_))
        ));
    }

    fn config() -> IdleConfig {
        IdleConfig {
            min_idle: 0.8,
            hysteresis: 0.1,
            window: Duration::from_secs(10),
            sample_every: Duration::from_secs(1),
        }
    }

    /// Feeds one sample a second for `secs` seconds at `idle_pct` % idle, 100 ticks a second.
    fn run(gate: &mut IdleGate, clock: &mut (u64, CpuTimes), secs: u64, idle_pct: u64) -> Verdict {
        let mut verdict = gate.verdict();
        for _ in 0..secs {
            clock.0 += 1;
            clock.1.total += 100;
            clock.1.idle += idle_pct;
            verdict = gate.sample(Duration::from_secs(clock.0), clock.1);
        }
        verdict
    }

    #[test]
    fn joins_after_a_whole_idle_window_and_leaves_when_the_owner_returns() {
        let mut gate = IdleGate::new(config());
        let mut clock = (0, CpuTimes::default());
        gate.sample(Duration::ZERO, clock.1);
        // Idle, but not yet for a whole window.
        assert_eq!(run(&mut gate, &mut clock, 9, 95), Verdict::Busy);
        assert_eq!(gate.share(), None);
        assert_eq!(run(&mut gate, &mut clock, 1, 95), Verdict::Idle);
        assert!((gate.share().unwrap() - 0.95).abs() < 1e-9);
        // The owner comes back: the window's share falls below 70 % within a few seconds.
        let mut busy_after = 0;
        while gate.sample(
            Duration::from_secs({
                clock.0 += 1;
                clock.0
            }),
            {
                clock.1.total += 100;
                clock.1.idle += 10;
                clock.1
            },
        ) == Verdict::Idle
        {
            busy_after += 1;
            assert!(busy_after < 10, "never left");
        }
        assert!(gate.share().unwrap() < 0.7);
    }

    #[test]
    fn hysteresis_keeps_a_borderline_host_from_flapping() {
        let mut gate = IdleGate::new(config());
        let mut clock = (0, CpuTimes::default());
        gate.sample(Duration::ZERO, clock.1);
        assert_eq!(run(&mut gate, &mut clock, 10, 85), Verdict::Idle);
        // Between 70 % and 80 %: an idle node stays, however long.
        assert_eq!(run(&mut gate, &mut clock, 60, 75), Verdict::Idle);
        assert_eq!(run(&mut gate, &mut clock, 30, 60), Verdict::Busy);
        // And a busy one does not come back at 75 % either.
        assert_eq!(run(&mut gate, &mut clock, 60, 75), Verdict::Busy);
        assert_eq!(run(&mut gate, &mut clock, 30, 80), Verdict::Idle);
    }

    #[test]
    fn counters_going_backwards_or_standing_still_decide_nothing() {
        let mut gate = IdleGate::new(config());
        let mut clock = (0, CpuTimes::default());
        gate.sample(Duration::ZERO, clock.1);
        assert_eq!(run(&mut gate, &mut clock, 10, 95), Verdict::Idle);
        // A reset starts a new window: no verdict change until it is whole.
        clock.1 = CpuTimes::default();
        assert_eq!(run(&mut gate, &mut clock, 9, 0), Verdict::Idle);
        assert_eq!(run(&mut gate, &mut clock, 2, 0), Verdict::Busy);
        // Counters that do not move: the verdict stands.
        for s in 0..30 {
            gate.sample(Duration::from_secs(clock.0 + s), clock.1);
        }
        assert_eq!(gate.verdict(), Verdict::Busy);
    }

    #[test]
    fn settings_are_checked() {
        assert!(config().check().is_ok());
        let bad = |c: IdleConfig| c.check().unwrap_err();
        assert!(
            bad(IdleConfig {
                min_idle: 0.0,
                ..config()
            })
            .contains("threshold")
        );
        assert!(
            bad(IdleConfig {
                min_idle: 1.5,
                ..config()
            })
            .contains("threshold")
        );
        assert!(
            bad(IdleConfig {
                hysteresis: 0.9,
                ..config()
            })
            .contains("hysteresis")
        );
        assert!(
            bad(IdleConfig {
                sample_every: Duration::from_secs(20),
                ..config()
            })
            .contains("window")
        );
    }
}
