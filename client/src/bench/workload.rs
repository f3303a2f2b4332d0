//! The requests a run sends: shaped from the model's metadata with random values, or
//! taken from a file; encoded once, before the clock starts.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use prism_protocol::grpc::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use prism_protocol::grpc::{InferTensorContents, ModelInferRequest, json_parameters};
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::shm::{Contents, Region, Regions};
use crate::Client;
use crate::binary;
use crate::dtype::DType;
use crate::v2::{self, InferInput, InferRequest, TensorData};

/// Which protocol carries the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// V2 REST (HTTP/1.1).
    Http,
    /// V2 gRPC (`inference.GRPCInferenceService/ModelInfer`).
    Grpc,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        })
    }
}

/// Where the tensors lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SharedMemory {
    /// In the requests and answers.
    None,
    /// In POSIX shared memory registered with the server (Triton's system shared-memory
    /// extension): requests carry only where the tensors are.
    System,
}

/// One request, encoded for its protocol.
#[derive(Clone, Debug)]
pub enum Request {
    Http {
        body: Bytes,
        header_len: Option<usize>,
    },
    /// A `ModelInferRequest` encoded once, framed as gRPC frames a message (see
    /// [`grpc_frame`]): every call sends these bytes as they are.
    Grpc(Bytes),
}

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
    pub protocol: Protocol,
    pub shared_memory: SharedMemory,
    /// With shared memory: the most workers that run at once (each has its own output
    /// region).
    pub workers: usize,
}

/// Encoded requests, ready to send.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Where REST requests go.
    pub path: String,
    pub model: String,
    /// By slot, then by variant: worker `w` sends `requests[w % slots]`. One slot, except
    /// with shared memory, where each worker has its own output region.
    pub requests: Arc<Vec<Vec<Request>>>,
    /// Rows each request carries (for rows per second).
    pub rows: usize,
    /// Bytes of the first request's body (or message), for the report.
    pub body_bytes: usize,
    /// The shared-memory regions of the run, unregistered when the last clone is dropped.
    pub regions: Option<Arc<Regions>>,
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
            if spec.protocol != Protocol::Http || spec.shared_memory != SharedMemory::None {
                bail!("the plain format is a fixed REST body: it has no gRPC or shared-memory form");
            }
            return Ok(Workload {
                path,
                model: spec.model.clone(),
                body_bytes: body.len(),
                requests: Arc::new(vec![vec![Request::Http {
                    body: Bytes::from(body),
                    header_len: None,
                }]]),
                rows,
                regions: None,
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
        if spec.shared_memory == SharedMemory::System {
            return shared(client, spec, path, &requests, rows).await;
        }
        let encoded = requests.iter().map(|r| encode(spec, r)).collect::<Result<Vec<_>>>()?;
        Ok(Workload {
            path,
            model: spec.model.clone(),
            body_bytes: request_bytes(&encoded[0]),
            requests: Arc::new(vec![encoded]),
            rows,
            regions: None,
        })
    }
}

fn request_bytes(r: &Request) -> usize {
    match r {
        Request::Http { body, .. } => body.len(),
        Request::Grpc(framed) => framed.len() - GRPC_PREFIX,
    }
}

/// `r` for the spec's protocol and format.
fn encode(spec: &WorkloadSpec, r: &InferRequest) -> Result<Request> {
    Ok(match (spec.protocol, spec.format) {
        (_, Format::Plain) => unreachable!("plain bodies are sent as read"),
        (Protocol::Http, Format::Json) => Request::Http {
            body: Bytes::from(v2::to_vec(r)?),
            header_len: None,
        },
        (Protocol::Http, Format::Binary) => {
            let (body, header_len) = binary::encode_request(r, true)?;
            Request::Http {
                body: Bytes::from(body),
                header_len: Some(header_len),
            }
        }
        (Protocol::Grpc, format) => {
            Request::Grpc(grpc_frame(&grpc_request(&spec.model, r, format == Format::Binary)?)?)
        }
    })
}

/// The bytes before a gRPC message: its compression flag, then its length.
const GRPC_PREFIX: usize = 5;

