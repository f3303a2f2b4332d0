//! A request checked against what it is sent to: a model's one `[-1, features]` input and
//! one output, or a pipeline's declared inputs and output.

use ndarray::Array2;
use prism_config::{Deployment as Spec, RowsIo};
use prism_protocol::DType;
use prism_protocol::v2::TensorData;

use super::request::{Input, InputValue, Request, Tensor, Values};
use super::tensor::{check_binary_size, check_count};
use super::{DecodeError, invalid, shape};
use crate::serving::Rows;
use crate::store::{Lease, ObjectRef};

/// Where a model request's input rows come from.
pub enum Source {
    /// `[rows, in_features]`, from the request.
    Inline(Array2<f32>),
    /// An object of the store, read when the request runs (see [`object_rows`]).
    Object(ObjectRef),
}

/// The input of a request for the model `spec` over rows (`io`): exactly its one input.
pub fn model_input(spec: &Spec, io: &RowsIo, inputs: Vec<Input>) -> Result<Source, DecodeError> {
    let want = &io.input;
    if let Some(other) = inputs.iter().find(|i| i.name != want.name) {
        return Err(invalid(format!(
            "model `{}` has no input `{}`; its input is `{}`",
            spec.name, other.name, want.name
        )));
    }
    let Some(input) = inputs.into_iter().next() else {
        return Err(invalid(format!(
            "input `{}` is missing (the request has no inputs)",
            want.name
        )));
    };
    match input.value {
        InputValue::Object(r) => Ok(Source::Object(r)),
        InputValue::Tensor(t) => Ok(Source::Inline(inline_rows(spec, io, &input.name, t)?)),
    }
}

/// The rows of a tensor sent for the model `spec`, checked against its input.
fn inline_rows(spec: &Spec, io: &RowsIo, name: &str, t: Tensor) -> Result<Array2<f32>, DecodeError> {
    let want = &io.input;
    let dtype = t.datatype;
    if !dtype.is_numeric() {
        return Err(invalid(format!(
            "input `{name}`: datatype {dtype} cannot be converted to the model's {}; send a numeric datatype",
            want.datatype
        )));
    }
    let rows = match t.shape.as_slice() {
        [rows, f] if *rows >= 1 && *f == want.features as i64 => *rows as usize,
        [rows, _] if *rows < 1 => {
            return Err(shape(format!(
                "input `{name}`: shape {:?} has {rows} rows; give the actual number of rows, at least 1 (the -1 in the model's metadata marks the batch dimension)",
                t.shape
            )));
        }
        other => {
            return Err(shape(format!(
                "input `{name}`: expected shape [-1, {}] (rows, then {} value(s) per row), got {other:?}",
                want.features, want.features
            )));
        }
    };
    if rows > spec.batching.max_batch_size {
        return Err(shape(format!(
            "input `{name}`: {rows} rows exceed the model's max_batch_size of {}; split the request",
            spec.batching.max_batch_size
        )));
    }
    // The tensor's name is written only into a refusal.
    let what = || format!("input `{name}`");
    let count = rows * want.features;
    let values = match t.values {
        Values::Json(data) => {
            check_count(&data, count, &t.shape, what)?;
            let values = json_values(&data, dtype, &what())?;
            if !spec.allow_non_finite && is_float(dtype) {
                let written = |i: usize| match &data {
                    TensorData::Numbers(n) => n.get(i).copied(),
                    _ => None,
                };
                finite(&values, written, dtype, &what())?;
            }
            values
        }
        Values::Binary(bytes) => {
            let need = count * dtype.size().expect("numeric datatypes have a size");
            check_binary_size(&bytes, dtype, &t.shape, need, what)?;
            let mut values = Vec::with_capacity(count);
            dtype.decode_le(&bytes, &mut values);
            if !spec.allow_non_finite && is_float(dtype) {
                finite(&values, |i| written_f64(dtype, &bytes, i), dtype, &what())?;
            }
            values
        }
    };
    Ok(Array2::from_shape_vec((rows, want.features), values).expect("the length was checked against the shape"))
}

