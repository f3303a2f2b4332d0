//! The answer of an inference, and its V2 form: a JSON document, or the binary
//! extension's JSON header followed by the tensor's bytes.

use bytes::Bytes;
use ndarray::Array2;
use prism_protocol::DType;
use prism_protocol::v2::{self, InferOutput, InferResponse, Parameters, TensorData};

use super::tensor::json_values;
use crate::serving::MODEL_VERSION;
use crate::shm::Place;
use crate::store::{Lease, ObjectRef};

/// What an inference answers, before any protocol writes it.
pub struct Answer {
    /// The model or pipeline that answered.
    pub model: String,
    pub id: Option<String>,
    /// In the model's order.
    pub outputs: Vec<AnswerOutput>,
    /// The tokens an encoder read (OpenAI's `usage.prompt_tokens`); `None` for rows.
    pub tokens: Option<usize>,
}

impl Answer {
    /// Whether the work goes on (an async request): every output is a ref to come.
    pub fn accepted(&self) -> bool {
        self.outputs
            .iter()
            .any(|o| matches!(o.value, AnswerValue::Ref { accepted: true, .. }))
    }
}

/// One output of an answer.
pub struct AnswerOutput {
    pub name: String,
    /// Whether it goes in the binary part (where the protocol has one).
    pub binary: bool,
    pub value: AnswerValue,
}

pub enum AnswerValue {
    /// A model's rows, to be written as `datatype`.
    Rows { values: Array2<f32>, datatype: DType },
    /// One string per row (`BYTES`, shape `[-1]`): a classifier's labels.
    Strings(Vec<String>),
    /// An object of the store (a pipeline's output), sent from the store's memory.
    Object(Lease),
    /// The output is (or will be) the object `object_ref`: `shape` has `-1` where it is
    /// not known yet. `accepted`: the work is still running (an async request).
    Ref {
        object_ref: ObjectRef,
        datatype: DType,
        shape: Vec<i64>,
        accepted: bool,
    },
    /// Written into the client's shared memory at `place`: `bytes` of it.
    Shared {
        datatype: DType,
        shape: Vec<i64>,
        place: Place,
        bytes: usize,
    },
}

/// One output as a protocol writes it: its description alone (a ref, or an output in
/// shared memory), or with its little-endian bytes.
pub enum Written {
    Meta(InferOutput),
    Data {
        name: String,
        shape: Vec<i64>,
        datatype: DType,
        bytes: Bytes,
    },
}

/// `o` as its bytes, or as the description of where it is.
pub fn written(o: AnswerOutput) -> Written {
    let AnswerOutput { name, value, .. } = o;
    let (shape, datatype, data) = match value {
        v @ (AnswerValue::Ref { .. } | AnswerValue::Shared { .. }) => return Written::Meta(described(name, v)),
        AnswerValue::Object(lease) => {
            let meta = &lease.meta;
            return Written::Data {
                shape: meta.shape.iter().map(|&d| d as i64).collect(),
                datatype: meta.datatype,
                name,
                bytes: Bytes::from_owner(lease),
            };
        }
        AnswerValue::Rows { values, datatype } => {
            let shape = vec![values.nrows() as i64, values.ncols() as i64];
            (shape, datatype, rows_data(values, datatype))
        }
        AnswerValue::Strings(strings) => (vec![strings.len() as i64], DType::Bytes, TensorData::Strings(strings)),
    };
    let mut bytes = Vec::new();
    prism_protocol::binary::encode_tensor(&name, datatype, &data, &mut bytes)
        .expect("an answer's values fit its datatype. This is a bug.");
    Written::Data {
        name,
        shape,
        datatype,
        bytes: bytes.into(),
    }
}

/// An output that carries no data: a ref (`object_ref`), or one written to shared memory
/// (`shared_memory_region`, `shared_memory_offset`, `shared_memory_byte_size`: the bytes
/// written).
fn described(name: String, value: AnswerValue) -> InferOutput {
    let mut parameters = Parameters::new();
    let (shape, datatype) = match value {
        AnswerValue::Ref {
            object_ref,
            datatype,
            shape,
            ..
        } => {
            parameters.insert("object_ref".into(), object_ref.to_string().into());
            (shape, datatype)
        }
        AnswerValue::Shared {
            datatype,
            shape,
            place,
            bytes,
        } => {
            parameters.insert("shared_memory_region".into(), place.region.into());
            parameters.insert("shared_memory_offset".into(), place.offset.into());
            parameters.insert("shared_memory_byte_size".into(), bytes.into());
            (shape, datatype)
        }
        _ => unreachable!("only refs and shared-memory outputs are described without data"),
    };
    InferOutput {
        name,
        shape,
        datatype: datatype.to_string(),
        parameters: Some(parameters),
        data: None,
    }
}

