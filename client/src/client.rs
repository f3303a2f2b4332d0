//! An async client for any KServe V2 server.

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::binary::{self, BinaryError};
use crate::v2::{
    ErrorBody, HEADER_LENGTH, InferRequest, InferResponse, ModelMetadata, RepositoryModel, ServerMetadata,
};

/// `Authorization: Bearer <token>` as headers every request of a client carries.
pub fn bearer_headers(token: &str) -> Result<reqwest::header::HeaderMap, ClientError> {
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::Decode {
            url: String::new(),
            reason: "the token must be printable ASCII".into(),
        })?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    /// The server answered with an error status; `message` is its `{"error": ...}` text.
    #[error("{url}: server answered {status}: {message}")]
    Server { url: String, status: u16, message: String },
    #[error("{url}: unexpected answer: {reason}")]
    Decode { url: String, reason: String },
    #[error(transparent)]
    Binary(#[from] BinaryError),
}

impl ClientError {
    /// The HTTP status the server answered with, if it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one V2 server. Cheap to clone (connections are pooled and shared).
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `url` (like `http://127.0.0.1:8000`).
    pub fn new(url: &str) -> Self {
        Client {
            base: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    /// The same client sending `token` as `Authorization: Bearer <token>` with every
    /// request (a server's `api_token`, or its `admin_token` for load, unload and delete).
    pub fn with_token(self, token: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .default_headers(bearer_headers(token)?)
            .build()
            .map_err(|source| ClientError::Transport {
                url: self.base.clone(),
                source,
            })?;
        Ok(Client {
            http,
            token: Some(token.to_owned()),
            ..self
        })
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn model_path(model: &str, version: Option<&str>) -> String {
        match version {
            Some(v) => format!("/v2/models/{model}/versions/{v}"),
            None => format!("/v2/models/{model}"),
        }
    }

    /// The response if its status is a success; otherwise the server's error message.
    async fn check(url: String, response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        Err(ClientError::Server { url, status, message })
    }

    /// A JSON answer, decoded.
    pub(crate) async fn decode<T: DeserializeOwned>(&self, response: reqwest::Response) -> Result<T, ClientError> {
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        crate::v2::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    /// `method path` with `body` (JSON, or binary with its JSON header's length): the
    /// response if it succeeded, otherwise the server's error.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, Option<usize>)>,
    ) -> Result<reqwest::Response, ClientError> {
        self.send_accepting(method, path, body, None).await
    }

    /// [`Client::send`], asking for the answer in `accept` (a media type) when given.
    pub(crate) async fn send_accepting(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, Option<usize>)>,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(media) = accept {
            req = req.header("Accept", media);
        }
        if let Some((bytes, header_len)) = body {
            req = match header_len {
                Some(n) => req
                    .header(HEADER_LENGTH, n)
                    .header("Content-Type", "application/octet-stream"),
                None => req.header("Content-Type", "application/json"),
            }
            .body(bytes);
        }
        let response = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        Self::check(url, response).await
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body.map(|b| (b, None))).await?;
        self.decode(response).await
    }

    /// A 200 is `true`; any other answer from the server is `false`.
    async fn probe(&self, path: &str) -> Result<bool, ClientError> {
        match self.send(Method::GET, path, None).await {
            Ok(_) => Ok(true),
            Err(ClientError::Server { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn server_live(&self) -> Result<bool, ClientError> {
        self.probe("/v2/health/live").await
    }

    pub async fn server_ready(&self) -> Result<bool, ClientError> {
        self.probe("/v2/health/ready").await
    }

    pub async fn model_ready(&self, model: &str) -> Result<bool, ClientError> {
        self.probe(&format!("{}/ready", Self::model_path(model, None))).await
    }

    pub async fn server_metadata(&self) -> Result<ServerMetadata, ClientError> {
        self.json(Method::GET, "/v2", None).await
    }

    pub async fn model_metadata(&self, model: &str) -> Result<ModelMetadata, ClientError> {
        self.json(Method::GET, &Self::model_path(model, None), None).await
    }

    /// Triton's model-configuration extension, as JSON.
    pub async fn model_config(&self, model: &str) -> Result<Value, ClientError> {
        self.json(Method::GET, &format!("{}/config", Self::model_path(model, None)), None)
            .await
    }

    /// Triton's statistics extension, for one model or all.
    pub async fn model_statistics(&self, model: Option<&str>) -> Result<Value, ClientError> {
        let path = match model {
            Some(m) => format!("{}/stats", Self::model_path(m, None)),
            None => "/v2/models/stats".to_owned(),
        };
        self.json(Method::GET, &path, None).await
    }

    /// The models the server has (the model-repository extension's index).
    pub async fn repository_index(&self) -> Result<Vec<RepositoryModel>, ClientError> {
        self.json(Method::POST, "/v2/repository/index", Some(b"{}".to_vec()))
            .await
    }

    /// An inference request with its tensors as JSON.
    pub async fn infer(&self, model: &str, request: &InferRequest) -> Result<InferResponse, ClientError> {
        let body = crate::v2::to_vec(request).map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        self.json(
            Method::POST,
            &format!("{}/infer", Self::model_path(model, None)),
            Some(body),
        )
        .await
    }

    /// An inference request with its input tensors in the binary extension; outputs come
    /// back binary when `binary_outputs`, and are decoded into `data` either way.
    pub async fn infer_binary(
        &self,
        model: &str,
        request: &InferRequest,
        binary_outputs: bool,
    ) -> Result<InferResponse, ClientError> {
        let (body, header_len) = binary::encode_request(request, binary_outputs)?;
        self.infer_raw(model, body, Some(header_len)).await
    }

    /// Sends a prepared body (`header_len`: the JSON part's length for a binary body).
    pub async fn infer_raw(
        &self,
        model: &str,
        body: Vec<u8>,
        header_len: Option<usize>,
    ) -> Result<InferResponse, ClientError> {
        let path = format!("{}/infer", Self::model_path(model, None));
        let response = self.send(Method::POST, &path, Some((body, header_len))).await?;
        let (bytes, answer_header_len) = Self::binary_answer(response).await?;
        Ok(binary::decode_response(&bytes, answer_header_len)?)
    }

    /// An answer's body and, when it is binary, its JSON header's length
    /// (`Inference-Header-Content-Length`).
    pub(crate) async fn binary_answer(
        response: reqwest::Response,
    ) -> Result<(bytes::Bytes, Option<usize>), ClientError> {
        let url = response.url().to_string();
        let header_len = response
            .headers()
            .get(HEADER_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        Ok((bytes, header_len))
    }

    /// The Prometheus text of `GET /metrics`.
    /// Registers `byte_size` bytes of the POSIX shared memory object `key` (like
    /// `/name`) from `offset` as region `name` (Triton's system shared-memory extension).
    pub async fn register_system_shared_memory(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), ClientError> {
        let body = serde_json::json!({ "key": key, "offset": offset, "byte_size": byte_size });
        let path = format!("/v2/systemsharedmemory/region/{name}/register");
        self.send(Method::POST, &path, Some((body.to_string().into_bytes(), None)))
            .await
            .map(drop)
    }

    /// Unregisters region `name`.
    pub async fn unregister_system_shared_memory(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v2/systemsharedmemory/region/{name}/unregister");
        self.send(Method::POST, &path, None).await.map(drop)
    }

    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = format!("{}/metrics", self.base);
        let response = self.send(Method::GET, "/metrics", None).await?;
        response
            .text()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }
}
