//! A deployment: a model, its replicas (actors) and the batcher in front of them, and its
//! lifecycle. While loaded it has one [`Engine`]; `unload` stops it, `load` starts a new
//! one on the same slots and swaps it in while the old one finishes what it holds.
//! Requests that meet an engine being swapped out go to the new one.
//!
//! Takes rows, answers rows or a [`ServeError`]; decoding and metrics per request are the
//! inference path's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::Array2;
use prism_config::Deployment as Spec;
use prism_kernels::encoder::TextTokenizer;

use super::batcher::SubmitError;
use super::engine::{Engine, ReplicaStatus, StartError};
use super::model::{Loaded, Signature, load};
use super::queue::{Input, Reply};
use super::stats::ModelStats;
use super::{BatchError, ServeError};
use crate::metrics::{Metrics, RequestMetrics};
use crate::resources::ReplicaPlacement;

/// The only version a Prism model has; `/versions/1/...` paths reach it.
pub const MODEL_VERSION: &str = "1";

/// A deployment: its spec, its counters, and (while loaded) its running replicas and
/// batcher. `POST /v2/repository/models/{m}/unload` stops the replicas; `load` starts
/// them again on the same slots, reading the weights anew, and swaps them in while the
/// old ones finish what they hold.
pub struct Deployment {
    pub spec: Spec,
    /// `prism_builtin`, `prism_safetensors` or `prism_huggingface`, for the metadata's
    /// `platform`.
    pub platform: &'static str,
    /// What it takes and answers, from the model loaded at start-up.
    pub signature: Signature,
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
        let engine = Engine::start(&spec, loaded.model, placements.clone(), &stats, metrics, false)?;
        Ok(Arc::new(Deployment {
            platform: loaded.platform,
            signature: loaded.signature,
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

    /// A request was answered after `d` (see [`Deployment::load_times`]).
    pub fn answered(&self, d: std::time::Duration) {
        if let Some(e) = self.engine() {
            let _ = e.first_request.set(d);
        }
    }

    /// Of the replicas serving now: the slowest one's warm-up, and the first request
    /// they answered, arrival to answer.
    pub fn load_times(&self) -> (Option<std::time::Duration>, Option<std::time::Duration>) {
        self.engine()
            .map_or((None, None), |e| (e.warmup, e.first_request.get().copied()))
    }

    /// What each replica is placed with (the memory a card reserves for it).
    pub fn replica_memory(&self) -> u64 {
        self.gpu_memory
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
        if loaded.signature != self.signature {
            return Err(self.load_error(
                "the model's tensors changed (names, datatypes or widths); restart the server to serve the new ones"
                    .into(),
            ));
        }
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

    /// The one input and output of a model over rows; `None` for an encoder.
    pub fn rows_io(&self) -> Option<&prism_config::RowsIo> {
        match &self.signature.io {
            super::model::Io::Rows(io) => Some(io),
            super::model::Io::Text { .. } => None,
        }
    }

    /// An encoder's tokenizer (`None` for a model over rows, or while unloaded).
    pub fn tokenizer(&self) -> Option<Arc<TextTokenizer>> {
        self.engine().and_then(|e| e.tokenizer.clone())
    }

    pub fn queued(&self) -> usize {
        self.engine().map_or(0, |e| e.handle.queued())
    }

    /// Runs `input` (`[rows, in_features]`, validated) through a batch and waits for its
    /// rows of the answer.
    pub async fn infer(&self, input: impl Into<Input>) -> Result<Array2<f32>, ServeError> {
        let rx = self.submit(input)?;
        self.answer(rx).await
    }

    /// Queues `input`; refuses at once when the deployment is not ready or its queue is
    /// full. The receiver yields the answer (see [`Deployment::answer`]).
    pub fn submit(&self, input: impl Into<Input>) -> Result<tokio::sync::oneshot::Receiver<Reply>, ServeError> {
        let not_ready = || ServeError::NotReady(self.spec.name.clone());
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
                    return Err(ServeError::QueueFull {
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
    pub async fn answer(&self, rx: tokio::sync::oneshot::Receiver<Reply>) -> Result<Array2<f32>, ServeError> {
        // Every path answers before dropping the sender; a drop is a bug, not a shutdown.
        let answer = rx.await.unwrap_or_else(|_| {
            Err(BatchError::Lost {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::serving::Rows;

    fn celsius(delay: Duration) -> Spec {
        let mut spec = prism_config::Config::embedded_default()
            .deployments
            .into_iter()
            .find(|d| d.name == "celsius")
            .expect("celsius");
        spec.num_replicas = 1;
        if !delay.is_zero() {
            spec.fault_injection = prism_config::FaultInjection {
                delay,
                delay_rate: 1.0,
                ..Default::default()
            };
        }
        spec
    }

    fn row(x: f32) -> Rows {
        Rows::Owned(Array2::from_elem((1, 1), x))
    }

    async fn fahrenheit(d: &Deployment, x: f32) -> Result<f32, ServeError> {
        Ok(d.infer(row(x)).await?[[0, 0]])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unload_and_load_move_a_deployment_between_its_states() {
        let d = Deployment::start(celsius(Duration::ZERO), &Arc::new(Metrics::new())).unwrap();
        assert!(d.is_loaded() && d.is_ready());
        assert_eq!(fahrenheit(&d, 100.0).await.unwrap(), 212.0);

        d.unload().await;
        assert!(!d.is_loaded() && !d.is_ready() && d.replicas().is_empty());
        assert!(matches!(d.submit(row(1.0)), Err(ServeError::NotReady(m)) if m == "celsius"));
        d.unload().await;
        assert!(!d.is_loaded(), "unloading an unloaded deployment does nothing");

        d.load().await.unwrap();
        assert!(d.is_loaded() && d.is_ready());
        assert_eq!(d.replicas().len(), 1);
        assert_eq!(fahrenheit(&d, 0.0).await.unwrap(), 32.0);

        d.join().await;
        assert!(!d.is_ready());
        let err = d.load().await.unwrap_err().to_string();
        assert!(err.contains("shutting down"), "no load after the server stops: {err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_load_swaps_engines_while_the_old_one_finishes_what_it_holds() {
        let d = Deployment::start(celsius(Duration::from_millis(100)), &Arc::new(Metrics::new())).unwrap();
        // Taken by the old engine: one running, one prefetched, one queued.
        let held: Vec<_> = (0..3).map(|i| d.submit(row(i as f32)).unwrap()).collect();
        let reloaded = d.load();
        let answers = futures::future::join_all(held.into_iter().map(|rx| d.answer(rx)));
        let (reloaded, answers) = tokio::join!(reloaded, answers);
        reloaded.unwrap();
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(
                a.unwrap()[[0, 0]],
                9.0 / 5.0 * i as f32 + 32.0,
                "request {i} survived the swap"
            );
        }
        assert!(d.is_ready());
        assert_eq!(fahrenheit(&d, 100.0).await.unwrap(), 212.0, "the new engine serves");
        d.join().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_with_its_size() {
        let mut spec = celsius(Duration::from_millis(200));
        spec.batching.max_queue_size = 1;
        spec.batching.max_batch_size = 1;
        let d = Deployment::start(spec, &Arc::new(Metrics::new())).unwrap();
        let mut held = Vec::new();
        let refused = loop {
            match d.submit(row(1.0)) {
                Ok(rx) => held.push(rx),
                Err(e) => break e,
            }
            // Let the batcher hand what it can to the replica.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                held.len() <= 4,
                "a queue of 1 behind one replica (2 slots) holds at most 3"
            );
        };
        assert!(
            matches!(&refused, ServeError::QueueFull { max_queue_size: 1, .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("queue is full (1 requests waiting)"));
        for rx in held {
            d.answer(rx).await.unwrap();
        }
        d.join().await;
    }
}
