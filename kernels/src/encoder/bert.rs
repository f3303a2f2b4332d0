//! BERT, as a tree of small structs each loaded by name from the safetensors file
//! (`embeddings.*`, `encoder.layer.{i}.*`, with or without the `bert.` prefix), and its
//! forward pass on the CPU.
//!
//! The batch is packed: the texts' tokens one after the other, no padding. The
//! projections run over every token of the batch at once (one GEMM each); attention runs
//! per text and head over that text's own tokens, so padding never enters an answer and a
//! text gets the same vector alone or in any batch.

use ndarray::{Array2, ArrayView2, Axis, s};
use rayon::prelude::*;

use super::EncoderError;
use super::config::{Activation, BertShape};
use super::tokenize::Tokens;
use crate::device::CpuDevice;
use crate::ops;
use crate::packed::PackedWeight;
use crate::weights::{Weight, WeightFile};

/// Tensors of one file, found under the checkpoint's prefix, with their shapes checked.
pub(crate) struct Tensors<'a> {
    file: &'a WeightFile,
    pub(crate) prefix: &'static str,
}

impl<'a> Tensors<'a> {
    /// The tensors of `file`: `bert.`-prefixed (as `BertForSequenceClassification` saves
    /// them) or not (`BertModel`, sentence-transformers).
    pub(crate) fn new(file: &'a WeightFile) -> Self {
        let prefix = if file.has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        Tensors { file, prefix }
    }

    /// The tensor `name` (under the prefix unless `bare`), which must have `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize], bare: bool) -> Result<Weight, EncoderError> {
        let full = if bare {
            name.to_owned()
        } else {
            format!("{}{name}", self.prefix)
        };
        let w = self.file.tensor(&full).map_err(EncoderError::Weights)?;
        if w.shape() != shape {
            return Err(EncoderError::Tensor {
                file: self.file.path().to_owned(),
                tensor: full,
                reason: format!("has shape {:?}, config.json implies {shape:?}", w.shape()),
            });
        }
        Ok(w)
    }
}

/// `y = x · W + b`, `W` repacked once at load from PyTorch's `[out, in]` into the layout its
/// GEMM streams fastest ([`PackedWeight`]).
pub(super) struct Dense {
    weight: PackedWeight,
    bias: Weight,
}

impl Dense {
    pub(super) fn load(t: &Tensors<'_>, name: &str, out: usize, inp: usize, bare: bool) -> Result<Dense, EncoderError> {
        let w = t.get(&format!("{name}.weight"), &[out, inp], bare)?;
        let bias = t.get(&format!("{name}.bias"), &[out], bare)?;
        let weight = PackedWeight::pack(&ops::transpose(w.as_slice(), out, inp), inp, out);
        // The packed copy is what runs: the file's pages of it need not stay resident.
        w.release_pages();
        Ok(Dense { weight, bias })
    }

    /// One projection of several of the same input, side by side (`[q; k; v]` into one
    /// GEMM), from their `[out, in]` tensors `name.weight` and `name.bias`.
    fn fused(t: &Tensors<'_>, names: &[String], out: usize, inp: usize) -> Result<Dense, EncoderError> {
        let total = out * names.len();
        let mut weight = vec![0.0; inp * total];
        let mut bias = Vec::with_capacity(total);
        for (i, name) in names.iter().enumerate() {
            let stored = t.get(&format!("{name}.weight"), &[out, inp], false)?;
            let w = ops::transpose(stored.as_slice(), out, inp);
            stored.release_pages();
            for r in 0..inp {
                weight[r * total + i * out..r * total + (i + 1) * out].copy_from_slice(&w[r * out..(r + 1) * out]);
            }
            bias.extend_from_slice(t.get(&format!("{name}.bias"), &[out], false)?.as_slice());
        }
        Ok(Dense {
            weight: PackedWeight::pack(&weight, inp, total),
            bias: Weight::from_vec(vec![total], bias),
        })
    }

    pub(super) fn forward(&self, device: &CpuDevice, x: ArrayView2<'_, f32>) -> Array2<f32> {
        self.weight.matmul(device, x, Some(self.bias.as_slice()))
    }

