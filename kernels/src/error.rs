//! Errors of the kernels layer.

use std::path::PathBuf;

/// A failure while running an op. These are system failures from the caller's point of
/// view: the inputs were validated before they reached a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("could not start a pool of {threads} intra-op threads: {reason}")]
    ThreadPool { threads: usize, reason: String },
    #[error("{op}: expected {expected} columns, got {got}")]
    Shape {
        op: &'static str,
        expected: usize,
        got: usize,
    },
}

/// A model that cannot be built from its weights file and layer list. Every message names
/// the file, and the layer or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot open: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}` not found (the file has: {available})")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        available: String,
    },
    #[error("{path}: tensor `{tensor}` has dtype {dtype}; supported are F32, F16, BF16 and F64")]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: layer {index} ({op}): {reason}")]
    Layer {
        path: PathBuf,
        index: usize,
        op: &'static str,
        reason: String,
    },
    #[error("{path}: the model has no layers")]
    Empty { path: PathBuf },
}
