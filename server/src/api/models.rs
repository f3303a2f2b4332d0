//! A model's metadata and readiness (deployments and pipelines), and what Triton's
//! clients read of a deployment: its configuration and its statistics.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use prism_protocol::v2::ModelMetadata;
use serde_json::{Value, json};

use super::{ApiError, App, ModelParam, deployment, served};
use crate::describe::{self, ConfigTensor, triton_type};
use crate::serving::MODEL_VERSION;

pub async fn metadata(State(app): App, path: ModelParam) -> Result<Json<ModelMetadata>, ApiError> {
    Ok(Json(describe::model_metadata(&served(&app, path)?)))
}

pub async fn ready(State(app): App, path: ModelParam) -> Result<StatusCode, ApiError> {
    Ok(if served(&app, path)?.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}

/// The model's configuration in Triton's JSON form.
pub async fn config(State(app): App, path: ModelParam) -> Result<Json<Value>, ApiError> {
    let d = deployment(&app, path)?;
    let c = describe::model_config(&d);
    let tensor = |t: &ConfigTensor, input: bool| {
        let mut v = json!({
            "name": t.name,
            "data_type": triton_type(t.datatype),
            "dims": t.dims,
            "is_shape_tensor": false,
        });
        if input {
            v["format"] = json!("FORMAT_NONE");
            v["allow_ragged_batch"] = json!(false);
            v["optional"] = json!(t.optional);
        } else {
            v["label_filename"] = json!("");
        }
        if let Some(shape) = &t.reshape {
            v["reshape"] = json!({ "shape": shape });
        }
        v
    };
    Ok(Json(json!({
        "name": c.name,
        "platform": "",
        "backend": "prism",
        "version_policy": { "latest": { "num_versions": 1 } },
        "max_batch_size": c.max_batch_size,
        "input": c.inputs.iter().map(|t| tensor(t, true)).collect::<Vec<_>>(),
        "output": c.outputs.iter().map(|t| tensor(t, false)).collect::<Vec<_>>(),
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": c.max_queue_delay_microseconds,
            "preserve_ordering": false,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": false,
                "max_queue_size": c.max_queue_size,
            },
        },
        "instance_group": c.instance_groups.iter().map(|g| match g.gpu {
            Some(card) => json!({ "name": g.name, "kind": "KIND_GPU", "count": g.count, "gpus": [card] }),
            None => json!({ "name": g.name, "kind": "KIND_CPU", "count": g.count, "gpus": [] }),
        }).collect::<Vec<_>>(),
        "parameters": c.parameters.iter().map(|(k, v)| (k.to_string(), json!({ "string_value": v }))).collect::<serde_json::Map<_, _>>(),
    })))
}

pub async fn stats(State(app): App, path: ModelParam) -> Result<Json<Value>, ApiError> {
    let d = deployment(&app, path)?;
    Ok(Json(
        json!({ "model_stats": [d.stats.to_json(d.name(), MODEL_VERSION)] }),
    ))
}

pub async fn all_stats(State(app): App) -> Json<Value> {
    let stats: Vec<Value> = app
        .deployments
        .iter()
        .map(|d| d.stats.to_json(d.name(), MODEL_VERSION))
        .collect();
    Json(json!({ "model_stats": stats }))
}
