//! Stateless tasks, Ray-style: an op from the kernels crate over object refs or inline
//! tensors. A task waits for its ref arguments and for its logical resources, runs on a
//! blocking thread, and is retried: system failures (a panic) up to `max_retries` times,
//! application errors (`InjectedFault`, `ShapeError`) only when `retry_exceptions`
//! names them. Its result, or the failure with the attempt count, lands in the store.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use prism_config::{FaultInjection, Retries};
use prism_kernels::{CpuDevice, TaskOp};
use serde::Deserialize;

use crate::cluster::{Pool, TaskAsk};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::{Failure, Lease, ObjectRef, Owner, Settles, Store};

/// Error kinds a task can fail with that are application errors: retried only when
/// `retry_exceptions` names them. `Panic` (a system failure) is always retried.
pub const APPLICATION_ERRORS: [prism_config::ErrorKind; 2] = prism_config::ErrorKind::TASK_RETRYABLE;

/// One argument of a task.
pub enum Arg {
    Ref(ObjectRef),
    Inline(ArrayD<f32>),
}

/// Per-call options, as Ray's `.options(...)`.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub ask: TaskAsk,
    pub retries: Retries,
    pub faults: FaultInjection,
    /// Time-to-live of the result (the store's default when absent).
    pub ttl: Option<Duration>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            ask: TaskAsk {
                num_cpus: 1.0,
                ..TaskAsk::default()
            },
            retries: Retries {
                max_retries: 3,
                retry_exceptions: Vec::new(),
            },
            faults: FaultInjection::default(),
            ttl: None,
        }
    }
}

/// `options` as the request writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptions {
    num_cpus: Option<f64>,
    num_gpus: Option<f64>,
    #[serde(default)]
    resources: BTreeMap<String, f64>,
    max_retries: Option<i64>,
    retry_exceptions: Option<Vec<String>>,
    fault_injection: Option<RawFaults>,
    ttl_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    error_rate: Option<f64>,
    delay_ms: Option<f64>,
    delay_rate: Option<f64>,
}

/// A number in `0..=max`, or the reason naming `key`.
fn non_negative(key: &str, v: f64, max: f64) -> Result<f64, String> {
    if !v.is_finite() || v < 0.0 || v > max {
        return Err(format!("options.{key}: expected a number from 0 to {max}, got {v}"));
    }
    Ok(v)
}

