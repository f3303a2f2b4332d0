//! A V2 inference request, from its body to the domain [`Request`]: the JSON header
//! parsed, each input's data taken from JSON or from the binary part (Triton's binary
//! tensor extension), the request's parameters read. Nothing here knows what the request
//! is sent to: [`super::signature`] checks the inputs against that.

use std::time::Duration;

use bytes::Bytes;
use prism_protocol::DType;
use prism_protocol::v2::{self, InferRequest, Parameters, TensorData};

use super::tensor::{Carried, carried};
use super::{DecodeError, invalid};
use crate::shm::{Place, SharedMemory};
use crate::store::ObjectRef;

/// An inference request, as every protocol decodes it.
#[derive(Debug)]
pub struct Request {
    pub id: Option<String>,
    /// In the order the request lists them; no name twice.
    pub inputs: Vec<Input>,
    /// The outputs the request names (none: every output, as the defaults say).
    pub outputs: Vec<RequestedOutput>,
    /// `binary_data_output`: outputs in the binary part unless they say otherwise.
    pub binary_output: bool,
    /// `async`: answer at once with the refs the outputs will have.
    pub run_async: bool,
    /// `truncate` (texts, default true): cut a text longer than the model takes at its
    /// limit, rather than refuse it.
    pub truncate: bool,
    /// How long the client will wait: Triton's `timeout` parameter (microseconds) or
    /// Prism's `timeout_ms`.
    pub timeout: Option<Duration>,
}

/// One named input.
#[derive(Debug)]
pub struct Input {
    pub name: String,
    pub value: InputValue,
}

#[derive(Debug)]
pub enum InputValue {
    /// Data sent with the request.
    Tensor(Tensor),
    /// An object of the store (`parameters.object_ref`, Prism's extension), read when the
    /// request runs.
    Object(ObjectRef),
}

/// A tensor sent with a request, its shape not yet checked against its values.
#[derive(Debug)]
pub struct Tensor {
    pub datatype: DType,
    pub shape: Vec<i64>,
    pub values: Values,
}

#[derive(Debug)]
pub enum Values {
    /// JSON `data`.
    Json(TensorData),
    /// Little-endian bytes from the binary part: exactly `binary_data_size` of them (or
    /// a gRPC input's raw contents, or a view of a shared-memory region).
    Binary(Bytes),
}

/// An output the request names, and how it wants it.
#[derive(Debug)]
pub struct RequestedOutput {
    pub name: String,
    /// `binary_data`; the request's `binary_data_output` when absent.
    pub binary: Option<bool>,
    /// `object_ref`: keep it in the store and answer its ref.
    pub by_ref: bool,
    /// `shared_memory_region` (and offset, byte size): write it there instead of sending
    /// it.
    pub shared: Option<Place>,
}

/// Where the inputs with binary data find their bytes.
pub enum Binary {
    /// A REST body's binary part, after its JSON header: each input that announces
    /// `binary_data_size` takes that many bytes from the front, in order.
    Body(Bytes),
    /// gRPC's `raw_input_contents`: one entry per input, in order.
    PerInput(std::vec::IntoIter<Bytes>),
}

/// Refuses a compressed body (`Content-Encoding`): every V2 route reads bodies as sent.
pub fn check_encoding(content_encoding: Option<&[u8]>) -> Result<(), DecodeError> {
    match content_encoding {
        Some(e) if !e.eq_ignore_ascii_case(b"identity") => Err(DecodeError::UnsupportedEncoding(
            String::from_utf8_lossy(e).into_owned(),
        )),
        _ => Ok(()),
    }
}

/// The value of `Inference-Header-Content-Length`: the length of a binary body's JSON
/// header, if the body is binary.
pub fn header_length(value: Option<&[u8]>) -> Result<Option<usize>, DecodeError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let len: usize = std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            invalid(format!(
                "{}: expected a byte count, got {:?}",
                v2::HEADER_LENGTH,
                String::from_utf8_lossy(v)
            ))
        })?;
    if len == 0 {
        return Err(invalid(format!(
            "{} is 0 (a raw binary request without a JSON header), which Prism does not support; send a JSON header",
            v2::HEADER_LENGTH
        )));
    }
    Ok(Some(len))
}

