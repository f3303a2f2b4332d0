//! The Ray Core half of the REST API: objects (`/v2/objects`) and `POST /v2/wait`.
//!
//! A binary put streams its body straight into the object's memory, and a binary get
//! streams the object's bytes out of the store: a large object is never copied into a
//! request-sized buffer on the way.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use prism_protocol::ray::{ObjectTensor, RefBody, WaitAnswer, WaitRequest};
use prism_protocol::v2::{self, Parameters};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, App, WholeBody, respond};
use crate::codec::tensor::{self, Carried};
use crate::codec::{DecodeError, invalid};
use crate::store::{ObjectRef, Owner, Store, StoreError};

/// `ttl_s` from a put's parameters: the client's time-to-live, or the store's default.
fn owner(store: &Store, parameters: Option<&Parameters>) -> Result<Owner, DecodeError> {
    let ttl = match parameters.and_then(|p| p.get("ttl_s")) {
        None => store.default_ttl,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("expected a number of seconds, got {v}"))
            .and_then(prism_config::ttl)
            .map_err(|e| invalid(format!("parameter `ttl_s`: {e}")))?,
    };
    Ok(Owner::Client { ttl })
}

pub(super) fn parse_ref(s: &str, what: &str) -> Result<ObjectRef, DecodeError> {
    s.parse().map_err(|e| invalid(format!("{what}: {e}")))
}

/// A wait request and its refs, each parsed once and unique.
fn wait_refs(body: &[u8]) -> Result<(WaitRequest, Vec<ObjectRef>), DecodeError> {
    let w: WaitRequest = v2::from_slice(body).map_err(|e| {
        invalid(format!(
            "invalid wait request (expected {{\"object_refs\": [...], \"num_returns\": k, \"timeout_ms\": t}}): {e}"
        ))
    })?;
    if w.object_refs.len() > MAX_WAIT_REFS {
        return Err(invalid(format!(
            "object_refs: {} refs, more than the {MAX_WAIT_REFS} one wait may name; wait on fewer at a time",
            w.object_refs.len()
        )));
    }
    let mut refs = Vec::with_capacity(w.object_refs.len());
    let mut seen = std::collections::HashSet::with_capacity(w.object_refs.len());
    for (i, s) in w.object_refs.iter().enumerate() {
        let r = parse_ref(s, &format!("object_refs[{i}]"))?;
        if !seen.insert(r) {
            return Err(invalid(format!(
                "object_refs[{i}]: {r} is listed twice; refs must be unique"
            )));
        }
        refs.push(r);
    }
    Ok((w, refs))
}

fn created(object_ref: ObjectRef) -> Response {
    let body = RefBody {
        object_ref: object_ref.to_string(),
    };
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `POST /v2/objects`: a JSON tensor, or a JSON header and the tensor's bytes (the
/// binary extension's convention). Answers 201 `{"object_ref": ...}`.
pub async fn put(State(app): App, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let store = &app.store;
    let limit = app.max_request_bytes;
    let too_large = || ApiError::from(DecodeError::TooLarge { limit });
    let unreadable = |e: axum::Error| match crate::connections::is_body_timeout(&e) {
        Some(after) => ApiError::from(DecodeError::BodyTimeout(after)),
        None => ApiError::from(invalid(format!("cannot read the request body: {e}"))),
    };
    let mut stream = body.into_data_stream();
    crate::codec::request::check_encoding(headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()))?;
    let header_len = crate::codec::request::header_length(headers.get(v2::HEADER_LENGTH).map(|v| v.as_bytes()))?;
    // The JSON part: the whole body, or the announced header.
    if header_len.unwrap_or(limit) > limit {
        return Err(too_large());
    }
    let mut head = Vec::new();
    let mut rest = Bytes::new();
    while header_len.is_none_or(|n| head.len() < n) {
        let Some(chunk) = stream.next().await else { break };
        let chunk = chunk.map_err(unreadable)?;
        let take = header_len.map_or(chunk.len(), |n| (n - head.len()).min(chunk.len()));
        head.extend_from_slice(&chunk[..take]);
        rest = chunk.slice(take..);
        if head.len() > limit {
            return Err(too_large());
        }
    }
    if let Some(n) = header_len
        && head.len() < n
    {
        return Err(invalid(format!(
            "{} announces a {n}-byte JSON header, but the body has only {} bytes",
            v2::HEADER_LENGTH,
            head.len()
        ))
        .into());
    }
    let object: ObjectTensor = v2::from_slice(&head).map_err(|e| {
        invalid(format!(
            "invalid object JSON (expected {{\"datatype\", \"shape\", \"data\"}}): {e}"
        ))
    })?;
    let meta = tensor::object_meta(&object, "object")?;
    if meta.bytes() > store.limits.max_object_bytes {
        return Err(DecodeError::ObjectTooLarge {
            size: meta.bytes() as u64,
            limit: store.limits.max_object_bytes,
        }
        .into());
    }
    let owner = owner(store, object.parameters.as_ref())?;
    let carried = tensor::carried(object.data.as_ref(), object.parameters.as_ref())
        .map_err(|e| invalid(format!("object: {e}")))?;
    let size = match (carried, header_len) {
        (Carried::Json(data), None) => {
            let bytes = tensor::json_bytes(Some(data), &meta, "object")?;
            return Ok(created(store.put_async(meta, bytes, owner).await?));
        }
        (Carried::Binary(_), None) => {
            return Err(invalid(format!(
                "object: `binary_data_size` is given but the {} header is missing",
                v2::HEADER_LENGTH
            ))
            .into());
        }
        (Carried::Json(_), Some(_)) => {
            return Err(invalid("object: a binary body needs `binary_data_size` in the parameters").into());
        }
        (Carried::Binary(size), Some(_)) => size,
    };
    let need = meta.bytes();
    if size != need as u64 {
        return Err(invalid(format!(
            "object: binary_data_size is {size} bytes, but shape {:?} of {} needs {need} bytes",
            meta.shape, meta.datatype
        ))
        .into());
    }
    // Room first, so nothing is read that cannot be kept.
    let s = Arc::clone(store);
    let (reservation, mut buf) = tokio::task::spawn_blocking(move || {
        s.room_for_one_more()?;
        Ok::<_, StoreError>((s.reserve(need)?, s.allocate(need)?))
    })
    .await
    .unwrap_or_else(|e| Err(StoreError::Internal(format!("reserving room stopped: {e}"))))?;
    let mut filled = 0;
    let mut pending = Some(rest);
    loop {
        let chunk = match pending.take() {
            Some(c) => c,
            None => match stream.next().await {
                Some(c) => c.map_err(unreadable)?,
                None => break,
            },
        };
        if filled + chunk.len() > need {
            return Err(invalid(format!(
                "object: the body has more than the {need} bytes binary_data_size announces"
            ))
            .into());
        }
        buf[filled..filled + chunk.len()].copy_from_slice(&chunk);
        filled += chunk.len();
    }
    if filled < need {
        return Err(invalid(format!(
            "object: the body ends after {filled} bytes of binary data, but binary_data_size announces {need} (truncated body?)"
        ))
        .into());
    }
    Ok(created(store.commit(reservation, meta, buf, owner)))
}

