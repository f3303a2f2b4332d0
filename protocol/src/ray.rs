//! Prism's extensions to the V2 protocol, the Ray Core half: objects (`/v2/objects`),
//! `POST /v2/wait` and `POST /v2/tasks/{op}`.
//!
//! Refs travel as 32 lowercase hex digits; the server parses them into its own ref type,
//! the client keeps them as strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::v2::{Parameters, TensorData};

/// A tensor as the object and task extensions write it: the body of a put (JSON `data`,
/// or a header whose `binary_data_size` announces the bytes after it), an inline task
/// argument, and the answer of a get.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectTensor {
    /// In a get's answer: the object's ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<String>,
    pub datatype: String,
    pub shape: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
    /// `binary_data_size` for a binary body, `ttl_s` for a put's time-to-live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

/// `{"object_ref": "..."}`: the answer of a put and of a task, and a task argument passed
/// by reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefBody {
    pub object_ref: String,
}

/// `POST /v2/wait`: `ray.wait` over HTTP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    pub object_refs: Vec<String>,
    /// How many to wait for (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_returns: Option<usize>,
    /// How long to wait at most (forever when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The answer of `POST /v2/wait`: ready refs in the order they settled, the rest in the
/// order asked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitAnswer {
    pub ready: Vec<String>,
    pub not_ready: Vec<String>,
}

/// `POST /v2/tasks/{op}`. `options` are [`TaskOptions`], kept a JSON value here so that
/// the server's refusal can name it (`options: ...`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub args: Vec<TaskArgument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
}

/// One argument of a task: an object by its ref (`{"object_ref": ...}` alone) or a
/// tensor sent with the call (`datatype`, `shape` and `data`, as [`ObjectTensor`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskArgument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
}

impl TaskArgument {
    pub fn by_ref(object_ref: impl Into<String>) -> Self {
        TaskArgument {
            object_ref: Some(object_ref.into()),
            ..Default::default()
        }
    }

    /// What the argument is: a ref, or a tensor; a refusal names what is missing or
    /// given twice.
    pub fn resolve(self) -> Result<ArgumentValue, String> {
        match (self.object_ref, self.datatype, self.shape) {
            (Some(r), None, None) if self.data.is_none() => Ok(ArgumentValue::Ref(r)),
            (Some(_), ..) => Err("has `object_ref` and a tensor's fields; send one".into()),
            (None, Some(datatype), Some(shape)) => Ok(ArgumentValue::Tensor(ObjectTensor {
                object_ref: None,
                datatype,
                shape,
                data: self.data,
                parameters: self.parameters,
            })),
            (None, None, _) => Err("expected {\"object_ref\": ...} or a tensor: `datatype` is missing".into()),
            (None, Some(_), None) => Err("expected {\"object_ref\": ...} or a tensor: `shape` is missing".into()),
        }
    }
}

/// A [`TaskArgument`], resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgumentValue {
    Ref(String),
    Tensor(ObjectTensor),
}

impl From<ObjectTensor> for TaskArgument {
    fn from(t: ObjectTensor) -> Self {
        TaskArgument {
            object_ref: t.object_ref,
            datatype: Some(t.datatype),
            shape: Some(t.shape),
            data: t.data,
            parameters: t.parameters,
        }
    }
}

/// Per-call task options, as Ray's `.options(...)`; an absent field keeps the server's
/// default (1 CPU, no GPU, 3 retries of system failures, no application error retried,
/// the store's time-to-live).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_cpus: Option<f64>,
    /// A fraction of one card (≤ 1) or a whole number of cards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_gpus: Option<f64>,
    /// Custom logical resources, as declared in `[server.resources]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, f64>,
    /// Signed on the wire, so that a negative count is refused by the server with the
    /// range it takes rather than by the parser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    /// Application error kinds retried as well (`InjectedFault`, `ShapeError`); `null`
    /// is none.
    #[serde(default, deserialize_with = "null_as_empty", skip_serializing_if = "Vec::is_empty")]
    pub retry_exceptions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_injection: Option<FaultInjection>,
    /// Time-to-live of the result, seconds after its last access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<f64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Option::<Vec<String>>::deserialize(d).map(Option::unwrap_or_default)
}

/// Deliberate failures and delays of a task's executions, as a deployment file's
/// `fault_injection` writes them: `delay_ms` alone delays every execution.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_rate: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_options_leave_out_what_is_not_set_and_refuse_unknown_keys() {
        let o = TaskOptions {
            num_cpus: Some(0.5),
            fault_injection: Some(FaultInjection {
                delay_ms: Some(5.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"num_cpus": 0.5, "fault_injection": {"delay_ms": 5.0}})
        );
        assert_eq!(serde_json::from_value::<TaskOptions>(v).unwrap(), o);
        let none: TaskOptions = serde_json::from_value(serde_json::json!({"retry_exceptions": null})).unwrap();
        assert!(none.retry_exceptions.is_empty());
        let err = serde_json::from_value::<TaskOptions>(serde_json::json!({"num_cpu": 1})).unwrap_err();
        assert!(err.to_string().contains("unknown field `num_cpu`"), "{err}");
    }

    #[test]
    fn an_object_tensor_reads_a_put_header_and_writes_a_get_answer() {
        let put: ObjectTensor =
            serde_json::from_str(r#"{"datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}"#).unwrap();
        assert_eq!((put.datatype.as_str(), put.shape.as_slice()), ("FP32", &[2][..]));
        assert!(put.data.is_none() && put.object_ref.is_none());
        let answer = ObjectTensor {
            object_ref: Some("ab".repeat(16)),
            datatype: "INT64".into(),
            shape: vec![1],
            data: Some(TensorData::Integers(vec![7])),
            parameters: None,
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"object_ref":"{}","datatype":"INT64","shape":[1],"data":[7]}}"#,
                "ab".repeat(16)
            )
        );
    }
}
