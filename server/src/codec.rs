//! From an HTTP body to a validated input matrix, and from the model's answer to a V2
//! response, in JSON or with the binary tensor data extension.
//!
//! Every refusal names the input and says what was expected and what came.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use ndarray::Array2;
use prism_config::Deployment as Spec;
use prism_protocol::DType;
use prism_protocol::v2::{self, InferRequest, InferResponse, Parameters, TensorData};

use crate::batcher::Rows;
use crate::error::ApiError;
use crate::store::{Lease, ObjectRef};

/// A validated inference request.
pub struct Decoded {
    pub id: Option<String>,
    pub input: Source,
    /// Whether the output is wanted in the binary part of the answer.
    pub binary_output: bool,
    /// Whether the output is kept in the object store and answered as its ref.
    pub output_ref: bool,
    /// `parameters.async`: answer 202 with the output's ref at once.
    pub run_async: bool,
    /// How long the client will wait: Triton's `timeout` parameter (microseconds) or
    /// Prism's `timeout_ms`. A request not answered by then is dropped from its queue.
    pub timeout: Option<std::time::Duration>,
}

/// Where a request's input rows come from.
pub enum Source {
    /// `[rows, in_features]`, from the request body.
    Inline(Array2<f32>),
    /// An object of the store (`parameters.object_ref`), read when the request runs.
    Object(ObjectRef),
}

/// The rows of an object passed as the model's input: it must be `[rows, features]` of a
/// numeric type. FP32 objects are read in place.
pub fn object_rows(spec: &Spec, lease: Lease) -> Result<Rows, ApiError> {
    let want = &spec.input;
    let name = &want.name;
    let meta = &lease.meta;
    let rows = match meta.shape.as_slice() {
        [rows, f] if *f == want.features && *rows >= 1 => *rows,
        other => {
            return Err(bad(format!(
                "input `{name}`: object {} has shape {other:?}; the model expects [-1, {}] (rows, then {} value(s) per row)",
                lease.object_ref, want.features, want.features
            )));
        }
    };
    if rows > spec.batching.max_batch_size {
        return Err(bad(format!(
            "input `{name}`: object {} has {rows} rows, more than the model's max_batch_size of {}",
            lease.object_ref, spec.batching.max_batch_size
        )));
    }
    if meta.datatype == DType::F32 {
        return Ok(Rows::Object {
            lease,
            rows,
            cols: want.features,
        });
    }
    let values = lease.to_f32().into_owned();
    Ok(Rows::Owned(
        Array2::from_shape_vec((rows, want.features), values).expect("the object's length matches its shape"),
    ))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Refuses a compressed body: every V2 route reads bodies as sent.
pub fn check_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_ENCODING) {
        Some(e) if !e.as_bytes().eq_ignore_ascii_case(b"identity") => Err(ApiError::UnsupportedEncoding(
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
        )),
        _ => Ok(()),
    }
}

/// `Inference-Header-Content-Length`: the length of a binary body's JSON header, if the
/// body is binary.
pub fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(v) = headers.get(v2::HEADER_LENGTH) else {
        return Ok(None);
    };
    let len: usize = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| bad(format!("{}: expected a byte count, got {v:?}", v2::HEADER_LENGTH)))?;
    if len == 0 {
        return Err(bad(format!(
            "{} is 0 (a raw binary request without a JSON header), which Prism does not support; send a JSON header",
            v2::HEADER_LENGTH
        )));
    }
    Ok(Some(len))
}

/// A V2 body as `(JSON header, binary part)`: checks its encoding and splits it where
/// `Inference-Header-Content-Length` says (the binary part is empty for a JSON body).
pub fn body_parts(headers: &HeaderMap, body: &Bytes) -> Result<(Bytes, Bytes), ApiError> {
    check_encoding(headers)?;
    let Some(len) = header_length(headers)? else {
        return Ok((body.clone(), Bytes::new()));
    };
    if len > body.len() {
        return Err(bad(format!(
            "{} says the JSON header is {len} bytes, but the whole body is only {} bytes",
            v2::HEADER_LENGTH,
            body.len()
        )));
    }
    Ok((body.slice(..len), body.slice(len..)))
}

