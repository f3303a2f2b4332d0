//! Batching through real HTTP: batched answers equal one-by-one answers, the model runs
//! once per batch, and a full queue answers 503 at once without losing accepted work.

use std::time::Duration;

use futures::future::join_all;
use prism_client::v2::{InferInput, InferRequest};
use prism_config::Config;
use prism_tests::{TestServer, config, one_row, random, reference};

fn mlp_request(x: Vec<f32>) -> InferRequest {
    let rows = x.len() / 784;
    InferRequest {
        inputs: vec![InferInput::fp32("INPUT0", vec![rows as i64, 784], x)],
        ..Default::default()
    }
}

#[tokio::test]
async fn concurrent_requests_batch_and_answer_as_if_alone_row() {
    let server = TestServer::start(Config::embedded_default()).await;
    let c = &server.client;
    let n = 48;
    let rows: Vec<Vec<f32>> = (0..n).map(|i| random(784, 1000 + i as u64)).collect();

    // One by one: each request alone in its batch.
    let mut alone = Vec::new();
    for x in &rows {
        let a = c.infer("mlp", &mlp_request(x.clone())).await.unwrap();
        alone.push(a.outputs[0].data.as_ref().unwrap().to_f32().unwrap());
    }
    // All at once: they share batches.
    let requests: Vec<_> = rows.iter().map(|x| mlp_request(x.clone())).collect();
    let together = join_all(requests.iter().map(|r| c.infer("mlp", r))).await;
    for (i, (a, t)) in alone.iter().zip(together).enumerate() {
        let t = t.unwrap().outputs[0].data.as_ref().unwrap().to_f32().unwrap();
        let want: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        assert!(
            reference::max_error(&t, &want) < 1e-6,
            "request {i}: batched {t:?} vs alone {a:?}"
        );
    }
    // And one request carrying 16 rows at once.
    let stacked: Vec<f32> = rows[..16].concat();
    let s = c.infer("mlp", &mlp_request(stacked)).await.unwrap();
    let s = s.outputs[0].data.as_ref().unwrap().to_f32().unwrap();
    for (i, chunk) in s.chunks(10).enumerate() {
        let want: Vec<f64> = alone[i].iter().map(|&v| v as f64).collect();
        assert!(
            reference::max_error(chunk, &want) < 1e-6,
            "row {i} of the 16-row request"
        );
    }
    server.stop().await.unwrap();
}

/// One replica that takes 100 ms per batch (fault injection), so requests pile up.
fn slow_celsius(max_batch_size: usize, max_queue_size: usize) -> String {
    format!(
        r#"
[[deployments]]
name = "slow"
num_replicas = 1
[deployments.model]
builtin = "celsius"
[deployments.batching]
max_batch_size = {max_batch_size}
batch_wait_timeout_ms = 1
max_queue_size = {max_queue_size}
[deployments.fault_injection]
delay_ms = 100
"#
    )
}

