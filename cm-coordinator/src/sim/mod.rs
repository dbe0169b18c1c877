//! The simulator: a collective of simulated nodes, clients and time driving the coordinator's
//! own sans-IO cores (liveness, placement, repair), to answer what a few dozen processes on one
//! machine cannot: how durable content is under churn, what repair costs, what a million
//! nodes offer.
//!
//! Deterministic: a run is a function of its configuration and seed (one portable PCG
//! generator, events ordered by time, kind and node), with virtual time and no sockets.
//!
//! # Layout
//!
//! * [`config`]: the TOML configuration, documented field by field.
//! * [`population`]: simulated nodes (bandwidth, disk, cores, network, habits) and their
//!   identities.
//! * [`world`]: the event loop: sessions, departures and arrivals; liveness fed with joins,
//!   leaves, heartbeats and probe answers; placement and repair of every scheme's catalog.
//! * [`economy`]: tickets and downloads, honest and cheating claims, audits, and the
//!   coordinator's reconciliation and pay cores settling them every night.
//! * [`report`]: tables, JSON summary and charts written to the output directory.
//! * [`plot`]: SVG charts.
//! * [`variants`]: several runs from one file (`[[variant]]`), compared in tables and charts.

pub mod config;
pub mod economy;
pub mod plot;
pub mod population;
pub mod report;
pub mod variants;
pub mod world;

use std::path::Path;

pub use config::SimConfig;
pub use report::Summary;

