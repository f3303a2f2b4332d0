//! V2 over gRPC: the messages of Triton's `grpc_service.proto` (package `inference`),
//! and tonic's client and server for `GRPCInferenceService`, generated at build time
//! from `proto/`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("inference");

pub use grpc_inference_service_client::GrpcInferenceServiceClient;
pub use grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
