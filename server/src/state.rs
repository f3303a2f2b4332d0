//! What every entry point shares: the deployments and pipelines by name, the object
//! store, the tasks, the machine's resources and the metrics; and the look-up of what a
//! model name serves.
//!
//! No protocol here: the API layer and the inference core both hold an [`AppState`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::Tokens;
use crate::history::{History, ModelReading};
use crate::metrics::{Metrics, RequestMetrics};
use crate::pipeline::Pipeline;
use crate::resources::Cluster;
use crate::serving::stats::ModelStats;
use crate::serving::{Deployment, MODEL_VERSION};
use crate::shm::SharedMemory;
use crate::store::Store;
use crate::tasks::Tasks;

/// What every handler shares.
pub struct AppState {
    pub cluster: Cluster,
    /// In the order of the deployment file.
    pub deployments: Vec<Arc<Deployment>>,
    by_name: HashMap<String, Arc<Deployment>>,
    pub metrics: Arc<Metrics>,
    /// False once the server is shutting down: readiness answers 503.
    accepting: AtomicBool,
    pub max_request_bytes: usize,
    pub store: Arc<Store>,
    pub tasks: Arc<Tasks>,
    /// In the order of the deployment file.
    pub pipelines: Vec<Arc<Pipeline>>,
    pipelines_by_name: HashMap<String, Arc<Pipeline>>,
    /// The clients' registered shared-memory regions (Triton's system shared-memory
    /// extension; refuses every call unless `allow_shared_memory`).
    pub shm: SharedMemory,
    /// The bearer tokens routes need (none: all open).
    pub tokens: Tokens,
    /// The last minutes, for the status page.
    pub history: History,
}

/// What a model name serves: a deployment or a pipeline, each served through the same
/// inference path.
#[derive(Clone)]
pub enum Served {
    Deployment(Arc<Deployment>),
    Pipeline(Arc<Pipeline>),
}

impl Served {
    pub fn name(&self) -> &str {
        match self {
            Served::Deployment(d) => d.name(),
            Served::Pipeline(p) => p.name(),
        }
    }

    /// `model` or `pipeline`, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Served::Deployment(_) => "model",
            Served::Pipeline(_) => "pipeline",
        }
    }

    pub fn is_ready(&self) -> bool {
        match self {
            Served::Deployment(d) => d.is_ready(),
            Served::Pipeline(p) => p.is_ready(),
        }
    }

    /// Its outputs' names and datatypes, in order.
    pub fn outputs(&self) -> Vec<(&str, prism_protocol::DType)> {
        match self {
            Served::Deployment(d) => d
                .signature
                .outputs
                .iter()
                .map(|t| (t.name.as_str(), t.datatype))
                .collect(),
            Served::Pipeline(p) => vec![(p.spec.output_name.as_str(), p.output_datatype())],
        }
    }

    pub fn request_metrics(&self) -> &RequestMetrics {
        match self {
            Served::Deployment(d) => &d.request_metrics,
            Served::Pipeline(p) => &p.request_metrics,
        }
    }

    /// A request answered after `d`: the first one a deployment's replicas answer since
    /// they were loaded is kept (`first_request_ms` in the status).
    pub fn answered(&self, d: std::time::Duration) {
        if let Served::Deployment(deployment) = self {
            deployment.answered(d);
        }
    }

    /// Triton's statistics, which deployments keep and pipelines do not.
    pub fn stats(&self) -> Option<&ModelStats> {
        match self {
            Served::Deployment(d) => Some(&d.stats),
            Served::Pipeline(_) => None,
        }
    }
}

/// Why a model path names nothing that serves.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("unknown model `{0}`")]
    ModelNotFound(String),
    #[error("model `{model}` has no version `{version}`; it serves version 1")]
    VersionNotFound { model: String, version: String },
    #[error(
        "`{0}` is a pipeline: it has metadata, readiness and inference, not this route (config, statistics, load and unload are per deployment)"
    )]
    IsPipeline(String),
}

