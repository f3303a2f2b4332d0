//! The REST API: KServe V2 plus Triton's statistics, model-configuration and
//! repository-index extensions, and `/metrics`.
//!
//! Handlers only parse, look up and wait: the maths runs on replica threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use prism_protocol::v2::{self, InferResponse, MetadataTensor, ModelMetadata, RepositoryModel, ServerMetadata};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::batcher::Rows;
use crate::cluster::Cluster;
use crate::codec::{self, Source};
use crate::deployment::{Deployment, MODEL_VERSION};
use crate::error::{ApiError, InferError};
use crate::metrics::Metrics;
use crate::objects;
use crate::pipeline::{self, Pipeline};
use crate::store::{Failure, Meta, ObjectRef, Owner, Settles, Store};
use crate::tasks::Tasks;

/// What every handler shares.
pub struct AppState {
    pub cluster: Cluster,
    /// In the order of the deployment file.
    pub deployments: Vec<Arc<Deployment>>,
    by_name: HashMap<String, Arc<Deployment>>,
    pub metrics: Arc<Metrics>,
    /// False once the server is shutting down: readiness answers 503.
    accepting: AtomicBool,
    pub(crate) max_request_bytes: usize,
    pub store: Arc<Store>,
    pub tasks: Arc<Tasks>,
    /// Pipelines by name, in the order of the deployment file.
    pub pipelines: Vec<Arc<Pipeline>>,
    pipelines_by_name: HashMap<String, Arc<Pipeline>>,
}

impl AppState {
    pub fn new(
        deployments: Vec<Arc<Deployment>>,
        metrics: Arc<Metrics>,
        max_request_bytes: usize,
        cluster: Cluster,
        store: Arc<Store>,
        pipelines: Vec<prism_config::Pipeline>,
    ) -> Self {
        let by_name = deployments
            .iter()
            .map(|d| (d.name().to_owned(), Arc::clone(d)))
            .collect();
        let pipelines: Vec<Arc<Pipeline>> = pipelines
            .into_iter()
            .map(|p| Arc::new(Pipeline::new(p, &by_name)))
            .collect();
        let pipelines_by_name = pipelines.iter().map(|p| (p.name().to_owned(), Arc::clone(p))).collect();
        let tasks = Arc::new(Tasks {
            store: Arc::clone(&store),
            pool: Arc::clone(&cluster.pool),
            metrics: Arc::clone(&metrics),
        });
        AppState {
            cluster,
            deployments,
            by_name,
            metrics,
            accepting: AtomicBool::new(true),
            max_request_bytes,
            store,
            tasks,
            pipelines,
            pipelines_by_name,
        }
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    /// The deployment or pipeline a model path names, its version checked.
    fn resolve(&self, path: Result<Path<ModelPath>, PathRejection>) -> Result<Served<'_>, ApiError> {
        let Path(p) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let served = match (self.by_name.get(&p.model), self.pipelines_by_name.get(&p.model)) {
            (Some(d), _) => Served::Deployment(d),
            (None, Some(pipeline)) => Served::Pipeline(pipeline),
            (None, None) => return Err(ApiError::ModelNotFound(p.model)),
        };
        match p.version.as_deref() {
            None | Some("") | Some(MODEL_VERSION) => Ok(served),
            Some(v) => Err(ApiError::VersionNotFound {
                model: p.model.clone(),
                version: v.to_owned(),
            }),
        }
    }

    /// The deployment a model path names, for the routes pipelines do not have.
    fn lookup(&self, path: Result<Path<ModelPath>, PathRejection>) -> Result<&Arc<Deployment>, ApiError> {
        match self.resolve(path)? {
            Served::Deployment(d) => Ok(d),
            Served::Pipeline(p) => Err(ApiError::IsPipeline(p.name().to_owned())),
        }
    }
}

