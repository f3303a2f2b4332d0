//! The soak's load: `--concurrency` workers, half over REST and half over gRPC, each
//! sending one request after another to `--model` until the server stops taking
//! connections. Prints what happened to every request as JSON:
//!
//! * `answered`: by HTTP status or gRPC code;
//! * `refused`: never processed (the connection was refused, or HTTP/2's GOAWAY said the
//!   stream was not taken): the worker stops there;
//! * `unsent`: gRPC calls still queued in the client when its connection closed after
//!   GOAWAY (hyper's `Canceled`): never written, so never processed;
//! * `lost`: sent, with no answer (a connection closed under it, a timeout): must be 0.
//!
//! `benches/soak.sh` runs it against a server it reloads and stops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_protocol::grpc::model_infer_request::InferInputTensor;
use prism_protocol::grpc::{GrpcInferenceServiceClient, ModelInferRequest};

#[derive(Default)]
struct Tally {
    sent: u64,
    answered: BTreeMap<String, u64>,
    refused: u64,
    /// gRPC calls the client's connection dropped before writing them (hyper's
    /// `Canceled`: the connection closed after GOAWAY with the call still queued in the
    /// client): never sent, so never processed; safe to retry.
    unsent: u64,
    lost: BTreeMap<String, u64>,
    lost_examples: Vec<String>,
    /// Answers other than success, for a look.
    error_examples: Vec<String>,
}

impl Tally {
    fn lose(&mut self, kind: &str, detail: String) {
        *self.lost.entry(kind.to_owned()).or_default() += 1;
        if self.lost_examples.len() < 5 {
            self.lost_examples.push(detail);
        }
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() {
    let url = arg("--url", "http://127.0.0.1:18300");
    let grpc_url = arg("--grpc-url", "http://127.0.0.1:18301");
    let model = arg("--model", "soak");
    let concurrency: usize = arg("--concurrency", "64").parse().expect("--concurrency: a number");
    let features: usize = arg("--features", "784").parse().expect("--features: a number");
    let timeout = Duration::from_secs(30);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let row: Vec<f32> = (0..features).map(|i| (i % 17) as f32 / 17.0).collect();
    let body = serde_json::json!({
        "inputs": [{"name": "INPUT0", "shape": [1, features], "datatype": "FP32", "data": row}]
    })
    .to_string();
    let grpc_request = ModelInferRequest {
        model_name: model.clone(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, features as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![row.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()],
        ..Default::default()
    };
    let http = reqwest::Client::builder().timeout(timeout).build().expect("a client");
    let grpc = GrpcInferenceServiceClient::connect(grpc_url.clone())
        .await
        .expect("the gRPC port accepts connections");
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let tally = Arc::clone(&tally);
        if w % 2 == 0 {
            let (http, url, body) = (http.clone(), format!("{url}/v2/models/{model}/infer"), body.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let sent = http.post(&url).body(body.clone()).send().await;
                    let answer = match sent {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            r.bytes().await.map(|_| status)
                        }
                        Err(e) => Err(e),
                    };
                    let mut t = tally.lock().unwrap();
                    match answer {
                        Ok(status) => {
                            t.sent += 1;
                            *t.answered.entry(format!("http_{status}")).or_default() += 1;
                        }
                        Err(e) if e.is_connect() => {
                            t.refused += 1;
                            return;
                        }
                        Err(e) => {
                            t.sent += 1;
                            let kind = if e.is_timeout() { "http_timeout" } else { "http_closed" };
                            t.lose(kind, format!("{e:?}"));
                            return;
                        }
                    }
                }
            }));
        } else {
            let (mut grpc, request) = (grpc.clone(), grpc_request.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let mut r = tonic::Request::new(request.clone());
                    r.set_timeout(timeout);
                    let answer = grpc.model_infer(r).await;
                    let mut t = tally.lock().unwrap();
                    match answer {
                        Ok(_) => {
                            t.sent += 1;
                            *t.answered.entry("grpc_Ok".into()).or_default() += 1;
                        }
                        Err(status) => {
                            let text = format!("{status:?}");
                            // Not processed: no connection, or the stream refused by GOAWAY.
                            if text.contains("tcp connect error")
                                || text.contains("Connection refused")
                                || text.contains("REFUSED_STREAM")
                            {
                                t.refused += 1;
                                return;
                            }
                            if text.contains("hyper::Error(Canceled") {
                                t.unsent += 1;
                                continue;
                            }
                            // The server's own answer carries no transport error.
                            if !text.contains("tonic::transport::Error") && !text.contains("h2 protocol error") {
                                if t.error_examples.len() < 5 {
                                    t.error_examples.push(text);
                                }
                                t.sent += 1;
                                *t.answered.entry(format!("grpc_{:?}", status.code())).or_default() += 1;
                                continue;
                            }
                            t.sent += 1;
                            t.lose("grpc_closed", text);
                            return;
                        }
                    }
                }
            }));
        }
    }
    for w in workers {
        let _ = w.await;
    }
    let t = tally.lock().unwrap();
    let lost: u64 = t.lost.values().sum();
    let report = serde_json::json!({
        "seconds": started.elapsed().as_secs_f64(),
        "concurrency": concurrency,
        "sent": t.sent,
        "answered": t.answered,
        "refused_after_stop": t.refused,
        "unsent_after_goaway": t.unsent,
        "lost": lost,
        "lost_by_kind": t.lost,
        "lost_examples": t.lost_examples,
        "error_examples": t.error_examples,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