/// Parses an inference request's JSON header.
pub fn parse_request(header: &[u8]) -> Result<InferRequest, ApiError> {
    v2::from_slice(header).map_err(|e| {
        let hint = if e.to_string().starts_with("trailing characters") {
            format!(" (a body with binary tensors needs the {} header)", v2::HEADER_LENGTH)
        } else {
            String::new()
        };
        bad(format!("invalid inference request JSON: {e}{hint}"))
    })
}

/// The object an input names with `parameters.object_ref` (Prism's extension), if any;
/// an input may not carry data as well.
pub fn input_ref(input: &v2::InferInput) -> Result<Option<ObjectRef>, ApiError> {
    let Some(v) = input.parameters.as_ref().and_then(|p| p.get("object_ref")) else {
        return Ok(None);
    };
    let name = &input.name;
    let r: ObjectRef = v
        .as_str()
        .ok_or_else(|| {
            bad(format!(
                "input `{name}`: parameter `object_ref` must be a string (an object ref), got {v}"
            ))
        })?
        .parse()
        .map_err(|e| bad(format!("input `{name}`: {e}")))?;
    if input.data.is_some() || v2::binary_data_size(input.parameters.as_ref()).is_some() {
        return Err(bad(format!("input `{name}`: has both `object_ref` and data; send one")));
    }
    Ok(Some(r))
}

/// The request's deadline: Triton's `timeout` parameter (microseconds) or Prism's
/// `timeout_ms`.
pub fn request_timeout(parameters: Option<&Parameters>) -> Result<Option<Duration>, ApiError> {
    let parameter = |key: &str| parameters.and_then(|p| p.get(key));
    let positive = |key: &str, unit: &str, v: &serde_json::Value| {
        v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
            bad(format!(
                "parameter `{key}`: expected a positive number of {unit}, got {v}"
            ))
        })
    };
    match (parameter("timeout"), parameter("timeout_ms")) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(bad("give either `timeout` (microseconds) or `timeout_ms`, not both")),
        (Some(v), None) => Ok(Some(Duration::from_micros(positive("timeout", "microseconds", v)?))),
        (None, Some(v)) => Ok(Some(Duration::from_millis(positive("timeout_ms", "milliseconds", v)?))),
    }
}

/// Parses and validates a request for `spec`. `binary` is the part of the body after the
/// JSON header (empty for a JSON-only request).
pub fn decode(spec: &Spec, header: &[u8], binary: &Bytes) -> Result<Decoded, ApiError> {
    let request = parse_request(header)?;
    let model = &spec.name;
    let want = &spec.input;

    // Inputs: exactly the model's one input.
    for (i, input) in request.inputs.iter().enumerate() {
        if input.name != want.name {
            return Err(bad(format!(
                "model `{model}` has no input `{}`; its input is `{}`",
                input.name, want.name
            )));
        }
        if request.inputs[..i].iter().any(|p| p.name == input.name) {
            return Err(bad(format!("input `{}` is given more than once", input.name)));
        }
    }
    let Some(input) = request.inputs.first() else {
        return Err(bad(format!(
            "input `{}` is missing (the request has no inputs)",
            want.name
        )));
    };
    let source = match input_ref(input)? {
        None => Source::Inline(inline_rows(spec, input, binary)?),
        Some(r) => {
            if !binary.is_empty() {
                return Err(bad(format!(
                    "the body has {} bytes of binary data after the JSON header, but no input has `binary_data_size`",
                    binary.len()
                )));
            }
            Source::Object(r)
        }
    };

    let flags = output_flags(&request, ("model", model), &spec.output.name)?;
    let timeout = request_timeout(request.parameters.as_ref())?;
    Ok(Decoded {
        id: request.id,
        input: source,
        binary_output: flags.binary_output,
        output_ref: flags.output_ref,
        run_async: flags.run_async,
        timeout,
    })
}