/// An answer as V2 bytes.
pub enum Encoded {
    /// A JSON document.
    Json(Vec<u8>),
    /// The binary extension: a JSON header of `header_len` bytes, then the tensors, in
    /// one buffer.
    Binary { body: Vec<u8>, header_len: usize },
    /// The binary extension with the one tensor read from the store as it is sent: the
    /// header, then the lease's bytes.
    Streamed { header: Vec<u8>, object: Lease },
}

/// The V2 response of `answer`.
pub fn encode(answer: Answer) -> Encoded {
    let Answer { model, id, outputs, .. } = answer;
    let response = |outputs: Vec<InferOutput>| InferResponse {
        model_name: model,
        model_version: Some(MODEL_VERSION.into()),
        id,
        parameters: None,
        outputs,
    };
    // One object sent in binary travels from the store's memory, uncopied.
    if let [only] = outputs.as_slice()
        && only.binary
        && matches!(only.value, AnswerValue::Object(_))
    {
        let only = outputs.into_iter().next().expect("one output");
        let AnswerValue::Object(lease) = only.value else {
            unreachable!("matched above")
        };
        let o = InferOutput {
            name: only.name,
            shape: lease.meta.shape.iter().map(|&d| d as i64).collect(),
            datatype: lease.meta.datatype.to_string(),
            parameters: binary_size(lease.meta.bytes()),
            data: None,
        };
        return Encoded::Streamed {
            header: to_vec(&response(vec![o])),
            object: lease,
        };
    }
    // Binary as soon as one output's data is (a ref carries no data, nor does an output
    // in shared memory).
    let binary = outputs
        .iter()
        .any(|o| o.binary && !matches!(o.value, AnswerValue::Ref { .. } | AnswerValue::Shared { .. }));
    let mut tail = Vec::new();
    let written: Vec<InferOutput> = outputs.into_iter().map(|o| output(o, &mut tail)).collect();
    let mut body = to_vec(&response(written));
    if !binary {
        return Encoded::Json(body);
    }
    let header_len = body.len();
    body.extend_from_slice(&tail);
    Encoded::Binary { body, header_len }
}

fn binary_size(n: usize) -> Option<Parameters> {
    let mut p = Parameters::new();
    p.insert("binary_data_size".into(), n.into());
    Some(p)
}

/// One output as V2 writes it; its bytes go to `tail` when it is binary.
fn output(o: AnswerOutput, tail: &mut Vec<u8>) -> InferOutput {
    let AnswerOutput { name, binary, value } = o;
    let (shape, datatype, data) = match value {
        v @ (AnswerValue::Ref { .. } | AnswerValue::Shared { .. }) => return described(name, v),
        AnswerValue::Rows { values, datatype } => {
            let shape = vec![values.nrows() as i64, values.ncols() as i64];
            (shape, datatype, rows_data(values, datatype))
        }
        AnswerValue::Strings(strings) => (vec![strings.len() as i64], DType::Bytes, TensorData::Strings(strings)),
        AnswerValue::Object(lease) => {
            let meta = &lease.meta;
            let data = prism_protocol::binary::decode_tensor(&name, meta.datatype, lease.bytes())
                .expect("an object's bytes are whole elements of its datatype. This is a bug.");
            (meta.shape.iter().map(|&d| d as i64).collect(), meta.datatype, data)
        }
    };
    if !binary {
        return InferOutput {
            name,
            shape,
            datatype: datatype.to_string(),
            parameters: None,
            data: Some(data),
        };
    }
    let start = tail.len();
    prism_protocol::binary::encode_tensor(&name, datatype, &data, tail)
        .expect("an answer's values fit its datatype. This is a bug.");
    InferOutput {
        name,
        shape,
        datatype: datatype.to_string(),
        parameters: binary_size(tail.len() - start),
        data: None,
    }
}

