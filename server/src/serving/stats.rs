//! Triton's statistics extension (`GET /v2/models[/{m}]/stats`): cumulative counts and
//! nanoseconds per model, and per batch size. `perf_analyzer` reads these to split a
//! request's latency into queue and compute.
//!
//! Counters only: replicas record batches, the inference path records requests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// A count and the nanoseconds it took, summed.
#[derive(Clone, Copy, Default, Debug)]
pub struct Stat {
    pub count: u64,
    pub ns: u64,
}

impl Stat {
    fn add(&mut self, d: Duration) {
        self.add_n(1, d);
    }

    fn add_n(&mut self, n: u64, d: Duration) {
        self.count += n;
        self.ns += d.as_nanos() as u64;
    }

    fn json(self) -> Value {
        json!({ "count": self.count, "ns": self.ns })
    }
}

/// The compute times of the batches of one size.
#[derive(Clone, Copy, Default, Debug)]
pub struct BatchStat {
    pub compute_input: Stat,
    pub compute_infer: Stat,
    pub compute_output: Stat,
}

/// A model's statistics at one moment, as Triton's extension reports them.
#[derive(Clone, Default, Debug)]
pub struct Snapshot {
    /// Milliseconds since the epoch of the last batch (0: none yet).
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: Stat,
    pub fail: Stat,
    pub queue: Stat,
    pub compute_input: Stat,
    pub compute_infer: Stat,
    pub compute_output: Stat,
    /// By batch size (rows).
    pub batches: BTreeMap<usize, BatchStat>,
}

/// The times of one executed batch.
pub struct BatchTimes {
    pub rows: usize,
    pub requests: usize,
    /// Sum over the batch's requests of their time in the queue.
    pub queue_total: Duration,
    /// Gathering the requests' rows into one matrix.
    pub input: Duration,
    /// Running the model.
    pub infer: Duration,
    /// Splitting the answer and handing it back.
    pub output: Duration,
}

/// Cumulative statistics of one model. Updated once per batch and once per request; a
/// plain mutex is enough (never held across an await, never contended for long).
#[derive(Default)]
pub struct ModelStats {
    inner: Mutex<Snapshot>,
}

impl ModelStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        // A panic while holding this lock leaves only counters behind: keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record_batch(&self, t: &BatchTimes) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let n = t.requests as u64;
        let mut s = self.lock();
        s.last_inference_ms = now_ms;
        s.inference_count += t.rows as u64;
        s.execution_count += 1;
        s.queue.add_n(n, t.queue_total);
        // Triton counts compute per request, each sharing its batch's time.
        s.compute_input.add_n(n, t.input * t.requests as u32);
        s.compute_infer.add_n(n, t.infer * t.requests as u32);
        s.compute_output.add_n(n, t.output * t.requests as u32);
        let b = s.batches.entry(t.rows).or_default();
        b.compute_input.add(t.input);
        b.compute_infer.add(t.infer);
        b.compute_output.add(t.output);
    }

    /// A request answered (successfully or not) after `d`.
    pub fn record_request(&self, success: bool, d: Duration) {
        let mut s = self.lock();
        if success { s.success.add(d) } else { s.fail.add(d) }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    pub fn to_json(&self, name: &str, version: &str) -> Value {
        let s = self.snapshot();
        let zero = Stat::default().json();
        json!({
            "name": name,
            "version": version,
            "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count,
            "execution_count": s.execution_count,
            "inference_stats": {
                "success": s.success.json(),
                "fail": s.fail.json(),
                "queue": s.queue.json(),
                "compute_input": s.compute_input.json(),
                "compute_infer": s.compute_infer.json(),
                "compute_output": s.compute_output.json(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": s.batches.iter().map(|(size, b)| json!({
                "batch_size": size,
                "compute_input": b.compute_input.json(),
                "compute_infer": b.compute_infer.json(),
                "compute_output": b.compute_output.json(),
            })).collect::<Vec<_>>(),
            "memory_usage": [],
        })
    }
}
