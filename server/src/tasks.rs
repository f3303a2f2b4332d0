//! Stateless tasks, Ray-style: an op from the kernels crate over object refs or inline
//! tensors. A task waits for its ref arguments and for its logical resources, runs on a
//! blocking thread, and is retried by the one retry loop ([`faults::with_retries`]):
//! system failures (a panic) up to `max_retries` times, application errors
//! (`InjectedFault`, `ShapeError`) only when `retry_exceptions` names them. Its result,
//! or the failure with the attempt count, lands in the store.
//!
//! Owns the task options' rules and the task's execution; it reads no request body (the
//! API layer decodes those) and holds no resource of its own (the pool does).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use prism_config::{ErrorKind, FaultInjection, Retries};
use prism_kernels::{CpuDevice, TaskOp};
use prism_protocol::DType;
use prism_protocol::ray;

use crate::metrics::Metrics;
use crate::resources::{Pool, TaskAsk};
use crate::serving::faults::{self, Retryable};
use crate::store::{Failure, Lease, ObjectRef, Owner, Settles, Store, StoreError};

/// Why a task was not started.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Its options or arguments cannot run (the message names which).
    #[error("{0}")]
    Invalid(String),
    /// A ref argument is not in the store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One argument of a task.
pub enum Arg {
    Ref(ObjectRef),
    Inline(ArrayD<f32>),
}

/// Per-call options, as Ray's `.options(...)`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskOptions {
    pub ask: TaskAsk,
    pub retries: Retries,
    pub faults: FaultInjection,
    /// Time-to-live of the result (the store's default when absent).
    pub ttl: Option<Duration>,
}

impl Default for TaskOptions {
    /// Ray's defaults: one logical CPU, three retries of system failures.
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

/// A number in `0..=max`, or the reason naming `key`.
fn non_negative(key: &str, v: f64, max: f64) -> Result<f64, String> {
    if !v.is_finite() || v < 0.0 || v > max {
        return Err(format!("options.{key}: expected a number from 0 to {max}, got {v}"));
    }
    Ok(v)
}

impl TaskOptions {
    /// A pipeline's op step: light work, so it holds no logical CPU and is not retried.
    pub fn pipeline_step() -> Self {
        TaskOptions {
            ask: TaskAsk::default(),
            retries: Retries {
                max_retries: 0,
                retry_exceptions: Vec::new(),
            },
            ..TaskOptions::default()
        }
    }

