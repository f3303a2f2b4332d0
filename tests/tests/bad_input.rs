//! Bad requests get a 400 that says which input, what was expected and what came; the
//! server keeps serving.

use prism_client::v2::{InferInput, InferRequest, TensorData};
use prism_config::Config;
use prism_tests::TestServer;

struct Raw {
    http: reqwest::Client,
    url: String,
}

impl Raw {
    /// Posts `body` to `model`'s infer route; returns the status and the error message.
    async fn post(&self, model: &str, body: Vec<u8>, header_len: Option<usize>) -> (u16, String) {
        let mut req = self
            .http
            .post(format!("{}/v2/models/{model}/infer", self.url))
            .body(body);
        if let Some(n) = header_len {
            req = req.header("Inference-Header-Content-Length", n);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.expect("error answers are JSON");
        (status, body["error"].as_str().expect("an `error` field").to_owned())
    }

    async fn json(&self, model: &str, body: &str) -> (u16, String) {
        self.post(model, body.as_bytes().to_vec(), None).await
    }
}

fn celsius(shape: &str, datatype: &str, data: &str) -> String {
    format!(r#"{{"inputs":[{{"name":"INPUT0","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#)
}

async fn still_serves(server: &TestServer) {
    let r = InferRequest {
        inputs: vec![InferInput::fp32("INPUT0", vec![1, 1], vec![100.0])],
        ..Default::default()
    };
    let a = server
        .client
        .infer("celsius", &r)
        .await
        .expect("the server still serves");
    assert_eq!(
        a.outputs[0].data.as_ref().and_then(TensorData::to_f32),
        Some(vec![212.0])
    );
}

#[tokio::test]
async fn malformed_json_and_wrong_shapes_and_datatypes_get_useful_400s() {
    let server = TestServer::start(Config::embedded_default()).await;
    let raw = Raw {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "malformed JSON",
            r#"{"inputs": [{"name": "INPUT0""#.into(),
            "invalid inference request JSON",
        ),
        ("not an object", "[1, 2]".into(), "invalid inference request JSON"),
        ("no inputs", r#"{"inputs": []}"#.into(), "input `INPUT0` is missing"),
        (
            "unknown input",
            r#"{"inputs":[{"name":"X","shape":[1,1],"datatype":"FP32","data":[1]}]}"#.into(),
            "has no input `X`; its input is `INPUT0`",
        ),
        (
            "wrong width",
            celsius("[1, 2]", "FP32", "[1, 2]"),
            "input `INPUT0`: expected shape [-1, 1] (rows, then 1 value(s) per row), got [1, 2]",
        ),
        (
            "no batch dimension",
            celsius("[1]", "FP32", "[1]"),
            "expected shape [-1, 1]",
        ),
        (
            "zero rows",
            celsius("[0, 1]", "FP32", "[]"),
            "shape [0, 1] has 0 rows; give the actual number of rows",
        ),
        (
            "metadata shape",
            celsius("[-1, 1]", "FP32", "[1]"),
            "the -1 in the model's metadata marks the batch dimension",
        ),
        (
            "too few values",
            celsius("[3, 1]", "FP32", "[1, 2]"),
            "shape [3, 1] needs 3 values, got 2",
        ),
        (
            "too many rows",
            celsius("[65, 1]", "FP32", &format!("{:?}", vec![1.0; 65])),
            "65 rows exceed the model's max_batch_size of 64",
        ),
        (
            "unknown datatype",
            celsius("[1, 1]", "FLOAT32", "[1]"),
            "unknown datatype `FLOAT32`",
        ),
        (
            "BYTES datatype",
            celsius("[1, 1]", "BYTES", r#"["a"]"#),
            "datatype BYTES cannot be converted to the model's FP32",
        ),
        (
            "strings for FP32",
            celsius("[1, 1]", "FP32", r#"["a"]"#),
            "needs numbers, got strings",
        ),
        (
            "mixed data",
            celsius("[2, 1]", "FP32", r#"[1, "a"]"#),
            "mixes numbers and strings",
        ),
        (
            "no data",
            r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32"}]}"#.into(),
            "has no `data`",
        ),
        (
            "unknown output",
            r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"Y"}]}"#
                .into(),
            "has no output `Y`; its output is `OUTPUT0`",
        ),
    ];
    for (what, body, want) in cases {
        let (status, message) = raw.json("celsius", &body).await;
        assert_eq!(status, 400, "{what}: {message}");
        assert!(message.contains(want), "{what}: expected `{want}` in `{message}`");
    }
    let (status, message) = raw.json("nope", &celsius("[1, 1]", "FP32", "[1]")).await;
    assert_eq!((status, message.as_str()), (404, "unknown model `nope`"));
    still_serves(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_wire_datatype_is_converted_to_the_models_fp32() {
    let server = TestServer::start(Config::embedded_default()).await;
    for (datatype, data) in [
        ("INT64", "[100]"),
        ("UINT8", "[100]"),
        ("FP64", "[100.0]"),
        ("INT32", "[[100]]"),
        ("FP16", "[100]"),
    ] {
        let raw = Raw {
            http: reqwest::Client::new(),
            url: server.url.clone(),
        };
        let r = raw
            .http
            .post(format!("{}/v2/models/celsius/infer", raw.url))
            .body(celsius("[1, 1]", datatype, data))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{datatype}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([212.0]), "{datatype}");
    }
    // Non-finite values, written as Triton and perf_analyzer write them, are read and
    // refused (a deployment may allow them), as is a number beyond FP32.
    for (data, want) in [
        ("[100, NaN, -Infinity]", "element 1 (FP32) is NaN"),
        (
            "[100, 1, 1e39]",
            "element 2 (FP32) 1000000000000000000000000000000000000000 is beyond the range of FP32",
        ),
    ] {
        let r = reqwest::Client::new()
            .post(format!("{}/v2/models/celsius/infer", server.url))
            .body(celsius("[3, 1]", "FP32", data))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{data}");
        let e = r.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(e.contains(want) && e.contains("allow_non_finite = true"), "{data}: {e}");
    }
    // Binary INT16 and BOOL too.
    for (datatype, bytes, want) in [
        ("INT16", 100i16.to_le_bytes().to_vec(), 212.0),
        ("BOOL", vec![1u8], 33.8),
    ] {
        let header = format!(
            r#"{{"inputs":[{{"name":"INPUT0","shape":[1,1],"datatype":"{datatype}","parameters":{{"binary_data_size":{}}}}}]}}"#,
            bytes.len()
        );
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&bytes);
        let a = server
            .client
            .infer_raw("celsius", body, Some(header.len()))
            .await
            .unwrap();
        assert_eq!(
            a.outputs[0].data.as_ref().and_then(TensorData::to_f32),
            Some(vec![want]),
            "{datatype}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn truncated_or_inconsistent_binary_bodies_get_400s() {
    let server = TestServer::start(Config::embedded_default()).await;
    let raw = Raw {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let header = |size: usize, rows: usize| {
        format!(
            r#"{{"inputs":[{{"name":"INPUT0","shape":[{rows},784],"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}}]}}"#
        )
    };
    let full = 2 * 784 * 4;
    let body = |h: &str, tail: usize| {
        let mut b = h.as_bytes().to_vec();
        b.extend(std::iter::repeat_n(0u8, tail));
        b
    };

    let h = header(full, 2);
    let (status, message) = raw.post("mlp", body(&h, full - 10), Some(h.len())).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("the body ends after 6262 bytes of binary data, but binary_data_size announces 6272"),
        "{message}"
    );

    let h = header(full - 4, 2);
    let (status, message) = raw.post("mlp", body(&h, full - 4), Some(h.len())).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("binary_data_size is 6268 bytes, but shape [2, 784] of FP32 needs 6272 bytes"),
        "{message}"
    );

    let h = header(full, 2);
    let (status, message) = raw.post("mlp", body(&h, full), Some(h.len() + 10_000)).await;
    assert_eq!(status, 400);
    assert!(message.contains("says the JSON header is"), "{message}");

    let (status, message) = raw.post("mlp", body(&h, full), Some(h.len() - 5)).await;
    assert_eq!(status, 400);
    assert!(message.contains("invalid inference request JSON"), "{message}");

    let (status, message) = raw.post("mlp", body(&h, full), None).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("needs the Inference-Header-Content-Length header"),
        "{message}"
    );

    let r = raw
        .http
        .post(format!("{}/v2/models/mlp/infer", raw.url))
        .header("Content-Encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Content-Encoding `gzip` is not supported")
    );

    let (status, message) = raw.post("mlp", body(&h, full + 3), Some(h.len())).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("6275 bytes of binary data, but the inputs announce only 6272"),
        "{message}"
    );

