//! `prism bench`'s engine against a real server: it measures, and it counts errors
//! apart from latencies.

use std::time::Duration;

use prism_client::bench::{
    self, Format, Load, Protocol, Report, SharedMemory, Transport, Window, Workload, WorkloadSpec,
};
use prism_config::Config;
use prism_tests::{TestServer, config};

fn spec(model: &str, format: Format) -> WorkloadSpec {
    WorkloadSpec {
        model: model.into(),
        format,
        batch_size: 2,
        input_file: None,
        path: None,
        variants: 4,
        seed: 1,
        protocol: Protocol::Http,
        shared_memory: SharedMemory::None,
        workers: 4,
    }
}

const WINDOW: Window = Window {
    warmup: Duration::from_millis(100),
    duration: Duration::from_millis(400),
    timeout: Duration::from_secs(5),
};

#[tokio::test]
async fn closed_and_open_loops_measure_a_v2_server() {
    let server = TestServer::start(Config::embedded_default()).await;
    let http = reqwest::Client::new();
    for format in [Format::Json, Format::Binary] {
        let workload = Workload::prepare(&server.client, &spec("mlp", format)).await.unwrap();
        assert_eq!(workload.rows, 2, "shaped from the metadata: [-1, 784] with batch 2");
        let p = bench::run_point(
            &http,
            &server.url,
            &workload,
            Load::Closed { concurrency: 4 },
            WINDOW,
            None,
        )
        .await;
        assert!(p.requests > 10, "{format}: {p:?}");
        assert_eq!(p.error_count, 0, "{format}: {:?}", p.errors);
        assert!(p.latency_ms_p50 > 0.0 && p.latency_ms_p50 <= p.latency_ms_p99 && p.latency_ms_p99 <= p.latency_ms_max);
        assert_eq!(p.rows_per_s, 2.0 * p.throughput);
    }
    let workload = Workload::prepare(&server.client, &spec("celsius", Format::Binary))
        .await
        .unwrap();
    let open = Load::Open {
        rate: 200.0,
        max_in_flight: 64,
    };
    let p = bench::run_point(&http, &server.url, &workload, open, WINDOW, None).await;
    // 200/s for 0.4 s: about 80 arrivals (Poisson), all answered.
    assert!((30..=160).contains(&p.requests), "{p:?}");
    assert_eq!(p.error_count, 0);

    // The server counted what the generator sent.
    let stats = server.client.model_statistics(Some("mlp")).await.unwrap();
    assert!(stats["model_stats"][0]["inference_count"].as_u64().unwrap() >= 2 * 20);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn errors_are_counted_by_kind_and_kept_out_of_latency() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[[deployments]]
name = "broken"
[deployments.model]
builtin = "celsius"
[deployments.fault_injection]
error_rate = 1.0
"#;
    let server = TestServer::start(config(text, dir.path())).await;
    let http = reqwest::Client::new();
    let workload = Workload::prepare(&server.client, &spec("broken", Format::Json))
        .await
        .unwrap();
    let p = bench::run_point(
        &http,
        &server.url,
        &workload,
        Load::Closed { concurrency: 2 },
        WINDOW,
        None,
    )
    .await;
    assert_eq!(p.requests, 0, "no success, so no latency");
    assert!(p.errors.0.get("http_500").copied().unwrap_or(0) > 5, "{:?}", p.errors);
    assert_eq!(p.latency_ms_max, 0.0);

    // A server that is not there: connection errors, not a crash.
    let gone = bench::run_point(
        &http,
        "http://127.0.0.1:9",
        &workload,
        Load::Closed { concurrency: 1 },
        WINDOW,
        None,
    )
    .await;
    assert!(gone.errors.0.contains_key("connect"), "{:?}", gone.errors);

    let report = Report {
        tool: "test".into(),
        url: server.url.clone(),
        model: "broken".into(),
        format: "json".into(),
        batch_size: 2,
        request_bytes: workload.body_bytes,
        warmup_s: 0.1,
        started_unix_s: 0,
        points: vec![p, gone],
    };
    let csv = report.csv();
    assert_eq!(csv.lines().count(), 3);
    let svg = dir.path().join("plot.svg");
    bench::write_svg(&report, &svg).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    server.stop().await.unwrap();
}

/// Runs `workload` briefly at concurrency 2: every request is answered without error.
async fn answered_without_error(http: &reqwest::Client, url: &str, workload: &Workload) {
    let p = bench::run_point(http, url, workload, Load::Closed { concurrency: 2 }, WINDOW, None).await;
    assert!(p.requests > 10 && p.error_count == 0, "{p:?}");
}

