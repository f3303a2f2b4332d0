//! Prometheus metrics: every name in one place, registered once per server, with
//! explicit buckets. HTTP metrics are labelled by the matched route, never the raw URI.
//!
//! Owns every metric name and registration; the rest of the server only increments what
//! it is handed (bound once, at start-up, where it can be).

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::resources::inventory::GpuSample;

pub const INFERENCE_REQUESTS: &str = "prism_inference_requests_total";
pub const INFERENCE_REQUEST_DURATION: &str = "prism_inference_request_duration_seconds";
pub const INFERENCE_QUEUE_DURATION: &str = "prism_inference_queue_duration_seconds";
pub const INFERENCE_COMPUTE_DURATION: &str = "prism_inference_compute_duration_seconds";
pub const BATCH_SIZE: &str = "prism_batch_size";
pub const QUEUE_DEPTH: &str = "prism_queue_depth";
pub const REPLICAS: &str = "prism_replicas";
pub const HTTP_REQUESTS: &str = "prism_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "prism_http_request_duration_seconds";
pub const GRPC_REQUESTS: &str = "prism_grpc_requests_total";
pub const GRPC_REQUEST_DURATION: &str = "prism_grpc_request_duration_seconds";
pub const OBJECTS: &str = "prism_object_store_objects";
pub const OBJECT_MEMORY: &str = "prism_object_store_memory_bytes";
pub const OBJECT_SPILLED: &str = "prism_object_store_spilled_bytes";
pub const OBJECT_SPILLS: &str = "prism_object_store_spills_total";
pub const OBJECT_RESTORES: &str = "prism_object_store_restores_total";
pub const OBJECT_PUT_FAILURES: &str = "prism_object_store_put_failures_total";
pub const INFERENCE_RETRIES: &str = "prism_inference_retries_total";
pub const REPLICA_RESTARTS: &str = "prism_replica_restarts_total";
pub const TASKS: &str = "prism_tasks_total";
pub const TASK_RETRIES: &str = "prism_task_retries_total";
pub const TASK_DURATION: &str = "prism_task_duration_seconds";
pub const REPLICA_BUSY: &str = "prism_replica_busy_seconds_total";
pub const REPLICA_MEMORY: &str = "prism_replica_memory_bytes";
pub const REPLICA_STATES: &str = "prism_replica_states";
pub const GPU_UTILIZATION: &str = "prism_gpu_utilization_ratio";
pub const GPU_MEMORY_USED: &str = "prism_gpu_memory_used_bytes";
pub const GPU_MEMORY_TOTAL: &str = "prism_gpu_memory_total_bytes";
pub const GPU_POWER: &str = "prism_gpu_power_watts";
pub const GPU_TEMPERATURE: &str = "prism_gpu_temperature_celsius";

/// Latency buckets from 50 µs to 10 s: a lone CPU request answers in well under a
/// millisecond, a full GPU batch or a queue under overload in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch sizes in rows: powers of two up to 1024.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// The object store's gauges and counters.
#[derive(Clone)]
pub struct StoreMetrics {
    pub objects: IntGauge,
    pub memory_bytes: IntGauge,
    pub spilled_bytes: IntGauge,
    pub spills: IntCounter,
    pub restores: IntCounter,
    pub put_failures: IntCounter,
}

/// The server's metrics. One registry per server, so several servers in one process
/// (tests) do not collide.
pub struct Metrics {
    registry: Registry,
    /// Held while gauges are cleared and set again, and while the text is rendered: a
    /// scrape never sees a gauge family half refilled.
    scrape: std::sync::Mutex<()>,
    /// Inference requests by `model` (a deployment or a pipeline) and `outcome`
    /// ([`Outcome`]), each counted once when it ends.
    pub requests: IntCounterVec,
    /// From the request's arrival to its answer, by `model`.
    pub request_duration: HistogramVec,
    /// From a request's enqueueing to its batch starting on a replica, by `model`.
    pub queue_duration: HistogramVec,
    /// One batch's model execution, by `model`.
    pub compute_duration: HistogramVec,
    /// Rows per executed batch, by `model`.
    pub batch_size: HistogramVec,
    /// Requests waiting for a batch, by `model`.
    pub queue_depth: IntGaugeVec,
    /// Running replicas, by `model` and `device`.
    pub replicas: IntGaugeVec,
    /// HTTP requests by `method`, matched `route` and `status`.
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// gRPC calls by `method` and `code` (`Ok`, `InvalidArgument`, ...).
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    /// Batches run again after a failure, by `model` and `reason`.
    pub inference_retries: IntCounterVec,
    /// Replicas started again after a crash, by `model`.
    pub replica_restarts: IntCounterVec,
    /// The object store's gauges and counters.
    pub store: StoreMetrics,
    /// Finished tasks by `op` and `outcome` (success, failed).
    pub tasks: IntCounterVec,
    /// Task executions retried, by `op` and `reason` (the error kind of the failed try).
    pub task_retries: IntCounterVec,
    /// From a task's start (arguments ready, resources taken) to its end, by `op`.
    pub task_duration: HistogramVec,
    /// Seconds each replica spent running batches, by `model`, `replica` (its index in
    /// the status) and `device`.
    pub replica_busy: CounterVec,
    /// What each running replica was placed with, by `model`, `replica` and `device`.
    pub replica_memory: IntGaugeVec,
    /// Replicas by `model` and `state` (running, restarting, failed, pending).
    pub replica_states: IntGaugeVec,
    /// Each card's figures from NVML, by `gpu` (NVML's index) and `uuid`.
    pub gpus: GpuMetrics,
}

