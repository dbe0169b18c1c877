//! History and groups: what a node's past online sessions say about it. Sans-IO: sessions,
//! declared facts and `now` come in (Unix seconds, UTC), numbers and group memberships come out.
//! The database keeps the sessions; this module never reads a clock or a table.
//!
//! * [`availability`]: the fraction of a window (5 or 30 days) a node was online.
//! * [`typical_hours`]: the UTC hours of day a node is usually online, as a 24-bit mask, and
//!   [`render_hours`] to show it as `08-18,20-23`.
//! * [`NodeProfile`]: those numbers for one node, plus bandwidth, age and location.
//! * [`groups`]: most available, fastest, new (unvetted), and [`by_location`], under
//!   [`GroupRules`]. Placement turns a profile into a weight with
//!   [`crate::placement::weight`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use overlay::Multiaddr;

/// Seconds in an hour.
pub const HOUR: u64 = 3600;
/// Seconds in a day (Unix time has no leap seconds, so UTC days are exactly this long).
pub const DAY: u64 = 24 * HOUR;
/// The short availability window.
pub const WINDOW_5D: u64 = 5 * DAY;
/// The long availability window, also used for typical hours.
pub const WINDOW_30D: u64 = 30 * DAY;

/// One online session of a node: from its join to its leave (or to when it was found offline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// When the node came online.
    pub start: u64,
    /// When it went offline; `None` while it is still online.
    pub end: Option<u64>,
}

impl Session {
    /// A closed session.
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end: Some(end),
        }
    }

    /// A session still running.
    pub fn open(start: u64) -> Self {
        Self { start, end: None }
    }
}

