//! A deployment: a model, its replicas (actors) and the batcher in front of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use ndarray::Array2;
use prism_config::{Deployment as Spec, ModelSource};
use prism_kernels::{Device, Model, WeightFile, builtin};
use tokio::sync::{mpsc, watch};

use crate::batcher::{Batcher, BatcherHandle, Hooks, Reply, Rows, SubmitError};
use crate::error::{ApiError, InferError};
use crate::metrics::{Metrics, RequestMetrics};
use crate::replica::{self, ReplicaMetrics, ReplicaSpec};
use crate::stats::ModelStats;

/// The only version a Prism model has; `/versions/1/...` paths reach it.
pub const MODEL_VERSION: &str = "1";

/// A deployment that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("deployment `{name}`: {source}")]
    Model {
        name: String,
        source: prism_kernels::ModelError,
    },
    #[error(
        "deployment `{name}`: {file}: the layers produce {produced} features per row, but `outputs` declares [-1, {declared}]"
    )]
    OutputWidth {
        name: String,
        file: String,
        produced: usize,
        declared: usize,
    },
    #[error("deployment `{name}`: cannot start replica {index}: {reason}")]
    Replica { name: String, index: usize, reason: String },
    /// A load through the repository API could not run.
    #[error("deployment `{name}`: {reason}")]
    Load { name: String, reason: String },
}

/// A deployment: its spec, its counters, and (while loaded) its running replicas and
/// batcher. `POST /v2/repository/models/{m}/unload` stops the replicas; `load` starts
/// them again on the same slots, reading the weights anew, and swaps them in while the
/// old ones finish what they hold.
pub struct Deployment {
    pub spec: Spec,
    /// `prism_builtin` or `prism_safetensors`, for the metadata's `platform`.
    pub platform: &'static str,
    pub stats: Arc<ModelStats>,
    /// This model's request counters and latency histogram, bound once.
    pub request_metrics: RequestMetrics,
    metrics: Arc<Metrics>,
    /// Where each replica was placed at start-up; its slots stay reserved while unloaded.
    placements: Vec<ReplicaPlacement>,
    /// Card memory one replica was given room for at start-up: a reload may not need more.
    gpu_memory: u64,
    /// `None` while unloaded.
    engine: std::sync::RwLock<Option<Arc<Engine>>>,
    /// One load or unload at a time.
    control: Arc<tokio::sync::Mutex<()>>,
    /// Set when the server shuts down: no load starts replicas after that.
    shut: AtomicBool,
}

/// The running part of a deployment: replica threads and the batcher in front of them.
struct Engine {
    handle: BatcherHandle,
    ready: AtomicBool,
    close: watch::Sender<bool>,
    replicas: Vec<ReplicaStatus>,
    /// `prism_replicas` children this engine counts in, given back when it stops.
    replica_gauges: std::sync::Mutex<Vec<prometheus::IntGauge>>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    batcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Where one replica was placed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "placement", rename_all = "snake_case")]
pub enum ReplicaPlacement {
    /// It asked for no GPU.
    Cpu,
    /// On these cards (NVML's indices), each at `share` of a card.
    Gpu {
        gpus: Vec<usize>,
        share: f64,
        /// The card it computes on, when CUDA works here; otherwise it computes on the
        /// CPU and `note` says why (a simulated card, no CUDA libraries).
        cuda: Option<usize>,
        note: String,
    },
    /// No card could take it; `fallback = "cpu"` put it on the CPU.
    CpuFallback { reason: String },
    /// No card could take it and `fallback = "none"`: it does not run.
    Pending { reason: String },
}

impl ReplicaPlacement {
    pub fn runs(&self) -> bool {
        !matches!(self, ReplicaPlacement::Pending { .. })
    }
}

/// A replica as the status page shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaStatus {
    pub index: usize,
    #[serde(flatten)]
    pub placement: ReplicaPlacement,
    /// Where its kernels run.
    pub device: Option<String>,
}

