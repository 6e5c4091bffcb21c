//! `report`: the side-by-side markdown table from the JSON results of a comparison run.
//!
//! Input directory layout (written by `scripts/bench-vs-etcd.sh`):
//! - `scenarios.tsv`: one scenario a line, in table order: `name`, description, systems it
//!   runs on (comma-separated), the muster-bench arguments — tab-separated;
//! - `<system>/<name>.json`: that run's `--json` output (absent when the run failed).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// The systems compared, as (directory, column title); the ratio is second / first.
const SYSTEMS: [(&str, &str); 2] = [("etcd", "etcd"), ("muster", "Muster")];

#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// One figure of a result: its label, JSON pointer and direction.
#[derive(Clone)]
struct Figure {
    label: String,
    pointer: String,
    better: Better,
}

fn fig(label: &str, pointer: &str, better: Better) -> Figure {
    Figure {
        label: label.to_string(),
        pointer: pointer.to_string(),
        better,
    }
}

/// Rate, p50 and p99 of the latency samples at `at` ("" for the top level), named `what`;
/// `how` (may be empty) follows the rate's label.
fn requests(what: &str, how: &str, at: &str) -> Vec<Figure> {
    vec![
        fig(
            &format!("{what}/s{how}"),
            &format!("{at}/per_sec"),
            Better::Higher,
        ),
        fig(
            &format!("{what} p50 ms"),
            &format!("{at}/p50_ms"),
            Better::Lower,
        ),
        fig(
            &format!("{what} p99 ms"),
            &format!("{at}/p99_ms"),
            Better::Lower,
        ),
    ]
}

/// The figures shown for a result, chosen by its `what`.
fn figures(what: &str) -> Vec<Figure> {
    use Better::{Higher as H, Lower as L};
    match what {
        "txn" => [
            requests("txns", "", ""),
            vec![fig("CAS conflicts", "/conflicts", L)],
        ]
        .concat(),
        "register-kv" => [
            requests("registrations", " (grant + put)", "/register"),
            requests("discovers", " (prefix get)", "/discover"),
            requests("deregistrations", " (revoke)", "/deregister"),
        ]
        .concat(),
        "keepalive" => vec![
            fig("keep-alives/s (one stream)", "/keepalives_per_sec", H),
            fig("round of all leases p99 ms", "/round_p99_ms", L),
        ],
        "watch-latency" => vec![
            fig("put ack → event p50 ms", "/p50_ms", L),
            fig("put ack → event p99 ms", "/p99_ms", L),
            fig("put sent → event p50 ms", "/send_to_receipt_p50_ms", L),
            fig("events missing", "/missing", L),
            fig(
                "server memory per watcher, bytes",
                "/memory/bytes_per_watcher",
                L,
            ),
        ],
        "failover-external" => vec![
            fig("kill → new leader ms", "/new_leader_ms", L),
            fig("kill → first write ms", "/first_write_ms", L),
            fig("longest gap between writes ms", "/max_gap_ms", L),
            fig("acknowledged writes lost", "/lost", L),
        ],
        "footprint" => vec![
            fig("RSS, 3 nodes, MiB", "/rss_total_mib", L),
            fig("disk allocated, 3 data dirs, MiB", "/disk_total_mib", L),
            fig("disk, bytes in files, MiB", "/disk_apparent_mib", L),
        ],
        other => requests(other, "", ""),
    }
}

struct Scenario {
    name: String,
    description: String,
    systems: Vec<String>,
    args: String,
}

fn parse_scenarios(tsv: &str) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for (n, line) in tsv.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(f.len() == 4, "scenarios.tsv line {}: want 4 fields", n + 1);
        out.push(Scenario {
            name: f[0].to_string(),
            description: f[1].to_string(),
            systems: f[2].split(',').map(str::to_string).collect(),
            args: f[3].to_string(),
        });
    }
    Ok(out)
}

/// A result cell: the figure, "failed" (no JSON), "n/a" (not run on that system) or "—".
enum Cell {
    Value(f64),
    Missing(&'static str),
}

fn number(v: f64) -> String {
    if (v.fract() == 0.0 && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Cell::Value(v) => number(*v),
            Cell::Missing(why) => (*why).to_string(),
        }
    }
}

fn ratio(a: &Cell, b: &Cell) -> String {
    match (a, b) {
        (Cell::Value(a), Cell::Value(b)) if *a != 0.0 => {
            let r = b / a;
            if r == 0.0 || r.abs() >= 0.1 {
                format!("{r:.2}")
            } else if r.abs() >= 0.001 {
                format!("{r:.3}")
            } else {
                "< 0.001".to_string()
            }
        }
        _ => "—".to_string(),
    }
}

/// The results of scenario `name` on one system: `<name>.json`, or one `<name>.r<k>.json` per
/// round of a repeated scenario.
fn runs(dir: &Path, name: &str) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| {
            let Some(rest) = f.strip_prefix(name) else {
                return false;
            };
            rest == ".json"
                || rest
                    .strip_prefix(".r")
                    .and_then(|r| r.strip_suffix(".json"))
                    .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| serde_json::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok())
        .collect()
}

