//! Simulated nodes: who they are (bandwidth, disk, cores, network, habits) and when they come
//! and go. Identities are real [`PeerId`]s that carry their index, so the coordinator's cores
//! key them as they key real nodes and the simulator finds a node again without a map.

use libp2p::multihash::Multihash;
use overlay::PeerId;
use rand::{Rng, RngExt};
use rand_distr::{Distribution, Exp, LogNormal, Pareto, StandardNormal};

use super::config::{Dist, Population, Spread};
use crate::placement::Subnet;

/// `"ccds-sim"`, then the index: an identity multihash no real key produces.
const TAG: &[u8; 8] = b"ccds-sim";
const IDENTITY: u64 = 0x00;

/// The simulated identity of node `index`.
pub fn peer(index: u32) -> PeerId {
    let mut digest = [0u8; 12];
    digest[..8].copy_from_slice(TAG);
    digest[8..].copy_from_slice(&index.to_le_bytes());
    let hash = Multihash::<64>::wrap(IDENTITY, &digest).expect("12 bytes fit");
    PeerId::from_multihash(hash).expect("a short identity multihash is a valid peer id")
}

/// The index a simulated identity carries.
pub fn index(peer: &PeerId) -> Option<u32> {
    let hash: &Multihash<64> = peer.as_ref();
    let d = hash.digest();
    (hash.code() == IDENTITY && d.len() == 12 && &d[..8] == TAG)
        .then(|| u32::from_le_bytes(d[8..].try_into().expect("4 bytes")))
}

/// Seconds in a day.
pub const DAY: u64 = 86_400;
/// Days of online time kept per node: the coordinator's 30-day availability window.
pub const WINDOW_DAYS: usize = 30;

/// One simulated node.
#[derive(Clone, Debug)]
pub struct Node {
    pub peer: PeerId,
    pub class: u8,
    pub subnet: Subnet,
    /// Upload bandwidth offered when idle, bytes per second.
    pub upload_bps: u64,
    pub disk_bytes: u64,
    pub cores: u32,
    /// UTC second of the day at which its owner's day of use starts.
    pub use_start: u32,
    /// Scale of its sessions and of its gaps (its habits within its class).
    pub on_scale: f32,
    pub off_scale: f32,
    /// When it registered (simulation seconds; 0 for the nodes present at the start).
    pub born: u64,
    /// When it leaves for good.
    pub departs: u64,
    /// Ground truth: running now.
    pub up: bool,
    pub departed: bool,
    /// When the current session began (if up).
    pub up_since: u64,
    /// Seconds online per day, the last [`WINDOW_DAYS`] days, indexed by day modulo the window.
    pub online_by_day: [u32; WINDOW_DAYS],
    /// Bytes of fragments held.
    pub stored: u64,
    /// Slots of the fragments it holds (see the world's fragment table).
    pub fragments: Vec<u32>,
    /// Fragments ever placed on it, by content (sorted): the coordinator's placement records,
    /// closed ones included, that bound what it may serve.
    pub ever: Vec<(u32, u32)>,
}

impl Node {
    /// Fragments of `content` ever placed on the node.
    pub fn ever_assigned(&self, content: u32) -> u64 {
        self.ever
            .binary_search_by_key(&content, |e| e.0)
            .map_or(0, |i| u64::from(self.ever[i].1))
    }

    /// Records a placement of a fragment of `content`.
    pub fn placed(&mut self, content: u32) {
        match self.ever.binary_search_by_key(&content, |e| e.0) {
            Ok(i) => self.ever[i].1 += 1,
            Err(i) => self.ever.insert(i, (content, 1)),
        }
    }
}

impl Node {
    /// Availability over the last `days` whole days before `today` plus today so far.
    pub fn availability(&self, today: u64, now: u64) -> f64 {
        let mut secs: u64 = self.online_by_day.iter().map(|&s| u64::from(s)).sum();
        let mut span = (WINDOW_DAYS as u64 - 1) * DAY + (now - today * DAY);
        if self.up {
            secs += now - self.up_since.max(today * DAY);
        }
        // A young node is judged on the time it has existed.
        let age = now.saturating_sub(self.born);
        if age > 0 && age < span {
            span = age;
        }
        if span == 0 {
            return 0.0;
        }
        (secs as f64 / span as f64).min(1.0)
    }

    /// Seconds online since registration (all days kept).
    pub fn online_secs(&self, today: u64, now: u64) -> u64 {
        let mut secs: u64 = self.online_by_day.iter().map(|&s| u64::from(s)).sum();
        if self.up {
            secs += now - self.up_since.max(today * DAY);
        }
        secs
    }

    /// Books the online time of the current session up to `now` into the day ring.
    pub fn book(&mut self, now: u64) {
        if !self.up {
            return;
        }
        let mut from = self.up_since;
        while from < now {
            let day = from / DAY;
            let until = now.min((day + 1) * DAY);
            self.online_by_day[(day as usize) % WINDOW_DAYS] += (until - from) as u32;
            from = until;
        }
        self.up_since = now;
    }

    /// Clears the ring slot of a new day.
    pub fn new_day(&mut self, day: u64) {
        self.online_by_day[(day as usize) % WINDOW_DAYS] = 0;
    }

    /// Share of its resources offered at `now` (its owner's day of use offers less).
    pub fn free_share(&self, now: u64, in_use_secs: u32, in_use_free: f64) -> f64 {
        if in_use(now, self.use_start, in_use_secs) {
            in_use_free
        } else {
            1.0
        }
    }
}