/// A V2 body as `(JSON header, binary part)`: checks its encoding and splits it where
/// `header_length` (the `Inference-Header-Content-Length` value) says; the binary part is
/// empty for a JSON body.
pub fn body_parts(
    content_encoding: Option<&[u8]>,
    header_length_value: Option<&[u8]>,
    body: Bytes,
) -> Result<(Bytes, Bytes), DecodeError> {
    check_encoding(content_encoding)?;
    let Some(len) = header_length(header_length_value)? else {
        return Ok((body, Bytes::new()));
    };
    if len > body.len() {
        return Err(invalid(format!(
            "{} says the JSON header is {len} bytes, but the whole body is only {} bytes",
            v2::HEADER_LENGTH,
            body.len()
        )));
    }
    let mut header = body;
    let binary = header.split_off(len);
    Ok((header, binary))
}

/// A whole V2 body, decoded: [`body_parts`], then [`decode_parsed`]; inputs in shared
/// memory are views of `shm`'s regions.
pub fn decode_body(
    content_encoding: Option<&[u8]>,
    header_length_value: Option<&[u8]>,
    body: Bytes,
    shm: &SharedMemory,
) -> Result<Request, DecodeError> {
    let (header, binary) = body_parts(content_encoding, header_length_value, body)?;
    decode_parsed(parse(&header)?, Binary::Body(binary), shm)
}

/// Parses an inference request's JSON header.
fn parse(header: &[u8]) -> Result<InferRequest, DecodeError> {
    v2::from_slice(header).map_err(|e| {
        let hint = if e.to_string().starts_with("trailing characters") {
            format!(" (a body with binary tensors needs the {} header)", v2::HEADER_LENGTH)
        } else {
            String::new()
        };
        invalid(format!("invalid inference request JSON: {e}{hint}"))
    })
}

/// A request from its JSON `header` and the `binary` part after it (empty for JSON).
/// The binary part belongs to the inputs with `binary_data_size`, in the order the
/// request lists them.
/// (No shared memory: a server without it refuses inputs that name a region.)
pub fn decode(header: &[u8], binary: Bytes) -> Result<Request, DecodeError> {
    decode_parsed(parse(header)?, Binary::Body(binary), &SharedMemory::new(false))
}

/// A request already parsed (REST's JSON header, or a gRPC message in the same terms),
/// with where its binary inputs lie; an input in shared memory is a view of its region
/// in `shm`, read in place.
pub fn decode_parsed(request: InferRequest, mut binary: Binary, shm: &SharedMemory) -> Result<Request, DecodeError> {
    let binary_len = match &binary {
        Binary::Body(b) => b.len(),
        Binary::PerInput(raw) => raw.len(),
    };
    let mut claimed = 0u64;
    let mut inputs: Vec<Input> = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        if inputs.iter().any(|i| i.name == input.name) {
            return Err(invalid(format!("input `{}` is given more than once", input.name)));
        }
        let value = match (
            input_ref(&input)?,
            shared_place(&input.name, input.parameters.as_ref())?,
        ) {
            (Some(r), _) => InputValue::Object(r),
            (None, Some(place)) => {
                if input.data.is_some() || has_binary_data_size(&input) {
                    return Err(invalid(format!(
                        "input `{}`: has both `shared_memory_region` and data; send one",
                        input.name
                    )));
                }
                let bytes = shm
                    .read(&place)
                    .map_err(|e| invalid(format!("input `{}`: {e}", input.name)))?;
                InputValue::Tensor(Tensor {
                    datatype: datatype(&input.name, &input.datatype)?,
                    shape: input.shape,
                    values: Values::Binary(bytes),
                })
            }
            (None, None) => InputValue::Tensor(tensor(
                input.name.as_str(),
                input.datatype.as_str(),
                input.shape,
                input.data,
                input.parameters.as_ref(),
                &mut binary,
                &mut claimed,
            )?),
        };
        inputs.push(Input {
            name: input.name,
            value,
        });
    }
    match binary {
        Binary::Body(rest) if !rest.is_empty() => {
            return Err(invalid(if claimed == 0 {
                format!(
                    "the body has {binary_len} bytes of binary data after the JSON header, but no input has `binary_data_size`"
                )
            } else {
                format!("the body has {binary_len} bytes of binary data, but the inputs announce only {claimed}")
            }));
        }
        Binary::PerInput(rest) if rest.len() > 0 => {
            return Err(invalid(format!(
                "raw_input_contents has {binary_len} entries, more than the request's inputs take ({})",
                binary_len - rest.len()
            )));
        }
        _ => {}
    }
    let parameter = |key: &str| v2::bool_parameter(request.parameters.as_ref(), key).unwrap_or(false);
    let mut outputs = Vec::new();
    for o in request.outputs.into_iter().flatten() {
        if outputs.iter().any(|w: &RequestedOutput| w.name == o.name) {
            return Err(invalid(format!("output `{}` is requested more than once", o.name)));
        }
        let shared = shared_place(&o.name, o.parameters.as_ref())?;
        let by_ref = v2::bool_parameter(o.parameters.as_ref(), "object_ref").unwrap_or(false);
        if shared.is_some() && by_ref {
            return Err(invalid(format!(
                "output `{}`: asks for both `object_ref` and `shared_memory_region`; ask for one",
                o.name
            )));
        }
        outputs.push(RequestedOutput {
            binary: v2::bool_parameter(o.parameters.as_ref(), "binary_data"),
            by_ref,
            shared,
            name: o.name,
        });
    }
    Ok(Request {
        id: request.id,
        inputs,
        outputs,
        binary_output: parameter("binary_data_output"),
        run_async: parameter("async"),
        truncate: match request.parameters.as_ref().and_then(|p| p.get("truncate")) {
            None => true,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| invalid(format!("parameter `truncate`: expected true or false, got {v}")))?,
        },
        timeout: request_timeout(request.parameters.as_ref())?,
    })
}

