//! Replicas placed on simulated GPUs, seen through the status and resources APIs.

use std::sync::Arc;

use prism_server::resources::inventory::SimulatedInventory;
use prism_tests::{TestServer, config, one_row};

const DEPLOYMENTS: &str = r#"
[[deployments]]
name = "quarters"
num_replicas = 4
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_gpus = 0.25

[[deployments]]
name = "whole"
fallback = "none"
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_gpus = 1

[[deployments]]
name = "half"
fallback = "cpu"
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_gpus = 0.5
"#;

#[tokio::test]
async fn four_quarters_fill_a_card_and_the_rest_fall_back_or_wait() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = Arc::new(SimulatedInventory::parse("1x80GiB").unwrap());
    let server = TestServer::start_with(config(DEPLOYMENTS, dir.path()), inventory)
        .await
        .unwrap();
    let status = server.get_json("/v2/status").await;
    let deployments = status["deployments"].as_array().unwrap();
    let quarters = &deployments[0]["replicas"];
    for r in quarters.as_array().unwrap() {
        assert_eq!(r["placement"], "gpu", "{r}");
        assert_eq!(r["gpus"], serde_json::json!([0]));
        assert_eq!(r["share"], 0.25);
        assert!(r["note"].as_str().unwrap().contains("simulated"));
    }
    let whole = &deployments[1];
    assert_eq!(whole["ready"], false);
    assert_eq!(whole["replicas"][0]["placement"], "pending");
    assert!(
        whole["replicas"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("num_gpus = 1"),
        "{whole}"
    );
    let half = &deployments[2];
    assert_eq!(half["ready"], true);
    assert_eq!(half["replicas"][0]["placement"], "cpu_fallback");
    assert_eq!(status["gpus"][0]["used"], 1.0);
    assert_eq!(status["gpus"][0]["simulated"], true);

    let resources = server.get_json("/v2/resources").await;
    assert_eq!(resources["total"]["GPU"], 1.0);
    assert_eq!(resources["available"]["GPU"], 0.0);
    assert!(resources["total"]["CPU"].as_f64().unwrap() >= 1.0);

    // Placed and fallen-back replicas serve; the pending deployment says it is not ready.
    for model in ["quarters", "half"] {
        let a = server.client.infer(model, &one_row(100.0)).await.unwrap();
        assert_eq!(a.outputs[0].data.as_ref().unwrap().to_f32(), Some(vec![212.0]));
    }
    assert!(!server.client.model_ready("whole").await.unwrap());
    let err = server.client.infer("whole", &one_row(100.0)).await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(
        !server.client.server_ready().await.unwrap(),
        "a deployment with no replica keeps the server unready"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn custom_resources_are_counted_and_a_short_pool_leaves_replicas_pending() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[server]
resources = { licence = 3 }

[[deployments]]
name = "licensed"
num_replicas = 4
[deployments.model]
builtin = "celsius"
[deployments.actor]
resources = { licence = 1 }
"#;
    let server = TestServer::start(config(text, dir.path())).await;
    let resources: serde_json::Value = server.get_json("/v2/resources").await;
    assert_eq!(resources["total"]["licence"], 3.0);
    assert_eq!(resources["available"]["licence"], 0.0);
    let status: serde_json::Value = server.get_json("/v2/status").await;
    let replicas = status["deployments"][0]["replicas"].as_array().unwrap();
    assert_eq!(replicas.iter().filter(|r| r["placement"] == "cpu").count(), 3);
    let pending = replicas
        .iter()
        .find(|r| r["placement"] == "pending")
        .expect("the fourth waits");
    assert_eq!(pending["reason"], "resource `licence`: needs 1, 0 of 3 left");
    server.client.infer("licensed", &one_row(100.0)).await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_replica_left_pending_by_placement_gives_its_resources_back() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[server]
resources = { licence = 2 }

[[deployments]]
name = "greedy"
fallback = "none"
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_gpus = 2
resources = { licence = 1 }

[[deployments]]
name = "pair"
num_replicas = 2
[deployments.model]
builtin = "celsius"
[deployments.actor]
resources = { licence = 1 }
"#;
    let inventory = Arc::new(SimulatedInventory::parse("1x80GiB").unwrap());
    let server = TestServer::start_with(config(text, dir.path()), inventory)
        .await
        .unwrap();
    let status: serde_json::Value = server.get_json("/v2/status").await;
    assert_eq!(status["deployments"][0]["replicas"][0]["placement"], "pending");
    let pair = status["deployments"][1]["replicas"].as_array().unwrap();
    assert!(pair.iter().all(|r| r["placement"] == "cpu"), "{pair:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_gpus_every_replica_runs_on_the_cpu_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let text = DEPLOYMENTS.replace("fallback = \"none\"", "fallback = \"cpu\"");
    // A machine with no GPU and a known reason, whatever this host has.
    struct NoGpu;
    impl prism_server::resources::inventory::Inventory for NoGpu {
        fn machine(&self) -> prism_server::resources::inventory::Machine {
            prism_server::resources::inventory::Machine {
                cpus: 4,
                memory: 8 << 30,
                gpus: Vec::new(),
            }
        }
        fn no_gpu_reason(&self) -> Option<String> {
            Some("NVML is not available (no driver)".into())
        }
    }
    let server = TestServer::start_with(config(&text, dir.path()), std::sync::Arc::new(NoGpu))
        .await
        .unwrap();
    let status: serde_json::Value = server.get_json("/v2/status").await;
    assert_eq!(status["no_gpu_reason"], "NVML is not available (no driver)");
    for d in status["deployments"].as_array().unwrap() {
        for r in d["replicas"].as_array().unwrap() {
            assert_eq!(r["placement"], "cpu_fallback", "{r}");
            let reason = r["reason"].as_str().unwrap();
            assert!(reason.contains("no GPU: NVML is not available"), "{r}");
        }
    }
    let resources: serde_json::Value = server.get_json("/v2/resources").await;
    assert_eq!(resources["total"]["GPU"], 0.0);
    assert!(server.client.server_ready().await.unwrap());
    server.stop().await.unwrap();
}

/// The built-in `celsius` model started with one replica at `placement`, bypassing the
/// planner.
fn celsius_on(
    placement: prism_server::resources::ReplicaPlacement,
    metrics: &Arc<prism_server::metrics::Metrics>,
) -> Arc<prism_server::serving::Deployment> {
    let dir = tempfile::tempdir().unwrap();
    let spec = config(&prism_tests::celsius("celsius", ""), dir.path())
        .deployments
        .remove(0);
    let loaded = prism_server::serving::load(&spec).unwrap();
    prism_server::serving::Deployment::start_placed(spec, loaded, vec![placement], metrics).unwrap()
}

/// A replica placed on a card whose CUDA cannot be opened (here: no CUDA at all) says so
/// and computes on the CPU; loading it again on that card fails instead of falling back
/// again, and the replica already serving on the CPU serves on. Skipped where CUDA works:
/// cuda:0 would open.
#[tokio::test]
async fn a_replica_that_cannot_open_its_card_says_so_and_a_reload_does_not_fall_back() {
    use prism_server::resources::ReplicaPlacement;
    if prism_kernels::cuda::probe().is_ok() {
        eprintln!("skipped: CUDA works here, so cuda:0 opens");
        return;
    }
    let metrics = Arc::new(prism_server::metrics::Metrics::new());
    let placement = ReplicaPlacement::Gpu {
        gpus: vec![0],
        share: 1.0,
        cuda: Some(0),
        note: "runs on cuda:0".into(),
    };
    let d = celsius_on(placement, &metrics);
    let replica = &d.replicas()[0];
    assert_eq!(replica.device.as_deref(), Some("cpu"));
    let ReplicaPlacement::Gpu { note, cuda, .. } = &replica.placement else {
        panic!("still placed on the card: {replica:?}")
    };
    assert!(
        note.starts_with("cuda:0: ") && note.ends_with(": runs on the CPU"),
        "{note}"
    );
    assert_eq!(*cuda, None, "it computes on no card");
    let y = d.infer(ndarray::Array2::from_elem((1, 1), 100.0)).await.unwrap();
    assert_eq!(y[[0, 0]], 212.0);

    let err = d.load().await.unwrap_err().to_string();
    assert!(err.contains("cuda:0") && err.contains("keeps its GPU slots"), "{err}");
    // It was computing on the CPU, holding no card: it serves on while the load fails.
    assert!(d.is_ready());
    let y = d.infer(ndarray::Array2::from_elem((1, 1), 0.0)).await.unwrap();
    assert_eq!(y[[0, 0]], 32.0);
    let text = metrics.render();
    assert_eq!(
        prism_tests::metric(&text, r#"prism_replicas{device="cpu",model="celsius"}"#),
        Some(1.0),
        "the failed load's replica is not counted: {text}"
    );
    d.join().await;
    let err = d.load().await.unwrap_err().to_string();
    assert!(err.contains("shutting down"), "no load after the server stops: {err}");
}

/// A load that would leave no replica running fails with the reasons, and changes nothing.
#[tokio::test]
async fn loading_a_model_no_replica_can_run_fails_with_the_reasons() {
    use prism_server::resources::ReplicaPlacement;
    let metrics = Arc::new(prism_server::metrics::Metrics::new());
    let pending = ReplicaPlacement::Pending {
        reason: "no GPU has 0.5 of a card".into(),
    };
    let d = celsius_on(pending, &metrics);
    assert!(!d.is_ready() && d.is_loaded());
    let err = d.load().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "deployment `celsius`: no replica can run (replica 0: no GPU has 0.5 of a card)"
    );
    d.join().await;
}
