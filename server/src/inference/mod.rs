//! The one inference path. Every protocol decodes its request into a
//! [`codec::Request`] and calls [`AppState::infer`] with what the model name serves (a
//! deployment or a pipeline, alike); the answer comes back as a [`codec::Answer`] for the
//! protocol to write. Written once, here, for models and pipelines, REST and what comes
//! next:
//!
//! * the request's deadline (`timeout`, `timeout_ms`), one for the whole request: waiting
//!   for input objects, the queue, the run;
//! * `async`: answer at once with the ref the output will have, run in the background;
//! * an output kept in the store (`object_ref`) or sent (JSON or binary);
//! * the request metrics: every request counted once when it ends (an async request when
//!   its work ends), with its outcome and its duration from arrival; one whose client
//!   left is counted as cancelled.
//!
//! It does not parse or write any wire format (`codec` does) and never runs a kernel
//! (replicas and tasks do).

mod pipeline;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ndarray::Array2;
use prism_config::ErrorKind;
use tokio::time::Instant;

use crate::codec::signature::{self, OutputFlags};
use crate::codec::{self, Answer, AnswerValue, DecodeError, Source};
use crate::metrics::Outcome;
use crate::pipeline::Pipeline;
use crate::serving::{Deployment, Rows, ServeError};
use crate::state::{AppState, Served};
use crate::store::{Failure, ObjectRef, Settles, StoreError};

/// Why an inference was not answered.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// An object the request names, or the output of a pipeline run.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request's own `timeout` passed before its answer (Triton: "Request timeout
    /// expired", UNAVAILABLE).
    #[error(
        "{kind} `{name}`: the request timed out after {timeout:?} (its `timeout` parameter) before it was answered"
    )]
    DeadlineExceeded {
        kind: &'static str,
        name: String,
        timeout: Duration,
    },
}

impl InferenceError {
    /// The kind an object keeps when the inference that should produce it failed so.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InferenceError::Decode(e) => e.kind(),
            InferenceError::Serve(e) => e.kind(),
            InferenceError::DeadlineExceeded { .. } => ErrorKind::Timeout,
            InferenceError::Store(e) => match e {
                StoreError::Failed { failure, .. } => failure.kind,
                StoreError::NotFound(_) => ErrorKind::ObjectLost,
                StoreError::Full { .. } => ErrorKind::StoreFull,
                StoreError::Timeout { .. } => ErrorKind::Timeout,
                StoreError::Internal(_) => ErrorKind::Lost,
            },
        }
    }

    /// How the request ended, for the metrics.
    pub fn outcome(&self) -> Outcome {
        match self {
            InferenceError::Decode(_) => Outcome::BadRequest,
            InferenceError::Serve(e) => match e {
                ServeError::QueueFull { .. } => Outcome::Rejected,
                ServeError::NotReady(_) | ServeError::Batch(crate::serving::BatchError::ShuttingDown { .. }) => {
                    Outcome::Unavailable
                }
                ServeError::Batch(_) => Outcome::Failed,
            },
            InferenceError::DeadlineExceeded { .. } => Outcome::Timeout,
            InferenceError::Store(e) => match e {
                StoreError::NotFound(_) => Outcome::NotFound,
                StoreError::Full { .. } => Outcome::Rejected,
                StoreError::Timeout { .. } => Outcome::Timeout,
                StoreError::Failed { .. } | StoreError::Internal(_) => Outcome::Failed,
            },
        }
    }

    /// What an object keeps when the inference that should produce it failed so.
    pub fn failure(&self) -> Failure {
        match self {
            InferenceError::Serve(e) => e.failure(),
            other => Failure {
                kind: other.kind(),
                message: other.to_string(),
                attempts: 1,
            },
        }
    }
}

/// The running part of a request, once its inputs were accepted.
enum Work {
    /// A model's rows are queued (or will be, once their input object is ready); the
    /// future yields the output rows. `rows`: how many, when known already.
    Model {
        deployment: Arc<Deployment>,
        rows: Option<usize>,
        output: Pin<Box<dyn Future<Output = Result<Array2<f32>, InferenceError>> + Send>>,
    },
    /// A pipeline runs; its output will be `output`. `cleanup` deletes what this request
    /// put in the store for itself when it ends or goes away.
    Pipeline {
        pipeline: Arc<Pipeline>,
        output: ObjectRef,
        cleanup: pipeline::Cleanup,
    },
}

