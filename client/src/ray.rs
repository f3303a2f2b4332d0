//! The Ray-like half of the client: `put`, `get`, `wait`, `task`, `infer_async`, against
//! Prism's object and task extensions.
//!
//! ```no_run
//! # async fn demo() -> Result<(), prism_client::ClientError> {
//! use prism_client::{Client, Tensor, TaskOptions};
//! let c = Client::new("http://127.0.0.1:8000");
//! let x = c.put(&Tensor::fp32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])).await?;
//! let y = c.task("matmul", [x.clone().into(), x.into()], &TaskOptions::default()).await?;
//! println!("{:?}", c.get(&y, None).await?.to_f32());
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use prism_protocol::ray::{ObjectTensor, RefBody, TaskArgument, TaskOptions, TaskRequest, WaitAnswer, WaitRequest};

use crate::client::{Client, ClientError};
use crate::v2::{self, InferRequest, InferResponse, TensorData};
use crate::{DType, binary};

/// A reference to an object in the server's store (32 hex digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectRef(pub String);

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tensor: datatype, shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub datatype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn fp32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Tensor {
            datatype: DType::F32,
            shape,
            data: TensorData::F32(data),
        }
    }

    /// A rank-0 FP32 tensor.
    pub fn scalar(v: f32) -> Self {
        Self::fp32(Vec::new(), vec![v])
    }

    /// The values as `f32`, whatever the datatype.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.to_f32().unwrap_or_default()
    }

    /// The tensor as V2's JSON tensor object (`datatype`, `shape`, `data`).
    pub fn json(&self) -> Value {
        serde_json::to_value(self.object()).expect("a tensor serializes")
    }

    fn object(&self) -> ObjectTensor {
        ObjectTensor {
            datatype: self.datatype.to_string(),
            shape: self.shape.iter().map(|&d| d as i64).collect(),
            data: Some(self.data.clone()),
            ..Default::default()
        }
    }
}

/// A task argument: an object already in the store, or a tensor sent with the call.
#[derive(Clone, Debug)]
pub enum TaskArg {
    Ref(ObjectRef),
    Tensor(Tensor),
}

impl From<ObjectRef> for TaskArg {
    fn from(r: ObjectRef) -> Self {
        TaskArg::Ref(r)
    }
}

impl From<&ObjectRef> for TaskArg {
    fn from(r: &ObjectRef) -> Self {
        TaskArg::Ref(r.clone())
    }
}

impl From<Tensor> for TaskArg {
    fn from(t: Tensor) -> Self {
        TaskArg::Tensor(t)
    }
}

impl Client {
    /// `ray.put`: stores `tensor` (sent in the binary extension) and returns its ref. It
    /// lives until deleted, or the server's default time-to-live after its last access.
    pub async fn put(&self, tensor: &Tensor) -> Result<ObjectRef, ClientError> {
        self.put_object(tensor, None).await
    }

    /// Like [`Client::put`], living `ttl_s` seconds after its last access.
    pub async fn put_with_ttl(&self, tensor: &Tensor, ttl_s: f64) -> Result<ObjectRef, ClientError> {
        self.put_object(tensor, Some(ttl_s)).await
    }

