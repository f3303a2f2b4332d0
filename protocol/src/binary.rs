//! Triton's binary tensor data extension: a JSON header, then the raw tensors in order.
//!
//! The length of the JSON part travels in the `Inference-Header-Content-Length` header;
//! each binary tensor is marked by a `binary_data_size` parameter. Elements are
//! little-endian, row-major; a `BYTES` element is a 4-byte little-endian length and then
//! its bytes.

use serde_json::Value;

use crate::dtype::DType;
use crate::v2::{InferRequest, InferResponse, Parameters, TensorData, binary_data_size};

/// Why a binary body cannot be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    #[error("the binary body is {got} bytes, but its header announces {want}")]
    Length { want: u64, got: u64 },
    #[error("invalid JSON header: {0}")]
    Header(String),
}

/// Encodes `values` as the elements of `dtype`.
pub fn encode_tensor(name: &str, dtype: DType, data: &TensorData, out: &mut Vec<u8>) -> Result<(), BinaryError> {
    let fail = |reason: String| BinaryError::Tensor {
        name: name.to_owned(),
        reason,
    };
    match (dtype, data) {
        (DType::Bytes, TensorData::Strings(items)) => {
            for s in items {
                let len = u32::try_from(s.len()).map_err(|_| fail("a BYTES element is longer than 4 GiB".into()))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        (DType::Bytes, other) => return Err(fail(format!("BYTES needs strings, got {}", other.kind()))),
        (dtype, TensorData::F32(values)) => {
            dtype.encode_le(values, out);
        }
        // Exact where f32 would round: FP64 from numbers, integers into integer types.
        (DType::F64, TensorData::Numbers(values)) => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        (DType::F64, TensorData::Integers(values)) => {
            for &v in values {
                out.extend_from_slice(&(v as f64).to_le_bytes());
            }
        }
        // JSON numbers into an integer type: whole and in range, or refused (never
        // rounded or saturated), in one pass. Integer literals arrive as `Integers`, exact.
        // Data holding any number with a fraction or an exponent is read as f64, which
        // keeps whole numbers exact only below 2^52 (above, a written fraction vanishes or a
        // digit rounds away), so larger values are refused rather than stored as something
        // else.
        (
            DType::U8 | DType::I8 | DType::U16 | DType::I16 | DType::U32 | DType::I32 | DType::U64 | DType::I64,
            data @ (TensorData::Numbers(_) | TensorData::Integers(_)),
        ) => {
            const EXACT: f64 = (1u64 << 52) as f64;
            let whole = |v: f64| {
                if !(v.fract() == 0.0 && v.is_finite()) {
                    Err(fail(format!("{v} is not a whole number, as {dtype} needs")))
                } else if v.abs() >= EXACT {
                    Err(fail(format!(
                        "{v} may not be the number written: the data holds numbers with a fraction or an \
                         exponent, so it is read as floating point, exact only below 2^52; write every \
                         element as a plain integer for {dtype}"
                    )))
                } else {
                    Ok(v as i128)
                }
            };
            let values: Box<dyn Iterator<Item = Result<i128, BinaryError>> + '_> = match data {
                TensorData::Numbers(n) => Box::new(n.iter().map(|&v| whole(v))),
                TensorData::Integers(i) => Box::new(i.iter().map(|&v| Ok(v))),
                _ => unreachable!("matched above"),
            };
            macro_rules! put {
                ($t:ty) => {
                    for v in values {
                        let v = v?;
                        let x = <$t>::try_from(v).map_err(|_| fail(format!("{v} is out of range for {dtype}")))?;
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                };
            }
            match dtype {
                DType::U8 => put!(u8),
                DType::I8 => put!(i8),
                DType::U16 => put!(u16),
                DType::I16 => put!(i16),
                DType::U32 => put!(u32),
                DType::I32 => put!(i32),
                DType::U64 => put!(u64),
                _ => put!(i64),
            }
        }
        (dtype, data) => {
            let values = data
                .to_f32()
                .ok_or_else(|| fail(format!("{dtype} needs numbers, got {}", data.kind())))?;
            dtype.encode_le(&values, out);
        }
    }
    Ok(())
}

/// Decodes one binary tensor exactly: FP32 as `f32`, other floats as `f64`, integers as
/// integers, BOOL as booleans, `BYTES` as strings (lossy UTF-8).
pub fn decode_tensor(name: &str, dtype: DType, bytes: &[u8]) -> Result<TensorData, BinaryError> {
    let fail = |reason: String| BinaryError::Tensor {
        name: name.to_owned(),
        reason,
    };
    match dtype.size() {
        Some(size) => {
            if !bytes.len().is_multiple_of(size) {
                return Err(fail(format!(
                    "{} bytes is not a whole number of {dtype} elements ({size} bytes each)",
                    bytes.len()
                )));
            }
            macro_rules! each {
                ($t:ty, $f:expr) => {
                    bytes
                        .chunks_exact(size)
                        .map(|c| {
                            $f(<$t>::from_le_bytes(
                                c.try_into().expect("chunk size matches"),
                            ))
                        })
                        .collect()
                };
            }
            Ok(match dtype {
                DType::F32 => TensorData::F32(each!(f32, |v| v)),
                DType::F64 => TensorData::Numbers(each!(f64, |v| v)),
                DType::F16 => TensorData::Numbers(each!(half::f16, |v: half::f16| f64::from(v))),
                DType::BF16 => TensorData::Numbers(each!(half::bf16, |v: half::bf16| f64::from(v))),
                DType::Bool => TensorData::Bools(bytes.iter().map(|&b| b != 0).collect()),
                DType::U8 => TensorData::Integers(each!(u8, i128::from)),
                DType::I8 => TensorData::Integers(each!(i8, i128::from)),
                DType::U16 => TensorData::Integers(each!(u16, i128::from)),
                DType::I16 => TensorData::Integers(each!(i16, i128::from)),
                DType::U32 => TensorData::Integers(each!(u32, i128::from)),
                DType::I32 => TensorData::Integers(each!(i32, i128::from)),
                DType::U64 => TensorData::Integers(each!(u64, i128::from)),
                DType::I64 => TensorData::Integers(each!(i64, i128::from)),
                DType::Bytes => unreachable!("BYTES has no fixed size"),
            })
        }
        None => {
            let mut items = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(fail("truncated BYTES element length".into()));
                };
                let len = u32::from_le_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(fail("truncated BYTES element".into()));
                }
                items.push(String::from_utf8_lossy(&tail[..len]).into_owned());
                rest = &tail[len..];
            }
            Ok(TensorData::Strings(items))
        }
    }
}