/// What a model name serves.
enum Served<'a> {
    Deployment(&'a Arc<Deployment>),
    Pipeline(&'a Arc<Pipeline>),
}

#[derive(Deserialize)]
struct ModelPath {
    model: String,
    #[serde(default)]
    version: Option<String>,
}

type App = State<Arc<AppState>>;
type ModelParam = Result<Path<ModelPath>, PathRejection>;

/// The router of the whole API. `max_request_bytes` bounds every body.
pub fn router(app: Arc<AppState>) -> Router {
    let max_request_bytes = app.max_request_bytes;
    // Each model route also exists under `/versions/{version}`.
    let model_routes = |r: Router<Arc<AppState>>, suffix: &str, route: axum::routing::MethodRouter<Arc<AppState>>| {
        r.route(&format!("/v2/models/{{model}}{suffix}"), route.clone())
            .route(&format!("/v2/models/{{model}}/versions/{{version}}{suffix}"), route)
    };
    let mut r = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route("/v2/repository/models/{model}/unload", post(repository_unload))
        .route("/v2/resources", get(resources))
        .route("/v2/status", get(status))
        .route("/v2/objects", post(objects::put))
        .route("/v2/objects/{object_ref}", get(objects::get).delete(objects::delete))
        .route("/v2/objects/{object_ref}/meta", get(objects::meta))
        .route("/v2/wait", post(objects::wait))
        .route("/v2/tasks/{op}", post(objects::task))
        .route("/metrics", get(metrics));
    r = model_routes(r, "", get(model_metadata));
    r = model_routes(r, "/ready", get(model_ready));
    r = model_routes(r, "/config", get(model_config));
    r = model_routes(r, "/stats", get(model_stats));
    r = model_routes(r, "/infer", post(infer));
    r.fallback(no_route)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), track))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(app)
}

