//! What a run writes to its output directory: tables (CSV and Markdown), a JSON summary, and
//! SVG charts. Everything is a function of the configuration and seed: no clock, no host
//! names, so two runs with one seed write identical files.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use super::config::SimConfig;
use super::plot::{self, Chart, Line};
use super::world::Outcome;

/// Upload bandwidth the source paper estimates for a million nodes, bytes per second.
pub const PAPER_UPLOAD_PER_MILLION: f64 = 31e9;

/// The headline figures of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub seed: u64,
    pub nodes: u32,
    pub days: u32,
    pub events: u64,
    pub arrivals: u64,
    pub departures: u64,
    pub probes: u64,
    pub offline_unreachable: u64,
    pub whitewashed: u64,
    pub schemes: Vec<SchemeRow>,
    pub capacity: Capacity,
    /// Downloads, verdicts and what each strategy earned; absent when the economy is off.
    pub economy: Option<EconomySummary>,
}

/// The economy's headline figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EconomySummary {
    pub tickets: u64,
    pub downloads: u64,
    pub downloads_failed: u64,
    pub served_bytes_paid: u128,
    pub audits: u64,
    pub audits_failed: u64,
    /// Verdicts by kind over the run.
    pub verdicts: std::collections::BTreeMap<String, u64>,
    pub strategies: Vec<super::economy::StrategyRow>,
    /// Mean over the days of the share of served bytes from the most available quarter.
    pub top_quarter_served: f64,
    /// Owners who quit, underpaid, and their mean age (days) when they did.
    pub quits: u64,
    pub quit_age_days: f64,
    /// Mean age (days) of registered identities on the last day.
    pub mean_age_days: f64,
    /// Identities at each pay level on the last day.
    pub levels: Vec<u64>,
}

/// One scheme's durability and repair figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SchemeRow {
    pub name: String,
    pub k: u8,
    pub m: u8,
    pub repair: bool,
    /// Redundant share of the stored bytes.
    pub overhead: f64,
    pub segments: u64,
    pub lost: u64,
    /// Share of segments lost for good.
    pub lost_share: f64,
    /// Share of segment-time unreadable since publishing.
    pub unavailability: f64,
    pub unavailable_events: u64,
    pub repairs: u64,
    pub repairs_failed: u64,
    pub fragments_rebuilt: u64,
    /// Repair traffic (read + written) per node and day, bytes; and per TB stored and day.
    pub repair_bytes_per_node_day: f64,
    pub repair_bytes_per_tb_day: f64,
    pub unplaced: u64,
}

/// What the collective offers, scaled to a million registered nodes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Capacity {
    pub upload_bytes_per_s_mean: f64,
    pub upload_bytes_per_s_min: f64,
    pub upload_bytes_per_s_max: f64,
    pub upload_idle_bytes_per_s_mean: f64,
    pub cores_mean: f64,
    pub disk_bytes_mean: f64,
    pub nodes_up_share_mean: f64,
    pub paper_upload_bytes_per_s: f64,
}

