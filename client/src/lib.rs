//! `prism-client`: the KServe V2 protocol types, an async client for any V2 server
//! (Prism, Triton, MLServer, KServe), and the `prism` command line.

pub mod bench;
pub mod binary;
mod client;
pub mod dtype;
mod ray;
pub mod v2;

pub use client::{Client, ClientError};
pub use dtype::DType;
pub use ray::{FaultInjection, ObjectRef, TaskArg, TaskOptions, Tensor};
