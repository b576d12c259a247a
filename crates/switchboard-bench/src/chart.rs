//! A dependency-free SVG chart: throughput ratios against nats-server per
//! workload, and the request/reply latency percentiles of every system.

use std::fmt::Write as _;

use crate::report::{groups, Figure, Report, NATS, RAW};

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 170.0;
const BAR_W: f64 = 600.0;
const BAR_H: f64 = 12.0;

fn color(system: &str) -> &'static str {
    match system {
        "switchboard" => "#1f77b4",
        "nats-server" => "#2ca02c",
        "mosquitto" => "#9467bd",
        "redis" => "#d62728",
        "raw TCP" => "#7f7f7f",
        "zero-logic relay" => "#bcbd22",
        _ => "#ff7f0e",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Row {
    label: String,
    bars: Vec<(String, f64, String)>, // system, length value, text
}

fn panel(out: &mut String, y0: f64, title: &str, rows: &[Row], reference: Option<f64>) -> f64 {
    let max = rows
        .iter()
        .flat_map(|r| r.bars.iter().map(|b| b.1))
        .chain(reference)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let scale = BAR_W / (max * 1.08);
    let mut y = y0;
    let _ = writeln!(
        out,
        r#"<text x="10" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
        y + 14.0,
        esc(title)
    );
    y += 26.0;
    let top = y;
    for row in rows {
        let h = row.bars.len() as f64 * (BAR_H + 2.0);
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y + h / 2.0 + 4.0,
            esc(&row.label)
        );
        for (i, (system, v, text)) in row.bars.iter().enumerate() {
            let by = y + i as f64 * (BAR_H + 2.0);
            let w = (v * scale).max(1.0);
            let _ = writeln!(
                out,
                r#"<rect x="{LABEL_W}" y="{by:.1}" width="{w:.1}" height="{BAR_H}" fill="{}"><title>{}: {}</title></rect>"#,
                color(system),
                esc(system),
                esc(text)
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
                LABEL_W + w + 4.0,
                by + BAR_H - 2.0,
                esc(text)
            );
        }
        y += h + 10.0;
    }
    if let Some(r) = reference {
        let x = LABEL_W + r * scale;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333" stroke-dasharray="4 3"/>"##,
            y - 6.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">1× {NATS}</text>"#,
            y + 6.0
        );
        y += 12.0;
    }
    y + 16.0
}

fn throughput_rows(report: &Report) -> Vec<Row> {
    let mut rows = Vec::new();
    for g in groups(&report.figures) {
        // The federation rows (`fed-*`) compare hops, not servers: they
        // stay in the tables.
        if g[0].lower_is_better || g[0].workload.starts_with("fed-") {
            continue;
        }
        let Some(nats) = g.iter().find(|f| f.system == NATS) else {
            continue;
        };
        let bars: Vec<_> = g
            .iter()
            .filter(|f| f.system != RAW)
            .filter_map(|f| {
                f.ratio_to(nats)
                    .map(|r| (f.system.clone(), r, format!("{r:.2}×")))
            })
            .collect();
        if !bars.is_empty() {
            rows.push(Row {
                label: g[0].workload.clone(),
                bars,
            });
        }
    }
    rows
}

fn latency_rows(report: &Report) -> Vec<Row> {
    let mut rows = Vec::new();
    for g in groups(&report.figures) {
        // Comparisons only: the switchboard-only rows (`sb-*`) stay in the
        // tables.
        if !g[0].lower_is_better
            || !g[0].metric.contains("µs")
            || g[0].workload.starts_with("sb-")
            || g[0].workload.starts_with("bind-")
            || g[0].workload.starts_with("fed-")
        {
            continue;
        }
        let bars: Vec<_> = g
            .iter()
            .filter_map(|f: &&Figure| {
                f.summary
                    .map(|s| (f.system.clone(), s.median, format!("{:.0} µs", s.median)))
            })
            .collect();
        if !bars.is_empty() {
            rows.push(Row {
                label: format!("{} {}", g[0].workload, g[0].metric.trim_end_matches(" µs")),
                bars,
            });
        }
    }
    rows
}

/// The whole chart as an SVG document.
pub fn svg(report: &Report) -> String {
    let mut body = String::new();
    let mut y = 10.0;
    let mut systems: Vec<&str> = Vec::new();
    for f in &report.figures {
        if !systems.contains(&f.system.as_str()) {
            systems.push(&f.system);
        }
    }
    // legend
    let mut x = 10.0;
    for s in &systems {
        let _ = writeln!(
            body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            color(s),
            x + 16.0,
            y + 10.0,
            esc(s)
        );
        x += 30.0 + 8.0 * s.len() as f64;
    }
    y += 28.0;
    let t = throughput_rows(report);
    if !t.is_empty() {
        y = panel(
            &mut body,
            y,
            "Throughput relative to nats-server (median, higher is better; raw TCP off scale, see tables)",
            &t,
            Some(1.0),
        );
    }
    let l = latency_rows(report);
    if !l.is_empty() {
        y = panel(
            &mut body,
            y,
            "Request/reply latency (median of runs, µs, lower is better)",
            &l,
            None,
        );
    }
    let _ = writeln!(
        body,
        r##"<text x="10" y="{:.1}" font-size="10" fill="#555">{} · {} cores · {}</text>"##,
        y,
        esc(&report.machine.cpu),
        report.machine.cores,
        esc(&report.date)
    );
    y += 10.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{y:.0}\" viewBox=\"0 0 {WIDTH} {y:.0}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}
