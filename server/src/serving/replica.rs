//! A replica: an actor on its own OS thread that owns its loaded model and device.
//!
//! It receives batches from the batcher over a bounded channel (one running, one
//! prefetched), gathers the requests' rows into one matrix, runs the model once, splits
//! the answer back per request, and hands out the batcher's next batches, its own first
//! ([`Reporter::done`]). A panic inside the
//! model is a crash: the replica hands its batches back (they run on healthy replicas)
//! and ends, and the batcher starts it again, its device opened anew (`max_restarts`).
//!
//! The only code that runs a model's kernels; it knows nothing of requests beyond their
//! rows, and of the store only the leases of objects it is handed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2, Axis, s};
use prism_config::{FaultInjection, Precision, Retries};
use prism_kernels::cuda::{CudaDevice, GpuEncoder, GpuModel};
use prism_kernels::encoder::{EncoderError, Tokens};
use prism_kernels::{CpuDevice, Device};
use prometheus::{CounterVec, Histogram, IntCounterVec};

use super::BatchError;
use super::batcher::{REPLICA_SLOTS, Reporter};
use super::faults;
use super::model::ServedModel;
use super::queue::{Batch, Entry, Input, Reply, Rows};
use super::stats::{BatchTimes, ModelStats};

/// The metrics one replica writes, bound to its model's labels once.
#[derive(Clone)]
pub struct ReplicaMetrics {
    pub queue_duration: Histogram,
    pub compute_duration: Histogram,
    pub batch_size: Histogram,
    /// Batches run again after a failure, by `model` and `reason` (the error kind).
    pub retries: IntCounterVec,
    /// Seconds each replica spent on batches, by `model`, `replica` and `device`.
    pub busy: CounterVec,
}

/// Everything a replica thread needs.
pub struct ReplicaSpec {
    pub model_name: String,
    /// Its position among the deployment's running replicas (the batcher's).
    pub index: usize,
    /// Its index in the deployment's status (`replica` in the metrics).
    pub status_index: usize,
    pub model: ServedModel,
    pub device: Device,
    /// Intra-op threads, for a CPU fallback when the GPU cannot be opened.
    pub threads: usize,
    pub faults: FaultInjection,
    pub retries: Retries,
    pub precision: Precision,
    /// `batching.max_batch_tokens`: an encoder's largest batch, which a GPU replica checks
    /// it can run before it takes any.
    pub max_batch_tokens: usize,
    pub metrics: ReplicaMetrics,
    pub stats: Arc<ModelStats>,
    /// Where the replica reports after each batch (and takes its next), and when it
    /// crashes.
    pub reporter: Reporter,
    /// Which start of this replica it is (restarts count up).
    pub generation: u64,
    /// Batches to run once the device is open, before the replica takes work.
    pub warmup: Option<Arc<Warmup>>,
}

/// The deployment's `warmup`: how many batches, and the batch.
pub struct Warmup {
    pub batches: usize,
    pub input: Input,
}

/// A started replica thread.
pub struct Spawned {
    /// Where the batcher sends batches.
    pub batches: SyncSender<Batch>,
    pub thread: JoinHandle<()>,
    /// Reports once the replica has opened its device and warmed up (how long that took,
    /// with `warmup`): `Err(why)` when a GPU replica could not use its card and computes
    /// on the CPU instead (then unwarmed).
    pub opened: Receiver<Result<Option<Duration>, String>>,
}

/// Starts a replica thread.
pub fn spawn(spec: ReplicaSpec) -> std::io::Result<Spawned> {
    let (tx, rx) = sync_channel::<Batch>(REPLICA_SLOTS);
    let (opened_tx, opened) = sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("prism-{}-{}", spec.model_name, spec.index))
        .spawn(move || run(spec, rx, opened_tx))?;
    Ok(Spawned {
        batches: tx,
        thread,
        opened,
    })
}

/// What a replica computes with, made on its own thread (a CUDA context and stream
/// belong to the thread that uses them).
enum Backend {
    Cpu(CpuDevice),
    Cuda(Box<GpuModel>),
    CudaEncoder(Box<GpuEncoder>),
}

