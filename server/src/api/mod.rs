//! The REST API: KServe V2 with Triton's binary tensor, statistics, model-configuration,
//! repository and system shared-memory extensions, Prism's object, wait and task
//! extensions, `/metrics` and the status routes. (gRPC, in `grpc`, is the other adapter
//! over the same core.)
//!
//! Handlers read the request (path, headers, body), call the core (`AppState::infer`,
//! the store, the tasks, the deployments), and write the answer; the one table in
//! [`respond`] turns any error into its status. The maths runs on replica threads.

mod admin;
mod infer;
mod models;
mod objects;
mod openai;
mod repository;
pub mod respond;
mod shm;
mod tasks;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;

pub use respond::ApiError;

use crate::auth;
use crate::codec::invalid;
use crate::state::{AppState, Served};

type App = State<Arc<AppState>>;

/// `/v2/models/{model}[/versions/{version}]...`.
#[derive(Deserialize)]
struct ModelPath {
    model: String,
    #[serde(default)]
    version: Option<String>,
}

type ModelParam = Result<Path<ModelPath>, PathRejection>;

fn model_path(path: ModelParam) -> Result<ModelPath, ApiError> {
    let Path(p) = path.map_err(|e| invalid(e.body_text()))?;
    Ok(p)
}

/// A request's whole body; a body that cannot be read (too large, too slow, cut off) is
/// refused as JSON with its status, as every other refusal.
struct WholeBody(bytes::Bytes);

impl axum::extract::FromRequest<Arc<AppState>> for WholeBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<AppState>) -> Result<Self, ApiError> {
        bytes::Bytes::from_request(request, app)
            .await
            .map(WholeBody)
            .map_err(|r| infer::body_error(r, app.max_request_bytes).into())
    }
}

/// What a model path names: a deployment or a pipeline.
fn served(app: &AppState, path: ModelParam) -> Result<Served, ApiError> {
    let p = model_path(path)?;
    Ok(app.resolve(&p.model, p.version.as_deref())?)
}

/// The deployment a model path names, for the routes pipelines do not have.
fn deployment(app: &AppState, path: ModelParam) -> Result<Arc<crate::serving::Deployment>, ApiError> {
    let p = model_path(path)?;
    Ok(app.deployment(&p.model, p.version.as_deref())?)
}

/// The router of the whole API. `max_request_bytes` bounds every body.
pub fn router(app: Arc<AppState>) -> Router {
    let max_request_bytes = app.max_request_bytes;
    // Each model route also exists under `/versions/{version}`.
    let model_routes = |r: Router<Arc<AppState>>, suffix: &str, route: MethodRouter<Arc<AppState>>| {
        r.route(&format!("/v2/models/{{model}}{suffix}"), route.clone())
            .route(&format!("/v2/models/{{model}}/versions/{{version}}{suffix}"), route)
    };
    let mut r = Router::new()
        .route("/v2/health/live", get(admin::live))
        .route("/v2/health/ready", get(admin::ready))
        .route("/v2", get(admin::server_metadata))
        .route("/v2/models/stats", get(models::all_stats))
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{model}/load", post(repository::load))
        .route("/v2/repository/models/{model}/unload", post(repository::unload))
        .route("/v2/resources", get(admin::resources))
        .route("/v2/status", get(admin::status))
        .route("/v2/objects", post(objects::put))
        .route("/v2/objects/{object_ref}", get(objects::get).delete(objects::delete))
        .route("/v2/objects/{object_ref}/meta", get(objects::meta))
        .route("/v2/wait", post(objects::wait))
        .route("/v2/systemsharedmemory/status", get(shm::status_all))
        .route("/v2/systemsharedmemory/unregister", post(shm::unregister_all))
        .route("/v2/systemsharedmemory/region/{name}/status", get(shm::status))
        .route("/v2/systemsharedmemory/region/{name}/register", post(shm::register))
        .route("/v2/systemsharedmemory/region/{name}/unregister", post(shm::unregister))
        .route("/v2/tasks/{op}", post(tasks::submit))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/metrics", get(admin::metrics));
    r = model_routes(r, "", get(models::metadata));
    r = model_routes(r, "/ready", get(models::ready));
    r = model_routes(r, "/config", get(models::config));
    r = model_routes(r, "/stats", get(models::stats));
    r = model_routes(r, "/infer", post(infer::infer));
    r.fallback(no_route)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), authorize))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), track))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(app)
}

/// Refuses a request without the token its route needs (see [`crate::auth`]).
async fn authorize(State(app): App, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let access = auth::rest_access(request.method().as_str(), route);
    let sent = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match app.tokens.check(access, sent) {
        Ok(()) => next.run(request).await,
        Err(denied) => ApiError::from(denied).into_response(),
    }
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

/// The JSON body of a request that may be empty (then `T::default()`).
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| invalid(format!("invalid {what}: {e}")).into())
}
