//! The element types of the V2 protocol, and their conversion to the `f32` that the
//! CPU kernels compute in.

use std::fmt;
use std::str::FromStr;

/// A V2 / Open Inference Protocol datatype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    Bytes,
}

impl DType {
    pub const ALL: [DType; 14] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::Bytes,
    ];

    /// The protocol's name: `FP32`, `INT64`, `BYTES`, ...
    pub fn v2_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::BF16 => "BF16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the binary tensor encoding; `None` for `BYTES` (variable).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }

    /// Whether values of this type convert to and from `f32` (everything but `BYTES`).
    pub fn is_numeric(self) -> bool {
        self != DType::Bytes
    }

    /// Decodes little-endian binary elements into `out` as `f32`. `bytes.len()` must be a
    /// multiple of [`DType::size`]; returns `false` for `BYTES`.
    pub fn decode_le(self, bytes: &[u8], out: &mut Vec<f32>) -> bool {
        macro_rules! conv {
            ($t:ty, $n:expr, $f:expr) => {
                out.extend(bytes.chunks_exact($n).map(|c| {
                    let v = <$t>::from_le_bytes(c.try_into().expect("chunk size matches"));
                    $f(v)
                }))
            };
        }
        match self {
            DType::Bool => out.extend(bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 })),
            DType::U8 => out.extend(bytes.iter().map(|&b| b as f32)),
            DType::I8 => out.extend(bytes.iter().map(|&b| b as i8 as f32)),
            DType::U16 => conv!(u16, 2, |v| v as f32),
            DType::I16 => conv!(i16, 2, |v| v as f32),
            DType::U32 => conv!(u32, 4, |v| v as f32),
            DType::I32 => conv!(i32, 4, |v| v as f32),
            DType::U64 => conv!(u64, 8, |v| v as f32),
            DType::I64 => conv!(i64, 8, |v| v as f32),
            DType::F16 => conv!(half::f16, 2, half::f16::to_f32),
            DType::BF16 => conv!(half::bf16, 2, half::bf16::to_f32),
            DType::F32 => conv!(f32, 4, |v| v),
            DType::F64 => conv!(f64, 8, |v| v as f32),
            DType::Bytes => return false,
        }
        true
    }

    /// Encodes `values` as little-endian elements of this type (integers saturate and
    /// round toward zero, as a cast does). Returns `false` for `BYTES`.
    pub fn encode_le(self, values: &[f32], out: &mut Vec<u8>) -> bool {
        macro_rules! put {
            ($f:expr) => {
                for &v in values {
                    out.extend_from_slice(&$f(v).to_le_bytes());
                }
            };
        }
        match self {
            DType::Bool => out.extend(values.iter().map(|&v| u8::from(v != 0.0))),
            DType::U8 => put!(|v: f32| v as u8),
            DType::I8 => put!(|v: f32| v as i8),
            DType::U16 => put!(|v: f32| v as u16),
            DType::I16 => put!(|v: f32| v as i16),
            DType::U32 => put!(|v: f32| v as u32),
            DType::I32 => put!(|v: f32| v as i32),
            DType::U64 => put!(|v: f32| v as u64),
            DType::I64 => put!(|v: f32| v as i64),
            DType::F16 => put!(half::f16::from_f32),
            DType::BF16 => put!(half::bf16::from_f32),
            DType::F32 => put!(|v: f32| v),
            DType::F64 => put!(|v: f32| v as f64),
            DType::Bytes => return false,
        }
        true
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.v2_name())
    }
}

/// An unknown datatype name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown datatype `{0}` (expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, BF16, FP32, FP64, BYTES)"
)]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.v2_name() == s)
            .ok_or_else(|| UnknownDType(s.to_owned()))
    }
}

impl serde::Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.v2_name())
    }
}

impl<'de> serde::Deserialize<'de> for DType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_numeric_type_round_trips_small_integers() {
        let values = [0.0f32, 1.0, 2.0, 100.0];
        for d in DType::ALL.into_iter().filter(|d| d.is_numeric() && *d != DType::Bool) {
            let mut bytes = Vec::new();
            assert!(d.encode_le(&values, &mut bytes));
            assert_eq!(bytes.len(), values.len() * d.size().unwrap(), "{d}");
            let mut back = Vec::new();
            assert!(d.decode_le(&bytes, &mut back));
            assert_eq!(back, values, "{d}");
            assert_eq!(d.v2_name().parse::<DType>().unwrap(), d);
        }
        assert!(!DType::Bytes.decode_le(&[], &mut Vec::new()));
        assert!("FLOAT".parse::<DType>().unwrap_err().to_string().contains("FP32"));
    }
}
