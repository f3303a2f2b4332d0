//! Pipelines (`[[pipelines]]`): a DAG of deployments and task ops served as one model.

use std::time::{Duration, Instant};

use prism_client::v2::{InferInput, InferRequest};
use prism_client::{ObjectRef, Tensor};
use prism_tests::{TestServer, celsius, config};

/// The deployments and pipelines every test here serves.
fn file() -> String {
    let slow = "[deployments.fault_injection]\ndelay_ms = 500\ndelay_rate = 1.0";
    [
        celsius("celsius", ""),
        celsius("slow_a", slow),
        celsius("slow_b", slow),
        celsius("broken", "[deployments.fault_injection]\nerror_rate = 1.0"),
        celsius(
            "one_at_a_time",
            "[deployments.batching]\nmax_batch_size = 1\n[deployments.fault_injection]\ndelay_ms = 300\ndelay_rate = 1.0",
        ),
        PIPELINES.to_owned(),
    ]
    .concat()
}

const PIPELINES: &str = r#"
# One slow model step, a batch per request: what a client that leaves leaves behind.
[[pipelines]]
name = "lonely"
inputs = [{ name = "INPUT0", datatype = "FP32", shape = [-1, 1] }]
output = { name = "OUTPUT0", step = "m" }
[[pipelines.steps]]
name = "m"
model = "one_at_a_time"
inputs = ["INPUT0"]

# f(x) + x^2, with f = Celsius to Fahrenheit: two independent steps, then their sum.
[[pipelines]]
name = "ensemble"
inputs = [{ name = "INPUT0", datatype = "FP32", shape = [-1, 1] }]
output = { name = "OUTPUT0", step = "total" }
[[pipelines.steps]]
name = "f"
model = "celsius"
inputs = ["INPUT0"]
[[pipelines.steps]]
name = "sq"
op = "square"
inputs = ["INPUT0"]
[[pipelines.steps]]
name = "total"
op = "add"
inputs = ["f", "sq"]

# Two slow models side by side: concurrent, so about one delay, not two.
[[pipelines]]
name = "parallel"
inputs = [{ name = "INPUT0", datatype = "FP32", shape = [-1, 1] }]
output = { step = "both" }
[[pipelines.steps]]
name = "a"
model = "slow_a"
inputs = ["INPUT0"]
[[pipelines.steps]]
name = "b"
model = "slow_b"
inputs = ["INPUT0"]
[[pipelines.steps]]
name = "both"
op = "sub"
inputs = ["a", "b"]

# A - B: the order of the operands shows whether each input got its own bytes.
[[pipelines]]
name = "difference"
inputs = [
  { name = "A", datatype = "FP32", shape = [-1] },
  { name = "B", datatype = "FP32", shape = [-1] },
]
output = { step = "d" }
[[pipelines.steps]]
name = "d"
op = "sub"
inputs = ["A", "B"]

[[pipelines]]
name = "failing"
inputs = [{ name = "X", datatype = "FP32", shape = [-1, 1] }]
output = { step = "after" }
[[pipelines.steps]]
name = "bad"
model = "broken"
inputs = ["X"]
[[pipelines.steps]]
name = "after"
op = "relu"
inputs = ["bad"]
"#;

fn rows(values: &[f32]) -> InferRequest {
    InferRequest {
        inputs: vec![InferInput::fp32(
            "INPUT0",
            vec![values.len() as i64, 1],
            values.to_vec(),
        )],
        ..Default::default()
    }
}

fn objects_in_store(metrics: &str) -> f64 {
    prism_tests::metric(metrics, "prism_object_store_objects").expect("the object gauge")
}