/// A deployment's model, loaded once; replicas share its weights.
pub struct Loaded {
    pub model: Model,
    pub platform: &'static str,
}

impl Loaded {
    /// Bytes one replica needs on a card, as the CUDA backend allocates them.
    pub fn replica_memory(&self, spec: &Spec) -> u64 {
        prism_kernels::cuda::GpuModel::memory_needed(&self.model, spec.precision, spec.batching.max_batch_size)
    }
}

/// Loads the model of `spec` once; replicas share its weights.
pub fn load(spec: &Spec) -> Result<Loaded, StartError> {
    let (model, platform) = load_model(spec)?;
    Ok(Loaded { model, platform })
}

fn load_model(spec: &Spec) -> Result<(Model, &'static str), StartError> {
    let fail = |source| StartError::Model {
        name: spec.name.clone(),
        source,
    };
    let (model, platform, file) = match &spec.model {
        ModelSource::Builtin(name) => {
            let model = builtin::by_name(name).expect("built-in names are validated with the config. This is a bug.");
            (model, "prism_builtin", format!("builtin:{name}"))
        }
        ModelSource::Layers { weights, layers } => {
            let file = WeightFile::open(weights).map_err(fail)?;
            let model = Model::load(&file, layers, spec.input.features).map_err(fail)?;
            (model, "prism_safetensors", weights.display().to_string())
        }
    };
    if model.out_features() != spec.output.features {
        return Err(StartError::OutputWidth {
            name: spec.name.clone(),
            file,
            produced: model.out_features(),
            declared: spec.output.features,
        });
    }
    Ok((model, platform))
}

