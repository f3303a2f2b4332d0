//! The embedded default deployment, through real HTTP and `prism-client`.

use prism_client::v2::{InferInput, InferRequest, TensorData};
use prism_config::Config;
use prism_kernels::builtin;
use prism_tests::{TestServer, random, reference};

fn request(name: &str, rows: usize, cols: usize, data: Vec<f32>) -> InferRequest {
    InferRequest {
        inputs: vec![InferInput::fp32(name, vec![rows as i64, cols as i64], data)],
        ..Default::default()
    }
}

fn values(data: &Option<TensorData>) -> Vec<f32> {
    data.as_ref()
        .expect("the output has data")
        .to_f32()
        .expect("numeric output")
}

/// The default MLP in float64, from the same seeded weights the server draws.
fn mlp_reference(x: &[f32], rows: usize) -> Vec<f64> {
    let t = builtin::mlp_tensors();
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut h = reference::linear(&x, rows, &t[0].2, 256, Some(&t[1].2));
    h.iter_mut().for_each(|v| *v = v.max(0.0));
    let mut y = reference::linear(&h, rows, &t[2].2, 10, Some(&t[3].2));
    reference::softmax(&mut y, 10);
    y
}

#[tokio::test]
async fn celsius_turns_100_into_212() {
    let server = TestServer::start(Config::embedded_default()).await;
    let inputs = vec![100.0, 0.0, -40.0, 37.0];
    let answer = server
        .client
        .infer("celsius", &request("INPUT0", 4, 1, inputs.clone()))
        .await
        .unwrap();
    let out = answer.output("OUTPUT0").expect("OUTPUT0");
    assert_eq!(out.shape, vec![4, 1]);
    assert_eq!(out.datatype, "FP32");
    let want: Vec<f64> = inputs.iter().map(|&c| 9.0 / 5.0 * c as f64 + 32.0).collect();
    assert!(reference::max_error(&values(&out.data), &want) < 1e-6, "{:?}", out.data);
    assert_eq!(values(&out.data)[0], 212.0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mlp_matches_a_float64_reference_in_json_and_binary() {
    let server = TestServer::start(Config::embedded_default()).await;
    let rows = 5;
    let x: Vec<f32> = random(rows * 784, 7).into_iter().map(|v| v.abs()).collect();
    let want = mlp_reference(&x, rows);

    let json = server
        .client
        .infer("mlp", &request("INPUT0", rows, 784, x.clone()))
        .await
        .unwrap();
    let got = values(&json.outputs[0].data);
    assert_eq!(json.outputs[0].shape, vec![rows as i64, 10]);
    assert!(
        reference::max_error(&got, &want) < 1e-5,
        "JSON answer is off by {}",
        reference::max_error(&got, &want)
    );

    let binary = server
        .client
        .infer_binary("mlp", &request("INPUT0", rows, 784, x), true)
        .await
        .unwrap();
    let out = &binary.outputs[0];
    assert_eq!(
        out.parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
            .and_then(|v| v.as_u64()),
        Some(rows as u64 * 40)
    );
    assert_eq!(values(&out.data), got, "binary and JSON answers are the same numbers");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metadata_config_stats_and_health_speak_v2_and_triton() {
    let server = TestServer::start(Config::embedded_default()).await;
    let c = &server.client;
    assert!(c.server_live().await.unwrap());
    assert!(c.server_ready().await.unwrap());
    assert!(c.model_ready("mlp").await.unwrap());
    assert!(!c.model_ready("nope").await.unwrap());

    let meta = c.server_metadata().await.unwrap();
    assert_eq!(meta.name, "prism");
    for ext in ["binary_tensor_data", "statistics", "model_configuration"] {
        assert!(
            meta.extensions.iter().any(|e| e == ext),
            "{ext} missing from {:?}",
            meta.extensions
        );
    }

    let m = c.model_metadata("mlp").await.unwrap();
    assert_eq!(
        (m.inputs[0].name.as_str(), m.inputs[0].datatype.as_str()),
        ("INPUT0", "FP32")
    );
    assert_eq!(m.inputs[0].shape, vec![-1, 784]);
    assert_eq!(m.outputs[0].shape, vec![-1, 10]);

    let cfg = c.model_config("mlp").await.unwrap();
    assert_eq!(cfg["max_batch_size"], 32);
    assert_eq!(cfg["input"][0]["dims"], serde_json::json!([784]));
    assert_eq!(cfg["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(cfg["dynamic_batching"]["max_queue_delay_microseconds"], 2000);

    c.infer("celsius", &request("INPUT0", 3, 1, vec![1.0, 2.0, 3.0]))
        .await
        .unwrap();
    let stats = c.model_statistics(Some("celsius")).await.unwrap();
    let s = &stats["model_stats"][0];
    assert_eq!(s["name"], "celsius");
    assert_eq!(s["inference_count"], 3);
    assert_eq!(s["execution_count"], 1);
    assert_eq!(s["inference_stats"]["success"]["count"], 1);
    let all = c.model_statistics(None).await.unwrap();
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 2);

    // The `/versions/1` forms reach the same model; other versions do not exist.
    let http = reqwest::Client::new();
    let v1 = http
        .get(format!("{}/v2/models/mlp/versions/1", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(v1.status(), 200);
    let v2 = http
        .get(format!("{}/v2/models/mlp/versions/2/ready", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), 404);
    assert!(v2.text().await.unwrap().contains("no version `2`"));

    let index = c.repository_index().await.unwrap();
    let names: Vec<_> = index.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["celsius", "mlp", "sum_of_squares"]);
    assert!(index.iter().all(|m| m.state.as_deref() == Some("READY")));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_serving_families() {
    let server = TestServer::start(Config::embedded_default()).await;
    let c = &server.client;
    c.infer("celsius", &request("INPUT0", 1, 1, vec![1.0])).await.unwrap();
    let _ = c
        .infer("celsius", &request("INPUT0", 1, 2, vec![1.0, 2.0]))
        .await
        .unwrap_err();
    let text = c.metrics().await.unwrap();
    for line in [
        "prism_inference_requests_total{model=\"celsius\",outcome=\"success\"} 1",
        "prism_inference_requests_total{model=\"celsius\",outcome=\"bad_request\"} 1",
        "prism_batch_size_count{model=\"celsius\"} 1",
        "prism_queue_depth{model=\"mlp\"} 0",
        "prism_replicas{device=\"cpu\",model=\"mlp\"} 2",
        "prism_http_requests_total{method=\"POST\",route=\"/v2/models/{model}/infer\",status=\"200\"} 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    for family in [
        "# TYPE prism_inference_request_duration_seconds histogram",
        "# TYPE prism_inference_queue_duration_seconds histogram",
        "# TYPE prism_inference_compute_duration_seconds histogram",
    ] {
        assert!(text.contains(family), "missing `{family}`");
    }
    server.stop().await.unwrap();
}
