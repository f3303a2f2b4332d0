//! What every handler answers with: an error as its HTTP status (from the one table in
//! [`crate::error`]) and the V2 error body, and the V2 binary responses.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prism_protocol::v2::ErrorBody;

use crate::codec::Encoded;
use crate::state::LookupError;
use crate::store::Lease;

pub use crate::error::ApiError;

/// The HTTP status of an error, from the one table in [`crate::error::status`].
pub fn status(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(crate::error::status(e).http).expect("the table holds valid statuses")
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
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        // RFC 6750: how to authenticate, and whether the token sent was the problem.
        if let ApiError::Denied(denied) = &self
            && status == StatusCode::UNAUTHORIZED
        {
            let challenge = match denied {
                crate::auth::Denied::Wrong => r#"Bearer realm="prism", error="invalid_token""#,
                _ => r#"Bearer realm="prism""#,
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
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