fn set_param(parameters: &mut Option<Parameters>, key: &str, value: Value) {
    parameters
        .get_or_insert_with(Parameters::new)
        .insert(key.to_owned(), value);
}

/// Moves every input's data into a binary body. Returns the body and the length of its
/// JSON header (the value of `Inference-Header-Content-Length`). With `binary_outputs`,
/// the answer is asked for in binary too.
pub fn encode_request(request: &InferRequest, binary_outputs: bool) -> Result<(Vec<u8>, usize), BinaryError> {
    let mut header = request.clone();
    let mut tail = Vec::new();
    for input in &mut header.inputs {
        let Some(data) = input.data.take() else { continue };
        let dtype: DType = input.datatype.parse().map_err(|e| BinaryError::Tensor {
            name: input.name.clone(),
            reason: format!("{e}"),
        })?;
        let start = tail.len();
        encode_tensor(&input.name, dtype, &data, &mut tail)?;
        set_param(
            &mut input.parameters,
            "binary_data_size",
            Value::from(tail.len() - start),
        );
    }
    if binary_outputs {
        set_param(&mut header.parameters, "binary_data_output", Value::Bool(true));
    }
    let mut body = crate::v2::to_vec(&header).map_err(|e| BinaryError::Header(e.to_string()))?;
    let header_len = body.len();
    body.extend_from_slice(&tail);
    Ok((body, header_len))
}

/// Reads a response body: the JSON header (`header_len` bytes, or all of it when `None`)
/// and the binary outputs after it, filled into each output's `data`.
pub fn decode_response(body: &[u8], header_len: Option<usize>) -> Result<InferResponse, BinaryError> {
    let header_len = header_len.unwrap_or(body.len());
    if header_len > body.len() {
        return Err(BinaryError::Length {
            want: header_len as u64,
            got: body.len() as u64,
        });
    }
    let mut response: InferResponse =
        crate::v2::from_slice(&body[..header_len]).map_err(|e| BinaryError::Header(e.to_string()))?;
    let mut rest = &body[header_len..];
    for output in &mut response.outputs {
        let Some(size) = binary_data_size(output.parameters.as_ref())
            .map_err(|e| BinaryError::Header(format!("output `{}`: {e}", output.name)))?
        else {
            continue;
        };
        if (rest.len() as u64) < size {
            return Err(BinaryError::Length {
                want: size,
                got: rest.len() as u64,
            });
        }
        let (bytes, tail) = rest.split_at(size as usize);
        let dtype: DType = output.datatype.parse().map_err(|e| BinaryError::Tensor {
            name: output.name.clone(),
            reason: format!("{e}"),
        })?;
        output.data = Some(decode_tensor(&output.name, dtype, bytes)?);
        rest = tail;
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::InferInput;

    #[test]
    fn a_request_moves_its_data_behind_the_header() {
        let request = InferRequest {
            inputs: vec![InferInput::fp32("INPUT0", vec![1, 2], vec![1.0, -2.0])],
            ..Default::default()
        };
        let (body, header_len) = encode_request(&request, true).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&body[..header_len]).unwrap();
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(header["parameters"]["binary_data_output"], true);
        assert!(header["inputs"][0].get("data").is_none());
        assert_eq!(
            &body[header_len..],
            [1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn bytes_elements_round_trip_and_truncation_is_caught() {
        let data = TensorData::Strings(vec!["ab".into(), "".into()]);
        let mut out = Vec::new();
        encode_tensor("s", DType::Bytes, &data, &mut out).unwrap();
        assert_eq!(decode_tensor("s", DType::Bytes, &out).unwrap(), data);
        assert!(decode_tensor("s", DType::Bytes, &out[..5]).is_err());
        assert!(
            decode_tensor("f", DType::F32, &[0; 6])
                .unwrap_err()
                .to_string()
                .contains("not a whole number")
        );
    }
}
