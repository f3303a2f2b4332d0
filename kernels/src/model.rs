//! Layer models: a list of layers over one `[batch, features]` input.
//!
//! [`LayerSpec`] is what a deployment file writes (`{ op = "linear", weight = "fc1.weight",
//! bias = "fc1.bias" }`); [`Model::load`] resolves its tensor names against a
//! [`WeightFile`] and checks that the shapes chain, so a bad file is refused at start-up
//! with the layer and the tensor named, never at the first request.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::device::CpuDevice;
use crate::error::{KernelError, ModelError};
use crate::ops;
use crate::weights::{Weight, WeightFile};

/// One layer as written in a deployment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum LayerSpec {
    /// `y = x · Wᵀ + b`, `W` in `[out, in]` layout (PyTorch `nn.Linear`); `bias` optional.
    Linear {
        weight: String,
        #[serde(default)]
        bias: Option<String>,
    },
    /// `y = x · W`, `W` in `[in, out]` layout (numpy, scikit-learn `coefs_`).
    Matmul {
        weight: String,
    },
    /// `y = x + t`, `t` of shape `[features]` or `[1, features]`, added to every row.
    Add {
        tensor: String,
    },
    // The activations are empty struct variants, not unit variants, so that serde refuses
    // stray keys on them (`{ op = "relu", weight = "w" }` is a mistake worth reporting).
    Relu {},
    Gelu {
        #[serde(default)]
        approximate: GeluApproximation,
    },
    Sigmoid {},
    Tanh {},
    /// Softmax over the features of each row.
    Softmax {},
}

/// PyTorch's `nn.GELU(approximate=...)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeluApproximation {
    #[default]
    None,
    Tanh,
}

impl LayerSpec {
    pub fn op(&self) -> &'static str {
        match self {
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::Matmul { .. } => "matmul",
            LayerSpec::Add { .. } => "add",
            LayerSpec::Relu {} => "relu",
            LayerSpec::Gelu { .. } => "gelu",
            LayerSpec::Sigmoid {} => "sigmoid",
            LayerSpec::Tanh {} => "tanh",
            LayerSpec::Softmax {} => "softmax",
        }
    }
}

/// A loaded layer, its weights resolved.
#[derive(Clone, Debug)]
pub enum Layer {
    Linear { weight: Weight, bias: Option<Weight> },
    Matmul { weight: Weight },
    Add { tensor: Weight },
    Relu,
    Gelu { tanh: bool },
    Sigmoid,
    Tanh,
    Softmax,
}

/// A model: layers applied in order to a `[batch, in_features]` matrix.
///
/// Cheap to clone: weights are shared, so every replica of a deployment holds the same
/// mapped bytes.
#[derive(Clone, Debug)]
pub struct Model {
    layers: Vec<Layer>,
    /// What `forward` runs: the layers with `linear` weights repacked (see [`Step`]).
    steps: Vec<Step>,
    in_features: usize,
    out_features: usize,
}

/// One executable step. `linear` weights are transposed once, at load, into the
/// `[in, out]` layout that the GEMM streams fastest from batch 2 up (see
/// [`ops::matmul`]); that copy is shared by every replica (the model is cloned, not its
/// weights). A lone row is a matrix-vector product, fastest as dot products over the
/// original `[out, in]` rows, read in place from the memory-mapped file (measured:
/// 35 against 15 GFLOP/s on 1×784×256). `matmul` weights already have the `[in, out]`
/// layout and are read in place.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Gemm {
        /// `[in, out]`.
        weight: Weight,
        /// `[out, in]`, for single rows, when the layer gave it.
        rows: Option<Weight>,
        bias: Option<Weight>,
    },
    Layer(Layer),
}

