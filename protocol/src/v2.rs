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
    /// `shape` and `datatype` may be left out (empty) for an input given by `object_ref`
    /// (a Prism extension): the object has its own.
    #[serde(default)]
    pub shape: Vec<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Absent when the tensor travels in the binary part of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

impl InferInput {
    /// An input read from the server's object store (Prism's extension: the object is
    /// passed by reference and dereferenced server-side).
    pub fn object_ref(name: impl Into<String>, object_ref: &str) -> Self {
        let mut p = Parameters::new();
        p.insert("object_ref".into(), object_ref.into());
        InferInput {
            name: name.into(),
            shape: Vec::new(),
            datatype: String::new(),
            parameters: Some(p),
            data: None,
        }
    }

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
/// parse into the same flat vector. Parsing yields [`TensorData::Integers`] when every
/// element is an integer literal (exact at any size an INT64 or UINT64 holds),
/// [`TensorData::Numbers`] once one has a fraction or an exponent, [`TensorData::Bools`]
/// or [`TensorData::Strings`]; [`TensorData::F32`] is for building requests and responses
/// without a conversion.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    Numbers(Vec<f64>),
    /// Integers, written without a fraction.
    Integers(Vec<i128>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::Numbers(v) => v.len(),
            TensorData::Integers(v) => v.len(),
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
            TensorData::Integers(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::Bools(v) => v.iter().map(|&b| f32::from(u8::from(b))).collect(),
            TensorData::Strings(_) => return None,
        })
    }

    /// A short name of what the values are, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            TensorData::F32(_) | TensorData::Numbers(_) | TensorData::Integers(_) => "numbers",
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
        fn floats<S: Serializer, T: Copy + Into<f64> + Serialize>(
            serializer: S,
            items: &[T],
        ) -> Result<S::Ok, S::Error> {
            if items.iter().all(|&v| v.into().is_finite()) {
                return all(serializer, items);
            }
            // JSON has no NaN or infinity; `to_vec` turns these markers into the bare
            // `NaN` / `Infinity` tokens that Triton writes and its clients read.
            let mut seq = serializer.serialize_seq(Some(items.len()))?;
            for &item in items {
                match non_finite_marker(item.into()) {
                    Some(marker) => seq.serialize_element(marker)?,
                    None => seq.serialize_element(&item)?,
                }
            }
            seq.end()
        }
        match self {
            TensorData::F32(v) => floats(serializer, v),
            TensorData::Numbers(v) => floats(serializer, v),
            TensorData::Integers(v) => all(serializer, v),
            TensorData::Bools(v) => all(serializer, v),
            TensorData::Strings(v) => all(serializer, v),
        }
    }
}

/// What has been seen so far while flattening `data`.
enum Flat {
    Empty,
    Numbers(Vec<f64>),
    /// Integer literals only, so far: kept exact until a fraction turns them into numbers.
    Integers(Vec<i128>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
}

impl Flat {
    fn kind(&self) -> &'static str {
        match self {
            Flat::Empty => "nothing",
            Flat::Numbers(_) | Flat::Integers(_) => "numbers",
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
            Flat::Integers(i) => {
                let mut n: Vec<f64> = Vec::with_capacity(i.capacity().max(i.len() + 1));
                n.extend(i.iter().map(|&x| x as f64));
                n.push(v);
                *self = Flat::Numbers(n);
            }
            _ => return Err(self.mixed("numbers")),
        }
        Ok(())
    }

    fn integer<E: de::Error>(&mut self, v: i128) -> Result<(), E> {
        match self {
            Flat::Empty => *self = Flat::Integers(vec![v]),
            // An empty numbers vector is only a capacity guess made by `visit_seq`.
            Flat::Numbers(n) if n.is_empty() => {
                let mut i = Vec::with_capacity(n.capacity());
                i.push(v);
                *self = Flat::Integers(i);
            }
            Flat::Numbers(n) => n.push(v as f64),
            Flat::Integers(i) => i.push(v),
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
        self.0.integer(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.integer(v.into())
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
        if let Some(number) = non_finite_value(v) {
            MARKERS_TAKEN.with(|n| n.set(n.get() + 1));
            return self.0.number(number);
        }
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
            Flat::Integers(v) => TensorData::Integers(v),
            Flat::Bools(v) => TensorData::Bools(v),
            Flat::Strings(v) => TensorData::Strings(v),
        })
    }
}

