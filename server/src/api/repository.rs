//! Triton's model repository extension: the index, and a deployment's load and unload.

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use prism_protocol::v2::RepositoryModel;
use serde_json::{Value, json};

use super::{ApiError, App, ModelParam, deployment, optional_json};
use crate::codec::invalid;
use crate::serving::MODEL_VERSION;

#[derive(serde::Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

pub async fn index(State(app): App, body: Bytes) -> Result<Json<Vec<RepositoryModel>>, ApiError> {
    let request: IndexRequest = optional_json(&body, "repository index request")?;
    let deployments = app.deployments.iter().map(|d| {
        let reason = if !d.is_loaded() {
            "unloaded"
        } else if d.is_ready() {
            ""
        } else {
            "no replica is running (see GET /v2/status)"
        };
        (d.name(), d.is_ready(), reason)
    });
    let pipelines = app.pipelines.iter().map(|p| {
        let ready = p.is_ready();
        (p.name(), ready, if ready { "" } else { "a model it runs is not ready" })
    });
    let models = deployments
        .chain(pipelines)
        .filter(|(_, ready, _)| !request.ready || *ready)
        .map(|(name, ready, reason)| RepositoryModel {
            name: name.to_owned(),
            version: Some(MODEL_VERSION.into()),
            state: Some(if ready { "READY" } else { "UNAVAILABLE" }.into()),
            reason: Some(reason.into()),
        })
        .collect();
    Ok(Json(models))
}

/// What Triton's load request may carry. A new `config` or model files are Triton's way of
/// changing a model through the API; a Prism deployment is what its file declares.
#[derive(serde::Deserialize, Default)]
struct LoadRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// `POST /v2/repository/models/{m}/load`: starts the model again as declared at start-up,
/// re-reading its weights file; a loaded model is replaced without dropping a request (the
/// old replicas finish what they hold), except on GPUs, where it answers 503 while its
/// replicas restart (see [`crate::serving::Deployment::load`]).
pub async fn load(State(app): App, path: ModelParam, body: Bytes) -> Result<Json<Value>, ApiError> {
    let d = deployment(&app, path)?;
    let request: LoadRequest = optional_json(&body, "load request")?;
    if let Some(key) = request
        .parameters
        .keys()
        .find(|k| *k == "config" || k.starts_with("file:"))
    {
        return Err(invalid(format!(
            "load parameter `{key}` is not supported: a model loads as declared at start-up (its weights file is read again)"
        ))
        .into());
    }
    d.load().await.map_err(|e| ApiError::LoadFailed {
        reason: e.to_string(),
        serving: d.is_ready(),
    })?;
    Ok(Json(json!({})))
}

/// `POST /v2/repository/models/{m}/unload`: stops taking requests for the model, answers
/// those it holds, and stops its replicas (their slots stay reserved for a load).
pub async fn unload(State(app): App, path: ModelParam) -> Result<Json<Value>, ApiError> {
    deployment(&app, path)?.unload().await;
    Ok(Json(json!({})))
}
