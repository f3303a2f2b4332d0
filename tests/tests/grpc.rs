//! V2 over gRPC with the generated tonic client, against the real server: the same
//! answers as REST, `grpc-timeout` as the request's deadline, the one error table's codes,
//! and a shutdown that answers the gRPC calls already accepted.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prism_protocol::grpc::infer_parameter::ParameterChoice;
use prism_protocol::grpc::model_infer_request::InferInputTensor;
use prism_protocol::grpc::{GrpcInferenceServiceClient, InferParameter, ModelInferRequest, ServerReadyRequest};
use prism_tests::{TestServer, celsius, config, metric, one_row};
use tonic::Code;
use tonic::transport::Channel;

async fn connect(s: &TestServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(s.grpc_url.clone())
        .await
        .expect("the gRPC port accepts connections")
}

/// A `celsius` request with one row, `x`, sent raw.
fn celsius_request(model: &str, x: f32) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        id: format!("x={x}"),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::copy_from_slice(&x.to_le_bytes())],
        ..Default::default()
    }
}

fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn grpc_answers_what_rest_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(&celsius("celsius", ""), dir.path())).await;
    let mut g = connect(&s).await;
    assert!(g.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let answer = g
        .model_infer(celsius_request("celsius", 100.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.model_name.as_str(), answer.id.as_str()), ("celsius", "x=100"));
    assert_eq!(answer.outputs[0].shape, vec![1, 1]);
    let rest = s.client.infer("celsius", &one_row(100.0)).await.unwrap();
    let want = rest.outputs[0].data.as_ref().unwrap().to_f32().unwrap();
    assert_eq!(f32s(&answer.raw_output_contents[0]), want);
    assert_eq!(want, vec![212.0]);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_timeout_is_the_deadline_and_errors_carry_the_tables_codes() {
    let dir = tempfile::tempdir().unwrap();
    let slow = celsius("slow", "[deployments.fault_injection]\ndelay_ms = 1500\n");
    let s = TestServer::start(config(&slow, dir.path())).await;
    let mut g = connect(&s).await;

    // The `timeout` parameter: the server answers DEADLINE_EXCEEDED at the deadline.
    let mut with_timeout = celsius_request("slow", 1.0);
    let micros = InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(100_000)),
    };
    with_timeout.parameters.insert("timeout".into(), micros);
    let started = Instant::now();
    let e = g.model_infer(with_timeout).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("timed out after 100ms"), "{}", e.message());
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "answered at the deadline, not after the run"
    );

    // grpc-timeout: the client gives up at the same moment the server does; either way
    // the server drops the request at the deadline instead of running it.
    let mut request = tonic::Request::new(celsius_request("slow", 1.0));
    request.set_timeout(Duration::from_millis(100));
    let e = g.model_infer(request).await.unwrap_err();
    assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "{e:?}");
    let metrics = loop {
        let m = s.client.metrics().await.unwrap();
        let ended = |o: &str| {
            metric(
                &m,
                &format!("prism_inference_requests_total{{model=\"slow\",outcome=\"{o}\"}}"),
            )
        };
        if ended("timeout").unwrap_or(0.0) + ended("cancelled").unwrap_or(0.0) >= 2.0
            || started.elapsed() > Duration::from_secs(5)
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ended = |o: &str| {
        metric(
            &metrics,
            &format!("prism_inference_requests_total{{model=\"slow\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(
        ended("timeout").unwrap() + ended("cancelled").unwrap(),
        2.0,
        "{metrics}"
    );
    assert_eq!(ended("success"), Some(0.0));

    let e = g.model_infer(celsius_request("nope", 1.0)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "unknown model `nope`"));
    let mut two_raw = celsius_request("slow", 1.0);
    two_raw.raw_input_contents.push(Bytes::from_static(&[0; 4]));
    let e = g.model_infer(two_raw).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("raw_input_contents has 2 entries"),
        "{}",
        e.message()
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_shutdown_answers_the_grpc_calls_already_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let slow = celsius("slow", "[deployments.fault_injection]\ndelay_ms = 400\n");
    let mut s = TestServer::start(config(&slow, dir.path())).await;
    let g = connect(&s).await;
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let mut g = g.clone();
            tokio::spawn(async move { g.model_infer(celsius_request("slow", i as f32)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.signal_shutdown();
    for (i, call) in calls.into_iter().enumerate() {
        let answer = call
            .await
            .unwrap()
            .expect("accepted before the shutdown: answered")
            .into_inner();
        assert_eq!(f32s(&answer.raw_output_contents[0]), vec![i as f32 * 1.8 + 32.0]);
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_over_max_request_bytes_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[server]\nmax_request_bytes = 1024\n{}", celsius("celsius", ""));
    let s = TestServer::start(config(&text, dir.path())).await;
    let mut g = connect(&s).await;
    let mut big = celsius_request("celsius", 1.0);
    big.inputs[0].shape = vec![1000, 1];
    big.raw_input_contents = vec![Bytes::from(vec![0u8; 4000])];
    let e = g.model_infer(big).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("limit of 1024 bytes (server.max_request_bytes)"),
        "{}",
        e.message()
    );
    // Within the limit, the same connection serves on.
    assert!(g.model_infer(celsius_request("celsius", 1.0)).await.is_ok());
    s.stop().await.unwrap();
}
