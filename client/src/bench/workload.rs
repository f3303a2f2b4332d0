//! The requests a run sends: shaped from the model's metadata with random values, or
//! taken from a file; encoded once, before the clock starts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use rand::{Rng, SeedableRng};

use crate::Client;
use crate::binary;
use crate::dtype::DType;
use crate::v2::{self, InferInput, InferRequest, TensorData};

/// How requests travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// V2 JSON tensors.
    Json,
    /// V2 with the binary tensor data extension (inputs and outputs).
    Binary,
    /// A fixed JSON body POSTed to `--path`; only the HTTP status is checked. For
    /// servers that do not speak V2, and for like-for-like comparisons with them.
    Plain,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Binary => "binary",
            Format::Plain => "plain",
        })
    }
}

/// What to send.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub model: String,
    pub format: Format,
    /// Rows per request (the first dimension of each input).
    pub batch_size: usize,
    /// A V2 JSON request body to send instead of random inputs.
    pub input_file: Option<PathBuf>,
    /// `plain` mode: the path to POST to (default `/v2/models/{model}/infer`).
    pub path: Option<String>,
    /// Distinct random requests to cycle through.
    pub variants: usize,
    pub seed: u64,
}

/// Encoded request bodies, ready to send.
#[derive(Clone, Debug)]
pub struct Workload {
    pub path: String,
    /// `Inference-Header-Content-Length` of each body (binary format).
    pub bodies: Vec<(Bytes, Option<usize>)>,
    /// Rows each request carries (for rows per second).
    pub rows: usize,
    /// Bytes of the first body, for the report.
    pub body_bytes: usize,
}

impl Workload {
    pub async fn prepare(client: &Client, spec: &WorkloadSpec) -> Result<Workload> {
        let path = spec
            .path
            .clone()
            .unwrap_or_else(|| format!("/v2/models/{}/infer", spec.model));
        // `plain`: the file's bytes are the body, sent as they are (any JSON a server takes).
        if let (Format::Plain, Some(file)) = (spec.format, &spec.input_file) {
            let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let rows = v2::from_slice::<InferRequest>(&body)
                .ok()
                .and_then(|r| {
                    r.inputs
                        .first()
                        .and_then(|i| i.shape.first())
                        .map(|&r| r.max(1) as usize)
                })
                .unwrap_or(1);
            return Ok(Workload {
                path,
                body_bytes: body.len(),
                bodies: vec![(Bytes::from(body), None)],
                rows,
            });
        }
        let requests = match &spec.input_file {
            Some(file) => {
                let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let request: InferRequest =
                    v2::from_slice(&text).with_context(|| format!("{}: not a V2 inference request", file.display()))?;
                vec![request]
            }
            None if spec.format == Format::Plain => {
                bail!("the plain format sends a fixed body: give it with --input-file")
            }
            None => {
                let meta = client
                    .model_metadata(&spec.model)
                    .await
                    .with_context(|| format!("reading the metadata of model `{}` to shape its inputs", spec.model))?;
                let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
                (0..spec.variants.max(1))
                    .map(|_| random_request(&meta, spec.batch_size, &mut rng))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let rows = requests[0]
            .inputs
            .first()
            .and_then(|i| i.shape.first())
            .map_or(1, |&r| r.max(1) as usize);
        let bodies = requests
            .iter()
            .map(|r| -> Result<(Bytes, Option<usize>)> {
                Ok(match spec.format {
                    Format::Json => (Bytes::from(v2::to_vec(r)?), None),
                    Format::Plain => unreachable!("plain bodies are sent as read"),
                    Format::Binary => {
                        let (body, header_len) = binary::encode_request(r, true)?;
                        (Bytes::from(body), Some(header_len))
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let body_bytes = bodies[0].0.len();
        Ok(Workload {
            path,
            bodies,
            rows,
            body_bytes,
        })
    }
}

/// A request with random values for every input of `meta`: `-1` in the first dimension
/// becomes `batch_size`, elsewhere 1.
fn random_request(meta: &v2::ModelMetadata, batch_size: usize, rng: &mut impl Rng) -> Result<InferRequest> {
    let inputs = meta
        .inputs
        .iter()
        .map(|t| -> Result<InferInput> {
            let shape: Vec<i64> = t
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d >= 0 {
                        d
                    } else if i == 0 {
                        batch_size as i64
                    } else {
                        1
                    }
                })
                .collect();
            let n: i64 = shape.iter().product();
            let dtype: DType = t
                .datatype
                .parse()
                .with_context(|| format!("input `{}` of the model's metadata", t.name))?;
            let data = match dtype {
                DType::Bytes => TensorData::Strings((0..n).map(|i| format!("s{i}")).collect()),
                DType::Bool => TensorData::Bools((0..n).map(|_| rng.random_bool(0.5)).collect()),
                DType::F16 | DType::BF16 | DType::F32 | DType::F64 => {
                    TensorData::F32((0..n).map(|_| rng.random::<f32>()).collect())
                }
                _ => TensorData::F32((0..n).map(|_| rng.random_range(0..100) as f32).collect()),
            };
            Ok(InferInput {
                name: t.name.clone(),
                shape,
                datatype: t.datatype.clone(),
                parameters: None,
                data: Some(data),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(InferRequest {
        inputs,
        ..Default::default()
    })
}
