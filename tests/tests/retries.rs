//! Deployment retries: a failed batch runs again on its replica, system failures always,
//! application errors (`InjectedFault`, `ModelError`) only when `retry_exceptions` names
//! them; every retry is counted.

use prism_tests::{TestServer, config, one_row};

fn flaky(retry: &str) -> String {
    format!(
        r#"
[[deployments]]
name = "flaky"
max_retries = 60
{retry}
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_cpus = 0
[deployments.fault_injection]
error_rate = 0.8
"#
    )
}

/// Retries of the flaky deployment; the series exists once a retry happened.
fn retries(metrics: &str) -> f64 {
    prism_tests::metric(
        metrics,
        "prism_inference_retries_total{model=\"flaky\",reason=\"InjectedFault\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn listed_application_errors_are_retried_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&flaky("retry_exceptions = [\"InjectedFault\"]"), dir.path())).await;
    for i in 0..20 {
        let answer = s.client.infer("flaky", &one_row(i as f32)).await.unwrap();
        let got = answer.outputs[0].data.as_ref().unwrap().to_f32().unwrap();
        assert!((got[0] - (i as f32 * 1.8 + 32.0)).abs() < 1e-4);
    }
    // 20 batches failing 80% of the time: no retry at all has odds of 0.2^20.
    assert!(retries(&s.client.metrics().await.unwrap()) >= 1.0);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn unlisted_application_errors_reach_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&flaky(""), dir.path())).await;
    let mut failed = 0;
    for i in 0..20 {
        if let Err(e) = s.client.infer("flaky", &one_row(i as f32)).await {
            assert_eq!(e.status(), Some(500));
            assert!(e.to_string().contains("InjectedFault"), "{e}");
            failed += 1;
        }
    }
    assert!(failed >= 1, "80% of batches fail and none is retried");
    assert_eq!(retries(&s.client.metrics().await.unwrap()), 0.0);
    s.stop().await.unwrap();
}

#[test]
fn unknown_retry_exceptions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = prism_config::Config::parse(
        &flaky("retry_exceptions = [\"ValueError\"]"),
        "f.toml",
        Some(dir.path()),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("retry_exceptions: unknown error kind `ValueError`"),
        "{err}"
    );
}

/// A deployment whose replicas break: `break_rate` of its batches break their replica.
fn breaking(replicas: usize, break_rate: f64, max_restarts: u32) -> String {
    format!(
        r#"
[[deployments]]
name = "breaking"
num_replicas = {replicas}
max_restarts = {max_restarts}
max_retries = 10
[deployments.model]
builtin = "celsius"
[deployments.actor]
num_cpus = 0
[deployments.fault_injection]
break_rate = {break_rate}
"#
    )
}

#[tokio::test]
async fn a_crashed_replica_is_restarted_and_its_batch_runs_on_a_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&breaking(2, 0.1, 1000), dir.path())).await;
    // One at a time, so each is a batch: about one in ten breaks its replica, and runs
    // again on the other (or on the first once it is back).
    for i in 0..120 {
        let answer = s
            .client
            .infer("breaking", &one_row(i as f32))
            .await
            .unwrap_or_else(|e| panic!("request {i} lost to a crash: {e}"));
        let got = answer.outputs[0].data.as_ref().unwrap().to_f32().unwrap();
        assert!((got[0] - (i as f32 * 1.8 + 32.0)).abs() < 1e-3, "{i}: {got:?}");
    }
    let metrics = s.client.metrics().await.unwrap();
    let restarts = prism_tests::metric(&metrics, "prism_replica_restarts_total{model=\"breaking\"}").unwrap_or(0.0);
    assert!(
        restarts >= 1.0,
        "120 batches at a 10% break rate restarted nothing (odds 0.9^120)"
    );
    let text = s.get_json("/v2/status").await.to_string();
    let shown: u64 = text
        .split("\"restarts\":")
        .skip(1)
        .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        shown as f64, restarts,
        "the replicas' health counts the restarts: {text}"
    );
    assert!(s.client.model_ready("breaking").await.unwrap());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_replica_that_keeps_crashing_is_failed_and_the_model_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&breaking(1, 1.0, 2), dir.path())).await;
    // Every batch breaks its replica: two restarts, then it is failed, and the request
    // gets a clear 503 (not a hang).
    let e = s.client.infer("breaking", &one_row(1.0)).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert!(e.to_string().contains("every replica has failed"), "{e}");
    assert!(!s.client.model_ready("breaking").await.unwrap());
    let status = s.get_json("/v2/status").await.to_string();
    assert!(
        status.contains("\"failed\"") && status.contains("max_restarts"),
        "{status}"
    );
    let metrics = s.client.metrics().await.unwrap();
    assert_eq!(
        prism_tests::metric(&metrics, "prism_replica_restarts_total{model=\"breaking\"}"),
        Some(2.0)
    );
    s.stop().await.unwrap();
}
