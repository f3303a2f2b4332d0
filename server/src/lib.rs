//! `prism-server`: the serving process.
//!
//! `HTTP -> validate -> deployment queue -> batcher -> least-loaded replica -> kernels ->
//! split -> respond`. The binary (`main.rs`) parses flags and calls [`run`]; tests call
//! the same [`run`] (or [`Server::start`] and [`Server::serve`]) on `127.0.0.1:0`.

pub mod batcher;
pub mod codec;
pub mod deployment;
pub mod error;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod placement;
pub mod replica;
pub mod stats;

use std::future::Future;
use std::sync::Arc;

use axum::serve::ListenerExt;
use prism_config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use deployment::StartError;

use crate::deployment::{Deployment, ReplicaPlacement};
use crate::http::{AppState, Cluster};
use crate::inventory::{Inventory, SystemInventory};
use crate::metrics::Metrics;
use crate::placement::Ask;

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
    /// fractional slots first (see [`placement`]).
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
            .map(deployment::load)
            .collect::<Result<Vec<_>, _>>()?;
        // CUDA is probed once, and only where NVML saw a real card.
        let real_gpus = machine.gpus.iter().any(|g| !g.simulated);
        let cuda = if real_gpus {
            prism_kernels::cuda::probe()
        } else {
            Err("no real GPU".into())
        };
        if let (Err(why), true) = (&cuda, real_gpus) {
            tracing::warn!("GPUs found, but CUDA cannot be used ({why}): replicas placed on them run on the CPU");
        }

        let mut placements: Vec<Vec<ReplicaPlacement>> = config
            .deployments
            .iter()
            .map(|s| vec![ReplicaPlacement::Cpu; s.num_replicas])
            .collect();
        // Every replica that asks for a GPU, placed together.
        let mut asks = Vec::new();
        let mut owners = Vec::new();
        for (d, (spec, l)) in config.deployments.iter().zip(&loaded).enumerate() {
            if spec.actor.num_gpus > 0.0 {
                for r in 0..spec.num_replicas {
                    asks.push(Ask {
                        num_gpus: spec.actor.num_gpus,
                        memory: l.replica_memory(spec),
                    });
                    owners.push((d, r));
                }
            }
        }
        let free: Vec<u64> = machine.gpus.iter().map(|g| g.memory_free).collect();
        let placed = placement::place(&free, &asks);
        let mut gpu_used = vec![0.0; machine.gpus.len()];
        for ((&(d, r), ask), cards) in owners.iter().zip(&asks).zip(placed) {
            let spec = &config.deployments[d];
            placements[d][r] = match cards {
                Some(gpus) => {
                    let share = ask.num_gpus.min(1.0);
                    for &g in &gpus {
                        gpu_used[g] += share;
                    }
                    let (cuda, note) = if gpus.iter().all(|&g| machine.gpus[g].simulated) {
                        (None, "simulated GPU: placement only, runs on the CPU".to_owned())
                    } else {
                        // NVML's index; CUDA_VISIBLE_DEVICES or a different device order
                        // could still make CUDA's numbering differ (matching by UUID is
                        // the sturdier way, not done yet).
                        let ordinal = machine.gpus[gpus[0]].index;
                        match &cuda {
                            Ok(count) if ordinal < *count => (Some(ordinal), format!("runs on cuda:{ordinal}")),
                            Ok(count) => (
                                None,
                                format!("CUDA sees {count} devices, not GPU {ordinal}: runs on the CPU"),
                            ),
                            Err(why) => (None, format!("CUDA unavailable ({why}): runs on the CPU")),
                        }
                    };
                    ReplicaPlacement::Gpu {
                        gpus,
                        share,
                        cuda,
                        note,
                    }
                }
                None => {
                    let reason = match (&no_gpu_reason, machine.gpus.is_empty()) {
                        (Some(why), true) => format!("no GPU: {why}"),
                        (None, true) => "the machine has no GPU".into(),
                        _ => format!(
                            "no GPU has num_gpus = {} of a card and {} bytes of memory free",
                            ask.num_gpus, ask.memory
                        ),
                    };
                    match spec.fallback {
                        prism_config::Fallback::Cpu => ReplicaPlacement::CpuFallback { reason },
                        prism_config::Fallback::None => ReplicaPlacement::Pending { reason },
                    }
                }
            };
        }

        // Custom resources, in file order, for the replicas that will run: one whose ask the
        // server's pool cannot meet stays pending whatever its fallback (no device can stand
        // in for it), and gives its GPU share back.
        let mut resources_left = config.server.resources.clone();
        for (d, spec) in config.deployments.iter().enumerate() {
            for slot in placements[d].iter_mut().filter(|p| p.runs()) {
                let short = spec
                    .actor
                    .resources
                    .iter()
                    .find(|(name, need)| resources_left[*name] + 1e-9 < **need);
                if let Some((name, need)) = short {
                    if let ReplicaPlacement::Gpu { gpus, share, .. } = &*slot {
                        for &g in gpus {
                            gpu_used[g] -= share;
                        }
                    }
                    *slot = ReplicaPlacement::Pending {
                        reason: format!(
                            "resource `{name}`: needs {need}, {} of {} left",
                            resources_left[name], config.server.resources[name]
                        ),
                    };
                } else {
                    for (name, need) in &spec.actor.resources {
                        *resources_left.get_mut(name).expect("declared (validated)") -= need;
                    }
                }
            }
        }

        let metrics = Arc::new(Metrics::new());
        let mut deployments = Vec::new();
        let mut cpus_asked = 0.0;
        for ((spec, l), p) in config.deployments.iter().zip(loaded).zip(placements) {
            cpus_asked += spec.actor.num_cpus * p.iter().filter(|p| p.runs()).count() as f64;
            deployments.push(Deployment::start_placed(spec.clone(), l, p, &metrics)?);
        }
        if cpus_asked > machine.cpus as f64 {
            tracing::warn!(
                asked = cpus_asked,
                cpus = machine.cpus,
                "the replicas ask for more logical CPUs than the machine has; they share them"
            );
        }
        let cluster = Cluster {
            machine,
            no_gpu_reason,
            gpu_used,
            cpus_asked,
            resources_total: config.server.resources.clone(),
            resources_left,
        };
        Ok(Server {
            app: Arc::new(AppState::new(
                deployments,
                metrics,
                config.server.max_request_bytes,
                cluster,
            )),
            shutdown_timeout: config.server.shutdown_timeout,
        })
    }

    /// The API as a router, for in-process use (benchmarks, embedding).
    pub fn router(&self) -> axum::Router {
        http::router(Arc::clone(&self.app))
    }

    /// Serves the API on `listener` until `shutdown` completes; then stops accepting
    /// connections, answers every request already accepted (for up to
    /// `server.shutdown_timeout_s`), drains the queues and stops the replicas.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let listener = listener.tap_io(|tcp| {
            // Answers are small and latency matters: never wait to coalesce writes.
            let _ = tcp.set_nodelay(true);
        });
        let (signalled_tx, mut signalled) = watch::channel(false);
        let app = Arc::clone(&self.app);
        let graceful = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; answering the requests already accepted");
            app.stop_accepting();
            let _ = signalled_tx.send(true);
        };
        let serve = axum::serve(listener, http::router(Arc::clone(&self.app))).with_graceful_shutdown(graceful);
        let deadline = async {
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(self.shutdown_timeout).await;
        };
        let served = tokio::select! {
            result = serve => result,
            _ = deadline => {
                tracing::warn!(
                    timeout_s = self.shutdown_timeout.as_secs_f64(),
                    "shutdown timeout passed with connections still open; closing the queues anyway"
                );
                Ok(())
            }
        };
        // Drain whether serving ended cleanly or not: accepted work is still answered.
        for d in &self.app.deployments {
            d.join().await;
        }
        tracing::info!("stopped");
        Ok(served?)
    }
}

/// Starts the deployments of `config` and serves them on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::start(&config)?.serve(listener, shutdown).await
}
