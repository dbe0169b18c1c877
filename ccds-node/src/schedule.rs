//! The owner's upload schedule: a default rate and time-of-day windows with rates of their own
//! (e.g. 200 KiB/s from 08:00 to 18:00, 5 MiB/s otherwise), in local time.
//!
//! No clock here: callers pass the minute of the day (local time) and get the rate in force
//! and the minutes until it next changes. The daemon's driver (`crate::daemon`) reads the
//! local time, sets the node's one token bucket ([`crate::throttle::Throttle`]) to the rate
//! and sleeps until the next change.
//!
//! A window runs from its start minute (included) to its end minute (excluded); an end
//! before the start wraps past midnight (22:00-06:00). Windows may not overlap, so the rate
//! at any minute is never ambiguous, and a window may not be empty.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Minutes in a day.
pub const DAY_MINUTES: u16 = 24 * 60;

/// A time of day to the minute, `HH:MM` (00:00 to 23:59; 24:00 is accepted as the end of a
/// day and means 00:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    /// The time `hours:minutes`; `None` if out of range.
    pub fn new(hours: u16, minutes: u16) -> Option<Self> {
        (hours < 24 && minutes < 60).then_some(Self(hours * 60 + minutes))
    }

    /// Minutes since midnight.
    pub fn minutes(self) -> u16 {
        self.0
    }
}

impl FromStr for TimeOfDay {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, ScheduleError> {
        let bad = || ScheduleError::BadTime(text.to_string());
        let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return Err(bad());
        }
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if (h, m) == (24, 0) {
            return Ok(Self(0));
        }
        Self::new(h, m).ok_or_else(bad)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// An upload rate in bytes per second; `None` is unlimited.
pub type Rate = Option<NonZeroU32>;

/// Parses a rate as the CLI and config take it: a size per second ("200KiB", "5MiB"), with
/// "0" or "unlimited" for no limit. The limiter counts in `u32`, so a limit is below 4 GiB.
pub fn parse_rate(text: &str) -> Result<Rate, ScheduleError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let size: ByteSize = text
        .parse()
        .map_err(|e: String| ScheduleError::BadRate(text.to_string(), e))?;
    let rate = u32::try_from(size.as_u64()).map_err(|_| {
        ScheduleError::BadRate(
            text.to_string(),
            "a limit must be below 4GiB per second; use \"unlimited\" for no limit".into(),
        )
    })?;
    Ok(NonZeroU32::new(rate))
}

/// A rate for people: "200.0 KiB/s" or "unlimited".
pub fn show_rate(rate: Rate) -> String {
    match rate {
        Some(r) => format!("{}/s", ByteSize(u64::from(r.get())).display().iec()),
        None => "unlimited".into(),
    }
}

/// One window of the schedule: from `start` (included) to `end` (excluded), at `rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
    pub rate: Rate,
}

impl Window {
    /// Whether the window covers minute `m` of the day.
    pub fn covers(&self, m: u16) -> bool {
        let (s, e) = (self.start.0, self.end.0);
        if s < e {
            (s..e).contains(&m)
        } else {
            m >= s || m < e
        }
    }

    /// The minutes of the day it covers, as at most two plain ranges.
    fn ranges(&self) -> [std::ops::Range<u16>; 2] {
        let (s, e) = (self.start.0, self.end.0);
        if s < e {
            [s..e, 0..0]
        } else {
            [s..DAY_MINUTES, 0..e]
        }
    }
}

/// `HH:MM-HH:MM=RATE`, as `--upload-window` takes it.
impl FromStr for Window {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, ScheduleError> {
        let bad = || ScheduleError::BadWindow(text.to_string());
        let (span, rate) = text.split_once('=').ok_or_else(bad)?;
        let (start, end) = span.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            start: start.parse()?,
            end: end.parse()?,
            rate: parse_rate(rate)?,
        })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{} {}", self.start, self.end, show_rate(self.rate))
    }
}

/// Why a schedule cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("`{0}` is not a time of day: expected HH:MM, e.g. 08:00 or 22:30")]
    BadTime(String),
    #[error("`{0}` is not an upload rate: {1} (e.g. 200KiB, 5MiB, or unlimited)")]
    BadRate(String, String),
    #[error("`{0}` is not an upload window: expected START-END=RATE, e.g. 08:00-18:00=200KiB")]
    BadWindow(String),
    #[error("the upload window {0} is empty: its start and end are the same time")]
    Empty(String),
    #[error("the upload windows {0} and {1} overlap; give each minute of the day one rate")]
    Overlap(String, String),
}