/// Boils a run's outcome down to its summary.
pub fn summarise(cfg: &SimConfig, seed: u64, out: &Outcome) -> Summary {
    let days_stored = f64::from(cfg.days - cfg.catalog.publish_day);
    let samples_after: Vec<_> = out
        .samples
        .iter()
        .filter(|s| s.hours >= 24.0 * f64::from(cfg.catalog.publish_day))
        .collect();
    let mean_nodes = if samples_after.is_empty() {
        f64::from(cfg.nodes)
    } else {
        samples_after.iter().map(|s| s.nodes as f64).sum::<f64>() / samples_after.len() as f64
    };
    let schemes = out
        .schemes
        .iter()
        .map(|s| {
            let stored = s.segments as f64 * f64::from(s.k + s.m) * s.fragment_bytes as f64;
            let traffic = (s.repair_read + s.repair_written) as f64;
            let segment_secs = s.segments as f64 * days_stored * 86_400.0;
            SchemeRow {
                name: s.name.clone(),
                k: s.k,
                m: s.m,
                repair: s.repair,
                overhead: s.overhead,
                segments: s.segments,
                lost: s.lost,
                lost_share: ratio(s.lost as f64, s.segments as f64),
                unavailability: ratio(s.unavailable_secs as f64, segment_secs),
                unavailable_events: s.unavailable_events,
                repairs: s.repairs,
                repairs_failed: s.repairs_failed,
                fragments_rebuilt: s.rebuilt,
                repair_bytes_per_node_day: ratio(traffic, mean_nodes * days_stored),
                repair_bytes_per_tb_day: ratio(traffic * 1e12, stored * days_stored),
                unplaced: s.unplaced,
            }
        })
        .collect();
    let per_million = |s: &super::world::Sample, v: f64| ratio(v * 1e6, s.nodes as f64);
    let up: Vec<f64> = out
        .samples
        .iter()
        .map(|s| per_million(s, s.upload_bps))
        .collect();
    let mean = |v: &[f64]| ratio(v.iter().sum(), v.len() as f64);
    let all = |f: &dyn Fn(&super::world::Sample) -> f64| -> Vec<f64> {
        out.samples.iter().map(f).collect()
    };
    Summary {
        seed,
        nodes: cfg.nodes,
        days: cfg.days,
        events: out.events,
        arrivals: out.arrivals,
        departures: out.departures,
        probes: out.probes,
        offline_unreachable: out.offline_unreachable,
        whitewashed: out.whitewashed,
        economy: out.economy.as_ref().map(|e| {
            let mut verdicts = std::collections::BTreeMap::new();
            for d in &e.days {
                for (k, v) in &d.verdicts {
                    *verdicts.entry(k.clone()).or_insert(0) += v;
                }
            }
            EconomySummary {
                tickets: e.tickets,
                downloads: e.days.iter().map(|d| d.downloads).sum(),
                downloads_failed: e.days.iter().map(|d| d.downloads_failed).sum(),
                served_bytes_paid: e.served_bytes,
                audits: e.audits,
                audits_failed: e.audits_failed,
                verdicts,
                strategies: e.strategies.clone(),
                top_quarter_served: e.days.iter().map(|d| d.top_quarter_served).sum::<f64>()
                    / e.days.len().max(1) as f64,
                quits: e.days.iter().map(|d| d.quits).sum(),
                quit_age_days: {
                    let q: u64 = e.days.iter().map(|d| d.quits).sum();
                    e.days
                        .iter()
                        .map(|d| d.quit_age_days * d.quits as f64)
                        .sum::<f64>()
                        / q.max(1) as f64
                },
                mean_age_days: e.days.last().map_or(0.0, |d| d.mean_age_days),
                levels: e.days.last().map_or_else(Vec::new, |d| d.levels.clone()),
            }
        }),
        schemes,
        capacity: Capacity {
            upload_bytes_per_s_mean: mean(&up),
            upload_bytes_per_s_min: up.iter().copied().fold(f64::INFINITY, f64::min),
            upload_bytes_per_s_max: up.iter().copied().fold(0.0, f64::max),
            upload_idle_bytes_per_s_mean: mean(&all(&|s| per_million(s, s.upload_bps_idle))),
            cores_mean: mean(&all(&|s| per_million(s, s.cores))),
            disk_bytes_mean: mean(&all(&|s| per_million(s, s.disk_bytes))),
            nodes_up_share_mean: mean(&all(&|s| ratio(s.nodes_up as f64, s.nodes as f64))),
            paper_upload_bytes_per_s: PAPER_UPLOAD_PER_MILLION,
        },
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn csv_escape(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Writes every output file of a run into `dir` (created if missing).
pub fn write(dir: &Path, cfg: &SimConfig, summary: &Summary, out: &Outcome) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let config = toml::to_string(cfg).map_err(std::io::Error::other)?;
    fs::write(dir.join("config.toml"), config)?;
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    fs::write(dir.join("summary.json"), json + "\n")?;

    let mut csv = String::from(
        "scheme,k,m,repair,overhead,segments,lost,lost_share,unavailability,unavailable_events,\
         repairs,repairs_failed,fragments_rebuilt,repair_bytes_per_node_day,repair_bytes_per_tb_day\n",
    );
    for s in &summary.schemes {
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.4},{},{},{:.6e},{:.6e},{},{},{},{},{:.0},{:.0}",
            csv_escape(&s.name),
            s.k,
            s.m,
            s.repair,
            s.overhead,
            s.segments,
            s.lost,
            s.lost_share,
            s.unavailability,
            s.unavailable_events,
            s.repairs,
            s.repairs_failed,
            s.fragments_rebuilt,
            s.repair_bytes_per_node_day,
            s.repair_bytes_per_tb_day
        );
    }
    fs::write(dir.join("durability.csv"), csv)?;

    let mut csv = String::from(
        "hours,nodes,nodes_up,nodes_listed,upload_bytes_per_s,upload_idle_bytes_per_s,cores,disk_bytes,stored_bytes",
    );
    for s in &summary.schemes {
        let _ = write!(csv, ",unavailable:{}", csv_escape(&s.name));
    }
    csv.push('\n');
    for s in &out.samples {
        let _ = write!(
            csv,
            "{:.2},{},{},{},{:.0},{:.0},{:.1},{:.0},{:.0}",
            s.hours,
            s.nodes,
            s.nodes_up,
            s.nodes_listed,
            s.upload_bps,
            s.upload_bps_idle,
            s.cores,
            s.disk_bytes,
            s.stored_bytes
        );
        for u in &s.unavailable {
            let _ = write!(csv, ",{u:.6e}");
        }
        csv.push('\n');
    }
    fs::write(dir.join("timeseries.csv"), csv)?;

    charts(dir, cfg, summary, out)?;
    if let Some(e) = &out.economy {
        economy_files(dir, cfg, e)?;
    }
    fs::write(dir.join("report.md"), markdown(cfg, summary))
}

