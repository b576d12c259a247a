//! Results, ratios, and the three outputs: the console table, the
//! `## Comparison` section of `docs/BENCHMARKS.md` with `docs/bench.json`,
//! and the file of the SVG chart `docs/bench.svg` (drawn by `chart.rs`,
//! which reads the report; this module names no chart).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// Marker lines that delimit the generated part of BENCHMARKS.md.
pub const START_MARKER: &str = "<!-- comparison:start -->";
/// See [`START_MARKER`].
pub const END_MARKER: &str = "<!-- comparison:end -->";

/// The reference systems that ratios are taken against.
pub const NATS: &str = "nats-server";
/// See [`NATS`].
pub const RAW: &str = "raw TCP";
/// See [`NATS`]: the zero-logic relay (`relay.rs`), the floor of a hub.
pub const RELAY: &str = "zero-logic relay";

/// One figure of one system in one workload, over all runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// Workload id, e.g. `pubsub-1x1-64`.
    pub workload: String,
    /// Human title of the workload.
    pub title: String,
    /// What is measured, e.g. `msgs/s` or `p50 µs`.
    pub metric: String,
    /// True for latencies.
    pub lower_is_better: bool,
    /// System name.
    pub system: String,
    /// The value of each successful run.
    pub runs: Vec<f64>,
    /// Median, min and max of `runs`.
    pub summary: Option<Summary>,
    /// Messages (or requests) sent, summed over runs.
    pub sent: u64,
    /// Messages the receivers should have counted, summed over runs.
    pub expected: u64,
    /// Messages the receivers counted, summed over runs.
    pub delivered: u64,
    /// First error of a failed run, if any.
    pub error: Option<String>,
    /// Explanation printed next to the figure.
    pub note: Option<String>,
}

impl Figure {
    /// Ratio of this figure's median to `reference`'s, oriented so that a
    /// value above 1 always means "this system is better".
    pub fn ratio_to(&self, reference: &Figure) -> Option<f64> {
        let a = self.summary?.median;
        let b = reference.summary?.median;
        if a <= 0.0 || b <= 0.0 {
            return None;
        }
        Some(if self.lower_is_better { b / a } else { a / b })
    }

    /// True when some runs lost messages.
    pub fn lost(&self) -> bool {
        self.delivered < self.expected
    }
}

/// Everything one invocation measured, plus its context.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The exact command.
    pub command: String,
    /// UTC date and time of the run.
    pub date: String,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// Runs per figure.
    pub runs: usize,
    /// Cores, CPU model, kernel, memory.
    pub machine: Machine,
    /// System name → version line (or why it was skipped).
    pub versions: Vec<(String, String)>,
    /// How the switchboard hub was run.
    pub hub_mode: String,
    /// All figures.
    pub figures: Vec<Figure>,
    /// General notes.
    pub notes: Vec<String>,
}

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Logical cores available.
    pub cores: usize,
    /// CPU model name.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory in MiB.
    pub mem_mib: u64,
}

impl Machine {
    /// Reads the machine description from `/proc`.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let mem_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            mem_mib,
        }
    }
}

/// `1234567.0` → `1.23 M`, `12345.0` → `12.3 k`.
pub fn human_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn value(f: &Figure, v: f64) -> String {
    if f.metric.contains('×') || f.metric.contains("CPU") {
        format!("{v:.2}")
    } else if f.metric.contains("µs") || f.metric.contains("KiB") {
        format!("{v:.1}")
    } else {
        human_rate(v)
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_string(), |r| format!("{r:.2}×"))
}

/// Figures grouped by (workload, metric), in first-seen order.
pub fn groups(figures: &[Figure]) -> Vec<Vec<&Figure>> {
    let mut out: Vec<Vec<&Figure>> = Vec::new();
    for f in figures {
        match out
            .iter_mut()
            .find(|g| g[0].workload == f.workload && g[0].metric == f.metric)
        {
            Some(g) => g.push(f),
            None => out.push(vec![f]),
        }
    }
    out
}

fn find<'a>(group: &[&'a Figure], system: &str) -> Option<&'a Figure> {
    group.iter().copied().find(|f| f.system == system)
}

