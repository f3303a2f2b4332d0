//! Triton's system shared-memory extension over REST: `/v2/systemsharedmemory/...`
//! register, unregister and status (see [`crate::shm`]).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ApiError, App, WholeBody, optional_json};
use crate::codec::invalid;
use crate::shm::RegionStatus;

#[derive(serde::Deserialize)]
struct Register {
    key: String,
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

/// `GET /v2/systemsharedmemory[/region/{name}]/status`.
pub async fn status_all(State(app): App) -> Result<Json<Vec<RegionStatus>>, ApiError> {
    Ok(Json(app.shm.status("")?))
}

pub async fn status(State(app): App, Path(name): Path<String>) -> Result<Json<Vec<RegionStatus>>, ApiError> {
    Ok(Json(app.shm.status(&name)?))
}

/// `POST /v2/systemsharedmemory/region/{name}/register` with `{"key", "offset",
/// "byte_size"}`.
pub async fn register(
    State(app): App,
    Path(name): Path<String>,
    WholeBody(body): WholeBody,
) -> Result<Json<Value>, ApiError> {
    let r: Register = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "invalid shared memory register request (expected {{\"key\": \"/name\", \"offset\": 0, \"byte_size\": n}}): {e}"
        ))
    })?;
    app.shm.register(&name, &r.key, r.offset, r.byte_size)?;
    Ok(Json(json!({})))
}

/// `POST /v2/systemsharedmemory[/region/{name}]/unregister`.
pub async fn unregister_all(State(app): App, WholeBody(body): WholeBody) -> Result<Json<Value>, ApiError> {
    let _: serde_json::Map<String, Value> = optional_json(&body, "unregister request")?;
    app.shm.unregister("")?;
    Ok(Json(json!({})))
}

pub async fn unregister(State(app): App, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    app.shm.unregister(&name)?;
    Ok(Json(json!({})))
}