/// How a request wants its one output answered.
pub struct OutputFlags {
    /// In the binary part of the answer (`binary_data_output`, or the output's
    /// `binary_data`).
    pub binary_output: bool,
    /// Kept in the object store and answered as its ref (the output's `object_ref`).
    pub output_ref: bool,
    /// `parameters.async`: answer 202 with the output's ref at once.
    pub run_async: bool,
}

/// The output flags of `request` for `(kind, name)` (a `model` or a `pipeline`), whose
/// only output is `output`: a requested output with another name is refused.
pub fn output_flags(
    request: &v2::InferRequest,
    (kind, name): (&str, &str),
    output: &str,
) -> Result<OutputFlags, ApiError> {
    let parameter = |key: &str| v2::bool_parameter(request.parameters.as_ref(), key).unwrap_or(false);
    let binary_default = parameter("binary_data_output");
    let mut flags = OutputFlags {
        binary_output: binary_default,
        output_ref: false,
        run_async: parameter("async"),
    };
    for o in request.outputs.iter().flatten() {
        if o.name != output {
            return Err(bad(format!(
                "{kind} `{name}` has no output `{}`; its output is `{output}`",
                o.name
            )));
        }
        flags.binary_output = v2::bool_parameter(o.parameters.as_ref(), "binary_data").unwrap_or(binary_default);
        flags.output_ref = v2::bool_parameter(o.parameters.as_ref(), "object_ref").unwrap_or(false);
    }
    Ok(flags)
}

/// The rows of an input that carries its data (JSON or binary), checked against the
/// model's input.
fn inline_rows(spec: &Spec, input: &v2::InferInput, binary: &Bytes) -> Result<Array2<f32>, ApiError> {
    let want = &spec.input;
    let name = &input.name;

    let dtype: DType = input
        .datatype
        .parse()
        .map_err(|e| bad(format!("input `{name}`: {e}")))?;
    if !dtype.is_numeric() {
        return Err(bad(format!(
            "input `{name}`: datatype {dtype} cannot be converted to the model's {}; send a numeric datatype",
            want.datatype
        )));
    }
    let rows = match input.shape.as_slice() {
        [rows, f] if *rows >= 1 && *f == want.features as i64 => *rows as usize,
        [rows, _] if *rows < 1 => {
            return Err(bad(format!(
                "input `{name}`: shape {:?} has {rows} rows; give the actual number of rows, at least 1 (the -1 in the model's metadata marks the batch dimension)",
                input.shape
            )));
        }
        other => {
            return Err(bad(format!(
                "input `{name}`: expected shape [-1, {}] (rows, then {} value(s) per row), got {other:?}",
                want.features, want.features
            )));
        }
    };
    if rows > spec.batching.max_batch_size {
        return Err(bad(format!(
            "input `{name}`: {rows} rows exceed the model's max_batch_size of {}; split the request",
            spec.batching.max_batch_size
        )));
    }
    let count = rows * want.features;
    let shape = &input.shape;

    // Reserved only once the data's length has been checked against the shape.
    let mut values = Vec::new();
    match (&input.data, v2::binary_data_size(input.parameters.as_ref())) {
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "input `{name}`: has both `data` and `binary_data_size`; send one"
            )));
        }
        (None, None) => {
            return Err(bad(format!(
                "input `{name}`: has no `data` (and no `binary_data_size` parameter for binary data)"
            )));
        }
        (Some(data), None) => {
            if !binary.is_empty() {
                return Err(bad(format!(
                    "the body has {} bytes of binary data after the JSON header, but no input has `binary_data_size`",
                    binary.len()
                )));
            }
            if data.len() != count {
                return Err(bad(format!(
                    "input `{name}`: shape {shape:?} needs {count} values, got {}",
                    data.len()
                )));
            }
            values = data
                .to_f32()
                .ok_or_else(|| bad(format!("input `{name}`: datatype {dtype} needs numbers, got strings")))?;
        }
        (None, Some(size)) => {
            let elem = dtype.size().expect("numeric types have a size");
            let need = (count * elem) as u64;
            if size != need {
                return Err(bad(format!(
                    "input `{name}`: binary_data_size is {size} bytes, but shape {shape:?} of {dtype} needs {need} bytes"
                )));
            }
            if (binary.len() as u64) < size {
                return Err(bad(format!(
                    "input `{name}`: the body ends after {} bytes of binary data, but binary_data_size announces {size} (truncated body?)",
                    binary.len()
                )));
            }
            if binary.len() as u64 > size {
                return Err(bad(format!(
                    "the body has {} bytes of binary data, but the inputs announce only {size}",
                    binary.len()
                )));
            }
            values.reserve_exact(count);
            dtype.decode_le(binary, &mut values);
        }
    }
    Ok(Array2::from_shape_vec((rows, want.features), values).expect("the length was checked against the shape"))
}

