//! A pipeline request's start: its inputs checked against the declaration, those sent
//! with the request put into the store, the ones named by ref found there, then the DAG
//! started.

use std::collections::HashMap;
use std::sync::Arc;

use super::{InferenceError, Work};
use crate::codec::{self, Input, InputValue, invalid, shape, signature};
use crate::pipeline::Pipeline;
use crate::state::AppState;
use crate::store::{ObjectRef, Owner, Store};

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
) -> Result<Work, InferenceError> {
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
    let output = p.start(store, &state.tasks, refs, owner);
    // The pipeline frees its inputs from now on; a server-owned output is this request's
    // to free, even if the client leaves before it is ready.
    stored.refs = if keep { Vec::new() } else { vec![output] };
    Ok(Work::Pipeline {
        pipeline: Arc::clone(p),
        output,
        cleanup: stored,
    })
}