/// The sessions clipped to `[from, to]`, sorted and merged: disjoint, non-empty intervals.
/// Open sessions run to `to`; sessions ending before they start count as empty.
fn merged(sessions: &[Session], from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = sessions
        .iter()
        .filter_map(|s| {
            let start = s.start.max(from);
            let end = s.end.unwrap_or(to).min(to);
            (end > start).then_some((start, end))
        })
        .collect();
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// Seconds online in `[from, to]`, overlapping sessions counted once.
pub fn online_secs(sessions: &[Session], from: u64, to: u64) -> u64 {
    merged(sessions, from, to).iter().map(|(s, e)| e - s).sum()
}

/// The fraction of `[now - window, now]` covered by `sessions` (0.0 to 1.0; 0.0 for an empty
/// history or a zero window).
///
/// Time before the node registered counts as offline: a node three days old has at most 0.1
/// over 30 days. Trust is earned, and placement keeps new nodes apart anyway.
pub fn availability(sessions: &[Session], now: u64, window: u64) -> f64 {
    if window == 0 {
        return 0.0;
    }
    let from = now.saturating_sub(window);
    online_secs(sessions, from, now) as f64 / window as f64
}

/// The UTC hours of day during which the node is usually online: bit `h` (0 = 00:00-01:00)
/// is set when, on at least half of the days the node existed within `[now - window, now]`,
/// it was online for at least half of that hour.
///
/// Precisely: the node exists from the first whole hour after its earliest session start (the
/// window start if later); every whole clock hour between then and `now` is one observation of
/// its hour of day; an hour of day needs at least one observation. An empty history gives 0.
pub fn typical_hours(sessions: &[Session], now: u64, window: u64) -> u32 {
    let Some(earliest) = sessions.iter().map(|s| s.start).min() else {
        return 0;
    };
    let from = now.saturating_sub(window).max(earliest);
    let spans = merged(sessions, from, now);
    let mut observed = [0u32; 24];
    let mut online = [0u32; 24];
    let mut next_span = 0;
    let mut slot = from.div_ceil(HOUR) * HOUR;
    while slot + HOUR <= now {
        let slot_end = slot + HOUR;
        // Spans ending before this slot can never overlap a later one.
        while next_span < spans.len() && spans[next_span].1 <= slot {
            next_span += 1;
        }
        let mut covered = 0;
        for &(start, end) in spans[next_span..].iter().take_while(|s| s.0 < slot_end) {
            covered += end.min(slot_end) - start.max(slot);
        }
        let hour = ((slot % DAY) / HOUR) as usize;
        observed[hour] += 1;
        if covered * 2 >= HOUR {
            online[hour] += 1;
        }
        slot = slot_end;
    }
    (0..24)
        .filter(|&h| observed[h] > 0 && online[h] * 2 >= observed[h])
        .fold(0, |mask, h| mask | 1 << h)
}

/// Renders an hours mask as ranges of whole UTC hours, end exclusive: `08-18,20-23` means
/// 08:00 to 18:00 and 20:00 to 23:00. A range across midnight reads `22-02`; every hour reads
/// `00-24`; no hour reads `-`.
pub fn render_hours(mask: u32) -> String {
    let mask = mask & 0x00ff_ffff;
    if mask == 0 {
        return "-".into();
    }
    if mask == 0x00ff_ffff {
        return "00-24".into();
    }
    let on = |h: u32| mask & (1 << (h % 24)) != 0;
    // Start the scan at an hour that is off, so no range is cut in two at midnight.
    let first_off = (0..24).find(|&h| !on(h)).expect("not every hour is on");
    let mut ranges = Vec::new();
    let mut h = first_off + 1;
    while h < first_off + 25 {
        if on(h) {
            let start = h;
            while on(h) {
                h += 1;
            }
            ranges.push((start % 24, h % 24));
        }
        h += 1;
    }
    ranges.sort_unstable();
    ranges
        .iter()
        .map(|&(start, end)| {
            let end = if end == 0 { 24 } else { end };
            format!("{start:02}-{end:02}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A node's location key for grouping: its IPv4 /16 (`10.1`) or IPv6 /32 (`2001:db8`).
pub fn location_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            format!("{}.{}", o[0], o[1])
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            format!("{:x}:{:x}", s[0], s[1])
        }
    }
}

/// The location key of a node's first IP address, or `unknown` when it announced none.
pub fn location(addrs: &[Multiaddr]) -> String {
    addrs
        .iter()
        .flat_map(|a| a.iter())
        .find_map(|p| match p {
            Protocol::Ip4(ip) => Some(location_of(ip.into())),
            Protocol::Ip6(ip) => Some(location_of(ip.into())),
            _ => None,
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What the coordinator knows about one node, the input of [`NodeProfile::new`].
#[derive(Clone, Debug)]
pub struct NodeHistory<'a> {
    /// The node's online sessions (at least the last 30 days; older ones are harmless).
    pub sessions: &'a [Session],
    /// When the node first registered.
    pub registered_at: u64,
    /// Upload bandwidth the node reported (bytes per second; 0: unknown).
    pub reported_upload_bps: u64,
    /// Upload bandwidth others observed (bytes per second; 0: unknown).
    pub observed_upload_bps: u64,
    /// Location key, from [`location`].
    pub location: String,
}

/// One node's history boiled down to the numbers placement and the operator views use.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeProfile {
    /// Fraction of the last 5 days online.
    pub availability_5d: f64,
    /// Fraction of the last 30 days online.
    pub availability_30d: f64,
    /// Hours of day usually online (see [`typical_hours`]), over the last 30 days.
    pub typical_hours: u32,
    /// Upload bandwidth, bytes per second: the better of reported and observed.
    pub upload_bps: u64,
    /// Seconds since registration.
    pub age: u64,
    /// Seconds online over all the sessions given.
    pub online_secs: u64,
    /// Location key (IPv4 /16, IPv6 /32).
    pub location: String,
}

impl NodeProfile {
    /// The profile of a node at `now`.
    pub fn new(history: &NodeHistory<'_>, now: u64) -> Self {
        let sessions = history.sessions;
        Self {
            availability_5d: availability(sessions, now, WINDOW_5D),
            availability_30d: availability(sessions, now, WINDOW_30D),
            typical_hours: typical_hours(sessions, now, WINDOW_30D),
            // A node may overstate itself, but observation only ever sees part of its
            // capacity; the better of the two is the best guess, and placement damps it
            // (logarithmic bandwidth factor).
            upload_bps: history.reported_upload_bps.max(history.observed_upload_bps),
            age: now.saturating_sub(history.registered_at),
            online_secs: online_secs(sessions, 0, now),
            location: history.location.clone(),
        }
    }
}

/// Thresholds of the groups.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupRules {
    /// The top share of vetted nodes (by 30-day availability, by bandwidth) that forms the
    /// most-available and fastest groups: 0.25 is the top quartile.
    pub top_fraction: f64,
    /// Most available also needs at least this 30-day availability.
    pub min_availability: f64,
    /// A node younger than this (seconds) is new.
    pub vetting_age: u64,
    /// A node online for less than this in total (seconds) is new.
    pub vetting_online: u64,
}

impl Default for GroupRules {
    fn default() -> Self {
        Self {
            top_fraction: 0.25,
            min_availability: 0.9,
            vetting_age: 3 * DAY,
            vetting_online: 24 * HOUR,
        }
    }
}

impl GroupRules {
    /// Whether a node has proven itself: old enough and online long enough.
    pub fn is_vetted(&self, profile: &NodeProfile) -> bool {
        profile.age >= self.vetting_age && profile.online_secs >= self.vetting_online
    }
}

/// The groups one node belongs to (besides its location).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Groups {
    /// In the top share of vetted nodes by 30-day availability, and above the minimum.
    pub most_available: bool,
    /// In the top share of vetted nodes by upload bandwidth (a known one).
    pub fastest: bool,
    /// Not yet vetted; a new node is in no other group.
    pub new: bool,
}

impl Groups {
    /// A short label for the CLI: `available,fast`, `new`, or `-` for none.
    pub fn label(&self) -> String {
        let names: Vec<&str> = [
            (self.new, "new"),
            (self.most_available, "available"),
            (self.fastest, "fast"),
        ]
        .into_iter()
        .filter_map(|(member, name)| member.then_some(name))
        .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join(",")
        }
    }
}

