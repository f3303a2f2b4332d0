//! V2 over gRPC, both ways: a `ModelInferRequest` into the same domain [`Request`] a REST
//! body becomes (through [`super::request::decode_parsed`], so every rule of a V2 request
//! is the REST one), and an [`Answer`] into a `ModelInferResponse`.
//!
//! * Inputs arrive as `raw_input_contents` (one entry per input that carries bytes, in
//!   order: what `tritonclient.grpc` always sends) or as typed `contents` (what KServe's
//!   clients may send), never both. BYTES elements in `bytes_contents` become Triton's
//!   BYTES encoding (each a 4-byte little-endian length, then its bytes).
//! * Outputs are answered as `raw_output_contents`, one entry per output (empty for an
//!   output that carries no data: a ref, or one written to shared memory), since
//!   `tritonclient.grpc` decodes nothing else.
//! * Parameters (`InferParameter`) become the JSON values REST's parameters are, and back.

use std::collections::HashMap;

use bytes::Bytes;
use prism_protocol::grpc::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse, infer_parameter::ParameterChoice,
    model_infer_response::InferOutputTensor,
};
use prism_protocol::v2::{self, InferInput, InferRequest, Parameters, TensorData};
use serde_json::Value;

use super::request::{Binary, decode_parsed};
use super::response::{Written, written};
use super::{Answer, DecodeError, Request, invalid};
use crate::serving::MODEL_VERSION;
use crate::shm::SharedMemory;

/// gRPC parameters as the JSON values REST's parameters are.
pub fn parameters(p: HashMap<String, InferParameter>) -> Option<Parameters> {
    if p.is_empty() {
        return None;
    }
    let value = |p: InferParameter| match p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
        Some(ParameterChoice::Int64Param(n)) => n.into(),
        Some(ParameterChoice::Uint64Param(n)) => n.into(),
        Some(ParameterChoice::DoubleParam(x)) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
        Some(ParameterChoice::StringParam(s)) => Value::String(s),
        None => Value::Null,
    };
    Some(p.into_iter().map(|(k, v)| (k, value(v))).collect())
}

