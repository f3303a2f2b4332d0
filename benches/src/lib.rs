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

/// Deterministic values in [-1, 1).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
