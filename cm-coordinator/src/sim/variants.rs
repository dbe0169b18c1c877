//! Variants: one configuration file, several runs. Each `[[variant]]` names a few settings to
//! change from the base (`set`, dotted paths into the configuration); every variant runs with
//! the same seed (so the same nodes meet the same churn where the change allows), on as many
//! threads as there are cores, into its own subdirectory. A variant with `x` and `series` is a
//! point of the comparison charts.
//!
//! ```toml
//! nodes = 5000
//! [[variant]]
//! name = "detection 1 %, hold-back"
//! series = "hold-back"
//! x = 1.0
//! set = { "economy.reconcile.deep_check_rate" = 0.01 }
//! ```

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::config::{ConfigError, SimConfig};
use super::plot::{self, Chart, Line};
use super::{SimError, Summary};

/// One variant of the base configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// Series and position of the variant in the comparison charts.
    pub series: Option<String>,
    pub x: Option<f64>,
    /// Settings changed from the base: dotted path → value.
    #[serde(default)]
    pub set: toml::Table,
}

/// A configuration file: the base, and its variants (none: just the base).
pub struct Plan {
    pub base: SimConfig,
    pub variants: Vec<(Variant, SimConfig)>,
    /// Label of the x axis of the comparison charts.
    pub x_label: String,
}

fn parse_err(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Parse(e.to_string())
}

/// Reads a configuration file's text into its base and variants.
pub fn plan(text: &str) -> Result<Plan, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(parse_err)?;
    let variants = table.remove("variant");
    let x_label = match table.remove("variant_x") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err(parse_err("variant_x must be a string")),
        None => "x".into(),
    };
    let base_text = toml::to_string(&table).map_err(parse_err)?;
    let base = SimConfig::from_toml(&base_text)?;
    let mut out = Vec::new();
    if let Some(v) = variants {
        let list: Vec<Variant> = v.try_into().map_err(parse_err)?;
        for variant in list {
            let mut t = table.clone();
            for (path, value) in &variant.set {
                set(&mut t, path, value.clone()).map_err(|e| ConfigError::Invalid {
                    field: format!("variant {:?}: {path}", variant.name),
                    problem: e,
                })?;
            }
            let text = toml::to_string(&t).map_err(parse_err)?;
            let cfg = SimConfig::from_toml(&text).map_err(|e| ConfigError::Invalid {
                field: format!("variant {:?}", variant.name),
                problem: e.to_string(),
            })?;
            out.push((variant, cfg));
        }
    }
    let mut names: Vec<&str> = out.iter().map(|(v, _)| v.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(parse_err("two variants share a name"));
    }
    Ok(Plan {
        base,
        variants: out,
        x_label,
    })
}

/// Sets `path` (`a.b.c`) in `table` to `value`, creating tables on the way.
fn set(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), String> {
    let mut parts = path.split('.').peekable();
    let mut t = table;
    while let Some(part) = parts.next() {
        if part.is_empty() {
            return Err("empty path segment".into());
        }
        if parts.peek().is_none() {
            t.insert(part.to_owned(), value);
            return Ok(());
        }
        let entry = t
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table"))?;
    }
    Err("empty path".into())
}

/// A directory name for a variant.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if s.is_empty() { "variant".into() } else { s }
}

/// Runs every variant (threads: the machine's cores) and writes the comparison files.
pub fn run(plan: &Plan, seed: u64, out: &Path) -> Result<Vec<(String, Summary)>, SimError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs: Vec<(&Variant, &SimConfig)> = plan.variants.iter().map(|(v, c)| (v, c)).collect();
    let mut results: Vec<Option<Result<Summary, SimError>>> =
        (0..jobs.len()).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(jobs.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((variant, cfg)) = jobs.get(i) else {
                        return;
                    };
                    tracing::info!(variant = %variant.name, "simulating");
                    let r = super::simulate(cfg, seed, &out.join(slug(&variant.name)));
                    slots.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let mut summaries = Vec::new();
    for ((variant, _), r) in plan.variants.iter().zip(results) {
        summaries.push((variant.name.clone(), r.expect("every job ran")?));
    }
    compare(plan, &summaries, out).map_err(|source| SimError::Write {
        path: out.display().to_string(),
        source,
    })?;
    Ok(summaries)
}

