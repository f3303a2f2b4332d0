//! What every handler answers with: the API's error and the one table from every error
//! of the core to an HTTP status, the V2 error body, and the V2 binary responses.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prism_protocol::v2::ErrorBody;

use crate::codec::{DecodeError, Encoded};
use crate::inference::InferenceError;
use crate::serving::{BatchError, ServeError};
use crate::state::LookupError;
use crate::store::{Lease, StoreError};
use crate::tasks::TaskError;

/// What an HTTP handler can answer instead of a success.
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
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    /// `POST /v2/repository/models/{m}/load` could not start the model (`reason` names
    /// it); `serving`: what served before still serves (a model on GPUs is stopped before
    /// it loads).
    #[error("load failed: {reason}; {}", if *serving { "it serves as before" } else { "it is not serving" })]
    LoadFailed { reason: String, serving: bool },
}

/// The one table from error to status. Exhaustive: a new error variant anywhere in the
/// core does not compile until it has a status here.
pub fn status(e: &ApiError) -> StatusCode {
    let decode = |e: &DecodeError| match e {
        DecodeError::Invalid(_) | DecodeError::Shape(_) => StatusCode::BAD_REQUEST,
        DecodeError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        DecodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
    };
    let store = |e: &StoreError| match e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        StoreError::Failed { .. } | StoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    match e {
        ApiError::Lookup(
            LookupError::ModelNotFound(_) | LookupError::VersionNotFound { .. } | LookupError::IsPipeline(_),
        ) => StatusCode::NOT_FOUND,
        ApiError::Decode(e) | ApiError::Inference(InferenceError::Decode(e)) => decode(e),
        ApiError::Inference(InferenceError::Serve(e)) => match e {
            ServeError::NotReady(_) | ServeError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Batch(BatchError::ShuttingDown { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Batch(
                BatchError::Model { .. }
                | BatchError::Panicked { .. }
                | BatchError::InjectedFault { .. }
                | BatchError::Lost { .. }
                | BatchError::Retried { .. },
            ) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        // Triton answers an expired request timeout UNAVAILABLE.
        ApiError::Inference(InferenceError::DeadlineExceeded { .. }) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Inference(InferenceError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        ApiError::Inference(InferenceError::Store(e)) | ApiError::Store(e) | ApiError::Task(TaskError::Store(e)) => {
            store(e)
        }
        ApiError::Task(TaskError::Invalid(_)) => StatusCode::BAD_REQUEST,
        ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
        ApiError::LoadFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// OpenAI's error `type` and `code` for an error, the `/v1` routes' table, from the
/// same classification as the statuses.
pub fn openai_error(e: &ApiError) -> (&'static str, Option<&'static str>) {
    if matches!(e, ApiError::Lookup(LookupError::ModelNotFound(_))) {
        return ("invalid_request_error", Some("model_not_found"));
    }
    let s = status(e);
    if s == StatusCode::SERVICE_UNAVAILABLE {
        ("server_error", Some("service_unavailable"))
    } else if s.is_client_error() {
        ("invalid_request_error", None)
    } else {
        ("server_error", None)
    }
}

impl ApiError {
    /// The failed object behind this error, if it is one.
    fn failed_object(&self) -> Option<&crate::store::Failure> {
        match self {
            ApiError::Store(StoreError::Failed { failure, .. })
            | ApiError::Inference(InferenceError::Store(StoreError::Failed { failure, .. }))
            | ApiError::Task(TaskError::Store(StoreError::Failed { failure, .. })) => Some(failure),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status(&self);
        // A failed object also says why in fields a client can branch on.
        if let Some(failure) = self.failed_object() {
            let body = serde_json::json!({
                "error": self.to_string(),
                "kind": failure.kind,
                "attempts": failure.attempts,
            });
            return (status, axum::Json(body)).into_response();
        }
        (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// A V2 answer in the binary extension: `body` is the JSON header of `header_len` bytes,
/// then the tensors' bytes.
fn binary_response(header_len: usize, body: Body) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static("inference-header-content-length"),
                HeaderValue::from(header_len),
            ),
        ],
        body,
    )
        .into_response()
}

/// A JSON header followed by an object's bytes, sent without copying them: the lease
/// travels with the body, so the object cannot be spilled or freed under it.
pub fn header_then_object(head: Vec<u8>, lease: Lease) -> Response {
    let header_len = head.len();
    let chunks = [Bytes::from(head), Bytes::from_owner(lease)];
    let body = Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, std::convert::Infallible>)));
    binary_response(header_len, body)
}

/// A JSON document, already serialized.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An encoded V2 answer, with `status`.
pub fn encoded(status: StatusCode, answer: Encoded) -> Response {
    let mut response = match answer {
        Encoded::Json(body) => return json_bytes(status, body),
        Encoded::Binary { body, header_len } => binary_response(header_len, Body::from(body)),
        Encoded::Streamed { header, object } => header_then_object(header, object),
    };
    *response.status_mut() = status;
    response
}