impl std::fmt::Display for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// The lowest value in the top `fraction` of `values` (ties at the bound all count as in);
/// `None` when the top share is empty.
fn top_threshold<T: Copy + PartialOrd>(mut values: Vec<T>, fraction: f64) -> Option<T> {
    let k = (values.len() as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize;
    if k == 0 {
        return None;
    }
    values.sort_unstable_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    values.get(k - 1).copied()
}

/// The groups of every node, in the order of `profiles`. Rankings are among vetted nodes only:
/// new nodes would otherwise drag the bounds down while having no record to rank.
pub fn groups(profiles: &[NodeProfile], rules: &GroupRules) -> Vec<Groups> {
    let vetted: Vec<bool> = profiles.iter().map(|p| rules.is_vetted(p)).collect();
    let ranked = || {
        profiles
            .iter()
            .zip(&vetted)
            .filter_map(|(p, &v)| v.then_some(p))
    };
    let available = top_threshold(
        ranked()
            .map(|p| p.availability_30d)
            .filter(|a| !a.is_nan())
            .collect(),
        rules.top_fraction,
    );
    let fast = top_threshold(
        ranked().map(|p| p.upload_bps).filter(|&b| b > 0).collect(),
        rules.top_fraction,
    );
    profiles
        .iter()
        .zip(&vetted)
        .map(|(p, &v)| Groups {
            most_available: v
                && available.is_some_and(|t| p.availability_30d >= t)
                && p.availability_30d >= rules.min_availability,
            fastest: v && p.upload_bps > 0 && fast.is_some_and(|t| p.upload_bps >= t),
            new: !v,
        })
        .collect()
}

/// The nodes of each location, as indices into `profiles`.
pub fn by_location(profiles: &[NodeProfile]) -> BTreeMap<&str, Vec<usize>> {
    let mut out: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in profiles.iter().enumerate() {
        out.entry(p.location.as_str()).or_default().push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000 / DAY * DAY; // a UTC midnight

    #[test]
    fn empty_history_is_never_available() {
        assert_eq!(availability(&[], NOW, WINDOW_30D), 0.0);
        assert_eq!(availability(&[Session::open(0)], NOW, 0), 0.0);
        assert_eq!(typical_hours(&[], NOW, WINDOW_30D), 0);
        assert_eq!(render_hours(0), "-");
    }

    #[test]
    fn overlapping_sessions_count_once() {
        let s = [Session::new(100, 200), Session::new(150, 300)];
        // Window [100, 500]: 100..300 online, 400 seconds long.
        assert_eq!(availability(&s, 500, 400), 0.5);
        // A session inside another adds nothing.
        let s = [Session::new(100, 300), Session::new(150, 200)];
        assert_eq!(availability(&s, 500, 400), 0.5);
        // Touching sessions merge without a gap.
        let s = [Session::new(100, 200), Session::new(200, 300)];
        assert_eq!(online_secs(&s, 0, 500), 200);
    }

    #[test]
    fn an_open_session_runs_until_now() {
        let s = [Session::new(100, 200), Session::open(400)];
        // [100, 500]: 100..200 and 400..500.
        assert_eq!(availability(&s, 500, 400), 0.5);
        assert_eq!(
            availability(&[Session::open(NOW - HOUR)], NOW, 2 * HOUR),
            0.5
        );
        // An end after now (clock skew) is clipped.
        assert_eq!(availability(&[Session::new(0, 1000)], 500, 100), 1.0);
    }

    #[test]
    fn sessions_older_than_the_window_are_clipped_or_ignored() {
        let s = [
            Session::new(0, 50),    // entirely before the window
            Session::new(50, 150),  // half in: 100..150
            Session::new(450, 400), // malformed: ends before it starts
        ];
        assert_eq!(availability(&s, 500, 400), 50.0 / 400.0);
        // A node online for the last 3 of 30 days.
        let s = [Session::open(NOW - 3 * DAY)];
        assert_eq!(availability(&s, NOW, WINDOW_30D), 0.1);
        assert_eq!(availability(&s, NOW, WINDOW_5D), 0.6);
    }

    fn office_hours(days: u64) -> Vec<Session> {
        (1..=days)
            .map(|d| {
                let day = NOW - d * DAY;
                Session::new(day + 8 * HOUR, day + 18 * HOUR)
            })
            .collect()
    }

    #[test]
    fn a_node_online_from_8_to_18_every_day() {
        let s = office_hours(30);
        let mask = typical_hours(&s, NOW, WINDOW_30D);
        assert_eq!(mask, 0b0000_0011_1111_1111_0000_0000);
        assert_eq!(render_hours(mask), "08-18");
        assert_eq!(availability(&s, NOW, WINDOW_30D), 10.0 / 24.0);
        // Only 10 of the last 30 days: hours are judged over the days the node existed.
        assert_eq!(typical_hours(&office_hours(10), NOW, WINDOW_30D), mask);
    }

    #[test]
    fn typical_hours_need_half_of_the_days() {
        // Online 20:00-23:00 on 15 of 30 days (every other day), and once at noon.
        let mut s: Vec<Session> = (1..=30)
            .filter(|d| d % 2 == 0)
            .map(|d| {
                let day = NOW - d * DAY;
                Session::new(day + 20 * HOUR, day + 23 * HOUR)
            })
            .collect();
        s.push(Session::new(
            NOW - 30 * DAY + 12 * HOUR,
            NOW - 30 * DAY + 13 * HOUR,
        ));
        assert_eq!(render_hours(typical_hours(&s, NOW, WINDOW_30D)), "20-23");
        // Half an hour online counts as that hour; a quarter does not.
        let s: Vec<Session> = (1..=5)
            .map(|d| {
                let day = NOW - d * DAY;
                Session::new(day + 6 * HOUR + 1800, day + 7 * HOUR + 900)
            })
            .collect();
        assert_eq!(render_hours(typical_hours(&s, NOW, WINDOW_5D)), "06-07");
    }

    #[test]
    fn hours_render_as_ranges() {
        let bits = |hours: &[u32]| hours.iter().fold(0u32, |m, h| m | 1 << h);
        assert_eq!(render_hours(bits(&[8, 9, 10, 20, 21, 22])), "08-11,20-23");
        assert_eq!(render_hours(bits(&[22, 23, 0, 1])), "22-02");
        assert_eq!(render_hours(bits(&[0, 1, 5])), "00-02,05-06");
        assert_eq!(render_hours(bits(&[23])), "23-24");
        assert_eq!(render_hours(0x00ff_ffff), "00-24");
    }

    #[test]
    fn locations_are_slash_16_prefixes() {
        let a: Multiaddr = "/ip4/10.1.2.3/udp/5/quic-v1".parse().unwrap();
        let b: Multiaddr = "/ip6/2001:db8::1/udp/5/quic-v1".parse().unwrap();
        assert_eq!(location(&[a]), "10.1");
        assert_eq!(location(&[b]), "2001:db8");
        assert_eq!(location(&[]), "unknown");
    }

    fn profile(a30: f64, bps: u64, age_days: u64) -> NodeProfile {
        NodeProfile {
            availability_5d: a30,
            availability_30d: a30,
            typical_hours: 0,
            upload_bps: bps,
            age: age_days * DAY,
            online_secs: (a30 * (age_days.min(30) * DAY) as f64) as u64,
            location: "10.1".into(),
        }
    }

    #[test]
    fn profiles_combine_history_and_declarations() {
        let sessions = [Session::new(NOW - 10 * DAY, NOW - 5 * DAY)];
        let p = NodeProfile::new(
            &NodeHistory {
                sessions: &sessions,
                registered_at: NOW - 12 * DAY,
                reported_upload_bps: 1_000_000,
                observed_upload_bps: 3_000_000,
                location: "10.1".into(),
            },
            NOW,
        );
        assert_eq!(p.availability_5d, 0.0);
        assert_eq!(p.availability_30d, 5.0 / 30.0);
        assert_eq!(p.typical_hours, 0x00ff_ffff);
        assert_eq!(p.upload_bps, 3_000_000);
        assert_eq!(p.age, 12 * DAY);
        assert_eq!(p.online_secs, 5 * DAY);
    }

    #[test]
    fn groups_rank_vetted_nodes() {
        let rules = GroupRules::default();
        let profiles = vec![
            profile(0.99, 10_000_000, 30), // available and fast
            profile(0.95, 1_000_000, 30),  // available and (second) fast
            profile(0.50, 500_000, 30),
            profile(0.40, 0, 30),
            profile(0.30, 200_000, 30),
            profile(0.20, 100_000, 30),
            profile(0.10, 50_000, 30),
            profile(0.05, 20_000, 30),
            profile(1.00, 90_000_000, 2), // too young: new, nothing else
        ];
        let g = groups(&profiles, &rules);
        // Eight vetted nodes: the top quartile is two of them.
        let labels: Vec<String> = g.iter().map(Groups::label).collect();
        assert_eq!(
            labels,
            [
                "available,fast",
                "available,fast",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "new"
            ]
        );
        // The minimum availability applies even inside the top quartile.
        let low = vec![profile(0.8, 1, 30), profile(0.7, 1, 30)];
        assert!(groups(&low, &rules).iter().all(|g| !g.most_available));
        // Too little time online is new too, however old.
        let mut idle = profile(0.0, 1, 30);
        idle.online_secs = HOUR;
        assert!(!rules.is_vetted(&idle));
        assert_eq!(groups(&[idle], &rules)[0].label(), "new");
        assert!(groups(&[], &rules).is_empty());
    }

    #[test]
    fn nodes_group_by_location() {
        let mut a = profile(0.5, 1, 30);
        let b = a.clone();
        a.location = "10.2".into();
        let profiles = [a, b.clone(), b];
        let map = by_location(&profiles);
        assert_eq!(map["10.1"], vec![1, 2]);
        assert_eq!(map["10.2"], vec![0]);
    }
}