fn datatype(name: &str, datatype: &str) -> Result<DType, DecodeError> {
    datatype.parse().map_err(|e| invalid(format!("input `{name}`: {e}")))
}

/// A tensor's place in shared memory, if its parameters give one: `shared_memory_region`
/// with `shared_memory_byte_size` (and `shared_memory_offset`, default 0).
fn shared_place(name: &str, parameters: Option<&Parameters>) -> Result<Option<Place>, DecodeError> {
    let get = |key: &str| parameters.and_then(|p| p.get(key));
    let Some(region) = get("shared_memory_region") else {
        if get("shared_memory_byte_size").is_some() || get("shared_memory_offset").is_some() {
            return Err(invalid(format!(
                "`{name}`: has shared_memory_byte_size or shared_memory_offset but no shared_memory_region"
            )));
        }
        return Ok(None);
    };
    let region = region.as_str().ok_or_else(|| {
        invalid(format!(
            "`{name}`: shared_memory_region must be a string (a region's name), got {region}"
        ))
    })?;
    let count = |key: &str| -> Result<Option<u64>, DecodeError> {
        get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| invalid(format!("`{name}`: {key} must be a non-negative integer, got {v}")))
            })
            .transpose()
    };
    let byte_size = count("shared_memory_byte_size")?
        .ok_or_else(|| invalid(format!("`{name}`: shared_memory_region needs shared_memory_byte_size")))?;
    Ok(Some(Place {
        region: region.to_owned(),
        offset: count("shared_memory_offset")?.unwrap_or(0),
        byte_size,
    }))
}

/// An input that carries its data: JSON `data`, or `binary_data_size` bytes taken from
/// the front of `binary` (counted in `claimed`).
fn tensor(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
    data: Option<TensorData>,
    parameters: Option<&Parameters>,
    binary: &mut Binary,
    claimed: &mut u64,
) -> Result<Tensor, DecodeError> {
    let datatype = self::datatype(name, datatype)?;
    let values = match carried(data.as_ref(), parameters).map_err(|e| invalid(format!("input `{name}`: {e}")))? {
        Carried::Json(_) => Values::Json(data.expect("carried in `data`")),
        Carried::Binary(size) => match binary {
            Binary::Body(body) => {
                if (body.len() as u64) < size {
                    return Err(invalid(format!(
                        "input `{name}`: the body ends after {} bytes of binary data, but binary_data_size announces {size} (truncated body?)",
                        body.len()
                    )));
                }
                *claimed += size;
                Values::Binary(body.split_to(size as usize))
            }
            Binary::PerInput(raw) => Values::Binary(raw.next().ok_or_else(|| {
                invalid(format!(
                    "input `{name}`: raw_input_contents has no entry for it (one per input, in order)"
                ))
            })?),
        },
    };
    Ok(Tensor {
        datatype,
        shape,
        values,
    })
}

