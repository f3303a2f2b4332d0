//! V2 over gRPC: Triton's `inference.GRPCInferenceService`, beside REST, on
//! `[server] grpc_addr` (default `127.0.0.1:8001`). Each call decodes into the same
//! domain request REST does and runs the one inference path ([`AppState::infer`]);
//! errors answer with the gRPC code of the one table in [`crate::error`] and the same
//! message. The service is served by the same HTTP stack as REST (HTTP/2 without TLS),
//! with the same graceful shutdown.
//!
//! * `grpc-timeout` is the request's deadline (with a `timeout` parameter too, the
//!   shorter wins; a stream's bounds the whole stream); a call the client cancels drops
//!   its queued request.
//! * `ModelStreamInfer` runs the requests of a stream concurrently and answers each as it
//!   completes (with its `id`); an error answers in the stream (`error_message`) and the
//!   stream goes on.

mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use prism_protocol::grpc::{self as pb, GrpcInferenceService, GrpcInferenceServiceServer};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
use crate::describe;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::AppState;

/// The gRPC service over the server's state.
#[derive(Clone)]
pub struct Service {
    app: Arc<AppState>,
}

/// The gRPC service as routes for the HTTP stack, messages up to `max_request_bytes`.
pub fn router(app: Arc<AppState>) -> axum::Router {
    let limit = app.max_request_bytes;
    let tokens = app.tokens.clone();
    let service = GrpcInferenceServiceServer::new(Service { app })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let routes = tonic::service::Routes::new(service)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::map_response(move |r| too_large(r, limit)));
    // Without tokens every call is let through: no check to run per call.
    if !tokens.any() {
        return routes;
    }
    routes.layer(axum::middleware::from_fn(move |request, next| {
        authorize(tokens.clone(), request, next)
    }))
}

/// Refuses a call without the token its method needs, as `UNAUTHENTICATED` or
/// `PERMISSION_DENIED` (the token travels as `authorization` metadata).
async fn authorize(
    tokens: crate::auth::Tokens,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let access = crate::auth::grpc_access(request.uri().path());
    let sent = request.headers().get("authorization").map(|v| v.as_bytes());
    match tokens.check(access, sent) {
        Ok(()) => next.run(request).await,
        Err(denied) => ApiError::from(denied).to_grpc().into_http(),
    }
}

/// tonic refuses a message over the limit with OUT_OF_RANGE (in the headers, or in the
/// trailers once the response has begun); gRPC's convention (and the error table's) is
/// RESOURCE_EXHAUSTED, with the setting that sets the limit.
async fn too_large(response: axum::response::Response, limit: usize) -> axum::response::Response {
    let (mut parts, body) = response.into_parts();
    remap_too_large(&mut parts.headers, limit);
    let body = http_body_util::BodyExt::map_frame(body, move |frame: http_body::Frame<bytes::Bytes>| {
        match frame.into_trailers() {
            Ok(mut trailers) => {
                remap_too_large(&mut trailers, limit);
                http_body::Frame::trailers(trailers)
            }
            Err(data) => data,
        }
    });
    axum::response::Response::from_parts(parts, axum::body::Body::new(body))
}

fn remap_too_large(headers: &mut axum::http::HeaderMap, limit: usize) {
    let refused = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            m.as_bytes()
                .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
        });
    if refused {
        // grpc-message is percent-encoded, as tonic writes it.
        let message = format!(
            "the request message is larger than the server's limit of {limit} bytes (server.max_request_bytes)"
        )
        .replace(' ', "%20");
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
        if let Ok(v) = axum::http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", v);
        }
    }
}

type Answer<T> = Result<Response<T>, Status>;

fn grpc(e: impl Into<ApiError>) -> Status {
    e.into().to_grpc()
}

/// The `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n), if the call has
/// one; a malformed one is refused.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(v) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("");
    let bad = || {
        Status::invalid_argument(format!(
            "grpc-timeout: expected digits and a unit (H, M, S, m, u, n), got {text:?}"
        ))
    };
    if text.len() < 2 || text.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    }))
}

impl Service {
    /// The count of one call, made when it ends.
    fn call(&self, method: &'static str) -> Call {
        Call {
            metrics: Arc::clone(&self.app.metrics),
            method,
            started: Instant::now(),
            done: false,
        }
    }