/// The median (the lower middle one of an even count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// Renders the table for the results under `dir`.
pub fn render(dir: &Path) -> anyhow::Result<String> {
    let tsv = std::fs::read_to_string(dir.join("scenarios.tsv"))
        .with_context(|| format!("reading {:?}", dir.join("scenarios.tsv")))?;
    let scenarios = parse_scenarios(&tsv)?;
    let mut out = String::new();
    let (a, b) = (SYSTEMS[0].1, SYSTEMS[1].1);
    writeln!(out, "| scenario | figure | {a} | {b} | {b}/{a} |")?;
    writeln!(out, "|---|---|---:|---:|---:|")?;
    for sc in &scenarios {
        let ran: Vec<bool> = SYSTEMS
            .iter()
            .map(|(sys, _)| sc.systems.iter().any(|s| s == sys))
            .collect();
        let results: Vec<Vec<Value>> = SYSTEMS
            .iter()
            .zip(&ran)
            .map(|((sys, _), &ran)| {
                if ran {
                    runs(&dir.join(sys), &sc.name)
                } else {
                    Vec::new()
                }
            })
            .collect();
        let what = results
            .iter()
            .flatten()
            .find_map(|v| v["what"].as_str().map(str::to_string))
            .unwrap_or_default();
        let rounds = results.iter().map(Vec::len).max().unwrap_or(0);
        let mut description = sc.description.clone();
        if rounds > 1 {
            description.push_str(&format!(" (median of {rounds} runs)"));
        }
        let mut first = true;
        for Figure {
            label,
            pointer,
            better,
        } in figures(&what)
        {
            let cells: Vec<Cell> = results
                .iter()
                .zip(&ran)
                .map(|(runs, &ran)| {
                    let values = runs.iter().filter_map(|v| v.pointer(&pointer)?.as_f64());
                    match median(values.collect()) {
                        Some(v) => Cell::Value(v),
                        None if !runs.is_empty() => Cell::Missing("—"),
                        None if ran => Cell::Missing("failed"),
                        None => Cell::Missing("n/a"),
                    }
                })
                .collect();
            if cells.iter().all(|c| matches!(c, Cell::Missing("—"))) {
                continue; // a figure neither result has (e.g. memory without --pid)
            }
            let arrow = match better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            };
            let scenario = if first { description.as_str() } else { "" };
            first = false;
            writeln!(
                out,
                "| {scenario} | {label} {arrow} | {} | {} | {} |",
                cells[0].text(),
                cells[1].text(),
                ratio(&cells[0], &cells[1])
            )?;
        }
    }
    writeln!(
        out,
        "\n↑ higher is better, ↓ lower is better; the last column is {b} ÷ {a}.\n"
    )?;
    writeln!(out, "Commands (`muster-bench …`, per system):\n")?;
    for sc in &scenarios {
        writeln!(
            out,
            "- {} ({}): `{}`",
            sc.name,
            sc.systems.join(", "),
            sc.args
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_with_ratio_failure_and_not_applicable() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("muster-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etcd"))?;
        std::fs::create_dir_all(dir.join("muster"))?;
        std::fs::write(
            dir.join("scenarios.tsv"),
            "put-c1\tput, 1 client\tetcd,muster\tput --count 10\n\
             reg\tnative register\tmuster\tregister\n\
             txn\tCAS\tetcd,muster\ttxn\n\
             fo\tfailover\tetcd,muster\tfailover-external\n",
        )?;
        let fo = |ms: f64| format!(r#"{{"what":"failover-external","max_gap_ms":{ms}}}"#);
        for (k, ms) in [1000.0, 3000.0, 2000.0].into_iter().enumerate() {
            std::fs::write(dir.join(format!("etcd/fo.r{}.json", k + 1)), fo(ms))?;
        }
        std::fs::write(dir.join("muster/fo.json"), fo(1000.0))?;
        std::fs::write(dir.join("muster/fox.json"), fo(9.0))?;
        let put = |rate: f64| format!(r#"{{"what":"put","per_sec":{rate},"p50_ms":1.5}}"#);
        std::fs::write(dir.join("etcd/put-c1.json"), put(1000.0))?;
        std::fs::write(dir.join("muster/put-c1.json"), put(500.0))?;
        std::fs::write(
            dir.join("muster/reg.json"),
            r#"{"what":"register","per_sec":10}"#,
        )?;
        std::fs::write(dir.join("etcd/txn.json"), r#"{"what":"txn","per_sec":10}"#)?;
        let t = render(&dir)?;
        std::fs::remove_dir_all(&dir)?;
        assert!(
            t.contains("| put, 1 client | put/s ↑ | 1000 | 500 | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("|  | put p50 ms ↓ | 1.50 | 1.50 | 1.00 |"),
            "{t}"
        );
        assert!(!t.contains("| put p99 ms ↓ | — | — |"), "{t}");
        let fo = "| failover (median of 3 runs) | longest gap between writes ms ↓ | 2000 | 1000 | 0.50 |";
        assert!(t.contains(fo), "{t}");
        assert!(!t.contains("| 9 |"), "{t}");
        assert!(
            t.contains("| native register | register/s ↑ | n/a | 10 | — |"),
            "{t}"
        );
        assert!(t.contains("| CAS | txns/s ↑ | 10 | failed | — |"), "{t}");
        assert!(
            t.contains("- put-c1 (etcd, muster): `put --count 10`"),
            "{t}"
        );
        Ok(())
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(1.0));
    }

    #[test]
    fn ratios() {
        let r = |a, b| ratio(&Cell::Value(a), &Cell::Value(b));
        assert_eq!(r(2.0, 1.0), "0.50");
        assert_eq!(r(400.0, 1.0), "0.003");
        assert_eq!(r(1e6, 1.0), "< 0.001");
        assert_eq!(r(0.0, 1.0), "—");
        assert_eq!(ratio(&Cell::Missing("failed"), &Cell::Value(1.0)), "—");
    }

    #[test]
    fn numbers() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(1234.567), "1235");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
    }
}
