//! The OpenAI embeddings API, as retrieval tools call it: `POST /v1/embeddings` and
//! `GET /v1/models`. `model` names a deployment, so one server serves many models on one
//! port. The request becomes a V2 request for the deployment's `TEXT` and `EMBEDDING` and
//! runs the one inference path; errors are answered in OpenAI's shape.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use prism_protocol::DType;
use prism_protocol::v2::TensorData;
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::infer::body_error;
use super::respond::{self, ApiError};
use crate::codec::{self, AnswerValue, Input, InputValue, RequestedOutput, Values, invalid};
use crate::serving::model::{EMBEDDING, TEXT};
use crate::state::Served;

/// An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
pub struct OpenAiError(ApiError);

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        OpenAiError(e.into())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status = respond::status(&self.0);
        let (kind, code) = respond::openai_error(&self.0);
        let body = json!({ "error": { "message": self.0.to_string(), "type": kind, "code": code } });
        (status, Json(body)).into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    /// OpenAI's end-user id: accepted, not used.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// `input`: a string or a list of strings (OpenAI also takes token ids, which a model
/// with its own tokenizer cannot use).
fn texts(input: Value) -> Result<Vec<String>, codec::DecodeError> {
    let bad = |what: &str| invalid(format!("`input`: expected a string or a list of strings, got {what}"));
    let texts = match input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => Err(invalid(
                    "`input`: token ids are not supported: send the texts (the model tokenizes them itself)",
                )),
                other => Err(bad(&other.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(bad(&other.to_string())),
    };
    if texts.is_empty() {
        return Err(invalid("`input`: the list is empty; send at least one text"));
    }
    Ok(texts)
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(app): App, body: Result<Bytes, BytesRejection>) -> Result<Response, OpenAiError> {
    let arrived = tokio::time::Instant::now();
    let body = body.map_err(|r| body_error(r, app.max_request_bytes))?;
    let request: EmbeddingsRequest =
        serde_json::from_slice(&body).map_err(|e| invalid(format!("invalid embeddings request: {e}")))?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(format!(
                "`encoding_format`: expected \"float\" or \"base64\", got {other:?}"
            ))
            .into());
        }
    };
    let target = app.resolve(&request.model, None)?;
    let width = match &target {
        Served::Deployment(d) => d.signature.output(EMBEDDING).and_then(|t| t.shape.get(1).copied()),
        Served::Pipeline(_) => None,
    };
    let Some(width) = width else {
        return Err(invalid(format!(
            "`model`: `{}` is not an embedding model (its outputs are {}); name a deployment that answers EMBEDDING",
            request.model,
            target.outputs().iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))
        .into());
    };
    if let Some(d) = request.dimensions
        && d as i64 != width
    {
        return Err(invalid(format!(
            "`dimensions`: `{}` answers {width} dimensions and cannot shorten them; leave `dimensions` out or send {width}",
            request.model
        ))
        .into());
    }
    let texts = texts(request.input)?;
    let n = texts.len();
    let v2 = codec::Request {
        id: None,
        inputs: vec![Input {
            name: TEXT.into(),
            value: InputValue::Tensor(codec::Tensor {
                datatype: DType::Bytes,
                shape: vec![n as i64],
                values: Values::Json(TensorData::Strings(texts)),
            }),
        }],
        outputs: vec![RequestedOutput {
            name: EMBEDDING.into(),
            binary: None,
            by_ref: false,
            shared: None,
        }],
        binary_output: false,
        run_async: false,
        timeout: None,
        truncate: true,
    };
    let answer = app.infer(target, Ok(v2), arrived).await?;
    let tokens = answer.tokens.unwrap_or(0);
    let Some(AnswerValue::Rows { values, .. }) = answer.outputs.into_iter().next().map(|o| o.value) else {
        unreachable!("an embedding request answers its rows. This is a bug.")
    };
    let data: Vec<Value> = values
        .rows()
        .into_iter()
        .enumerate()
        .map(|(index, row)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(row.to_vec())
            };
            json!({ "object": "embedding", "embedding": embedding, "index": index })
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `GET /v1/models`: the deployments that answer embeddings.
pub async fn models(State(app): App) -> Json<Value> {
    let data: Vec<Value> = app
        .deployments
        .iter()
        .filter(|d| d.signature.output(EMBEDDING).is_some())
        .map(|d| json!({ "id": d.name(), "object": "model", "created": 0, "owned_by": "prism" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
