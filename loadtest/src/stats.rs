//! Latency and outcome accounting for the replay and the bench.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to ten minutes.
const MAX_MICROS: u64 = 600_000_000;

pub fn histogram(significant_figures: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, significant_figures).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// Requests of one RPC kind: latency overall and per second, codes.
pub struct KindStats {
    pub latency: Histogram<u64>,
    pub per_second: Vec<Histogram<u64>>,
    pub codes: BTreeMap<String, u64>,
}

impl Default for KindStats {
    fn default() -> Self {
        KindStats { latency: histogram(3), per_second: Vec::new(), codes: BTreeMap::new() }
    }
}

impl KindStats {
    /// Records one request, in the second it was meant to be sent.
    pub fn record(&mut self, second: usize, latency: Duration, code: &str) {
        let us = micros(latency);
        self.latency.record(us).expect("clamped into range");
        if self.per_second.len() <= second {
            self.per_second.resize_with(second + 1, || histogram(2));
        }
        self.per_second[second].record(us).expect("clamped into range");
        *self.codes.entry(code.to_owned()).or_default() += 1;
    }

    pub fn summary(&self, seconds: f64) -> KindSummary {
        KindSummary {
            requests: self.latency.len(),
            throughput_per_s: if seconds > 0.0 { self.latency.len() as f64 / seconds } else { 0.0 },
            latency: Percentiles::of(&self.latency),
            codes: self.codes.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KindSummary {
    pub requests: u64,
    pub throughput_per_s: f64,
    pub latency: Percentiles,
    pub codes: BTreeMap<String, u64>,
}

/// One second of the run, for the report's charts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Point {
    pub second: usize,
    pub ingest: Percentiles,
    pub lookup: Percentiles,
}

pub fn timeline(ingest: &KindStats, lookup: &KindStats) -> Vec<Point> {
    let seconds = ingest.per_second.len().max(lookup.per_second.len());
    let at = |k: &KindStats, s: usize| k.per_second.get(s).map(Percentiles::of).unwrap_or_default();
    (0..seconds).map(|s| Point { second: s, ingest: at(ingest, s), lookup: at(lookup, s) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_buckets_follow_the_intended_second() {
        let mut k = KindStats::default();
        k.record(0, Duration::from_millis(1), "OK");
        k.record(3, Duration::from_millis(40), "OK");
        k.record(3, Duration::from_millis(2), "UNAVAILABLE");
        assert_eq!(k.per_second.len(), 4);
        assert_eq!(k.per_second[3].len(), 2);
        assert_eq!(k.per_second[1].len(), 0);
        assert_eq!(k.codes["OK"], 2);
        let p = Percentiles::of(&k.latency);
        assert_eq!(p.count, 3);
        assert!((p.max_ms - 40.0).abs() < 0.1, "{p:?}");
    }
}