/// Counts every request by matched route and status.
async fn track(State(app): App, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    // Only the standard methods become label values: a client cannot mint new series.
    let method = match *request.method() {
        Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD | Method::OPTIONS | Method::PATCH => {
            request.method().as_str()
        }
        _ => "other",
    }
    .to_owned();
    let response = next.run(request).await;
    let m = &app.metrics;
    m.http_requests
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn no_route(request: Request) -> ApiError {
    ApiError::NoRoute {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(app): App) -> StatusCode {
    // A model unloaded through the repository API is not waited for, as in Triton.
    let ready = app.accepting.load(Ordering::Acquire) && app.deployments.iter().all(|d| d.is_ready() || !d.is_loaded());
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn server_metadata() -> axum::Json<ServerMetadata> {
    axum::Json(ServerMetadata {
        name: "prism".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec![
            "binary_tensor_data".into(),
            "statistics".into(),
            "model_configuration".into(),
            "prism_objects".into(),
            "prism_tasks".into(),
            "prism_pipelines".into(),
            "model_repository".into(),
        ],
    })
}

fn metadata_tensor(t: &prism_config::TensorSpec) -> MetadataTensor {
    MetadataTensor {
        name: t.name.clone(),
        datatype: t.datatype.to_string(),
        shape: t.shape().to_vec(),
    }
}

async fn model_metadata(State(app): App, path: ModelParam) -> Result<axum::Json<ModelMetadata>, ApiError> {
    let d = match app.resolve(path)? {
        Served::Deployment(d) => d,
        Served::Pipeline(p) => {
            return Ok(axum::Json(ModelMetadata {
                name: p.name().to_owned(),
                versions: vec![MODEL_VERSION.into()],
                platform: "prism_pipeline".into(),
                inputs: p
                    .spec
                    .inputs
                    .iter()
                    .map(|t| MetadataTensor {
                        name: t.name.clone(),
                        datatype: t.datatype.to_string(),
                        shape: t.shape.clone(),
                    })
                    .collect(),
                outputs: vec![MetadataTensor {
                    name: p.spec.output_name.clone(),
                    datatype: p.output_datatype().to_string(),
                    shape: p.output_shape().to_vec(),
                }],
            }));
        }
    };
    Ok(axum::Json(ModelMetadata {
        name: d.name().to_owned(),
        versions: vec![MODEL_VERSION.into()],
        platform: d.platform.into(),
        inputs: vec![metadata_tensor(&d.spec.input)],
        outputs: vec![metadata_tensor(&d.spec.output)],
    }))
}

async fn model_ready(State(app): App, path: ModelParam) -> Result<StatusCode, ApiError> {
    let ready = match app.resolve(path)? {
        Served::Deployment(d) => d.is_ready(),
        Served::Pipeline(p) => p.is_ready(),
    };
    Ok(if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}

/// Triton's type names (`TYPE_FP32`, `TYPE_STRING` for BYTES).
fn triton_type(d: prism_protocol::DType) -> String {
    match d {
        prism_protocol::DType::Bytes => "TYPE_STRING".into(),
        prism_protocol::DType::Bool => "TYPE_BOOL".into(),
        other => format!("TYPE_{}", other.v2_name()),
    }
}

/// The model's configuration in Triton's JSON form: what `perf_analyzer` and
/// `tritonclient` read to learn the batch dimension and the batcher.
async fn model_config(State(app): App, path: ModelParam) -> Result<axum::Json<Value>, ApiError> {
    let d = app.lookup(path)?;
    let s = &d.spec;
    Ok(axum::Json(json!({
        "name": s.name,
        "platform": "",
        "backend": "prism",
        "version_policy": { "latest": { "num_versions": 1 } },
        "max_batch_size": s.batching.max_batch_size,
        "input": [{
            "name": s.input.name,
            "data_type": triton_type(s.input.datatype),
            "format": "FORMAT_NONE",
            "dims": [s.input.features],
            "is_shape_tensor": false,
            "allow_ragged_batch": false,
            "optional": false,
        }],
        "output": [{
            "name": s.output.name,
            "data_type": triton_type(s.output.datatype),
            "dims": [s.output.features],
            "label_filename": "",
            "is_shape_tensor": false,
        }],
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": s.batching.batch_wait_timeout.as_micros() as u64,
            "preserve_ordering": false,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": false,
                "max_queue_size": s.batching.max_queue_size,
            },
        },
        "instance_group": instance_groups(d),
        "parameters": {
            "threads": { "string_value": s.actor.threads.to_string() },
            "precision": { "string_value": s.precision.to_string() },
        },
    })))
}

/// Triton's instance groups from where the replicas run: one `KIND_GPU` group per card
/// computing replicas, one `KIND_CPU` group for the rest. Cards are numbered by CUDA
/// ordinal, as Triton numbers them (`GET /v2/status` shows NVML's indices).
fn instance_groups(d: &Deployment) -> Value {
    let mut per_card: std::collections::BTreeMap<usize, usize> = Default::default();
    let mut cpu = 0;
    for r in d.replicas().iter().filter(|r| r.placement.runs()) {
        match &r.placement {
            crate::deployment::ReplicaPlacement::Gpu { cuda: Some(card), .. } => {
                *per_card.entry(*card).or_default() += 1
            }
            _ => cpu += 1,
        }
    }
    let mut groups: Vec<Value> = per_card
        .into_iter()
        .map(|(card, count)| {
            json!({ "name": format!("{}_gpu{card}", d.name()), "kind": "KIND_GPU", "count": count, "gpus": [card] })
        })
        .collect();
    if cpu > 0 {
        groups.push(json!({ "name": format!("{}_0", d.name()), "kind": "KIND_CPU", "count": cpu, "gpus": [] }));
    }
    Value::Array(groups)
}

async fn model_stats(State(app): App, path: ModelParam) -> Result<axum::Json<Value>, ApiError> {
    let d = app.lookup(path)?;
    Ok(axum::Json(
        json!({ "model_stats": [d.stats.to_json(d.name(), MODEL_VERSION)] }),
    ))
}

async fn all_stats(State(app): App) -> axum::Json<Value> {
    let stats: Vec<Value> = app
        .deployments
        .iter()
        .map(|d| d.stats.to_json(d.name(), MODEL_VERSION))
        .collect();
    axum::Json(json!({ "model_stats": stats }))
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(State(app): App, body: Bytes) -> Result<axum::Json<Vec<RepositoryModel>>, ApiError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid repository index request: {e}")))?
    };
    let deployments = app.deployments.iter().map(|d| {
        let reason = if !d.is_loaded() {
            "unloaded"
        } else if d.is_ready() {
            ""
        } else {
            "no replica is running (see GET /v2/status)"
        };
        (d.name(), d.is_ready(), reason)
    });
    let pipelines = app.pipelines.iter().map(|p| {
        let ready = p.is_ready();
        (p.name(), ready, if ready { "" } else { "a model it runs is not ready" })
    });
    let models = deployments
        .chain(pipelines)
        .filter(|(_, ready, _)| !request.ready || *ready)
        .map(|(name, ready, reason)| RepositoryModel {
            name: name.to_owned(),
            version: Some(MODEL_VERSION.into()),
            state: Some(if ready { "READY" } else { "UNAVAILABLE" }.into()),
            reason: Some(reason.into()),
        })
        .collect();
    Ok(axum::Json(models))
}

/// What Triton's load request may carry. A new `config` or model files are Triton's way of
/// changing a model through the API; a Prism deployment is what its file declares.
#[derive(serde::Deserialize, Default)]
struct LoadRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

/// `POST /v2/repository/models/{m}/load`: starts the model again as declared at start-up,
/// re-reading its weights file; a loaded model is replaced without dropping a request (the
/// old replicas finish what they hold), except on GPUs, where it answers 503 while its
/// replicas restart (see [`crate::deployment::Deployment::load`]).
async fn repository_load(State(app): App, path: ModelParam, body: Bytes) -> Result<axum::Json<Value>, ApiError> {
    let d = app.lookup(path)?;
    let request: LoadRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LoadRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid load request: {e}")))?
    };
    if let Some(key) = request
        .parameters
        .keys()
        .find(|k| *k == "config" || k.starts_with("file:"))
    {
        return Err(ApiError::BadRequest(format!(
            "load parameter `{key}` is not supported: a model loads as declared at start-up (its weights file is read again)"
        )));
    }
    d.load().await.map_err(|e| ApiError::LoadFailed {
        reason: e.to_string(),
        serving: d.is_ready(),
    })?;
    Ok(axum::Json(json!({})))
}

