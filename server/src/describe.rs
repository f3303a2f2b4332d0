//! What the server says about itself and its models, whichever protocol asks: server
//! metadata, a model's metadata and Triton-style configuration, the repository index,
//! and a repository load. REST (`api`) writes these as JSON, gRPC (`grpc`) as Triton's
//! messages; what they say is decided once, here.

use prism_protocol::DType;
use prism_protocol::v2::{MetadataTensor, ModelMetadata, RepositoryModel, ServerMetadata};

use crate::codec::{DecodeError, invalid};
use crate::error::ApiError;
use crate::resources::ReplicaPlacement;
use crate::serving::{Deployment, MODEL_VERSION, TensorSig};
use crate::state::{AppState, Served};

/// The server's name, version and the extensions it serves.
pub fn server_metadata(app: &AppState) -> ServerMetadata {
    let mut extensions: Vec<String> = [
        "binary_tensor_data",
        "statistics",
        "model_configuration",
        "model_repository",
        "prism_objects",
        "prism_tasks",
        "prism_pipelines",
    ]
    .map(String::from)
    .into();
    if app.shm.is_enabled() {
        extensions.push("system_shared_memory".into());
    }
    ServerMetadata {
        name: "prism".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions,
    }
}

fn metadata_tensor(t: &TensorSig) -> MetadataTensor {
    MetadataTensor {
        name: t.name.clone(),
        datatype: t.datatype.to_string(),
        shape: t.shape.clone(),
    }
}

/// A deployment's or a pipeline's name, version, platform and tensors.
pub fn model_metadata(served: &Served) -> ModelMetadata {
    match served {
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
    }
}

/// A deployment as Triton's model configuration describes a model: what `perf_analyzer`
/// and `tritonclient` read to learn the batch dimension and the batcher.
pub struct ModelConfig {
    pub name: String,
    pub max_batch_size: usize,
    pub inputs: Vec<ConfigTensor>,
    pub outputs: Vec<ConfigTensor>,
    pub max_queue_delay_microseconds: u64,
    pub max_queue_size: usize,
    pub instance_groups: Vec<InstanceGroup>,
    /// Prism's own settings, as Triton's string parameters.
    pub parameters: Vec<(&'static str, String)>,
}

/// A tensor in Triton's configuration: `dims` without the batch dimension.
pub struct ConfigTensor {
    pub name: String,
    pub datatype: DType,
    pub dims: Vec<i64>,
    /// `Some(shape)`: Triton's `reshape` (a tensor of one value per row is `dims: [1]`
    /// reshaped to `[]`).
    pub reshape: Option<Vec<i64>>,
    pub optional: bool,
}

/// Where a group of replicas runs: `gpu` (a CUDA ordinal) or the CPU.
pub struct InstanceGroup {
    pub name: String,
    pub gpu: Option<usize>,
    pub count: usize,
}

/// Triton's type names (`TYPE_FP32`, `TYPE_STRING` for BYTES).
pub fn triton_type(d: DType) -> String {
    match d {
        DType::Bytes => "TYPE_STRING".into(),
        DType::Bool => "TYPE_BOOL".into(),
        other => format!("TYPE_{}", other.v2_name()),
    }
}

fn config_tensor(t: &TensorSig) -> ConfigTensor {
    let (dims, reshape) = match t.shape.as_slice() {
        [_] => (vec![1], Some(Vec::new())),
        [_, rest @ ..] => (rest.to_vec(), None),
        [] => (Vec::new(), None),
    };
    ConfigTensor {
        name: t.name.clone(),
        datatype: t.datatype,
        dims,
        reshape,
        optional: t.optional,
    }
}

/// The configuration of deployment `d`.
pub fn model_config(d: &Deployment) -> ModelConfig {
    let s = &d.spec;
    ModelConfig {
        name: s.name.clone(),
        max_batch_size: s.batching.max_batch_size,
        inputs: d.signature.inputs.iter().map(config_tensor).collect(),
        outputs: d.signature.outputs.iter().map(config_tensor).collect(),
        max_queue_delay_microseconds: s.batching.batch_wait_timeout.as_micros() as u64,
        max_queue_size: s.batching.max_queue_size,
        instance_groups: instance_groups(d),
        parameters: vec![
            ("threads", s.actor.threads.to_string()),
            ("precision", s.precision.to_string()),
        ],
    }
}

/// Triton's instance groups from where the replicas run: one GPU group per card
/// computing replicas, one CPU group for the rest. Cards are numbered by CUDA ordinal, as
/// Triton numbers them (`GET /v2/status` shows NVML's indices).
fn instance_groups(d: &Deployment) -> Vec<InstanceGroup> {
    let mut per_card: std::collections::BTreeMap<usize, usize> = Default::default();
    let mut cpu = 0;
    for r in d.replicas().iter().filter(|r| r.placement.runs()) {
        match &r.placement {
            ReplicaPlacement::Gpu { cuda: Some(card), .. } => *per_card.entry(*card).or_default() += 1,
            _ => cpu += 1,
        }
    }
    let mut groups: Vec<InstanceGroup> = per_card
        .into_iter()
        .map(|(card, count)| InstanceGroup {
            name: format!("{}_gpu{card}", d.name()),
            gpu: Some(card),
            count,
        })
        .collect();
    if cpu > 0 {
        groups.push(InstanceGroup {
            name: format!("{}_0", d.name()),
            gpu: None,
            count: cpu,
        });
    }
    groups
}

/// Triton's repository index: every deployment and pipeline with its state (`ready`:
/// only those ready).
pub fn repository_index(app: &AppState, ready_only: bool) -> Vec<RepositoryModel> {
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
    deployments
        .chain(pipelines)
        .filter(|(_, ready, _)| !ready_only || *ready)
        .map(|(name, ready, reason)| RepositoryModel {
            name: name.to_owned(),
            version: Some(MODEL_VERSION.into()),
            state: Some(if ready { "READY" } else { "UNAVAILABLE" }.into()),
            reason: Some(reason.into()),
        })
        .collect()
}

/// Refuses the load parameters Prism does not take: a new `config` or model files are
/// Triton's way of changing a model through the API; a Prism deployment is what its file
/// declares.
fn check_load_parameters<'a>(mut keys: impl Iterator<Item = &'a str>) -> Result<(), DecodeError> {
    match keys.find(|k| *k == "config" || k.starts_with("file:")) {
        Some(key) => Err(invalid(format!(
            "load parameter `{key}` is not supported: a model loads as declared at start-up (its weights file is read again)"
        ))),
        None => Ok(()),
    }
}

/// A repository load: starts the model again as declared at start-up, re-reading its
/// weights file; a loaded model is replaced without dropping a request (the old replicas
/// finish what they hold), except on GPUs, where it answers 503 while its replicas
/// restart (see [`Deployment::load`]).
pub async fn load<'a>(
    d: &std::sync::Arc<Deployment>,
    parameter_keys: impl Iterator<Item = &'a str>,
) -> Result<(), ApiError> {
    check_load_parameters(parameter_keys)?;
    d.load().await.map_err(|e| ApiError::LoadFailed {
        reason: e.to_string(),
        serving: d.is_ready(),
    })
}