#[tokio::test]
async fn a_pipeline_runs_its_dag_concurrently_and_frees_its_intermediates() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&file(), dir.path())).await;
    let c = &s.client;

    let meta = c.model_metadata("ensemble").await.unwrap();
    assert_eq!(meta.platform, "prism_pipeline");
    assert_eq!(meta.outputs[0].shape, vec![-1, 1]);
    assert!(c.model_ready("ensemble").await.unwrap());
    let index = c.repository_index().await.unwrap();
    assert!(index.iter().any(|m| m.name == "ensemble"));
    // Routes pipelines do not have say so; a wrong version is a wrong version.
    let err = c.model_config("ensemble").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("`ensemble` is a pipeline"), "{err}");
    let v2 = reqwest::get(format!("{}/v2/models/ensemble/versions/2", s.url))
        .await
        .unwrap();
    assert_eq!(v2.status(), 404);
    assert!(v2.text().await.unwrap().contains("no version `2`"));

    let x = [0.0f32, 100.0, -3.0];
    let mut wrong_output = rows(&x);
    wrong_output.outputs = Some(vec![prism_client::v2::RequestedOutput {
        name: "Y".into(),
        parameters: None,
    }]);
    let err = c.infer("ensemble", &wrong_output).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(
        err.to_string()
            .contains("pipeline `ensemble` has no output `Y`; its output is `OUTPUT0`"),
        "{err}"
    );
    let answer = c.infer("ensemble", &rows(&x)).await.unwrap();
    assert_eq!(answer.outputs[0].name, "OUTPUT0");
    assert_eq!(answer.outputs[0].shape, vec![3, 1]);
    let got = answer.outputs[0].data.as_ref().unwrap().to_f32().unwrap();
    assert_eq!(got.len(), x.len());
    for (g, x) in got.iter().zip(x) {
        let want = x * 1.8 + 32.0 + x * x;
        assert!((g - want).abs() < 1e-3, "{g} vs {want}");
    }
    // Binary output, as tritonclient asks for it.
    let binary = c.infer_binary("ensemble", &rows(&x), true).await.unwrap();
    assert_eq!(binary.outputs[0].data.as_ref().unwrap().to_f32().unwrap(), got);

    // Independent steps overlap: two 500 ms models finish in about 500 ms, not 1000.
    let started = Instant::now();
    let answer = c.infer("parallel", &rows(&[1.0])).await.unwrap();
    let took = started.elapsed();
    assert_eq!(answer.outputs[0].data.as_ref().unwrap().to_f32().unwrap(), vec![0.0]);
    assert!(
        took < Duration::from_millis(900),
        "took {took:?}: the steps ran one after the other"
    );

    // Binary inputs given in another order than declared each get their own bytes.
    let swapped = InferRequest {
        inputs: vec![
            InferInput::fp32("B", vec![2], vec![1.0, 2.0]),
            InferInput::fp32("A", vec![2], vec![10.0, 20.0]),
        ],
        ..Default::default()
    };
    let d = c.infer_binary("difference", &swapped, false).await.unwrap();
    assert_eq!(d.outputs[0].data.as_ref().unwrap().to_f32().unwrap(), vec![9.0, 18.0]);

    // Nothing is left in the store: every intermediate was freed at its last use.
    assert_eq!(objects_in_store(&c.metrics().await.unwrap()), 0.0);

    // The output kept as a ref, and async.
    let refs = c.infer_to_refs("ensemble", &rows(&[2.0]), &["OUTPUT0"]).await.unwrap();
    let out = c.get(&refs[0].1, None).await.unwrap();
    assert!((out.to_f32()[0] - (35.6 + 4.0)).abs() < 1e-3);
    let pending = c.infer_async("parallel", &rows(&[5.0])).await.unwrap();
    assert_eq!(
        c.get(&pending[0].1, Some(Duration::from_secs(30)))
            .await
            .unwrap()
            .to_f32(),
        vec![0.0]
    );
    // An input by ref: the client's object is read, never freed by the pipeline.
    let x = c.put(&Tensor::fp32(vec![1, 1], vec![10.0])).await.unwrap();
    let by_ref = InferRequest {
        inputs: vec![InferInput::object_ref("INPUT0", &x.0)],
        ..Default::default()
    };
    let answer = c.infer("ensemble", &by_ref).await.unwrap();
    assert!((answer.outputs[0].data.as_ref().unwrap().to_f32().unwrap()[0] - 150.0).abs() < 1e-3);
    assert_eq!(c.get(&x, None).await.unwrap().to_f32(), vec![10.0]);
    c.delete(&x).await.unwrap();
    for r in [&refs[0].1, &pending[0].1] {
        c.delete(r).await.unwrap();
    }
    assert_eq!(objects_in_store(&c.metrics().await.unwrap()), 0.0);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_step_fails_the_pipeline_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&file(), dir.path())).await;
    let c = &s.client;
    let request = InferRequest {
        inputs: vec![InferInput::fp32("X", vec![1, 1], vec![1.0])],
        ..Default::default()
    };
    let err = c.infer("failing", &request).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    let text = err.to_string();
    assert!(
        text.contains("step `after`") && text.contains("InjectedFault"),
        "{text}"
    );
    // Async: the failure lands on the output object.
    let pending = c.infer_async("failing", &request).await.unwrap();
    let (ready, _) = c
        .wait(&[pending[0].1.clone()], 1, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(ready.len(), 1, "the failure settles the output");
    let meta = c.object_meta(&pending[0].1).await.unwrap();
    assert_eq!(meta["state"], "failed");
    assert_eq!(meta["error"]["kind"], "InjectedFault");
    c.delete(&pending[0].1).await.unwrap();

    // Bad requests name the input.
    let err = c.infer("ensemble", &InferRequest::default()).await.unwrap_err();
    assert!(err.to_string().contains("input `INPUT0` is missing"), "{err}");
    let wide = InferRequest {
        inputs: vec![InferInput::fp32("INPUT0", vec![1, 2], vec![1.0, 2.0])],
        ..Default::default()
    };
    let err = c.infer("ensemble", &wide).await.unwrap_err();
    assert!(err.to_string().contains("expected shape [-1, 1], got [1, 2]"), "{err}");
    let unknown = InferRequest {
        inputs: vec![InferInput::object_ref("INPUT0", &ObjectRef("c".repeat(32)).0)],
        ..Default::default()
    };
    assert_eq!(c.infer("ensemble", &unknown).await.unwrap_err().status(), Some(404));
    assert_eq!(objects_in_store(&c.metrics().await.unwrap()), 0.0);
    s.stop().await.unwrap();
}

