//! V2 over gRPC: the messages of Triton's `grpc_service.proto` (package `inference`),
//! and tonic's client and server for `GRPCInferenceService`, generated at build time
//! from `proto/`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("inference");

pub use grpc_inference_service_client::GrpcInferenceServiceClient;
pub use grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// HTTP/2 flow control for tensors, the same at both ends (the server's listener and
/// `prism bench`'s connections), where hyper's defaults are 1 MiB windows and 16 KiB
/// frames: a peer may send 8 MiB of one call, 32 MiB over all of a connection's calls,
/// before the other has read it, in frames of up to 1 MiB. With the defaults a 4 MiB
/// call waited on four window updates and was cut into 256 frames.
pub mod flow {
    pub const STREAM_WINDOW: u32 = 8 << 20;
    pub const CONNECTION_WINDOW: u32 = 32 << 20;
    pub const MAX_FRAME: u32 = 1 << 20;
}

/// V2 JSON parameters as gRPC's: integers as `int64_param` (`uint64_param` beyond it), as
/// Triton writes them; other numbers as `double_param`; anything else as its JSON text.
pub fn json_parameters(p: Option<&crate::v2::Parameters>) -> std::collections::HashMap<String, InferParameter> {
    use infer_parameter::ParameterChoice;
    let choice = |v: &serde_json::Value| match v {
        serde_json::Value::Bool(b) => ParameterChoice::BoolParam(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ParameterChoice::Int64Param(i),
            (None, Some(u)) => ParameterChoice::Uint64Param(u),
            _ => ParameterChoice::DoubleParam(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => ParameterChoice::StringParam(s.clone()),
        other => ParameterChoice::StringParam(other.to_string()),
    };
    p.into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                InferParameter {
                    parameter_choice: Some(choice(v)),
                },
            )
        })
        .collect()
}
