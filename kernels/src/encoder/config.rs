//! A Hugging Face / sentence-transformers folder's configuration, read once and validated:
//! `config.json` (the architecture), `modules.json` with its `Pooling` and `Normalize`
//! modules, `sentence_bert_config.json` and `tokenizer_config.json` (the sequence limit).
//!
//! Every refusal is one line naming the file, the key and the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::EncoderError;

/// How token states become one vector per text, as sentence-transformers' `Pooling`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the text's tokens (padding never counts).
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// The element-wise maximum over the text's tokens.
    Max,
    /// The sum of the text's tokens over the square root of their count.
    MeanSqrtLen,
    /// The last token.
    LastToken,
}

impl Pooling {
    pub fn parse(name: &str) -> Option<Pooling> {
        Some(match name {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "max" => Pooling::Max,
            "mean_sqrt_len_tokens" => Pooling::MeanSqrtLen,
            "lasttoken" => Pooling::LastToken,
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "mean, cls, max, mean_sqrt_len_tokens, lasttoken";
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::LastToken => "lasttoken",
        })
    }
}

/// The activation of the feed-forward layers, as `hidden_act` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact form, `x·Φ(x)` with `erf`.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

/// What the folder's model answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// `BertModel`: one vector per text.
    Embedding { pooling: Pooling, normalize: bool },
    /// `BertForSequenceClassification`: a logit per label (classifiers and cross-encoders).
    Classification { labels: Vec<String> },
}

/// A BERT's shape, from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BertShape {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub activation: Activation,
    pub layer_norm_eps: f32,
    pub max_positions: usize,
    pub type_vocab_size: usize,
}

/// What a deployment file may set over the folder's own choices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    pub max_seq_length: Option<usize>,
}

/// An encoder folder, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    pub dir: PathBuf,
    /// `BertModel` or `BertForSequenceClassification`, as `config.json` names it.
    pub architecture: String,
    pub shape: BertShape,
    pub task: Task,
    /// Most tokens of one text, `[CLS]` and `[SEP]` included.
    pub max_seq_length: usize,
    /// sentence-transformers' `do_lower_case`.
    pub lowercase: bool,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
}

fn default_act() -> String {
    "gelu".into()
}

fn default_eps() -> f64 {
    1e-12
}