fn charts(dir: &Path, cfg: &SimConfig, summary: &Summary, out: &Outcome) -> std::io::Result<()> {
    let days = |s: &super::world::Sample| s.hours / 24.0;
    let per_million_gb = |s: &super::world::Sample, v: f64| ratio(v * 1e6, s.nodes as f64) / 1e9;
    let capacity = [
        Line {
            name: "upload offered (owners' use taken off)".into(),
            points: out
                .samples
                .iter()
                .map(|s| (days(s), per_million_gb(s, s.upload_bps)))
                .collect(),
        },
        Line {
            name: "upload of running nodes, all idle".into(),
            points: out
                .samples
                .iter()
                .map(|s| (days(s), per_million_gb(s, s.upload_bps_idle)))
                .collect(),
        },
    ];
    plot::line_chart(
        &dir.join("capacity.svg"),
        &Chart {
            title: "Upload bandwidth available per million registered nodes",
            x: "day",
            y: "GB/s",
            lines: &capacity,
            marks: &[(
                "the paper's estimate (31 GB/s)".into(),
                PAPER_UPLOAD_PER_MILLION / 1e9,
            )],
            from_zero: true,
        },
    )?;
    let publish = f64::from(cfg.catalog.publish_day);
    let unavailable: Vec<Line> = summary
        .schemes
        .iter()
        .enumerate()
        .map(|(i, s)| Line {
            name: s.name.clone(),
            points: out
                .samples
                .iter()
                .filter(|p| days(p) > publish)
                .map(|p| {
                    (
                        days(p),
                        100.0 * p.unavailable.get(i).copied().unwrap_or(0.0),
                    )
                })
                .collect(),
        })
        .collect();
    plot::line_chart(
        &dir.join("unavailable.svg"),
        &Chart {
            title: "Segments unreadable now (fewer than k holders up)",
            x: "day",
            y: "% of segments",
            lines: &unavailable,
            marks: &[],
            from_zero: true,
        },
    )?;
    let bars: Vec<(String, f64)> = summary
        .schemes
        .iter()
        .map(|s| {
            (
                format!("{} ({:.0} %)", s.name, 100.0 * s.overhead),
                100.0 * s.unavailability,
            )
        })
        .collect();
    plot::bar_chart(
        &dir.join("durability.svg"),
        "Unreadable segment-time by scheme (storage overhead)",
        "% of segment-time",
        &bars,
    )?;
    let bars: Vec<(String, f64)> = summary
        .schemes
        .iter()
        .map(|s| (s.name.clone(), s.repair_bytes_per_node_day / 1e6))
        .collect();
    plot::bar_chart(
        &dir.join("repair_traffic.svg"),
        "Repair traffic per node and day",
        "MB per node per day",
        &bars,
    )
}

