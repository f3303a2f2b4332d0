//! A deployment's running part: the replica threads, each opening its device, and the
//! batcher task in front of them; started from a loaded model and the replicas'
//! placements, stopped by draining what it holds.
//!
//! It decides no placement (the start-up plan did) and takes no request (the deployment
//! hands them to its batcher).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use prism_config::Deployment as Spec;
use prism_kernels::Device;
use tokio::sync::watch;

use super::batcher::{self, Batcher, BatcherHandle, Hooks, SharedHealth, Supervisor};
use super::model::ServedModel;
use super::queue::{Batch, Input, Rows};
use super::replica::{self, ReplicaMetrics, ReplicaSpec, Warmup};
use super::stats::ModelStats;
use crate::metrics::Metrics;
use crate::resources::ReplicaPlacement;
use prism_kernels::encoder::TextTokenizer;

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
    #[error("deployment `{name}`: {source}")]
    Encoder {
        name: String,
        source: prism_kernels::encoder::EncoderError,
    },
    #[error("deployment `{name}`: cannot start replica {index}: {reason}")]
    Replica { name: String, index: usize, reason: String },
    /// A load through the repository API could not run.
    #[error("deployment `{name}`: {reason}")]
    Load { name: String, reason: String },
}

/// The running part of a deployment: replica threads and the batcher in front of them.
pub(super) struct Engine {
    pub(super) handle: BatcherHandle,
    pub(super) ready: Arc<AtomicBool>,
    close: watch::Sender<bool>,
    pub(super) replicas: Vec<ReplicaStatus>,
    /// An encoder's tokenizer, for the requests to use before they queue.
    pub(super) tokenizer: Option<Arc<TextTokenizer>>,
    /// The slowest replica's warm-up at start (none without `warmup`).
    pub(super) warmup: Option<std::time::Duration>,
    /// The first request these replicas answered, arrival to answer.
    pub(super) first_request: std::sync::OnceLock<std::time::Duration>,
    /// `prism_replicas` children this engine counts in, given back when it stops.
    replica_gauges: std::sync::Mutex<Vec<prometheus::IntGauge>>,
    /// Replica threads, restarted ones included.
    threads: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    batcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A replica as the status page shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaStatus {
    pub index: usize,
    #[serde(flatten)]
    pub placement: ReplicaPlacement,
    /// Where its kernels run.
    pub device: Option<String>,
    /// Running, restarting after a crash, or failed; `None` while pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<SharedHealth>,
}

impl Engine {
    /// Starts the replicas that `placements` lets run and the batcher. Must run inside the
    /// tokio runtime.
    pub(super) fn start(
        spec: &Spec,
        model: ServedModel,
        placements: Vec<ReplicaPlacement>,
        stats: &Arc<ModelStats>,
        metrics: &Metrics,
        gpu_required: bool,
    ) -> Result<Engine, StartError> {
        let name = spec.name.clone();
        let replica_metrics = ReplicaMetrics {
            queue_duration: metrics.queue_duration.with_label_values(&[&name]),
            compute_duration: metrics.compute_duration.with_label_values(&[&name]),
            batch_size: metrics.batch_size.with_label_values(&[&name]),
            retries: metrics.inference_retries.clone(),
            busy: metrics.replica_busy.clone(),
        };
        let (reporter, reports) = batcher::channel();
        let warmup = match spec.warmup {
            0 => None,
            batches => Some(Arc::new(Warmup {
                batches,
                input: warmup_input(spec, &model).map_err(|reason| StartError::Load {
                    name: name.clone(),
                    reason: format!("`warmup`: cannot make its warm-up batch: {reason}"),
                })?,
            })),
        };
        let mut senders = Vec::new();
        let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut replicas = Vec::new();
        let mut opened = Vec::new();
        let (mut healths, mut devices) = (Vec::new(), Vec::new());
        // Starts replica thread `index` (among the running ones, which the batcher knows
        // by position), start `generation`: at start-up, and after each crash.
        let spawn_replica = {
            let (name, spec, model, stats, reporter) = (
                name.clone(),
                spec.clone(),
                model.clone(),
                Arc::clone(stats),
                reporter.clone(),
            );
            let replica_metrics = replica_metrics.clone();
            move |index: usize, generation: u64, (device, status_index): (Device, usize)| {
                replica::spawn(ReplicaSpec {
                    model_name: name.clone(),
                    index,
                    status_index,
                    threads: spec.actor.threads,
                    model: model.clone(),
                    device,
                    faults: spec.fault_injection.clone(),
                    retries: spec.retries.clone(),
                    precision: spec.precision,
                    max_batch_tokens: spec.batching.max_batch_tokens,
                    metrics: replica_metrics.clone(),
                    stats: Arc::clone(&stats),
                    reporter: reporter.clone(),
                    generation,
                    warmup: warmup.clone(),
                })
            }
        };
        for (index, placement) in placements.into_iter().enumerate() {
            if !placement.runs() {
                replicas.push(ReplicaStatus {
                    index,
                    placement,
                    device: None,
                    health: None,
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
            let health = SharedHealth::running();
            replicas.push(ReplicaStatus {
                index,
                placement,
                device: Some(location.clone()),
                health: Some(health.clone()),
            });
            healths.push(health);
            devices.push((device.clone(), index));
            let spawned = spawn_replica(senders.len(), 0, (device, index)).map_err(|e| fail(e.to_string()))?;
            senders.push(spawned.batches);
            threads.lock().expect("not poisoned").push(spawned.thread);
            opened.push((replicas.len() - 1, spawned.opened));
        }
        // Each replica opens its device on its own thread (a CUDA context belongs to the
        // thread that uses it): wait, so the status says where it really computes. On
        // failure the senders drop here and the started threads end by themselves.
        let mut warmed: Option<std::time::Duration> = None;
        for (slot, opened) in opened {
            let status = &mut replicas[slot];
            let outcome = opened
                .recv()
                .unwrap_or_else(|_| Err("the replica thread ended while opening its device".into()));
            if let Ok(took) = outcome {
                warmed = warmed.max(took);
            }
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
        let hooks = Hooks {
            queue_depth: metrics.queue_depth.with_label_values(&[&name]),
            model: name.clone(),
        };
        let b = &spec.batching;
        let (close, closing) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(!senders_empty));
        let restart = {
            let threads = Arc::clone(&threads);
            let spawn_replica = Arc::new(spawn_replica);
            move |index: usize, generation: u64| -> Result<std::sync::mpsc::SyncSender<Batch>, String> {
                let spawned = spawn_replica(index, generation, devices[index].clone()).map_err(|e| e.to_string())?;
                threads.lock().expect("not poisoned").push(spawned.thread);
                // Its device is opened anew (a GPU replica makes a new context); one that
                // cannot open its card is not started on another device behind the
                // status page's back.
                match spawned.opened.recv() {
                    Ok(Ok(_)) => Ok(spawned.batches),
                    Ok(Err(why)) => Err(format!("its device could not be opened again: {why}")),
                    Err(_) => Err("the restarted replica ended while opening its device".into()),
                }
            }
        };
        let supervisor = Supervisor {
            start: Arc::new(restart),
            policy: spec.restarts,
            max_retries: spec.retries.max_retries,
            health: healths,
            restarts: metrics.replica_restarts.with_label_values(&[&name]),
            ready: Arc::clone(&ready),
            reports: reporter,
            stopped: Arc::new(AtomicBool::new(false)),
            crash_retries: metrics.inference_retries.with_label_values(&[name.as_str(), "Panic"]),
        };
        let (handle, batcher) = Batcher::new(b, senders, reports, hooks, closing, Some(supervisor));
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
        let tokenizer = match &model {
            ServedModel::Encoder(e) => Some(Arc::new(e.tokenizer().clone())),
            ServedModel::Rows(_) => None,
        };
        Ok(Engine {
            warmup: warmed,
            first_request: std::sync::OnceLock::new(),
            tokenizer,
            handle,
            ready,
            close,
            replicas,
            replica_gauges: std::sync::Mutex::new(replica_gauges),
            threads,
            batcher: std::sync::Mutex::new(Some(batcher)),
        })
    }

    /// Closes the queue, waits for what it holds to run and for the replicas to finish.
    pub(super) async fn stop(&self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.close.send(true);
        let batcher = self.batcher.lock().expect("not poisoned").take();
        if let Some(b) = batcher {
            let _ = b.await;
        }
        // Taken after the batcher ended: threads restarted while it drained are joined too.
        let threads = std::mem::take(&mut *self.threads.lock().expect("not poisoned"));
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

/// A warm-up batch: `max_batch_size` rows of zeros, or as many texts of the model's
/// longest length as `max_batch_tokens` lets one batch hold.
fn warmup_input(spec: &Spec, model: &ServedModel) -> Result<Input, String> {
    let b = &spec.batching;
    match model {
        ServedModel::Rows(m) => Ok(Input::Rows(Rows::Owned(ndarray::Array2::zeros((
            b.max_batch_size,
            m.in_features(),
        ))))),
        ServedModel::Encoder(e) => {
            let longest = e.config().max_seq_length.max(1);
            let count = (b.max_batch_tokens / longest).clamp(1, b.max_batch_size);
            let text = "warm up ".repeat(longest);
            let texts = vec![text.as_str(); count];
            e.tokenizer()
                .encode(&texts, None, true)
                .map(Input::Tokens)
                .map_err(|e| e.to_string())
        }
    }
}
