//! V2 over gRPC: the messages of Triton's `grpc_service.proto` (package `inference`),
//! and tonic's client and server for `GRPCInferenceService`, generated at build time
//! from `proto/`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("inference");

pub use grpc_inference_service_client::GrpcInferenceServiceClient;
pub use grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

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
