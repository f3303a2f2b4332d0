//! Shared pieces of Prism's benchmarks: the shapes that matter for serving.

/// `(batch, in, out)` of a `linear` layer: the default MLP's layers at serving batch
/// sizes, a skinny batch-64 layer, and square GEMMs.
pub const LINEAR_SHAPES: &[(usize, usize, usize)] = &[
    (1, 784, 256),
    (8, 784, 256),
    (32, 784, 256),
    (64, 1024, 1024),
    (256, 784, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
];

pub use prism_kernels::testing::uniform as values;
