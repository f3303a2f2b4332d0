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
mod page;
mod repository;
pub mod respond;
mod shm;
mod tasks;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::handler::Handler;
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
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

/// The REST API's description (OpenAPI 3.1), served at `/v2/openapi.json`. It is kept
/// beside the router: a test checks that both name the same routes, and the Python
/// suite checks the running server against it with schemathesis.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The router being built and what it routes (method, path), which the description's
/// test compares with the description.
struct Routes {
    router: Router<Arc<AppState>>,
    table: Vec<(&'static str, String)>,
}

impl Routes {
    fn add(mut self, method: &'static str, path: &str, route: MethodRouter<Arc<AppState>>) -> Self {
        // Two methods on one path merge into one route.
        self.router = self.router.route(path, route);
        self.table.push((method, path.to_owned()));
        self
    }

    fn get<H: Handler<T, Arc<AppState>>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("GET", path, get(handler))
    }

    fn post<H: Handler<T, Arc<AppState>>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("POST", path, post(handler))
    }

    fn delete<H: Handler<T, Arc<AppState>>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("DELETE", path, delete(handler))
    }
}

/// Every route of the API.
fn routes() -> Routes {
    let mut r = Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    .get("/", page::page)
    .get("/v2/status/history", page::history)
    .get("/v2/health/live", admin::live)
    .get("/v2/health/ready", admin::ready)
    .get("/v2", admin::server_metadata)
    .get("/v2/openapi.json", openapi)
    .get("/v2/models/stats", models::all_stats)
    .post("/v2/repository/index", repository::index)
    .post("/v2/repository/models/{model}/load", repository::load)
    .post("/v2/repository/models/{model}/unload", repository::unload)
    .get("/v2/resources", admin::resources)
    .get("/v2/status", admin::status)
    .post("/v2/objects", objects::put)
    .get("/v2/objects/{object_ref}", objects::get)
    .delete("/v2/objects/{object_ref}", objects::delete)
    .get("/v2/objects/{object_ref}/meta", objects::meta)
    .post("/v2/wait", objects::wait)
    .get("/v2/systemsharedmemory/status", shm::status_all)
    .post("/v2/systemsharedmemory/unregister", shm::unregister_all)
    .get("/v2/systemsharedmemory/region/{name}/status", shm::status)
    .post("/v2/systemsharedmemory/region/{name}/register", shm::register)
    .post("/v2/systemsharedmemory/region/{name}/unregister", shm::unregister)
    .post("/v2/tasks/{op}", tasks::submit)
    .post("/v1/embeddings", openai::embeddings)
    .get("/v1/models", openai::models)
    .get("/metrics", admin::metrics);
    // Each model route also exists under `/versions/{version}`.
    for model in ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"] {
        r = r
            .get(model, models::metadata)
            .get(&format!("{model}/ready"), models::ready)
            .get(&format!("{model}/config"), models::config)
            .get(&format!("{model}/stats"), models::stats)
            .post(&format!("{model}/infer"), infer::infer);
    }
    r
}

/// The router of the whole API. `max_request_bytes` bounds every body.
pub fn router(app: Arc<AppState>) -> Router {
    let max_request_bytes = app.max_request_bytes;
    routes()
        .router
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), authorize))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), track))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(app)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The description names every route the router has, each method, and no other.
    #[test]
    fn the_description_names_the_routes_the_router_has() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let described: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .expect("operations")
                    .keys()
                    .map(|m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let routed: BTreeSet<(String, String)> = routes().table.into_iter().map(|(m, p)| (m.to_owned(), p)).collect();
        let missing: Vec<_> = routed.difference(&described).collect();
        let extra: Vec<_> = described.difference(&routed).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routes the description lacks: {missing:?}; described routes the router lacks: {extra:?}"
        );
    }

    /// Each operation says which token it needs as [`auth::rest_access`] decides it.
    #[test]
    fn the_description_asks_for_the_tokens_the_server_checks() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                let described = match op.get("security").map(|s| s.to_string()).as_deref() {
                    None => auth::Access::Api,
                    Some("[]") => auth::Access::Open,
                    Some(r#"[{"adminToken":[]}]"#) => auth::Access::Admin,
                    Some(other) => panic!("{method} {path}: unexpected security {other}"),
                };
                let checked = auth::rest_access(&method.to_uppercase(), Some(path));
                assert_eq!(described, checked, "{method} {path}");
            }
        }
    }
}
