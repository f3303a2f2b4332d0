//! Hugging Face / sentence-transformers encoder folders, served as they are: BERT-family
//! embedding models (`BertModel` with sentence-transformers' pooling and normalisation)
//! and classifiers and cross-encoders (`BertForSequenceClassification`).
//!
//! * [`config`]: the folder's JSON files, validated once ([`EncoderConfig`]);
//! * [`tokenize`]: text into token ids as sentence-transformers does it ([`TextTokenizer`]);
//! * `bert`: the model's structs, loaded by name from `model.safetensors`, and its CPU
//!   forward pass over a packed batch.
//!
//! [`Encoder`] ties them together: `tokenize` (off the replica thread, it needs no
//! device), then `forward` (on the replica's device) from token ids to one row per text.
//! Other families (RoBERTa / XLM-R, DistilBERT, MPNet) would be a `bert`-like module of
//! their own behind the same `Encoder`, differing in tensor names, position ids and the
//! absence of token types.

mod bert;
pub mod config;
pub mod tokenize;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::Array2;

pub use config::{Activation, EncoderConfig, Overrides, Pooling, Task};
pub use tokenize::{TextTokenizer, TokenizeError, Tokens};

use crate::device::CpuDevice;
use crate::error::ModelError;
use crate::weights::WeightFile;
use bert::{Bert, Classifier};
pub(crate) use bert::{Tensors, embedding_tables};

/// An encoder folder that cannot be served: one line naming the file, the key and why.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("{}: {key}: {reason}", file.display())]
    Config { file: PathBuf, key: String, reason: String },
    #[error("{}: tensor `{tensor}` {reason}", file.display())]
    Tensor {
        file: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error(transparent)]
    Weights(#[from] ModelError),
    /// The GPU path could not take the model (upload, memory).
    #[error(transparent)]
    Gpu(#[from] crate::cuda::GpuError),
}

/// A loaded encoder: its configuration, tokenizer and weights. Cheap to clone (replicas
/// share one copy of the weights).
#[derive(Clone)]
pub struct Encoder {
    inner: Arc<Inner>,
}

struct Inner {
    config: EncoderConfig,
    tokenizer: TextTokenizer,
    bert: Bert,
    head: Head,
    /// The mapped file, for the GPU path's upload of the tensors as they are stored.
    file: WeightFile,
}

enum Head {
    Embedding {
        pooling: Pooling,
        normalize: bool,
    },
    Classification {
        classifier: Box<Classifier>,
        labels: Vec<String>,
    },
}

impl Encoder {
    /// Reads the folder `dir` (its `config.json`, sentence-transformers files,
    /// `tokenizer.json` and `model.safetensors`), with `overrides` from the deployment
    /// file. The weights are memory-mapped; the projections are repacked once.
    pub fn load(dir: &Path, overrides: &Overrides) -> Result<Encoder, EncoderError> {
        let config = EncoderConfig::read(dir, overrides)?;
        let tokenizer = TextTokenizer::load(dir, config.max_seq_length, config.lowercase, config.shape.vocab_size)?;
        let file = WeightFile::open(&dir.join("model.safetensors"))?;
        let tensors = Tensors::new(&file);
        let bert = Bert::load(&tensors, &config.shape)?;
        let head = match &config.task {
            Task::Embedding { pooling, normalize } => Head::Embedding {
                pooling: *pooling,
                normalize: *normalize,
            },
            Task::Classification { labels } => {
                let n = Classifier::labels_in(&file)?;
                let labels = match labels.len() {
                    0 => (0..n).map(|i| format!("LABEL_{i}")).collect(),
                    m if m == n => labels.clone(),
                    m => {
                        return Err(EncoderError::Config {
                            file: dir.join("config.json"),
                            key: "id2label".into(),
                            reason: format!("names {m} labels, but classifier.weight has {n} rows"),
                        });
                    }
                };
                Head::Classification {
                    classifier: Box::new(Classifier::load(&tensors, config.shape.hidden, n)?),
                    labels,
                }
            }
        };
        let mut config = config;
        if let (Task::Classification { labels }, Head::Classification { labels: found, .. }) = (&mut config.task, &head)
        {
            labels.clone_from(found);
        }
        Ok(Encoder {
            inner: Arc::new(Inner {
                config,
                tokenizer,
                bert,
                head,
                file,
            }),
        })
    }

    /// The folder's tensors, as stored (`[out, in]` projections), under its prefix.
    pub(crate) fn tensors(&self) -> Tensors<'_> {
        Tensors::new(&self.inner.file)
    }

    /// The embedding head's pooling and whether it normalises; `None` for a classifier.
    pub(crate) fn embedding_head(&self) -> Option<(Pooling, bool)> {
        match &self.inner.head {
            Head::Embedding { pooling, normalize } => Some((*pooling, *normalize)),
            Head::Classification { .. } => None,
        }
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.inner.config
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.inner.tokenizer
    }

    /// The labels of a classifier, in logit order; empty for an embedding model.
    pub fn labels(&self) -> &[String] {
        match &self.inner.head {
            Head::Classification { labels, .. } => labels,
            Head::Embedding { .. } => &[],
        }
    }

    /// Floats per text in the answer: the embedding's width or the number of labels.
    pub fn output_width(&self) -> usize {
        match &self.inner.head {
            Head::Embedding { .. } => self.inner.config.shape.hidden,
            Head::Classification { labels, .. } => labels.len(),
        }
    }

    /// Bytes of weights held (mapped or repacked).
    pub fn weight_bytes(&self) -> usize {
        let head = match &self.inner.head {
            Head::Classification { classifier, .. } => classifier.bytes(),
            Head::Embedding { .. } => 0,
        };
        self.inner.bert.weight_bytes() + head
    }

    /// One row per text of `batch`: its pooled (and, if the model says so, normalised)
    /// embedding, or its logits.
    pub fn forward(&self, device: &CpuDevice, batch: &Tokens) -> Array2<f32> {
        let states = self.inner.bert.forward(device, batch);
        match &self.inner.head {
            Head::Embedding { pooling, normalize } => {
                let mut pooled = pool(&states, &batch.lengths, *pooling);
                if *normalize {
                    normalize_rows(&mut pooled);
                }
                pooled
            }
            Head::Classification { classifier, .. } => classifier.forward(device, &states, &batch.lengths),
        }
    }
}

/// One vector per text from its tokens' states, as sentence-transformers' `Pooling`.
fn pool(states: &Array2<f32>, lengths: &[usize], pooling: Pooling) -> Array2<f32> {
    let mut out = Array2::zeros((lengths.len(), states.ncols()));
    let mut offset = 0;
    for (i, &len) in lengths.iter().enumerate() {
        let rows = bert::text_rows(states, offset, len);
        let mut dst = out.row_mut(i);
        match pooling {
            Pooling::Cls => dst.assign(&rows.row(0)),
            Pooling::LastToken => dst.assign(&rows.row(len - 1)),
            Pooling::Mean => dst.assign(&(bert::column_sums(rows) / (len as f32).max(1e-9))),
            Pooling::MeanSqrtLen => dst.assign(&(bert::column_sums(rows) / (len as f32).sqrt())),
            Pooling::Max => {
                dst.fill(f32::NEG_INFINITY);
                for r in rows.rows() {
                    dst.zip_mut_with(&r, |a, &b| *a = a.max(b));
                }
            }
        }
        offset += len;
    }
    out
}

/// `v / max(‖v‖₂, 1e-12)` for each row.
fn normalize_rows(x: &mut Array2<f32>) {
    for mut row in x.rows_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.mapv_inplace(|v| v / norm);
    }
}
