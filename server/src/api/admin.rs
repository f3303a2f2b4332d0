//! The server as a whole: health, server metadata, resources (like Ray's
//! `cluster_resources` / `available_resources`), the status of every deployment, and the
//! Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prism_protocol::v2::ServerMetadata;
use serde_json::{Value, json};

use super::App;

pub async fn live() -> StatusCode {
    StatusCode::OK
}

pub async fn ready(State(app): App) -> StatusCode {
    if app.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub async fn server_metadata(State(app): App) -> Json<ServerMetadata> {
    Json(crate::describe::server_metadata(&app))
}

/// Total and available logical resources, like `ray.cluster_resources()` and
/// `ray.available_resources()`: `GPU` counts cards, fractional.
/// Available is what neither replicas nor running tasks hold.
pub async fn resources(State(app): App) -> Json<Value> {
    let c = &app.cluster;
    let free = c.pool.free();
    // `+ 0.0` makes an empty sum's -0.0 a plain 0.
    let round = |v: f64| (v.max(0.0) * 1e4).round() / 1e4 + 0.0;
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
    Json(json!({ "total": total, "available": available }))
}

/// Deployments, replicas and where they were placed, queue depths, the GPUs.
pub async fn status(State(app): App) -> Json<Value> {
    let c = &app.cluster;
    let deployments: Vec<Value> = app
        .deployments
        .iter()
        .map(|d| {
            // Since the last load: the slowest replica's warm-up, and the first request.
            let (warmup, first_request) = d.load_times();
            let ms = |t: std::time::Duration| t.as_secs_f64() * 1e3;
            json!({
                "name": d.name(),
                "ready": d.is_ready(),
                "loaded": d.is_loaded(),
                "num_replicas": d.spec.num_replicas,
                "queue_depth": d.queued(),
                "replicas": d.replicas(),
                "warmup_ms": warmup.map(ms),
                "first_request_ms": first_request.map(ms),
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
    Json(json!({
        "ready": app.is_accepting(),
        "cpus": c.machine.cpus,
        "memory": c.machine.memory,
        "gpus": c.machine.gpus.iter().zip(&c.gpu_used).map(|(g, used)| {
            let mut v = serde_json::to_value(g).expect("GPU info serializes");
            v["used"] = json!(used);
            // The last NVML sample's figures rather than the start-up ones.
            if let Some(s) = app.metrics.gpus.latest(g.index) {
                if let Some(u) = s.utilization {
                    v["utilization"] = json!((u * 100.0).round());
                }
                if let (Some(total), Some(used)) = (s.memory_total, s.memory_used) {
                    v["memory_free"] = json!(total.saturating_sub(used));
                }
            }
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

pub async fn metrics(State(app): App) -> impl IntoResponse {
    app.refresh_replica_metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
}
