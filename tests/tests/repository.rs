//! Triton's model repository extension: index, unload and load (which re-reads the
//! weights file), over real HTTP.

use std::path::Path;

use prism_client::v2::{InferInput, InferRequest};
use prism_tests::{TestServer, celsius, config, metric, write_safetensors};
use serde_json::json;

/// `y = x · 2 + 1` or whatever `scale` and `shift` say: one `linear` layer, 1 → 1.
fn write_weights(path: &Path, scale: f32, shift: f32) {
    // Written beside and renamed over the served file, as a weights update should be: the
    // replicas still serving map the old file, which must not change under them.
    let fresh = path.with_extension("new");
    write_safetensors(&fresh, &[("w", vec![1, 1], vec![scale]), ("b", vec![1], vec![shift])]);
    std::fs::rename(&fresh, path).unwrap();
}

fn deployment(weights: &Path) -> String {
    format!(
        r#"
[[deployments]]
name = "affine"
num_replicas = 2

[deployments.model]
weights = "{}"
layers = [{{ op = "linear", weight = "w", bias = "b" }}]
inputs  = [{{ name = "x", datatype = "FP32", shape = [-1, 1] }}]
outputs = [{{ name = "y", datatype = "FP32", shape = [-1, 1] }}]

[deployments.actor]
num_cpus = 0
"#,
        weights.display()
    ) + &celsius("celsius", "")
}

/// `prism_replicas` of the `affine` model, as `/metrics` reports it.
async fn running_replicas(s: &TestServer) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, r#"prism_replicas{device="cpu",model="affine"}"#)
}

fn x(value: f32) -> InferRequest {
    InferRequest {
        inputs: vec![InferInput::fp32("x", vec![1, 1], vec![value])],
        ..Default::default()
    }
}

#[tokio::test]
async fn unload_stops_a_model_and_load_brings_it_back_with_new_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("affine.safetensors");
    write_weights(&weights, 2.0, 1.0);
    let s = TestServer::start(config(&deployment(&weights), dir.path())).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| http.post(format!("{}{path}", s.url)).json(&body).send();
    let answer = |r: prism_client::v2::InferResponse| r.outputs[0].data.as_ref().unwrap().to_f32().unwrap();

    assert_eq!(answer(s.client.infer("affine", &x(3.0)).await.unwrap()), vec![7.0]);
    let index = post("/v2/repository/index", json!({})).await.unwrap();
    assert_eq!(index.status(), 200);
    let index: serde_json::Value = index.json().await.unwrap();
    assert_eq!(
        index[0],
        json!({"name": "affine", "version": "1", "state": "READY", "reason": ""})
    );

    // Unload: the model answers 503, the rest of the server stays ready.
    let r = post(
        "/v2/repository/models/affine/unload",
        json!({"parameters": {"unload_dependents": false}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let err = s.client.infer("affine", &x(3.0)).await.unwrap_err().to_string();
    assert!(err.contains("503") && err.contains("not ready"), "{err}");
    assert_eq!(
        s.client
            .infer("celsius", &prism_tests::one_row(100.0))
            .await
            .unwrap()
            .outputs
            .len(),
        1
    );
    let ready = http.get(format!("{}/v2/health/ready", s.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "an unloaded model is not waited for");
    let model_ready = http
        .get(format!("{}/v2/models/affine/ready", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(model_ready.status(), 503);
    let index: serde_json::Value = post("/v2/repository/index", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    assert_eq!(index[0]["reason"], "unloaded");
    let only_ready: serde_json::Value = post("/v2/repository/index", json!({"ready": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(only_ready.as_array().unwrap().len(), 1, "{only_ready}");
    assert_eq!(running_replicas(&s).await, Some(0.0));

    // Load reads the weights file again.
    write_weights(&weights, -1.0, 0.5);
    let r = post("/v2/repository/models/affine/load", json!({})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(answer(s.client.infer("affine", &x(3.0)).await.unwrap()), vec![-2.5]);
    assert_eq!(running_replicas(&s).await, Some(2.0));
    let status = s.get_json("/v2/status").await;
    assert_eq!(status["deployments"][0]["loaded"], true);
    assert_eq!(status["deployments"][0]["replicas"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn reloading_a_loaded_model_drops_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("affine.safetensors");
    write_weights(&weights, 1.0, 0.0);
    let s = TestServer::start(config(&deployment(&weights), dir.path())).await;
    let load_url = format!("{}/v2/repository/models/affine/load", s.url);

    // Clients keep sending while the model is loaded again three times, its weights changed
    // before each: every request is answered, by the old weights or the new.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let c = s.client.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..150 {
                    let r = c.infer("affine", &x(1.0)).await.expect("every request is answered");
                    answers.push(r.outputs[0].data.as_ref().unwrap().to_f32().unwrap()[0]);
                }
                answers
            })
        })
        .collect();
    let http = reqwest::Client::new();
    for version in 2..=4 {
        write_weights(&weights, version as f32, 0.0);
        let r = http.post(&load_url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    for c in clients {
        let answers = c.await.unwrap();
        assert!(answers.iter().all(|a| [1.0, 2.0, 3.0, 4.0].contains(a)), "{answers:?}");
        assert!(
            answers.windows(2).all(|w| w[0] <= w[1]),
            "never an older model after a newer one: {answers:?}"
        );
    }
    let last = s.client.infer("affine", &x(1.0)).await.unwrap();
    assert_eq!(last.outputs[0].data.as_ref().unwrap().to_f32().unwrap(), vec![4.0]);
}

#[tokio::test]
async fn load_refuses_what_it_cannot_do_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("affine.safetensors");
    write_weights(&weights, 2.0, 1.0);
    let s = TestServer::start(config(&deployment(&weights), dir.path())).await;
    let http = reqwest::Client::new();
    let load = |model: &str, body: serde_json::Value| {
        http.post(format!("{}/v2/repository/models/{model}/load", s.url))
            .json(&body)
            .send()
    };
    let error = |r: reqwest::Response| async move { (r.status().as_u16(), r.text().await.unwrap()) };

    let (code, body) = error(load("nope", json!({})).await.unwrap()).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = error(load("affine", json!({"parameters": {"config": "{}"}})).await.unwrap()).await;
    assert_eq!(code, 400);
    assert!(body.contains("`config` is not supported"), "{body}");

    // A broken weights file: the load fails with the reason, the old replicas serve on.
    std::fs::write(dir.path().join("broken"), b"not safetensors").unwrap();
    std::fs::rename(dir.path().join("broken"), &weights).unwrap();
    let (code, body) = error(load("affine", json!({})).await.unwrap()).await;
    assert_eq!(code, 500);
    assert!(
        body.contains("load failed: deployment `affine`") && body.contains("; it serves as before"),
        "{body}"
    );
    let r = s.client.infer("affine", &x(3.0)).await.unwrap();
    assert_eq!(r.outputs[0].data.as_ref().unwrap().to_f32().unwrap(), vec![7.0]);
}