/// The default rate and the windows that override it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    default: Rate,
    windows: Vec<Window>,
}

impl Schedule {
    /// A schedule of `windows` over `default`; refuses empty or overlapping windows.
    pub fn new(default: Rate, windows: Vec<Window>) -> Result<Self, ScheduleError> {
        for (i, w) in windows.iter().enumerate() {
            if w.start == w.end {
                return Err(ScheduleError::Empty(w.to_string()));
            }
            for other in &windows[..i] {
                let overlap = w.ranges().iter().any(|a| {
                    other
                        .ranges()
                        .iter()
                        .any(|b| a.start < b.end && b.start < a.end)
                });
                if overlap {
                    return Err(ScheduleError::Overlap(other.to_string(), w.to_string()));
                }
            }
        }
        Ok(Self { default, windows })
    }

    /// The same rate all day.
    pub fn constant(rate: Rate) -> Self {
        Self {
            default: rate,
            windows: Vec::new(),
        }
    }

    /// The rate outside every window.
    pub fn default_rate(&self) -> Rate {
        self.default
    }

    /// The windows.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// The rate in force at minute `m` of the day (taken modulo a day).
    pub fn rate_at(&self, m: u16) -> Rate {
        let m = m % DAY_MINUTES;
        self.windows
            .iter()
            .find(|w| w.covers(m))
            .map_or(self.default, |w| w.rate)
    }

    /// Minutes from minute `m` until a window starts or ends (1 to a whole day; a day when the
    /// schedule never changes).
    pub fn minutes_to_change(&self, m: u16) -> u16 {
        let m = m % DAY_MINUTES;
        self.windows
            .iter()
            .flat_map(|w| [w.start.0, w.end.0])
            .map(|edge| (edge + DAY_MINUTES - m - 1) % DAY_MINUTES + 1)
            .min()
            .unwrap_or(DAY_MINUTES)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", show_rate(self.default))?;
        for w in &self.windows {
            write!(f, ", {w}")?;
        }
        Ok(())
    }
}

/// One window as the config file writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Start of the window, local time, `HH:MM` (included).
    pub from: String,
    /// End of the window, local time, `HH:MM` (excluded); before `from` wraps past midnight.
    pub to: String,
    /// Upload limit inside the window, e.g. "200KiB" (per second), or "unlimited".
    pub limit: String,
}

impl TryFrom<&WindowConfig> for Window {
    type Error = ScheduleError;

