//! The KServe V2 / Open Inference Protocol, as JSON types, plus Triton's binary tensor
//! data extension.
//!
//! These types are shared by the server (which parses requests with them) and the client
//! (which builds them), so the two cannot drift apart.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// Free-form `parameters` of a request, an input or an output.
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// The header that carries the length of the JSON part of a binary request or response.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// `GET /v2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// `GET /v2/models/{m}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    #[serde(default)]
    pub platform: String,
    pub inputs: Vec<MetadataTensor>,
    pub outputs: Vec<MetadataTensor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataTensor {
    pub name: String,
    pub datatype: String,
    /// `-1` marks a variable dimension (the batch).
    pub shape: Vec<i64>,
}

/// `POST /v2/models/{m}/infer`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<InferInput>,
    /// Which outputs to return, and how; all of them (as JSON) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Absent when the tensor travels in the binary part of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

impl InferInput {
    /// An `FP32` input with its data inline (JSON).
    pub fn fp32(name: impl Into<String>, shape: Vec<i64>, data: Vec<f32>) -> Self {
        InferInput {
            name: name.into(),
            shape,
            datatype: "FP32".into(),
            parameters: None,
            data: Some(TensorData::F32(data)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

/// The answer to an inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    pub outputs: Vec<InferOutput>,
}

impl InferResponse {
    pub fn output(&self, name: &str) -> Option<&InferOutput> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferOutput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

/// An error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// One entry of `POST /v2/repository/index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryModel {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `data` of a tensor, flattened (row-major).
///
/// The protocol allows nested (`[[1, 2], [3, 4]]`) or flat (`[1, 2, 3, 4]`) arrays; both
/// parse into the same flat vector. Parsing yields [`TensorData::Numbers`] (exact for
/// every integer up to 2^53), [`TensorData::Bools`] or [`TensorData::Strings`];
/// [`TensorData::F32`] is for building requests and responses without a conversion.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    Numbers(Vec<f64>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::Numbers(v) => v.len(),
            TensorData::Bools(v) => v.len(),
            TensorData::Strings(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as `f32` (booleans as 0 / 1); `None` for strings.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        Some(match self {
            TensorData::F32(v) => v.clone(),
            TensorData::Numbers(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bools(v) => v.iter().map(|&b| f32::from(u8::from(b))).collect(),
            TensorData::Strings(_) => return None,
        })
    }

    /// A short name of what the values are, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            TensorData::F32(_) | TensorData::Numbers(_) => "numbers",
            TensorData::Bools(_) => "booleans",
            TensorData::Strings(_) => "strings",
        }
    }
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fn all<S: Serializer, T: Serialize>(serializer: S, items: &[T]) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(Some(items.len()))?;
            for item in items {
                seq.serialize_element(item)?;
            }
            seq.end()
        }
        match self {
            TensorData::F32(v) => all(serializer, v),
            TensorData::Numbers(v) => all(serializer, v),
            TensorData::Bools(v) => all(serializer, v),
            TensorData::Strings(v) => all(serializer, v),
        }
    }
}

/// What has been seen so far while flattening `data`.
enum Flat {
    Empty,
    Numbers(Vec<f64>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
}

impl Flat {
    fn kind(&self) -> &'static str {
        match self {
            Flat::Empty => "nothing",
            Flat::Numbers(_) => "numbers",
            Flat::Bools(_) => "booleans",
            Flat::Strings(_) => "strings",
        }
    }

    fn mixed<E: de::Error>(&self, got: &str) -> E {
        E::custom(format_args!(
            "tensor data mixes {} and {got}; all elements must have one type",
            self.kind()
        ))
    }

    fn number<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        match self {
            Flat::Empty => *self = Flat::Numbers(vec![v]),
            Flat::Numbers(n) => n.push(v),
            _ => return Err(self.mixed("numbers")),
        }
        Ok(())
    }
}

struct FlattenInto<'a>(&'a mut Flat);

impl<'de> DeserializeSeed<'de> for FlattenInto<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FlattenInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array (possibly nested) of numbers, booleans or strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let (Flat::Empty, Some(n)) = (&*self.0, seq.size_hint()) {
            *self.0 = Flat::Numbers(Vec::with_capacity(n));
        }
        while seq.next_element_seed(FlattenInto(self.0))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.number(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.number(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.number(v as f64)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        match self.0 {
            Flat::Empty => *self.0 = Flat::Bools(vec![v]),
            // An empty numbers vector is only a capacity guess made by `visit_seq`.
            Flat::Numbers(n) if n.is_empty() => *self.0 = Flat::Bools(vec![v]),
            Flat::Bools(b) => b.push(v),
            other => return Err(other.mixed("booleans")),
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.0 {
            Flat::Empty => *self.0 = Flat::Strings(vec![v.to_owned()]),
            Flat::Numbers(n) if n.is_empty() => *self.0 = Flat::Strings(vec![v.to_owned()]),
            Flat::Strings(s) => s.push(v.to_owned()),
            other => return Err(other.mixed("strings")),
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(
            "tensor data contains null; only numbers, booleans or strings are allowed",
        ))
    }
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut flat = Flat::Empty;
        FlattenInto(&mut flat).deserialize(deserializer)?;
        Ok(match flat {
            Flat::Empty => TensorData::Numbers(Vec::new()),
            Flat::Numbers(v) => TensorData::Numbers(v),
            Flat::Bools(v) => TensorData::Bools(v),
            Flat::Strings(v) => TensorData::Strings(v),
        })
    }
}

/// The `binary_data_size` parameter of a binary input or output, if any.
pub fn binary_data_size(parameters: Option<&Parameters>) -> Option<u64> {
    parameters?.get("binary_data_size")?.as_u64()
}

/// A boolean parameter, `None` when absent.
pub fn bool_parameter(parameters: Option<&Parameters>, key: &str) -> Option<bool> {
    parameters?.get(key)?.as_bool()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_data_parse_alike() {
        let a: TensorData = serde_json::from_str("[[1, 2.5], [3, -4]]").unwrap();
        let b: TensorData = serde_json::from_str("[1, 2.5, 3, -4]").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, TensorData::Numbers(vec![1.0, 2.5, 3.0, -4.0]));
        assert_eq!(
            serde_json::from_str::<TensorData>("[[true], [false]]").unwrap(),
            TensorData::Bools(vec![true, false])
        );
        assert_eq!(
            serde_json::from_str::<TensorData>(r#"["a","b"]"#).unwrap(),
            TensorData::Strings(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            serde_json::from_str::<TensorData>("[[], []]").unwrap(),
            TensorData::Numbers(vec![])
        );
    }

    #[test]
    fn mixed_or_null_data_is_refused_clearly() {
        let e = serde_json::from_str::<TensorData>(r#"[1, "a"]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mixes numbers and strings"), "{e}");
        let e = serde_json::from_str::<TensorData>("[1, null]").unwrap_err().to_string();
        assert!(e.contains("null"), "{e}");
        let e = serde_json::from_str::<TensorData>(r#"[{"a": 1}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("an array (possibly nested)"), "{e}");
    }

    #[test]
    fn f32_data_serializes_as_plain_numbers() {
        let input = InferInput::fp32("INPUT0", vec![1, 2], vec![0.1, 100.0]);
        let json = serde_json::to_string(&input).unwrap();
        assert_eq!(
            json,
            r#"{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[0.1,100.0]}"#
        );
    }
}