/// `POST /v2/repository/models/{m}/unload`: stops taking requests for the model, answers
/// those it holds, and stops its replicas (their slots stay reserved for a load).
async fn repository_unload(State(app): App, path: ModelParam) -> Result<axum::Json<Value>, ApiError> {
    let d = app.lookup(path)?;
    d.unload().await;
    Ok(axum::Json(json!({})))
}

/// Total and available logical resources, like `ray.cluster_resources()` and
/// `ray.available_resources()`: `GPU` counts cards, fractional.
/// Available is what neither replicas nor running tasks hold.
async fn resources(State(app): App) -> axum::Json<Value> {
    let c = &app.cluster;
    let free = c.pool.free();
    let round = |v: f64| (v.max(0.0) * 1e4).round() / 1e4;
    let (_, used, _) = app.store.usage();
    let capacity = app.store.capacity();
    let mut total = json!({
        "CPU": c.machine.cpus as f64,
        "GPU": c.machine.gpus.len() as f64,
        "memory": c.machine.memory,
        "object_store_memory": capacity,
    });
    let mut available = json!({
        "CPU": round(free.cpus),
        "GPU": round(free.gpus.iter().sum()),
        "memory": c.machine.memory,
        "object_store_memory": capacity.saturating_sub(used),
    });
    for (name, amount) in &c.resources_total {
        total[name] = json!(amount);
        available[name] = json!(round(free.resources[name]));
    }
    axum::Json(json!({ "total": total, "available": available }))
}

