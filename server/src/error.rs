//! Errors of the serving layer and the one table that maps them to HTTP statuses.
//!
//! The body of every error answer is `{"error": "<message>"}`, as the V2 protocol asks;
//! messages name the model, the input and what was expected.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prism_protocol::v2::ErrorBody;

use crate::store::StoreError;

/// A failure of one batch, reported to each request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
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
    Retried { last: Box<InferError>, attempts: u32 },
    /// The server stopped before the batch could run.
    #[error("model `{model}`: the server is shutting down")]
    ShuttingDown { model: String },
}

impl InferError {
    /// The error kind `retry_exceptions` names (`InjectedFault`, `ModelError`), or
    /// `Panic` for a system failure; `None` for what is never retried.
    pub fn retry_kind(&self) -> Option<prism_config::ErrorKind> {
        use prism_config::ErrorKind;
        match self {
            InferError::Model { .. } => Some(ErrorKind::ModelError),
            InferError::Panicked { .. } => Some(ErrorKind::Panic),
            InferError::InjectedFault { .. } => Some(ErrorKind::InjectedFault),
            InferError::Retried { last, .. } => last.retry_kind(),
            InferError::Lost { .. } | InferError::ShuttingDown { .. } => None,
        }
    }
}

/// What an HTTP handler can answer instead of a success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown model `{0}`")]
    ModelNotFound(String),
    #[error("model `{model}` has no version `{version}`; it serves version 1")]
    VersionNotFound { model: String, version: String },
    #[error("model `{model}`: the queue is full ({max_queue_size} requests waiting); retry later")]
    QueueFull { model: String, max_queue_size: usize },
    #[error("model `{0}` is not ready")]
    NotReady(String),
    /// The request's own `timeout` passed before its answer (Triton: "Request timeout
    /// expired", UNAVAILABLE).
    #[error(
        "model `{model}`: the request timed out after {timeout:?} (its `timeout` parameter) before it was answered"
    )]
    DeadlineExceeded {
        model: String,
        timeout: std::time::Duration,
    },
    #[error("the request body is larger than the server's limit of {limit} bytes (server.max_request_bytes)")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Encoding `{0}` is not supported; send the request body uncompressed")]
    UnsupportedEncoding(String),
    #[error(
        "`{0}` is a pipeline: it has metadata, readiness and inference, not this route (config, statistics, load and unload are per deployment)"
    )]
    IsPipeline(String),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error(transparent)]
    Object(#[from] StoreError),
    /// `POST /v2/repository/models/{m}/load` could not start the model (`reason` names
    /// it); `serving`: what served before still serves (a model on GPUs is stopped before
    /// it loads).
    #[error("load failed: {reason}; {}", if *serving { "it serves as before" } else { "it is not serving" })]
    LoadFailed { reason: String, serving: bool },
    /// A bug: something that cannot fail did.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The one table from error to status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_)
            | ApiError::VersionNotFound { .. }
            | ApiError::NoRoute { .. }
            | ApiError::IsPipeline(_) => StatusCode::NOT_FOUND,
            ApiError::QueueFull { .. } | ApiError::NotReady(_) | ApiError::DeadlineExceeded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Infer(InferError::ShuttingDown { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Infer(_) | ApiError::Internal(_) | ApiError::LoadFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Object(e) => match e {
                StoreError::NotFound(_) => StatusCode::NOT_FOUND,
                StoreError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
                StoreError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                StoreError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The error kind an object keeps when the work that should produce it failed with
    /// this error: the retry kinds, `Timeout`, `ShapeError`, `StoreFull`, or the kind of
    /// the object it depended on.
    pub fn failure_kind(&self) -> String {
        match self {
            ApiError::Infer(e) => e.retry_kind().map_or("Unavailable", |k| k.as_str()).into(),
            ApiError::DeadlineExceeded { .. } => "Timeout".into(),
            ApiError::BadRequest(_) => "ShapeError".into(),
            ApiError::Object(StoreError::Failed { failure, .. }) => failure.kind.clone(),
            ApiError::Object(StoreError::Full { .. }) => "StoreFull".into(),
            ApiError::Object(StoreError::NotFound(_)) => "ObjectLost".into(),
            _ => "Unavailable".into(),
        }
    }

    /// The `outcome` label of the request metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::PayloadTooLarge { .. } | ApiError::UnsupportedEncoding(_) => {
                "bad_request"
            }
            ApiError::ModelNotFound(_)
            | ApiError::VersionNotFound { .. }
            | ApiError::NoRoute { .. }
            | ApiError::IsPipeline(_) => "not_found",
            ApiError::QueueFull { .. } => "rejected",
            ApiError::DeadlineExceeded { .. } => "timeout",
            ApiError::NotReady(_) | ApiError::Infer(InferError::ShuttingDown { .. }) => "unavailable",
            ApiError::Infer(_) | ApiError::Internal(_) | ApiError::LoadFailed { .. } => "failed",
            ApiError::Object(e) => match e {
                StoreError::NotFound(_) => "not_found",
                StoreError::Full { .. } => "rejected",
                StoreError::Timeout { .. } => "timeout",
                StoreError::Failed { .. } => "failed",
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A failed object also says why in fields a client can branch on.
        if let ApiError::Object(StoreError::Failed { failure, .. }) = &self {
            let body = serde_json::json!({
                "error": self.to_string(),
                "kind": failure.kind,
                "attempts": failure.attempts,
            });
            return (self.status(), axum::Json(body)).into_response();
        }
        let body = ErrorBody {
            error: self.to_string(),
        };
        (self.status(), axum::Json(body)).into_response()
    }
}