impl Model {
    /// Builds a model from in-memory layers, checking that the shapes chain from
    /// `in_features`. `source` names the model in errors.
    pub fn new(source: &std::path::Path, layers: Vec<Layer>, in_features: usize) -> Result<Self, ModelError> {
        if layers.is_empty() {
            return Err(ModelError::Empty {
                path: source.to_owned(),
            });
        }
        let mut features = in_features;
        for (index, layer) in layers.iter().enumerate() {
            let fail = |reason: String| ModelError::Layer {
                path: source.to_owned(),
                index,
                op: layer.op(),
                reason,
            };
            features = layer.out_features(features).map_err(fail)?;
        }
        let steps = layers
            .iter()
            .map(|layer| match layer {
                Layer::Linear { weight, bias } => {
                    let (out, inp) = (weight.shape()[0], weight.shape()[1]);
                    Step::Gemm {
                        weight: Weight::from_vec(vec![inp, out], ops::transpose(weight.as_slice(), out, inp)),
                        rows: Some(weight.clone()),
                        bias: bias.clone(),
                    }
                }
                Layer::Matmul { weight } => Step::Gemm {
                    weight: weight.clone(),
                    rows: None,
                    bias: None,
                },
                other => Step::Layer(other.clone()),
            })
            .collect();
        Ok(Model {
            layers,
            steps,
            in_features,
            out_features: features,
        })
    }

    /// Resolves `specs` against the tensors of `file` and checks the chain of shapes.
    pub fn load(file: &WeightFile, specs: &[LayerSpec], in_features: usize) -> Result<Self, ModelError> {
        let layers = specs
            .iter()
            .map(|spec| {
                Ok(match spec {
                    LayerSpec::Linear { weight, bias } => Layer::Linear {
                        weight: file.tensor(weight)?,
                        bias: bias.as_deref().map(|b| file.tensor(b)).transpose()?,
                    },
                    LayerSpec::Matmul { weight } => Layer::Matmul {
                        weight: file.tensor(weight)?,
                    },
                    LayerSpec::Add { tensor } => Layer::Add {
                        tensor: file.tensor(tensor)?,
                    },
                    LayerSpec::Relu {} => Layer::Relu,
                    LayerSpec::Gelu { approximate } => Layer::Gelu {
                        tanh: *approximate == GeluApproximation::Tanh,
                    },
                    LayerSpec::Sigmoid {} => Layer::Sigmoid,
                    LayerSpec::Tanh {} => Layer::Tanh,
                    LayerSpec::Softmax {} => Layer::Softmax,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Self::new(file.path(), layers, in_features)
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// What `forward` runs, for other backends to mirror.
    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Bytes of weights the model reads per batch.
    pub fn weight_bytes(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Gemm { weight, rows, bias } => {
                    weight.byte_len() + [rows, bias].into_iter().flatten().map(Weight::byte_len).sum::<usize>()
                }
                Step::Layer(l) => l.weight_bytes(),
            })
            .sum()
    }

    /// The widest row anywhere in the model (input, any layer's output).
    pub(crate) fn widest(&self) -> usize {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Gemm { weight, .. } => Some(weight.shape()[1]),
                Step::Layer(_) => None,
            })
            .fold(self.in_features, usize::max)
    }

    /// Bytes the GPU backend uploads: the `[in, out]` GEMM weights at `gemm_element_bytes`
    /// each (4 for fp32, 2 for bf16 / fp16), biases and added tensors in fp32 (not the
    /// `[out, in]` copies the CPU keeps for single rows).
    pub(crate) fn gpu_weight_bytes(&self, gemm_element_bytes: usize) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Gemm { weight, bias, .. } => {
                    weight.as_slice().len() * gemm_element_bytes + bias.as_ref().map_or(0, Weight::byte_len)
                }
                Step::Layer(l) => l.weight_bytes(),
            })
            .sum()
    }

    /// Runs the model on a batch. Shapes were checked at load; a wrong input width is
    /// still reported, not a panic.
    pub fn forward(&self, device: &CpuDevice, x: ArrayView2<'_, f32>) -> Result<Array2<f32>, KernelError> {
        if x.ncols() != self.in_features {
            return Err(KernelError::Shape {
                op: "model input",
                expected: self.in_features,
                got: x.ncols(),
            });
        }
        let mut steps = self.steps.iter();
        let first = steps.next().expect("a model has at least one layer (checked at load)");
        let mut y = first.apply_view(device, x)?;
        for step in steps {
            y = step.apply(device, y)?;
        }
        Ok(y)
    }
}

