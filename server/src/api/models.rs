//! A model's metadata and readiness (deployments and pipelines), and what Triton's
//! clients read of a deployment: its configuration and its statistics.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use prism_protocol::v2::{MetadataTensor, ModelMetadata};
use serde_json::{Value, json};

use super::{ApiError, App, ModelParam, deployment, served};
use crate::resources::ReplicaPlacement;
use crate::serving::{Deployment, MODEL_VERSION, TensorSig};
use crate::state::Served;

fn metadata_tensor(t: &TensorSig) -> MetadataTensor {
    MetadataTensor {
        name: t.name.clone(),
        datatype: t.datatype.to_string(),
        shape: t.shape.clone(),
    }
}

pub async fn metadata(State(app): App, path: ModelParam) -> Result<Json<ModelMetadata>, ApiError> {
    Ok(Json(match served(&app, path)? {
        Served::Pipeline(p) => ModelMetadata {
            name: p.name().to_owned(),
            versions: vec![MODEL_VERSION.into()],
            platform: "prism_pipeline".into(),
            inputs: p
                .spec
                .inputs
                .iter()
                .map(|t| MetadataTensor {
                    name: t.name.clone(),
                    datatype: t.datatype.to_string(),
                    shape: t.shape.clone(),
                })
                .collect(),
            outputs: vec![MetadataTensor {
                name: p.spec.output_name.clone(),
                datatype: p.output_datatype().to_string(),
                shape: p.output_shape().to_vec(),
            }],
        },
        Served::Deployment(d) => ModelMetadata {
            name: d.name().to_owned(),
            versions: vec![MODEL_VERSION.into()],
            platform: d.platform.into(),
            inputs: d.signature.inputs.iter().map(metadata_tensor).collect(),
            outputs: d.signature.outputs.iter().map(metadata_tensor).collect(),
        },
    }))
}

pub async fn ready(State(app): App, path: ModelParam) -> Result<StatusCode, ApiError> {
    Ok(if served(&app, path)?.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}

/// Triton's type names (`TYPE_FP32`, `TYPE_STRING` for BYTES).
fn triton_type(d: prism_protocol::DType) -> String {
    match d {
        prism_protocol::DType::Bytes => "TYPE_STRING".into(),
        prism_protocol::DType::Bool => "TYPE_BOOL".into(),
        other => format!("TYPE_{}", other.v2_name()),
    }
}

/// The model's configuration in Triton's JSON form: what `perf_analyzer` and
/// `tritonclient` read to learn the batch dimension and the batcher.
pub async fn config(State(app): App, path: ModelParam) -> Result<Json<Value>, ApiError> {
    let d = deployment(&app, path)?;
    let s = &d.spec;
    Ok(Json(json!({
        "name": s.name,
        "platform": "",
        "backend": "prism",
        "version_policy": { "latest": { "num_versions": 1 } },
        "max_batch_size": s.batching.max_batch_size,
        "input": d.signature.inputs.iter().map(|t| {
            let mut v = json!({
                "name": t.name,
                "data_type": triton_type(t.datatype),
                "format": "FORMAT_NONE",
                "is_shape_tensor": false,
                "allow_ragged_batch": false,
                "optional": t.optional,
            });
            dims(&mut v, &t.shape);
            v
        }).collect::<Vec<_>>(),
        "output": d.signature.outputs.iter().map(|t| {
            let mut v = json!({
                "name": t.name,
                "data_type": triton_type(t.datatype),
                "label_filename": "",
                "is_shape_tensor": false,
            });
            dims(&mut v, &t.shape);
            v
        }).collect::<Vec<_>>(),
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": s.batching.batch_wait_timeout.as_micros() as u64,
            "preserve_ordering": false,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": false,
                "max_queue_size": s.batching.max_queue_size,
            },
        },
        "instance_group": instance_groups(&d),
        "parameters": {
            "threads": { "string_value": s.actor.threads.to_string() },
            "precision": { "string_value": s.precision.to_string() },
        },
    })))
}

/// Triton's `dims` of a tensor whose first dimension is the batch: the rest, or, for a
/// tensor of one value per row (`[-1]`), `[1]` reshaped away, as Triton writes it.
fn dims(v: &mut Value, shape: &[i64]) {
    match shape {
        [_] => {
            v["dims"] = json!([1]);
            v["reshape"] = json!({ "shape": [] });
        }
        [_, rest @ ..] => v["dims"] = json!(rest),
        [] => v["dims"] = json!([]),
    }
}

/// Triton's instance groups from where the replicas run: one `KIND_GPU` group per card
/// computing replicas, one `KIND_CPU` group for the rest. Cards are numbered by CUDA
/// ordinal, as Triton numbers them (`GET /v2/status` shows NVML's indices).
fn instance_groups(d: &Deployment) -> Value {
    let mut per_card: std::collections::BTreeMap<usize, usize> = Default::default();
    let mut cpu = 0;
    for r in d.replicas().iter().filter(|r| r.placement.runs()) {
        match &r.placement {
            ReplicaPlacement::Gpu { cuda: Some(card), .. } => *per_card.entry(*card).or_default() += 1,
            _ => cpu += 1,
        }
    }
    let mut groups: Vec<Value> = per_card
        .into_iter()
        .map(|(card, count)| {
            json!({ "name": format!("{}_gpu{card}", d.name()), "kind": "KIND_GPU", "count": count, "gpus": [card] })
        })
        .collect();
    if cpu > 0 {
        groups.push(json!({ "name": format!("{}_0", d.name()), "kind": "KIND_CPU", "count": cpu, "gpus": [] }));
    }
    Value::Array(groups)
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
