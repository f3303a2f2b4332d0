//! The Ray Core half of the REST API: objects (`/v2/objects`), `POST /v2/wait` and
//! `POST /v2/tasks/{op}`.
//!
//! A binary put streams its body straight into the object's memory, and a binary get
//! streams the object's bytes out of the store: a large object is never copied into a
//! request-sized buffer on the way.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use ndarray::{ArrayD, IxDyn};
use prism_kernels::TaskOp;
use prism_protocol::DType;
use prism_protocol::v2::{self, Parameters, TensorData};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::codec;
use crate::error::ApiError;
use crate::http::AppState;
use crate::store::{Meta, ObjectRef, Owner, Store};
use crate::tasks::{Arg, RawOptions};

type App = State<Arc<AppState>>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// A tensor as a put or a task argument writes it.
#[derive(Debug, Deserialize)]
pub struct JsonTensor {
    pub datatype: String,
    pub shape: Vec<i64>,
    #[serde(default)]
    pub data: Option<TensorData>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// A tensor's type and shape, checked; `what` names it in messages.
pub fn tensor_meta(datatype: &str, shape: &[i64], what: &str) -> Result<Meta, ApiError> {
    let datatype: DType = datatype.parse().map_err(|e| bad(format!("{what}: {e}")))?;
    if !datatype.is_numeric() {
        return Err(bad(format!(
            "{what}: datatype BYTES cannot be stored; send a numeric datatype"
        )));
    }
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("{what}: shape {shape:?} has a negative dimension"))))
        .collect::<Result<Vec<_>, _>>()?;
    let elements = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if elements
        .and_then(|n| n.checked_mul(datatype.size().expect("numeric")))
        .is_none()
    {
        return Err(bad(format!("{what}: shape {shape:?} is too large")));
    }
    Ok(Meta { datatype, shape: dims })
}

