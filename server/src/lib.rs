//! `prism-server`: the serving process.
//!
//! One request's path through the modules, socket to kernel and back:
//!
//! ```text
//! api::router ── api::infer::infer            REST: path, headers, body
//!  (or grpc::router ── grpc::Service)          gRPC: a ModelInferRequest (codec::grpc::decode)
//!   │  state::AppState::resolve                the model name → a deployment or a pipeline
//!   │  codec::request::decode_body             V2 JSON + binary part → codec::Request
//!   ▼
//! inference::AppState::infer                   the one path: deadline, async, by-ref, metrics
//!   │  codec::signature::model_input           the inputs against the model's → rows
//!   │  serving::Deployment::submit             into the deployment's queue
//!   ▼
//! serving::batcher::Batcher                    the queue: cuts batches (queue::State::next_batch)
//!   ▼
//! serving::replica (its own thread)            gathers rows, runs the model, retries
//!   │  prism_kernels: Model::forward (CPU) or GpuModel::forward (cuBLAS, NVRTC)
//!   ▼  one oneshot reply per request
//! inference                                    the rows as a codec::Answer (or a ref, kept)
//!   ▼
//! api::infer ── codec::response::encode        the answer → V2 JSON or binary (gRPC: codec::grpc::encode)
//!   │  api::respond::encoded                   the HTTP answer; errors through error::status
//! ```
//!
//! A pipeline takes the same path, but `inference` puts its inputs into the `store` and
//! starts its DAG (`pipeline`), whose steps call deployments and `tasks`. Objects, waits and
//! tasks are served by `api` straight from `store` and `tasks`. `resources` decides at
//! start-up where each replica runs and holds what tasks may take. `metrics` names every
//! series.
//!
//! The binary (`main.rs`) parses flags and calls [`run`]; tests call the same [`run`] (or
//! [`Server::start`] and [`Server::serve`]) on `127.0.0.1:0`.

pub mod api;
pub mod auth;
pub mod codec;
pub mod connections;
pub mod describe;
pub mod error;
pub mod grpc;
pub mod history;
pub mod inference;
pub mod metrics;
pub mod pipeline;
pub mod resources;
pub mod serving;
pub mod shm;
pub mod state;
pub mod store;
pub mod tasks;

use std::future::Future;
use std::sync::Arc;

use prism_config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use serving::StartError;

use crate::metrics::Metrics;
use crate::resources::inventory::{Inventory, SystemInventory};
use crate::serving::Deployment;
use crate::state::AppState;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// A server whose deployments are loaded and running, not yet listening.
pub struct Server {
    app: Arc<AppState>,
    shutdown_timeout: std::time::Duration,
    connection_limits: prism_config::ConnectionLimits,
}

impl Server {
    /// Loads every deployment's model and starts its replicas and batcher. A model that
    /// cannot load stops everything, with the file and the reason. Must be called from
    /// within a tokio runtime.
    pub fn start(config: &Config) -> Result<Server, StartError> {
        Self::start_with(config, Arc::new(SystemInventory::probe()))
    }

