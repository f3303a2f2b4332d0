//! `prism-protocol`: what travels on the wire between Prism and its clients, defined once
//! for both sides.
//!
//! * [`v2`]: the KServe V2 / Open Inference Protocol's JSON documents;
//! * [`binary`]: Triton's binary tensor data extension;
//! * [`dtype`]: the V2 datatypes and their little-endian encodings;
//! * [`grpc`]: the same protocol over gRPC, wire-compatible with Triton's
//!   `inference.GRPCInferenceService` (messages, client and server, generated from
//!   `proto/`);
//! * [`ray`]: Prism's object, wait and task extensions (the Ray Core half);
//! * [`ErrorKind`]: the names of failures, as `retry_exceptions` lists them and as a
//!   failed object reports them.
//!
//! The server (`prism-server`) and the client (`prism-client`) both depend on this crate
//! and on nothing of each other, so the server's build carries none of the client's load
//! generator, plots or HTTP client.

pub mod binary;
pub mod dtype;
pub mod grpc;
mod kind;
pub mod ray;
pub mod v2;

pub use dtype::DType;
pub use kind::ErrorKind;
