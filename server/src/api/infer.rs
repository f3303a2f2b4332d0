//! `POST /v2/models/{m}[/versions/{v}]/infer`, for models and pipelines alike: the body
//! decoded, the one inference path run, the answer written.

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prism_protocol::v2;

use super::{ApiError, App, ModelParam, respond, served};
use crate::codec::{self, DecodeError};

pub async fn infer(
    State(app): App,
    path: ModelParam,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = tokio::time::Instant::now();
    let target = match served(&app, path) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let request = body.map_err(|r| body_error(r, app.max_request_bytes)).and_then(|body| {
        let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes());
        let header_length = headers.get(v2::HEADER_LENGTH).map(|v| v.as_bytes());
        codec::request::decode_body(encoding, header_length, body, &app.shm)
    });
    match app.infer(target, request, arrived).await {
        Ok(answer) => {
            let status = if answer.accepted() {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            respond::encoded(status, codec::response::encode(answer))
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Why a body could not be read: too large, too slow, or cut off.
pub(super) fn body_error(rejection: BytesRejection, limit: usize) -> DecodeError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        DecodeError::TooLarge { limit }
    } else if let Some(after) = crate::connections::is_body_timeout(&rejection) {
        DecodeError::BodyTimeout(after)
    } else {
        codec::invalid(format!("cannot read the request body: {}", rejection.body_text()))
    }
}