impl Layer {
    pub fn op(&self) -> &'static str {
        match self {
            Layer::Linear { .. } => "linear",
            Layer::Matmul { .. } => "matmul",
            Layer::Add { .. } => "add",
            Layer::Relu => "relu",
            Layer::Gelu { .. } => "gelu",
            Layer::Sigmoid => "sigmoid",
            Layer::Tanh => "tanh",
            Layer::Softmax => "softmax",
        }
    }

    fn weight_bytes(&self) -> usize {
        match self {
            Layer::Linear { weight, bias } => weight.byte_len() + bias.as_ref().map_or(0, Weight::byte_len),
            Layer::Matmul { weight } => weight.byte_len(),
            Layer::Add { tensor } => tensor.byte_len(),
            _ => 0,
        }
    }

    /// The width of this layer's output for an input of `features` columns, or why the
    /// shapes do not chain.
    fn out_features(&self, features: usize) -> Result<usize, String> {
        let vector_len = |w: &Weight| match w.shape() {
            [n] | [1, n] => Some(*n),
            _ => None,
        };
        match self {
            Layer::Linear { weight, bias } => {
                let [out, inp] = weight.shape() else {
                    return Err(format!("weight must be 2-D [out, in], got shape {:?}", weight.shape()));
                };
                if *inp != features {
                    return Err(format!(
                        "weight has shape {:?} ([out, in]), so it expects {inp} input features, but the layer receives {features}",
                        weight.shape()
                    ));
                }
                if let Some(b) = bias
                    && vector_len(b) != Some(*out)
                {
                    return Err(format!("bias must have shape [{out}], got {:?}", b.shape()));
                }
                Ok(*out)
            }
            Layer::Matmul { weight } => match weight.shape() {
                [inp, out] if *inp == features => Ok(*out),
                [inp, _] => Err(format!(
                    "weight has shape {:?} ([in, out]), so it expects {inp} input features, but the layer receives {features}",
                    weight.shape()
                )),
                other => Err(format!("weight must be 2-D [in, out], got shape {other:?}")),
            },
            Layer::Add { tensor } => match vector_len(tensor) {
                Some(n) if n == features => Ok(features),
                _ => Err(format!(
                    "tensor must have shape [{features}] or [1, {features}] to add to the layer's {features} features, got {:?}",
                    tensor.shape()
                )),
            },
            Layer::Relu | Layer::Gelu { .. } | Layer::Sigmoid | Layer::Tanh | Layer::Softmax => Ok(features),
        }
    }
}

impl Step {
    fn apply_view(&self, device: &CpuDevice, x: ArrayView2<'_, f32>) -> Result<Array2<f32>, KernelError> {
        match self {
            Step::Gemm {
                rows: Some(rows), bias, ..
            } if x.nrows() == 1 => ops::linear(
                device,
                x,
                rows.as_slice(),
                rows.shape()[0],
                bias.as_ref().map(Weight::as_slice),
            ),
            Step::Gemm { weight, bias, .. } => ops::matmul(
                device,
                x,
                weight.as_slice(),
                weight.shape()[1],
                bias.as_ref().map(Weight::as_slice),
            ),
            Step::Layer(_) => self.apply(device, x.to_owned()),
        }
    }

