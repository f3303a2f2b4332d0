//! `prism-client`: an async client for any V2 server (Prism, Triton, MLServer, KServe),
//! with Prism's Ray-like extensions, and the `prism` command line.
//!
//! The wire types live in `prism-protocol`, shared with the server; they are re-exported
//! here under their old paths (`prism_client::v2`, `prism_client::binary`, ...).

pub mod bench;
mod client;
mod ray;

pub use client::{Client, ClientError, bearer_headers};
pub use prism_protocol::ray::{FaultInjection, TaskOptions};
pub use prism_protocol::{DType, ErrorKind, binary, dtype, v2};
pub use ray::{ObjectRef, TaskArg, Tensor};