/// Whether second `now` falls in a day of use starting at `start` (second of the UTC day)
/// lasting `len` seconds, wrapping past midnight.
pub fn in_use(now: u64, start: u32, len: u32) -> bool {
    let t = (now % DAY) as u32;
    let end = start + len;
    if end <= DAY as u32 {
        (start..end).contains(&t)
    } else {
        t >= start || t < end - DAY as u32
    }
}

/// Draws a duration in seconds (at least one).
pub fn draw(dist: &Dist, scale: f32, rng: &mut impl Rng) -> u64 {
    let secs = match *dist {
        Dist::Pareto { min, shape } => Pareto::new(min.as_secs_f64(), shape)
            .expect("validated")
            .sample(rng),
        Dist::LogNormal { median, sigma } => LogNormal::new(median.as_secs_f64().ln(), sigma)
            .expect("validated")
            .sample(rng),
        Dist::Exponential { mean } => Exp::new(1.0 / mean.as_secs_f64())
            .expect("validated")
            .sample(rng),
    };
    // Capped at ten years: beyond any simulation, and far from overflow.
    (secs * f64::from(scale)).clamp(1.0, 3650.0 * DAY as f64) as u64
}

fn habit(sigma: f64, rng: &mut impl Rng) -> f32 {
    let z: f64 = StandardNormal.sample(rng);
    (sigma * z).exp() as f32
}

fn spread(s: Spread, rng: &mut impl Rng) -> f64 {
    let z: f64 = StandardNormal.sample(rng);
    s.median * (s.sigma * z).exp()
}

/// Picks an index by weight.
pub fn pick(weights: &[f64], rng: &mut impl Rng) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Draws node `index`, registered at `born`, on one of `subnets` networks.
pub fn new_node(p: &Population, index: u32, born: u64, subnets: u32, rng: &mut impl Rng) -> Node {
    let shares: Vec<f64> = p.classes.iter().map(|c| c.share).collect();
    let class = pick(&shares, rng) as u8;
    let on_scale = habit(p.habit_sigma, rng);
    let off_scale = 1.0 / habit(p.habit_sigma, rng);
    let cores_shares: Vec<f64> = p.cores.iter().map(|c| c.1).collect();
    let cores = p.cores[pick(&cores_shares, rng)].0;
    let net = rng.random_range(0..subnets);
    let lifetime = Exp::new(1.0 / p.mean_lifetime.as_secs_f64())
        .expect("validated")
        .sample(rng);
    let (from, to) = p.in_use_start_hours;
    let start_hour = from + (to - from) * rng.random::<f64>();
    Node {
        peer: peer(index),
        class,
        subnet: Subnet::V4([10 + (net >> 16) as u8, (net >> 8) as u8, net as u8]),
        upload_bps: (spread(p.upload_mbit, rng) * 1e6 / 8.0) as u64,
        disk_bytes: (spread(p.disk_gb, rng) * 1e9) as u64,
        cores,
        use_start: ((start_hour * 3600.0) as u32) % DAY as u32,
        on_scale,
        off_scale,
        born,
        departs: born + lifetime.clamp(1.0, 3650.0 * DAY as f64) as u64,
        up: false,
        departed: false,
        up_since: 0,
        online_by_day: [0; WINDOW_DAYS],
        stored: 0,
        fragments: Vec::new(),
        ever: Vec::new(),
    }
}

/// The long-run share of time a node with these habits is up.
pub fn expected_availability(p: &Population, node: &Node) -> f64 {
    let class = &p.classes[node.class as usize];
    let on = class.online.mean_secs() * f64::from(node.on_scale);
    let off = class.offline.mean_secs() * f64::from(node.off_scale);
    on / (on + off)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    use super::*;

    #[test]
    fn identities_carry_their_index_and_real_ones_do_not() {
        for i in [0, 1, 77, u32::MAX] {
            assert_eq!(index(&peer(i)), Some(i));
        }
        assert_ne!(peer(1), peer(2));
        assert_eq!(index(&overlay::Identity::generate().peer_id()), None);
    }

    #[test]
    fn the_day_of_use_wraps_past_midnight() {
        let h = 3600;
        assert!(in_use(9 * h, 8 * h as u32, 10 * h as u32));
        assert!(!in_use(19 * h, 8 * h as u32, 10 * h as u32));
        assert!(in_use(DAY + 3 * h, 20 * h as u32, 10 * h as u32));
        assert!(in_use(21 * h, 20 * h as u32, 10 * h as u32));
        assert!(!in_use(7 * h, 20 * h as u32, 10 * h as u32));
    }

    #[test]
    fn availability_counts_the_window_and_the_session_in_progress() {
        let p = Population::default();
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let mut n = new_node(&p, 0, 0, 100, &mut rng);
        // Up for the first half of each of two days, then up since noon of day 2.
        for day in 0..2 {
            n.up = true;
            n.up_since = day * DAY;
            n.book(day * DAY + DAY / 2);
            n.up = false;
        }
        n.up = true;
        n.up_since = 2 * DAY + DAY / 2;
        let now = 3 * DAY;
        let a = n.availability(2, now);
        assert!((a - 1.5 / 3.0).abs() < 1e-9, "{a}");
        assert_eq!(n.online_secs(2, now), 3 * DAY / 2);
    }

    #[test]
    fn durations_follow_their_distribution() {
        let mut rng = Pcg64Mcg::seed_from_u64(7);
        let d = Dist::Pareto {
            min: std::time::Duration::from_secs(3600),
            shape: 3.0,
        };
        let n = 200_000;
        let mean = (0..n).map(|_| draw(&d, 1.0, &mut rng) as f64).sum::<f64>() / n as f64;
        assert!((mean / d.mean_secs() - 1.0).abs() < 0.02, "{mean}");
        assert!((0..1000).all(|_| draw(&d, 1.0, &mut rng) >= 3600));
    }
}
