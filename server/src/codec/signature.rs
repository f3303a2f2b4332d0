//! A request checked against what it is sent to: a model's one `[-1, features]` input and
//! one output, or a pipeline's declared inputs and output.

use ndarray::Array2;
use prism_config::Deployment as Spec;

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

/// The input of a request for the model `spec`: exactly its one input.
pub fn model_input(spec: &Spec, inputs: Vec<Input>) -> Result<Source, DecodeError> {
    let want = &spec.input;
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
        InputValue::Tensor(t) => Ok(Source::Inline(inline_rows(spec, &input.name, t)?)),
    }
}

/// The rows of a tensor sent for the model `spec`, checked against its input.
fn inline_rows(spec: &Spec, name: &str, t: Tensor) -> Result<Array2<f32>, DecodeError> {
    let want = &spec.input;
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
            data.to_f32()
                .ok_or_else(|| invalid(format!("{}: datatype {dtype} needs numbers, got strings", what())))?
        }
        Values::Binary(bytes) => {
            let need = count * dtype.size().expect("numeric datatypes have a size");
            check_binary_size(&bytes, dtype, &t.shape, need, what)?;
            let mut values = Vec::with_capacity(count);
            dtype.decode_le(&bytes, &mut values);
            values
        }
    };
    Ok(Array2::from_shape_vec((rows, want.features), values).expect("the length was checked against the shape"))
}

/// The rows of an object passed as the input of the model `spec`: it must be
/// `[rows, features]` of a numeric type. FP32 objects are read in place.
pub fn object_rows(spec: &Spec, lease: Lease) -> Result<Rows, DecodeError> {
    let want = &spec.input;
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
    if lease.meta.datatype == prism_protocol::DType::F32 {
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

/// How a request wants its one output answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputFlags {
    /// In the binary part of the answer.
    pub binary: bool,
    /// Kept in the object store and answered as its ref.
    pub by_ref: bool,
}

/// The output flags of `request` for `(kind, name)` (a `model` or a `pipeline`), whose
/// only output is `output`: a requested output with another name is refused.
pub fn output_flags(request: &Request, (kind, name): (&str, &str), output: &str) -> Result<OutputFlags, DecodeError> {
    let mut flags = OutputFlags {
        binary: request.binary_output,
        by_ref: false,
    };
    for o in &request.outputs {
        if o.name != output {
            return Err(invalid(format!(
                "{kind} `{name}` has no output `{}`; its output is `{output}`",
                o.name
            )));
        }
        flags.binary = o.binary.unwrap_or(request.binary_output);
        flags.by_ref = o.by_ref;
    }
    Ok(flags)
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
        model_input(&celsius(), request.inputs)
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
    fn binary_rows_are_decoded_from_their_datatype() {
        let header =
            r#"{"inputs":[{"name":"INPUT0","shape":[2,1],"datatype":"INT16","parameters":{"binary_data_size":4}}]}"#;
        let request = decode(header.as_bytes(), Bytes::from_static(&[3, 0, 0xfd, 0xff])).unwrap();
        let Source::Inline(rows) = model_input(&celsius(), request.inputs).unwrap() else {
            panic!("inline data")
        };
        assert_eq!(rows, ndarray::array![[3.0], [-3.0]]);
    }

    #[test]
    fn output_flags_follow_the_request_and_refuse_other_outputs() {
        let mut request = decode(
            br#"{"inputs":[],"parameters":{"binary_data_output":true}}"#,
            Bytes::new(),
        )
        .unwrap();
        let at = ("model", "celsius");
        assert_eq!(
            output_flags(&request, at, "OUTPUT0").unwrap(),
            OutputFlags {
                binary: true,
                by_ref: false
            }
        );
        request.outputs.push(RequestedOutput {
            name: "OUTPUT0".into(),
            binary: Some(false),
            by_ref: true,
        });
        assert_eq!(
            output_flags(&request, at, "OUTPUT0").unwrap(),
            OutputFlags {
                binary: false,
                by_ref: true
            }
        );
        request.outputs[0].name = "Y".into();
        assert_eq!(
            message(output_flags(&request, ("pipeline", "p"), "OUTPUT0")),
            "pipeline `p` has no output `Y`; its output is `OUTPUT0`"
        );
    }

    #[test]
    fn a_shape_fits_a_declaration_where_it_fixes_sizes() {
        assert!(fits(&[-1, 3], &[7, 3]));
        assert!(!fits(&[-1, 3], &[7, 2]));
        assert!(!fits(&[-1], &[7, 1]));
        assert!(fits(&[], &[]));
    }
}
