//! What a run measured: one [`Point`] per load level, printable as a table, JSON or CSV.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Load;
use super::workload::Workload;

/// Errors by kind (`http_503`, `timeout`, `connect`, `client_overload`, ...).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Errors(pub BTreeMap<String, u64>);

impl Errors {
    pub fn add(&mut self, kind: &str) {
        *self.0.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn merge(&mut self, other: Errors) {
        for (k, v) in other.0 {
            *self.0.entry(k).or_default() += v;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("0");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        f.write_str(&parts.join(" "))
    }
}

/// One load level, measured.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// `closed` or `open`.
    pub mode: &'static str,
    pub concurrency: Option<usize>,
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    /// Successful requests in the window.
    pub requests: u64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Rows (inferences) per second.
    pub rows_per_s: f64,
    pub latency_ms_mean: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub errors: Errors,
    pub error_count: u64,
}

impl Point {
    pub fn new(load: Load, workload: &Workload, duration: Duration, hist: &Histogram<u64>, errors: Errors) -> Point {
        let secs = duration.as_secs_f64();
        let ms = |us: u64| us as f64 / 1000.0;
        let (mode, concurrency, target_rate) = match load {
            Load::Closed { concurrency } => ("closed", Some(concurrency), None),
            Load::Open { rate, .. } => ("open", None, Some(rate)),
        };
        let requests = hist.len();
        Point {
            mode,
            concurrency,
            target_rate,
            duration_s: secs,
            requests,
            throughput: requests as f64 / secs,
            rows_per_s: (requests * workload.rows as u64) as f64 / secs,
            latency_ms_mean: if requests > 0 { hist.mean() / 1000.0 } else { 0.0 },
            latency_ms_p50: ms(hist.value_at_quantile(0.5)),
            latency_ms_p90: ms(hist.value_at_quantile(0.9)),
            latency_ms_p99: ms(hist.value_at_quantile(0.99)),
            latency_ms_p999: ms(hist.value_at_quantile(0.999)),
            latency_ms_max: ms(hist.max()),
            error_count: errors.total(),
            errors,
        }
    }

    /// `c=32` or `r=5000/s`.
    pub fn label(&self) -> String {
        match (self.concurrency, self.target_rate) {
            (Some(c), _) => format!("c={c}"),
            (_, Some(r)) => format!("r={r}/s"),
            _ => "?".into(),
        }
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub url: String,
    pub model: String,
    pub format: String,
    pub batch_size: usize,
    pub request_bytes: usize,
    pub warmup_s: f64,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix_s: u64,
    pub points: Vec<Point>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} {} ({}, batch {}, {} B per request)\n{:<12}{:>11}{:>11}{:>9}{:>9}{:>9}{:>10}{:>9}  errors\n",
            self.url,
            self.model,
            self.format,
            self.batch_size,
            self.request_bytes,
            "load",
            "req/s",
            "rows/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        for p in &self.points {
            out.push_str(&format!(
                "{:<12}{:>11.1}{:>11.1}{:>9.3}{:>9.3}{:>9.3}{:>10.3}{:>9.3}  {}\n",
                p.label(),
                p.throughput,
                p.rows_per_s,
                p.latency_ms_p50,
                p.latency_ms_p90,
                p.latency_ms_p99,
                p.latency_ms_p999,
                p.latency_ms_max,
                p.errors
            ));
        }
        out
    }

    pub fn csv(&self) -> String {
        let mut out = String::from(
            "model,format,batch_size,mode,concurrency,target_rate,duration_s,requests,throughput,rows_per_s,\
             latency_ms_mean,latency_ms_p50,latency_ms_p90,latency_ms_p99,latency_ms_p999,latency_ms_max,errors\n",
        );
        let opt = |v: Option<String>| v.unwrap_or_default();
        for p in &self.points {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{:.3},{:.3},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{}\n",
                self.model,
                self.format,
                self.batch_size,
                p.mode,
                opt(p.concurrency.map(|c| c.to_string())),
                opt(p.target_rate.map(|r| r.to_string())),
                p.duration_s,
                p.requests,
                p.throughput,
                p.rows_per_s,
                p.latency_ms_mean,
                p.latency_ms_p50,
                p.latency_ms_p90,
                p.latency_ms_p99,
                p.latency_ms_p999,
                p.latency_ms_max,
                p.error_count
            ));
        }
        out
    }
}