impl Backend {
    /// The replica's device, or the CPU and why not when its GPU cannot be used.
    fn open(spec: &ReplicaSpec) -> (Backend, Result<(), String>) {
        match &spec.device {
            Device::Cpu(cpu) => (Backend::Cpu(cpu.clone()), Ok(())),
            Device::Cuda { ordinal } => {
                let opened = CudaDevice::new(*ordinal).and_then(|d| match &spec.model {
                    ServedModel::Rows(m) => GpuModel::upload(m, d, spec.precision).map(|m| Backend::Cuda(Box::new(m))),
                    ServedModel::Encoder(e) => GpuEncoder::upload(e, d, spec.precision)
                        .map_err(|e| match e {
                            EncoderError::Gpu(e) => e,
                            // The folder loaded on the CPU: its tensors are all there.
                            other => prism_kernels::cuda::GpuError(other.to_string()),
                        })
                        .and_then(|m| {
                            m.fits(spec.max_batch_tokens, e.config().max_seq_length)?;
                            Ok(Backend::CudaEncoder(Box::new(m)))
                        }),
                });
                match opened {
                    Ok(backend) => (backend, Ok(())),
                    Err(e) => {
                        tracing::error!(model = %spec.model_name, replica = spec.index, gpu = ordinal, error = %e,
                            "cannot run on the GPU; this replica runs on the CPU");
                        let cpu = CpuDevice::new(spec.threads).unwrap_or_else(|_| CpuDevice::single());
                        (Backend::Cpu(cpu), Err(format!("cuda:{ordinal}: {e}")))
                    }
                }
            }
        }
    }
}

fn run(spec: ReplicaSpec, rx: Receiver<Batch>, opened: SyncSender<Result<Option<Duration>, String>>) {
    let _runtime = spec.reporter.enter();
    tracing::debug!(model = %spec.model_name, replica = spec.index, device = %spec.device.location(), "replica started");
    let (mut backend, how) = Backend::open(&spec);
    // A replica that could not open its card says so at once: whoever started it may
    // not keep it (a reload that needs the card, a restart).
    let how = how.map(|()| spec.warmup.as_ref().map(|w| warm_up(&spec, &mut backend, w)));
    // Whoever started the replica may have stopped waiting.
    let _ = opened.send(how);
    if matches!(backend, Backend::Cpu(_)) && spec.precision != Precision::Fp32 {
        tracing::info!(model = %spec.model_name, replica = spec.index, precision = %spec.precision,
            "precision applies to GPU replicas; this one computes in fp32 on the CPU");
    }
    let (index, generation) = (spec.index, spec.generation);
    // Where it really computes: a GPU replica that could not open its card is on the CPU.
    let device = match backend {
        Backend::Cpu(_) => "cpu".to_owned(),
        _ => spec.device.location().to_string(),
    };
    let busy =
        spec.metrics
            .busy
            .with_label_values(&[spec.model_name.as_str(), &spec.status_index.to_string(), &device]);
    let mut broken = false;
    while let Ok(batch) = rx.recv() {
        // The model's own panics are caught inside; this guards the replica's bookkeeping,
        // so the thread (and its slot in the batcher) survives whatever one batch does.
        // The batch's requests then get `BatchError::Lost` from their dropped senders.
        // Busy: on a card, the batch's copies and kernels as CUDA events time them; on
        // the CPU (or when a GPU batch failed), from taking the batch to answering it.
        let took = Instant::now();
        let ran = catch_unwind(AssertUnwindSafe(|| execute(&spec, &mut backend, batch, &mut broken)));
        let on_card = take_card_time(&mut backend);
        busy.inc_by(on_card.unwrap_or_else(|| took.elapsed()).as_secs_f64());
        match ran {
            Ok(None) => {}
            Ok(Some((batch, error))) => {
                // A crash: this replica is done. It hands back the batch and the one it
                // holds prefetched (the batcher lets go of it at once), for healthy
                // replicas to run.
                tracing::error!(model = %spec.model_name, replica = index, %error, "replica crashed");
                spec.reporter.crashed(index, generation, batch, true, &error);
                while let Ok(batch) = rx.recv() {
                    spec.reporter.crashed(index, generation, batch, false, &error);
                }
                break;
            }
            Err(_) => {
                tracing::error!(model = %spec.model_name, replica = index, "replica failed outside the model; batch lost");
            }
        }
        // The batcher may be gone at shutdown; then nobody needs to know.
        spec.reporter.done(index, generation);
    }
    tracing::debug!(model = %spec.model_name, replica = spec.index, "replica stopped");
}

/// Runs the warm-up batches (kernels compiled, buffers allocated, caches filled) before
/// the replica reports it is open, so that the deployment turns ready warm; answers how
/// long they took. They run the model alone: no injected faults or delays. A batch that
/// fails is logged and the replica starts anyway: requests then meet the same error.
fn warm_up(spec: &ReplicaSpec, backend: &mut Backend, w: &Warmup) -> Duration {
    let started = Instant::now();
    for i in 0..w.batches {
        let ran = catch_unwind(AssertUnwindSafe(|| forward(spec, backend, &w.input)));
        let why = match ran {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => e,
            Err(_) => "the model panicked".to_owned(),
        };
        tracing::warn!(model = %spec.model_name, replica = spec.index, batch = i, "warm-up batch failed: {why}");
    }
    // Warm-up is not serving: the busy time starts with the first batch.
    let _ = take_card_time(backend);
    let took = started.elapsed();
    tracing::info!(model = %spec.model_name, replica = spec.index, batches = w.batches,
        rows = w.input.rows(), ms = took.as_secs_f64() * 1e3, "warmed up");
    took
}

