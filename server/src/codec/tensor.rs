//! Tensors between their forms: JSON values, little-endian bytes (the store's and the
//! binary extension's), and the `f32` the kernels compute in.

use bytes::Bytes;
use ndarray::{ArrayD, IxDyn};
use prism_protocol::DType;
use prism_protocol::ray::ObjectTensor;
use prism_protocol::v2::{Parameters, TensorData};

use super::request::{Tensor, Values};
use super::{DecodeError, invalid, shape};
use crate::store::Meta;

/// A tensor's type and shape as the store keeps it: numeric, no negative dimension, a
/// size that can be counted. `what` names it in messages.
pub fn meta(datatype: DType, dims: &[i64], what: &str) -> Result<Meta, DecodeError> {
    if !datatype.is_numeric() {
        return Err(invalid(format!(
            "{what}: datatype {datatype} cannot be stored; send a numeric datatype"
        )));
    }
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| shape(format!("{what}: shape {dims:?} has a negative dimension"))))
        .collect::<Result<Vec<_>, _>>()?;
    let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if elements
        .and_then(|n| n.checked_mul(datatype.size().expect("numeric")))
        .is_none()
    {
        return Err(shape_too_large(what, dims));
    }
    Ok(Meta { datatype, shape })
}

fn shape_too_large(what: &str, dims: &[i64]) -> DecodeError {
    shape(format!("{what}: shape {dims:?} is too large"))
}

/// Where a tensor's values travel.
pub enum Carried<'a> {
    /// JSON `data`.
    Json(&'a TensorData),
    /// `binary_data_size` bytes of the body's binary part.
    Binary(u64),
}

/// Where a tensor's values travel: in `data` or, by its `binary_data_size` parameter, in
/// the binary part; one of the two, not both. A refusal is the end of the message, for
/// the caller to name the tensor (`input `A`: ...`) only when it is refused.
pub fn carried<'a>(data: Option<&'a TensorData>, parameters: Option<&Parameters>) -> Result<Carried<'a>, String> {
    match (data, prism_protocol::v2::binary_data_size(parameters)?) {
        (Some(_), Some(_)) => Err("has both `data` and `binary_data_size`; send one".into()),
        (None, None) => Err("has no `data` (and no `binary_data_size` parameter for binary data)".into()),
        (Some(data), None) => Ok(Carried::Json(data)),
        (None, Some(size)) => Ok(Carried::Binary(size)),
    }
}

/// The little-endian bytes of JSON `data`, checked against `meta`.
pub fn json_bytes(data: Option<&TensorData>, meta: &Meta, what: &str) -> Result<Vec<u8>, DecodeError> {
    let Some(data) = data else {
        return Err(invalid(format!("{what}: has no `data`")));
    };
    check_count(data, meta.elements(), &meta.shape, || what.to_owned())?;
    let mut out = Vec::with_capacity(meta.bytes());
    prism_protocol::binary::encode_tensor(what, meta.datatype, data, &mut out)
        .map_err(|e| invalid(format!("{what}: {e}")))?;
    Ok(out)
}

/// JSON `data` must hold as many values (`count`) as `dims` has elements. `what` names
/// the tensor, and is only asked for when it is refused.
pub fn check_count(
    data: &TensorData,
    count: usize,
    dims: &impl std::fmt::Debug,
    what: impl FnOnce() -> String,
) -> Result<(), DecodeError> {
    if data.len() != count {
        return Err(shape(format!(
            "{}: shape {dims:?} needs {count} values, got {}",
            what(),
            data.len()
        )));
    }
    Ok(())
}

/// Binary data must be exactly the `need` bytes that `dims` of `datatype` take.
pub fn check_binary_size(
    bytes: &[u8],
    datatype: DType,
    dims: &[i64],
    need: usize,
    what: impl FnOnce() -> String,
) -> Result<(), DecodeError> {
    if bytes.len() != need {
        return Err(shape(format!(
            "{}: binary_data_size is {} bytes, but shape {dims:?} of {datatype} needs {need} bytes",
            what(),
            bytes.len()
        )));
    }
    Ok(())
}

/// A request's tensor as the store keeps it: its [`Meta`] and little-endian bytes (binary
/// data is taken as it came, without a copy).
pub fn stored(t: Tensor, what: &str) -> Result<(Meta, Bytes), DecodeError> {
    let meta = meta(t.datatype, &t.shape, what)?;
    let bytes = match t.values {
        Values::Json(data) => json_bytes(Some(&data), &meta, what)?.into(),
        Values::Binary(bytes) => {
            check_binary_size(&bytes, t.datatype, &t.shape, meta.bytes(), || what.to_owned())?;
            bytes
        }
    };
    Ok((meta, bytes))
}

/// The datatype and shape of an object as a put or a task argument writes it.
pub fn object_meta(t: &ObjectTensor, what: &str) -> Result<Meta, DecodeError> {
    let datatype: DType = t.datatype.parse().map_err(|e| invalid(format!("{what}: {e}")))?;
    meta(datatype, &t.shape, what)
}

