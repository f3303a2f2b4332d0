//! What `describe` and the statistics say, as Triton's gRPC messages.

use prism_protocol::grpc::{self as pb, model_instance_group::Kind, model_metadata_response::TensorMetadata};
use prism_protocol::v2::ModelMetadata;
use tonic::Status;

use crate::describe::{ConfigTensor, ModelConfig, triton_type};
use crate::serving::MODEL_VERSION;
use crate::serving::stats::{Snapshot, Stat};
use crate::shm::RegionStatus;

pub fn metadata(m: ModelMetadata) -> pb::ModelMetadataResponse {
    let tensor = |t: prism_protocol::v2::MetadataTensor| TensorMetadata {
        name: t.name,
        datatype: t.datatype,
        shape: t.shape,
    };
    pb::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform,
        inputs: m.inputs.into_iter().map(tensor).collect(),
        outputs: m.outputs.into_iter().map(tensor).collect(),
    }
}

fn data_type(t: &ConfigTensor) -> i32 {
    pb::DataType::from_str_name(&triton_type(t.datatype)).map_or(pb::DataType::TypeInvalid as i32, |d| d as i32)
}

fn reshape(t: &ConfigTensor) -> Option<pb::ModelTensorReshape> {
    t.reshape.clone().map(|shape| pb::ModelTensorReshape { shape })
}

pub fn config(c: ModelConfig) -> pb::ModelConfig {
    pb::ModelConfig {
        name: c.name,
        platform: String::new(),
        backend: "prism".into(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(pb::model_version_policy::PolicyChoice::Latest(
                pb::model_version_policy::Latest { num_versions: 1 },
            )),
        }),
        max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
        input: c
            .inputs
            .iter()
            .map(|t| pb::ModelInput {
                name: t.name.clone(),
                data_type: data_type(t),
                format: pb::model_input::Format::None as i32,
                dims: t.dims.clone(),
                reshape: reshape(t),
                is_shape_tensor: false,
                allow_ragged_batch: false,
                optional: t.optional,
            })
            .collect(),
        output: c
            .outputs
            .iter()
            .map(|t| pb::ModelOutput {
                name: t.name.clone(),
                data_type: data_type(t),
                dims: t.dims.clone(),
                label_filename: String::new(),
                reshape: reshape(t),
                is_shape_tensor: false,
            })
            .collect(),
        instance_group: c
            .instance_groups
            .into_iter()
            .map(|g| pb::ModelInstanceGroup {
                name: g.name,
                count: i32::try_from(g.count).unwrap_or(i32::MAX),
                gpus: g.gpu.map(|card| card as i32).into_iter().collect(),
                kind: if g.gpu.is_some() { Kind::Gpu } else { Kind::Cpu } as i32,
            })
            .collect(),
        scheduling_choice: Some(pb::model_config::SchedulingChoice::DynamicBatching(
            pb::ModelDynamicBatching {
                preferred_batch_size: Vec::new(),
                max_queue_delay_microseconds: c.max_queue_delay_microseconds,
                preserve_ordering: false,
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
                    default_timeout_microseconds: 0,
                    allow_timeout_override: false,
                    max_queue_size: u32::try_from(c.max_queue_size).unwrap_or(u32::MAX),
                }),
            },
        )),
        parameters: c
            .parameters
            .into_iter()
            .map(|(k, v)| (k.to_owned(), pb::ModelParameter { string_value: v }))
            .collect(),
    }
}

fn duration(s: Stat) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: s.count,
        ns: s.ns,
    })
}

pub fn statistics(name: &str, s: Snapshot) -> pb::ModelStatistics {
    pb::ModelStatistics {
        name: name.to_owned(),
        version: MODEL_VERSION.into(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(Stat::default()),
            cache_miss: duration(Stat::default()),
        }),
        batch_stats: s
            .batches
            .into_iter()
            .map(|(size, b)| pb::InferBatchStatistics {
                batch_size: size as u64,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
        memory_usage: Vec::new(),
    }
}

/// A stream's answer to one request: the response, or its error with the request's id.
pub fn stream_answer(
    r: Result<pb::ModelInferResponse, Status>,
    id: String,
    model_name: String,
) -> pb::ModelStreamInferResponse {
    match r {
        Ok(response) => pb::ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(response),
        },
        Err(status) => pb::ModelStreamInferResponse {
            error_message: status.message().to_owned(),
            infer_response: Some(pb::ModelInferResponse {
                model_name,
                id,
                ..Default::default()
            }),
        },
    }
}

pub fn shm_status(regions: Vec<RegionStatus>) -> pb::SystemSharedMemoryStatusResponse {
    pb::SystemSharedMemoryStatusResponse {
        regions: regions
            .into_iter()
            .map(|r| {
                (
                    r.name.clone(),
                    pb::system_shared_memory_status_response::RegionStatus {
                        name: r.name,
                        key: r.key,
                        offset: r.offset,
                        byte_size: r.byte_size,
                    },
                )
            })
            .collect(),
    }
}
