//! Criterion benches of the serving path, in process (no socket):
//!
//! * `batcher`: what queueing, batching and the replica hand-off cost per request, on
//!   the built-in `celsius` model (its maths is one multiply-add), for 1 and 32 requests
//!   in flight;
//! * `router`: one whole V2 request through the axum router (parse, validate, batch, run
//!   the default MLP, encode), JSON and binary.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::future::join_all;
use http_body_util::BodyExt;
use prism_client::binary;
use prism_client::v2::{self, InferInput, InferRequest};
use prism_config::Config;
use prism_server::Server;
use prism_server::metrics::Metrics;
use prism_server::serving::Deployment;
use tower::ServiceExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn batcher(c: &mut Criterion) {
    let rt = runtime();
    let spec = Config::embedded_default()
        .deployments
        .into_iter()
        .find(|d| d.name == "celsius")
        .expect("celsius");
    let metrics = Arc::new(Metrics::new());
    let deployment: Arc<Deployment> = rt.block_on(async { Deployment::start(spec, &metrics).expect("starts") });
    let mut group = c.benchmark_group("batcher");
    for in_flight in [1usize, 32] {
        group.throughput(Throughput::Elements(in_flight as u64));
        group.bench_with_input(BenchmarkId::new("celsius", in_flight), &in_flight, |b, &n| {
            b.to_async(&rt).iter(|| {
                let d = Arc::clone(&deployment);
                async move {
                    let answers = join_all((0..n).map(|i| d.infer(ndarray::Array2::from_elem((1, 1), i as f32)))).await;
                    assert!(answers.iter().all(Result::is_ok));
                }
            })
        });
    }
    group.finish();
    rt.block_on(deployment.join());
}

fn router(c: &mut Criterion) {
    let rt = runtime();
    let (router, server) = rt.block_on(async {
        let server = Server::start(&Config::embedded_default()).expect("starts");
        (server.router(), server)
    });
    let x: Vec<f32> = prism_kernels::testing::uniform(784, 3)
        .into_iter()
        .map(f32::abs)
        .collect();
    let request = InferRequest {
        inputs: vec![InferInput::fp32("INPUT0", vec![1, 784], x)],
        ..Default::default()
    };
    let json = v2::to_vec(&request).expect("serializes");
    let (bin, header_len) = binary::encode_request(&request, true).expect("encodes");
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    for (name, body, header_len) in [("mlp_json", json, None), ("mlp_binary", bin, Some(header_len))] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let mut req = Request::post("/v2/models/mlp/infer");
                if let Some(n) = header_len {
                    req = req.header(v2::HEADER_LENGTH, n);
                }
                let req = req.body(Body::from(body.clone())).expect("a request");
                let router = router.clone();
                async move {
                    let response = router.oneshot(req).await.expect("infallible");
                    assert!(response.status().is_success());
                    response.into_body().collect().await.expect("a body").to_bytes()
                }
            })
        });
    }
    group.finish();
    drop(server);
}

criterion_group!(benches, batcher, router);
criterion_main!(benches);
