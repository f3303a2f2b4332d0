//! Triton's model repository extension: the index, and a deployment's load and unload.

use axum::Json;
use axum::extract::State;
use prism_protocol::v2::RepositoryModel;
use serde_json::{Value, json};

use super::{ApiError, App, ModelParam, WholeBody, deployment, optional_json};
use crate::describe;

#[derive(serde::Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

pub async fn index(State(app): App, WholeBody(body): WholeBody) -> Result<Json<Vec<RepositoryModel>>, ApiError> {
    let request: IndexRequest = optional_json(&body, "repository index request")?;
    Ok(Json(describe::repository_index(&app, request.ready)))
}

/// What Triton's load request may carry.
#[derive(serde::Deserialize, Default)]
struct LoadRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// `POST /v2/repository/models/{m}/load`: see [`describe::load`].
pub async fn load(State(app): App, path: ModelParam, WholeBody(body): WholeBody) -> Result<Json<Value>, ApiError> {
    let d = deployment(&app, path)?;
    let request: LoadRequest = optional_json(&body, "load request")?;
    describe::load(&d, request.parameters.keys().map(String::as_str)).await?;
    Ok(Json(json!({})))
}

/// `POST /v2/repository/models/{m}/unload`: stops taking requests for the model, answers
/// those it holds, and stops its replicas (their slots stay reserved for a load).
pub async fn unload(State(app): App, path: ModelParam) -> Result<Json<Value>, ApiError> {
    deployment(&app, path)?.unload().await;
    Ok(Json(json!({})))
}
