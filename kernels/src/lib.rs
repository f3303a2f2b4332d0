//! `prism-kernels`: the maths of Prism.
//!
//! Tensors are `ndarray` matrices of `f32` rows (`[batch, features]`), the shape every
//! layer model in a deployment file works on. This crate knows nothing of HTTP, queues or
//! configuration files: it loads weights (memory-mapped safetensors), builds [`Model`]s
//! from a list of [`LayerSpec`]s, and runs them on a [`Device`].
//!
//! The CPU backend is first-class: `linear` and `matmul` go through the pure-Rust `gemm`
//! crate (no system BLAS, so a fresh machine needs nothing installed), the element-wise
//! ops through `ndarray`.

pub mod builtin;
pub mod cuda;
pub mod device;
pub mod encoder;
pub mod error;
pub mod model;
pub mod ops;
pub mod packed;
pub mod tasks;
pub mod testing;
pub mod weights;

pub use device::{CpuDevice, Device, Location};
pub use error::{KernelError, ModelError};
pub use model::{GeluApproximation, Layer, LayerSpec, Model};
pub use tasks::TaskOp;
pub use weights::{Weight, WeightFile};

/// A batch of rows: `[batch, features]`, standard (row-major) layout.
pub type Matrix = ndarray::Array2<f32>;
