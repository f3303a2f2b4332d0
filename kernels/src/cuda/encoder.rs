//! A BERT encoder on a card: the stored `[out, in]` projections uploaded once (converted
//! to the deployment's precision), each batch one [`Plan`].
//!
//! The batch is padded to its longest text: `texts × seq` token rows through every
//! projection (one cuBLAS GEMM each, bias and activation kernels after), attention as
//! strided-batched GEMMs over `texts × heads` with a masked softmax that gives padding
//! keys exactly zero weight, and pooling that reads each text's own tokens only. So a
//! text's answer does not depend on the batch it is in, as on the CPU path.

use super::exec::{CudaDevice, CudaExecutor};
use super::launch::{elements, row_blocks};
use super::model::{gemm_type, gemm_weight};
use super::plan::{Arg, Buf, Elem, Executor, Gemm, GemmType, Host, Plan, int};
use super::source::Kernel;
use super::{GpuError, Precision};
use crate::encoder::{Activation, Encoder, EncoderError, Pooling, Tensors, Tokens, embedding_tables};

struct Dense {
    weight: Buf,
    bias: Buf,
    out: usize,
    inp: usize,
}

struct Norm {
    gamma: Buf,
    beta: Buf,
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    up: Dense,
    down: Dense,
    output_norm: Norm,
}

enum Head {
    Embedding { pooling: Pooling, normalize: bool },
    Classification { pooler: Dense, classifier: Dense },
}

/// An [`Encoder`] on one executor (a card, or the CPU mirror of one).
pub struct GpuEncoder<E: Executor = CudaExecutor> {
    exec: E,
    precision: Precision,
    hidden: usize,
    heads: usize,
    intermediate: usize,
    eps: f32,
    activation: i32,
    type_vocab: usize,
    word: Buf,
    position: Buf,
    token_type: Buf,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    head: Head,
    output_width: usize,
    scratch: usize,
}

/// Numbers the weights as they are uploaded.
struct Uploader<'a, E: Executor> {
    exec: &'a mut E,
    tensors: Tensors<'a>,
    precision: Precision,
    next: usize,
}

impl<E: Executor> Uploader<'_, E> {
    fn put(&mut self, data: Host<'_>) -> Result<Buf, GpuError> {
        let buf = Buf(self.next);
        self.next += 1;
        self.exec.upload(buf, data)?;
        Ok(buf)
    }

    fn tensor(&mut self, name: &str, shape: &[usize], bare: bool) -> Result<Buf, EncoderError> {
        let w = self.tensors.get(name, shape, bare)?;
        self.put(Host::F32(w.as_slice())).map_err(EncoderError::from)
    }

    fn norm(&mut self, name: &str, hidden: usize) -> Result<Norm, EncoderError> {
        Ok(Norm {
            gamma: self.tensor(&format!("{name}.weight"), &[hidden], false)?,
            beta: self.tensor(&format!("{name}.bias"), &[hidden], false)?,
        })
    }

    /// The projections `names` (each `[out, in]`) stacked into one `[n·out, in]` GEMM
    /// weight, in the precision of the GEMMs, and their biases side by side.
    fn dense(&mut self, names: &[String], out: usize, inp: usize, bare: bool) -> Result<Dense, EncoderError> {
        let mut weight = Vec::with_capacity(names.len() * out * inp);
        let mut bias = Vec::with_capacity(names.len() * out);
        for name in names {
            let stored = self.tensors.get(&format!("{name}.weight"), &[out, inp], bare)?;
            weight.extend_from_slice(stored.as_slice());
            // Read once, for the upload: the card holds it now.
            stored.release_pages();
            bias.extend_from_slice(self.tensors.get(&format!("{name}.bias"), &[out], bare)?.as_slice());
        }
        let mut bits = Vec::new();
        let data = gemm_weight(&weight, self.precision, &mut bits);
        let weight = self.put(data).map_err(EncoderError::from)?;
        let bias = self.put(Host::F32(&bias)).map_err(EncoderError::from)?;
        Ok(Dense {
            weight,
            bias,
            out: names.len() * out,
            inp,
        })
    }
}