/// `m` as one gRPC message on the wire: an uncompressed flag (0), the message's length as
/// a big-endian u32, then the message.
pub fn grpc_frame(m: &impl prost::Message) -> Result<Bytes> {
    let len = m.encoded_len();
    let prefix =
        u32::try_from(len).with_context(|| format!("a gRPC message holds at most 4 GiB, this one is {len} bytes"))?;
    let mut framed = Vec::with_capacity(GRPC_PREFIX + len);
    framed.push(0);
    framed.extend_from_slice(&prefix.to_be_bytes());
    m.encode(&mut framed).expect("a Vec grows as needed");
    Ok(framed.into())
}

/// A V2 request as a gRPC message: tensors as `raw_input_contents` (`raw`, as
/// `tritonclient.grpc` sends them) or as typed `contents`.
pub fn grpc_request(model: &str, r: &InferRequest, raw: bool) -> Result<ModelInferRequest> {
    let mut m = ModelInferRequest {
        model_name: model.into(),
        id: r.id.clone().unwrap_or_default(),
        parameters: json_parameters(r.parameters.as_ref()),
        outputs: r
            .outputs
            .iter()
            .flatten()
            .map(|o| InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: json_parameters(o.parameters.as_ref()),
            })
            .collect(),
        ..Default::default()
    };
    for i in &r.inputs {
        let dtype: DType = i.datatype.parse().with_context(|| format!("input `{}`", i.name))?;
        let mut t = InferInputTensor {
            name: i.name.clone(),
            datatype: i.datatype.clone(),
            shape: i.shape.clone(),
            parameters: json_parameters(i.parameters.as_ref()),
            contents: None,
        };
        if let Some(data) = &i.data {
            if raw || matches!(dtype, DType::F16 | DType::BF16) {
                let mut bytes = Vec::new();
                binary::encode_tensor(&i.name, dtype, data, &mut bytes)?;
                m.raw_input_contents.push(bytes.into());
            } else {
                t.contents = Some(typed_contents(&i.name, dtype, data)?);
            }
        }
        m.inputs.push(t);
    }
    Ok(m)
}

/// JSON data as gRPC's typed lists (the narrow integers widened, as the protocol has them).
fn typed_contents(name: &str, dtype: DType, data: &TensorData) -> Result<InferTensorContents> {
    let mut c = InferTensorContents::default();
    if let TensorData::Strings(s) = data {
        c.bytes_contents = s.iter().map(|s| Bytes::from(s.clone().into_bytes())).collect();
        return Ok(c);
    }
    // Integers as written (exact beyond f32's 2^24), other numbers as f64.
    let ints: Option<Vec<i128>> = match data {
        TensorData::Integers(v) => Some(v.clone()),
        _ => None,
    };
    let integer = matches!(
        dtype,
        DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::U8 | DType::U16 | DType::U32 | DType::U64
    );
    if let Some(v) = ints.filter(|_| integer) {
        match dtype {
            DType::I8 | DType::I16 | DType::I32 => c.int_contents = v.iter().map(|&x| x as i32).collect(),
            DType::I64 => c.int64_contents = v.iter().map(|&x| x as i64).collect(),
            DType::U8 | DType::U16 | DType::U32 => c.uint_contents = v.iter().map(|&x| x as u32).collect(),
            _ => c.uint64_contents = v.iter().map(|&x| x as u64).collect(),
        }
        return Ok(c);
    }
    let Some(values) = data.to_f32() else {
        bail!("input `{name}`: no numbers to send as {dtype}");
    };
    match dtype {
        DType::Bool => c.bool_contents = values.iter().map(|&v| v != 0.0).collect(),
        DType::I8 | DType::I16 | DType::I32 => c.int_contents = values.iter().map(|&v| v as i32).collect(),
        DType::I64 => c.int64_contents = values.iter().map(|&v| v as i64).collect(),
        DType::U8 | DType::U16 | DType::U32 => c.uint_contents = values.iter().map(|&v| v as u32).collect(),
        DType::U64 => c.uint64_contents = values.iter().map(|&v| v as u64).collect(),
        DType::F64 => c.fp64_contents = values.iter().map(|&v| f64::from(v)).collect(),
        _ => c.fp32_contents = values,
    }
    Ok(c)
}