/// The cards' figures, sampled every `server.metrics_interval_s`.
pub struct GpuMetrics {
    pub utilization: GaugeVec,
    pub memory_used: GaugeVec,
    pub memory_total: GaugeVec,
    pub power: GaugeVec,
    pub temperature: GaugeVec,
    /// The last samples, for the status page.
    latest: std::sync::Mutex<Vec<GpuSample>>,
}

impl GpuMetrics {
    /// The last sample of card `index` (NVML's), if it was read.
    pub fn latest(&self, index: usize) -> Option<GpuSample> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.iter().find(|s| s.index == index).cloned()
    }

    /// Replaces every card's figures with `samples`: a card or a figure that is no longer
    /// read loses its series (absent, not zero).
    fn record(&self, samples: &[GpuSample]) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = samples.to_vec();
        let all = [
            &self.utilization,
            &self.memory_used,
            &self.memory_total,
            &self.power,
            &self.temperature,
        ];
        for g in all {
            g.reset();
        }
        for s in samples {
            let index = s.index.to_string();
            let labels = [index.as_str(), s.uuid.as_str()];
            let figures = [
                (&self.utilization, s.utilization),
                (&self.memory_used, s.memory_used.map(|b| b as f64)),
                (&self.memory_total, s.memory_total.map(|b| b as f64)),
                (&self.power, s.power_watts),
                (&self.temperature, s.temperature_celsius),
            ];
            for (gauge, value) in figures {
                if let Some(v) = value.filter(|v| v.is_finite()) {
                    gauge.with_label_values(&labels).set(v);
                }
            }
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique. This is a bug.");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(&registry, HistogramVec::new(opts, labels).expect("valid metric"))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gpu = |name: &str, help: &str| {
            register(
                &registry,
                GaugeVec::new(Opts::new(name, help), &["gpu", "uuid"]).expect("valid metric"),
            )
        };
        Metrics {
            requests: counter(
                INFERENCE_REQUESTS,
                "Inference requests by model and outcome.",
                &["model", "outcome"],
            ),
            request_duration: histogram(
                INFERENCE_REQUEST_DURATION,
                "Inference request duration, arrival to answer.",
                LATENCY_BUCKETS,
                &["model"],
            ),
            queue_duration: histogram(
                INFERENCE_QUEUE_DURATION,
                "Time a request waited for its batch to start.",
                LATENCY_BUCKETS,
                &["model"],
            ),
            compute_duration: histogram(
                INFERENCE_COMPUTE_DURATION,
                "Model execution time of one batch.",
                LATENCY_BUCKETS,
                &["model"],
            ),
            batch_size: histogram(BATCH_SIZE, "Rows per executed batch.", BATCH_BUCKETS, &["model"]),
            queue_depth: gauge(QUEUE_DEPTH, "Requests waiting for a batch.", &["model"]),
            replicas: gauge(REPLICAS, "Running replicas.", &["model", "device"]),
            http_requests: counter(
                HTTP_REQUESTS,
                "HTTP requests by method, route and status.",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                HTTP_REQUEST_DURATION,
                "HTTP request duration by route.",
                LATENCY_BUCKETS,
                &["method", "route"],
            ),
            grpc_requests: counter(
                GRPC_REQUESTS,
                "gRPC calls by method and status code.",
                &["method", "code"],
            ),
            grpc_duration: histogram(
                GRPC_REQUEST_DURATION,
                "gRPC call duration by method.",
                LATENCY_BUCKETS,
                &["method"],
            ),
            store: StoreMetrics {
                objects: register(
                    &registry,
                    IntGauge::new(OBJECTS, "Objects in the store, pending ones included.").expect("valid metric"),
                ),
                memory_bytes: register(
                    &registry,
                    IntGauge::new(OBJECT_MEMORY, "Bytes of objects in memory (puts in flight included).")
                        .expect("valid metric"),
                ),
                spilled_bytes: register(
                    &registry,
                    IntGauge::new(OBJECT_SPILLED, "Bytes of objects spilled to disk.").expect("valid metric"),
                ),
                spills: register(
                    &registry,
                    IntCounter::new(OBJECT_SPILLS, "Objects written to disk to make room.").expect("valid metric"),
                ),
                restores: register(
                    &registry,
                    IntCounter::new(OBJECT_RESTORES, "Spilled objects brought back into memory on access.")
                        .expect("valid metric"),
                ),
                put_failures: register(
                    &registry,
                    IntCounter::new(OBJECT_PUT_FAILURES, "Objects the store could not make room for.")
                        .expect("valid metric"),
                ),
            },
            inference_retries: counter(
                INFERENCE_RETRIES,
                "Batches run again after a failure, by model and the error kind of the failed try.",
                &["model", "reason"],
            ),
            replica_restarts: counter(
                REPLICA_RESTARTS,
                "Replicas started again after a crash (their batches ran on other replicas), by model.",
                &["model"],
            ),
            tasks: counter(TASKS, "Finished tasks by op and outcome.", &["op", "outcome"]),
            task_retries: counter(
                TASK_RETRIES,
                "Task executions retried, by op and the error kind of the failed try.",
                &["op", "reason"],
            ),
            task_duration: histogram(
                TASK_DURATION,
                "Task execution time, retries included.",
                LATENCY_BUCKETS,
                &["op"],
            ),
            replica_busy: register(
                &registry,
                CounterVec::new(
                    Opts::new(
                        REPLICA_BUSY,
                        "Seconds a replica spent running batches: on a GPU its copies and kernels (CUDA events), on the CPU from taking a batch to answering it.",
                    ),
                    &["model", "replica", "device"],
                )
                .expect("valid metric"),
            ),
            replica_memory: gauge(
                REPLICA_MEMORY,
                "Memory a running replica is placed with: its weights and its largest batch's working memory (what a card reserves for it; CPU replicas of a deployment share one mapping of the weights).",
                &["model", "replica", "device"],
            ),
            replica_states: gauge(
                REPLICA_STATES,
                "Replicas by state: running, restarting, failed, pending (not placed).",
                &["model", "state"],
            ),
            gpus: GpuMetrics {
                utilization: gpu(
                    GPU_UTILIZATION,
                    "Share of the last sample period the GPU was busy (NVML), 0 to 1.",
                ),
                memory_used: gpu(GPU_MEMORY_USED, "GPU memory in use, every process's (NVML)."),
                memory_total: gpu(GPU_MEMORY_TOTAL, "GPU memory (NVML)."),
                power: gpu(GPU_POWER, "GPU power draw (NVML)."),
                temperature: gpu(GPU_TEMPERATURE, "GPU core temperature (NVML)."),
                latest: std::sync::Mutex::new(Vec::new()),
            },
            scrape: std::sync::Mutex::new(()),
            registry,
        }
    }

    /// Holds off scrapes while gauges are refilled (see [`Metrics::render`]).
    pub fn refilling(&self) -> std::sync::MutexGuard<'_, ()> {
        self.scrape.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the cards' figures with `samples`, as one step for scrapes.
    pub fn record_gpus(&self, samples: &[GpuSample]) {
        let _refilling = self.refilling();
        self.gpus.record(samples);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let _refilling = self.refilling();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// A histogram's counts as they read now.
pub fn reading(h: &Histogram) -> crate::history::Histogram {
    use prometheus::core::Metric as _;
    let m = h.metric();
    let p = m.get_histogram();
    crate::history::Histogram {
        buckets: p
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect(),
        sum: p.get_sample_sum(),
        count: p.get_sample_count(),
    }
}

/// How an inference request ended: the `outcome` label of [`INFERENCE_REQUESTS`]. Every
/// request is counted once, with one of these, so the outcomes add up to the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused as written (400, 413, 415).
    BadRequest,
    /// An object it named is not in the store.
    NotFound,
    /// The queue was full, or the store could not hold its output.
    Rejected,
    /// Its own deadline passed.
    Timeout,
    /// The model was not ready, or the server was stopping.
    Unavailable,
    /// The model failed after its retries.
    Failed,
    /// The client left before its answer.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Success,
        Outcome::BadRequest,
        Outcome::NotFound,
        Outcome::Rejected,
        Outcome::Timeout,
        Outcome::Unavailable,
        Outcome::Failed,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::BadRequest => "bad_request",
            Outcome::NotFound => "not_found",
            Outcome::Rejected => "rejected",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One model's (or pipeline's) request metrics, bound to its labels once at start-up so
/// the request path does no label hashing; every outcome's series exists (at 0) from the
/// start.
pub struct RequestMetrics {
    pub duration: Histogram,
    /// In the order of [`Outcome::ALL`].
    outcomes: [IntCounter; Outcome::ALL.len()],
}

impl RequestMetrics {
    pub fn new(metrics: &Metrics, model: &str) -> Self {
        RequestMetrics {
            duration: metrics.request_duration.with_label_values(&[model]),
            outcomes: Outcome::ALL.map(|o| metrics.requests.with_label_values(&[model, o.as_str()])),
        }
    }

    pub fn outcome(&self, outcome: Outcome) -> &IntCounter {
        &self.outcomes[outcome as usize]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