impl RawOptions {
    pub fn validate(self) -> Result<TaskOptions, String> {
        let mut o = TaskOptions::default();
        if let Some(c) = self.num_cpus {
            o.ask.num_cpus = non_negative("num_cpus", c, 1e6)?;
        }
        if let Some(g) = self.num_gpus {
            o.ask.num_gpus = prism_config::gpu_share(g).map_err(|reason| format!("options.num_gpus: {reason}"))?;
        }
        for (k, v) in &self.resources {
            non_negative(&format!("resources.{k}"), *v, 1e9)?;
        }
        o.ask.resources = self.resources;
        if let Some(r) = self.max_retries {
            if !(0..=1000).contains(&r) {
                return Err(format!("options.max_retries: expected 0 to 1000, got {r}"));
            }
            o.retries.max_retries = r as u32;
        }
        if let Some(kinds) = self.retry_exceptions {
            o.retries.retry_exceptions = kinds
                .iter()
                .map(|k| {
                    prism_config::ErrorKind::parse_retryable(k, &APPLICATION_ERRORS).map_err(|e| {
                        format!("options.retry_exceptions: {e} (system failures such as Panic are always retried)")
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(f) = self.fault_injection {
            o.faults = FaultInjection::from_parts(f.error_rate, f.delay_ms, f.delay_rate)
                .map_err(|(k, r)| format!("options.fault_injection.{k}: {r}"))?;
        }
        if let Some(t) = self.ttl_s {
            o.ttl = Some(prism_config::ttl(t).map_err(|e| format!("options.ttl_s: {e}"))?);
        }
        Ok(o)
    }
}

/// Runs tasks against the store and the resource pool.
pub struct Tasks {
    pub store: Arc<Store>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
}

/// An argument, ready to compute with.
enum Ready {
    Lease(Lease),
    Owned(ArrayD<f32>),
}

impl Tasks {
    /// Checks what can be checked now (the resources can ever be met; every ref exists;
    /// inline shapes fit the op), then starts the task and returns the ref of its result.
    pub fn submit(self: &Arc<Self>, op: TaskOp, args: Vec<Arg>, options: TaskOptions) -> Result<ObjectRef, ApiError> {
        let refuse = |e: String| ApiError::BadRequest(format!("task `{op}`: {e}"));
        self.pool.feasible(&options.ask).map_err(refuse)?;
        op.check_arity(args.len()).map_err(refuse)?;
        for a in &args {
            if let Arg::Ref(r) = a {
                self.store.info(*r)?;
            }
        }
        if args.iter().all(|a| matches!(a, Arg::Inline(_))) {
            let shapes: Vec<&[usize]> = args
                .iter()
                .map(|a| match a {
                    Arg::Inline(x) => x.shape(),
                    Arg::Ref(_) => unreachable!(),
                })
                .collect();
            op.output_shape(&shapes).map_err(refuse)?;
        }
        let ttl = options.ttl.unwrap_or(self.store.default_ttl);
        let result = self.store.create_pending(Owner::Client { ttl });
        let tasks = Arc::clone(self);
        tokio::spawn(async move {
            let _settles = Settles::new(Arc::clone(&tasks.store), result, "the task");
            match tasks.run(op, args, &options).await {
                Ok(y) => tasks.store.fulfil_array(result, y, prism_protocol::DType::F32).await,
                Err(failure) => tasks.store.fail(result, failure),
            }
        });
        Ok(result)
    }

    /// Waits for the arguments and resources, runs the op with retries.
    pub async fn run(&self, op: TaskOp, args: Vec<Arg>, options: &TaskOptions) -> Result<ArrayD<f32>, Failure> {
        // All at once: an argument that is ready is leased now, and cannot expire while
        // another one is still pending.
        let ready = futures::future::join_all(args.into_iter().enumerate().map(|(i, a)| async move {
            Ok(match a {
                Arg::Inline(x) => Ready::Owned(x),
                Arg::Ref(r) => Ready::Lease(
                    self.store
                        .get(r, None)
                        .await
                        .map_err(|e| Failure::upstream(&format!("argument {i} ({r})"), e))?,
                ),
            })
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, Failure>>()?;
        let ready = Arc::new(ready);
        let grant = self.pool.acquire(options.ask.clone()).await;
        let started = Instant::now();
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let args = Arc::clone(&ready);
            let faults = options.faults.clone();
            let outcome = tokio::task::spawn_blocking(move || attempt(op, &args, &faults))
                .await
                .unwrap_or_else(|e| Err((prism_config::ErrorKind::Panic, format!("the task's thread failed: {e}"))));
            match outcome {
                Ok(y) => break Ok(y),
                Err((kind, message)) => {
                    if options.retries.again(kind, attempts) {
                        self.metrics
                            .task_retries
                            .with_label_values(&[op.name(), kind.as_str()])
                            .inc();
                        tracing::debug!(op = op.name(), %kind, attempts, "task failed; retrying");
                        continue;
                    }
                    break Err(Failure {
                        kind: kind.as_str().to_owned(),
                        message: format!("task `{op}` failed: {message}"),
                        attempts,
                    });
                }
            }
        };
        drop(grant);
        self.metrics
            .task_duration
            .with_label_values(&[op.name()])
            .observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "success" } else { "failed" };
        self.metrics.tasks.with_label_values(&[op.name(), outcome]).inc();
        result
    }
}

/// One execution: the fault injection's dice, then the op, with panics caught.
fn attempt(
    op: TaskOp,
    args: &[Ready],
    faults: &FaultInjection,
) -> Result<ArrayD<f32>, (prism_config::ErrorKind, String)> {
    if crate::replica::injected_failure(faults) {
        return Err((
            prism_config::ErrorKind::InjectedFault,
            format!(
                "this execution was chosen to fail by fault_injection (error_rate {})",
                faults.error_rate
            ),
        ));
    }
    let slices: Vec<(std::borrow::Cow<'_, [f32]>, &[usize])> = args
        .iter()
        .map(|a| match a {
            Ready::Lease(l) => (l.to_f32(), l.meta.shape.as_slice()),
            Ready::Owned(x) => (
                std::borrow::Cow::Borrowed(x.as_slice().expect("inline arguments are built contiguous")),
                x.shape(),
            ),
        })
        .collect();
    let views: Vec<ArrayViewD<'_, f32>> = slices
        .iter()
        .map(|(data, shape)| ArrayViewD::from_shape(IxDyn(shape), data).expect("lengths match shapes"))
        .collect();
    // `run` checks the shapes first: its refusal is a ShapeError.
    match catch_unwind(AssertUnwindSafe(|| op.run(&CpuDevice::single(), &views))) {
        Ok(Ok(y)) => Ok(y),
        Ok(Err(e)) => Err((prism_config::ErrorKind::ShapeError, e)),
        Err(panic) => Err((
            prism_config::ErrorKind::Panic,
            crate::replica::panic_message(panic.as_ref()),
        )),
    }
}
