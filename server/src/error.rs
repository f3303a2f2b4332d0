//! The error every protocol answers with, and the one table from each error of the core
//! to its HTTP status and its gRPC code. Both adapters (REST in `api`, gRPC in `grpc`)
//! answer through [`status`], with the error's own message, so a refusal reads the same
//! whichever way the request came.

use tonic::Code;

use crate::auth::Denied;
use crate::codec::DecodeError;
use crate::inference::InferenceError;
use crate::serving::{BatchError, ServeError};
use crate::shm::ShmError;
use crate::state::LookupError;
use crate::store::{Failure, StoreError};
use crate::tasks::TaskError;

/// What a request can be answered instead of a success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SharedMemory(#[from] ShmError),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    /// A repository load could not start the model (`reason` names it); `serving`: what
    /// served before still serves (a model on GPUs is stopped before it loads).
    #[error("load failed: {reason}; {}", if *serving { "it serves as before" } else { "it is not serving" })]
    LoadFailed { reason: String, serving: bool },
}

/// How an error is answered: its HTTP status and its gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub http: u16,
    pub grpc: Code,
}

const fn pair(http: u16, grpc: Code) -> Status {
    Status { http, grpc }
}

const BAD_REQUEST: Status = pair(400, Code::InvalidArgument);
const NOT_FOUND: Status = pair(404, Code::NotFound);
const UNAVAILABLE: Status = pair(503, Code::Unavailable);
const INTERNAL: Status = pair(500, Code::Internal);

/// The one table from error to status. Exhaustive: a new error variant anywhere in the
/// core does not compile until it has a status here.
pub fn status(e: &ApiError) -> Status {
    let decode = |e: &DecodeError| match e {
        DecodeError::Invalid(_) | DecodeError::Shape(_) => BAD_REQUEST,
        DecodeError::UnsupportedEncoding(_) => pair(415, Code::InvalidArgument),
        DecodeError::BodyTimeout(_) => pair(408, Code::DeadlineExceeded),
        DecodeError::TooLarge { .. } | DecodeError::ObjectTooLarge { .. } => pair(413, Code::ResourceExhausted),
    };
    let store = |e: &StoreError| match e {
        StoreError::NotFound(_) => NOT_FOUND,
        StoreError::Full { .. } | StoreError::TooMany { .. } => pair(507, Code::ResourceExhausted),
        StoreError::Timeout { .. } => pair(504, Code::DeadlineExceeded),
        StoreError::Failed { .. } | StoreError::Internal(_) => INTERNAL,
    };
    match e {
        ApiError::Lookup(
            LookupError::ModelNotFound(_) | LookupError::VersionNotFound { .. } | LookupError::IsPipeline(_),
        ) => NOT_FOUND,
        ApiError::Decode(e) | ApiError::Inference(InferenceError::Decode(e)) => decode(e),
        ApiError::Inference(InferenceError::Serve(e)) => match e {
            // A full queue is UNAVAILABLE over gRPC too, as Triton answers it: clients
            // retry that code.
            ServeError::NotReady(_) | ServeError::QueueFull { .. } => UNAVAILABLE,
            ServeError::Batch(BatchError::ShuttingDown { .. } | BatchError::NoReplica { .. }) => UNAVAILABLE,
            ServeError::Batch(
                BatchError::Model { .. }
                | BatchError::Panicked { .. }
                | BatchError::InjectedFault { .. }
                | BatchError::Lost { .. }
                | BatchError::Retried { .. },
            ) => INTERNAL,
        },
        // Triton answers an expired request timeout UNAVAILABLE over HTTP; gRPC has a
        // code for it.
        ApiError::Inference(InferenceError::DeadlineExceeded { .. }) => pair(503, Code::DeadlineExceeded),
        ApiError::Inference(InferenceError::Internal(_)) => INTERNAL,
        ApiError::Inference(InferenceError::Store(e)) | ApiError::Store(e) | ApiError::Task(TaskError::Store(e)) => {
            store(e)
        }
        ApiError::Task(TaskError::Invalid(_)) => BAD_REQUEST,
        ApiError::SharedMemory(e) => match e {
            ShmError::Disabled => pair(403, Code::PermissionDenied),
            ShmError::NotRegistered(_) => NOT_FOUND,
            ShmError::AlreadyRegistered(_) | ShmError::Invalid(_) => BAD_REQUEST,
            ShmError::Io { .. } => BAD_REQUEST,
        },
        ApiError::Denied(Denied::Missing | Denied::Wrong) => pair(401, Code::Unauthenticated),
        ApiError::Denied(Denied::NotAdmin) => pair(403, Code::PermissionDenied),
        ApiError::NoRoute { .. } => NOT_FOUND,
        ApiError::LoadFailed { .. } => INTERNAL,
    }
}

impl ApiError {
    /// The failed object behind this error, if it is one.
    pub fn failed_object(&self) -> Option<&Failure> {
        match self {
            ApiError::Store(StoreError::Failed { failure, .. })
            | ApiError::Inference(InferenceError::Store(StoreError::Failed { failure, .. }))
            | ApiError::Task(TaskError::Store(StoreError::Failed { failure, .. })) => Some(failure),
            _ => None,
        }
    }

    /// This error as a gRPC status: the table's code, the same message.
    pub fn to_grpc(&self) -> tonic::Status {
        tonic::Status::new(status(self).grpc, self.to_string())
    }
}