#[tokio::test]
async fn the_model_runs_once_per_batch_not_once_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(&slow_celsius(8, 100), dir.path())).await;
    let c = server.client.clone();
    // The first request occupies the replica for 100 ms; the next 16 arrive meanwhile.
    let first = tokio::spawn({
        let c = c.clone();
        async move { c.infer("slow", &one_row(0.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let requests: Vec<_> = (1..=16).map(|i| one_row(i as f32)).collect();
    let rest = join_all(requests.iter().map(|r| c.infer("slow", r))).await;
    assert_eq!(
        first.await.unwrap().unwrap().outputs[0]
            .data
            .as_ref()
            .unwrap()
            .to_f32()
            .unwrap(),
        vec![32.0]
    );
    for (i, r) in rest.into_iter().enumerate() {
        let got = r.unwrap().outputs[0].data.as_ref().unwrap().to_f32().unwrap()[0];
        assert_eq!(got, 9.0 / 5.0 * (i + 1) as f32 + 32.0);
    }
    let stats = c.model_statistics(Some("slow")).await.unwrap();
    let s = &stats["model_stats"][0];
    assert_eq!(s["inference_count"], 17);
    let executions = s["execution_count"].as_u64().unwrap();
    assert!(
        executions <= 4,
        "17 requests with max_batch_size 8 behind a busy replica ran in {executions} executions"
    );
    let sizes: Vec<u64> = s["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap())
        .collect();
    assert!(sizes.contains(&8), "full batches of 8 formed: {sizes:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_answers_503_and_every_accepted_request_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(&slow_celsius(1, 2), dir.path())).await;
    let c = &server.client;
    // One running + one prefetched on the replica, two in the queue: the rest are refused.
    let requests: Vec<_> = (0..12).map(|i| one_row(i as f32)).collect();
    let answers = join_all(requests.iter().map(|r| c.infer("slow", r))).await;
    let mut ok = 0;
    let mut full = 0;
    for a in answers {
        match a {
            Ok(r) => {
                assert_eq!(r.outputs[0].shape, vec![1, 1]);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.status(), Some(503), "{e}");
                assert!(e.to_string().contains("queue is full (2 requests waiting)"), "{e}");
                full += 1;
            }
        }
    }
    assert!(
        full >= 1,
        "a queue of 2 behind a 100 ms replica must overflow with 12 requests at once"
    );
    assert!((2..=4).contains(&ok), "accepted {ok}");
    // The server keeps serving once the queue drains.
    c.infer("slow", &one_row(100.0)).await.unwrap();
    let metrics = c.metrics().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "prism_inference_requests_total{{model=\"slow\",outcome=\"rejected\"}} {full}"
        )),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_timeout_answers_503_and_takes_the_request_out_of_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(&slow_celsius(1, 100), dir.path())).await;
    let c = server.client.clone();
    // The replica is busy for 100 ms with the first request; the second, prefetched behind
    // it, gives up after 30 ms and is skipped when its turn comes.
    let first = tokio::spawn({
        let c = c.clone();
        async move { c.infer("slow", &one_row(1.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(40)).await;
    let mut impatient = one_row(2.0);
    let mut p = prism_client::v2::Parameters::new();
    p.insert("timeout_ms".into(), 30.into());
    impatient.parameters = Some(p);
    let err = c.infer("slow", &impatient).await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(err.to_string().contains("timed out after 30ms"), "{err}");
    first.await.unwrap().unwrap();
    // Its rows never ran: one execution, one inference (the first request's).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stats = c.model_statistics(Some("slow")).await.unwrap();
    assert_eq!(stats["model_stats"][0]["inference_count"], 1, "{stats}");
    // Counted once, as a timeout: the batcher skipping its rows is not a second outcome.
    let metrics = c.metrics().await.unwrap();
    assert!(metrics.contains(r#"prism_inference_requests_total{model="slow",outcome="timeout"} 1"#));
    assert!(metrics.contains(r#"prism_inference_requests_total{model="slow",outcome="cancelled"} 0"#));

    let mut bad = one_row(3.0);
    let mut p = prism_client::v2::Parameters::new();
    p.insert("timeout".into(), "soon".into());
    bad.parameters = Some(p);
    let err = c.infer("slow", &bad).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("parameter `timeout`: expected a positive number of microseconds"),
        "{err}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_answers_every_accepted_request_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(config(&slow_celsius(2, 100), dir.path())).await;
    let c = server.client.clone();
    let inflight: Vec<_> = (0..6)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.infer("slow", &one_row(i as f32)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    server.signal_shutdown();
    for (i, h) in inflight.into_iter().enumerate() {
        let r = h
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i} was accepted but not answered: {e}"));
        assert_eq!(
            r.outputs[0].data.as_ref().unwrap().to_f32().unwrap(),
            vec![9.0 / 5.0 * i as f32 + 32.0]
        );
    }
    server.stop().await.unwrap();
    assert!(c.server_live().await.is_err(), "the server no longer listens");
}

#[tokio::test]
async fn shutdown_finishes_tasks_and_async_inferences_already_started() {
    use prism_client::{FaultInjection, TaskOptions, Tensor};
    use prism_server::store::{ObjectRef, ObjectState};
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(config(&slow_celsius(2, 100), dir.path())).await;
    let c = server.client.clone();
    // Each runs for a while after its request was answered with a ref.
    let queued = c.infer_async("slow", &one_row(1.0)).await.unwrap();
    let slow_task = TaskOptions {
        fault_injection: Some(FaultInjection {
            delay_ms: Some(300.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let task = c
        .task("square", [Tensor::scalar(3.0).into()], &slow_task)
        .await
        .unwrap();
    server.signal_shutdown();
    let state = std::sync::Arc::clone(&server.state);
    server.stop().await.unwrap();
    for r in [&queued[0].1, &task] {
        let r: ObjectRef = r.0.parse().unwrap();
        let info = state.store.info(r).unwrap();
        assert_eq!(info.state, ObjectState::Ready, "{r}: {info:?}");
    }
}