/// `values` as JSON data of `dtype`: integers without a fraction, booleans as `true` /
/// `false`, each converted as the binary form would be (a cast: integers round toward
/// zero and saturate).
fn json_values(dtype: DType, values: Vec<f32>) -> TensorData {
    let ints = |f: fn(f32) -> i128| TensorData::Integers(values.iter().map(|&v| f(v)).collect());
    match dtype {
        DType::F32 => TensorData::F32(values),
        DType::F16 => TensorData::Numbers(values.iter().map(|&v| f64::from(half::f16::from_f32(v))).collect()),
        DType::BF16 => TensorData::Numbers(values.iter().map(|&v| f64::from(half::bf16::from_f32(v))).collect()),
        DType::F64 => TensorData::Numbers(values.iter().map(|&v| f64::from(v)).collect()),
        DType::Bool => TensorData::Bools(values.iter().map(|&v| v != 0.0).collect()),
        DType::U8 => ints(|v| i128::from(v as u8)),
        DType::U16 => ints(|v| i128::from(v as u16)),
        DType::U32 => ints(|v| i128::from(v as u32)),
        DType::U64 => ints(|v| i128::from(v as u64)),
        DType::I8 => ints(|v| i128::from(v as i8)),
        DType::I16 => ints(|v| i128::from(v as i16)),
        DType::I32 => ints(|v| i128::from(v as i32)),
        DType::I64 => ints(|v| i128::from(v as i64)),
        DType::Bytes => unreachable!("outputs are numeric (validated with the config). This is a bug."),
    }
}

/// The answer, as `(JSON header, binary part)`; the binary part is empty for JSON.
pub fn encode(
    spec: &Spec,
    version: &str,
    id: Option<String>,
    output: &Array2<f32>,
    binary: bool,
) -> (Vec<u8>, Vec<u8>) {
    let dtype = spec.output.datatype;
    let values = output
        .as_slice()
        .map(std::borrow::Cow::Borrowed)
        .unwrap_or_else(|| output.iter().copied().collect::<Vec<_>>().into());
    let mut tail = Vec::new();
    let (data, parameters) = if binary {
        dtype.encode_le(&values, &mut tail);
        let mut p = Parameters::new();
        p.insert("binary_data_size".into(), tail.len().into());
        (None, Some(p))
    } else {
        (Some(json_values(dtype, values.into_owned())), None)
    };
    let response = InferResponse {
        model_name: spec.name.clone(),
        model_version: Some(version.to_owned()),
        id,
        parameters: None,
        outputs: vec![v2::InferOutput {
            name: spec.output.name.clone(),
            shape: vec![output.nrows() as i64, output.ncols() as i64],
            datatype: dtype.to_string(),
            parameters,
            data,
        }],
    };
    let header = v2::to_vec(&response).expect("a response always serializes");
    (header, tail)
}