/// The rows of an object passed as the input of the model `spec`: it must be
/// `[rows, features]` of a numeric type. FP32 objects are read in place. A client's
/// object (`refuse_non_finite`, unless the deployment allows them) must hold finite
/// values; the objects between pipeline steps are the pipeline's own and pass as they are.
pub fn object_rows(spec: &Spec, io: &RowsIo, lease: Lease, refuse_non_finite: bool) -> Result<Rows, DecodeError> {
    let want = &io.input;
    let name = &want.name;
    let rows = match lease.meta.shape.as_slice() {
        [rows, f] if *f == want.features && *rows >= 1 => *rows,
        other => {
            return Err(shape(format!(
                "input `{name}`: object {} has shape {other:?}; the model expects [-1, {}] (rows, then {} value(s) per row)",
                lease.object_ref, want.features, want.features
            )));
        }
    };
    if rows > spec.batching.max_batch_size {
        return Err(shape(format!(
            "input `{name}`: object {} has {rows} rows, more than the model's max_batch_size of {}",
            lease.object_ref, spec.batching.max_batch_size
        )));
    }
    let dtype = lease.meta.datatype;
    let check = refuse_non_finite && !spec.allow_non_finite && is_float(dtype);
    let what = || format!("input `{name}` (object {})", lease.object_ref);
    if dtype == DType::F32 {
        if check {
            finite(&lease.to_f32(), |_| None, dtype, &what())?;
        }
        return Ok(Rows::Object {
            lease,
            rows,
            cols: want.features,
        });
    }
    let values = lease.to_f32().into_owned();
    if check {
        finite(&values, |i| written_f64(dtype, lease.bytes(), i), dtype, &what())?;
    }
    Ok(Rows::Owned(
        Array2::from_shape_vec((rows, want.features), values).expect("the object's length matches its shape"),
    ))
}

fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