/// A model's rows as JSON data of `datatype`, from the answer's own buffer without a copy
/// when its rows are laid out in order.
fn rows_data(values: Array2<f32>, datatype: DType) -> TensorData {
    let n = values.len();
    let values = if values.is_standard_layout() {
        let (mut all, offset) = values.into_raw_vec_and_offset();
        let offset = offset.unwrap_or(0);
        all.truncate(offset + n);
        all.drain(..offset);
        all
    } else {
        values.iter().copied().collect()
    };
    json_values(datatype, values)
}

fn to_vec(response: &InferResponse) -> Vec<u8> {
    v2::to_vec(response).expect("a response always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(binary: bool, values: Array2<f32>, datatype: DType) -> Answer {
        one(binary, AnswerValue::Rows { values, datatype })
    }

    fn one(binary: bool, value: AnswerValue) -> Answer {
        Answer {
            model: "m".into(),
            id: Some("7".into()),
            tokens: None,
            outputs: vec![AnswerOutput {
                name: "Y".into(),
                binary,
                value,
            }],
        }
    }

    #[test]
    fn rows_are_written_as_json_in_their_datatype() {
        let Encoded::Json(body) = encode(answer(false, ndarray::array![[1.5], [2.0]], DType::I32)) else {
            panic!("JSON")
        };
        let r: InferResponse = v2::from_slice(&body).unwrap();
        assert_eq!((r.model_name.as_str(), r.id.as_deref()), ("m", Some("7")));
        assert_eq!(r.model_version.as_deref(), Some(MODEL_VERSION));
        let o = &r.outputs[0];
        assert_eq!(
            (o.name.as_str(), o.datatype.as_str(), o.shape.as_slice()),
            ("Y", "INT32", &[2, 1][..])
        );
        assert_eq!(o.data.as_ref().unwrap().to_f32(), Some(vec![1.0, 2.0]));
    }

    #[test]
    fn binary_rows_follow_their_header() {
        let Encoded::Binary { body, header_len } = encode(answer(true, ndarray::array![[1.0, -1.0]], DType::F32))
        else {
            panic!("binary")
        };
        let r: InferResponse = v2::from_slice(&body[..header_len]).unwrap();
        assert_eq!(v2::binary_data_size(r.outputs[0].parameters.as_ref()), Ok(Some(8)));
        assert!(r.outputs[0].data.is_none());
        let tail: Vec<f32> = body[header_len..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(tail, vec![1.0, -1.0]);
    }

    #[test]
    fn a_ref_answer_names_the_object_and_carries_no_data() {
        let r: crate::store::ObjectRef = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let a = one(
            true,
            AnswerValue::Ref {
                object_ref: r,
                datatype: DType::F32,
                shape: vec![-1, 10],
                accepted: true,
            },
        );
        assert!(a.accepted());
        let Encoded::Json(body) = encode(a) else { panic!("JSON") };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let o = &v["outputs"][0];
        assert_eq!(o["parameters"]["object_ref"], r.to_string());
        assert_eq!(o["shape"], serde_json::json!([-1, 10]));
        assert!(o.get("data").is_none());
    }

    #[test]
    fn logits_and_labels_travel_side_by_side_in_binary() {
        let a = Answer {
            model: "m".into(),
            id: None,
            tokens: None,
            outputs: vec![
                AnswerOutput {
                    name: "LOGITS".into(),
                    binary: true,
                    value: AnswerValue::Rows {
                        values: ndarray::array![[0.5, 1.0]],
                        datatype: DType::F32,
                    },
                },
                AnswerOutput {
                    name: "LABEL".into(),
                    binary: true,
                    value: AnswerValue::Strings(vec!["pos".into()]),
                },
            ],
        };
        let Encoded::Binary { body, header_len } = encode(a) else {
            panic!("binary")
        };
        let r: InferResponse = v2::from_slice(&body[..header_len]).unwrap();
        assert_eq!(r.outputs[1].shape, vec![1]);
        assert_eq!(r.outputs[1].datatype, "BYTES");
        let decoded = prism_protocol::binary::decode_response(&body, Some(header_len)).unwrap();
        assert_eq!(decoded.outputs[0].data.as_ref().unwrap().to_f32(), Some(vec![0.5, 1.0]));
        assert_eq!(decoded.outputs[1].data, Some(TensorData::Strings(vec!["pos".into()])));
    }
}