    /// Like [`Server::start`], on the machine `inventory` describes (a simulated one in
    /// tests and with `--simulate-gpus`). Replicas that ask for GPUs are placed onto
    /// fractional slots first (see [`resources::placement`]).
    pub fn start_with(config: &Config, inventory: Arc<dyn Inventory>) -> Result<Server, StartError> {
        let machine = inventory.machine();
        let no_gpu_reason = inventory.no_gpu_reason();
        if machine.gpus.iter().any(|g| g.simulated) {
            tracing::warn!(
                gpus = machine.gpus.len(),
                "simulated GPUs: placement only; replicas placed on them run on the CPU"
            );
        }
        let loaded = config
            .deployments
            .iter()
            .map(serving::load)
            .collect::<Result<Vec<_>, _>>()?;
        // CUDA is probed once, and only where NVML saw a real card.
        let real_gpus = machine.gpus.iter().any(|g| !g.simulated);
        let cuda = if real_gpus {
            prism_kernels::cuda::device_uuids()
        } else {
            Err("no real GPU".into())
        };
        if let (Err(why), true) = (&cuda, real_gpus) {
            tracing::warn!("GPUs found, but CUDA cannot be used ({why}): replicas placed on them run on the CPU");
        }

        let replica_memory: Vec<u64> = config
            .deployments
            .iter()
            .zip(&loaded)
            .map(|(spec, l)| l.replica_memory(spec))
            .collect();
        let (placements, cluster) = resources::plan(config, &replica_memory, machine, no_gpu_reason, &cuda);

        let metrics = Arc::new(Metrics::new());
        let mut deployments = Vec::new();
        for ((spec, l), p) in config.deployments.iter().zip(loaded).zip(placements) {
            deployments.push(Deployment::start_placed(spec.clone(), l, p, &metrics)?);
        }
        let mut store = open_store(config, &cluster, &metrics);
        if matches!(&cuda, Ok(uuids) if !uuids.is_empty()) {
            match prism_kernels::cuda::PinnedAllocator::new(0) {
                Ok(pinned) => {
                    tracing::info!("object store: page-locked host memory (cuda:0's context)");
                    store.use_pinned_memory(pinned);
                }
                Err(e) => tracing::warn!(error = %e, "object store: page-locked memory unavailable; heap memory"),
            }
        }
        let store = Arc::new(store);
        // Objects past their time-to-live go once a second.
        spawn_every(
            "expiring objects",
            Arc::downgrade(&store),
            std::time::Duration::from_secs(1),
            |store| {
                store.expire(tokio::time::Instant::now());
            },
        );
        // The figures of the cards the server uses (by UUID: not those CUDA cannot see),
        // into `prism_gpu_*`; without GPUs there is nothing to read and no series.
        let cards: std::collections::HashSet<String> = cluster.machine.gpus.iter().map(|g| g.uuid.clone()).collect();
        spawn_every(
            "reading the GPUs' figures",
            Arc::downgrade(&metrics),
            config.server.metrics_interval,
            move |metrics| {
                let mut samples = inventory.sample();
                samples.retain(|s| cards.contains(&s.uuid));
                metrics.record_gpus(&samples);
            },
        );
        let server = Server {
            app: Arc::new(
                AppState::new(
                    deployments,
                    metrics,
                    config.server.max_request_bytes,
                    cluster,
                    store,
                    config.pipelines.clone(),
                    shm::SharedMemory::new(config.server.allow_shared_memory),
                )
                .with_tokens(auth::Tokens::new(
                    config.server.api_token.as_ref().map(|t| t.expose().to_owned()),
                    config.server.admin_token.as_ref().map(|t| t.expose().to_owned()),
                )),
            ),
            shutdown_timeout: config.server.shutdown_timeout,
            connection_limits: config.server.connections,
        };
        spawn_every(
            "the status page's history",
            Arc::downgrade(&server.app),
            history::INTERVAL,
            AppState::sample_history,
        );
        Ok(server)
    }

    /// The server's state (its deployments, store, tasks), for in-process use: it
    /// outlives the serving, so what the server left behind can be read after it stopped.
    pub fn state(&self) -> Arc<AppState> {
        Arc::clone(&self.app)
    }

    /// The API as a router, for in-process use (benchmarks, embedding).
    pub fn router(&self) -> axum::Router {
        api::router(Arc::clone(&self.app))
    }