    fn apply(&self, device: &CpuDevice, mut x: Array2<f32>) -> Result<Array2<f32>, KernelError> {
        let Step::Layer(layer) = self else {
            return self.apply_view(device, x.view());
        };
        match layer {
            Layer::Linear { .. } | Layer::Matmul { .. } => {
                unreachable!("weighted layers become Step::Gemm at load. This is a bug.")
            }
            Layer::Add { tensor } => ops::add_row(&mut x, tensor.as_slice())?,
            Layer::Relu => ops::relu(&mut x),
            Layer::Gelu { tanh } => ops::gelu(&mut x, *tanh),
            Layer::Sigmoid => ops::sigmoid(&mut x),
            Layer::Tanh => ops::tanh(&mut x),
            Layer::Softmax => ops::softmax(&mut x),
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_safetensors(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> tempfile::NamedTempFile {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    s.clone(),
                    v.iter().flat_map(|f| f.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let file = tempfile::NamedTempFile::new().unwrap();
        safetensors::serialize_to_file(views, None, file.path()).unwrap();
        file
    }

    #[test]
    fn loads_mapped_weights_and_runs() {
        let file = write_safetensors(&[
            ("fc.weight", vec![2, 3], vec![1.0, 0.0, -1.0, 0.5, 0.5, 0.5]),
            ("fc.bias", vec![2], vec![0.0, 1.0]),
        ]);
        let wf = WeightFile::open(file.path()).unwrap();
        let specs = vec![
            LayerSpec::Linear {
                weight: "fc.weight".into(),
                bias: Some("fc.bias".into()),
            },
            LayerSpec::Relu {},
        ];
        let model = Model::load(&wf, &specs, 3).unwrap();
        assert!(matches!(&model.layers()[0], Layer::Linear { weight, .. } if weight.is_mapped()));
        let matmul = Model::load(
            &wf,
            &[LayerSpec::Matmul {
                weight: "fc.weight".into(),
            }],
            2,
        )
        .unwrap();
        assert!(
            matches!(&matmul.steps[0], Step::Gemm { weight, .. } if weight.is_mapped()),
            "matmul weights are used in place from the map"
        );
        let x = ndarray::array![[1.0f32, 2.0, 3.0], [3.0, 2.0, 1.0]];
        let y = model.forward(&CpuDevice::new(1).unwrap(), x.view()).unwrap();
        assert_eq!(y, ndarray::array![[0.0f32, 4.0], [2.0, 4.0]]);
    }

    #[test]
    fn errors_name_the_file_the_layer_and_the_tensor() {
        let file = write_safetensors(&[("w", vec![4, 3], vec![0.0; 12]), ("b", vec![5], vec![0.0; 5])]);
        let wf = WeightFile::open(file.path()).unwrap();
        let path = file.path().display().to_string();

        let missing = Model::load(&wf, &[LayerSpec::Matmul { weight: "nope".into() }], 4).unwrap_err();
        let msg = missing.to_string();
        assert!(
            msg.contains(&path) && msg.contains("`nope` not found") && msg.contains("b, w"),
            "{msg}"
        );

        let chain = Model::load(
            &wf,
            &[
                LayerSpec::Linear {
                    weight: "w".into(),
                    bias: None,
                },
                LayerSpec::Relu {},
                LayerSpec::Linear {
                    weight: "w".into(),
                    bias: None,
                },
            ],
            3,
        )
        .unwrap_err();
        let msg = chain.to_string();
        assert!(msg.contains("layer 2 (linear)") && msg.contains("receives 4"), "{msg}");

        let bias = Model::load(
            &wf,
            &[LayerSpec::Linear {
                weight: "w".into(),
                bias: Some("b".into()),
            }],
            3,
        )
        .unwrap_err();
        assert!(bias.to_string().contains("bias must have shape [4], got [5]"), "{bias}");
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_refused_with_its_name() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"definitely not safetensors").unwrap();
        let err = WeightFile::open(file.path()).unwrap_err().to_string();
        assert!(
            err.contains(&file.path().display().to_string()) && err.contains("not a valid safetensors"),
            "{err}"
        );
    }

    #[test]
    fn layer_specs_parse_and_refuse_unknown_keys() {
        #[derive(Deserialize)]
        struct Doc {
            layers: Vec<LayerSpec>,
        }
        let doc: Doc = serde_json::from_str(
            r#"{"layers":[{"op":"linear","weight":"a"},{"op":"gelu","approximate":"tanh"},{"op":"relu"}]}"#,
        )
        .unwrap();
        assert_eq!(
            doc.layers[1],
            LayerSpec::Gelu {
                approximate: GeluApproximation::Tanh
            }
        );
        let err = serde_json::from_str::<Doc>(r#"{"layers":[{"op":"linear","wieght":"a"}]}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("wieght"), "{err}");
        let err = serde_json::from_str::<Doc>(r#"{"layers":[{"op":"conv2d"}]}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("conv2d"), "{err}");
        let err = serde_json::from_str::<Doc>(r#"{"layers":[{"op":"relu","weight":"a"}]}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("weight"), "{err}");
    }
}
