//! A pipeline request: its inputs checked against the declaration, those sent with the
//! request put into the store, the ones named by ref found there, the DAG started; then
//! its output object waited for, or (async) answered as a ref at once.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Count, Deadline, InferenceError, Wanted};
use crate::codec::{self, AnswerOutput, AnswerValue, Input, InputValue, invalid, shape, signature};
use crate::pipeline::Pipeline;
use crate::state::{AppState, Served};
use crate::store::{ObjectRef, Owner, Store};

/// A running pipeline: its output will be `output`; `cleanup` deletes what this request
/// put in the store for itself when it ends or goes away.
pub(super) struct PipelineWork {
    pipeline: Arc<Pipeline>,
    output: ObjectRef,
    cleanup: Cleanup,
}

/// Deletes its objects when dropped: what a request stored for itself, on an error and
/// when the client goes away alike.
pub(super) struct Cleanup {
    store: Arc<Store>,
    refs: Vec<ObjectRef>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for r in &self.refs {
            self.store.delete(*r);
        }
    }
}

/// Starts `p` on `inputs`. `keep`: the output is the client's (async or by ref);
/// otherwise it is the server's, deleted once answered.
pub(super) async fn begin(
    state: &AppState,
    p: &Arc<Pipeline>,
    inputs: Vec<Input>,
    keep: bool,
) -> Result<PipelineWork, InferenceError> {
    let store = &state.store;
    if let Some(unknown) = inputs.iter().find(|i| !p.spec.inputs.iter().any(|t| t.name == i.name)) {
        let names: Vec<&str> = p.spec.inputs.iter().map(|t| t.name.as_str()).collect();
        return Err(invalid(format!(
            "pipeline `{}` has no input `{}`; its inputs are {}",
            p.name(),
            unknown.name,
            names.join(", ")
        ))
        .into());
    }
    let mut given: HashMap<String, InputValue> = inputs.into_iter().map(|i| (i.name, i.value)).collect();
    let mut stored = Cleanup {
        store: Arc::clone(store),
        refs: Vec::new(),
    };
    let mut refs: HashMap<String, (ObjectRef, bool)> = HashMap::new();
    for t in &p.spec.inputs {
        let (r, owned, got) = match given.remove(&t.name) {
            None => return Err(invalid(format!("input `{}` is missing", t.name)).into()),
            Some(InputValue::Object(r)) => {
                let lease = store.get(r, None).await?;
                (r, false, lease.meta.shape.clone())
            }
            Some(InputValue::Tensor(tensor)) => {
                let (meta, bytes) = codec::tensor::stored(tensor, &format!("input `{}`", t.name))?;
                let got = meta.shape.clone();
                let r = store.put_async(meta, bytes, Owner::Server).await?;
                stored.refs.push(r);
                (r, true, got)
            }
        };
        if !signature::fits(&t.shape, &got) {
            return Err(shape(format!("input `{}`: expected shape {:?}, got {got:?}", t.name, t.shape)).into());
        }
        refs.insert(t.name.clone(), (r, owned));
    }
    let owner = if keep { store.client_owner() } else { Owner::Server };
    let output = p.start(store, &state.tasks, refs, owner)?;
    // The pipeline frees its inputs from now on; a server-owned output is this request's
    // to free, even if the client leaves before it is ready.
    stored.refs = if keep { Vec::new() } else { vec![output] };
    Ok(PipelineWork {
        pipeline: Arc::clone(p),
        output,
        cleanup: stored,
    })
}

/// Waits for the output object and answers it as the request wants it (its one output).
pub(super) async fn complete(
    state: &AppState,
    work: PipelineWork,
    wanted: &[Wanted],
) -> Result<Vec<AnswerOutput>, InferenceError> {
    let PipelineWork { output, cleanup, .. } = work;
    let lease = state.store.get(output, None).await?;
    // A server-owned output is deleted now; the lease keeps its bytes.
    drop(cleanup);
    Ok(wanted
        .iter()
        .map(|w| AnswerOutput {
            name: w.name.clone(),
            binary: w.flags.binary,
            value: if w.flags.by_ref {
                AnswerValue::Ref {
                    object_ref: output,
                    datatype: lease.meta.datatype,
                    shape: lease.meta.shape.iter().map(|&d| d as i64).collect(),
                    accepted: false,
                }
            } else {
                AnswerValue::Object(lease.clone())
            },
        })
        .collect())
}

/// `async`: answers the output's ref at once; the request is counted when the output
/// settles, and an output past the deadline fails with `Timeout`.
pub(super) fn accept(
    state: &Arc<AppState>,
    target: Served,
    work: PipelineWork,
    wanted: Vec<Wanted>,
    deadline: Deadline,
    count: Count,
) -> Result<Vec<AnswerOutput>, InferenceError> {
    let PipelineWork { pipeline, output, .. } = work;
    let store = Arc::clone(&state.store);
    state.tasks.background.spawn(async move {
        let settled = async { Ok(store.settled(output).await?) };
        let result = deadline.bound(&target, settled).await;
        if let Err(e @ InferenceError::DeadlineExceeded { .. }) = &result {
            store.fail(output, e.failure());
        }
        let _ = count.finish(result);
    });
    Ok(wanted
        .into_iter()
        .map(|w| AnswerOutput {
            name: w.name,
            binary: w.flags.binary,
            value: AnswerValue::Ref {
                object_ref: output,
                datatype: pipeline.output_datatype(),
                shape: pipeline.output_shape().to_vec(),
                accepted: true,
            },
        })
        .collect())
}