/// The time the card spent on this replica's batches since the last call (CUDA events);
/// `None` on the CPU, or when no batch reached the card.
fn take_card_time(backend: &mut Backend) -> Option<Duration> {
    match backend {
        Backend::Cuda(m) => m.take_batch_time(),
        Backend::CudaEncoder(e) => e.take_batch_time(),
        Backend::Cpu(_) => None,
    }
}

/// Runs one batch and answers its requests; or, when the replica crashed running it (a
/// system failure), hands the batch back, unanswered, with the error.
fn execute(
    spec: &ReplicaSpec,
    backend: &mut Backend,
    mut batch: Batch,
    broken: &mut bool,
) -> Option<(Batch, BatchError)> {
    // A prefetched batch may hold requests whose client left (or whose timeout passed)
    // while it waited: skip them rather than compute answers nobody reads. Whoever waited
    // for them counts them.
    let before = batch.entries.len();
    batch.entries.retain(|e| !e.reply.is_closed());
    if batch.entries.len() < before {
        batch.rows = batch.entries.iter().map(Entry::rows).sum();
        if batch.entries.is_empty() {
            return None;
        }
    }
    let started = Instant::now();
    let now = tokio::time::Instant::now();
    let queue_total: Duration = batch
        .entries
        .iter()
        .map(|e| {
            let waited = now.saturating_duration_since(e.enqueued);
            spec.metrics.queue_duration.observe(waited.as_secs_f64());
            waited
        })
        .sum();
    let _span =
        tracing::debug_span!("batch", model = %spec.model_name, replica = spec.index, rows = batch.rows).entered();

    // Taken before `gather`, which may move a lone request's matrix out of its entry.
    let rows: Vec<usize> = batch.entries.iter().map(Entry::rows).collect();
    let input = gather(&mut batch.entries);
    let gathered = Instant::now();
    // A crash is not retried here: the replica goes, and the batch runs on another.
    let result = faults::with_retries(
        &spec.retries,
        || run_model(spec, backend, &input, broken).map_err(Local),
        // Nobody left to answer (clients gone, deadlines passed): no point running again.
        || batch.entries.iter().all(|e| e.reply.is_closed()),
        |kind, attempts| {
            spec.metrics
                .retries
                .with_label_values(&[&spec.model_name, kind.as_str()])
                .inc();
            tracing::debug!(model = %spec.model_name, replica = spec.index, %kind, attempts, "batch failed; retrying");
        },
    )
    .map_err(|(Local(last), attempts)| match attempts {
        1 => last,
        _ => BatchError::Retried {
            last: Box::new(last),
            attempts,
        },
    });
    if let Err(e) = &result
        && e.kind().is_system()
    {
        // The lone request's matrix or tokens go back into it.
        if let [only] = batch.entries.as_mut_slice()
            && !matches!(input, Input::Rows(Rows::Object { .. }))
        {
            only.input = input;
        }
        return Some((batch, e.clone()));
    }
    drop(input);
    let computed = Instant::now();
    spec.metrics
        .compute_duration
        .observe((computed - gathered).as_secs_f64());
    spec.metrics.batch_size.observe(batch.rows as f64);

    let requests = batch.entries.len();
    let answers: Vec<Reply> = match result {
        Ok(output) => {
            let mut start = 0;
            rows.iter()
                .map(|&n| {
                    let mine = output.slice(s![start..start + n, ..]).to_owned();
                    start += n;
                    Ok(mine)
                })
                .collect()
        }
        Err(err) => {
            tracing::warn!(model = %spec.model_name, replica = spec.index, error = %err, "batch failed");
            vec![Err(err); requests]
        }
    };
    // Counted before anyone is answered: a client that reads the statistics after its
    // answer finds its request in them.
    spec.stats.record_batch(&BatchTimes {
        rows: batch.rows,
        requests,
        queue_total,
        input: gathered - started,
        infer: computed - gathered,
        output: computed.elapsed(),
    });
    for (e, answer) in batch.entries.into_iter().zip(answers) {
        // A client that left while its batch ran is counted by whoever waited for it.
        let _ = e.reply.send(answer);
    }
    None
}

