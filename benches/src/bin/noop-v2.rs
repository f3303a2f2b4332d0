//! The ceiling of the HTTP path: a V2 server that does all a V2 server must with a
//! request (read it; parse the JSON into f32 tensors, or split off the binary tensors)
//! and answers a fixed body, with no queue, no batch and no model.
//!
//! `prism bench` drives it exactly as it drives Prism; Prism's serving overhead is the
//! ratio of the two.
//!
//! Usage: `noop-v2 [ADDR]` (default 127.0.0.1:8010). Serves one model, `mlp`, shaped like
//! Prism's default (`INPUT0` FP32 [-1, 784] → `OUTPUT0` FP32 [-1, 10]).

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prism_client::v2::{self, InferRequest, InferResponse, MetadataTensor, ModelMetadata, TensorData};

fn metadata() -> ModelMetadata {
    let t = |name: &str, width| MetadataTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![-1, width],
    };
    ModelMetadata {
        name: "mlp".into(),
        versions: vec!["1".into()],
        platform: "noop".into(),
        inputs: vec![t("INPUT0", 784)],
        outputs: vec![t("OUTPUT0", 10)],
    }
}

async fn infer(headers: HeaderMap, body: Bytes) -> Response {
    let header_len = headers
        .get(v2::HEADER_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (json, binary) = match header_len {
        Some(n) if n <= body.len() => (body.slice(..n), body.slice(n..)),
        Some(_) => return (StatusCode::BAD_REQUEST, "bad header length").into_response(),
        None => (body.clone(), Bytes::new()),
    };
    let request: InferRequest = match v2::from_slice(&json) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // The work every V2 server does: every input's values as f32 (JSON) or its bytes (binary).
    let mut values = 0usize;
    for input in &request.inputs {
        match &input.data {
            Some(data @ (TensorData::Numbers(_) | TensorData::Integers(_))) => {
                let tensor = data.to_f32().expect("numbers convert to f32");
                values += std::hint::black_box(tensor).len();
            }
            Some(other) => values += other.len(),
            None => values += binary.len() / 4,
        }
    }
    std::hint::black_box(values);
    let binary_out = v2::bool_parameter(request.parameters.as_ref(), "binary_data_output").unwrap_or(false);
    let rows = request
        .inputs
        .first()
        .and_then(|i| i.shape.first())
        .copied()
        .unwrap_or(1)
        .max(1);
    let out = vec![0.1f32; rows as usize * 10];
    let mut output = v2::InferOutput {
        name: "OUTPUT0".into(),
        shape: vec![rows, 10],
        datatype: "FP32".into(),
        parameters: None,
        data: None,
    };
    let mut tail = Vec::new();
    if binary_out {
        tail = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut p = v2::Parameters::new();
        p.insert("binary_data_size".into(), tail.len().into());
        output.parameters = Some(p);
    } else {
        output.data = Some(TensorData::F32(out));
    }
    let response = InferResponse {
        model_name: "mlp".into(),
        model_version: Some("1".into()),
        id: request.id,
        parameters: None,
        outputs: vec![output],
    };
    let mut bytes = v2::to_vec(&response).expect("serializes");
    if !binary_out {
        return ([(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    }
    let n = bytes.len();
    bytes.extend_from_slice(&tail);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::HeaderName::from_static("inference-header-content-length"),
                n.to_string(),
            ),
        ],
        bytes,
    )
        .into_response()
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8010".into());
    let app = Router::new()
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .route("/v2/models/mlp", get(|| async { axum::Json(metadata()) }))
        .route("/v2/models/mlp/infer", post(infer));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("noop-v2 listening on http://{addr}");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serve");
}
