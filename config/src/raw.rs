//! The deployment file exactly as written: serde types, every key optional where the
//! file may leave it out, unknown keys refused. [`crate::Config::parse`] turns these into
//! the validated types once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prism_kernels::LayerSpec;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub object_store: ObjectStore,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    #[serde(default)]
    pub pipelines: Vec<Pipeline>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pipeline {
    pub name: String,
    pub inputs: Option<Vec<Tensor>>,
    pub output: Option<PipelineOutput>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineOutput {
    pub name: Option<String>,
    pub step: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Step {
    pub name: String,
    pub model: Option<String>,
    pub op: Option<String>,
    #[serde(default)]
    pub inputs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ObjectStore {
    pub object_store_memory: Option<u64>,
    pub spill_dir: Option<PathBuf>,
    pub default_ttl_s: Option<f64>,
    pub max_spill_bytes: Option<u64>,
    pub max_objects: Option<i64>,
    pub max_object_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Server {
    pub http_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub allow_shared_memory: Option<bool>,
    pub max_request_bytes: Option<u64>,
    pub shutdown_timeout_s: Option<f64>,
    pub max_connections: Option<i64>,
    pub header_read_timeout_s: Option<f64>,
    pub idle_timeout_s: Option<f64>,
    pub body_read_timeout_s: Option<f64>,
    pub metrics_interval_s: Option<f64>,
    pub api_token: Option<String>,
    pub admin_token: Option<String>,
    #[serde(default)]
    pub resources: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deployment {
    pub name: String,
    pub num_replicas: Option<i64>,
    pub fallback: Option<String>,
    pub model: Model,
    #[serde(default)]
    pub actor: Actor,
    #[serde(default)]
    pub batching: Batching,
    pub fault_injection: Option<FaultInjection>,
    pub max_retries: Option<i64>,
    pub retry_exceptions: Option<Vec<String>>,
    pub max_restarts: Option<i64>,
    pub restart_window_s: Option<f64>,
    pub precision: Option<String>,
    pub allow_non_finite: Option<bool>,
    pub warmup: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Model {
    pub builtin: Option<String>,
    pub weights: Option<PathBuf>,
    pub layers: Option<Vec<LayerSpec>>,
    pub inputs: Option<Vec<Tensor>>,
    pub outputs: Option<Vec<Tensor>>,
    pub huggingface: Option<PathBuf>,
    pub pooling: Option<String>,
    pub normalize: Option<bool>,
    pub max_seq_length: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Actor {
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    pub threads: Option<i64>,
    #[serde(default)]
    pub resources: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Batching {
    pub max_batch_size: Option<i64>,
    pub max_batch_tokens: Option<i64>,
    pub batch_wait_timeout_ms: Option<f64>,
    pub max_queue_size: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultInjection {
    pub error_rate: Option<f64>,
    pub delay_ms: Option<f64>,
    pub delay_rate: Option<f64>,
    pub break_rate: Option<f64>,
}