    fn try_from(w: &WindowConfig) -> Result<Self, ScheduleError> {
        Ok(Self {
            start: w.from.parse()?,
            end: w.to.parse()?,
            rate: parse_rate(&w.limit)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> u16 {
        text.parse::<TimeOfDay>().unwrap().minutes()
    }

    fn rate(bytes: u32) -> Rate {
        NonZeroU32::new(bytes)
    }

    fn office_hours() -> Schedule {
        Schedule::new(rate(5 << 20), vec!["08:00-18:00=200KiB".parse().unwrap()]).unwrap()
    }

    #[test]
    fn times_of_day_parse_strictly() {
        assert_eq!(t("00:00"), 0);
        assert_eq!(t("8:05"), 8 * 60 + 5);
        assert_eq!(t("23:59"), DAY_MINUTES - 1);
        assert_eq!(t("24:00"), 0);
        for bad in [
            "24:01", "12:60", "12", "12:5", "-1:00", "ab:cd", "", "123:00",
        ] {
            assert!(
                matches!(bad.parse::<TimeOfDay>(), Err(ScheduleError::BadTime(_))),
                "{bad}"
            );
        }
        assert_eq!(TimeOfDay::new(7, 3).unwrap().to_string(), "07:03");
    }

    #[test]
    fn rates_take_sizes_and_unlimited() {
        assert_eq!(parse_rate("200KiB").unwrap(), rate(200 * 1024));
        assert_eq!(parse_rate("5MiB").unwrap(), rate(5 << 20));
        assert_eq!(parse_rate("0").unwrap(), None);
        assert_eq!(parse_rate("unlimited").unwrap(), None);
        let err = parse_rate("5GiB").unwrap_err();
        assert!(err.to_string().contains("below 4GiB"), "{err}");
        assert!(matches!(
            parse_rate("fast"),
            Err(ScheduleError::BadRate(..))
        ));
        assert_eq!(show_rate(rate(200 * 1024)), "200.0 KiB/s");
        assert_eq!(show_rate(None), "unlimited");
    }

    #[test]
    fn a_window_covers_its_start_but_not_its_end() {
        let s = office_hours();
        assert_eq!(s.rate_at(t("07:59")), rate(5 << 20));
        assert_eq!(s.rate_at(t("08:00")), rate(200 * 1024));
        assert_eq!(s.rate_at(t("17:59")), rate(200 * 1024));
        assert_eq!(s.rate_at(t("18:00")), rate(5 << 20));
        assert_eq!(s.rate_at(t("00:00")), rate(5 << 20));
        // Until the next edge: the start, then the end, then the start again tomorrow.
        assert_eq!(s.minutes_to_change(t("07:59")), 1);
        assert_eq!(s.minutes_to_change(t("08:00")), 10 * 60);
        assert_eq!(s.minutes_to_change(t("17:59")), 1);
        assert_eq!(s.minutes_to_change(t("18:00")), 14 * 60);
        assert_eq!(s.minutes_to_change(t("23:00")), 9 * 60);
    }

    #[test]
    fn overnight_windows_wrap_past_midnight() {
        let s = Schedule::new(None, vec!["22:00-06:00=1MiB".parse().unwrap()]).unwrap();
        assert_eq!(s.rate_at(t("21:59")), None);
        assert_eq!(s.rate_at(t("22:00")), rate(1 << 20));
        assert_eq!(s.rate_at(t("23:59")), rate(1 << 20));
        assert_eq!(s.rate_at(t("00:00")), rate(1 << 20));
        assert_eq!(s.rate_at(t("05:59")), rate(1 << 20));
        assert_eq!(s.rate_at(t("06:00")), None);
        assert_eq!(s.minutes_to_change(t("23:00")), 7 * 60);
        assert_eq!(s.minutes_to_change(t("06:00")), 16 * 60);
        // Ending at midnight is written 24:00 or 00:00.
        let late = Schedule::new(None, vec!["20:00-24:00=1MiB".parse().unwrap()]).unwrap();
        assert_eq!(late.rate_at(t("23:59")), rate(1 << 20));
        assert_eq!(late.rate_at(t("00:00")), None);
        assert_eq!(late.minutes_to_change(t("23:59")), 1);
    }

    #[test]
    fn adjacent_windows_and_a_schedule_without_any() {
        let s = Schedule::new(
            rate(1000),
            vec![
                "08:00-12:00=2000".parse().unwrap(),
                "12:00-13:00=unlimited".parse().unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(s.rate_at(t("11:59")), rate(2000));
        assert_eq!(s.rate_at(t("12:00")), None);
        assert_eq!(s.rate_at(t("13:00")), rate(1000));
        let flat = Schedule::constant(rate(7));
        assert_eq!(flat.rate_at(t("03:00")), rate(7));
        assert_eq!(flat.minutes_to_change(t("03:00")), DAY_MINUTES);
        assert_eq!(flat.to_string(), "7 B/s");
    }

    #[test]
    fn invalid_schedules_are_refused_with_the_reason() {
        let w = |s: &str| s.parse::<Window>();
        assert!(matches!(w("08:00-18:00"), Err(ScheduleError::BadWindow(_))));
        assert!(matches!(w("08:00=1MiB"), Err(ScheduleError::BadWindow(_))));
        assert!(matches!(w("8h-18:00=1MiB"), Err(ScheduleError::BadTime(_))));
        assert!(matches!(
            w("08:00-18:00=lots"),
            Err(ScheduleError::BadRate(..))
        ));
        let err = Schedule::new(None, vec![w("08:00-08:00=1MiB").unwrap()]).unwrap_err();
        assert!(matches!(err, ScheduleError::Empty(_)), "{err}");
        let err = Schedule::new(
            None,
            vec![
                w("08:00-18:00=1MiB").unwrap(),
                w("17:00-19:00=2MiB").unwrap(),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, ScheduleError::Overlap(..)), "{err}");
        assert!(err.to_string().contains("08:00-18:00"), "{err}");
        // An overnight window overlapping one in the morning.
        let err = Schedule::new(
            None,
            vec![
                w("22:00-06:00=1MiB").unwrap(),
                w("05:00-07:00=2MiB").unwrap(),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, ScheduleError::Overlap(..)), "{err}");
        // Two overnight windows always overlap at midnight.
        assert!(
            Schedule::new(
                None,
                vec![
                    w("22:00-01:00=1MiB").unwrap(),
                    w("23:00-02:00=2MiB").unwrap()
                ],
            )
            .is_err()
        );
    }
}
