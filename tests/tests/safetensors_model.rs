//! Models served from a deployment file and a safetensors file written by the test.

use prism_client::v2::{InferInput, InferRequest};
use prism_tests::{TestServer, config, random, reference, write_safetensors};

const IN: usize = 12;
const HIDDEN: usize = 16;
const OUT: usize = 5;

fn deployment(weights: &str, layers: &str, input: usize, output: usize) -> String {
    format!(
        r#"
[[deployments]]
name = "net"
num_replicas = 2

[deployments.model]
weights = "{weights}"
layers = [{layers}]
inputs  = [{{ name = "x", datatype = "FP32", shape = [-1, {input}] }}]
outputs = [{{ name = "y", datatype = "FP32", shape = [-1, {output}] }}]

[deployments.batching]
max_batch_size = 16
batch_wait_timeout_ms = 1
"#
    )
}

/// Every CPU op in one model: linear, gelu, matmul, add, sigmoid, tanh, relu, softmax.
const LAYERS: &str = r#"
  { op = "linear", weight = "l1.weight", bias = "l1.bias" },
  { op = "gelu" },
  { op = "matmul", weight = "m2" },
  { op = "add", tensor = "b2" },
  { op = "tanh" },
  { op = "linear", weight = "l3.weight" },
  { op = "sigmoid" },
  { op = "gelu", approximate = "tanh" },
  { op = "relu" },
  { op = "softmax" },
"#;

fn tensors() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    vec![
        ("l1.weight", vec![HIDDEN, IN], random(HIDDEN * IN, 1)),
        ("l1.bias", vec![HIDDEN], random(HIDDEN, 2)),
        ("m2", vec![HIDDEN, HIDDEN], random(HIDDEN * HIDDEN, 3)),
        ("b2", vec![HIDDEN], random(HIDDEN, 4)),
        ("l3.weight", vec![OUT, HIDDEN], random(OUT * HIDDEN, 5)),
        ("unused", vec![3], vec![1.0, 2.0, 3.0]),
    ]
}

fn erf(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 is too coarse; integrate instead (Simpson, fine grid).
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

fn forward_reference(x: &[f32], rows: usize) -> Vec<f64> {
    let t = tensors();
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut h = reference::linear(&x, rows, &t[0].2, HIDDEN, Some(&t[1].2));
    h.iter_mut().for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v / 2f64.sqrt())));
    let mut h = reference::matmul(&h, rows, &t[2].2, HIDDEN);
    for (i, v) in h.iter_mut().enumerate() {
        *v = (*v + t[3].2[i % HIDDEN] as f64).tanh();
    }
    let mut y = reference::linear(&h, rows, &t[4].2, OUT, None);
    let c = (2.0 / std::f64::consts::PI).sqrt();
    y.iter_mut().for_each(|v| {
        let s = 1.0 / (1.0 + (-*v).exp());
        *v = (0.5 * s * (1.0 + (c * (s + 0.044715 * s * s * s)).tanh())).max(0.0);
    });
    reference::softmax(&mut y, OUT);
    y
}

#[tokio::test]
async fn a_safetensors_model_from_a_config_file_matches_float64() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(&dir.path().join("net.safetensors"), &tensors());
    let server = TestServer::start(config(&deployment("net.safetensors", LAYERS, IN, OUT), dir.path())).await;

    let rows = 7;
    let x = random(rows * IN, 99);
    let request = InferRequest {
        inputs: vec![InferInput::fp32("x", vec![rows as i64, IN as i64], x.clone())],
        ..Default::default()
    };
    let answer = server.client.infer("net", &request).await.unwrap();
    let y = answer.output("y").expect("output y");
    assert_eq!(y.shape, vec![rows as i64, OUT as i64]);
    let got = y.data.as_ref().unwrap().to_f32().unwrap();
    let err = reference::max_error(&got, &forward_reference(&x, rows));
    assert!(err < 1e-5, "max relative error {err}");

    let meta = server.client.model_metadata("net").await.unwrap();
    assert_eq!(meta.platform, "prism_safetensors");
    server.stop().await.unwrap();
}