/// `variants.csv`, `variants.md` and, for variants placed on an x axis, charts of the
/// schemes' unreadable time and repair traffic and of each strategy's earnings against
/// honest nodes'.
fn compare(plan: &Plan, runs: &[(String, Summary)], out: &Path) -> std::io::Result<()> {
    fs::create_dir_all(out)?;
    let mut csv = String::from("variant,series,x,kind,name,metric,value\n");
    let mut md = String::from("# Variants\n\n");
    for ((variant, _), (name, s)) in plan.variants.iter().zip(runs) {
        let series = variant.series.clone().unwrap_or_default();
        let x = variant.x.map(|x| x.to_string()).unwrap_or_default();
        let _ = writeln!(md, "## {name}\n");
        let settings: Vec<String> = variant
            .set
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        let _ = writeln!(md, "Settings: `{}`\n", settings.join(", "));
        let _ = writeln!(
            md,
            "| scheme | lost | unreadable time | repair traffic per node per day |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        for r in &s.schemes {
            for (metric, value) in [
                ("lost_share", r.lost_share),
                ("unavailability", r.unavailability),
                ("repair_bytes_per_node_day", r.repair_bytes_per_node_day),
            ] {
                let _ = writeln!(
                    csv,
                    "{name:?},{series:?},{x},scheme,{:?},{metric},{value:e}",
                    r.name
                );
            }
            let _ = writeln!(
                md,
                "| {} | {} ({:.3} %) | {:.4} % | {:.1} MB |",
                r.name,
                r.lost,
                100.0 * r.lost_share,
                100.0 * r.unavailability,
                r.repair_bytes_per_node_day / 1e6
            );
        }
        if let Some(e) = &s.economy {
            let _ = writeln!(
                md,
                "\n| strategy | caught | net credits per machine | vs honest |"
            );
            let _ = writeln!(md, "| --- | --- | --- | --- |");
            for r in &e.strategies {
                for (metric, value) in [
                    ("net_per_machine", r.net_per_machine),
                    ("net_vs_honest", r.net_vs_honest),
                    ("caught_share", r.caught_share),
                ] {
                    let _ = writeln!(
                        csv,
                        "{name:?},{series:?},{x},strategy,{:?},{metric},{value:e}",
                        r.strategy
                    );
                }
                let _ = writeln!(
                    md,
                    "| {} | {:.0} % | {:.3} | {:.2} |",
                    r.strategy,
                    100.0 * r.caught_share,
                    r.net_per_machine,
                    r.net_vs_honest
                );
            }
            for (metric, value) in [
                ("top_quarter_served", e.top_quarter_served),
                ("quits", e.quits as f64),
                ("mean_age_days", e.mean_age_days),
            ] {
                let _ = writeln!(
                    csv,
                    "{name:?},{series:?},{x},economy,\"\",{metric},{value:e}"
                );
            }
            let _ = writeln!(
                md,
                "\nMost available quarter served {:.1} % of paid bytes; {} owners quit underpaid; \
                 identities per level at the end: {:?}.",
                100.0 * e.top_quarter_served,
                e.quits,
                e.levels
            );
        }
        md.push('\n');
    }
    fs::write(out.join("variants.csv"), csv)?;
    fs::write(out.join("variants.md"), md)?;

    // Charts over the variants that sit on the x axis, one line per (series, scheme or
    // strategy).
    let placed: Vec<(&Variant, &Summary)> = plan
        .variants
        .iter()
        .zip(runs)
        .filter(|((v, _), _)| v.x.is_some())
        .map(|((v, _), (_, s))| (v, s))
        .collect();
    if placed.is_empty() {
        return Ok(());
    }
    let series_of = |v: &Variant| v.series.clone().unwrap_or_default();
    let mut series: Vec<String> = placed.iter().map(|(v, _)| series_of(v)).collect();
    series.sort();
    series.dedup();
    let label = |series: &str, name: &str| {
        if series.is_empty() {
            name.to_owned()
        } else {
            format!("{name}, {series}")
        }
    };
    let mut scheme_lines: Vec<(Line, Line)> = Vec::new();
    let mut strategy_lines: Vec<Line> = Vec::new();
    for ser in &series {
        let points: Vec<&(&Variant, &Summary)> = placed
            .iter()
            .filter(|(v, _)| &series_of(v) == ser)
            .collect();
        let schemes: Vec<String> = points
            .first()
            .map(|(_, s)| s.schemes.iter().map(|r| r.name.clone()).collect())
            .unwrap_or_default();
        for name in schemes {
            let get = |f: &dyn Fn(&super::report::SchemeRow) -> f64| -> Vec<(f64, f64)> {
                let mut p: Vec<(f64, f64)> = points
                    .iter()
                    .filter_map(|(v, s)| {
                        let r = s.schemes.iter().find(|r| r.name == name)?;
                        Some((v.x?, f(r)))
                    })
                    .collect();
                p.sort_by(|a, b| a.0.total_cmp(&b.0));
                p
            };
            scheme_lines.push((
                Line {
                    name: label(ser, &name),
                    points: get(&|r| 100.0 * r.unavailability),
                },
                Line {
                    name: label(ser, &name),
                    points: get(&|r| r.repair_bytes_per_node_day / 1e6),
                },
            ));
        }
        let strategies: Vec<String> = points
            .first()
            .and_then(|(_, s)| s.economy.as_ref())
            .map(|e| {
                e.strategies
                    .iter()
                    .map(|r| r.strategy.clone())
                    .filter(|n| n != "honest")
                    .collect()
            })
            .unwrap_or_default();
        for name in strategies {
            let mut p: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|(v, s)| {
                    let e = s.economy.as_ref()?;
                    let r = e.strategies.iter().find(|r| r.strategy == name)?;
                    Some((v.x?, r.net_vs_honest))
                })
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            strategy_lines.push(Line {
                name: label(ser, &name),
                points: p,
            });
        }
    }
    let (unavailable, traffic): (Vec<Line>, Vec<Line>) = scheme_lines.into_iter().unzip();
    plot::line_chart(
        &out.join("variants_unavailable.svg"),
        &Chart {
            title: "Unreadable segment-time",
            x: &plan.x_label,
            y: "% of segment-time",
            lines: &unavailable,
            marks: &[],
            from_zero: true,
        },
    )?;
    plot::line_chart(
        &out.join("variants_repair.svg"),
        &Chart {
            title: "Repair traffic per node and day",
            x: &plan.x_label,
            y: "MB",
            lines: &traffic,
            marks: &[],
            from_zero: true,
        },
    )?;
    if !strategy_lines.is_empty() {
        plot::line_chart(
            &out.join("variants_deterrence.svg"),
            &Chart {
                title: "Net earnings per machine, relative to honest machines",
                x: &plan.x_label,
                y: "× honest",
                lines: &strategy_lines,
                marks: &[("honest".into(), 1.0)],
                from_zero: false,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_change_only_what_they_set() {
        let text = r#"
nodes = 500
variant_x = "deep checks (%)"
[economy.reconcile]
deep_check_rate = 0.05
[[variant]]
name = "one percent"
series = "hold-back"
x = 1.0
set = { "economy.reconcile.deep_check_rate" = 0.01, "repair.delay" = "1day" }
[[variant]]
name = "as is"
"#;
        let p = plan(text).unwrap();
        assert_eq!(p.base.nodes, 500);
        assert_eq!(p.x_label, "deep checks (%)");
        let (v, c) = &p.variants[0];
        assert_eq!(v.x, Some(1.0));
        assert_eq!(c.economy.reconcile.deep_check_rate, 0.01);
        assert_eq!(c.repair.delay, std::time::Duration::from_secs(86_400));
        assert_eq!(c.nodes, 500);
        assert_eq!(p.variants[1].1, p.base);
        assert_eq!(slug(&v.name), "one-percent");
    }

    #[test]
    fn a_bad_variant_is_named() {
        let text = "[[variant]]\nname = \"bad\"\nset = { \"nodes\" = 0 }\n";
        let e = plan(text).err().unwrap().to_string();
        assert!(e.contains("bad") && e.contains("nodes"), "{e}");
        let text = "[[variant]]\nname = \"a\"\n[[variant]]\nname = \"a\"\n";
        assert!(plan(text).is_err());
    }
}