/// Whether typed contents hold any element.
fn has_elements(c: &InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

/// Typed contents as JSON `data` would give them; exactly one of the lists may be set.
fn contents_data(name: &str, c: InferTensorContents) -> Result<TensorData, DecodeError> {
    let set = [
        !c.bool_contents.is_empty(),
        !c.int_contents.is_empty(),
        !c.int64_contents.is_empty(),
        !c.uint_contents.is_empty(),
        !c.uint64_contents.is_empty(),
        !c.fp32_contents.is_empty(),
        !c.fp64_contents.is_empty(),
    ];
    if set.iter().filter(|&&s| s).count() > 1 {
        return Err(invalid(format!(
            "input `{name}`: its contents fill more than one typed list; use the one of its datatype"
        )));
    }
    let ints = |v: Vec<i128>| TensorData::Integers(v);
    Ok(if !c.bool_contents.is_empty() {
        TensorData::Bools(c.bool_contents)
    } else if !c.int_contents.is_empty() {
        ints(c.int_contents.into_iter().map(i128::from).collect())
    } else if !c.int64_contents.is_empty() {
        ints(c.int64_contents.into_iter().map(i128::from).collect())
    } else if !c.uint_contents.is_empty() {
        ints(c.uint_contents.into_iter().map(i128::from).collect())
    } else if !c.uint64_contents.is_empty() {
        ints(c.uint64_contents.into_iter().map(i128::from).collect())
    } else if !c.fp64_contents.is_empty() {
        TensorData::Numbers(c.fp64_contents)
    } else {
        TensorData::F32(c.fp32_contents)
    })
}

/// BYTES elements in Triton's encoding: each a 4-byte little-endian length, then its bytes.
fn bytes_encoding(elements: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out.into()
}

/// A `ModelInferRequest` as the domain request (its model name and version are the
/// caller's to resolve).
pub fn decode(m: ModelInferRequest, shm: &SharedMemory) -> Result<Request, DecodeError> {
    let has_raw = !m.raw_input_contents.is_empty();
    let raw_count = m.raw_input_contents.len();
    let mut raw = m.raw_input_contents.into_iter();
    let mut binary = Vec::with_capacity(m.inputs.len());
    let mut inputs = Vec::with_capacity(m.inputs.len());
    for t in m.inputs {
        let name = t.name;
        let mut params = parameters(t.parameters).unwrap_or_default();
        let elsewhere = params.contains_key("shared_memory_region") || params.contains_key("object_ref");
        // Contents given (even empty) are this input's data; a client sends raw entries
        // or contents, never both.
        let contents = t.contents.filter(|c| has_raw || has_elements(c) || !elsewhere);
        let data = match contents {
            Some(_) if has_raw => {
                return Err(invalid(format!(
                    "input `{name}`: has `contents`, and the request has raw_input_contents; send every input one way"
                )));
            }
            Some(c) if !c.bytes_contents.is_empty() => {
                let bytes = bytes_encoding(&c.bytes_contents);
                if has_elements(&InferTensorContents {
                    bytes_contents: Vec::new(),
                    ..c
                }) {
                    return Err(invalid(format!(
                        "input `{name}`: its contents fill more than one typed list; use the one of its datatype"
                    )));
                }
                params.insert("binary_data_size".into(), bytes.len().into());
                binary.push(bytes);
                None
            }
            Some(c) => Some(contents_data(&name, c)?),
            None if elsewhere => None,
            None => match raw.next() {
                Some(bytes) => {
                    params.insert("binary_data_size".into(), bytes.len().into());
                    binary.push(bytes);
                    None
                }
                None if has_raw => {
                    return Err(invalid(format!(
                        "input `{name}`: raw_input_contents has {raw_count} entries, none left for it (one per input, in order)"
                    )));
                }
                None => {
                    return Err(invalid(format!(
                        "input `{name}`: has no data: neither `contents` nor an entry of raw_input_contents"
                    )));
                }
            },
        };
        inputs.push(InferInput {
            name,
            shape: t.shape,
            datatype: t.datatype,
            parameters: (!params.is_empty()).then_some(params),
            data,
        });
    }
    if raw.len() > 0 {
        return Err(invalid(format!(
            "raw_input_contents has {raw_count} entries, more than the inputs that carry data ({})",
            raw_count - raw.len()
        )));
    }
    let request = InferRequest {
        id: (!m.id.is_empty()).then_some(m.id),
        parameters: parameters(m.parameters),
        inputs,
        outputs: (!m.outputs.is_empty()).then(|| {
            m.outputs
                .into_iter()
                .map(|o| v2::RequestedOutput {
                    name: o.name,
                    parameters: parameters(o.parameters),
                })
                .collect()
        }),
    };
    decode_parsed(request, Binary::PerInput(binary.into_iter()), shm)
}

/// An answer as a `ModelInferResponse`: every output's bytes in `raw_output_contents`.
pub fn encode(answer: Answer) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(answer.outputs.len());
    let mut raw = Vec::with_capacity(answer.outputs.len());
    for o in answer.outputs {
        match written(o) {
            Written::Meta(o) => {
                outputs.push(InferOutputTensor {
                    name: o.name,
                    datatype: o.datatype,
                    shape: o.shape,
                    parameters: prism_protocol::grpc::json_parameters(o.parameters.as_ref()),
                    contents: None,
                });
                raw.push(Bytes::new());
            }
            Written::Data {
                name,
                shape,
                datatype,
                bytes,
            } => {
                outputs.push(InferOutputTensor {
                    name,
                    datatype: datatype.to_string(),
                    shape,
                    parameters: HashMap::new(),
                    contents: None,
                });
                raw.push(bytes);
            }
        }
    }
    ModelInferResponse {
        model_name: answer.model,
        model_version: MODEL_VERSION.into(),
        id: answer.id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
mod tests {
    use prism_protocol::grpc::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    use super::*;
    use crate::codec::{InputValue, Values};

    fn input(name: &str, datatype: &str, shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        }
    }

    fn bytes_of(r: &Request, i: usize) -> Vec<u8> {
        match &r.inputs[i].value {
            InputValue::Tensor(t) => match &t.values {
                Values::Binary(b) => b.to_vec(),
                other => panic!("binary expected, got {other:?}"),
            },
            other => panic!("a tensor expected, got {other:?}"),
        }
    }

    #[test]
    fn raw_contents_go_to_the_inputs_in_order_and_parameters_carry_over() {
        let mut p = HashMap::new();
        p.insert(
            "timeout".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(1500)),
            },
        );
        let mut out_p = HashMap::new();
        out_p.insert(
            "object_ref".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::BoolParam(true)),
            },
        );
        let m = ModelInferRequest {
            model_name: "mlp".into(),
            id: "7".into(),
            parameters: p,
            inputs: vec![input("A", "UINT8", vec![2], None), input("B", "UINT8", vec![3], None)],
            outputs: vec![InferRequestedOutputTensor {
                name: "Y".into(),
                parameters: out_p,
            }],
            raw_input_contents: vec![Bytes::from_static(&[1, 2]), Bytes::from_static(&[7, 8, 9])],
            ..Default::default()
        };
        let r = decode(m, &SharedMemory::new(false)).unwrap();
        assert_eq!((bytes_of(&r, 0), bytes_of(&r, 1)), (vec![1, 2], vec![7, 8, 9]));
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(r.timeout, Some(std::time::Duration::from_micros(1500)));
        assert!(r.outputs[0].by_ref);
    }

    #[test]
    fn typed_contents_are_read_as_json_data_and_strings_as_bytes() {
        let fp32 = InferTensorContents {
            fp32_contents: vec![1.0, 2.0],
            ..Default::default()
        };
        let text = InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"hi")],
            ..Default::default()
        };
        let m = ModelInferRequest {
            inputs: vec![
                input("X", "FP32", vec![1, 2], Some(fp32)),
                input("TEXT", "BYTES", vec![1], Some(text)),
            ],
            ..Default::default()
        };
        let r = decode(m, &SharedMemory::new(false)).unwrap();
        match &r.inputs[0].value {
            InputValue::Tensor(t) => assert!(matches!(&t.values, Values::Json(TensorData::F32(v)) if v == &[1.0, 2.0])),
            other => panic!("{other:?}"),
        }
        assert_eq!(bytes_of(&r, 1), vec![2, 0, 0, 0, b'h', b'i']);
    }

    #[test]
    fn inputs_that_do_not_add_up_are_refused_with_the_reason() {
        let refused = |m: ModelInferRequest| decode(m, &SharedMemory::new(false)).unwrap_err().to_string();
        let two_inputs_one_raw = ModelInferRequest {
            inputs: vec![input("A", "UINT8", vec![1], None), input("B", "UINT8", vec![1], None)],
            raw_input_contents: vec![Bytes::from_static(&[1])],
            ..Default::default()
        };
        assert!(refused(two_inputs_one_raw).contains("input `B`: raw_input_contents has 1 entries, none left"));
        let extra_raw = ModelInferRequest {
            inputs: vec![input("A", "UINT8", vec![1], None)],
            raw_input_contents: vec![Bytes::from_static(&[1]), Bytes::from_static(&[2])],
            ..Default::default()
        };
        assert!(refused(extra_raw).contains("more than the inputs that carry data (1)"));
        let both = ModelInferRequest {
            inputs: vec![input(
                "A",
                "FP32",
                vec![1],
                Some(InferTensorContents {
                    fp32_contents: vec![1.0],
                    ..Default::default()
                }),
            )],
            raw_input_contents: vec![Bytes::from_static(&[0; 4])],
            ..Default::default()
        };
        assert!(refused(both).contains("send every input one way"));
        let none = ModelInferRequest {
            inputs: vec![input("A", "FP32", vec![1], None)],
            ..Default::default()
        };
        assert!(refused(none).contains("input `A`: has no data"));
    }

    #[test]
    fn answers_travel_raw_one_entry_per_output() {
        use crate::codec::{AnswerOutput, AnswerValue};
        let a = Answer {
            model: "m".into(),
            id: Some("1".into()),
            tokens: None,
            outputs: vec![
                AnswerOutput {
                    name: "Y".into(),
                    binary: false,
                    value: AnswerValue::Rows {
                        values: ndarray::array![[1.0, -2.0]],
                        datatype: prism_protocol::DType::F32,
                    },
                },
                AnswerOutput {
                    name: "L".into(),
                    binary: false,
                    value: AnswerValue::Strings(vec!["pos".into()]),
                },
            ],
        };
        let r = encode(a);
        assert_eq!(
            (r.model_name.as_str(), r.model_version.as_str(), r.id.as_str()),
            ("m", "1", "1")
        );
        assert_eq!(r.outputs[0].shape, vec![1, 2]);
        assert_eq!(r.outputs[1].datatype, "BYTES");
        let y: Vec<f32> = r.raw_output_contents[0]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(y, vec![1.0, -2.0]);
        assert_eq!(&r.raw_output_contents[1][..], &[3, 0, 0, 0, b'p', b'o', b's']);
    }
}
