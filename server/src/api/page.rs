//! The status page (`GET /`): one HTML document with its CSS and JavaScript, embedded in
//! the binary, that draws `/v2/status`, `/v2/resources` and `/v2/status/history` and
//! refreshes itself; and the history route it reads.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;

use super::App;

const PAGE: &str = include_str!("page.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

/// The last minutes, from the server's ring buffers (see [`crate::history`]).
pub async fn history(State(app): App) -> Json<Value> {
    Json(app.history.snapshot())
}