impl Engine {
    /// Starts the replicas that `placements` lets run and the batcher. Must run inside the
    /// tokio runtime.
    fn start(
        spec: &Spec,
        model: Model,
        placements: Vec<ReplicaPlacement>,
        stats: &Arc<ModelStats>,
        request_metrics: &RequestMetrics,
        metrics: &Metrics,
        gpu_required: bool,
    ) -> Result<Engine, StartError> {
        let name = spec.name.clone();
        let replica_metrics = ReplicaMetrics {
            queue_duration: metrics.queue_duration.with_label_values(&[&name]),
            compute_duration: metrics.compute_duration.with_label_values(&[&name]),
            batch_size: metrics.batch_size.with_label_values(&[&name]),
            cancelled: request_metrics.outcome("cancelled").clone(),
            retries: metrics.inference_retries.clone(),
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let mut replicas = Vec::new();
        let mut opened = Vec::new();
        for (index, placement) in placements.into_iter().enumerate() {
            if !placement.runs() {
                replicas.push(ReplicaStatus {
                    index,
                    placement,
                    device: None,
                });
                continue;
            }
            let fail = |reason: String| StartError::Replica {
                name: name.clone(),
                index,
                reason,
            };
            let device = match &placement {
                ReplicaPlacement::Gpu {
                    cuda: Some(ordinal), ..
                } => Device::Cuda { ordinal: *ordinal },
                _ => Device::cpu(spec.actor.threads).map_err(|e| fail(e.to_string()))?,
            };
            let location = device.location().to_string();
            replicas.push(ReplicaStatus {
                index,
                placement,
                device: Some(location.clone()),
            });
            let spawned = replica::spawn(ReplicaSpec {
                model_name: name.clone(),
                // The batcher knows running replicas by their position among its
                // senders, which skips pending ones.
                index: senders.len(),
                threads: spec.actor.threads,
                model: model.clone(),
                device,
                faults: spec.fault_injection.clone(),
                retries: spec.retries.clone(),
                precision: spec.precision,
                metrics: replica_metrics.clone(),
                stats: Arc::clone(stats),
                done: done_tx.clone(),
            })
            .map_err(|e| fail(e.to_string()))?;
            senders.push(spawned.batches);
            threads.push(spawned.thread);
            opened.push((replicas.len() - 1, spawned.opened));
        }
        // Each replica opens its device on its own thread (a CUDA context belongs to the
        // thread that uses it): wait, so the status says where it really computes. On
        // failure the senders drop here and the started threads end by themselves.
        for (slot, opened) in opened {
            let status = &mut replicas[slot];
            let outcome = opened
                .recv()
                .unwrap_or_else(|_| Err("the replica thread ended while opening its device".into()));
            if let Err(why) = outcome {
                if gpu_required {
                    return Err(StartError::Replica {
                        name: name.clone(),
                        index: status.index,
                        reason: format!("{why}; the model keeps its GPU slots, load it again"),
                    });
                }
                status.device = Some("cpu".into());
                if let ReplicaPlacement::Gpu { note, cuda, .. } = &mut status.placement {
                    *cuda = None;
                    *note = format!("{why}: runs on the CPU");
                }
            }
        }
        let replica_gauges: Vec<prometheus::IntGauge> = replicas
            .iter()
            .filter_map(|r| r.device.as_deref())
            .map(|device| {
                let gauge = metrics.replicas.with_label_values(&[name.as_str(), device]);
                gauge.inc();
                gauge
            })
            .collect();
        let senders_len = senders.len();
        let senders_empty = senders_len == 0;
        if senders_empty {
            tracing::warn!(model = %name, "no replica could be placed: the model is not ready (see GET /v2/status)");
        }
        let cancelled = replica_metrics.cancelled.clone();
        let hooks = Hooks {
            queue_depth: metrics.queue_depth.with_label_values(&[&name]),
            on_cancelled: Box::new(move |n| cancelled.inc_by(n as u64)),
            model: name.clone(),
        };
        let b = &spec.batching;
        let (close, closing) = watch::channel(false);
        let (handle, batcher) = Batcher::new(
            b.max_batch_size,
            b.batch_wait_timeout,
            b.max_queue_size,
            senders,
            done_rx,
            hooks,
            closing,
        );
        let batcher = tokio::spawn(batcher.run());
        tracing::info!(
            model = %name,
            replicas = senders_len,
            pending = spec.num_replicas - senders_len,
            threads = spec.actor.threads,
            weight_bytes = model.weight_bytes(),
            max_batch_size = b.max_batch_size,
            batch_wait_timeout_ms = b.batch_wait_timeout.as_secs_f64() * 1e3,
            "deployment ready"
        );
        Ok(Engine {
            handle,
            ready: AtomicBool::new(!senders_empty),
            close,
            replicas,
            replica_gauges: std::sync::Mutex::new(replica_gauges),
            threads: std::sync::Mutex::new(threads),
            batcher: std::sync::Mutex::new(Some(batcher)),
        })
    }

    /// Closes the queue, waits for what it holds to run and for the replicas to finish.
    async fn stop(&self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.close.send(true);
        let batcher = self.batcher.lock().expect("not poisoned").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("not poisoned"));
        if let Some(b) = batcher {
            let _ = b.await;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        for g in std::mem::take(&mut *self.replica_gauges.lock().expect("not poisoned")) {
            g.dec();
        }
    }
}

impl Deployment {
    /// Loads the model and starts every replica on the CPU (no placement). Must run
    /// inside the tokio runtime (the batcher is a task).
    pub fn start(spec: Spec, metrics: &Arc<Metrics>) -> Result<Arc<Self>, StartError> {
        let loaded = load(&spec)?;
        let placements = vec![ReplicaPlacement::Cpu; spec.num_replicas];
        Self::start_placed(spec, loaded, placements, metrics)
    }

