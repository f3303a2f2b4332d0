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

mod model;
mod pipeline;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prism_config::ErrorKind;
use prism_protocol::DType;
use tokio::time::Instant;

use crate::codec::signature::{self, OutputFlags};
use crate::codec::{self, Answer, AnswerOutput, AnswerValue, DecodeError, Written, invalid};
use crate::metrics::Outcome;
use crate::serving::ServeError;
use crate::shm::Place;
use crate::state::{AppState, Served};
use crate::store::{Failure, StoreError};

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
    /// A bug: work that cannot fail did (a blocking thread stopped).
    #[error("internal error: {0}")]
    Internal(String),
}

impl InferenceError {
    /// The kind an object keeps when the inference that should produce it failed so.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InferenceError::Decode(e) => e.kind(),
            InferenceError::Serve(e) => e.kind(),
            InferenceError::DeadlineExceeded { .. } => ErrorKind::Timeout,
            InferenceError::Internal(_) => ErrorKind::Lost,
            InferenceError::Store(e) => match e {
                StoreError::Failed { failure, .. } => failure.kind,
                StoreError::NotFound(_) => ErrorKind::ObjectLost,
                StoreError::Full { .. } | StoreError::TooMany { .. } => ErrorKind::StoreFull,
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
            InferenceError::Internal(_) => Outcome::Failed,
            InferenceError::Store(e) => match e {
                StoreError::NotFound(_) => Outcome::NotFound,
                StoreError::Full { .. } | StoreError::TooMany { .. } => Outcome::Rejected,
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
    Model(model::ModelWork),
    Pipeline(pipeline::PipelineWork),
}

/// An output a request wants, with how it wants it.
#[derive(Clone, Debug)]
struct Wanted {
    name: String,
    datatype: DType,
    flags: OutputFlags,
}

/// When a request gives up: its `timeout` after it arrived.
#[derive(Clone, Copy)]
struct Deadline(Option<(Instant, Duration)>);

impl Deadline {
    /// `timeout` after the request arrived (before it was read and decoded).
    fn after(arrived: Instant, timeout: Option<Duration>) -> Self {
        Deadline(timeout.map(|t| (arrived + t, t)))
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
        if result.is_ok() {
            self.target.answered(elapsed);
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
            let wanted = wanted(&target, &r)?;
            let shared = shared_outputs(&r)?;
            for (name, place) in &shared {
                self.shm
                    .check(place)
                    .map_err(|e| invalid(format!("output `{name}`: {e}")))?;
            }
            Ok((r, wanted, shared))
        });
        let (request, wanted, shared) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => return count.finish(Err(e.into())),
        };
        let deadline = Deadline::after(arrived, request.timeout);
        let (model, id) = (target.name().to_owned(), request.id.clone());
        let answer = |tokens, outputs| Answer {
            model,
            id,
            outputs,
            tokens,
        };
        let run_async = request.run_async;
        // An async answer needs an object: refused before any work is queued when the
        // store holds its max_objects.
        if run_async && let Err(e) = self.store.room_for_one_more() {
            return count.finish(Err(e.into()));
        }
        let keep = run_async || wanted.iter().any(|w| w.flags.by_ref);
        let work = match deadline.bound(&target, self.begin(&target, request, keep)).await {
            Ok(work) => work,
            Err(e) => return count.finish(Err(e)),
        };
        let tokens = match &work {
            Work::Model(w) => w.tokens,
            Work::Pipeline(_) => None,
        };
        if run_async {
            return self
                .accept(target, work, wanted, deadline, count)
                .map(|o| answer(tokens, o));
        }
        let outputs = deadline.bound(&target, self.complete(work, &wanted)).await;
        let delivered = outputs.and_then(|o| self.write_shared(o, &shared));
        count.finish(delivered.map(|o| answer(tokens, o)))
    }