impl GpuEncoder {
    /// `encoder`'s weights on `device`, its projections in `precision`.
    pub fn upload(encoder: &Encoder, device: CudaDevice, precision: Precision) -> Result<Self, EncoderError> {
        GpuEncoder::on(encoder, CudaExecutor::new(device), precision)
    }

    /// Bytes of card memory one replica needs for batches of up to `max_tokens` padded
    /// tokens of texts of up to `max_seq` tokens: the weights (projections in 2 bytes for
    /// bf16 / fp16), the activations, the attention scores and the cuBLAS workspace.
    pub fn memory_needed(encoder: &Encoder, precision: Precision, max_tokens: usize, max_seq: usize) -> u64 {
        let s = &encoder.config().shape;
        let (h, f) = (s.hidden, s.intermediate);
        let half = matches!(precision, Precision::Bf16 | Precision::Fp16);
        let gemm_bytes = if half { 2 } else { 4 };
        let labels = encoder.labels().len();
        // Projections (qkv, attention out, up, down), and the classifier's pooler and
        // classifier; in fp32: the embedding tables, the biases and the norms.
        let projections = s.layers * (4 * h * h + 2 * h * f) + h * h + labels * h;
        let fp32 = (s.vocab_size + s.max_positions + s.type_vocab_size) * h
            + s.layers * (5 * h + f + 4 * h)
            + 2 * h
            + h
            + labels;
        // Per padded token: ids and types, seven hidden-wide buffers, qkv, the feed-forward
        // buffer (and its half copy); per token and head, a row of scores.
        let wide = f.max(h);
        let per_token = 2 * 4 + (7 * h + 3 * h + wide) * 4 + if half { wide * 2 } else { 0 };
        // Per text: its length, two pooled rows and its answer.
        let texts = max_tokens.div_ceil(max_seq.max(1));
        let width = if labels > 0 { labels } else { h };
        let per_text = 4 + (2 * h + width) * 4;
        let scratch = max_tokens * (per_token + s.heads * max_seq * 4) + texts * per_text;
        /// cuBLAS's default workspace per handle: 32 MiB on Hopper, 4 MiB before it.
        const CUBLAS_WORKSPACE: usize = 32 << 20;
        (projections * gemm_bytes + fp32 * 4 + scratch + CUBLAS_WORKSPACE) as u64
    }
}

