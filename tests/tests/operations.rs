//! What an operator reads beside the API: the GPUs' figures, each replica's busy time,
//! memory and state in `/metrics`, and the Grafana dashboard's queries against them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use prism_protocol::grpc::{GrpcInferenceServiceClient, ServerLiveRequest};
use prism_server::resources::inventory::{GpuSample, Inventory, SimulatedInventory, SystemInventory};
use prism_tests::{TestServer, config, metric, one_row};

/// Two cards as a test scripts them: the second reads no power and no temperature (as
/// some boards do not).
fn scripted_cards() -> SimulatedInventory {
    let mut inventory = SimulatedInventory::parse("2x80GiB").unwrap();
    inventory.readings = Some(vec![
        GpuSample {
            index: 0,
            uuid: "GPU-simulated-0".into(),
            utilization: Some(0.42),
            memory_used: Some(3 << 30),
            memory_total: Some(80 << 30),
            power_watts: Some(312.5),
            temperature_celsius: Some(61.0),
        },
        GpuSample {
            index: 1,
            uuid: "GPU-simulated-1".into(),
            utilization: Some(0.0),
            memory_used: Some(0),
            memory_total: Some(80 << 30),
            ..GpuSample::default()
        },
    ]);
    inventory
}

const QUARTERS: &str = r#"
[server]
metrics_interval_s = 0.1

[[deployments]]
name = "quarters"
num_replicas = 5
fallback = "none"
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_gpus = 0.5
[deployments.batching]
max_batch_size = 1
"#;