    async fn put_object(&self, tensor: &Tensor, ttl_s: Option<f64>) -> Result<ObjectRef, ClientError> {
        let mut bytes = Vec::new();
        binary::encode_tensor("object", tensor.datatype, &tensor.data, &mut bytes)?;
        let mut parameters = v2::Parameters::new();
        parameters.insert("binary_data_size".into(), bytes.len().into());
        if let Some(t) = ttl_s {
            parameters.insert("ttl_s".into(), t.into());
        }
        let head = v2::to_vec(&ObjectTensor {
            datatype: tensor.datatype.to_string(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            parameters: Some(parameters),
            ..Default::default()
        })
        .expect("serializes");
        let header_len = head.len();
        let mut body = head;
        body.extend_from_slice(&bytes);
        let response = self
            .send(Method::POST, "/v2/objects", Some((body, Some(header_len))))
            .await?;
        let answer: RefBody = self.decode(response).await?;
        Ok(ObjectRef(answer.object_ref))
    }

    /// `ray.get`: waits until the object is ready (at most `timeout`; the server answers
    /// 504 past it) and fetches it in binary.
    pub async fn get(&self, r: &ObjectRef, timeout: Option<Duration>) -> Result<Tensor, ClientError> {
        let path = match timeout {
            Some(t) => format!("/v2/objects/{r}?timeout_ms={}", t.as_millis()),
            None => format!("/v2/objects/{r}"),
        };
        let url = format!("{}{path}", self.url());
        let response = self
            .send_accepting(Method::GET, &path, None, Some("application/octet-stream"))
            .await?;
        let (body, header_len) = Client::binary_answer(response).await?;
        let n = header_len.unwrap_or(body.len());
        if n > body.len() {
            return Err(ClientError::Decode {
                url,
                reason: format!(
                    "{} says the JSON header is {n} bytes, but the body has {}",
                    v2::HEADER_LENGTH,
                    body.len()
                ),
            });
        }
        let decode_error = |reason: String| ClientError::Decode {
            url: url.clone(),
            reason,
        };
        let head: ObjectTensor = v2::from_slice(&body[..n]).map_err(|e| decode_error(e.to_string()))?;
        let datatype: DType = head.datatype.parse().map_err(|e| decode_error(format!("{e}")))?;
        let shape = head
            .shape
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| decode_error(format!("shape {:?} has a negative dimension", head.shape)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let data = match head.data {
            Some(d) => d,
            None => binary::decode_tensor("object", datatype, &body[n..])?,
        };
        Ok(Tensor { datatype, shape, data })
    }

    /// The object's datatype, shape, size and state (`pending`, `ready`, `spilled`,
    /// `failed`), without waiting.
    pub async fn object_meta(&self, r: &ObjectRef) -> Result<Value, ClientError> {
        self.json(Method::GET, &format!("/v2/objects/{r}/meta"), None).await
    }

    /// Frees the object (work already using it keeps it until done).
    pub async fn delete(&self, r: &ObjectRef) -> Result<(), ClientError> {
        self.send(Method::DELETE, &format!("/v2/objects/{r}"), None).await?;
        Ok(())
    }

    /// `ray.wait`: returns once `num_returns` of `refs` are ready or `timeout` has
    /// passed, as `(ready, not_ready)`; ready in completion order.
    pub async fn wait(
        &self,
        refs: &[ObjectRef],
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<(Vec<ObjectRef>, Vec<ObjectRef>), ClientError> {
        let body = WaitRequest {
            object_refs: refs.iter().map(|r| r.0.clone()).collect(),
            num_returns: Some(num_returns),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        };
        let answer: WaitAnswer = self
            .json(
                Method::POST,
                "/v2/wait",
                Some(serde_json::to_vec(&body).expect("serializes")),
            )
            .await?;
        let refs = |v: Vec<String>| v.into_iter().map(ObjectRef).collect();
        Ok((refs(answer.ready), refs(answer.not_ready)))
    }

    /// Starts the stateless task `op` (`matmul`, `add`, `square`, ...) over `args`;
    /// returns the ref of its result at once.
    pub async fn task(
        &self,
        op: &str,
        args: impl IntoIterator<Item = TaskArg>,
        options: &TaskOptions,
    ) -> Result<ObjectRef, ClientError> {
        self.task_with(op, args, options).await
    }

    /// [`Client::task`] with options given as any serializable value (JSON from a
    /// command line, say).
    pub async fn task_with(
        &self,
        op: &str,
        args: impl IntoIterator<Item = TaskArg>,
        options: &impl Serialize,
    ) -> Result<ObjectRef, ClientError> {
        let args = args
            .into_iter()
            .map(|a| match a {
                TaskArg::Ref(r) => TaskArgument::by_ref(r.0),
                TaskArg::Tensor(t) => t.object().into(),
            })
            .collect();
        let request = TaskRequest {
            args,
            options: Some(serde_json::to_value(options).expect("options serialize")),
        };
        let body = v2::to_vec(&request).expect("serializes");
        let answer: RefBody = self.json(Method::POST, &format!("/v2/tasks/{op}"), Some(body)).await?;
        Ok(ObjectRef(answer.object_ref))
    }

    /// Queues an inference and returns at once with the refs its outputs will have
    /// (`parameters.async`), by output name.
    pub async fn infer_async(
        &self,
        model: &str,
        request: &InferRequest,
    ) -> Result<Vec<(String, ObjectRef)>, ClientError> {
        let mut request = request.clone();
        request
            .parameters
            .get_or_insert_with(Default::default)
            .insert("async".into(), true.into());
        let answer = self.infer(model, &request).await?;
        output_refs(self.url(), &answer)
    }

    /// Runs an inference whose outputs stay in the store; returns their refs by name.
    pub async fn infer_to_refs(
        &self,
        model: &str,
        request: &InferRequest,
        outputs: &[&str],
    ) -> Result<Vec<(String, ObjectRef)>, ClientError> {
        let mut request = request.clone();
        request.outputs = Some(
            outputs
                .iter()
                .map(|name| {
                    let mut p = v2::Parameters::new();
                    p.insert("object_ref".into(), true.into());
                    v2::RequestedOutput {
                        name: (*name).to_owned(),
                        parameters: Some(p),
                    }
                })
                .collect(),
        );
        let answer = self.infer(model, &request).await?;
        output_refs(self.url(), &answer)
    }
}

fn output_refs(url: &str, answer: &InferResponse) -> Result<Vec<(String, ObjectRef)>, ClientError> {
    answer
        .outputs
        .iter()
        .map(|o| {
            let r = o
                .parameters
                .as_ref()
                .and_then(|p| p.get("object_ref"))
                .and_then(|v| v.as_str())
                .ok_or_else(|| ClientError::Decode {
                    url: url.to_owned(),
                    reason: format!("output `{}` has no object_ref parameter", o.name),
                })?;
            Ok((o.name.clone(), ObjectRef(r.to_owned())))
        })
        .collect()
}