#[tokio::test]
async fn the_plain_format_posts_a_fixed_body_anywhere() {
    let server = TestServer::start(Config::embedded_default()).await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(
        &body,
        r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[100]}]}"#,
    )
    .unwrap();
    let mut s = spec("celsius", Format::Plain);
    s.input_file = Some(body);
    let workload = Workload::prepare(&server.client, &s).await.unwrap();
    assert_eq!(workload.path, "/v2/models/celsius/infer");
    let http = reqwest::Client::new();
    answered_without_error(&http, &server.url, &workload).await;

    // Any body, to any path, byte for byte: here not an inference request at all.
    let other = dir.path().join("index.json");
    std::fs::write(&other, br#"{"ready" : true}"#).unwrap();
    let mut s = spec("celsius", Format::Plain);
    s.input_file = Some(other);
    s.path = Some("/v2/repository/index".into());
    let workload = Workload::prepare(&server.client, &s).await.unwrap();
    let bench::Request::Http { body, .. } = &workload.requests[0][0] else {
        panic!("a REST body")
    };
    assert_eq!(&body[..], br#"{"ready" : true}"#);
    answered_without_error(&http, &server.url, &workload).await;
    server.stop().await.unwrap();
}

/// The three paths of `--protocol` and `--shared-memory`: gRPC (raw and typed contents),
/// and system shared memory over REST and gRPC, each answered without error; the regions
/// are gone from the server and from /dev/shm when the run is dropped.
#[tokio::test]
async fn grpc_and_shared_memory_runs_measure_a_v2_server() {
    let dir = tempfile::tempdir().unwrap();
    let default = prism_config::DEFAULT_TOML.replacen("[server]\n", "[server]\nallow_shared_memory = true\n", 1);
    let server = TestServer::start(config(&default, dir.path())).await;
    let grpc = Transport::grpc(&server.grpc_url, 2, Duration::from_secs(5), None)
        .await
        .unwrap();
    let rest = Transport::Http {
        client: reqwest::Client::new(),
        url: server.url.clone(),
    };
    let closed = Load::Closed { concurrency: 4 };
    for (protocol, shared_memory, format) in [
        (Protocol::Grpc, SharedMemory::None, Format::Binary),
        (Protocol::Grpc, SharedMemory::None, Format::Json),
        (Protocol::Http, SharedMemory::System, Format::Binary),
        (Protocol::Grpc, SharedMemory::System, Format::Binary),
    ] {
        let what = format!("{protocol} {format} {shared_memory:?}");
        let s = WorkloadSpec {
            protocol,
            shared_memory,
            ..spec("mlp", format)
        };
        let workload = Workload::prepare(&server.client, &s).await.unwrap();
        let transport = if protocol == Protocol::Grpc { &grpc } else { &rest };
        let p = bench::run_point_over(transport, &workload, closed, WINDOW, None).await;
        assert!(p.requests > 10, "{what}: {p:?}");
        assert_eq!(p.error_count, 0, "{what}: {:?}", p.errors);
        if shared_memory == SharedMemory::System {
            assert_eq!(workload.requests.len(), 4, "one output region per worker");
            let regions = server.get_json("/v2/systemsharedmemory/status").await;
            assert_eq!(regions.as_array().unwrap().len(), 5, "{regions}");
            assert!(workload.body_bytes < 1000, "{what}: the request carries no tensor");
            drop(workload);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let regions = server.get_json("/v2/systemsharedmemory/status").await;
            assert_eq!(regions, serde_json::json!([]), "unregistered when the run is dropped");
        }
    }
    server.stop().await.unwrap();
}

/// A gRPC URL is `http://host:port` or refused with the form it needs; a server that
/// takes the connection and never answers ends each call at the client's timeout,
/// counted as `timeout`, and the run goes on.
#[tokio::test]
async fn grpc_urls_are_checked_and_an_unanswered_call_times_out() {
    for bad in ["127.0.0.1:8001", "https://127.0.0.1:8001", "http://127.0.0.1:8001/v2"] {
        let e = Transport::grpc(bad, 1, Duration::from_secs(1), None).await.unwrap_err();
        assert!(e.to_string().contains("must be http://host:port"), "{bad}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(prism_config::DEFAULT_TOML, dir.path())).await;
    let s = WorkloadSpec {
        protocol: Protocol::Grpc,
        ..spec("mlp", Format::Binary)
    };
    let workload = Workload::prepare(&server.client, &s).await.unwrap();
    // Accepts, holds the connection open, reads nothing and writes nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let grpc = Transport::grpc(&format!("http://{addr}"), 1, Duration::from_millis(150), None)
        .await
        .unwrap();
    let p = bench::run_point_over(&grpc, &workload, Load::Closed { concurrency: 2 }, WINDOW, None).await;
    assert_eq!(p.requests, 0, "{p:?}");
    assert!(p.errors.0.get("timeout").is_some_and(|&n| n >= 2), "{:?}", p.errors);
    assert_eq!(p.error_count, p.errors.0.values().sum::<u64>());
    server.stop().await.unwrap();
}

/// A gRPC call is good only when its `grpc-status` is 0: a server that refuses every
/// call (here for want of a token) shows as errors of that code, and no request is
/// counted as answered; with the token the same run has no error.
#[tokio::test]
async fn grpc_calls_are_counted_by_their_status() {
    const TOKEN: &str = "bench-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\napi_token = \"{TOKEN}\"\n{}",
        prism_config::DEFAULT_TOML.replacen("[server]\n", "", 1)
    );
    let server = TestServer::start(config(&text, dir.path())).await;
    let client = prism_client::Client::new(&server.url).with_token(TOKEN).unwrap();
    let s = WorkloadSpec {
        protocol: Protocol::Grpc,
        ..spec("mlp", Format::Binary)
    };
    let workload = Workload::prepare(&client, &s).await.unwrap();
    let closed = Load::Closed { concurrency: 2 };
    for (token, refused) in [(None, true), (Some("not-the-token"), true), (Some(TOKEN), false)] {
        let grpc = Transport::grpc(&server.grpc_url, 1, Duration::from_secs(5), token)
            .await
            .unwrap();
        let p = bench::run_point_over(&grpc, &workload, closed, WINDOW, None).await;
        if refused {
            assert_eq!(p.requests, 0, "{token:?}: {p:?}");
            assert!(p.error_count > 0, "{token:?}: {p:?}");
            assert_eq!(
                p.errors.0.keys().collect::<Vec<_>>(),
                vec!["grpc_unauthenticated"],
                "{token:?}"
            );
        } else {
            assert!(p.requests > 10 && p.error_count == 0, "{p:?}");
        }
    }
    server.stop().await.unwrap();
}