    /// Writes the outputs the request placed in shared memory into their regions; they
    /// answer where they are instead of their values.
    fn write_shared(
        &self,
        outputs: Vec<AnswerOutput>,
        shared: &[(String, Place)],
    ) -> Result<Vec<AnswerOutput>, InferenceError> {
        if shared.is_empty() {
            return Ok(outputs);
        }
        outputs
            .into_iter()
            .map(|o| {
                let Some((_, place)) = shared.iter().find(|(n, _)| *n == o.name) else {
                    return Ok(o);
                };
                let (name, binary) = (o.name.clone(), o.binary);
                let Written::Data {
                    shape, datatype, bytes, ..
                } = codec::written(o)
                else {
                    unreachable!("an output placed in shared memory is not a ref (decoding refuses both)")
                };
                self.shm
                    .write(place, &bytes)
                    .map_err(|e| invalid(format!("output `{name}`: {e}")))?;
                let value = AnswerValue::Shared {
                    datatype,
                    shape,
                    place: place.clone(),
                    bytes: bytes.len(),
                };
                Ok(AnswerOutput { name, binary, value })
            })
            .collect()
    }

    /// Checks the inputs against `target` and starts the work: a model's input is queued
    /// at once (a full queue refuses now), a pipeline's inputs go into the store and its
    /// steps start. `keep`: the output is the client's (async or by ref).
    async fn begin(&self, target: &Served, request: codec::Request, keep: bool) -> Result<Work, InferenceError> {
        Ok(match target {
            Served::Deployment(d) => Work::Model(model::begin(self, d, request).await?),
            Served::Pipeline(p) => Work::Pipeline(pipeline::begin(self, p, request.inputs, keep).await?),
        })
    }

    /// Waits for the work and answers its outputs as the request wants them.
    async fn complete(&self, work: Work, wanted: &[Wanted]) -> Result<Vec<AnswerOutput>, InferenceError> {
        match work {
            Work::Model(w) => model::complete(self, w, wanted).await,
            Work::Pipeline(w) => pipeline::complete(self, w, wanted).await,
        }
    }

    /// `async`: the work goes on in the background, bounded by the request's deadline,
    /// and its output lands in the store; the request is counted when it ends. Answers
    /// the ref at once, with the shape as far as it is known.
    fn accept(
        self: &Arc<Self>,
        target: Served,
        work: Work,
        wanted: Vec<Wanted>,
        deadline: Deadline,
        count: Count,
    ) -> Result<Vec<AnswerOutput>, InferenceError> {
        match work {
            Work::Model(w) => model::accept(self, target, w, wanted, deadline, count),
            Work::Pipeline(w) => pipeline::accept(self, target, w, wanted, deadline, count),
        }
    }
}

/// The outputs the request places in shared memory, by name. An async request answers
/// refs, and cannot also write into the client's memory.
fn shared_outputs(request: &codec::Request) -> Result<Vec<(String, Place)>, DecodeError> {
    let shared: Vec<(String, Place)> = request
        .outputs
        .iter()
        .filter_map(|o| o.shared.clone().map(|p| (o.name.clone(), p)))
        .collect();
    if request.run_async
        && let Some((name, _)) = shared.first()
    {
        return Err(invalid(format!(
            "output `{name}`: an async request answers refs; it cannot also write into shared memory"
        )));
    }
    Ok(shared)
}

/// The outputs `request` wants of `target`, checked: only numeric outputs can be kept in
/// the store (by ref, or for an async request).
fn wanted(target: &Served, request: &codec::Request) -> Result<Vec<Wanted>, DecodeError> {
    let outputs = target.outputs();
    let names: Vec<&str> = outputs.iter().map(|(n, _)| *n).collect();
    let chosen = signature::wanted_outputs(request, (target.kind(), target.name()), &names)?;
    let wanted: Vec<Wanted> = chosen
        .into_iter()
        .map(|(name, flags)| Wanted {
            name: name.to_owned(),
            datatype: outputs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, d)| *d)
                .expect("chosen among them"),
            flags,
        })
        .collect();
    for w in &wanted {
        if w.datatype == DType::Bytes && (w.flags.by_ref || request.run_async) {
            let why = if request.run_async {
                "an async request answers refs"
            } else {
                "`object_ref` was asked"
            };
            return Err(invalid(format!(
                "output `{}` is BYTES, and the object store holds numeric tensors only ({why}); ask for the numeric outputs alone",
                w.name
            )));
        }
    }
    Ok(wanted)
}
