//! Models that need no file on disk: what the embedded default deployment serves.
//!
//! * `celsius`: the seed's `LinearModel`, `y = 9/5 · x + 32` (`[-1, 1]` → `[-1, 1]`).
//! * `mlp`: 784 → 256 (ReLU) → 10 (softmax), weights drawn at start-up from a fixed seed
//!   with PyTorch's default `nn.Linear` initialisation, `U(-1/√in, 1/√in)`, so every
//!   server (and every test computing a reference) gets the same numbers.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{Layer, Model};
use crate::weights::Weight;

/// The seed of the `mlp` weights. Changing it changes every answer of the default model.
pub const MLP_SEED: u64 = 0x5052_4953_4d00;
pub const MLP_SIZES: [usize; 3] = [784, 256, 10];

/// A built-in model by name.
pub fn by_name(name: &str) -> Option<Model> {
    match name {
        "celsius" => Some(celsius()),
        "mlp" => Some(mlp()),
        _ => None,
    }
}

/// Names accepted by [`by_name`].
pub const NAMES: [&str; 2] = ["celsius", "mlp"];

pub fn celsius() -> Model {
    let layers = vec![Layer::Linear {
        weight: Weight::from_vec(vec![1, 1], vec![1.8]),
        bias: Some(Weight::from_vec(vec![1], vec![32.0])),
    }];
    Model::new(Path::new("builtin:celsius"), layers, 1).expect("the built-in celsius model chains. This is a bug.")
}

/// The `mlp` weights as `(name, shape [out, in] or [out], values)`, in `nn.Linear`
/// layout: `fc1.weight`, `fc1.bias`, `fc2.weight`, `fc2.bias`.
pub fn mlp_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(MLP_SEED);
    let mut out = Vec::new();
    for (i, pair) in MLP_SIZES.windows(2).enumerate() {
        let (inp, outp) = (pair[0], pair[1]);
        let bound = 1.0 / (inp as f32).sqrt();
        let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-bound..bound)).collect::<Vec<f32>>();
        let w = draw(outp * inp);
        let b = draw(outp);
        out.push((format!("fc{}.weight", i + 1), vec![outp, inp], w));
        out.push((format!("fc{}.bias", i + 1), vec![outp], b));
    }
    out
}

pub fn mlp() -> Model {
    let mut t = mlp_tensors()
        .into_iter()
        .map(|(_, shape, v)| Weight::from_vec(shape, v));
    let mut next = || t.next().expect("mlp_tensors yields four tensors. This is a bug.");
    let layers = vec![
        Layer::Linear {
            weight: next(),
            bias: Some(next()),
        },
        Layer::Relu,
        Layer::Linear {
            weight: next(),
            bias: Some(next()),
        },
        Layer::Softmax,
    ];
    Model::new(Path::new("builtin:mlp"), layers, MLP_SIZES[0]).expect("the built-in mlp chains. This is a bug.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuDevice;

    #[test]
    fn celsius_converts_100_to_212() {
        let y = celsius()
            .forward(&CpuDevice::new(1).unwrap(), ndarray::array![[100.0f32], [-40.0]].view())
            .unwrap();
        assert_eq!(y, ndarray::array![[212.0f32], [-40.0]]);
    }

    #[test]
    fn mlp_weights_are_deterministic_and_outputs_are_distributions() {
        // Pinned values: a changed seed or a `rand` upgrade that draws differently would
        // silently change every answer of the default `mlp`.
        let t = mlp_tensors();
        assert_eq!(t[0].2[..4], [-0.028144643, 0.02819303, 0.002831202, -0.0073369835]);
        assert_eq!(t[3].2[..4], [0.018901244, -0.0067670196, 0.010207072, -0.019617632]);
        let x = ndarray::Array2::from_shape_fn((3, 784), |(i, j)| ((i * 7 + j) % 13) as f32 / 13.0);
        let y = mlp().forward(&CpuDevice::new(2).unwrap(), x.view()).unwrap();
        assert_eq!(y.dim(), (3, 10));
        for row in y.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-5);
        }
    }
}