/// A failure as this replica retries it: application errors as `retry_exceptions` says,
/// crashes not at all (the batch moves to another replica).
struct Local(BatchError);

impl faults::Retryable for Local {
    fn retry_kind(&self) -> Option<prism_config::ErrorKind> {
        let kind = self.0.kind();
        (!kind.is_system())
            .then_some(kind)
            .and(faults::Retryable::retry_kind(&self.0))
    }
}

/// One input of all the batch's requests: their rows in one matrix (a lone request's
/// matrix moved out of it, a lone object read in place, its lease cloned), or their texts'
/// tokens one after the other.
fn gather(entries: &mut [Entry]) -> Input {
    if let [only] = entries {
        return match &mut only.input {
            Input::Rows(Rows::Owned(a)) => Input::Rows(Rows::Owned(std::mem::take(a))),
            Input::Rows(Rows::Object { lease, rows, cols }) => Input::Rows(Rows::Object {
                lease: lease.clone(),
                rows: *rows,
                cols: *cols,
            }),
            Input::Tokens(t) => Input::Tokens(std::mem::take(t)),
        };
    }
    if matches!(entries.first().map(|e| &e.input), Some(Input::Tokens(_))) {
        let mut all = Tokens::default();
        for e in entries.iter() {
            match &e.input {
                Input::Tokens(t) => all.extend(t),
                Input::Rows(_) => unreachable!("a deployment takes one kind of input. This is a bug."),
            }
        }
        return Input::Tokens(all);
    }
    let views: Vec<ArrayView2<'_, f32>> = entries
        .iter()
        .map(|e| match &e.input {
            Input::Rows(r) => r.view(),
            Input::Tokens(_) => unreachable!("a deployment takes one kind of input. This is a bug."),
        })
        .collect();
    Input::Rows(Rows::Owned(
        ndarray::concatenate(Axis(0), &views).expect("every request was validated to the model's input width"),
    ))
}

fn run_model(
    spec: &ReplicaSpec,
    backend: &mut Backend,
    input: &Input,
    broken: &mut bool,
) -> Result<Array2<f32>, BatchError> {
    // A drill: `fault_injection.break_rate` breaks the replica, which then fails as a
    // crash does until it is started again.
    if spec.faults.break_rate > 0.0 && !*broken && rand::random_bool(spec.faults.break_rate) {
        *broken = true;
    }
    if *broken {
        return Err(BatchError::Panicked {
            model: spec.model_name.clone(),
            replica: spec.index,
            reason: "fault_injection.break_rate broke this replica (a drill)".into(),
        });
    }
    if faults::injected_failure(&spec.faults) {
        return Err(BatchError::InjectedFault {
            model: spec.model_name.clone(),
            rate: spec.faults.error_rate,
        });
    }
    match catch_unwind(AssertUnwindSafe(|| forward(spec, backend, input))) {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(reason)) => Err(BatchError::Model {
            model: spec.model_name.clone(),
            reason,
        }),
        Err(panic) => {
            let reason = faults::panic_message(panic.as_ref());
            Err(BatchError::Panicked {
                model: spec.model_name.clone(),
                replica: spec.index,
                reason,
            })
        }
    }
}

/// The model on the replica's backend, and nothing else: no faults, no catching.
fn forward(spec: &ReplicaSpec, backend: &mut Backend, input: &Input) -> Result<Array2<f32>, String> {
    match (backend, &spec.model, input) {
        (Backend::Cpu(cpu), ServedModel::Rows(m), Input::Rows(rows)) => {
            m.forward(cpu, rows.view()).map_err(|e| e.to_string())
        }
        (Backend::Cpu(cpu), ServedModel::Encoder(e), Input::Tokens(tokens)) => Ok(e.forward(cpu, tokens)),
        (Backend::Cuda(gpu), ServedModel::Rows(m), Input::Rows(rows)) => {
            let x = rows.view();
            let n = x.nrows();
            let x = x.as_standard_layout();
            let y = gpu
                .forward(x.as_slice().expect("standard layout is contiguous"), n)
                .map_err(|e| e.to_string())?;
            Ok(Array2::from_shape_vec((n, m.out_features()), y).expect("the GPU answers rows × out"))
        }
        (Backend::CudaEncoder(gpu), ServedModel::Encoder(e), Input::Tokens(tokens)) => {
            let y = gpu.forward(tokens).map_err(|e| e.to_string())?;
            Ok(Array2::from_shape_vec((tokens.texts(), e.output_width()), y).expect("the GPU answers texts × width"))
        }
        _ => unreachable!("the input matches the model, and each backend runs its own model. This is a bug."),
    }
}