/// One markdown table per (workload, metric) group.
pub fn tables(report: &Report) -> String {
    let mut s = String::new();
    for g in groups(&report.figures) {
        let head = g[0];
        let better = if head.lower_is_better {
            "lower is better"
        } else {
            "higher is better"
        };
        let _ = writeln!(s, "\n#### {} — {} ({better})\n", head.title, head.metric);
        let _ = writeln!(
            s,
            "| system | median | min | max | delivered / expected | vs {NATS} | vs relay | vs {RAW} | note |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
        let nats = find(&g, NATS);
        let relay = find(&g, RELAY);
        let raw = find(&g, RAW);
        for f in &g {
            let (med, min, max) = match f.summary {
                Some(sm) => (value(f, sm.median), value(f, sm.min), value(f, sm.max)),
                None => ("failed".into(), "–".into(), "–".into()),
            };
            let lost = if f.lost() { " **lost**" } else { "" };
            let mut note = f.note.clone().unwrap_or_default();
            if let Some(e) = &f.error {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                let _ = write!(note, "error: {}", e.replace('|', "/"));
            }
            let _ = writeln!(
                s,
                "| {} | {med} | {min} | {max} | {}/{}{lost} | {} | {} | {} | {note} |",
                f.system,
                f.delivered,
                f.expected,
                ratio_cell(nats.and_then(|n| f.ratio_to(n))),
                ratio_cell(relay.and_then(|r| f.ratio_to(r))),
                ratio_cell(raw.and_then(|r| f.ratio_to(r))),
            );
        }
    }
    s
}

/// The generated body between the comparison markers.
pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let m = &report.machine;
    let _ = writeln!(s, "Generated by `{}` on {}.\n", report.command, report.date);
    let _ = writeln!(
        s,
        "- Machine: {} cores, {}, {} MiB RAM, Linux {}; everything on loopback.",
        m.cores, m.cpu, m.mem_mib, m.kernel
    );
    for (name, v) in &report.versions {
        let _ = writeln!(s, "- {name}: {v}");
    }
    let _ = writeln!(s, "- switchboard hub: {}", report.hub_mode);
    let _ = writeln!(
        s,
        "- Each figure is the median of {} run(s) with min and max; messages are counted at the receivers, from the first to the last arrival; `delivered / expected` sums all runs and says **lost** when messages went missing.",
        report.runs
    );
    let _ = writeln!(
        s,
        "- Ratios compare medians and are oriented so that above 1× means better than the reference (for latencies: reference ÷ system).\n"
    );
    let _ = writeln!(s, "![throughput ratios and latency percentiles](bench.svg)");
    s.push_str(&tables(report));
    if !report.notes.is_empty() {
        let _ = writeln!(s, "\nNotes:\n");
        for n in &report.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// Replaces the text between the markers of `doc` with `body` (creating the
/// section at the top when the markers are missing).
pub fn splice(doc: &str, body: &str) -> String {
    let block = format!("{START_MARKER}\n{}\n{END_MARKER}", body.trim_end());
    match (doc.find(START_MARKER), doc.find(END_MARKER)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{}{}", &doc[..a], block, &doc[b + END_MARKER.len()..])
        }
        _ => {
            let header = "# switchboard benchmarks\n\n";
            let rest = doc.strip_prefix(header).unwrap_or(doc);
            format!("{header}## Comparison\n\n{block}\n\n{rest}")
        }
    }
}

/// Writes `BENCHMARKS.md` (only the comparison part), `bench.json` and
/// `bench.svg` (the chart `svg`, drawn from `report`) into `docs`.
pub fn write_docs(docs: &Path, report: &Report, svg: &str) -> Result<()> {
    std::fs::create_dir_all(docs)?;
    let md_path = docs.join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&md_path).unwrap_or_default();
    std::fs::write(&md_path, splice(&doc, &markdown(report)))
        .with_context(|| format!("writing {}", md_path.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(docs.join("bench.json"), json + "\n")?;
    std::fs::write(docs.join("bench.svg"), svg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(system: &str, metric: &str, lower: bool, v: f64) -> Figure {
        Figure {
            workload: "w".into(),
            title: "w".into(),
            metric: metric.into(),
            lower_is_better: lower,
            system: system.into(),
            runs: vec![v],
            summary: Summary::of(&[v]),
            sent: 10,
            expected: 10,
            delivered: 10,
            error: None,
            note: None,
        }
    }

    #[test]
    fn ratios_are_oriented_so_above_one_is_better() {
        let nats = fig(NATS, "msgs/s", false, 100.0);
        let fast = fig("switchboard", "msgs/s", false, 150.0);
        assert_eq!(fast.ratio_to(&nats), Some(1.5));
        let nats_lat = fig(NATS, "p50 µs", true, 200.0);
        let quick = fig("switchboard", "p50 µs", true, 100.0);
        assert_eq!(quick.ratio_to(&nats_lat), Some(2.0));
        let failed = Figure {
            summary: None,
            ..fig("x", "msgs/s", false, 1.0)
        };
        assert_eq!(failed.ratio_to(&nats), None);
    }

    #[test]
    fn splice_replaces_only_between_markers() {
        let doc = format!("# t\n\nintro\n\n## Comparison\n\n{START_MARKER}\nold\n{END_MARKER}\n\n## Wire\n\nwire text\n");
        let out = splice(&doc, "new body");
        assert!(out.contains("new body"));
        assert!(!out.contains("old"));
        assert!(out.starts_with("# t\n\nintro\n"));
        assert!(out.ends_with("## Wire\n\nwire text\n"));
        // idempotent
        assert_eq!(splice(&out, "new body"), out);
    }

    #[test]
    fn splice_creates_the_section_when_markers_are_missing() {
        let out = splice("", "body");
        assert!(out.contains(START_MARKER) && out.contains("body") && out.contains(END_MARKER));
    }

    #[test]
    fn tables_give_the_ratio_to_the_relay() {
        let t = tables(&Report {
            command: "c".into(),
            date: "d".into(),
            quick: true,
            runs: 1,
            machine: Machine::detect(),
            versions: vec![],
            hub_mode: "h".into(),
            figures: vec![
                fig(RELAY, "msgs/s", false, 40.0),
                fig("switchboard", "msgs/s", false, 10.0),
            ],
            notes: vec![],
        });
        assert!(t.contains("| vs relay |"), "{t}");
        assert!(
            t.contains("| switchboard | 10 | 10 | 10 | 10/10 | – | 0.25× | – |"),
            "{t}"
        );
    }

    #[test]
    fn tables_flag_lost_messages() {
        let mut f = fig("mosquitto", "msgs/s", false, 5.0);
        f.delivered = 7;
        let t = tables(&Report {
            command: "c".into(),
            date: "d".into(),
            quick: true,
            runs: 1,
            machine: Machine::detect(),
            versions: vec![],
            hub_mode: "h".into(),
            figures: vec![fig(NATS, "msgs/s", false, 10.0), f],
            notes: vec![],
        });
        assert!(t.contains("7/10 **lost**"), "{t}");
        assert!(t.contains("0.50×"), "{t}");
    }
}