    /// One inference: resolve, decode, run, encode.
    async fn infer(
        &self,
        request: pb::ModelInferRequest,
        timeout: Option<Duration>,
    ) -> Result<pb::ModelInferResponse, Status> {
        let arrived = tokio::time::Instant::now();
        let version = (!request.model_version.is_empty()).then_some(request.model_version.as_str());
        let target = self.app.resolve(&request.model_name, version).map_err(grpc)?;
        let decoded = codec::grpc::decode(request, &self.app.shm).map(|mut r| {
            r.timeout = match (r.timeout, timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            r
        });
        let answer = self.app.infer(target, decoded, arrived).await.map_err(grpc)?;
        Ok(codec::grpc::encode(answer))
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts one call by method and code when it ends; a call dropped before (its client
/// cancelled it, or its stream ended) counts as `Cancelled`.
struct Call {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    done: bool,
}

impl Call {
    fn record(&self, code: tonic::Code) {
        let m = &self.metrics;
        m.grpc_requests.with_label_values(&[self.method, code_name(code)]).inc();
        m.grpc_duration
            .with_label_values(&[self.method])
            .observe(self.started.elapsed().as_secs_f64());
    }

    fn end<T>(mut self, r: Result<T, Status>) -> Result<T, Status> {
        self.done = true;
        self.record(r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        r
    }
}

/// A code's name as the `code` label spells it (`Ok`, `InvalidArgument`, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            self.record(tonic::Code::Cancelled);
        }
    }
}

/// The most requests of one stream in flight (running or answered and not yet sent).
const MAX_IN_FLIGHT: usize = 1024;

type InferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Answer<pb::ServerLiveResponse> {
        let call = self.call("ServerLive");
        let r = Ok(Response::new(pb::ServerLiveResponse { live: true }));
        call.end(r)
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Answer<pb::ServerReadyResponse> {
        let call = self.call("ServerReady");
        let r = Ok(Response::new(pb::ServerReadyResponse {
            ready: self.app.is_ready(),
        }));
        call.end(r)
    }

    async fn model_ready(&self, request: Request<pb::ModelReadyRequest>) -> Answer<pb::ModelReadyResponse> {
        let call = self.call("ModelReady");
        let m = request.into_inner();
        let r = self
            .app
            .resolve(&m.name, Some(&m.version))
            .map(|served| {
                Response::new(pb::ModelReadyResponse {
                    ready: served.is_ready(),
                })
            })
            .map_err(grpc);
        call.end(r)
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Answer<pb::ServerMetadataResponse> {
        let call = self.call("ServerMetadata");
        let m = describe::server_metadata(&self.app);
        let r = Ok(Response::new(pb::ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        }));
        call.end(r)
    }

    async fn model_metadata(&self, request: Request<pb::ModelMetadataRequest>) -> Answer<pb::ModelMetadataResponse> {
        let call = self.call("ModelMetadata");
        let m = request.into_inner();
        let r = self
            .app
            .resolve(&m.name, Some(&m.version))
            .map(|served| Response::new(convert::metadata(describe::model_metadata(&served))))
            .map_err(grpc);
        call.end(r)
    }

    async fn model_infer(&self, request: Request<pb::ModelInferRequest>) -> Answer<pb::ModelInferResponse> {
        let call = self.call("ModelInfer");
        let r = match grpc_timeout(request.metadata()) {
            Ok(timeout) => self.infer(request.into_inner(), timeout).await.map(Response::new),
            Err(e) => Err(e),
        };
        call.end(r)
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        // A stream's grpc-timeout bounds the whole stream: past it, what is in flight is
        // dropped and the stream ends with DEADLINE_EXCEEDED.
        let deadline = grpc_timeout(request.metadata())?.map(|t| tokio::time::Instant::now() + t);
        let mut inbound = request.into_inner();
        let service = self.clone();
        let (tx, rx) = mpsc::channel(64);
        // One task holds the stream's requests in flight: when the client goes away (the
        // answers' receiver is dropped) or the deadline passes, the task ends and drops
        // them, queued ones too. At most MAX_IN_FLIGHT run at once; past that the task
        // stops reading the stream until one is answered.
        tokio::spawn(async move {
            let mut inflight = FuturesUnordered::new();
            let mut ready = std::collections::VecDeque::new();
            let mut open = true;
            loop {
                tokio::select! {
                    next = inbound.message(), if open && inflight.len() + ready.len() < MAX_IN_FLIGHT => match next {
                        Ok(Some(m)) => {
                            let service = service.clone();
                            inflight.push(async move {
                                let call = service.call("ModelStreamInfer");
                                let (id, model) = (m.id.clone(), m.model_name.clone());
                                let r = call.end(service.infer(m, None).await);
                                convert::stream_answer(r, id, model)
                            });
                        }
                        Ok(None) => open = false,
                        Err(status) => {
                            // The client's side broke (a malformed or oversized message):
                            // the stream ends with its error.
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    Some(answer) = inflight.next(), if !inflight.is_empty() => ready.push_back(answer),
                    permit = tx.reserve(), if !ready.is_empty() => match permit {
                        Ok(permit) => permit.send(Ok(ready.pop_front().expect("not empty"))),
                        Err(_) => return,
                    },
                    _ = tx.closed() => return,
                    () = sleep_until(deadline) => {
                        let _ = tx.try_send(Err(Status::deadline_exceeded("the stream's grpc-timeout passed")));
                        return;
                    }
                }
                if !open && inflight.is_empty() && ready.is_empty() {
                    return;
                }
            }
        });
        let stream: InferStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }

    async fn model_config(&self, request: Request<pb::ModelConfigRequest>) -> Answer<pb::ModelConfigResponse> {
        let call = self.call("ModelConfig");
        let m = request.into_inner();
        let r = self
            .app
            .deployment(&m.name, Some(&m.version))
            .map(|d| {
                Response::new(pb::ModelConfigResponse {
                    config: Some(convert::config(describe::model_config(&d))),
                })
            })
            .map_err(grpc);
        call.end(r)
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Answer<pb::ModelStatisticsResponse> {
        let call = self.call("ModelStatistics");
        let m = request.into_inner();
        let stats = |d: &crate::serving::Deployment| convert::statistics(d.name(), d.stats.snapshot());
        let r = if m.name.is_empty() {
            Ok(self.app.deployments.iter().map(|d| stats(d)).collect())
        } else {
            self.app
                .deployment(&m.name, Some(&m.version))
                .map(|d| vec![stats(&d)])
                .map_err(grpc)
        }
        .map(|model_stats| Response::new(pb::ModelStatisticsResponse { model_stats }));
        call.end(r)
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Answer<pb::RepositoryIndexResponse> {
        let call = self.call("RepositoryIndex");
        let m = request.into_inner();
        let models = describe::repository_index(&self.app, m.ready)
            .into_iter()
            .map(|m| pb::repository_index_response::ModelIndex {
                name: m.name,
                version: m.version.unwrap_or_default(),
                state: m.state.unwrap_or_default(),
                reason: m.reason.unwrap_or_default(),
            })
            .collect();
        let r = Ok(Response::new(pb::RepositoryIndexResponse { models }));
        call.end(r)
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Answer<pb::RepositoryModelLoadResponse> {
        let call = self.call("RepositoryModelLoad");
        let m = request.into_inner();
        let r = async {
            let d = self.app.deployment(&m.model_name, None).map_err(grpc)?;
            describe::load(&d, m.parameters.keys().map(String::as_str))
                .await
                .map_err(grpc)?;
            Ok(Response::new(pb::RepositoryModelLoadResponse {}))
        }
        .await;
        call.end(r)
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Answer<pb::RepositoryModelUnloadResponse> {
        let call = self.call("RepositoryModelUnload");
        let m = request.into_inner();
        let r = async {
            self.app.deployment(&m.model_name, None).map_err(grpc)?.unload().await;
            Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
        }
        .await;
        call.end(r)
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Answer<pb::SystemSharedMemoryStatusResponse> {
        let call = self.call("SystemSharedMemoryStatus");
        let m = request.into_inner();
        let r = self
            .app
            .shm
            .status(&m.name)
            .map(|regions| Response::new(convert::shm_status(regions)))
            .map_err(grpc);
        call.end(r)
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Answer<pb::SystemSharedMemoryRegisterResponse> {
        let call = self.call("SystemSharedMemoryRegister");
        let m = request.into_inner();
        let r = self
            .app
            .shm
            .register(&m.name, &m.key, m.offset, m.byte_size)
            .map(|()| Response::new(pb::SystemSharedMemoryRegisterResponse {}))
            .map_err(grpc);
        call.end(r)
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<pb::SystemSharedMemoryUnregisterResponse> {
        let call = self.call("SystemSharedMemoryUnregister");
        let m = request.into_inner();
        let r = self
            .app
            .shm
            .unregister(&m.name)
            .map(|()| Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
            .map_err(grpc);
        call.end(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_is_read_in_every_unit_and_a_bad_one_refused() {
        let timeout = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(timeout("250m").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(timeout("3S").unwrap(), Some(Duration::from_secs(3)));
        assert_eq!(timeout("1H").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("1500u").unwrap(), Some(Duration::from_micros(1500)));
        assert_eq!(timeout("7n").unwrap(), Some(Duration::from_nanos(7)));
        assert!(
            timeout("10x")
                .unwrap_err()
                .message()
                .contains("expected digits and a unit")
        );
        assert!(timeout("m").is_err());
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()).unwrap(), None);
    }

    #[test]
    fn code_labels_are_the_codes_names() {
        for n in 0..17 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(code_name(code), format!("{code:?}"), "code {n}");
        }
    }
}