async fn metrics_text(server: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `/metrics` once `ready` holds of it, within 5 s.
async fn metrics_when(server: &TestServer, ready: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let text = metrics_text(server).await;
        if ready(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/metrics never got there:\n{}", metrics_text(server).await);
}

#[tokio::test]
async fn each_cards_figures_are_exported_and_a_figure_it_lacks_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(QUARTERS, dir.path()), Arc::new(scripted_cards()))
        .await
        .unwrap();
    let text = metrics_when(&server, |t| t.contains("prism_gpu_utilization_ratio{")).await;
    let card = |name: &str, i: usize| metric(&text, &format!(r#"{name}{{gpu="{i}",uuid="GPU-simulated-{i}"}}"#));
    assert_eq!(card("prism_gpu_utilization_ratio", 0), Some(0.42));
    assert_eq!(card("prism_gpu_memory_used_bytes", 0), Some((3u64 << 30) as f64));
    assert_eq!(card("prism_gpu_memory_total_bytes", 0), Some((80u64 << 30) as f64));
    assert_eq!(card("prism_gpu_power_watts", 0), Some(312.5));
    assert_eq!(card("prism_gpu_temperature_celsius", 0), Some(61.0));
    assert_eq!(
        card("prism_gpu_utilization_ratio", 1),
        Some(0.0),
        "an idle card reads 0"
    );
    assert_eq!(card("prism_gpu_power_watts", 1), None, "{text}");
    assert_eq!(card("prism_gpu_temperature_celsius", 1), None, "{text}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_gpu_there_are_no_gpu_series() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = SystemInventory::probe();
    if !inventory.machine().gpus.is_empty() {
        eprintln!("this machine has GPUs; the no-GPU case is not checked here");
        return;
    }
    let server = TestServer::start_with(
        config(&QUARTERS.replace("num_gpus = 0.5", "num_cpus = 0"), dir.path()),
        Arc::new(inventory),
    )
    .await
    .unwrap();
    // Several sampling periods pass.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let text = metrics_text(&server).await;
    assert!(!text.contains("prism_gpu_"), "{text}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn replicas_report_their_busy_time_memory_and_state() {
    let dir = tempfile::tempdir().unwrap();
    // Four halves on two simulated cards; the fifth replica finds no room and waits.
    let server = TestServer::start_with(config(QUARTERS, dir.path()), Arc::new(scripted_cards()))
        .await
        .unwrap();
    for i in 0..40 {
        server.client.infer("quarters", &one_row(i as f32)).await.unwrap();
    }
    let text = metrics_text(&server).await;
    let state = |s: &str| {
        metric(
            &text,
            &format!(r#"prism_replica_states{{model="quarters",state="{s}"}}"#),
        )
    };
    assert_eq!(state("running"), Some(4.0), "{text}");
    assert_eq!(state("pending"), Some(1.0), "{text}");
    assert_eq!(state("failed"), Some(0.0), "{text}");

    let status = server.get_json("/v2/status").await;
    let replicas = status["deployments"][0]["replicas"].as_array().unwrap().clone();
    let d = &server.state.deployments[0];
    let mut busy_total = 0.0;
    for r in replicas.iter().filter(|r| r["placement"] != "pending") {
        let labels = format!(
            r#"{{device="{}",model="quarters",replica="{}"}}"#,
            r["device"].as_str().unwrap(),
            r["index"]
        );
        let memory = metric(&text, &format!("prism_replica_memory_bytes{labels}"));
        assert_eq!(memory, Some(d.replica_memory() as f64), "{labels}\n{text}");
        // Every running replica has the series, from its start (0 until it runs a batch).
        let busy = metric(&text, &format!("prism_replica_busy_seconds_total{labels}"));
        busy_total += busy.unwrap_or_else(|| panic!("{labels}: no busy time\n{text}"));
    }
    assert!(busy_total > 0.0, "40 batches ran somewhere:\n{text}");
    // The pending replica holds nothing.
    let pending = replicas.iter().find(|r| r["placement"] == "pending").unwrap();
    assert!(
        !text.contains(&format!(r#"replica="{}""#, pending["index"])),
        "{pending}\n{text}"
    );
    server.stop().await.unwrap();
}

/// The metric names a PromQL expression reads (`rate(prism_x_bucket[5m])` reads
/// `prism_x_bucket`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("prism_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/prism.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queried = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["query"]["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    for e in &exprs {
        queried.extend(metric_names(e));
    }
    assert!(queried.len() >= 20, "the dashboard queries {queried:?}");

    // A server with cards, traffic over REST and gRPC, and objects.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(QUARTERS, dir.path()), Arc::new(scripted_cards()))
        .await
        .unwrap();
    for i in 0..8 {
        server.client.infer("quarters", &one_row(i as f32)).await.unwrap();
    }
    let mut grpc = GrpcInferenceServiceClient::connect(server.grpc_url.clone())
        .await
        .unwrap();
    grpc.server_live(ServerLiveRequest {}).await.unwrap();
    let text = metrics_when(&server, |t| t.contains("prism_gpu_utilization_ratio{")).await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = queried.iter().filter(|n| !exported.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics lacks:\n{text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_deployment_warms_up_before_it_is_ready_and_says_how_long_the_first_request_took() {
    let dir = tempfile::tempdir().unwrap();
    let mean = prism_tests::encoder_fixtures().join("tiny-mean");
    let text = format!(
        r#"
[[deployments]]
name = "celsius"
num_replicas = 2
warmup = 3
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_cpus = 0

[[deployments]]
name = "mean"
warmup = 2
[deployments.model]
huggingface = "{}"
[deployments.actor]
num_cpus = 0

[[deployments]]
name = "cold"
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_cpus = 0

# Warm-up runs the model alone: 3 batches that each met this delay would take 1.5 s.
[[deployments]]
name = "delayed"
warmup = 3
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_cpus = 0
[deployments.fault_injection]
delay_ms = 500
"#,
        mean.display()
    );
    let server = TestServer::start(config(&text, dir.path())).await;
    let status = server.get_json("/v2/status").await;
    let by_name = |status: &serde_json::Value, name: &str| {
        status["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap()
            .clone()
    };
    for name in ["celsius", "mean"] {
        let d = by_name(&status, name);
        assert!(d["warmup_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{d}");
        assert!(d["first_request_ms"].is_null(), "no request yet: {d}");
    }
    assert!(by_name(&status, "cold")["warmup_ms"].is_null());
    let delayed = by_name(&status, "delayed")["warmup_ms"].as_f64().unwrap();
    assert!(delayed < 500.0, "warm-up met the injected delay: {delayed} ms");
    // Warm-up batches are not inferences: the statistics count clients' requests only.
    let stats = server.client.model_statistics(Some("celsius")).await.unwrap();
    assert_eq!(stats["model_stats"][0]["inference_count"], 0, "{stats}");

    server.client.infer("celsius", &one_row(100.0)).await.unwrap();
    let status = server.get_json("/v2/status").await;
    let first = by_name(&status, "celsius")["first_request_ms"].as_f64();
    assert!(first.is_some_and(|ms| ms > 0.0), "{status}");
    server.client.infer("celsius", &one_row(0.0)).await.unwrap();
    let status = server.get_json("/v2/status").await;
    assert_eq!(
        by_name(&status, "celsius")["first_request_ms"].as_f64(),
        first,
        "the first one stays"
    );
    // A load starts over: new replicas, warmed again, no request yet.
    let loaded = reqwest::Client::new()
        .post(format!("{}/v2/repository/models/celsius/load", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(loaded.status(), 200);
    let status = server.get_json("/v2/status").await;
    let d = by_name(&status, "celsius");
    assert!(d["first_request_ms"].is_null(), "{d}");
    assert!(d["warmup_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{d}");
    server.stop().await.unwrap();
}
