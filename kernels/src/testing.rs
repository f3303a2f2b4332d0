//! Deterministic inputs for tests and benchmarks, so that a failing case can be rerun
//! exactly and every crate draws the same numbers for the same seed, and the models the
//! GPU path and its CPU mirror are both tested on.

use std::path::{Path, PathBuf};

use crate::{Layer, Model, Weight, builtin};

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

/// A small model with every layer kind the GPU path has a kernel for, on random weights.
pub fn every_op_model() -> Model {
    let (i, h, o) = (48, 64, 12);
    let layers = vec![
        Layer::Linear {
            weight: Weight::from_vec(vec![h, i], uniform(h * i, 1)),
            bias: Some(Weight::from_vec(vec![h], uniform(h, 2))),
        },
        Layer::Gelu { tanh: false },
        Layer::Matmul {
            weight: Weight::from_vec(vec![h, h], uniform(h * h, 3)),
        },
        Layer::Add {
            tensor: Weight::from_vec(vec![h], uniform(h, 4)),
        },
        Layer::Tanh,
        Layer::Gelu { tanh: true },
        Layer::Linear {
            weight: Weight::from_vec(vec![o, h], uniform(o * h, 5)),
            bias: None,
        },
        Layer::Sigmoid,
        Layer::Relu,
        Layer::Softmax,
    ];
    Model::new(Path::new("test:every-op"), layers, i).unwrap()
}

/// The default MLP without its softmax: raw logits, so a GEMM error is not squashed by
/// a softmax into a small relative error.
pub fn mlp_logits() -> Model {
    let t = builtin::mlp_tensors();
    let w = |i: usize| Weight::from_vec(t[i].1.clone(), t[i].2.clone());
    let layers = vec![
        Layer::Linear {
            weight: w(0),
            bias: Some(w(1)),
        },
        Layer::Relu,
        Layer::Linear {
            weight: w(2),
            bias: Some(w(3)),
        },
    ];
    Model::new(Path::new("test:mlp-logits"), layers, 784).unwrap()
}

/// The random-initialised encoder folders committed under `tests/fixtures/encoders`
/// (made by `tests/encoders/make_fixtures.py`): mean pooling, CLS pooling, a classifier
/// and a cross-encoder. Found beside this crate's sources, or (for a test binary carried
/// to another machine, as scripts/gpu-check does) under the current directory, or where
/// `PRISM_ENCODER_FIXTURES` says.
pub fn encoder_fixtures() -> Vec<PathBuf> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/encoders");
    let root = match std::env::var_os("PRISM_ENCODER_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None if built.is_dir() => built,
        None => PathBuf::from("tests/fixtures/encoders"),
    };
    ["tiny-mean", "tiny-cls", "tiny-classifier", "tiny-cross-encoder"]
        .iter()
        .map(|name| root.join(name))
        .collect()
}