    // The same body, correct, is served.
    let (status, _) = {
        let r = raw
            .http
            .post(format!("{}/v2/models/mlp/infer", raw.url))
            .header("Inference-Header-Content-Length", h.len())
            .body(body(&h, full))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 200);
    still_serves(&server).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nmax_request_bytes = 1000\n[[deployments]]{}",
        prism_config::DEFAULT_TOML.split_once("[[deployments]]").unwrap().1
    );
    let server = TestServer::start(prism_tests::config(&text, dir.path())).await;
    let raw = Raw {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let (status, message) = raw
        .json(
            "celsius",
            &celsius("[1, 1]", "FP32", &format!("[1{}]", " ".repeat(2000))),
        )
        .await;
    assert_eq!(status, 413);
    assert!(
        message.contains("limit of 1000 bytes (server.max_request_bytes)"),
        "{message}"
    );
    still_serves(&server).await;
    server.stop().await.unwrap();
}

/// Posts `body` to `path`; the status and the `error` message (every refusal is JSON).
async fn refusal(http: &reqwest::Client, url: String, body: impl Into<reqwest::Body>) -> (u16, String) {
    let r = http.post(url).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.expect("refusals are JSON");
    (status, v["error"].as_str().expect("an `error` field").to_owned())
}

#[tokio::test]
async fn out_of_range_values_stray_non_finite_tokens_and_bad_parameters_are_refused_clearly() {
    let server = TestServer::start(Config::embedded_default()).await;
    let http = reqwest::Client::new();
    let infer = || format!("{}/v2/models/celsius/infer", server.url);
    for (body, want) in [
        (
            celsius("[1, 1]", "INT8", "[300]"),
            "input `INPUT0`: 300 is out of range for INT8",
        ),
        (
            celsius("[1, 1]", "UINT8", "[-1]"),
            "input `INPUT0`: -1 is out of range for UINT8",
        ),
        (
            r#"{"id": NaN, "inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}]}"#.to_owned(),
            "NaN, Infinity and -Infinity are accepted only as elements of tensor data",
        ),
        (
            r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","parameters":{"binary_data_size":-4}}]}"#
                .to_owned(),
            "input `INPUT0`: parameter `binary_data_size` must be a byte count (an integer ≥ 0), got -4",
        ),
    ] {
        let (status, e) = refusal(&http, infer(), body.clone()).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e.contains(want), "{body}: {e}");
        assert!(!e.contains("prism-"), "{e}");
    }
    // A task's option: the token is refused, and no internal marker is echoed.
    let (status, e) = refusal(
        &http,
        format!("{}/v2/tasks/square", server.url),
        r#"{"args":[{"datatype":"FP32","shape":[1],"data":[2]}],"options":{"num_cpus":NaN}}"#,
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e.contains("accepted only as elements of tensor data") && !e.contains("prism-"),
        "{e}"
    );
    // Query strings are refused as JSON.
    let r = http
        .get(format!("{}/v2/objects/{}?timeout_ms=abc", server.url, "ab".repeat(16)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("JSON");
    assert!(v["error"].as_str().unwrap().contains("timeout_ms"), "{v}");
    // `/v2/wait`: duplicates and too many refs are refused, and a large list is quick to check.
    let refs: Vec<String> = (0..100_001u128).map(|i| format!("{i:032x}")).collect();
    let (status, e) = refusal(
        &http,
        format!("{}/v2/wait", server.url),
        serde_json::to_vec(&serde_json::json!({ "object_refs": refs })).unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(e.contains("more than the 100000 one wait may name"), "{e}");
    // 100,000 unique refs are read and checked (each is unknown here: 404).
    let (status, e) = refusal(
        &http,
        format!("{}/v2/wait", server.url),
        serde_json::to_vec(&serde_json::json!({ "object_refs": &refs[..100_000] })).unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    let (status, e) = refusal(
        &http,
        format!("{}/v2/wait", server.url),
        serde_json::to_vec(&serde_json::json!({ "object_refs": ["ab".repeat(16), "ab".repeat(16)] })).unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(e.contains("object_refs[1]") && e.contains("listed twice"), "{e}");
    still_serves(&server).await;
}

#[tokio::test]
async fn the_store_refuses_past_its_object_spill_and_size_limits() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[object_store]\nobject_store_memory = 1048576\nmax_spill_bytes = 1048576\nmax_objects = 8\nmax_object_bytes = 600000\nspill_dir = \"spill\"\n";
    let text = format!("{text}{}", prism_tests::celsius("celsius", ""));
    let server = TestServer::start(prism_tests::config(&text, dir.path())).await;
    let c = &server.client;
    let mb = |v: f32| prism_client::Tensor::fp32(vec![131_072], vec![v; 131_072]); // 512 KiB
    // Two fit in memory, two more spill (1 MiB of spill files), the fifth cannot.
    let mut refs = Vec::new();
    for i in 0..4 {
        refs.push(c.put(&mb(i as f32)).await.unwrap());
    }
    let e = c.put(&mb(9.0)).await.unwrap_err();
    assert_eq!(e.status(), Some(507), "{e}");
    assert!(e.to_string().contains("object_store.max_spill_bytes"), "{e}");
    let spilled: u64 = std::fs::read_dir(dir.path().join("spill"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert!(spilled <= 1 << 20, "{spilled} bytes of spill files");
    // Larger than max_object_bytes: 413 before anything is stored.
    let big = prism_client::Tensor::fp32(vec![150_001], vec![0.0; 150_001]);
    let e = c.put(&big).await.unwrap_err();
    assert_eq!(e.status(), Some(413), "{e}");
    assert!(e.to_string().contains("object_store.max_object_bytes"), "{e}");
    // With room made in memory, small objects fit up to max_objects (three are held).
    c.delete(&refs[3]).await.unwrap();
    let small = prism_client::Tensor::fp32(vec![1], vec![1.0]);
    for _ in 0..5 {
        c.put(&small).await.unwrap();
    }
    let e = c.put(&small).await.unwrap_err();
    assert_eq!(e.status(), Some(507), "{e}");
    assert!(e.to_string().contains("object_store.max_objects"), "{e}");
    // Every object kept is still whole.
    for (i, r) in refs.iter().enumerate().take(3) {
        assert_eq!(c.get(r, None).await.unwrap(), mb(i as f32));
    }
    still_serves(&server).await;
}