fn default_type_vocab() -> usize {
    2
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_Pooling/config.json`, in both the older (`pooling_mode_*_token(s)` booleans) and the
/// newer (`pooling_mode`) form.
#[derive(Deserialize, Default)]
struct RawPooling {
    #[serde(default)]
    pooling_mode: Option<String>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize, Default)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    model_max_length: Option<f64>,
}

fn refuse<T>(file: &Path, key: &str, reason: impl Into<String>) -> Result<T, EncoderError> {
    Err(EncoderError::Config {
        file: file.to_owned(),
        key: key.to_owned(),
        reason: reason.into(),
    })
}

/// Reads `name` under `dir` as JSON; `None` when the file is absent.
fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, EncoderError> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return refuse(&path, "(file)", format!("cannot read: {e}")),
    };
    serde_json::from_str(&text)
        .map(Some)
        .or_else(|e| refuse(&path, "(file)", format!("not the JSON expected: {e}")))
}

impl EncoderConfig {
    /// Reads and validates the folder `dir`, with `overrides` from the deployment file.
    pub fn read(dir: &Path, overrides: &Overrides) -> Result<EncoderConfig, EncoderError> {
        let config_path = dir.join("config.json");
        let raw: RawConfig = match read_json(dir, "config.json")? {
            Some(c) => c,
            None => {
                return refuse(
                    &config_path,
                    "(file)",
                    "not found: a Hugging Face model folder has a config.json",
                );
            }
        };
        let architecture = match (&raw.architectures, raw.model_type.as_deref()) {
            (Some(a), _) if !a.is_empty() => a[0].clone(),
            (_, Some("bert")) => "BertModel".to_owned(),
            (_, other) => {
                return refuse(
                    &config_path,
                    "architectures",
                    format!("missing (model_type {other:?}); supported are BertModel, BertForSequenceClassification"),
                );
            }
        };
        let classifier = match architecture.as_str() {
            "BertModel" => false,
            "BertForSequenceClassification" => true,
            other => {
                return refuse(
                    &config_path,
                    "architectures",
                    format!("`{other}` is not supported; supported are BertModel, BertForSequenceClassification"),
                );
            }
        };
        let activation = match raw.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return refuse(
                    &config_path,
                    "hidden_act",
                    format!("`{other}` is not supported; supported are gelu, gelu_new, gelu_pytorch_tanh, relu"),
                );
            }
        };
        if let Some(p) = raw.position_embedding_type.as_deref()
            && p != "absolute"
        {
            return refuse(
                &config_path,
                "position_embedding_type",
                format!("`{p}` is not supported; only absolute"),
            );
        }
        let positive = |key: &str, v: usize| {
            if v == 0 {
                refuse(&config_path, key, "must be at least 1, got 0")
            } else {
                Ok(v)
            }
        };
        let shape = BertShape {
            vocab_size: positive("vocab_size", raw.vocab_size)?,
            hidden: positive("hidden_size", raw.hidden_size)?,
            layers: positive("num_hidden_layers", raw.num_hidden_layers)?,
            heads: positive("num_attention_heads", raw.num_attention_heads)?,
            intermediate: positive("intermediate_size", raw.intermediate_size)?,
            activation,
            layer_norm_eps: raw.layer_norm_eps as f32,
            max_positions: positive("max_position_embeddings", raw.max_position_embeddings)?,
            type_vocab_size: positive("type_vocab_size", raw.type_vocab_size)?,
        };
        if !shape.hidden.is_multiple_of(shape.heads) {
            return refuse(
                &config_path,
                "num_attention_heads",
                format!("{} does not divide hidden_size {}", shape.heads, shape.hidden),
            );
        }
        if !(raw.layer_norm_eps > 0.0 && raw.layer_norm_eps < 1.0) {
            return refuse(
                &config_path,
                "layer_norm_eps",
                format!("expected a small positive number, got {}", raw.layer_norm_eps),
            );
        }

        let st: SentenceBertConfig = read_json(dir, "sentence_bert_config.json")?.unwrap_or_default();
        let tokenizer_config: TokenizerConfig = read_json(dir, "tokenizer_config.json")?.unwrap_or_default();
        // sentence-transformers' own limit, else the tokenizer's (a huge number there means
        // "none"), capped by the position table either way.
        let folder_limit = st.max_seq_length.or(tokenizer_config
            .model_max_length
            .filter(|n| (1.0..=1e6).contains(n))
            .map(|n| n as usize));
        let max_seq_length = match overrides.max_seq_length.or(folder_limit) {
            Some(n) if n > shape.max_positions => {
                if overrides.max_seq_length.is_some() {
                    return refuse(
                        &config_path,
                        "max_position_embeddings",
                        format!(
                            "max_seq_length {n} is longer than the model's {} positions",
                            shape.max_positions
                        ),
                    );
                }
                shape.max_positions
            }
            Some(0) => {
                return refuse(
                    &dir.join("sentence_bert_config.json"),
                    "max_seq_length",
                    "must be at least 1",
                );
            }
            Some(n) => n,
            None => shape.max_positions,
        };

        let task = if classifier {
            if overrides.pooling.is_some() || overrides.normalize.is_some() {
                return refuse(
                    &config_path,
                    "architectures",
                    "BertForSequenceClassification answers logits: pooling and normalize do not apply",
                );
            }
            Task::Classification {
                labels: labels(&config_path, raw.id2label.as_ref())?,
            }
        } else {
            let (pooling, normalize) = sentence_modules(dir)?;
            let pooling = match overrides.pooling.or(pooling) {
                Some(p) => p,
                None => {
                    return refuse(
                        &dir.join("modules.json"),
                        "(file)",
                        format!(
                            "not found, so the folder does not say how it pools: set `pooling` in the deployment file ({})",
                            Pooling::NAMES
                        ),
                    );
                }
            };
            Task::Embedding {
                pooling,
                normalize: overrides.normalize.unwrap_or(normalize),
            }
        };
        Ok(EncoderConfig {
            dir: dir.to_owned(),
            architecture,
            shape,
            task,
            max_seq_length,
            lowercase: st.do_lower_case,
        })
    }

    /// The width of what one text answers: the hidden size, or the number of labels.
    pub fn output_width(&self) -> usize {
        match &self.task {
            Task::Embedding { .. } => self.shape.hidden,
            Task::Classification { labels } => labels.len(),
        }
    }
}

/// The labels of a classifier, in index order; `LABEL_i` where `id2label` is silent.
fn labels(file: &Path, id2label: Option<&BTreeMap<String, String>>) -> Result<Vec<String>, EncoderError> {
    let Some(map) = id2label else {
        return Ok(Vec::new());
    };
    let mut indexed = Vec::with_capacity(map.len());
    for (k, v) in map {
        match k.parse::<usize>() {
            Ok(i) => indexed.push((i, v.clone())),
            Err(_) => return refuse(file, "id2label", format!("key `{k}` is not a label index")),
        }
    }
    indexed.sort();
    if indexed.iter().enumerate().any(|(i, (k, _))| i != *k) {
        return refuse(file, "id2label", "the label indices are not 0, 1, 2, ...");
    }
    Ok(indexed.into_iter().map(|(_, v)| v).collect())
}

/// The pooling and normalisation `modules.json` lists (`None`, false without the file).
fn sentence_modules(dir: &Path) -> Result<(Option<Pooling>, bool), EncoderError> {
    let modules_path = dir.join("modules.json");
    let Some(modules): Option<Vec<Module>> = read_json(dir, "modules.json")? else {
        return Ok((None, false));
    };
    let mut pooling = None;
    let mut normalize = false;
    for (i, m) in modules.iter().enumerate() {
        // `sentence_transformers.models.Pooling`, or a newer path to the same class.
        let class = m.kind.rsplit('.').next().unwrap_or_default();
        match class {
            "Transformer" => {
                if !(m.path.is_empty() || m.path == ".") {
                    return refuse(
                        &modules_path,
                        &format!("[{i}].path"),
                        format!("`{}`: the transformer must be the folder itself", m.path),
                    );
                }
            }
            "Pooling" => pooling = Some(pooling_config(&dir.join(&m.path))?),
            "Normalize" => normalize = true,
            _ => {
                return refuse(
                    &modules_path,
                    &format!("[{i}].type"),
                    format!(
                        "`{}` is not supported; supported are Transformer, Pooling, Normalize",
                        m.kind
                    ),
                );
            }
        }
    }
    Ok((pooling, normalize))
}

fn pooling_config(dir: &Path) -> Result<Pooling, EncoderError> {
    let path = dir.join("config.json");
    let raw: RawPooling = read_json(dir, "config.json")?.unwrap_or_default();
    if let Some(mode) = &raw.pooling_mode {
        return Pooling::parse(mode).map_or_else(
            || {
                refuse(
                    &path,
                    "pooling_mode",
                    format!("`{mode}` is not supported; supported are {}", Pooling::NAMES),
                )
            },
            Ok,
        );
    }
    if raw.pooling_mode_weightedmean_tokens {
        return refuse(
            &path,
            "pooling_mode_weightedmean_tokens",
            "weighted mean pooling is not supported",
        );
    }
    let modes = [
        (raw.pooling_mode_cls_token, Pooling::Cls),
        (raw.pooling_mode_mean_tokens, Pooling::Mean),
        (raw.pooling_mode_max_tokens, Pooling::Max),
        (raw.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
        (raw.pooling_mode_lasttoken, Pooling::LastToken),
    ];
    let on: Vec<Pooling> = modes.iter().filter(|(set, _)| *set).map(|(_, p)| *p).collect();
    match on.as_slice() {
        [one] => Ok(*one),
        [] => refuse(&path, "pooling_mode_*", "no pooling mode is set"),
        several => refuse(
            &path,
            "pooling_mode_*",
            format!(
                "{} modes are set ({}); one is supported",
                several.len(),
                several.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            ),
        ),
    }
}