fn economy_files(
    dir: &Path,
    cfg: &SimConfig,
    e: &super::economy::EconomyOutcome,
) -> std::io::Result<()> {
    use super::economy::Strategy;
    let mut csv = String::from(
        "strategy,machines,identities,offences,caught_share,net_per_machine,net_vs_honest,\
         fined_per_machine,forfeited_per_machine,spent_per_machine\n",
    );
    for r in &e.strategies {
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}",
            csv_escape(&r.strategy),
            r.machines,
            r.identities,
            r.offences,
            r.caught_share,
            r.net_per_machine,
            r.net_vs_honest,
            r.fined_per_machine,
            r.forfeited_per_machine,
            r.spent_per_machine
        );
    }
    fs::write(dir.join("deterrence.csv"), csv)?;
    let present: Vec<Strategy> = Strategy::ALL
        .into_iter()
        .filter(|s| e.days.iter().any(|d| d.balance.contains_key(s)))
        .collect();
    let mut csv = String::from("day");
    for s in &present {
        let _ = write!(csv, ",balance:{},earned:{}", s.name(), s.name());
    }
    let levels = cfg.economy.pay.levels.len();
    for l in &cfg.economy.pay.levels {
        let _ = write!(csv, ",level:{}", csv_escape(&l.name));
    }
    csv.push_str(",downloads,downloads_failed,top_quarter_served,quits,mean_age_days\n");
    for d in &e.days {
        let _ = write!(csv, "{}", d.day);
        for s in &present {
            let _ = write!(
                csv,
                ",{:.4},{:.4}",
                d.balance.get(s).copied().unwrap_or(0.0),
                d.earned.get(s).copied().unwrap_or(0.0)
            );
        }
        for l in 0..levels {
            let _ = write!(csv, ",{}", d.levels.get(l).copied().unwrap_or(0));
        }
        let _ = writeln!(
            csv,
            ",{},{},{:.4},{},{:.2}",
            d.downloads, d.downloads_failed, d.top_quarter_served, d.quits, d.mean_age_days
        );
    }
    fs::write(dir.join("economy.csv"), csv)?;
    let lines: Vec<Line> = present
        .iter()
        .map(|s| Line {
            name: s.name().into(),
            points: e
                .days
                .iter()
                .map(|d| (f64::from(d.day), d.balance.get(s).copied().unwrap_or(0.0)))
                .collect(),
        })
        .collect();
    plot::line_chart(
        &dir.join("earnings.svg"),
        &Chart {
            title: "What each strategy's machines hold: available + held − tickets bought",
            x: "day",
            y: "credits per machine",
            lines: &lines,
            marks: &[],
            from_zero: true,
        },
    )?;
    let lines: Vec<Line> = cfg
        .economy
        .pay
        .levels
        .iter()
        .enumerate()
        .map(|(l, level)| Line {
            name: level.name.clone(),
            points: e
                .days
                .iter()
                .map(|d| {
                    (
                        f64::from(d.day),
                        d.levels.get(l).copied().unwrap_or(0) as f64,
                    )
                })
                .collect(),
        })
        .collect();
    plot::line_chart(
        &dir.join("levels.svg"),
        &Chart {
            title: "Identities at each pay level",
            x: "day",
            y: "identities",
            lines: &lines,
            marks: &[],
            from_zero: true,
        },
    )
}