/// An inline task argument as `f32` (converted as its datatype's bytes would be).
pub fn object_array(t: &ObjectTensor, what: &str) -> Result<ArrayD<f32>, DecodeError> {
    let meta = object_meta(t, what)?;
    let bytes = json_bytes(t.data.as_ref(), &meta, what)?;
    let mut values = Vec::with_capacity(meta.elements());
    meta.datatype.decode_le(&bytes, &mut values);
    Ok(ArrayD::from_shape_vec(IxDyn(&meta.shape), values).expect("length checked against the shape"))
}

/// The elements of binary `BYTES` data (each a 4-byte little-endian length, then its
/// bytes), each of which must be UTF-8 text.
pub fn utf8_elements(mut bytes: &[u8], what: &str) -> Result<Vec<String>, DecodeError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(invalid(format!(
                "{what}: element {} is cut short: {} bytes left where a 4-byte length belongs",
                out.len(),
                bytes.len()
            )));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(invalid(format!(
                "{what}: element {} announces {len} bytes, but only {} are left",
                out.len(),
                rest.len()
            )));
        }
        let (text, rest) = rest.split_at(len);
        let text = std::str::from_utf8(text)
            .map_err(|e| invalid(format!("{what}: element {} is not UTF-8 text ({e})", out.len())))?;
        out.push(text.to_owned());
        bytes = rest;
    }
    Ok(out)
}

/// `values` as JSON data of `dtype`: integers without a fraction, booleans as `true` /
/// `false`, each converted as the binary form would be (a cast: integers round toward
/// zero and saturate).
pub fn json_values(dtype: DType, values: Vec<f32>) -> TensorData {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_tensor_is_numeric_non_negative_and_countable() {
        assert_eq!(
            meta(DType::I64, &[2, 3], "t").unwrap(),
            Meta {
                datatype: DType::I64,
                shape: vec![2, 3]
            }
        );
        let err = meta(DType::Bytes, &[1], "object").unwrap_err();
        assert_eq!(
            err.to_string(),
            "object: datatype BYTES cannot be stored; send a numeric datatype"
        );
        assert!(matches!(meta(DType::F32, &[-1, 2], "t"), Err(DecodeError::Shape(m)) if m.contains("negative")));
        assert!(
            meta(DType::F32, &[i64::MAX, i64::MAX], "t")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }

    #[test]
    fn json_data_is_counted_and_encoded_little_endian() {
        let m = meta(DType::I16, &[2], "x").unwrap();
        let bytes = json_bytes(Some(&TensorData::Integers(vec![1, -2])), &m, "x").unwrap();
        assert_eq!(bytes, vec![1, 0, 0xfe, 0xff]);
        let err = json_bytes(Some(&TensorData::Integers(vec![1])), &m, "x").unwrap_err();
        assert_eq!(err, DecodeError::Shape("x: shape [2] needs 2 values, got 1".into()));
        assert_eq!(json_bytes(None, &m, "x").unwrap_err().to_string(), "x: has no `data`");
    }

    #[test]
    fn binary_values_are_kept_as_sent_and_their_size_checked() {
        let t = |bytes: &'static [u8]| Tensor {
            datatype: DType::U8,
            shape: vec![3],
            values: Values::Binary(Bytes::from_static(bytes)),
        };
        let (m, bytes) = stored(t(&[1, 2, 3]), "input `A`").unwrap();
        assert_eq!((m.shape, &bytes[..]), (vec![3], &[1u8, 2, 3][..]));
        let err = stored(t(&[1, 2]), "input `A`").unwrap_err();
        assert_eq!(
            err.to_string(),
            "input `A`: binary_data_size is 2 bytes, but shape [3] of UINT8 needs 3 bytes"
        );
    }

    #[test]
    fn an_inline_task_argument_becomes_f32_as_its_bytes_would() {
        let t = ObjectTensor {
            datatype: "INT8".into(),
            shape: vec![2],
            data: Some(TensorData::Integers(vec![-3, 5])),
            ..Default::default()
        };
        assert_eq!(
            object_array(&t, "args[0]").unwrap().into_raw_vec_and_offset().0,
            vec![-3.0, 5.0]
        );
        let bad = ObjectTensor {
            datatype: "FLOAT32".into(),
            ..t
        };
        assert!(
            object_array(&bad, "args[0]")
                .unwrap_err()
                .to_string()
                .starts_with("args[0]: unknown datatype")
        );
    }

    #[test]
    fn output_values_are_written_in_their_datatype() {
        assert_eq!(
            json_values(DType::I32, vec![1.9, -2.5]),
            TensorData::Integers(vec![1, -2])
        );
        assert_eq!(
            json_values(DType::Bool, vec![0.0, 3.0]),
            TensorData::Bools(vec![false, true])
        );
        assert_eq!(json_values(DType::U8, vec![300.0]), TensorData::Integers(vec![255]));
        assert_eq!(json_values(DType::F32, vec![0.5]), TensorData::F32(vec![0.5]));
    }
}