impl AppState {
    pub fn new(
        deployments: Vec<Arc<Deployment>>,
        metrics: Arc<Metrics>,
        max_request_bytes: usize,
        cluster: Cluster,
        store: Arc<Store>,
        pipelines: Vec<prism_config::Pipeline>,
        shm: SharedMemory,
    ) -> Self {
        let by_name = deployments
            .iter()
            .map(|d| (d.name().to_owned(), Arc::clone(d)))
            .collect();
        let pipelines: Vec<Arc<Pipeline>> = pipelines
            .into_iter()
            .map(|p| Arc::new(Pipeline::new(p, &by_name, &metrics)))
            .collect();
        let pipelines_by_name = pipelines.iter().map(|p| (p.name().to_owned(), Arc::clone(p))).collect();
        let tasks = Arc::new(Tasks {
            store: Arc::clone(&store),
            pool: Arc::clone(&cluster.pool),
            metrics: Arc::clone(&metrics),
            background: tokio_util::task::TaskTracker::new(),
        });
        AppState {
            cluster,
            deployments,
            by_name,
            metrics,
            accepting: AtomicBool::new(true),
            max_request_bytes,
            store,
            tasks,
            pipelines,
            pipelines_by_name,
            shm,
            tokens: Tokens::default(),
            history: History::default(),
        }
    }

    /// The same state, its routes guarded by `tokens`.
    pub fn with_tokens(self, tokens: Tokens) -> Self {
        AppState { tokens, ..self }
    }

    /// Whether the server takes new work (false once it is shutting down).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    /// A point of each deployment's history and of the store's, from the metrics and
    /// gauges as they read now.
    pub fn sample_history(&self) {
        let now = std::time::Instant::now();
        for d in &self.deployments {
            let name = d.name();
            let reading = ModelReading {
                latency: crate::metrics::reading(&self.metrics.request_duration.with_label_values(&[name])),
                batch_rows: crate::metrics::reading(&self.metrics.batch_size.with_label_values(&[name])),
                queue_depth: d.queued(),
            };
            self.history.record_model(name, now, reading);
        }
        let (objects, memory, spilled) = self.store.usage();
        self.history.record_store(objects, memory, spilled);
    }

    /// Sets the replica gauges (`prism_replica_states`, `prism_replica_memory_bytes`) to
    /// what the deployments hold now: read when scraped, so that reloads, crashes and
    /// restarts need no bookkeeping of their own.
    pub fn refresh_replica_metrics(&self) {
        let (states, memory) = (&self.metrics.replica_states, &self.metrics.replica_memory);
        let _refilling = self.metrics.refilling();
        states.reset();
        memory.reset();
        for d in &self.deployments {
            let name = d.name();
            for state in ["running", "restarting", "failed", "pending"] {
                states.with_label_values(&[name, state]).set(0);
            }
            for r in d.replicas() {
                let state = r.health.as_ref().map_or("pending", |h| h.get().state);
                states.with_label_values(&[name, state]).inc();
                if let (Some(device), Some(_)) = (&r.device, &r.health) {
                    let replica = r.index.to_string();
                    let bytes = i64::try_from(d.replica_memory()).unwrap_or(i64::MAX);
                    memory.with_label_values(&[name, &replica, device]).set(bytes);
                }
            }
        }
    }

    /// Ready: taking work, and every loaded deployment has a replica running (a model
    /// unloaded through the repository API is not waited for, as in Triton).
    pub fn is_ready(&self) -> bool {
        self.is_accepting() && self.deployments.iter().all(|d| d.is_ready() || !d.is_loaded())
    }

    /// The deployment or pipeline `model` names, at `version` (empty or absent: the one
    /// version there is).
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<Served, LookupError> {
        let served = match (self.by_name.get(model), self.pipelines_by_name.get(model)) {
            (Some(d), _) => Served::Deployment(Arc::clone(d)),
            (None, Some(p)) => Served::Pipeline(Arc::clone(p)),
            (None, None) => return Err(LookupError::ModelNotFound(model.to_owned())),
        };
        match version {
            None | Some("") | Some(MODEL_VERSION) => Ok(served),
            Some(v) => Err(LookupError::VersionNotFound {
                model: model.to_owned(),
                version: v.to_owned(),
            }),
        }
    }

    /// The deployment `model` names, for what pipelines do not have (configuration,
    /// statistics, load and unload).
    pub fn deployment(&self, model: &str, version: Option<&str>) -> Result<Arc<Deployment>, LookupError> {
        match self.resolve(model, version)? {
            Served::Deployment(d) => Ok(d),
            Served::Pipeline(p) => Err(LookupError::IsPipeline(p.name().to_owned())),
        }
    }
}