/// The object an input names with `parameters.object_ref` (Prism's extension), if any;
/// an input may not carry data as well.
fn input_ref(input: &v2::InferInput) -> Result<Option<ObjectRef>, DecodeError> {
    let Some(v) = input.parameters.as_ref().and_then(|p| p.get("object_ref")) else {
        return Ok(None);
    };
    let name = &input.name;
    let r: ObjectRef = v
        .as_str()
        .ok_or_else(|| {
            invalid(format!(
                "input `{name}`: parameter `object_ref` must be a string (an object ref), got {v}"
            ))
        })?
        .parse()
        .map_err(|e| invalid(format!("input `{name}`: {e}")))?;
    if input.data.is_some() || has_binary_data_size(input) {
        return Err(invalid(format!(
            "input `{name}`: has both `object_ref` and data; send one"
        )));
    }
    Ok(Some(r))
}

/// Whether `input` announces binary data (with any value: a bad one is refused where the
/// data is read).
fn has_binary_data_size(input: &v2::InferInput) -> bool {
    input
        .parameters
        .as_ref()
        .is_some_and(|p| p.contains_key("binary_data_size"))
}

/// The request's deadline: Triton's `timeout` parameter (microseconds) or Prism's
/// `timeout_ms`.
fn request_timeout(parameters: Option<&Parameters>) -> Result<Option<Duration>, DecodeError> {
    let parameter = |key: &str| parameters.and_then(|p| p.get(key));
    let positive = |key: &str, unit: &str, v: &serde_json::Value| {
        v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
            invalid(format!(
                "parameter `{key}`: expected a positive number of {unit}, got {v}"
            ))
        })
    };
    match (parameter("timeout"), parameter("timeout_ms")) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(invalid(
            "give either `timeout` (microseconds) or `timeout_ms`, not both",
        )),
        (Some(v), None) => Ok(Some(Duration::from_micros(positive("timeout", "microseconds", v)?))),
        (None, Some(v)) => Ok(Some(Duration::from_millis(positive("timeout_ms", "milliseconds", v)?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(header: &str, binary: &'static [u8]) -> String {
        match decode(header.as_bytes(), Bytes::from_static(binary)) {
            Ok(r) => panic!("expected a refusal, got {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn binary_parts_go_to_the_inputs_that_announce_them_in_order() {
        let header = r#"{"inputs":[
            {"name":"A","shape":[2],"datatype":"UINT8","parameters":{"binary_data_size":2}},
            {"name":"B","shape":[1],"datatype":"FP32","data":[1.5]},
            {"name":"C","shape":[3],"datatype":"UINT8","parameters":{"binary_data_size":3}}]}"#;
        let r = decode(header.as_bytes(), Bytes::from_static(&[1, 2, 7, 8, 9])).unwrap();
        let bytes = |i: usize| match &r.inputs[i].value {
            InputValue::Tensor(Tensor {
                values: Values::Binary(b),
                ..
            }) => b.to_vec(),
            other => panic!("binary expected, got {other:?}"),
        };
        assert_eq!((bytes(0), bytes(2)), (vec![1, 2], vec![7, 8, 9]));
        assert!(matches!(
            &r.inputs[1].value,
            InputValue::Tensor(Tensor {
                values: Values::Json(_),
                ..
            })
        ));
    }

    #[test]
    fn binary_data_that_does_not_add_up_is_refused() {
        let one = r#"{"inputs":[{"name":"A","shape":[4],"datatype":"UINT8","parameters":{"binary_data_size":4}}]}"#;
        assert!(
            refused(one, &[1, 2])
                .contains("the body ends after 2 bytes of binary data, but binary_data_size announces 4")
        );
        assert!(refused(one, &[0; 6]).contains("the body has 6 bytes of binary data, but the inputs announce only 4"));
        let json = r#"{"inputs":[{"name":"A","shape":[1],"datatype":"UINT8","data":[1]}]}"#;
        assert!(
            refused(json, &[0; 3])
                .contains("3 bytes of binary data after the JSON header, but no input has `binary_data_size`")
        );
    }

    #[test]
    fn an_input_carries_one_kind_of_data_and_comes_once() {
        let r = "ab".repeat(16);
        let both = format!(
            r#"{{"inputs":[{{"name":"A","shape":[1],"datatype":"FP32","data":[1],"parameters":{{"object_ref":"{r}"}}}}]}}"#
        );
        assert!(refused(&both, &[]).contains("input `A`: has both `object_ref` and data"));
        let data_and_binary =
            r#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#;
        assert!(refused(data_and_binary, &[0; 4]).contains("has both `data` and `binary_data_size`"));
        let neither = r#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP32"}]}"#;
        assert!(refused(neither, &[]).contains("input `A`: has no `data`"));
        let twice = r#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP32","data":[1]},{"name":"A","shape":[1],"datatype":"FP32","data":[2]}]}"#;
        assert!(refused(twice, &[]).contains("input `A` is given more than once"));
        let bad_ref = r#"{"inputs":[{"name":"A","parameters":{"object_ref":"nope"}}]}"#;
        assert!(refused(bad_ref, &[]).contains("is not an object ref"));
        let dtype = r#"{"inputs":[{"name":"A","shape":[1],"datatype":"FLOAT32","data":[1]}]}"#;
        assert!(refused(dtype, &[]).contains("input `A`: unknown datatype `FLOAT32`"));
    }

    #[test]
    fn request_parameters_are_read_and_checked() {
        let r = decode(
            br#"{"id":"x","inputs":[],"parameters":{"timeout":1500,"async":true,"binary_data_output":true},
                "outputs":[{"name":"Y","parameters":{"object_ref":true,"binary_data":false}}]}"#,
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("x"));
        assert_eq!(r.timeout, Some(Duration::from_micros(1500)));
        assert!(r.run_async && r.binary_output);
        assert_eq!((r.outputs[0].binary, r.outputs[0].by_ref), (Some(false), true));
        let ms = decode(br#"{"inputs":[],"parameters":{"timeout_ms":30}}"#, Bytes::new()).unwrap();
        assert_eq!(ms.timeout, Some(Duration::from_millis(30)));
        assert!(
            refused(r#"{"inputs":[],"parameters":{"timeout":0}}"#, &[])
                .contains("expected a positive number of microseconds")
        );
        assert!(refused(r#"{"inputs":[],"parameters":{"timeout":1,"timeout_ms":1}}"#, &[]).contains("not both"));
    }

    #[test]
    fn a_body_is_split_where_its_header_length_says() {
        let (h, b) = body_parts(None, Some(b"2"), Bytes::from_static(b"{}xyz")).unwrap();
        assert_eq!((&h[..], &b[..]), (&b"{}"[..], &b"xyz"[..]));
        let (h, b) = body_parts(Some(b"identity"), None, Bytes::from_static(b"{}")).unwrap();
        assert_eq!((&h[..], b.len()), (&b"{}"[..], 0));
        assert_eq!(
            body_parts(Some(b"gzip"), None, Bytes::new()).unwrap_err(),
            DecodeError::UnsupportedEncoding("gzip".into())
        );
        let err = body_parts(None, Some(b"9"), Bytes::from_static(b"{}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("says the JSON header is 9 bytes, but the whole body is only 2 bytes"),
            "{err}"
        );
        assert!(header_length(Some(b"0")).unwrap_err().to_string().contains("is 0"));
        assert!(
            header_length(Some(b"ten"))
                .unwrap_err()
                .to_string()
                .contains("expected a byte count, got \"ten\"")
        );
        let err = refused("{\"inputs\":[]}xyz", &[]);
        assert!(
            err.contains("needs the Inference-Header-Content-Length header"),
            "{err}"
        );
    }
}