/// When a request gives up: its `timeout` after it arrived.
#[derive(Clone, Copy)]
struct Deadline(Option<(Instant, Duration)>);

impl Deadline {
    fn after(timeout: Option<Duration>) -> Self {
        Deadline(timeout.map(|t| (Instant::now() + t, t)))
    }

    /// `work`, dropped at the deadline. Dropping a queued request takes it out of its
    /// queue (the batcher skips requests nobody waits for).
    async fn bound<T>(
        self,
        target: &Served,
        work: impl Future<Output = Result<T, InferenceError>>,
    ) -> Result<T, InferenceError> {
        let Some((at, timeout)) = self.0 else {
            return work.await;
        };
        tokio::time::timeout_at(at, work).await.unwrap_or_else(|_| {
            Err(InferenceError::DeadlineExceeded {
                kind: target.kind(),
                name: target.name().to_owned(),
                timeout,
            })
        })
    }
}

/// Counts one request once: with its outcome and duration when it ends, or as cancelled
/// (no duration, no statistics) when it is dropped before (its client left).
struct Count {
    target: Served,
    started: Instant,
    done: bool,
}

impl Count {
    fn start(target: Served, started: Instant) -> Self {
        Count {
            target,
            started,
            done: false,
        }
    }

    fn finish<T>(mut self, result: Result<T, InferenceError>) -> Result<T, InferenceError> {
        self.done = true;
        let elapsed = self.started.elapsed();
        let outcome = result
            .as_ref()
            .map_or_else(InferenceError::outcome, |_| Outcome::Success);
        let m = self.target.request_metrics();
        m.outcome(outcome).inc();
        m.duration.observe(elapsed.as_secs_f64());
        if let Some(stats) = self.target.stats() {
            stats.record_request(result.is_ok(), elapsed);
        }
        if let (Err(e), Outcome::Failed | Outcome::Timeout | Outcome::Unavailable | Outcome::Rejected) =
            (&result, outcome)
        {
            tracing::warn!(model = self.target.name(), error = %e, "inference failed");
        }
        result
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        if !self.done {
            self.target.request_metrics().outcome(Outcome::Cancelled).inc();
        }
    }
}

/// How the answer is addressed, whatever its value.
struct Reply {
    model: String,
    id: Option<String>,
    output: String,
    binary: bool,
}

impl Reply {
    fn with(self, value: AnswerValue) -> Answer {
        Answer {
            model: self.model,
            id: self.id,
            output: self.output,
            binary: self.binary,
            value,
        }
    }
}