    /// Serves the REST API on `listener` until `shutdown` completes; then stops accepting
    /// connections, answers every request already accepted (for up to
    /// `server.shutdown_timeout_s`), drains the queues and stops the replicas.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        self.serve_all(listener, None, shutdown).await
    }

    /// Like [`Server::serve`], with V2 gRPC on `grpc` as well: both stop taking
    /// connections at `shutdown` and both are drained before the queues close.
    pub async fn serve_all(
        self,
        http: TcpListener,
        grpc: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (signalled_tx, signalled) = watch::channel(false);
        let app = Arc::clone(&self.app);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; answering the requests already accepted");
            app.stop_accepting();
            let _ = signalled_tx.send(true);
        });
        let stopped = |mut signalled: watch::Receiver<bool>| async move {
            let _ = signalled.wait_for(|s| *s).await;
        };
        let limits = self.connection_limits;
        let rest = connections::serve(
            http,
            api::router(Arc::clone(&self.app)),
            limits,
            stopped(signalled.clone()),
        );
        let grpc = async {
            match grpc {
                Some(listener) => {
                    connections::serve(
                        listener,
                        grpc::router(Arc::clone(&self.app)),
                        limits,
                        stopped(signalled.clone()),
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let deadline = async {
            stopped(signalled.clone()).await;
            tokio::time::sleep(self.shutdown_timeout).await;
        };
        let served = tokio::select! {
            (rest, grpc) = futures::future::join(rest, grpc) => rest.and(grpc),
            _ = deadline => {
                tracing::warn!(
                    timeout_s = self.shutdown_timeout.as_secs_f64(),
                    "shutdown timeout passed with connections still open; closing the queues anyway"
                );
                Ok(())
            }
        };
        // Work that goes on after its answer (tasks, pipeline steps, async inferences)
        // finishes while the deployments still run it, within the same timeout.
        let background = &self.app.tasks.background;
        background.close();
        if !background.is_empty() {
            tracing::info!(
                running = background.len(),
                "waiting for tasks, pipelines and async inferences"
            );
            if tokio::time::timeout(self.shutdown_timeout, background.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    running = background.len(),
                    "shutdown timeout passed with background work still running; stopping anyway"
                );
            }
        }
        // Drain whether serving ended cleanly or not: accepted work is still answered.
        for d in &self.app.deployments {
            d.join().await;
        }
        self.app.store.remove_spill_files();
        tracing::info!("stopped");
        Ok(served?)
    }
}

/// The object store of `config`: `object_store_memory` bytes (30% of the machine's
/// memory by default, as Ray), spilling under `spill_dir` (a fresh folder under the
/// system's temporary directory by default, removed with the store).
fn open_store(config: &Config, cluster: &resources::Cluster, metrics: &Metrics) -> store::Store {
    let o = &config.object_store;
    let capacity = o
        .memory
        .unwrap_or((cluster.machine.memory as f64 * 0.3) as usize)
        .max(1 << 20);
    let (dir, owned) = match &o.spill_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "prism-spill-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )),
            true,
        ),
    };
    // Spill files may take half the space free where they go, unless the file says.
    let max_spill_bytes = o
        .max_spill_bytes
        .or_else(|| store::free_space(&dir).map(|free| free / 2))
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let limits = store::Limits {
        max_spill_bytes,
        max_objects: o.max_objects,
        max_object_bytes: o
            .max_object_bytes
            .map_or(capacity, |n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    tracing::info!(
        capacity,
        spill_dir = %dir.display(),
        max_spill_bytes,
        max_objects = limits.max_objects,
        max_object_bytes = limits.max_object_bytes,
        "object store"
    );
    let mut store = store::Store::new(capacity, dir, o.default_ttl, metrics.store.clone());
    store.owns_spill_dir = owned;
    store.limits = limits;
    store
}

/// Calls `tick` on `state` at once and every `interval` while `state` lives, on the
/// blocking pool (a tick may block: NVML calls the driver). A tick that panics is logged
/// and the next one runs.
fn spawn_every<T: Send + Sync + 'static>(
    what: &'static str,
    state: std::sync::Weak<T>,
    interval: std::time::Duration,
    tick: impl Fn(&T) + Send + Sync + 'static,
) {
    let tick = Arc::new(tick);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(state) = state.upgrade() else { break };
            let tick = Arc::clone(&tick);
            if let Err(e) = tokio::task::spawn_blocking(move || tick(&state)).await {
                tracing::warn!("{what} failed ({e}); trying again next time");
            }
        }
    });
}

/// Starts the deployments of `config` and serves them on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::start(&config)?.serve(listener, shutdown).await
}