    /// The options a request writes, checked; the error names the option.
    pub fn from_wire(o: ray::TaskOptions) -> Result<TaskOptions, String> {
        let mut options = TaskOptions::default();
        if let Some(c) = o.num_cpus {
            options.ask.num_cpus = non_negative("num_cpus", c, 1e6)?;
        }
        if let Some(g) = o.num_gpus {
            options.ask.num_gpus =
                prism_config::gpu_share(g).map_err(|reason| format!("options.num_gpus: {reason}"))?;
        }
        for (k, v) in &o.resources {
            non_negative(&format!("resources.{k}"), *v, 1e9)?;
        }
        options.ask.resources = o.resources;
        if let Some(r) = o.max_retries {
            options.retries.max_retries = u32::try_from(r)
                .ok()
                .filter(|r| *r <= 1000)
                .ok_or_else(|| format!("options.max_retries: expected 0 to 1000, got {r}"))?;
        }
        options.retries.retry_exceptions = o
            .retry_exceptions
            .iter()
            .map(|k| {
                ErrorKind::parse_retryable(k, &ErrorKind::TASK_RETRYABLE).map_err(|e| {
                    format!("options.retry_exceptions: {e} (system failures such as Panic are always retried)")
                })
            })
            .collect::<Result<_, _>>()?;
        if let Some(f) = o.fault_injection {
            options.faults = FaultInjection::from_parts(f.error_rate, f.delay_ms, f.delay_rate)
                .map_err(|(k, r)| format!("options.fault_injection.{k}: {r}"))?;
        }
        if let Some(t) = o.ttl_s {
            options.ttl = Some(prism_config::ttl(t).map_err(|e| format!("options.ttl_s: {e}"))?);
        }
        Ok(options)
    }
}

/// Runs tasks against the store and the resource pool.
pub struct Tasks {
    pub store: Arc<Store>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    /// The work that goes on after its request was answered: tasks, pipeline steps and
    /// async inferences. A shutdown waits for it (`server.shutdown_timeout_s`).
    pub background: tokio_util::task::TaskTracker,
}

/// An argument, ready to compute with.
enum Ready {
    Lease(Lease),
    Owned(ArrayD<f32>),
}

/// One failed execution of a task.
struct Fault {
    kind: ErrorKind,
    message: String,
}

impl Retryable for Fault {
    fn retry_kind(&self) -> Option<ErrorKind> {
        Some(self.kind)
    }
}

impl Tasks {
    /// Checks what can be checked now (the resources can ever be met; every ref exists;
    /// inline shapes fit the op), then starts the task and returns the ref of its result.
    pub fn submit(self: &Arc<Self>, op: TaskOp, args: Vec<Arg>, options: TaskOptions) -> Result<ObjectRef, TaskError> {
        let refuse = |e: String| TaskError::Invalid(format!("task `{op}`: {e}"));
        self.pool.feasible(&options.ask).map_err(refuse)?;
        op.check_arity(args.len()).map_err(refuse)?;
        let mut inline_shapes = Vec::new();
        for a in &args {
            match a {
                Arg::Ref(r) => {
                    self.store.info(*r)?;
                }
                Arg::Inline(x) => inline_shapes.push(x.shape()),
            }
        }
        if inline_shapes.len() == args.len() {
            op.output_shape(&inline_shapes).map_err(refuse)?;
        }
        let ttl = options.ttl.unwrap_or(self.store.default_ttl);
        let result = self.store.create_pending(Owner::Client { ttl })?;
        let tasks = Arc::clone(self);
        self.background.spawn(async move {
            let _settles = Settles::new(Arc::clone(&tasks.store), result, "the task");
            match tasks.run(op, args, &options).await {
                // A result the store cannot hold fails the object with StoreFull.
                Ok(y) => drop(tasks.store.fulfil_array(result, y, DType::F32).await),
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
        let grant = self.pool.acquire(options.ask.clone()).await;
        let started = Instant::now();
        let (retries, fault_injection) = (options.retries.clone(), options.faults.clone());
        let retried = self.metrics.task_retries.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            faults::with_retries(
                &retries,
                || attempt(op, &ready, &fault_injection),
                || false,
                |kind, attempts| {
                    retried.with_label_values(&[op.name(), kind.as_str()]).inc();
                    tracing::debug!(op = op.name(), %kind, attempts, "task failed; retrying");
                },
            )
        })
        .await
        .unwrap_or_else(|e| {
            let message = format!("the task's thread failed: {e}");
            Err((
                Fault {
                    kind: ErrorKind::Panic,
                    message,
                },
                1,
            ))
        });
        drop(grant);
        self.metrics
            .task_duration
            .with_label_values(&[op.name()])
            .observe(started.elapsed().as_secs_f64());
        let label = if outcome.is_ok() { "success" } else { "failed" };
        self.metrics.tasks.with_label_values(&[op.name(), label]).inc();
        outcome.map_err(|(fault, attempts)| Failure {
            kind: fault.kind,
            message: format!("task `{op}` failed: {}", fault.message),
            attempts,
        })
    }
}

/// One execution: the fault injection's dice, then the op, with panics caught.
fn attempt(op: TaskOp, args: &[Ready], fault_injection: &FaultInjection) -> Result<ArrayD<f32>, Fault> {
    if faults::injected_failure(fault_injection) {
        return Err(Fault {
            kind: ErrorKind::InjectedFault,
            message: format!(
                "this execution was chosen to fail by fault_injection (error_rate {})",
                fault_injection.error_rate
            ),
        });
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
        Ok(Err(message)) => Err(Fault {
            kind: ErrorKind::ShapeError,
            message,
        }),
        Err(panic) => Err(Fault {
            kind: ErrorKind::Panic,
            message: faults::panic_message(panic.as_ref()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn wire(json: serde_json::Value) -> Result<TaskOptions, String> {
        TaskOptions::from_wire(serde_json::from_value(json).expect("wire options"))
    }

    #[test]
    fn absent_options_are_ray_s_defaults() {
        let o = wire(serde_json::json!({})).unwrap();
        assert_eq!(o, TaskOptions::default());
        assert_eq!(o.ask.num_cpus, 1.0);
        assert_eq!(o.retries.max_retries, 3);
    }

    #[test]
    fn every_option_is_read() {
        let o = wire(serde_json::json!({
            "num_cpus": 0, "num_gpus": 0.25, "resources": {"licence": 1},
            "max_retries": 5, "retry_exceptions": ["ShapeError"],
            "fault_injection": {"delay_ms": 2}, "ttl_s": 30,
        }))
        .unwrap();
        assert_eq!((o.ask.num_cpus, o.ask.num_gpus), (0.0, 0.25));
        assert_eq!(o.ask.resources, BTreeMap::from([("licence".to_owned(), 1.0)]));
        assert_eq!(o.retries.max_retries, 5);
        assert_eq!(o.retries.retry_exceptions, vec![ErrorKind::ShapeError]);
        assert_eq!(o.faults.delay, Duration::from_millis(2));
        assert_eq!(o.faults.delay_rate, 1.0, "delay_ms alone delays every execution");
        assert_eq!(o.ttl, Some(Duration::from_secs(30)));
    }

    #[test]
    fn bad_options_name_the_option_and_the_limit() {
        let cases = [
            (
                serde_json::json!({"num_cpus": -1}),
                "options.num_cpus: expected a number from 0 to 1000000, got -1",
            ),
            (
                serde_json::json!({"num_gpus": 1.5}),
                "options.num_gpus: must be a fraction up to 1",
            ),
            (
                serde_json::json!({"resources": {"x": -2}}),
                "options.resources.x: expected a number from 0",
            ),
            (
                serde_json::json!({"max_retries": 1001}),
                "options.max_retries: expected 0 to 1000, got 1001",
            ),
            (
                serde_json::json!({"retry_exceptions": ["ModelError"]}),
                "options.retry_exceptions: unknown error kind `ModelError`; the kinds are InjectedFault, ShapeError",
            ),
            (
                serde_json::json!({"fault_injection": {"error_rate": 2}}),
                "options.fault_injection.error_rate",
            ),
            (
                serde_json::json!({"ttl_s": 0}),
                "options.ttl_s: expected seconds above 0",
            ),
        ];
        for (json, want) in cases {
            let err = wire(json.clone()).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