/// Element `i` of FP64 bytes as written (to tell a value beyond FP32 from a non-finite
/// one); `None` for other types.
fn written_f64(dtype: DType, bytes: &[u8], i: usize) -> Option<f64> {
    let b = bytes.get(i * 8..i * 8 + 8).filter(|_| dtype == DType::F64)?;
    Some(f64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// JSON `data` as the model's `f32` values. Floating-point types are converted as they
/// are; integer types are checked as the datatype holds them (whole and in range:
/// `INT8` 300 is refused, never wrapped or saturated).
fn json_values(data: &TensorData, dtype: DType, what: &str) -> Result<Vec<f32>, DecodeError> {
    if is_float(dtype) {
        return data
            .to_f32()
            .ok_or_else(|| invalid(format!("{what}: datatype {dtype} needs numbers, got {}", data.kind())));
    }
    let mut bytes = Vec::with_capacity(data.len() * dtype.size().unwrap_or(1));
    prism_protocol::binary::encode_tensor(what, dtype, data, &mut bytes).map_err(|e| match e {
        prism_protocol::binary::BinaryError::Tensor { reason, .. } => invalid(format!("{what}: {reason}")),
        other => invalid(format!("{what}: {other}")),
    })?;
    let mut values = Vec::with_capacity(data.len());
    dtype.decode_le(&bytes, &mut values);
    Ok(values)
}

/// Refuses the first NaN or ±Inf of `values` (sent as `dtype`; `written(i)` is element
/// `i` as the client wrote it, where known, to tell a number too large for FP32 from a
/// non-finite one).
fn finite(values: &[f32], written: impl Fn(usize) -> Option<f64>, dtype: DType, what: &str) -> Result<(), DecodeError> {
    let Some(i) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    let v = values[i];
    let why = match written(i) {
        Some(w) if w.is_finite() => format!("{w} is beyond the range of FP32, the type the model computes in"),
        _ if v.is_nan() => "is NaN".to_owned(),
        _ if v > 0.0 => "is Infinity".to_owned(),
        _ => "is -Infinity".to_owned(),
    };
    Err(invalid(format!(
        "{what}: element {i} ({dtype}) {why}; the model takes finite numbers only \
         (a deployment that wants NaN and ±Inf passed through sets allow_non_finite = true)"
    )))
}

/// How a request wants one output answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputFlags {
    /// In the binary part of the answer.
    pub binary: bool,
    /// Kept in the object store and answered as its ref.
    pub by_ref: bool,
}

/// The outputs `request` wants of `(kind, name)` (a `model` or a `pipeline`) whose
/// outputs are `outputs`, each with its flags, in the model's order: those the request
/// names, or every one when it names none. An output it names that is not there, or
/// twice, is refused.
pub fn wanted_outputs<'a>(
    request: &Request,
    (kind, name): (&str, &str),
    outputs: &[&'a str],
) -> Result<Vec<(&'a str, OutputFlags)>, DecodeError> {
    let default = OutputFlags {
        binary: request.binary_output,
        by_ref: false,
    };
    if request.outputs.is_empty() {
        return Ok(outputs.iter().map(|o| (*o, default)).collect());
    }
    let mut wanted = Vec::with_capacity(request.outputs.len());
    for o in &request.outputs {
        let Some(known) = outputs.iter().find(|k| **k == o.name) else {
            let names = outputs.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            let (its, are) = if outputs.len() == 1 {
                ("its output", "is")
            } else {
                ("its outputs", "are")
            };
            return Err(invalid(format!(
                "{kind} `{name}` has no output `{}`; {its} {are} {names}",
                o.name
            )));
        };
        if wanted.iter().any(|(w, _)| *w == o.name) {
            return Err(invalid(format!("output `{}` is asked for more than once", o.name)));
        }
        let flags = OutputFlags {
            binary: o.binary.unwrap_or(request.binary_output),
            by_ref: o.by_ref,
        };
        wanted.push((*known, flags));
    }
    // In the model's order, whatever the request's.
    wanted.sort_by_key(|(w, _)| outputs.iter().position(|k| k == w));
    Ok(wanted)
}

/// Texts sent to an encoder: `TEXT`, and `TEXT_PAIR` where the model takes pairs.
#[derive(Debug, PartialEq)]
pub struct Texts {
    pub texts: Vec<String>,
    pub pairs: Option<Vec<String>>,
}

/// The texts of a request for the encoder `model`, whose inputs are `names` (`TEXT`, and
/// `TEXT_PAIR` when it takes pairs): `BYTES` of shape `[n]` or `[n, 1]`, in JSON strings
/// or Triton's binary form, UTF-8, at least one.
pub fn text_input(model: &str, names: &[&str], inputs: Vec<Input>) -> Result<Texts, DecodeError> {
    if let Some(other) = inputs.iter().find(|i| !names.contains(&i.name.as_str())) {
        let list = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        return Err(invalid(format!(
            "model `{model}` has no input `{}`; its inputs are {list}",
            other.name
        )));
    }
    let mut texts = None;
    let mut pairs = None;
    for input in inputs {
        let strings = strings(&input.name, input.value)?;
        if input.name == names[0] {
            texts = Some(strings);
        } else {
            pairs = Some(strings);
        }
    }
    let Some(texts) = texts else {
        return Err(invalid(format!(
            "input `{}` is missing (the request has no texts)",
            names[0]
        )));
    };
    if let Some(p) = &pairs
        && p.len() != texts.len()
    {
        return Err(shape(format!(
            "input `{}` has {} texts, but `{}` has {}: one pair per text",
            names[1],
            p.len(),
            names[0],
            texts.len()
        )));
    }
    Ok(Texts { texts, pairs })
}

/// The strings of a `BYTES` input.
fn strings(name: &str, value: InputValue) -> Result<Vec<String>, DecodeError> {
    let t = match value {
        InputValue::Tensor(t) => t,
        InputValue::Object(_) => {
            return Err(invalid(format!(
                "input `{name}`: texts cannot come from the object store (it holds numeric tensors); send them"
            )));
        }
    };
    if t.datatype != DType::Bytes {
        return Err(invalid(format!(
            "input `{name}`: datatype {} cannot carry text; send BYTES (one string per text)",
            t.datatype
        )));
    }
    let n = match t.shape.as_slice() {
        [n] | [n, 1] if *n >= 1 => *n as usize,
        [0] | [0, 1] => {
            return Err(shape(format!(
                "input `{name}`: the batch is empty; send at least one text"
            )));
        }
        other => {
            return Err(shape(format!(
                "input `{name}`: expected shape [-1] (one string per text) or [-1, 1], got {other:?}"
            )));
        }
    };
    let strings = match t.values {
        Values::Json(prism_protocol::v2::TensorData::Strings(s)) => s,
        Values::Json(other) => {
            return Err(invalid(format!(
                "input `{name}`: datatype BYTES needs strings, got {}",
                other.kind()
            )));
        }
        Values::Binary(bytes) => super::tensor::utf8_elements(&bytes, &format!("input `{name}`"))?,
    };
    if strings.len() != n {
        return Err(shape(format!(
            "input `{name}`: shape {:?} needs {n} strings, got {}",
            t.shape,
            strings.len()
        )));
    }
    Ok(strings)
}

/// Whether `shape` fits the `declared` one: same rank, equal where the declaration fixes
/// a size (`-1` takes any).
pub fn fits(declared: &[i64], shape: &[usize]) -> bool {
    declared.len() == shape.len() && declared.iter().zip(shape).all(|(&d, &s)| d == -1 || d == s as i64)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::request::{RequestedOutput, decode};

    fn celsius() -> Spec {
        prism_config::Config::embedded_default()
            .deployments
            .into_iter()
            .find(|d| d.name == "celsius")
            .expect("celsius")
    }

    fn input(json: &str) -> Result<Source, DecodeError> {
        let request = decode(json.as_bytes(), Bytes::new())?;
        let spec = celsius();
        let io = spec.model.rows_io().unwrap().clone();
        model_input(&spec, &io, request.inputs)
    }

    fn message<T>(r: Result<T, DecodeError>) -> String {
        match r {
            Ok(_) => panic!("expected a refusal"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_model_takes_its_one_input_as_rows() {
        let Source::Inline(rows) =
            input(r#"{"inputs":[{"name":"INPUT0","shape":[2,1],"datatype":"INT32","data":[[1],[2]]}]}"#).unwrap()
        else {
            panic!("inline data")
        };
        assert_eq!(rows, ndarray::array![[1.0], [2.0]]);
        let r = "ab".repeat(16);
        let by_ref = input(&format!(
            r#"{{"inputs":[{{"name":"INPUT0","parameters":{{"object_ref":"{r}"}}}}]}}"#
        ));
        assert!(matches!(by_ref, Ok(Source::Object(o)) if o.to_string() == r));
    }

    #[test]
    fn a_model_refuses_what_does_not_fit_its_input() {
        let cases = [
            (r#"{"inputs":[]}"#, "input `INPUT0` is missing"),
            (
                r#"{"inputs":[{"name":"X","shape":[1,1],"datatype":"FP32","data":[1]}]}"#,
                "has no input `X`",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#,
                "expected shape [-1, 1]",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[0,1],"datatype":"FP32","data":[]}]}"#,
                "has 0 rows",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[2,1],"datatype":"FP32","data":[1]}]}"#,
                "needs 2 values, got 1",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"BYTES","data":["a"]}]}"#,
                "cannot be converted",
            ),
            (
                r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":["a"]}]}"#,
                "needs numbers, got strings",
            ),
        ];
        for (json, want) in cases {
            let got = message(input(json));
            assert!(got.contains(want), "{json}: {got}");
        }
        let many = format!(
            r#"{{"inputs":[{{"name":"INPUT0","shape":[65,1],"datatype":"FP32","data":{:?}}}]}}"#,
            vec![1.0; 65]
        );
        assert!(matches!(input(&many), Err(DecodeError::Shape(m)) if m.contains("max_batch_size of 64")));
    }

    #[test]
    fn non_finite_and_out_of_range_values_are_refused_with_the_element() {
        let one = |datatype: &str, data: &str| {
            format!(r#"{{"inputs":[{{"name":"INPUT0","shape":[2,1],"datatype":"{datatype}","data":{data}}}]}}"#)
        };
        let cases = [
            (one("FP32", "[1, NaN]"), "element 1 (FP32) is NaN"),
            (one("FP32", "[-Infinity, 1]"), "element 0 (FP32) is -Infinity"),
            (
                one("FP64", "[1e39, 1]"),
                "1000000000000000000000000000000000000000 is beyond the range of FP32",
            ),
            (one("INT8", "[1, 300]"), "input `INPUT0`: 300 is out of range for INT8"),
            (one("UINT8", "[-1, 2]"), "input `INPUT0`: -1 is out of range for UINT8"),
            (one("INT32", "[1.5, 2]"), "1.5 is not a whole number, as INT32 needs"),
        ];
        for (json, want) in cases {
            let request = decode(json.as_bytes(), Bytes::new()).unwrap();
            let spec = celsius();
            let io = spec.model.rows_io().unwrap().clone();
            let got = message(model_input(&spec, &io, request.inputs));
            assert!(got.contains(want), "{json}: {got}");
        }
        // In binary data too.
        let header =
            r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let request = decode(header.as_bytes(), Bytes::from(f32::INFINITY.to_le_bytes().to_vec())).unwrap();
        let spec = celsius();
        let io = spec.model.rows_io().unwrap().clone();
        assert!(message(model_input(&spec, &io, request.inputs)).contains("element 0 (FP32) is Infinity"));
        let header =
            r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP64","parameters":{"binary_data_size":8}}]}"#;
        let request = decode(header.as_bytes(), Bytes::from(1e39f64.to_le_bytes().to_vec())).unwrap();
        let got = message(model_input(&spec, &io, request.inputs));
        assert!(
            got.contains("element 0 (FP64) 1000000000000000000000000000000000000000 is beyond the range of FP32"),
            "{got}"
        );
        // A deployment may let them through.
        let spec = Spec {
            allow_non_finite: true,
            ..celsius()
        };
        let request = decode(one("FP32", "[NaN, 2]").as_bytes(), Bytes::new()).unwrap();
        let Ok(Source::Inline(rows)) = model_input(&spec, &io, request.inputs) else {
            panic!("allowed")
        };
        assert!(rows[[0, 0]].is_nan() && rows[[1, 0]] == 2.0);
    }

    #[test]
    fn binary_rows_are_decoded_from_their_datatype() {
        let header =
            r#"{"inputs":[{"name":"INPUT0","shape":[2,1],"datatype":"INT16","parameters":{"binary_data_size":4}}]}"#;
        let request = decode(header.as_bytes(), Bytes::from_static(&[3, 0, 0xfd, 0xff])).unwrap();
        let spec = celsius();
        let Source::Inline(rows) = model_input(&spec, spec.model.rows_io().unwrap(), request.inputs).unwrap() else {
            panic!("inline data")
        };
        assert_eq!(rows, ndarray::array![[3.0], [-3.0]]);
    }

    #[test]
    fn wanted_outputs_follow_the_request_in_the_model_s_order() {
        let mut request = decode(
            br#"{"inputs":[],"parameters":{"binary_data_output":true}}"#,
            Bytes::new(),
        )
        .unwrap();
        let at = ("model", "c");
        let binary = OutputFlags {
            binary: true,
            by_ref: false,
        };
        assert_eq!(
            wanted_outputs(&request, at, &["LOGITS", "LABEL"]).unwrap(),
            vec![("LOGITS", binary), ("LABEL", binary)],
            "every output when the request names none"
        );
        request.outputs.push(RequestedOutput {
            name: "LABEL".into(),
            binary: Some(false),
            by_ref: false,
            shared: None,
        });
        request.outputs.push(RequestedOutput {
            name: "LOGITS".into(),
            binary: None,
            by_ref: true,
            shared: None,
        });
        let plain = OutputFlags::default();
        let by_ref = OutputFlags {
            binary: true,
            by_ref: true,
        };
        assert_eq!(
            wanted_outputs(&request, at, &["LOGITS", "LABEL"]).unwrap(),
            vec![("LOGITS", by_ref), ("LABEL", plain)]
        );
        request.outputs[0].name = "Y".into();
        assert_eq!(
            message(wanted_outputs(&request, ("pipeline", "p"), &["OUTPUT0"])),
            "pipeline `p` has no output `Y`; its output is `OUTPUT0`"
        );
        request.outputs[0].name = "LOGITS".into();
        assert_eq!(
            message(wanted_outputs(&request, at, &["LOGITS", "LABEL"])),
            "output `LOGITS` is asked for more than once"
        );
    }

    fn texts(json: &str, binary: &'static [u8]) -> Result<Texts, DecodeError> {
        let request = decode(json.as_bytes(), Bytes::from_static(binary))?;
        text_input("enc", &["TEXT", "TEXT_PAIR"], request.inputs)
    }

    #[test]
    fn texts_arrive_as_json_strings_or_triton_s_binary_bytes() {
        let t = texts(
            r#"{"inputs":[{"name":"TEXT","shape":[2],"datatype":"BYTES","data":["a b","c"]}]}"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            t,
            Texts {
                texts: vec!["a b".into(), "c".into()],
                pairs: None
            }
        );
        let header =
            r#"{"inputs":[{"name":"TEXT","shape":[2,1],"datatype":"BYTES","parameters":{"binary_data_size":11}}]}"#;
        let t = texts(header, b"\x02\0\0\0hi\x01\0\0\0!").unwrap();
        assert_eq!(t.texts, vec!["hi", "!"]);
        let pair = r#"{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","data":["q"]},
            {"name":"TEXT_PAIR","shape":[1],"datatype":"BYTES","data":["d"]}]}"#;
        assert_eq!(texts(pair, &[]).unwrap().pairs, Some(vec!["d".into()]));
    }

    #[test]
    fn bad_texts_are_refused_with_the_reason() {
        let cases = [
            (r#"{"inputs":[]}"#, &b""[..], "input `TEXT` is missing"),
            (
                r#"{"inputs":[{"name":"X","shape":[1],"datatype":"BYTES","data":["a"]}]}"#,
                b"",
                "has no input `X`",
            ),
            (
                r#"{"inputs":[{"name":"TEXT","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                b"",
                "datatype FP32 cannot carry text",
            ),
            (
                r#"{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","data":[1]}]}"#,
                b"",
                "BYTES needs strings, got numbers",
            ),
            (
                r#"{"inputs":[{"name":"TEXT","shape":[0],"datatype":"BYTES","data":[]}]}"#,
                b"",
                "the batch is empty",
            ),
            (
                r#"{"inputs":[{"name":"TEXT","shape":[2],"datatype":"BYTES","data":["a"]}]}"#,
                b"",
                "needs 2 strings, got 1",
            ),
            (
                r#"{"inputs":[{"name":"TEXT","shape":[1,2],"datatype":"BYTES","data":["a","b"]}]}"#,
                b"",
                "expected shape [-1]",
            ),
            (
                r#"{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#,
                b"\x02\0\0\0\xff\xfe",
                "element 0 is not UTF-8",
            ),
            (
                r#"{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":5}}]}"#,
                b"\x09\0\0\0a",
                "announces 9 bytes, but only 1 are left",
            ),
            (
                r#"{"inputs":[{"name":"TEXT","shape":[2],"datatype":"BYTES","data":["a","b"]},
                  {"name":"TEXT_PAIR","shape":[1],"datatype":"BYTES","data":["c"]}]}"#,
                b"",
                "`TEXT_PAIR` has 1 texts, but `TEXT` has 2",
            ),
        ];
        for (json, binary, want) in cases {
            let got = message(texts(json, binary));
            assert!(got.contains(want), "{json}: {got}");
        }
    }

    #[test]
    fn a_shape_fits_a_declaration_where_it_fixes_sizes() {
        assert!(fits(&[-1, 3], &[7, 3]));
        assert!(!fits(&[-1, 3], &[7, 2]));
        assert!(!fits(&[-1], &[7, 1]));
        assert!(fits(&[], &[]));
    }
}
