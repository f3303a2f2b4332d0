//! Serving one model: a deployment's lifecycle (start, unload, load, swap), the engine of
//! replica threads and the batcher in front of them, the statistics Triton's extension
//! reports, and the failure rules (fault injection, the one retry loop).
//!
//! A request enters as [`Rows`] through [`Deployment::submit`] and leaves as its rows of
//! the output, or a [`ServeError`]. Nothing here parses a request or knows a protocol;
//! the replicas are the only code that runs kernels.

pub mod batcher;
mod deployment;
mod engine;
pub mod faults;
pub mod model;
mod queue;
mod replica;
pub mod stats;

pub use deployment::{Deployment, MODEL_VERSION};
pub use engine::{ReplicaStatus, StartError};
pub use model::{Io, Loaded, ServedModel, Signature, TensorSig, load};
pub use queue::{Input, Rows};

use prism_config::ErrorKind;

use crate::store::Failure;

/// A failure of one batch, reported to each request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// A kernel refused the batch (a shape the model cannot take).
    #[error("model `{model}` failed: {reason}")]
    Model { model: String, reason: String },
    /// The replica panicked while running the batch; the replica lives on.
    #[error("model `{model}`: replica {replica} crashed while running the batch: {reason}")]
    Panicked {
        model: String,
        replica: usize,
        reason: String,
    },
    /// `fault_injection.error_rate` chose this execution to fail.
    #[error(
        "model `{model}`: InjectedFault: this execution was chosen to fail by the deployment's fault_injection (error_rate {rate})"
    )]
    InjectedFault { model: String, rate: f64 },
    /// The replica dropped the request without an answer (a bug, reported as such).
    #[error("model `{model}`: the replica running this request stopped without answering")]
    Lost { model: String },
    /// It failed again on its last retry.
    #[error("{last} (after {attempts} attempts)")]
    Retried { last: Box<BatchError>, attempts: u32 },
    /// The server stopped before the batch could run.
    #[error("model `{model}`: the server is shutting down")]
    ShuttingDown { model: String },
    /// Every replica crashed past its `max_restarts`.
    #[error("model `{model}`: every replica has failed (max_restarts spent); GET /v2/status says why")]
    NoReplica { model: String },
}

impl BatchError {
    /// The kind a failed object keeps and the metrics name.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BatchError::Model { .. } => ErrorKind::ModelError,
            BatchError::Panicked { .. } => ErrorKind::Panic,
            BatchError::InjectedFault { .. } => ErrorKind::InjectedFault,
            BatchError::Lost { .. } => ErrorKind::Lost,
            BatchError::Retried { last, .. } => last.kind(),
            BatchError::ShuttingDown { .. } | BatchError::NoReplica { .. } => ErrorKind::Unavailable,
        }
    }

    /// The last failure and how many executions ran, retries included.
    pub fn last_attempt(&self) -> (&BatchError, u32) {
        match self {
            BatchError::Retried { last, attempts } => (last, *attempts),
            other => (other, 1),
        }
    }
}

impl faults::Retryable for BatchError {
    fn retry_kind(&self) -> Option<ErrorKind> {
        match self {
            BatchError::Lost { .. } | BatchError::ShuttingDown { .. } => None,
            other => Some(other.kind()),
        }
    }
}

/// Why a deployment did not answer a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// Unloaded, no replica running, or the server is stopping.
    #[error("model `{0}` is not ready")]
    NotReady(String),
    #[error("model `{model}`: the queue is full ({max_queue_size} requests waiting); retry later")]
    QueueFull { model: String, max_queue_size: usize },
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl ServeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServeError::NotReady(_) | ServeError::QueueFull { .. } => ErrorKind::Unavailable,
            ServeError::Batch(e) => e.kind(),
        }
    }

    /// What an object keeps when the inference that should produce it failed so: the
    /// kind, the last try's message, and how many times the batch ran.
    pub fn failure(&self) -> Failure {
        let (message, attempts) = match self {
            ServeError::Batch(e) => {
                let (last, attempts) = e.last_attempt();
                (last.to_string(), attempts)
            }
            other => (other.to_string(), 1),
        };
        Failure {
            kind: self.kind(),
            message,
            attempts,
        }
    }
}