/// `outcome`'s count for `model` in the request metrics.
fn requests(metrics: &str, model: &str, outcome: &str) -> f64 {
    let series = format!("prism_inference_requests_total{{model=\"{model}\",outcome=\"{outcome}\"}}");
    prism_tests::metric(metrics, &series).unwrap_or_else(|| panic!("no series {series}"))
}

#[tokio::test]
async fn pipelines_and_async_requests_are_counted_once_with_their_real_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&file(), dir.path())).await;
    let c = &s.client;
    let hurried = |ms: u64| {
        let mut r = rows(&[1.0]);
        let mut p = prism_client::v2::Parameters::new();
        p.insert("timeout_ms".into(), ms.into());
        r.parameters = Some(p);
        r
    };
    c.infer("ensemble", &rows(&[1.0])).await.unwrap();
    c.infer("ensemble", &InferRequest::default()).await.unwrap_err();
    // A pipeline's deadline is a model's: 503, counted as a timeout and nothing else.
    let err = c.infer("parallel", &hurried(50)).await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(
        err.to_string()
            .contains("pipeline `parallel`: the request timed out after 50ms"),
        "{err}"
    );
    // Async requests are counted when their work ends, with how it ended, not at the 202.
    let failed_model = c.infer_async("broken", &prism_tests::one_row(1.0)).await.unwrap();
    let failed_pipeline = c
        .infer_async(
            "failing",
            &InferRequest {
                inputs: vec![InferInput::fp32("X", vec![1, 1], vec![1.0])],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let late = c.infer_async("parallel", &hurried(50)).await.unwrap();
    let refs: Vec<ObjectRef> = [&failed_model, &failed_pipeline, &late]
        .iter()
        .map(|p| p[0].1.clone())
        .collect();
    let (ready, _) = c.wait(&refs, 3, Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(ready.len(), 3);
    assert_eq!(c.object_meta(&late[0].1).await.unwrap()["error"]["kind"], "Timeout");

    let expected = [
        ("ensemble", "success", 1.0),
        ("ensemble", "bad_request", 1.0),
        ("parallel", "timeout", 2.0),
        ("broken", "failed", 1.0),
        ("failing", "failed", 1.0),
    ];
    // The count follows the object's settling by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = c.metrics().await.unwrap();
        if expected.iter().all(|(model, o, n)| requests(&m, model, o) == *n) || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (model, outcome, n) in expected {
        assert_eq!(requests(&metrics, model, outcome), n, "{model} {outcome}");
    }
    // Once each: the outcomes add up to the requests sent.
    let total = |model: &str| {
        [
            "success",
            "bad_request",
            "not_found",
            "rejected",
            "timeout",
            "unavailable",
            "failed",
            "cancelled",
        ]
        .iter()
        .map(|o| requests(&metrics, model, o))
        .sum::<f64>()
    };
    assert_eq!(
        (total("ensemble"), total("parallel"), total("broken"), total("failing")),
        (2.0, 2.0, 1.0, 1.0)
    );
    for r in &refs {
        c.delete(r).await.unwrap();
    }
    s.stop().await.unwrap();
}

#[test]
fn pipeline_files_are_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let base = celsius("celsius", "");
    let cases = [
        (
            "[[pipelines]]\nname = \"p\"\ninputs = [{ name = \"X\", datatype = \"FP32\", shape = [-1, 1] }]\noutput = { step = \"a\" }\n[[pipelines.steps]]\nname = \"a\"\nmodel = \"nope\"\ninputs = [\"X\"]\n",
            "pipelines[0] (p).steps[0] (a).model: no deployment `nope`",
        ),
        (
            "[[pipelines]]\nname = \"p\"\ninputs = [{ name = \"X\", datatype = \"FP32\", shape = [-1, 1] }]\noutput = { step = \"a\" }\n[[pipelines.steps]]\nname = \"a\"\nop = \"add\"\ninputs = [\"X\", \"b\"]\n[[pipelines.steps]]\nname = \"b\"\nop = \"relu\"\ninputs = [\"X\"]\n",
            "`b` is neither a pipeline input nor an earlier step",
        ),
        (
            "[[pipelines]]\nname = \"celsius\"\ninputs = [{ name = \"X\", datatype = \"FP32\", shape = [-1, 1] }]\noutput = { step = \"a\" }\n[[pipelines.steps]]\nname = \"a\"\nop = \"relu\"\ninputs = [\"X\"]\n",
            "already a deployment or pipeline",
        ),
        (
            "[[pipelines]]\nname = \"p\"\ninputs = [{ name = \"X\", datatype = \"FP32\", shape = [-1, 1] }]\noutput = { step = \"a\" }\n[[pipelines.steps]]\nname = \"a\"\nop = \"matmul\"\ninputs = [\"X\"]\n",
            "op `matmul` takes 2 inputs, got 1",
        ),
    ];
    for (text, says) in cases {
        let err = prism_config::Config::parse(&format!("{base}{text}"), "p.toml", Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[tokio::test]
async fn a_client_that_leaves_takes_its_queued_step_batches_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&file(), dir.path())).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let url = format!("{}/v2/models/lonely/infer", s.url);
    let body = r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1]}]}"#;
    // Five requests, 300 ms each one after another; every client leaves after 150 ms.
    let calls = (0..5).map(|_| http.post(&url).body(body).send());
    for r in futures::future::join_all(calls).await {
        assert!(r.unwrap_err().is_timeout());
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let stats = s.client.model_statistics(Some("one_at_a_time")).await.unwrap();
    let executions = stats["model_stats"][0]["execution_count"].as_u64().unwrap();
    assert!(
        executions <= 2,
        "{executions} of 5 abandoned batches ran (the first was running)"
    );
    let metrics = s.client.metrics().await.unwrap();
    assert_eq!(
        prism_tests::metric(&metrics, "prism_object_store_objects"),
        Some(0.0),
        "nothing left behind"
    );
    s.stop().await.unwrap();
}
