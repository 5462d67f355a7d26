//! What a replay measured, as JSON and as one self-contained HTML page
//! with inline SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use crate::stats::{KindSummary, Percentiles, Point};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const PAD: f64 = 50.0;

/// What one replay measured: written as report.json and report.html.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub target: String,
    pub residents: u64,
    pub compression: f64,
    pub anchor_unix_ms: i64,
    pub wall_seconds: f64,
    pub ingest: KindSummary,
    pub lookup: KindSummary,
    /// Outcomes of the events inside ingest batches.
    pub events: BTreeMap<String, u64>,
    /// From ACCEPTED to the result being visible through Lookup.
    pub freshness: Percentiles,
    pub freshness_timeouts: u64,
    pub timeline: Vec<Point>,
    /// Residents checked while the round ran.
    #[serde(default)]
    pub mid_round: Vec<crate::midround::MidRoundCheck>,
}

impl ReplayReport {
    /// report.json and report.html in `out`.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(out.join("report.html"), html(self))?;
        Ok(())
    }
}

/// A line chart of `series` (name, colour, values per second).
fn chart(title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]) -> String {
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let max = series.iter().flat_map(|s| s.2.iter().copied()).fold(0.0f64, f64::max).max(1e-9);
    let x = |i: usize| PAD + (WIDTH - 2.0 * PAD) * i as f64 / (n - 1) as f64;
    let y = |v: f64| HEIGHT - PAD + -(HEIGHT - 2.0 * PAD) * v / max;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<text x="{PAD}" y="20" font-size="14" font-weight="bold">{title}</text>
<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="black"/>
<text x="4" y="{t}">{max:.1}</text><text x="4" y="{b}">0 {unit}</text>
<text x="{r}" y="{lb}" text-anchor="end">{last} s</text>
"#,
        b = HEIGHT - PAD,
        r = WIDTH - PAD,
        t = PAD + 4.0,
        lb = HEIGHT - PAD + 16.0,
        last = n - 1,
    );
    for (k, (name, colour, values)) in series.iter().enumerate() {
        let points: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{}" y="36" fill="{colour}">{name}</text>"#,
            points.join(" "),
            PAD + 140.0 * k as f64
        );
    }
    svg.push_str("</svg>");
    svg
}

fn row(name: &str, k: &KindSummary) -> String {
    let codes: Vec<String> = k.codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    format!(
        "<tr><td>{name}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
        k.requests,
        k.throughput_per_s,
        k.latency.p50_ms,
        k.latency.p99_ms,
        k.latency.p999_ms,
        k.latency.max_ms,
        codes.join(", ")
    )
}

pub fn html(report: &ReplayReport) -> String {
    let series = |f: fn(&Point) -> f64| report.timeline.iter().map(f).collect::<Vec<f64>>();
    let throughput = chart(
        "Throughput (requests per second, by intended send second)",
        "req/s",
        &[
            ("ingest batches", "#1f77b4", series(|p| p.ingest.count as f64)),
            ("lookups", "#d62728", series(|p| p.lookup.count as f64)),
        ],
    );
    let ingest = chart(
        "Ingest latency (ms, from intended send time)",
        "ms",
        &[
            ("p50", "#2ca02c", series(|p| p.ingest.p50_ms)),
            ("p99", "#ff7f0e", series(|p| p.ingest.p99_ms)),
            ("p99.9", "#9467bd", series(|p| p.ingest.p999_ms)),
        ],
    );
    let lookup = chart(
        "Lookup latency (ms, from intended send time)",
        "ms",
        &[
            ("p50", "#2ca02c", series(|p| p.lookup.p50_ms)),
            ("p99", "#ff7f0e", series(|p| p.lookup.p99_ms)),
            ("p99.9", "#9467bd", series(|p| p.lookup.p999_ms)),
        ],
    );
    let events: Vec<String> = report.events.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let f = &report.freshness;
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>healthcode replay</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>Replay of a {residents}-resident round</h1>
<p>Target {target}, compression {compression}x, wall time {wall:.1} s. Events: {events}.</p>
<table><tr><th>RPC</th><th>requests</th><th>per second</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>codes</th></tr>
{ingest_row}{lookup_row}</table>
<p>Freshness (ACCEPTED to visible through Lookup), {fc} samples: p50 {f50:.1} ms, p99 {f99:.1} ms, p99.9 {f999:.1} ms, max {fmax:.1} ms; {timeouts} not visible within 120 s.</p>
{throughput}<br>{ingest}<br>{lookup}
</body></html>
"#,
        residents = report.residents,
        target = report.target,
        compression = report.compression,
        wall = report.wall_seconds,
        events = events.join(", "),
        ingest_row = row("SubmitBatch", &report.ingest),
        lookup_row = row("GetStatus", &report.lookup),
        fc = f.count,
        f50 = f.p50_ms,
        f99 = f.p99_ms,
        f999 = f.p999_ms,
        fmax = f.max_ms,
        timeouts = report.freshness_timeouts,
    )
}