/// The requests of a shared-memory run: every variant's inputs written into one input
/// region, one output region per worker; the requests name where their tensors lie.
async fn shared(
    client: &Client,
    spec: &WorkloadSpec,
    path: String,
    requests: &[InferRequest],
    rows: usize,
) -> Result<Workload> {
    let meta = client
        .model_metadata(&spec.model)
        .await
        .with_context(|| format!("reading the metadata of model `{}` to size its outputs", spec.model))?;
    let tag = format!("prism_bench_{}_{:08x}", std::process::id(), rand::random::<u32>());
    let input_region = format!("{tag}_in");
    // Every variant's inputs, one after another, and where each lies.
    let mut inputs = Vec::new();
    let mut places = Vec::new();
    for r in requests {
        let mut at = Vec::new();
        for i in &r.inputs {
            let dtype: DType = i.datatype.parse().with_context(|| format!("input `{}`", i.name))?;
            let data = i.data.as_ref().context("shared memory needs every input's data")?;
            let start = inputs.len();
            binary::encode_tensor(&i.name, dtype, data, &mut inputs)?;
            at.push((start, inputs.len() - start));
        }
        places.push(at);
    }
    // Each output's size, from the metadata: `-1` is the batch.
    let mut outputs = Vec::new();
    for o in &meta.outputs {
        let dtype: DType = o.datatype.parse().with_context(|| format!("output `{}`", o.name))?;
        let Some(size) = dtype.size() else {
            bail!(
                "output `{}` is {dtype}: shared memory needs outputs of a fixed-size datatype",
                o.name
            );
        };
        let elements: usize = o.shape.iter().map(|&d| if d < 0 { rows } else { d as usize }).product();
        outputs.push((o.name.clone(), elements * size));
    }
    let out_bytes: usize = outputs.iter().map(|(_, n)| n).sum();
    let slots = spec.workers.max(1);
    let mut regions = vec![Region {
        name: input_region.clone(),
        contents: Contents::Bytes(&inputs),
    }];
    regions.extend((0..slots).map(|w| Region {
        name: format!("{tag}_out{w}"),
        contents: Contents::Zeros(out_bytes.max(1)),
    }));
    let regions = Regions::create(client, regions).await?;
    let place = |region: &str, offset: usize, size: usize| {
        let p = json!({
            "shared_memory_region": region,
            "shared_memory_offset": offset,
            "shared_memory_byte_size": size,
        });
        Some(p.as_object().expect("an object").clone())
    };
    let mut by_slot = Vec::with_capacity(slots);
    for w in 0..slots {
        let out_region = format!("{tag}_out{w}");
        let variants = requests
            .iter()
            .zip(&places)
            .map(|(r, at)| {
                let mut offset = 0;
                let request = InferRequest {
                    id: None,
                    parameters: None,
                    inputs: r
                        .inputs
                        .iter()
                        .zip(at)
                        .map(|(i, &(start, size))| InferInput {
                            name: i.name.clone(),
                            shape: i.shape.clone(),
                            datatype: i.datatype.clone(),
                            parameters: place(&input_region, start, size),
                            data: None,
                        })
                        .collect(),
                    outputs: Some(
                        outputs
                            .iter()
                            .map(|(name, size)| {
                                let o = v2::RequestedOutput {
                                    name: name.clone(),
                                    parameters: place(&out_region, offset, *size),
                                };
                                offset += size;
                                o
                            })
                            .collect(),
                    ),
                };
                // No tensor travels: REST sends the JSON header alone.
                let json = WorkloadSpec {
                    format: Format::Json,
                    ..spec.clone()
                };
                encode(&json, &request)
            })
            .collect::<Result<Vec<_>>>()?;
        by_slot.push(variants);
    }
    Ok(Workload {
        path,
        model: spec.model.clone(),
        body_bytes: request_bytes(&by_slot[0][0]),
        requests: Arc::new(by_slot),
        rows,
        regions: Some(Arc::new(regions)),
    })
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