impl AppState {
    /// Runs `request` (or counts its refusal) on what `target` serves. `arrived`: when
    /// the request came in, before it was decoded (its duration counts from there).
    pub async fn infer(
        self: &Arc<Self>,
        target: Served,
        request: Result<codec::Request, DecodeError>,
        arrived: Instant,
    ) -> Result<Answer, InferenceError> {
        let count = Count::start(target.clone(), arrived);
        let admitted = request.and_then(|r| {
            let flags = signature::output_flags(&r, (target.kind(), target.name()), target.output_name())?;
            Ok((r, flags))
        });
        let (request, flags) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => return count.finish(Err(e.into())),
        };
        let deadline = Deadline::after(request.timeout);
        let reply = Reply {
            model: target.name().to_owned(),
            id: request.id,
            output: target.output_name().to_owned(),
            binary: flags.binary,
        };
        let keep = request.run_async || flags.by_ref;
        let work = match deadline.bound(&target, self.begin(&target, request.inputs, keep)).await {
            Ok(work) => work,
            Err(e) => return count.finish(Err(e)),
        };
        if request.run_async {
            return Ok(reply.with(self.accept(target, work, deadline, count)));
        }
        let value = deadline.bound(&target, self.complete(work, flags)).await;
        count.finish(value.map(|v| reply.with(v)))
    }

    /// Checks the inputs against `target` and starts the work: a model's rows are
    /// queued at once (a full queue refuses now), a pipeline's inputs go into the store
    /// and its steps start. `keep`: the output is the client's (async or by ref).
    async fn begin(&self, target: &Served, inputs: Vec<codec::Input>, keep: bool) -> Result<Work, InferenceError> {
        let d = match target {
            Served::Pipeline(p) => return pipeline::begin(self, p, inputs, keep).await,
            Served::Deployment(d) => Arc::clone(d),
        };
        Ok(match signature::model_input(&d.spec, inputs)? {
            Source::Inline(a) => {
                let rows = Some(a.nrows());
                let queued = d.submit(Rows::Owned(a))?;
                let deployment = Arc::clone(&d);
                Work::Model {
                    deployment,
                    rows,
                    output: Box::pin(async move { Ok(d.answer(queued).await?) }),
                }
            }
            Source::Object(r) => {
                // An unknown object is refused now; a pending one is waited for by the
                // work (the output of async work chained in).
                let info = self.store.info(r)?;
                let rows = info.shape.as_ref().and_then(|s| s.first().copied());
                let store = Arc::clone(&self.store);
                let deployment = Arc::clone(&d);
                Work::Model {
                    deployment,
                    rows,
                    output: Box::pin(async move {
                        let lease = store.get(r, None).await?;
                        let rows = signature::object_rows(&d.spec, lease)?;
                        Ok(d.infer(rows).await?)
                    }),
                }
            }
        })
    }

    /// Waits for the work and answers its output as the request wants it.
    async fn complete(&self, work: Work, flags: OutputFlags) -> Result<AnswerValue, InferenceError> {
        match work {
            Work::Model { deployment, output, .. } => {
                let values = output.await?;
                let datatype = deployment.spec.output.datatype;
                if !flags.by_ref {
                    return Ok(AnswerValue::Rows { values, datatype });
                }
                let shape = vec![values.nrows() as i64, values.ncols() as i64];
                let object_ref = self
                    .store
                    .put_array(values.into_dyn(), datatype, self.store.client_owner())
                    .await?;
                Ok(AnswerValue::Ref {
                    object_ref,
                    datatype,
                    shape,
                    accepted: false,
                })
            }
            Work::Pipeline { output, cleanup, .. } => {
                let lease = self.store.get(output, None).await?;
                // A server-owned output is deleted now; the lease keeps its bytes.
                drop(cleanup);
                if !flags.by_ref {
                    return Ok(AnswerValue::Object(lease));
                }
                Ok(AnswerValue::Ref {
                    object_ref: output,
                    datatype: lease.meta.datatype,
                    shape: lease.meta.shape.iter().map(|&d| d as i64).collect(),
                    accepted: false,
                })
            }
        }
    }

    /// `async`: the work goes on in the background, bounded by the request's deadline,
    /// and its output lands in the store; the request is counted when it ends. Answers
    /// the ref at once, with the shape as far as it is known.
    fn accept(self: &Arc<Self>, target: Served, work: Work, deadline: Deadline, count: Count) -> AnswerValue {
        let store = Arc::clone(&self.store);
        match work {
            Work::Model {
                deployment,
                rows,
                output,
            } => {
                let datatype = deployment.spec.output.datatype;
                let object_ref = store.create_pending(store.client_owner());
                tokio::spawn(async move {
                    let _settles = Settles::new(Arc::clone(&store), object_ref, "the inference");
                    let result = match deadline.bound(&target, output).await {
                        // A result the store cannot hold fails the object and is counted so.
                        Ok(y) => store
                            .fulfil_array(object_ref, y.into_dyn(), datatype)
                            .await
                            .map_err(InferenceError::from),
                        Err(e) => {
                            store.fail(object_ref, e.failure());
                            Err(e)
                        }
                    };
                    let _ = count.finish(result);
                });
                AnswerValue::Ref {
                    object_ref,
                    datatype,
                    shape: vec![rows.map_or(-1, |n| n as i64), deployment.spec.output.features as i64],
                    accepted: true,
                }
            }
            Work::Pipeline { pipeline, output, .. } => {
                tokio::spawn(async move {
                    let settled = async { Ok(store.settled(output).await?) };
                    let result = deadline.bound(&target, settled).await;
                    if let Err(e @ InferenceError::DeadlineExceeded { .. }) = &result {
                        store.fail(output, e.failure());
                    }
                    let _ = count.finish(result);
                });
                AnswerValue::Ref {
                    object_ref: output,
                    datatype: pipeline.output_datatype(),
                    shape: pipeline.output_shape().to_vec(),
                    accepted: true,
                }
            }
        }
    }
}
