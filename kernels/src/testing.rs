//! Deterministic inputs for tests and benchmarks, so that a failing case can be rerun
//! exactly and every crate draws the same numbers for the same seed.

/// `len` values in `[-1, 1)` from a xorshift generator seeded with `seed`.
pub fn uniform(len: usize, seed: u64) -> Vec<f32> {
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

/// ‖got − want‖ / ‖want‖, the relative error the GPU checks bound; a non-finite value in
/// `got` or a length mismatch fails.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
    let diff: f64 = got.iter().zip(want).map(|(g, w)| ((g - w) as f64).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}