/// Deployments, replicas and where they were placed, queue depths, the GPUs.
async fn status(State(app): App) -> axum::Json<Value> {
    let c = &app.cluster;
    let deployments: Vec<Value> = app
        .deployments
        .iter()
        .map(|d| {
            json!({
                "name": d.name(),
                "ready": d.is_ready(),
                "loaded": d.is_loaded(),
                "num_replicas": d.spec.num_replicas,
                "queue_depth": d.queued(),
                "replicas": d.replicas(),
            })
        })
        .collect();
    let (objects, memory, spilled) = app.store.usage();
    let store = json!({
        "capacity": app.store.capacity(),
        "objects": objects,
        "memory_bytes": memory,
        "spilled_bytes": spilled,
    });
    axum::Json(json!({
        "ready": app.accepting.load(Ordering::Acquire),
        "cpus": c.machine.cpus,
        "memory": c.machine.memory,
        "gpus": c.machine.gpus.iter().zip(&c.gpu_used).map(|(g, used)| {
            let mut v = serde_json::to_value(g).expect("GPU info serializes");
            v["used"] = json!(used);
            v
        }).collect::<Vec<_>>(),
        "no_gpu_reason": c.no_gpu_reason,
        "deployments": deployments,
        "pipelines": app.pipelines.iter().map(|p| json!({
            "name": p.name(),
            "ready": p.is_ready(),
            "steps": p.spec.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "object_store": store,
    }))
}

async fn metrics(State(app): App) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
}

/// A V2 answer whose output is in the store: `parameters.object_ref`, no data.
/// `rows` is -1 when not known yet (the input object is still pending).
fn ref_response(d: &Deployment, id: Option<String>, rows: i64, r: ObjectRef) -> InferResponse {
    let shape = vec![rows, d.spec.output.features as i64];
    ref_answer(d.name(), id, &d.spec.output.name, shape, d.spec.output.datatype, r)
}

/// The V2 answer of model `model` whose one output, `output`, is the object `r`:
/// `parameters.object_ref`, no data.
pub(crate) fn ref_answer(
    model: &str,
    id: Option<String>,
    output: &str,
    shape: Vec<i64>,
    datatype: prism_protocol::DType,
    r: ObjectRef,
) -> InferResponse {
    let mut parameters = v2::Parameters::new();
    parameters.insert("object_ref".into(), r.to_string().into());
    InferResponse {
        model_name: model.to_owned(),
        model_version: Some(MODEL_VERSION.into()),
        id,
        parameters: None,
        outputs: vec![v2::InferOutput {
            name: output.to_owned(),
            shape,
            datatype: datatype.to_string(),
            parameters: Some(parameters),
            data: None,
        }],
    }
}

/// `parameters.async`: queues the request (refusing at once if it cannot be queued) and
/// answers 202 with the ref its output will have; the answer lands in the store.
fn infer_async(
    app: &AppState,
    d: &Arc<Deployment>,
    input: Source,
    id: Option<String>,
    timeout: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    let store = Arc::clone(&app.store);
    // What can be refused now is refused now: a full queue, an unknown input object.
    let (queued, n) = match input {
        Source::Inline(a) => {
            let n = a.nrows() as i64;
            (Ok(d.submit(Rows::Owned(a))?), n)
        }
        Source::Object(r) => {
            let info = store.info(r)?;
            let n = info.shape.as_ref().and_then(|s| s.first()).map_or(-1, |&n| n as i64);
            (Err(r), n)
        }
    };
    let r = store.create_pending(Owner::Client { ttl: store.default_ttl });
    let deployment = Arc::clone(d);
    tokio::spawn(async move {
        let settles = Settles::new(Arc::clone(&store), r, "the inference");
        let work = async {
            let rx = match queued {
                Ok(rx) => rx,
                // The input may itself be pending (chained async work): wait for it here,
                // not before answering 202.
                Err(input) => {
                    let lease = store.get(input, None).await?;
                    deployment.submit(codec::object_rows(&deployment.spec, lease)?)?
                }
            };
            deployment.answer(rx).await
        };
        let answer = within_deadline(&deployment, timeout, work).await;
        match answer {
            Ok(output) => {
                store
                    .fulfil_array(r, output.into_dyn(), deployment.spec.output.datatype)
                    .await
            }
            Err(e) => store.fail(r, inference_failure(&e)),
        }
        drop(settles);
    });
    Ok((StatusCode::ACCEPTED, axum::Json(ref_response(d, id, n, r))).into_response())
}

/// `work` (waiting for an input object, queueing, running), bounded by the request's
/// deadline. Dropping it at the deadline takes the request out of its queue (the batcher
/// skips requests nobody waits for) or discards its rows.
async fn within_deadline<T>(
    d: &Deployment,
    timeout: Option<std::time::Duration>,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_err(|_| ApiError::DeadlineExceeded {
                model: d.name().to_owned(),
                timeout: t,
            })?,
        None => work.await,
    }
}

/// What an object keeps when the inference that should produce it failed: the kind, the
/// message, and how many times the batch ran.
pub(crate) fn inference_failure(e: &ApiError) -> Failure {
    let (message, attempts) = match e {
        ApiError::Infer(InferError::Retried { last, attempts }) => (last.to_string(), *attempts),
        _ => (e.to_string(), 1),
    };
    Failure {
        kind: e.failure_kind(),
        message,
        attempts,
    }
}

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::BadRequest(format!("cannot read the request body: {}", rejection.body_text()))
    }
}