fn markdown(cfg: &SimConfig, s: &Summary) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Simulation: {} nodes, {} days, seed {}\n",
        cfg.nodes, cfg.days, s.seed
    );
    let _ = writeln!(
        md,
        "{} events; {} nodes arrived and {} left for good; liveness sent {} probes and found \
         {} nodes unreachable.\n",
        s.events, s.arrivals, s.departures, s.probes, s.offline_unreachable
    );
    let _ = writeln!(md, "## Durability and availability\n");
    let _ = writeln!(
        md,
        "| scheme | overhead | segments | lost | unreadable time | repairs | repair traffic per node per day |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |");
    for r in &s.schemes {
        let _ = writeln!(
            md,
            "| {} | {:.0} % | {} | {} ({:.3} %) | {:.4} % | {} | {:.1} MB |",
            r.name,
            100.0 * r.overhead,
            r.segments,
            r.lost,
            100.0 * r.lost_share,
            100.0 * r.unavailability,
            r.repairs,
            r.repair_bytes_per_node_day / 1e6
        );
    }
    let c = &s.capacity;
    let _ = writeln!(md, "\n## Capacity per million registered nodes\n");
    let _ = writeln!(
        md,
        "Upload offered: {:.1} GB/s on average ({:.1} to {:.1}); {:.1} GB/s if no owner were \
         using their machine; the paper's estimate: {:.0} GB/s. CPU cores offered: {:.0}; disk \
         offered by running nodes: {:.1} PB; nodes running: {:.0} %.",
        c.upload_bytes_per_s_mean / 1e9,
        c.upload_bytes_per_s_min / 1e9,
        c.upload_bytes_per_s_max / 1e9,
        c.upload_idle_bytes_per_s_mean / 1e9,
        c.paper_upload_bytes_per_s / 1e9,
        c.cores_mean,
        c.disk_bytes_mean / 1e15,
        100.0 * c.nodes_up_share_mean
    );
    if let Some(e) = &s.economy {
        let _ = writeln!(md, "\n## Economy\n");
        let _ = writeln!(
            md,
            "{} downloads ({} failed: too few holders up), {:.1} TB paid as served; {} audits, {} \
             failed; {} whitewashers came back under a new identity.\n",
            e.downloads,
            e.downloads_failed,
            e.served_bytes_paid as f64 / 1e12,
            e.audits,
            e.audits_failed,
            s.whitewashed
        );
        let _ = writeln!(
            md,
            "| strategy | machines | caught | offences | net credits per machine | vs honest | fined | forfeited | tickets bought |"
        );
        let _ = writeln!(
            md,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in &e.strategies {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} % | {} | {:.3} | {:.2} | {:.3} | {:.3} | {:.3} |",
                r.strategy,
                r.machines,
                100.0 * r.caught_share,
                r.offences,
                r.net_per_machine,
                r.net_vs_honest,
                r.fined_per_machine,
                r.forfeited_per_machine,
                r.spent_per_machine
            );
        }
        let _ = writeln!(md, "\nVerdicts: {:?}", e.verdicts);
        let quits = if e.quits == 0 {
            "no owner quit underpaid".to_owned()
        } else {
            format!(
                "{} owners quit underpaid (after {:.1} days on average)",
                e.quits, e.quit_age_days
            )
        };
        let _ = writeln!(
            md,
            "\nThe most available quarter of the nodes served {:.1} % of the paid bytes; {quits}; \
             identities are {:.1} days old on average at the end; identities per pay level: {:?}.",
            100.0 * e.top_quarter_served,
            e.mean_age_days,
            e.levels
        );
    }
    md
}