/// Non-finite numbers, as written by Triton (RapidJSON's `kWriteNanAndInfFlag`) and read
/// back by its clients. Inside Prism they travel as marker strings: a NUL byte, a random
/// per-process nonce, then the token, so no string a client sends (an `id`, a BYTES
/// element) can be mistaken for one.
struct NonFinite {
    /// `(marker, the marker as a quoted JSON string, the bare token)` for NaN, +inf, -inf.
    entries: [(String, String, &'static str); 3],
}

fn non_finite() -> &'static NonFinite {
    static MARKERS: std::sync::OnceLock<NonFinite> = std::sync::OnceLock::new();
    MARKERS.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let nonce = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let entry = |token: &'static str| {
            let marker = format!("\0prism-{nonce:016x}:{token}");
            let quoted = serde_json::to_string(&marker).expect("a string serializes");
            (marker, quoted, token)
        };
        NonFinite {
            entries: [entry("NaN"), entry("Infinity"), entry("-Infinity")],
        }
    })
}

fn non_finite_marker(v: f64) -> Option<&'static str> {
    let i = if v.is_nan() {
        0
    } else if v == f64::INFINITY {
        1
    } else if v == f64::NEG_INFINITY {
        2
    } else {
        return None;
    };
    Some(&non_finite().entries[i].0)
}

thread_local! {
    /// How many non-finite markers tensor data has taken on this thread: a document is
    /// refused when fewer than it had were taken (the rest went into strings).
    static MARKERS_TAKEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn non_finite_value(s: &str) -> Option<f64> {
    if !s.starts_with('\0') {
        return None;
    }
    let values = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    let entries = &non_finite().entries;
    (0..3).find(|&i| entries[i].0 == s).map(|i| values[i])
}

/// Parses a V2 JSON document. Besides standard JSON it accepts the bare `NaN`,
/// `Infinity`, `-Infinity` (and `Inf`, `-Inf`) number tokens that Triton accepts and
/// `perf_analyzer` sends for random FP32 data, as elements of tensor data only: anywhere
/// else (an `id`, a parameter, an option) the document is refused. Standard documents
/// take the plain path; only one that fails to parse is scanned for those tokens.
pub fn from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    match serde_json::from_slice(bytes) {
        Err(e) if e.is_syntax() => match quote_non_finite(bytes) {
            Some((rewritten, inserted)) => {
                // Every marker must end in tensor data. Sound while no deserializer on
                // these documents tries alternatives (serde's `untagged`), which could
                // count a marker in a failed attempt and keep it as a string in the next.
                let before = MARKERS_TAKEN.with(|n| n.get());
                let parsed = serde_json::from_slice(&rewritten).map_err(unmark);
                let taken = MARKERS_TAKEN.with(|n| n.get()) - before;
                match parsed {
                    Ok(_) if taken < inserted => Err(de::Error::custom(
                        "NaN, Infinity and -Infinity are accepted only as elements of tensor data; \
                         this document has them elsewhere (JSON has no such numbers)",
                    )),
                    other => other,
                }
            }
            None => Err(e),
        },
        other => other,
    }
}

/// A parse error of a rewritten document, with the bare tokens in place of the markers
/// (as the client wrote them).
fn unmark(e: serde_json::Error) -> serde_json::Error {
    let mut text = e.to_string();
    if !text.contains("\\0prism-") && !text.contains('\0') {
        return e;
    }
    for (marker, _, token) in &non_finite().entries {
        text = text
            .replace(&format!("string {marker:?}"), token)
            .replace(&format!("{marker:?}"), token)
            .replace(marker.as_str(), token);
    }
    de::Error::custom(text)
}

