//! What a deployment serves, loaded once and shared by its replicas: a model over rows of
//! numbers (a built-in or a layer stack over safetensors), or an encoder folder; and its
//! [`Signature`], the tensors it takes and answers as the V2 metadata shows them.

use prism_config::{Deployment as Spec, ModelSource, RowsIo, TensorSpec};
use prism_kernels::encoder::{Encoder, EncoderError, Task};
use prism_kernels::{Model, WeightFile, builtin};
use prism_protocol::DType;

use super::engine::StartError;

/// A deployment's model. Cheap to clone: replicas share the weights.
#[derive(Clone)]
pub enum ServedModel {
    /// Rows of numbers in, rows out.
    Rows(Model),
    /// Texts in (pairs for a cross-encoder), one row per text out.
    Encoder(Encoder),
}

/// One tensor of a model's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSig {
    pub name: String,
    pub datatype: DType,
    /// `-1` where the size varies (the batch).
    pub shape: Vec<i64>,
    /// An input a request may leave out (a cross-encoder's `TEXT_PAIR`).
    pub optional: bool,
}

/// What a deployment takes and answers. Fixed at start-up: a reload must keep it.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSig>,
    pub outputs: Vec<TensorSig>,
    pub io: Io,
}

/// How requests reach the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Io {
    /// One `[-1, features]` numeric input, one `[-1, features]` output.
    Rows(RowsIo),
    /// `TEXT` (and `TEXT_PAIR`) strings in; `width` floats per text out, and for a
    /// classifier the name of each logit's label.
    Text {
        width: usize,
        labels: Vec<String>,
        max_seq_length: usize,
    },
}

/// The names of an encoder's tensors.
pub const TEXT: &str = "TEXT";
pub const TEXT_PAIR: &str = "TEXT_PAIR";
pub const EMBEDDING: &str = "EMBEDDING";
pub const LOGITS: &str = "LOGITS";
pub const LABEL: &str = "LABEL";

impl Signature {
    fn rows(io: &RowsIo) -> Signature {
        let sig = |t: &TensorSpec| TensorSig {
            name: t.name.clone(),
            datatype: t.datatype,
            shape: t.shape().to_vec(),
            optional: false,
        };
        Signature {
            inputs: vec![sig(&io.input)],
            outputs: vec![sig(&io.output)],
            io: Io::Rows(io.clone()),
        }
    }

    fn text(encoder: &Encoder) -> Signature {
        let tensor = |name: &str, datatype, shape: Vec<i64>, optional| TensorSig {
            name: name.into(),
            datatype,
            shape,
            optional,
        };
        let width = encoder.output_width();
        let (inputs, outputs) = match &encoder.config().task {
            Task::Embedding { .. } => (
                vec![tensor(TEXT, DType::Bytes, vec![-1], false)],
                vec![tensor(EMBEDDING, DType::F32, vec![-1, width as i64], false)],
            ),
            Task::Classification { .. } => (
                vec![
                    tensor(TEXT, DType::Bytes, vec![-1], false),
                    tensor(TEXT_PAIR, DType::Bytes, vec![-1], true),
                ],
                vec![
                    tensor(LOGITS, DType::F32, vec![-1, width as i64], false),
                    tensor(LABEL, DType::Bytes, vec![-1], false),
                ],
            ),
        };
        Signature {
            inputs,
            outputs,
            io: Io::Text {
                width,
                labels: encoder.labels().to_vec(),
                max_seq_length: encoder.config().max_seq_length,
            },
        }
    }

    pub fn output(&self, name: &str) -> Option<&TensorSig> {
        self.outputs.iter().find(|t| t.name == name)
    }

    /// The output names, for messages: `EMBEDDING`, or `LOGITS, LABEL`.
    pub fn output_names(&self) -> String {
        self.outputs
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A deployment's model, loaded once, with what it answers.
pub struct Loaded {
    pub model: ServedModel,
    pub signature: Signature,
    /// `prism_builtin`, `prism_safetensors` or `prism_huggingface`, for the metadata.
    pub platform: &'static str,
}

impl Loaded {
    /// Bytes one replica needs on a card, as the CUDA backend allocates them: for an
    /// encoder, batches of up to `max_batch_tokens` padded tokens.
    pub fn replica_memory(&self, spec: &Spec) -> u64 {
        match &self.model {
            ServedModel::Rows(m) => {
                prism_kernels::cuda::GpuModel::memory_needed(m, spec.precision, spec.batching.max_batch_size)
            }
            ServedModel::Encoder(e) => prism_kernels::cuda::GpuEncoder::memory_needed(
                e,
                spec.precision,
                spec.batching.max_batch_tokens,
                e.config().max_seq_length,
            ),
        }
    }
}

impl ServedModel {
    pub fn weight_bytes(&self) -> usize {
        match self {
            ServedModel::Rows(m) => m.weight_bytes(),
            ServedModel::Encoder(e) => e.weight_bytes(),
        }
    }
}

/// Loads the model of `spec` once; replicas share its weights.
pub fn load(spec: &Spec) -> Result<Loaded, StartError> {
    let name = || spec.name.clone();
    let fail = |source| StartError::Model { name: name(), source };
    let (model, platform, file, io) = match &spec.model {
        ModelSource::HuggingFace { dir, overrides } => {
            let encoder =
                Encoder::load(dir, overrides).map_err(|source| StartError::Encoder { name: name(), source })?;
            let max = encoder.config().max_seq_length;
            if spec.batching.max_batch_tokens < max {
                return Err(StartError::Encoder {
                    name: name(),
                    source: EncoderError::Config {
                        file: dir.clone(),
                        key: "batching.max_batch_tokens".into(),
                        reason: format!(
                            "{} cannot hold one text of the model's {max} tokens (max_seq_length); raise it, or lower model.max_seq_length",
                            spec.batching.max_batch_tokens
                        ),
                    },
                });
            }
            let signature = Signature::text(&encoder);
            return Ok(Loaded {
                model: ServedModel::Encoder(encoder),
                signature,
                platform: "prism_huggingface",
            });
        }
        ModelSource::Builtin { name, io } => {
            let model = builtin::by_name(name).expect("built-in names are validated with the config. This is a bug.");
            (model, "prism_builtin", format!("builtin:{name}"), io)
        }
        ModelSource::Layers { weights, layers, io } => {
            let file = WeightFile::open(weights).map_err(fail)?;
            let model = Model::load(&file, layers, io.input.features).map_err(fail)?;
            (model, "prism_safetensors", weights.display().to_string(), io)
        }
    };
    if model.out_features() != io.output.features {
        return Err(StartError::OutputWidth {
            name: name(),
            file,
            produced: model.out_features(),
            declared: io.output.features,
        });
    }
    Ok(Loaded {
        model: ServedModel::Rows(model),
        signature: Signature::rows(io),
        platform,
    })
}
