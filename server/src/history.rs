//! The last minutes of the server, for the status page: in-process ring buffers sampled
//! every [`INTERVAL`], no external store. Each point holds what happened since the one
//! before: requests per second, latency quantiles (from the request-duration
//! histogram's bucket counts, interpolated inside a bucket as Prometheus'
//! `histogram_quantile` does), rows per batch, and the queue depth then; and the object
//! store's use.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How often a point is taken.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Points kept: ten minutes.
pub const POINTS: usize = 300;

/// A histogram's state at one moment: cumulative bucket counts by upper bound, and the
/// sum and count of what it observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// What was observed between `before` and `self`.
    fn since(&self, before: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&before.buckets)
                .map(|(&(bound, now), &(_, then))| (bound, now.saturating_sub(then)))
                .collect(),
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The `q` quantile of the observations, linearly interpolated inside its bucket
    /// (the first bucket starts at 0); `None` with no observations. One in the `+Inf`
    /// bucket answers the highest finite bound, as Prometheus does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank {
                let (low, below) = lower;
                if bound.is_infinite() {
                    return Some(low);
                }
                let inside = (cumulative - below) as f64;
                let share = if inside > 0.0 {
                    (rank - below as f64) / inside
                } else {
                    0.0
                };
                return Some(low + (bound - low) * share);
            }
            lower = (bound, cumulative);
        }
        Some(lower.0)
    }
}

/// What one deployment's counters read at one moment.
#[derive(Clone, Debug, Default)]
pub struct ModelReading {
    pub latency: Histogram,
    pub batch_rows: Histogram,
    pub queue_depth: usize,
}

/// One deployment over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelPoint {
    /// The interval's end, milliseconds since the epoch.
    pub t_ms: u64,
    pub requests_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Mean rows per batch run in the interval.
    pub batch_rows: Option<f64>,
    pub queue_depth: usize,
}

/// The object store at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StorePoint {
    pub t_ms: u64,
    pub objects: usize,
    pub memory_bytes: usize,
    pub spilled_bytes: usize,
}

struct Series {
    last: (Instant, ModelReading),
    points: VecDeque<ModelPoint>,
}

#[derive(Default)]
struct Inner {
    models: BTreeMap<String, Series>,
    store: VecDeque<StorePoint>,
}

/// The ring buffers.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

fn push<T>(ring: &mut VecDeque<T>, point: T) {
    if ring.len() == POINTS {
        ring.pop_front();
    }
    ring.push_back(point);
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `model`'s counters read at `at`: a point for the interval since the last
    /// reading (the first reading only sets where the next interval starts).
    pub fn record_model(&self, model: &str, at: Instant, reading: ModelReading) {
        let mut inner = self.lock();
        let Some(series) = inner.models.get_mut(model) else {
            inner.models.insert(
                model.to_owned(),
                Series {
                    last: (at, reading),
                    points: VecDeque::new(),
                },
            );
            return;
        };
        let (then, before) = &series.last;
        let seconds = at.saturating_duration_since(*then).as_secs_f64();
        let latency = reading.latency.since(&before.latency);
        let rows = reading.batch_rows.since(&before.batch_rows);
        let ms = |s: f64| s * 1e3;
        let point = ModelPoint {
            t_ms: epoch_ms(),
            requests_per_s: if seconds > 0.0 {
                latency.count as f64 / seconds
            } else {
                0.0
            },
            p50_ms: latency.quantile(0.5).map(ms),
            p99_ms: latency.quantile(0.99).map(ms),
            batch_rows: (rows.count > 0).then(|| rows.sum / rows.count as f64),
            queue_depth: reading.queue_depth,
        };
        push(&mut series.points, point);
        series.last = (at, reading);
    }

    pub fn record_store(&self, objects: usize, memory_bytes: usize, spilled_bytes: usize) {
        let point = StorePoint {
            t_ms: epoch_ms(),
            objects,
            memory_bytes,
            spilled_bytes,
        };
        push(&mut self.lock().store, point);
    }

    /// Every series, oldest point first.
    pub fn snapshot(&self) -> serde_json::Value {
        let inner = self.lock();
        let models: serde_json::Map<String, serde_json::Value> = inner
            .models
            .iter()
            .map(|(name, s)| (name.clone(), serde_json::json!(s.points)))
            .collect();
        serde_json::json!({
            "interval_s": INTERVAL.as_secs_f64(),
            "points": POINTS,
            "models": models,
            "object_store": inner.store,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(bounds: &[f64], counts: &[u64]) -> Histogram {
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(&b, &c)| {
                cumulative += c;
                (b, cumulative)
            })
            .collect();
        Histogram {
            buckets,
            sum: 0.0,
            count: cumulative,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        // 10 observations in (0, 1], 10 in (1, 2].
        let h = histogram(&[1.0, 2.0, f64::INFINITY], &[10, 10, 0]);
        assert_eq!(h.quantile(0.5), Some(1.0));
        assert_eq!(h.quantile(0.25), Some(0.5));
        assert_eq!(h.quantile(0.75), Some(1.5));
        assert_eq!(h.quantile(1.0), Some(2.0));
        // Beyond the last finite bound: that bound.
        let h = histogram(&[1.0, 2.0, f64::INFINITY], &[0, 0, 4]);
        assert_eq!(h.quantile(0.99), Some(2.0));
        assert_eq!(histogram(&[1.0], &[0]).quantile(0.5), None);
    }

    #[test]
    fn a_point_covers_the_interval_since_the_last_reading() {
        let history = History::default();
        let t0 = Instant::now();
        let bounds = [0.001, 0.01, f64::INFINITY];
        let reading = |counts: &[u64], rows: (f64, u64), queue_depth| ModelReading {
            latency: histogram(&bounds, counts),
            batch_rows: Histogram {
                buckets: vec![],
                sum: rows.0,
                count: rows.1,
            },
            queue_depth,
        };
        history.record_model("m", t0, reading(&[5, 0, 0], (5.0, 5), 0));
        let snap = history.snapshot();
        assert_eq!(
            snap["models"]["m"],
            serde_json::json!([]),
            "the first reading is a start"
        );
        // 2 s later: 20 more requests, all in (1, 10] ms, in 4 batches of 5 rows.
        history.record_model("m", t0 + Duration::from_secs(2), reading(&[5, 20, 0], (25.0, 9), 3));
        let snap = history.snapshot();
        let p = &snap["models"]["m"][0];
        assert_eq!(p["requests_per_s"], 10.0);
        assert!((p["p50_ms"].as_f64().unwrap() - 5.5).abs() < 1e-9, "{p}");
        assert_eq!(p["batch_rows"], 5.0);
        assert_eq!(p["queue_depth"], 3);
        // Idle: no requests, no quantiles.
        history.record_model("m", t0 + Duration::from_secs(4), reading(&[5, 20, 0], (25.0, 9), 0));
        let p = &history.snapshot()["models"]["m"][1];
        assert_eq!(p["requests_per_s"], 0.0);
        assert!(p["p50_ms"].is_null() && p["batch_rows"].is_null(), "{p}");
    }

    #[test]
    fn the_rings_keep_the_last_points() {
        let history = History::default();
        for i in 0..POINTS + 10 {
            history.record_store(i, 0, 0);
        }
        let snap = history.snapshot();
        let store = snap["object_store"].as_array().unwrap();
        assert_eq!(store.len(), POINTS);
        assert_eq!(store[0]["objects"], 10);
    }
}