/// Serializes a V2 document, writing non-finite tensor values as `NaN` / `Infinity` /
/// `-Infinity`, as Triton does.
pub fn to_vec<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = serde_json::to_vec(value)?;
    // serde_json writes the NUL of a marker as `\u0000`.
    if out.windows(7).any(|w| w == b"\"\\u0000") {
        for (_, quoted, token) in &non_finite().entries {
            out = replace_all(&out, quoted.as_bytes(), token.as_bytes());
        }
    }
    Ok(out)
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// Rewrites bare non-finite number tokens (outside strings) into marker strings, with how
/// many it wrote; `None` when there are none.
fn quote_non_finite(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    // Longest first, each with the index of its value in `non_finite().entries`.
    const TOKENS: [(&[u8], usize); 6] = [
        (b"-Infinity", 2),
        (b"Infinity", 1),
        (b"-Inf", 2),
        (b"Inf", 1),
        (b"-NaN", 0),
        (b"NaN", 0),
    ];
    let entries = &non_finite().entries;
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let (mut in_string, mut escaped, mut found) = (false, false, 0);
    let mut i = 0;
    'scan: while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'-' || b == b'N' || b == b'I' {
            for (token, index) in TOKENS {
                if bytes[i..].starts_with(token) {
                    out.extend_from_slice(entries[index].1.as_bytes());
                    i += token.len();
                    found += 1;
                    continue 'scan;
                }
            }
        }
        out.push(b);
        i += 1;
    }
    (found > 0).then_some((out, found))
}

/// The `binary_data_size` parameter of a binary input or output, if any; a value that is
/// not a byte count (negative, fractional, a string) is refused with what was sent.
pub fn binary_data_size(parameters: Option<&Parameters>) -> Result<Option<u64>, String> {
    match parameters.and_then(|p| p.get("binary_data_size")) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("parameter `binary_data_size` must be a byte count (an integer ≥ 0), got {v}")),
    }
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
    fn integer_literals_stay_exact_until_a_fraction_appears() {
        let ints: TensorData = serde_json::from_str("[[9007199254740993], [-9223372036854775808]]").unwrap();
        assert_eq!(ints, TensorData::Integers(vec![9_007_199_254_740_993, i64::MIN.into()]));
        let top: TensorData = serde_json::from_str("[18446744073709551615]").unwrap();
        assert_eq!(top, TensorData::Integers(vec![u64::MAX.into()]));
        let mixed: TensorData = serde_json::from_str("[1, 2, 0.5, 3]").unwrap();
        assert_eq!(mixed, TensorData::Numbers(vec![1.0, 2.0, 0.5, 3.0]));
        assert_eq!(ints.to_f32().unwrap()[1], i64::MIN as f32);
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
    fn non_finite_values_travel_as_triton_writes_them() {
        let text = br#"{"name":"x","shape":[4],"datatype":"FP32","data":[NaN, -Infinity, Inf, 1.5]}"#;
        assert!(serde_json::from_slice::<InferInput>(text).is_err(), "not standard JSON");
        let input: InferInput = from_slice(text).unwrap();
        let v = input.data.as_ref().unwrap().to_f32().unwrap();
        assert!(v[0].is_nan() && v[1] == f32::NEG_INFINITY && v[2] == f32::INFINITY && v[3] == 1.5);
        let out =
            String::from_utf8(to_vec(&InferInput::fp32("x", vec![3], vec![f32::NAN, f32::INFINITY, 2.0])).unwrap())
                .unwrap();
        assert!(out.ends_with(r#""data":[NaN,Infinity,2.0]}"#), "{out}");
        // A client's own strings are never taken for markers.
        let id = InferRequest {
            id: Some("\0NaN".into()),
            ..Default::default()
        };
        assert_eq!(from_slice::<InferRequest>(&to_vec(&id).unwrap()).unwrap(), id);
        // Inside strings the tokens are left alone.
        let s: InferInput = from_slice(br#"{"name":"NaN Inf","shape":[1],"datatype":"BYTES","data":["NaN"]}"#).unwrap();
        assert_eq!(
            (s.name.as_str(), s.data),
            ("NaN Inf", Some(TensorData::Strings(vec!["NaN".into()])))
        );
    }

    #[test]
    fn non_finite_tokens_outside_tensor_data_are_refused() {
        for text in [
            r#"{"id": NaN, "inputs": []}"#,
            r#"{"inputs": [], "parameters": {"x": Infinity}}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[NaN]}],"id":-Inf}"#,
        ] {
            let e = from_slice::<InferRequest>(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("accepted only as elements of tensor data"), "{text}: {e}");
        }
        // A typed field names the token as the client wrote it, never the marker.
        let e = from_slice::<crate::ray::WaitRequest>(br#"{"object_refs": [], "timeout_ms": NaN}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type: NaN, expected u64"), "{e}");
        assert!(!e.contains("prism-"), "{e}");
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