    pub(super) fn bytes(&self) -> usize {
        self.weight.bytes() + self.bias.byte_len()
    }
}

/// LayerNorm: `(x − μ) / √(σ² + eps) · γ + β` over each row, biased variance.
struct Norm {
    gamma: Weight,
    beta: Weight,
    eps: f32,
}

impl Norm {
    fn load(t: &Tensors<'_>, name: &str, hidden: usize, eps: f32) -> Result<Norm, EncoderError> {
        Ok(Norm {
            gamma: t.get(&format!("{name}.weight"), &[hidden], false)?,
            beta: t.get(&format!("{name}.bias"), &[hidden], false)?,
            eps,
        })
    }

    /// `x = LN(x + residual)`, in place.
    fn add_and_apply(&self, x: &mut Array2<f32>, residual: Option<&Array2<f32>>) {
        if let Some(r) = residual {
            *x += r;
        }
        let (gamma, beta) = (self.gamma.as_slice(), self.beta.as_slice());
        for mut row in x.rows_mut() {
            let n = row.len() as f32;
            let mean = row.sum() / n;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

/// One transformer layer: self-attention, then the feed-forward block, each followed by
/// a residual and a LayerNorm.
struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    up: Dense,
    down: Dense,
    output_norm: Norm,
}

impl Layer {
    fn load(t: &Tensors<'_>, i: usize, shape: &BertShape) -> Result<Layer, EncoderError> {
        let (h, f, eps) = (shape.hidden, shape.intermediate, shape.layer_norm_eps);
        let p = format!("encoder.layer.{i}");
        let qkv: Vec<String> = ["query", "key", "value"]
            .iter()
            .map(|n| format!("{p}.attention.self.{n}"))
            .collect();
        Ok(Layer {
            qkv: Dense::fused(t, &qkv, h, h)?,
            attention_out: Dense::load(t, &format!("{p}.attention.output.dense"), h, h, false)?,
            attention_norm: Norm::load(t, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
            up: Dense::load(t, &format!("{p}.intermediate.dense"), f, h, false)?,
            down: Dense::load(t, &format!("{p}.output.dense"), h, f, false)?,
            output_norm: Norm::load(t, &format!("{p}.output.LayerNorm"), h, eps)?,
        })
    }

    fn forward(&self, device: &CpuDevice, x: Array2<f32>, lengths: &[usize], shape: &BertShape) -> Array2<f32> {
        let qkv = self.qkv.forward(device, x.view());
        let context = attention(device, &qkv, lengths, shape.heads, shape.hidden);
        drop(qkv);
        let mut a = self.attention_out.forward(device, context.view());
        self.attention_norm.add_and_apply(&mut a, Some(&x));
        drop(x);
        let mut up = self.up.forward(device, a.view());
        activate(device, &mut up, shape.activation);
        let mut out = self.down.forward(device, up.view());
        self.output_norm.add_and_apply(&mut out, Some(&a));
        out
    }
}

/// The feed-forward activation, in place, split across the device's threads in bands of
/// rows (it is the largest element-wise pass of the model: tokens × intermediate).
fn activate(device: &CpuDevice, x: &mut Array2<f32>, activation: Activation) {
    let cols = x.ncols().max(1);
    let values = x.as_slice_mut().expect("a fresh GEMM output is contiguous");
    let run = |band: &mut [f32]| match activation {
        Activation::Gelu => ops::gelu_slice(band, false),
        Activation::GeluTanh => ops::gelu_slice(band, true),
        Activation::Relu => band.iter_mut().for_each(|v| *v = v.max(0.0)),
    };
    let rows = values.len() / cols;
    if device.threads() > 1 && rows >= 2 * device.threads() {
        let band = rows.div_ceil(device.threads()) * cols;
        device.install(|| values.par_chunks_mut(band).for_each(run));
    } else {
        run(values);
    }
}

/// The embedding tables, by name, with their rows (each `hidden` wide): words, positions,
/// token types.
pub(crate) fn embedding_tables(shape: &BertShape) -> [(&'static str, usize); 3] {
    [
        ("embeddings.word_embeddings.weight", shape.vocab_size),
        ("embeddings.position_embeddings.weight", shape.max_positions),
        ("embeddings.token_type_embeddings.weight", shape.type_vocab_size),
    ]
}

/// The encoder: embeddings, then the layers. Its answer is one state per token.
pub(super) struct Bert {
    pub(super) shape: BertShape,
    word: Weight,
    position: Weight,
    token_type: Weight,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

impl Bert {
    pub(super) fn load(t: &Tensors<'_>, shape: &BertShape) -> Result<Bert, EncoderError> {
        let h = shape.hidden;
        let [word, position, token_type] = embedding_tables(shape).map(|(name, rows)| t.get(name, &[rows, h], false));
        let (word, position, token_type) = (word?, position?, token_type?);
        let embedding_norm = Norm::load(t, "embeddings.LayerNorm", h, shape.layer_norm_eps)?;
        let layers = (0..shape.layers)
            .map(|i| Layer::load(t, i, shape))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Bert {
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            shape: shape.clone(),
        })
    }

    /// Bytes of weights this model holds (the embeddings read in place from the file, the
    /// repacked projections).
    pub(super) fn weight_bytes(&self) -> usize {
        let norm = |n: &Norm| n.gamma.byte_len() + n.beta.byte_len();
        self.word.byte_len()
            + self.position.byte_len()
            + self.token_type.byte_len()
            + norm(&self.embedding_norm)
            + self
                .layers
                .iter()
                .map(|l| {
                    l.qkv.bytes()
                        + l.attention_out.bytes()
                        + l.up.bytes()
                        + l.down.bytes()
                        + norm(&l.attention_norm)
                        + norm(&l.output_norm)
                })
                .sum::<usize>()
    }

    /// `[tokens, hidden]`: the last layer's state of every token of `batch`, text after
    /// text. Ids were checked against the vocabulary by the tokenizer's load; positions
    /// and types are checked here.
    pub(super) fn forward(&self, device: &CpuDevice, batch: &Tokens) -> Array2<f32> {
        let h = self.shape.hidden;
        let mut x = Array2::<f32>::zeros((batch.total(), h));
        let (word, position, token_type) = (
            self.word.as_slice(),
            self.position.as_slice(),
            self.token_type.as_slice(),
        );
        let mut t = 0;
        for &len in &batch.lengths {
            assert!(
                len <= self.shape.max_positions,
                "texts are truncated to the position table. This is a bug."
            );
            for p in 0..len {
                let (id, tt) = (batch.ids[t] as usize, batch.type_ids[t] as usize);
                let tt = tt.min(self.shape.type_vocab_size - 1);
                let row = x.row_mut(t);
                let (w, pe, te) = (
                    &word[id * h..(id + 1) * h],
                    &position[p * h..(p + 1) * h],
                    &token_type[tt * h..(tt + 1) * h],
                );
                for (((v, a), b), c) in row.into_iter().zip(w).zip(pe).zip(te) {
                    *v = a + b + c;
                }
                t += 1;
            }
        }
        self.embedding_norm.add_and_apply(&mut x, None);
        for layer in &self.layers {
            x = layer.forward(device, x, &batch.lengths, &self.shape);
        }
        x
    }
}

/// Multi-head self-attention over packed texts: `qkv` is `[tokens, 3·hidden]` (queries,
/// keys, values side by side); each text attends to its own tokens only. Answers the
/// context, `[tokens, hidden]`. Texts × heads run in parallel on the device's threads.
fn attention(device: &CpuDevice, qkv: &Array2<f32>, lengths: &[usize], heads: usize, hidden: usize) -> Array2<f32> {
    let d = hidden / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let tokens: usize = lengths.iter().sum();
    let mut context = Array2::<f32>::zeros((tokens, hidden));
    let qkv = qkv.as_standard_layout();
    let src = qkv.as_slice().expect("standard layout");
    let row = 3 * hidden;
    let mut jobs = Vec::with_capacity(lengths.len() * heads);
    let mut offset = 0;
    for &len in lengths {
        for head in 0..heads {
            jobs.push((offset, len, head));
        }
        offset += len;
    }
    let dst = context.as_mut_ptr() as usize;
    let run = |&(offset, len, head): &(usize, usize, usize)| {
        let mut scores = vec![0.0f32; len * len];
        let q = src[offset * row + head * d..].as_ptr();
        let k = src[offset * row + hidden + head * d..].as_ptr();
        let v = src[offset * row + 2 * hidden + head * d..].as_ptr();
        // SAFETY: `q`, `k` and `v` point into `src` at this text's first token and this
        // head's columns; with a row stride of `3·hidden`, `len` rows of `d` columns stay
        // inside `src` (the text's tokens are `offset..offset + len`). `scores` is
        // len × len. The destination is this text's rows and this head's columns of
        // `context` (`tokens × hidden`, row-major): each job writes a block no other job
        // writes, and `context` outlives the parallel loop.
        unsafe {
            // scores = scale · Q · Kᵀ
            gemm::gemm(
                len,
                len,
                d,
                scores.as_mut_ptr(),
                1,
                len as isize,
                false,
                q,
                1,
                row as isize,
                k,
                row as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for r in scores.chunks_mut(len) {
            let max = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0.0;
            for x in r.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            for x in r.iter_mut() {
                *x /= sum;
            }
        }
        // SAFETY: as above.
        unsafe {
            // context[text, head] = scores · V
            gemm::gemm(
                len,
                d,
                len,
                (dst as *mut f32).add(offset * hidden + head * d),
                1,
                hidden as isize,
                false,
                scores.as_ptr(),
                1,
                len as isize,
                v,
                1,
                row as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };
    if device.threads() > 1 && jobs.len() > 1 {
        device.install(|| jobs.par_iter().for_each(run));
    } else {
        jobs.iter().for_each(run);
    }
    context
}

/// The pooler and classifier of `BertForSequenceClassification`: `tanh(h₀·W_p + b_p)`,
/// then one logit per label.
pub(super) struct Classifier {
    pooler: Dense,
    classifier: Dense,
}

impl Classifier {
    pub(super) fn load(t: &Tensors<'_>, hidden: usize, labels: usize) -> Result<Classifier, EncoderError> {
        Ok(Classifier {
            pooler: Dense::load(t, &format!("{}pooler.dense", t.prefix), hidden, hidden, true)?,
            classifier: Dense::load(t, "classifier", labels, hidden, true)?,
        })
    }

    /// The number of labels the classifier's weight has (its rows).
    pub(super) fn labels_in(file: &WeightFile) -> Result<usize, EncoderError> {
        let w = file.tensor("classifier.weight").map_err(EncoderError::Weights)?;
        Ok(w.shape().first().copied().unwrap_or(0))
    }

    /// `[texts, labels]` from the first token of each text.
    pub(super) fn forward(&self, device: &CpuDevice, states: &Array2<f32>, lengths: &[usize]) -> Array2<f32> {
        let firsts = first_tokens(states, lengths);
        let mut pooled = self.pooler.forward(device, firsts.view());
        ops::tanh(&mut pooled);
        self.classifier.forward(device, pooled.view())
    }

    pub(super) fn bytes(&self) -> usize {
        self.pooler.bytes() + self.classifier.bytes()
    }
}

/// Each text's first token state (`[CLS]`), `[texts, hidden]`.
pub(super) fn first_tokens(states: &Array2<f32>, lengths: &[usize]) -> Array2<f32> {
    let mut out = Array2::zeros((lengths.len(), states.ncols()));
    let mut offset = 0;
    for (i, &len) in lengths.iter().enumerate() {
        out.row_mut(i).assign(&states.row(offset));
        offset += len;
    }
    out
}

/// The rows of text `i` of a packed batch.
pub(super) fn text_rows<'a>(states: &'a Array2<f32>, offset: usize, len: usize) -> ArrayView2<'a, f32> {
    states.slice(s![offset..offset + len, ..])
}

/// Sums each column of `rows`.
pub(super) fn column_sums(rows: ArrayView2<'_, f32>) -> ndarray::Array1<f32> {
    rows.sum_axis(Axis(0))
}