/// Starts `text` over the test's weights and returns the start-up error.
async fn refused(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(&dir.path().join("net.safetensors"), &tensors());
    match TestServer::try_start(config(text, dir.path())).await {
        Ok(_) => panic!("expected the deployment to be refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn bad_model_files_are_refused_at_start_up_with_file_tensor_and_reason() {
    let missing = refused(&deployment(
        "net.safetensors",
        r#"{ op = "linear", weight = "l9.weight" }"#,
        IN,
        HIDDEN,
    ))
    .await;
    assert!(
        missing.contains("net.safetensors") && missing.contains("tensor `l9.weight` not found"),
        "{missing}"
    );

    let chain = refused(&deployment(
        "net.safetensors",
        r#"{ op = "linear", weight = "l1.weight" }, { op = "linear", weight = "l1.weight" }"#,
        IN,
        HIDDEN,
    ))
    .await;
    assert!(
        chain.contains("layer 1 (linear)") && chain.contains("expects 12 input features, but the layer receives 16"),
        "{chain}"
    );

    let width = refused(&deployment(
        "net.safetensors",
        r#"{ op = "linear", weight = "l1.weight" }"#,
        IN,
        3,
    ))
    .await;
    assert!(
        width.contains("produce 16 features per row, but `outputs` declares [-1, 3]"),
        "{width}"
    );

    let input = refused(&deployment(
        "net.safetensors",
        r#"{ op = "linear", weight = "l1.weight" }"#,
        11,
        HIDDEN,
    ))
    .await;
    assert!(
        input.contains("layer 0 (linear)") && input.contains("receives 11"),
        "{input}"
    );

    let file = refused(&deployment("absent.safetensors", r#"{ op = "relu" }"#, IN, IN)).await;
    assert!(file.contains("absent.safetensors: cannot open"), "{file}");

    let bias = refused(&deployment("net.safetensors", r#"{ op = "linear", weight = "l1.weight", bias = "b2" }, { op = "relu" }, { op = "linear", weight = "l3.weight", bias = "l1.bias" }"#, IN, OUT)).await;
    assert!(
        bias.contains("layer 2 (linear): bias must have shape [5], got [16]"),
        "{bias}"
    );
}

#[tokio::test]
async fn integer_outputs_are_written_as_integers() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(&dir.path().join("w.safetensors"), &[("w", vec![1, 2], vec![1.0, -2.0])]);
    let text = deployment("w.safetensors", r#"{ op = "linear", weight = "w" }"#, 2, 1).replace(
        r#"{ name = "y", datatype = "FP32""#,
        r#"{ name = "y", datatype = "INT64""#,
    );
    let server = TestServer::start(config(&text, dir.path())).await;
    let request = InferRequest {
        inputs: vec![InferInput::fp32("x", vec![2, 2], vec![7.5, 1.0, 0.0, 2.0])],
        ..Default::default()
    };
    let body = reqwest::Client::new()
        .post(format!("{}/v2/models/net/infer", server.url))
        .json(&request)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // 7.5 - 2 = 5.5 and 0 - 4 = -4, cast as the binary form would be.
    assert!(body.contains(r#""datatype":"INT64","data":[5,-4]"#), "{body}");
    let binary = server.client.infer_binary("net", &request, true).await.unwrap();
    assert_eq!(
        binary.outputs[0].data.as_ref().and_then(|d| d.to_f32()),
        Some(vec![5.0, -4.0])
    );
    // Kept in the object store (async, or an output by ref), it is stored as INT64 too.
    let c = &server.client;
    let by_ref = c.infer_to_refs("net", &request, &["y"]).await.unwrap();
    let queued = c.infer_async("net", &request).await.unwrap();
    for (_, r) in by_ref.into_iter().chain(queued) {
        let t = c.get(&r, None).await.unwrap();
        assert_eq!(t.datatype, prism_client::DType::I64);
        assert_eq!(t.data, prism_client::v2::TensorData::Integers(vec![5, -4]));
    }
    server.stop().await.unwrap();
}

#[test]
fn unknown_keys_in_a_model_file_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = deployment(
        "net.safetensors",
        r#"{ op = "linear", weight = "l1.weight", bias_name = "l1.bias" }"#,
        IN,
        HIDDEN,
    );
    let err = prism_config::Config::parse(&text, "net.toml", Some(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("net.toml") && err.contains("bias_name"), "{err}");
}