impl<E: Executor> GpuEncoder<E> {
    /// `encoder` on `exec`: see [`GpuEncoder::upload`].
    pub fn on(encoder: &Encoder, mut exec: E, precision: Precision) -> Result<Self, EncoderError> {
        if precision == Precision::Tf32 {
            exec.use_tf32().map_err(EncoderError::from)?;
        }
        let shape = encoder.config().shape.clone();
        let (h, f) = (shape.hidden, shape.intermediate);
        let tensors = encoder.tensors();
        let prefix = tensors.prefix;
        let mut up = Uploader {
            exec: &mut exec,
            tensors,
            precision,
            next: 0,
        };
        let mut tables = Vec::new();
        for (name, rows) in embedding_tables(&shape) {
            tables.push(up.tensor(name, &[rows, h], false)?);
        }
        let [word, position, token_type] = <[Buf; 3]>::try_from(tables).expect("three tables");
        let embedding_norm = up.norm("embeddings.LayerNorm", h)?;
        let mut layers = Vec::new();
        for i in 0..shape.layers {
            let p = format!("encoder.layer.{i}");
            let name = |n: &str| vec![format!("{}{p}.{n}", prefix)];
            let qkv: Vec<String> = ["query", "key", "value"]
                .iter()
                .map(|n| format!("{prefix}{p}.attention.self.{n}"))
                .collect();
            layers.push(Layer {
                qkv: up.dense(&qkv, h, h, true)?,
                attention_out: up.dense(&name("attention.output.dense"), h, h, true)?,
                attention_norm: up.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                up: up.dense(&name("intermediate.dense"), f, h, true)?,
                down: up.dense(&name("output.dense"), h, f, true)?,
                output_norm: up.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let (head, output_width) = match encoder.embedding_head() {
            Some((pooling, normalize)) => (Head::Embedding { pooling, normalize }, h),
            None => {
                let labels = encoder.labels().len();
                let head = Head::Classification {
                    pooler: up.dense(&[format!("{prefix}pooler.dense")], h, h, true)?,
                    classifier: up.dense(&["classifier".to_owned()], labels, h, true)?,
                };
                (head, labels)
            }
        };
        let scratch = up.next;
        Ok(GpuEncoder {
            exec,
            precision,
            hidden: h,
            heads: shape.heads,
            intermediate: f,
            eps: shape.layer_norm_eps,
            activation: match shape.activation {
                Activation::Relu => 1,
                Activation::Gelu => 2,
                Activation::GeluTanh => 3,
            },
            type_vocab: shape.type_vocab_size,
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            head,
            output_width,
            scratch,
        })
    }

    /// Whether the largest batch a deployment may form — `max_tokens` padded tokens of
    /// texts of up to `max_seq` tokens — can be planned: every count fits the kernels'
    /// 32-bit indices. (Its scores, texts × heads × seq², are largest at the longest seq.)
    pub fn fits(&self, max_tokens: usize, max_seq: usize) -> Result<(), GpuError> {
        let seq = max_seq.clamp(1, max_tokens.max(1));
        self.plan(max_tokens.div_ceil(seq), seq).map(drop)
    }

    /// Floats per text in the answer.
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    /// The plan for `texts` texts padded to `seq` tokens. Its inputs are the token ids,
    /// the type ids (both `texts × seq`) and the lengths.
    pub fn plan(&self, texts: usize, seq: usize) -> Result<Plan, GpuError> {
        let (h, f, heads) = (self.hidden, self.intermediate, self.heads);
        let d = h / heads;
        let rows = texts * seq;
        let (ty, convert) = gemm_type(self.precision);
        let mut next = self.scratch;
        let mut plan = Plan::default();
        let mut scratch = |plan: &mut Plan, elem: Elem, len: usize| {
            let buf = Buf(next);
            next += 1;
            plan.scratch.push((buf, elem, len));
            buf
        };
        let ids = scratch(&mut plan, Elem::I32, rows);
        let types = scratch(&mut plan, Elem::I32, rows);
        let lengths = scratch(&mut plan, Elem::I32, texts);
        plan.inputs = vec![ids, types, lengths];
        let x = scratch(&mut plan, Elem::F32, rows * h);
        let a = scratch(&mut plan, Elem::F32, rows * h);
        let qkv = scratch(&mut plan, Elem::F32, rows * 3 * h);
        let (q, k, v) = (
            scratch(&mut plan, Elem::F32, rows * h),
            scratch(&mut plan, Elem::F32, rows * h),
            scratch(&mut plan, Elem::F32, rows * h),
        );
        let scores = scratch(&mut plan, Elem::F32, texts * heads * seq * seq);
        let context = scratch(&mut plan, Elem::F32, rows * h);
        let merged = scratch(&mut plan, Elem::F32, rows * h);
        let wide = scratch(&mut plan, Elem::F32, rows * f.max(h));
        let half = convert.map(|_| scratch(&mut plan, Elem::U16, rows * f.max(h)));
        let pooled = scratch(&mut plan, Elem::F32, texts * h);
        let pooled2 = scratch(&mut plan, Elem::F32, texts * h);
        let logits = scratch(&mut plan, Elem::F32, texts * self.output_width);

        let n = |v: usize, what: &str| int(v, what).map(Arg::Int);
        let (t_, s_, h_, r_) = (
            n(texts, "texts")?,
            n(seq, "tokens")?,
            n(h, "hidden")?,
            n(rows, "token rows")?,
        );
        // Every tensor the kernels index must fit their 32-bit counts.
        int(texts * heads * seq * seq, "attention scores")?;
        int(rows * 3 * h.max(f), "activations")?;

        plan.launch(
            Kernel::Embed,
            elements(Kernel::Embed, rows * h),
            vec![
                Arg::Buf(x),
                Arg::Buf(self.word),
                Arg::Buf(self.position),
                Arg::Buf(self.token_type),
                Arg::Buf(ids),
                Arg::Buf(types),
                Arg::Buf(lengths),
                t_,
                s_,
                h_,
            ],
        );
        let norm = |plan: &mut Plan, x: Buf, residual: Option<Buf>, norm: &Norm| {
            plan.launch(
                Kernel::AddLayerNorm,
                row_blocks(Kernel::AddLayerNorm, rows),
                vec![
                    Arg::Buf(x),
                    Arg::Buf(residual.unwrap_or(x)),
                    Arg::Buf(norm.gamma),
                    Arg::Buf(norm.beta),
                    r_,
                    h_,
                    Arg::Float(self.eps),
                    Arg::Int(residual.is_some() as i32),
                ],
            );
        };
        // y[m × out] = x[m × in] · Wᵀ + b, through the half buffer for bf16 / fp16.
        let dense = |plan: &mut Plan, input: Buf, dense: &Dense, y: Buf, m: usize| -> Result<(), GpuError> {
            let input = match (convert, half) {
                (Some(kernel), Some(half)) => {
                    let count = m * dense.inp;
                    plan.launch(
                        kernel,
                        elements(kernel, count),
                        vec![Arg::Buf(input), Arg::Buf(half), n(count, "elements")?],
                    );
                    half
                }
                _ => input,
            };
            plan.gemm(Gemm::linear(input, dense.weight, y, m, dense.inp, dense.out, ty));
            plan.launch(
                Kernel::AddRow,
                elements(Kernel::AddRow, m * dense.out),
                vec![Arg::Buf(y), Arg::Buf(dense.bias), n(m, "rows")?, n(dense.out, "width")?],
            );
            Ok(())
        };
        norm(&mut plan, x, None, &self.embedding_norm);
        let batched = texts * heads;
        for layer in &self.layers {
            dense(&mut plan, x, &layer.qkv, qkv, rows)?;
            plan.launch(
                Kernel::SplitHeads,
                elements(Kernel::SplitHeads, rows * 3 * h),
                vec![
                    Arg::Buf(qkv),
                    Arg::Buf(q),
                    Arg::Buf(k),
                    Arg::Buf(v),
                    t_,
                    s_,
                    n(heads, "heads")?,
                    n(d, "head width")?,
                    Arg::Float(1.0 / (d as f32).sqrt()),
                ],
            );
            // scores[s × s] = Q · Kᵀ per text and head; column-major: scoresᵀ = K · Qᵀ.
            plan.gemm(Gemm {
                trans_a: true,
                trans_b: false,
                m: seq,
                n: seq,
                k: d,
                a: k,
                lda: d,
                stride_a: seq * d,
                b: q,
                ldb: d,
                stride_b: seq * d,
                c: scores,
                ldc: seq,
                stride_c: seq * seq,
                batch: batched,
                alpha: 1.0,
                beta: 0.0,
                ty: GemmType::F32,
            });
            plan.launch(
                Kernel::MaskedSoftmax,
                row_blocks(Kernel::MaskedSoftmax, batched * seq),
                vec![
                    Arg::Buf(scores),
                    Arg::Buf(lengths),
                    n(batched * seq, "attention rows")?,
                    n(heads, "heads")?,
                    s_,
                ],
            );
            // context[s × d] = P · V; column-major: contextᵀ = Vᵀ · Pᵀ.
            plan.gemm(Gemm {
                trans_a: false,
                trans_b: false,
                m: d,
                n: seq,
                k: seq,
                a: v,
                lda: d,
                stride_a: seq * d,
                b: scores,
                ldb: seq,
                stride_b: seq * seq,
                c: context,
                ldc: d,
                stride_c: seq * d,
                batch: batched,
                alpha: 1.0,
                beta: 0.0,
                ty: GemmType::F32,
            });
            plan.launch(
                Kernel::MergeHeads,
                elements(Kernel::MergeHeads, rows * h),
                vec![
                    Arg::Buf(context),
                    Arg::Buf(merged),
                    t_,
                    s_,
                    n(heads, "heads")?,
                    n(d, "head width")?,
                ],
            );
            dense(&mut plan, merged, &layer.attention_out, a, rows)?;
            norm(&mut plan, a, Some(x), &layer.attention_norm);
            dense(&mut plan, a, &layer.up, wide, rows)?;
            plan.launch(
                Kernel::Activate,
                elements(Kernel::Activate, rows * f),
                vec![Arg::Buf(wide), n(rows * f, "elements")?, Arg::Int(self.activation)],
            );
            dense(&mut plan, wide, &layer.down, x, rows)?;
            norm(&mut plan, x, Some(a), &layer.output_norm);
            // x holds the layer's output again.
        }
        let pool = |plan: &mut Plan, mode: i32, out: Buf| {
            plan.launch(
                Kernel::Pool,
                elements(Kernel::Pool, texts * h),
                vec![
                    Arg::Buf(x),
                    Arg::Buf(out),
                    Arg::Buf(lengths),
                    t_,
                    s_,
                    h_,
                    Arg::Int(mode),
                ],
            );
        };
        match &self.head {
            Head::Embedding { pooling, normalize } => {
                let mode = match pooling {
                    Pooling::Mean => 0,
                    Pooling::Cls => 1,
                    Pooling::Max => 2,
                    Pooling::MeanSqrtLen => 3,
                    Pooling::LastToken => 4,
                };
                pool(&mut plan, mode, pooled);
                if *normalize {
                    plan.launch(
                        Kernel::L2Normalize,
                        row_blocks(Kernel::L2Normalize, texts),
                        vec![Arg::Buf(pooled), t_, h_],
                    );
                }
                plan.output = (pooled, texts * h);
            }
            Head::Classification { pooler, classifier } => {
                pool(&mut plan, 1, pooled);
                dense(&mut plan, pooled, pooler, pooled2, texts)?;
                plan.launch(
                    Kernel::Activate,
                    elements(Kernel::Activate, texts * h),
                    vec![Arg::Buf(pooled2), n(texts * h, "elements")?, Arg::Int(5)],
                );
                dense(&mut plan, pooled2, classifier, logits, texts)?;
                plan.output = (logits, texts * classifier.out);
            }
        }
        Ok(plan)
    }

    /// One row per text of `batch` (`texts × output_width`, row-major): as
    /// [`Encoder::forward`] answers on the CPU.
    pub fn forward(&mut self, batch: &Tokens) -> Result<Vec<f32>, GpuError> {
        let texts = batch.texts();
        let seq = batch.lengths.iter().copied().max().unwrap_or(0);
        if texts == 0 || batch.lengths.contains(&0) {
            // The kernels take every length as at least one token (the tokenizer refuses
            // empty texts with a 400).
            return Err(GpuError(
                "every text of an encoder batch needs a token. This is a bug.".into(),
            ));
        }
        let mut ids = vec![0i32; texts * seq];
        let mut types = vec![0i32; texts * seq];
        let mut t = 0;
        for (b, &len) in batch.lengths.iter().enumerate() {
            for p in 0..len {
                ids[b * seq + p] = batch.ids[t] as i32;
                // As the CPU path: a type id past the table reads its last row.
                types[b * seq + p] = (batch.type_ids[t] as usize).min(self.type_vocab - 1) as i32;
                t += 1;
            }
        }
        let lengths: Vec<i32> = batch.lengths.iter().map(|&l| l as i32).collect();
        let plan = self.plan(texts, seq)?;
        self.exec
            .run(&plan, &[Host::I32(&ids), Host::I32(&types), Host::I32(&lengths)])
    }

    pub fn executor(&self) -> &E {
        &self.exec
    }
}

impl GpuEncoder<CudaExecutor> {
    /// The card's time on the batches since the last call (see
    /// [`CudaExecutor::take_batch_time`]).
    pub fn take_batch_time(&mut self) -> Option<std::time::Duration> {
        self.exec.take_batch_time()
    }
}