    /// Starts the replicas that `placements` lets run (one entry per replica) and the
    /// batcher. Must run inside the tokio runtime.
    pub fn start_placed(
        spec: Spec,
        loaded: Loaded,
        placements: Vec<ReplicaPlacement>,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<Self>, StartError> {
        let stats = Arc::new(ModelStats::default());
        let request_metrics = RequestMetrics::new(metrics, &spec.name);
        let gpu_memory = loaded.replica_memory(&spec);
        let engine = Engine::start(
            &spec,
            loaded.model,
            placements.clone(),
            &stats,
            &request_metrics,
            metrics,
            false,
        )?;
        Ok(Arc::new(Deployment {
            platform: loaded.platform,
            spec,
            stats,
            request_metrics,
            metrics: Arc::clone(metrics),
            placements,
            gpu_memory,
            engine: std::sync::RwLock::new(Some(Arc::new(engine))),
            control: Arc::new(tokio::sync::Mutex::new(())),
            shut: AtomicBool::new(false),
        }))
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn swap_engine(&self, new: Option<Arc<Engine>>) -> Option<Arc<Engine>> {
        std::mem::replace(&mut *self.engine.write().unwrap_or_else(|p| p.into_inner()), new)
    }

    /// Whether replicas are running (not unloaded).
    pub fn is_loaded(&self) -> bool {
        self.engine().is_some()
    }

    /// The replicas and where they run; none while unloaded.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        self.engine().map(|e| e.replicas.clone()).unwrap_or_default()
    }

    /// Loads the model again as declared at start-up, re-reading its weights file, and
    /// starts new replicas on the deployment's slots. If it was loaded, the new replicas
    /// take the requests that arrive from then on while the old ones finish theirs; a load
    /// that fails (a bad weights file, no replica able to run) leaves the old ones serving.
    /// Replicas running on GPUs are stopped before the new ones start instead (a card holds
    /// one copy of the model, not two): the model answers 503 meanwhile, and stays unloaded
    /// if they cannot start. Runs to the end even if the caller stops waiting.
    pub async fn load(self: &Arc<Self>) -> Result<(), StartError> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.load_now().await })
            .await
            .unwrap_or_else(|e| Err(self.load_error(format!("the load stopped: {e}"))))
    }

    fn load_error(&self, reason: String) -> StartError {
        StartError::Load {
            name: self.spec.name.clone(),
            reason,
        }
    }

    async fn load_now(self: Arc<Self>) -> Result<(), StartError> {
        let _one_at_a_time = Arc::clone(&self.control).lock_owned().await;
        if self.shut.load(Ordering::Acquire) {
            return Err(self.load_error("the server is shutting down".into()));
        }
        // The weights first, off the async threads: a file that cannot be read changes
        // nothing.
        let spec = self.spec.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&spec))
            .await
            .unwrap_or_else(|e| Err(self.load_error(format!("reading the model panicked: {e}"))))?;
        let on_gpu = self
            .placements
            .iter()
            .any(|p| matches!(p, ReplicaPlacement::Gpu { cuda: Some(_), .. }));
        if on_gpu {
            let needed = loaded.replica_memory(&self.spec);
            if needed > self.gpu_memory {
                return Err(self.load_error(format!(
                    "the new weights need {needed} bytes of card memory per replica, more than the {} its slot was given at start-up; restart the server to place it again",
                    self.gpu_memory
                )));
            }
            let holds_cards = self.engine().is_some_and(|e| {
                e.replicas
                    .iter()
                    .any(|r| matches!(r.placement, ReplicaPlacement::Gpu { cuda: Some(_), .. }))
            });
            if holds_cards && let Some(old) = self.swap_engine(None) {
                old.stop().await;
            }
        }
        let this = Arc::clone(&self);
        // Opening devices blocks too.
        let engine = tokio::task::spawn_blocking(move || {
            Engine::start(
                &this.spec,
                loaded.model,
                this.placements.clone(),
                &this.stats,
                &this.request_metrics,
                &this.metrics,
                on_gpu,
            )
        })
        .await
        .unwrap_or_else(|e| Err(self.load_error(format!("starting the replicas panicked: {e}"))))?;
        if !engine.ready.load(Ordering::Acquire) {
            let pending: Vec<String> = engine
                .replicas
                .iter()
                .filter_map(|r| match &r.placement {
                    ReplicaPlacement::Pending { reason } => Some(format!("replica {}: {reason}", r.index)),
                    _ => None,
                })
                .collect();
            engine.stop().await;
            return Err(self.load_error(format!("no replica can run ({})", pending.join("; "))));
        }
        if let Some(old) = self.swap_engine(Some(Arc::new(engine))) {
            old.stop().await;
        }
        tracing::info!(model = %self.spec.name, "loaded");
        Ok(())
    }

    /// Stops taking requests, runs what is queued and stops the replicas. Their slots stay
    /// reserved for a later load. Unloading an unloaded deployment does nothing. Runs to
    /// the end even if the caller stops waiting.
    pub async fn unload(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let _ = tokio::spawn(async move {
            let _one_at_a_time = Arc::clone(&this.control).lock_owned().await;
            if let Some(old) = this.swap_engine(None) {
                old.stop().await;
                tracing::info!(model = %this.spec.name, "unloaded");
            }
        })
        .await;
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Loaded, with at least one replica running, and taking requests.
    pub fn is_ready(&self) -> bool {
        self.engine().is_some_and(|e| e.ready.load(Ordering::Acquire))
    }

    pub fn queued(&self) -> usize {
        self.engine().map_or(0, |e| e.handle.queued())
    }

    /// Runs `input` (`[rows, in_features]`, validated) through a batch and waits for its
    /// rows of the answer.
    pub async fn infer(&self, input: impl Into<Rows>) -> Result<Array2<f32>, ApiError> {
        let rx = self.submit(input)?;
        self.answer(rx).await
    }

    /// Queues `input`; refuses at once when the deployment is not ready or its queue is
    /// full. The receiver yields the answer (see [`Deployment::answer`]).
    pub fn submit(&self, input: impl Into<Rows>) -> Result<tokio::sync::oneshot::Receiver<Reply>, ApiError> {
        let not_ready = || ApiError::NotReady(self.spec.name.clone());
        let mut input = input.into();
        loop {
            let engine = self.engine().ok_or_else(not_ready)?;
            let swapped = |engine: &Arc<Engine>| !self.engine().is_some_and(|e| Arc::ptr_eq(&e, engine));
            if !engine.ready.load(Ordering::Acquire) {
                // A load is stopping the engine this request found: the new one takes it.
                if swapped(&engine) {
                    continue;
                }
                return Err(not_ready());
            }
            match engine.handle.submit(input) {
                Ok(rx) => return Ok(rx),
                Err((SubmitError::QueueFull, _)) => {
                    return Err(ApiError::QueueFull {
                        model: self.spec.name.clone(),
                        max_queue_size: self.spec.batching.max_queue_size,
                    });
                }
                // A load swapped the engine between the look-up and the submit: the new
                // one takes it.
                Err((SubmitError::Closed, back)) if swapped(&engine) => input = back,
                Err((SubmitError::Closed, _)) => return Err(not_ready()),
            }
        }
    }

    /// Waits for the answer to a submitted request.
    pub async fn answer(&self, rx: tokio::sync::oneshot::Receiver<Reply>) -> Result<Array2<f32>, ApiError> {
        // Every path answers before dropping the sender; a drop is a bug, not a shutdown.
        let answer = rx.await.unwrap_or_else(|_| {
            Err(InferError::Lost {
                model: self.spec.name.clone(),
            })
        });
        Ok(answer?)
    }

    /// Stops taking requests; what is queued still runs.
    pub fn stop_accepting(&self) {
        if let Some(e) = self.engine() {
            e.ready.store(false, Ordering::Release);
        }
    }

    /// Closes the queue, waits for what it holds to run and for the replicas to finish.
    /// Requests that arrive meanwhile get 503.
    pub async fn join(&self) {
        self.shut.store(true, Ordering::Release);
        self.stop_accepting();
        let _one_at_a_time = self.control.lock().await;
        if let Some(e) = self.engine() {
            e.stop().await;
        }
    }
}