async fn infer(State(app): App, path: ModelParam, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let body = body.map_err(|r| body_error(r, app.max_request_bytes));
    let d = match app.resolve(path) {
        Ok(Served::Deployment(d)) => Arc::clone(d),
        Ok(Served::Pipeline(p)) => {
            let result = match body {
                Ok(body) => pipeline::infer(&app, p, &headers, body).await,
                Err(e) => Err(e),
            };
            return result.unwrap_or_else(|e| {
                if e.status().is_server_error() {
                    tracing::warn!(pipeline = p.name(), error = %e, "pipeline failed");
                }
                e.into_response()
            });
        }
        Err(e) => return e.into_response(),
    };
    let started = Instant::now();
    let result = run_infer(&app, &d, &headers, body).await;
    let elapsed = started.elapsed();
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) => e.outcome(),
    };
    let name = d.name();
    d.request_metrics.outcome(outcome).inc();
    d.request_metrics.duration.observe(elapsed.as_secs_f64());
    d.stats.record_request(result.is_ok(), elapsed);
    match result {
        Ok(response) => response,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(model = name, error = %e, "inference failed");
            }
            e.into_response()
        }
    }
}

async fn run_infer(
    app: &AppState,
    d: &Arc<Deployment>,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let (json_part, binary_part) = codec::body_parts(headers, &body?)?;
    let request = codec::decode(&d.spec, &json_part, &binary_part)?;
    if request.run_async {
        return infer_async(app, d, request.input, request.id, request.timeout);
    }
    let work = async {
        let rows = match request.input {
            Source::Inline(a) => Rows::Owned(a),
            // Waits while the object is pending (the output of async work chained in).
            Source::Object(r) => codec::object_rows(&d.spec, app.store.get(r, None).await?)?,
        };
        d.infer(rows).await
    };
    let output = within_deadline(d, request.timeout, work).await?;
    if request.output_ref {
        let store = Arc::clone(&app.store);
        let owner = Owner::Client { ttl: store.default_ttl };
        let (rows, datatype) = (output.nrows() as i64, d.spec.output.datatype);
        let r = tokio::task::spawn_blocking(move || {
            let meta = Meta {
                datatype,
                shape: output.shape().to_vec(),
            };
            let output = output.as_standard_layout();
            store.put(
                meta,
                &crate::store::encoded(output.as_slice().expect("standard layout"), datatype),
                owner,
            )
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
        return Ok(axum::Json(ref_response(d, request.id, rows, r)).into_response());
    }
    let (header_bytes, tail) = codec::encode(&d.spec, MODEL_VERSION, request.id, &output, request.binary_output);
    if tail.is_empty() && !request.binary_output {
        return Ok(([(header::CONTENT_TYPE, "application/json")], header_bytes).into_response());
    }
    let header_len = header_bytes.len();
    let mut body = header_bytes;
    body.extend_from_slice(&tail);
    Ok(binary_response(header_len, Body::from(body)))
}

/// A V2 answer in the binary extension: `body` is the JSON header of `header_len` bytes,
/// then the tensors' bytes.
pub(crate) fn binary_response(header_len: usize, body: Body) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static("inference-header-content-length"),
                HeaderValue::from(header_len),
            ),
        ],
        body,
    )
        .into_response()
}

/// A JSON header followed by an object's bytes, sent without copying them: the lease
/// travels with the body, so the object cannot be spilled or freed under it.
pub(crate) fn header_then_object(head: Vec<u8>, lease: crate::store::Lease) -> Response {
    let header_len = head.len();
    let chunks = [Bytes::from(head), Bytes::from_owner(lease)];
    let body = Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, std::convert::Infallible>)));
    binary_response(header_len, body)
}