/// Errors of a simulation run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot write the results to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Runs one simulation and writes its results into `out`.
pub fn simulate(cfg: &SimConfig, seed: u64, out: &Path) -> Result<Summary, SimError> {
    cfg.validate()?;
    let outcome = world::World::new(cfg.clone(), seed).run();
    let summary = report::summarise(cfg, seed, &outcome);
    report::write(out, cfg, &summary, &outcome).map_err(|source| SimError::Write {
        path: out.display().to_string(),
        source,
    })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::config::{Dist, NodeClass, Scheme};
    use super::*;

    /// A small collective: a few hundred nodes, a few days, two schemes.
    fn small() -> SimConfig {
        let mut cfg = SimConfig {
            nodes: 300,
            days: 4,
            ..SimConfig::default()
        };
        cfg.catalog.contents = 10;
        cfg.catalog.segments = (4, 12);
        cfg.catalog.publish_day = 1;
        cfg.catalog.schemes = vec![
            Scheme {
                name: "RS(8,4)".into(),
                k: 8,
                m: 4,
                repair: true,
            },
            Scheme {
                name: "3 replicas, no repair".into(),
                k: 1,
                m: 2,
                repair: false,
            },
        ];
        cfg.repair.candidates = 100;
        cfg
    }

    fn all_honest(cfg: &mut SimConfig) {
        let s = &mut cfg.economy.strategies;
        s.over_claim.share = 0.0;
        s.drop_data.share = 0.0;
        s.collude.share = 0.0;
        s.whitewash.share = 0.0;
    }

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_same_seed_writes_the_same_files_and_another_seed_does_not() {
        let cfg = small();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        simulate(&cfg, 7, dirs[0].path()).unwrap();
        simulate(&cfg, 7, dirs[1].path()).unwrap();
        simulate(&cfg, 8, dirs[2].path()).unwrap();
        let (a, b, c) = (
            files(dirs[0].path()),
            files(dirs[1].path()),
            files(dirs[2].path()),
        );
        let names: Vec<&str> = a.iter().map(|f| f.0.as_str()).collect();
        for expected in [
            "capacity.svg",
            "config.toml",
            "durability.csv",
            "durability.svg",
            "report.md",
            "repair_traffic.svg",
            "summary.json",
            "timeseries.csv",
            "unavailable.svg",
        ] {
            assert!(names.contains(&expected), "{expected} missing: {names:?}");
        }
        assert_eq!(a, b, "same seed, same files");
        let summary = |f: &[(String, Vec<u8>)]| f.iter().find(|x| x.0 == "summary.json").cloned();
        assert_ne!(summary(&a), summary(&c), "another seed, another run");
    }

    const FOREVER: Duration = Duration::from_secs(3650 * 86_400);

    /// Every machine is on all the time (sessions of ten years on average, gaps of a second).
    fn always_on(cfg: &mut SimConfig) {
        cfg.population.classes = vec![NodeClass {
            name: "always on".into(),
            share: 1.0,
            online: Dist::Exponential { mean: FOREVER },
            offline: Dist::Exponential {
                mean: Duration::from_secs(1),
            },
        }];
    }

    #[test]
    fn without_churn_nothing_is_repaired_lost_or_unreadable() {
        let mut cfg = small();
        always_on(&mut cfg);
        cfg.population.mean_lifetime = FOREVER;
        cfg.population.arrivals_per_day = Some(0.0);
        all_honest(&mut cfg);
        let dir = tempfile::tempdir().unwrap();
        let s = simulate(&cfg, 1, dir.path()).unwrap();
        assert_eq!(s.departures, 0);
        for scheme in &s.schemes {
            assert!(scheme.segments > 0);
            assert_eq!(
                (scheme.repairs, scheme.lost, scheme.unplaced),
                (0, 0, 0),
                "{}",
                scheme.name
            );
            assert_eq!(scheme.unavailability, 0.0, "{}", scheme.name);
        }
        assert_eq!(s.offline_unreachable, 0);
        let e = s.economy.expect("the economy runs by default");
        assert!(e.downloads > 100 && e.audits > 100, "{e:?}");
        assert_eq!(e.downloads_failed, 0);
        assert_eq!(e.audits_failed, 0);
        assert!(
            e.verdicts.is_empty(),
            "all honest, no verdicts: {:?}",
            e.verdicts
        );
        let honest = &e.strategies[0];
        assert_eq!((honest.strategy.as_str(), honest.offences), ("honest", 0));
        assert!(honest.net_per_machine > 0.0);
    }

    /// Nodes that inflate every claim with a forged receipt are caught exactly when the
    /// reconciliation core checks the receipt in depth: at the configured rate on the first
    /// night, before anyone is watched.
    #[test]
    fn always_cheating_nodes_are_caught_at_the_deep_check_rate() {
        let mut cfg = small();
        cfg.days = 4;
        cfg.nodes = 600;
        all_honest(&mut cfg);
        cfg.economy.downloads_per_day = 3000.0;
        cfg.economy.completion_reports = 0.0;
        cfg.economy.strategies.over_claim.share = 0.5;
        cfg.economy.strategies.over_claim.probability = 1.0;
        let p = 0.1;
        cfg.economy.reconcile.deep_check_rate = p;
        let outcome = world::World::new(cfg, 11).run();
        let e = outcome.economy.unwrap();
        let first = &e.days[0];
        let caught = first.verdicts.get("ForgedReceipt").copied().unwrap_or(0);
        let n = first.inflated as f64;
        assert!(n > 2000.0, "{first:?}");
        let rate = caught as f64 / n;
        let sigma = (p * (1.0 - p) / n).sqrt();
        assert!(
            (rate - p).abs() < 4.0 * sigma,
            "caught {caught} of {n} inflated claims: {rate:.4}, expected {p} ± {:.4}",
            4.0 * sigma
        );
        // Caught nodes are watched from then on: the second night catches nearly every one
        // of their inflated claims, and the over-claimers end below honest nodes.
        let second = &e.days[1];
        let caught2 = second.verdicts.get("ForgedReceipt").copied().unwrap_or(0);
        assert!(caught2 as f64 / second.inflated as f64 > rate, "{second:?}");
        let row = |name: &str| e.strategies.iter().find(|r| r.strategy == name).unwrap();
        assert!(row("over-claim").net_per_machine < row("honest").net_per_machine);
    }

    #[test]
    fn departures_are_repaired_and_only_the_unrepaired_lose_segments() {
        let mut cfg = small();
        cfg.days = 8;
        // Always on, but every node leaves for good within days on average.
        always_on(&mut cfg);
        cfg.population.mean_lifetime = Duration::from_secs(4 * 86_400);
        let dir = tempfile::tempdir().unwrap();
        let s = simulate(&cfg, 3, dir.path()).unwrap();
        assert!(s.departures > 300, "{}", s.departures);
        let (rs, replicas) = (&s.schemes[0], &s.schemes[1]);
        assert!(rs.repairs > 0 && rs.fragments_rebuilt > 0);
        assert_eq!(rs.lost, 0, "repair keeps up with departures");
        assert_eq!(replicas.repairs, 0);
        assert!(
            replicas.lost > 0,
            "without repair, departures lose segments"
        );
    }
}