/// The little-endian bytes of JSON `data`, checked against `meta`.
pub fn tensor_bytes(data: Option<&TensorData>, meta: &Meta, what: &str) -> Result<Vec<u8>, ApiError> {
    let Some(data) = data else {
        return Err(bad(format!("{what}: has no `data`")));
    };
    if data.len() != meta.elements() {
        return Err(bad(format!(
            "{what}: shape {:?} needs {} values, got {}",
            meta.shape,
            meta.elements(),
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(meta.bytes());
    prism_protocol::binary::encode_tensor(what, meta.datatype, data, &mut out)
        .map_err(|e| bad(format!("{what}: {e}")))?;
    Ok(out)
}

impl JsonTensor {
    pub fn meta(&self, what: &str) -> Result<Meta, ApiError> {
        tensor_meta(&self.datatype, &self.shape, what)
    }

    pub fn bytes(&self, meta: &Meta, what: &str) -> Result<Vec<u8>, ApiError> {
        tensor_bytes(self.data.as_ref(), meta, what)
    }

    /// The tensor as `f32`, for a task (converted as its datatype's bytes would be).
    pub fn to_array(&self, what: &str) -> Result<ArrayD<f32>, ApiError> {
        let meta = self.meta(what)?;
        let bytes = self.bytes(&meta, what)?;
        let mut values = Vec::with_capacity(meta.elements());
        meta.datatype.decode_le(&bytes, &mut values);
        Ok(ArrayD::from_shape_vec(IxDyn(&meta.shape), values).expect("length checked against the shape"))
    }
}

/// `ttl_s` from a put's parameters: the client's time-to-live, or the store's default.
fn owner(store: &Store, parameters: Option<&Parameters>) -> Result<Owner, ApiError> {
    let ttl = match parameters.and_then(|p| p.get("ttl_s")) {
        None => store.default_ttl,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("expected a number of seconds, got {v}"))
            .and_then(prism_config::ttl)
            .map_err(|e| bad(format!("parameter `ttl_s`: {e}")))?,
    };
    Ok(Owner::Client { ttl })
}

pub fn parse_ref(s: &str, what: &str) -> Result<ObjectRef, ApiError> {
    s.parse().map_err(|e| bad(format!("{what}: {e}")))
}

/// `POST /v2/objects`: a JSON tensor, or a JSON header and the tensor's bytes (the
/// binary extension's convention). Answers 201 `{"object_ref": ...}`.
pub async fn put(State(app): App, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let store = &app.store;
    let limit = app.max_request_bytes;
    let mut stream = body.into_data_stream();
    codec::check_encoding(&headers)?;
    let header_len = codec::header_length(&headers)?;
    // The JSON part: the whole body, or the announced header.
    let json_limit = header_len.unwrap_or(limit);
    if json_limit > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut head = Vec::new();
    let mut rest = Bytes::new();
    while header_len.is_none_or(|n| head.len() < n) {
        let Some(chunk) = stream.next().await else { break };
        let chunk = chunk.map_err(|e| bad(format!("cannot read the request body: {e}")))?;
        let take = header_len.map_or(chunk.len(), |n| (n - head.len()).min(chunk.len()));
        head.extend_from_slice(&chunk[..take]);
        rest = chunk.slice(take..);
        if head.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    if let Some(n) = header_len
        && head.len() < n
    {
        return Err(bad(format!(
            "{} announces a {n}-byte JSON header, but the body has only {} bytes",
            v2::HEADER_LENGTH,
            head.len()
        )));
    }
    let tensor: JsonTensor = v2::from_slice(&head).map_err(|e| {
        bad(format!(
            "invalid object JSON (expected {{\"datatype\", \"shape\", \"data\"}}): {e}"
        ))
    })?;
    let meta = tensor.meta("object")?;
    let owner = owner(store, tensor.parameters.as_ref())?;
    let size = v2::binary_data_size(tensor.parameters.as_ref());

    let object_ref = match (header_len, size) {
        (None, Some(_)) => {
            return Err(bad(format!(
                "object: `binary_data_size` is given but the {} header is missing",
                v2::HEADER_LENGTH
            )));
        }
        (Some(_), None) => {
            return Err(bad("object: a binary body needs `binary_data_size` in the parameters"));
        }
        (None, None) => {
            let bytes = tensor.bytes(&meta, "object")?;
            let store = Arc::clone(store);
            tokio::task::spawn_blocking(move || store.put(meta, &bytes, owner))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??
        }
        (Some(_), Some(size)) => {
            if tensor.data.is_some() {
                return Err(bad("object: has both `data` and `binary_data_size`; send one"));
            }
            let need = meta.bytes();
            if size != need as u64 {
                return Err(bad(format!(
                    "object: binary_data_size is {size} bytes, but shape {:?} of {} needs {need} bytes",
                    meta.shape, meta.datatype
                )));
            }
            // Room first, so nothing is read that cannot be kept.
            let s = Arc::clone(store);
            let (reservation, mut buf) = tokio::task::spawn_blocking(move || {
                let r = s.reserve(need)?;
                let b = s.allocate(need)?;
                Ok::<_, crate::store::StoreError>((r, b))
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
            let mut filled = 0;
            let mut pending = Some(rest);
            loop {
                let chunk = match pending.take() {
                    Some(c) => c,
                    None => match stream.next().await {
                        Some(c) => c.map_err(|e| bad(format!("cannot read the request body: {e}")))?,
                        None => break,
                    },
                };
                if filled + chunk.len() > need {
                    return Err(bad(format!(
                        "object: the body has more than the {need} bytes binary_data_size announces"
                    )));
                }
                buf[filled..filled + chunk.len()].copy_from_slice(&chunk);
                filled += chunk.len();
            }
            if filled < need {
                return Err(bad(format!(
                    "object: the body ends after {filled} bytes of binary data, but binary_data_size announces {need} (truncated body?)"
                )));
            }
            store.commit(reservation, meta, buf, owner)
        }
    };
    Ok((StatusCode::CREATED, Json(json!({ "object_ref": object_ref }))).into_response())
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
    Query(q): Query<GetQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let r = parse_ref(&r, "object ref")?;
    let lease = app.store.get(r, q.timeout_ms.map(Duration::from_millis)).await?;
    let binary = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/octet-stream"));
    let meta = Arc::clone(&lease.meta);
    if binary {
        let head = v2::to_vec(&json!({
            "object_ref": r,
            "datatype": meta.datatype,
            "shape": meta.shape,
            "parameters": { "binary_data_size": meta.bytes() },
        }))
        .expect("serializes");
        return Ok(crate::http::header_then_object(head, lease));
    }
    let data = prism_protocol::binary::decode_tensor("object", meta.datatype, lease.bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    drop(lease);
    /// Serialized straight from the values: no JSON tree per element.
    #[derive(serde::Serialize)]
    struct Object<'a> {
        object_ref: ObjectRef,
        datatype: DType,
        shape: &'a [usize],
        data: TensorData,
    }
    let body = v2::to_vec(&Object {
        object_ref: r,
        datatype: meta.datatype,
        shape: &meta.shape,
        data,
    })
    .expect("serializes");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
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
        Err(crate::store::StoreError::NotFound(r).into())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    object_refs: Vec<String>,
    num_returns: Option<usize>,
    timeout_ms: Option<u64>,
}

/// `POST /v2/wait`: `ray.wait` over HTTP.
pub async fn wait(State(app): App, body: Bytes) -> Result<Json<Value>, ApiError> {
    let w: WaitRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "invalid wait request (expected {{\"object_refs\": [...], \"num_returns\": k, \"timeout_ms\": t}}): {e}"
        ))
    })?;
    let mut refs = Vec::with_capacity(w.object_refs.len());
    for (i, s) in w.object_refs.iter().enumerate() {
        let r = parse_ref(s, &format!("object_refs[{i}]"))?;
        if refs.contains(&r) {
            return Err(bad(format!(
                "object_refs[{i}]: {r} is listed twice; refs must be unique"
            )));
        }
        refs.push(r);
    }
    let k = w.num_returns.unwrap_or(1);
    if k == 0 || k > refs.len().max(1) {
        return Err(bad(format!(
            "num_returns: expected 1 to the number of refs ({}), got {k}",
            refs.len()
        )));
    }
    let (ready, not_ready) = app
        .store
        .wait(&refs, k, w.timeout_ms.map(Duration::from_millis))
        .await?;
    Ok(Json(json!({ "ready": ready, "not_ready": not_ready })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    args: Vec<Value>,
    #[serde(default)]
    options: Option<Value>,
}

/// `POST /v2/tasks/{op}`: starts a task; answers 202 `{"object_ref": ...}` at once.
pub async fn task(State(app): App, Path(op): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let op: TaskOp = op.parse().map_err(|e: String| ApiError::BadRequest(e))?;
    let request: TaskRequest = v2::from_slice(&body).map_err(|e| {
        bad(format!(
            "invalid task request (expected {{\"args\": [...], \"options\": {{...}}}}): {e}"
        ))
    })?;
    let mut args = Vec::with_capacity(request.args.len());
    for (i, a) in request.args.into_iter().enumerate() {
        let what = format!("args[{i}]");
        if let Some(r) = a.get("object_ref") {
            let s = r
                .as_str()
                .ok_or_else(|| bad(format!("{what}.object_ref: expected a string, got {r}")))?;
            args.push(Arg::Ref(parse_ref(s, &what)?));
        } else {
            let t: JsonTensor = serde_json::from_value(a).map_err(|e| {
                bad(format!(
                    "{what}: expected {{\"object_ref\": ...}} or {{\"shape\", \"datatype\", \"data\"}}: {e}"
                ))
            })?;
            args.push(Arg::Inline(t.to_array(&what)?));
        }
    }
    let raw: RawOptions = match request.options {
        None => RawOptions::default(),
        Some(o) => serde_json::from_value(o).map_err(|e| bad(format!("options: {e}")))?,
    };
    let options = raw.validate().map_err(ApiError::BadRequest)?;
    let object_ref = app.tasks.submit(op, args, options)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "object_ref": object_ref }))).into_response())
}
