//! `POST /v2/tasks/{op}`: a stateless task over refs or inline tensors, started at once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prism_kernels::TaskOp;
use prism_protocol::ray::{self, ArgumentValue, RefBody, TaskRequest};
use prism_protocol::v2;

use super::objects::parse_ref;
use super::{ApiError, App, WholeBody};
use crate::codec::{invalid, tensor};
use crate::tasks::{Arg, TaskOptions};

/// Starts a task; answers 202 `{"object_ref": ...}` at once.
pub async fn submit(State(app): App, Path(op): Path<String>, WholeBody(body): WholeBody) -> Result<Response, ApiError> {
    let op: TaskOp = op.parse().map_err(|e: String| invalid(e))?;
    let request: TaskRequest = v2::from_slice(&body).map_err(|e| {
        invalid(format!(
            "invalid task request (expected {{\"args\": [...], \"options\": {{...}}}}): {e}"
        ))
    })?;
    let mut args = Vec::with_capacity(request.args.len());
    for (i, a) in request.args.into_iter().enumerate() {
        let what = format!("args[{i}]");
        args.push(match a.resolve().map_err(|e| invalid(format!("{what}: {e}")))? {
            ArgumentValue::Ref(r) => Arg::Ref(parse_ref(&r, &what)?),
            ArgumentValue::Tensor(t) => Arg::Inline(tensor::object_array(&t, &what)?),
        });
    }
    let wire: ray::TaskOptions = match request.options {
        None => ray::TaskOptions::default(),
        Some(o) => serde_json::from_value(o).map_err(|e| invalid(format!("options: {e}")))?,
    };
    let options = TaskOptions::from_wire(wire).map_err(invalid)?;
    let object_ref = app.tasks.submit(op, args, options)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RefBody {
            object_ref: object_ref.to_string(),
        }),
    )
        .into_response())
}