#[derive(Debug, Deserialize)]
pub struct GetQuery {
    timeout_ms: Option<u64>,
}

/// `GET /v2/objects/{ref}[?timeout_ms=]`: blocks until the object is ready, like
/// `ray.get`; JSON, or binary when the client accepts `application/octet-stream`.
pub async fn get(
    State(app): App,
    Path(r): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let r = parse_ref(&r, "object ref")?;
    // A bad query string is refused as JSON, like every other refusal.
    let Query(q) = query.map_err(|e| {
        invalid(format!(
            "{} (timeout_ms is a whole number of milliseconds)",
            e.body_text()
        ))
    })?;
    let lease = app.store.get(r, q.timeout_ms.map(Duration::from_millis)).await?;
    let binary = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/octet-stream"));
    let meta = Arc::clone(&lease.meta);
    let mut answer = ObjectTensor {
        object_ref: Some(r.to_string()),
        datatype: meta.datatype.to_string(),
        shape: meta.shape.iter().map(|&d| d as i64).collect(),
        ..Default::default()
    };
    if binary {
        let mut parameters = Parameters::new();
        parameters.insert("binary_data_size".into(), meta.bytes().into());
        answer.parameters = Some(parameters);
        return Ok(respond::header_then_object(
            v2::to_vec(&answer).expect("serializes"),
            lease,
        ));
    }
    let data = prism_protocol::binary::decode_tensor("object", meta.datatype, lease.bytes())
        .expect("an object's bytes are whole elements of its datatype. This is a bug.");
    drop(lease);
    answer.data = Some(data);
    Ok(respond::json_bytes(
        StatusCode::OK,
        v2::to_vec(&answer).expect("serializes"),
    ))
}

/// `GET /v2/objects/{ref}/meta`: dtype, shape, bytes and state, without blocking.
pub async fn meta(State(app): App, Path(r): Path<String>) -> Result<Json<Value>, ApiError> {
    let r = parse_ref(&r, "object ref")?;
    let info = app.store.info(r)?;
    Ok(Json(serde_json::to_value(info).expect("serializes")))
}

/// `DELETE /v2/objects/{ref}`: 204, or 404 when unknown. Work already using the object
/// keeps its bytes.
pub async fn delete(State(app): App, Path(r): Path<String>) -> Result<StatusCode, ApiError> {
    let r = parse_ref(&r, "object ref")?;
    if app.store.delete(r) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(StoreError::NotFound(r).into())
    }
}

/// Most refs one `POST /v2/wait` may name.
pub const MAX_WAIT_REFS: usize = 100_000;

/// `POST /v2/wait`: `ray.wait` over HTTP. The refs are parsed and checked on a blocking
/// thread: a large list never holds up the async workers.
pub async fn wait(State(app): App, WholeBody(body): WholeBody) -> Result<Json<WaitAnswer>, ApiError> {
    let (w, refs) = tokio::task::spawn_blocking(move || wait_refs(&body))
        .await
        .map_err(|e| ApiError::from(StoreError::Internal(format!("reading the wait request stopped: {e}"))))??;
    let k = w.num_returns.unwrap_or(1);
    if k == 0 || k > refs.len().max(1) {
        return Err(invalid(format!(
            "num_returns: expected 1 to the number of refs ({}), got {k}",
            refs.len()
        ))
        .into());
    }
    let (ready, not_ready) = app
        .store
        .wait(&refs, k, w.timeout_ms.map(Duration::from_millis))
        .await?;
    let names = |v: Vec<ObjectRef>| v.into_iter().map(|r| r.to_string()).collect();
    Ok(Json(WaitAnswer {
        ready: names(ready),
        not_ready: names(not_ready),
    }))
}
