//! Pipelines: a DAG of steps (deployments and task ops) served as one model, like a
//! Triton ensemble or Ray's nested tasks.
//!
//! Every tensor between steps lives in the object store as a server-owned object: each
//! step's output is created pending up front, every step is started at once and waits
//! for its inputs to settle, so independent steps run concurrently. An intermediate is
//! deleted as soon as the last step reading it has taken it (its readers' leases keep
//! the bytes while they compute). A failed step fails every step downstream of it, with
//! its cause.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prism_config::{Pipeline as Spec, StepKind};
use prism_kernels::TaskOp;
use prism_protocol::DType;
use prism_protocol::v2::{self, InferOutput, InferResponse, Parameters};

use crate::codec;
use crate::deployment::{Deployment, MODEL_VERSION};
use crate::error::ApiError;
use crate::http::{AppState, header_then_object, inference_failure};
use crate::store::{Failure, Lease, Meta, ObjectRef, Owner, Settles, Store};
use crate::tasks::{Arg, TaskOptions, Tasks};

enum Runner {
    Model(Arc<Deployment>),
    Op(TaskOp),
}

/// A pipeline, its steps bound to the running deployments.
pub struct Pipeline {
    pub spec: Spec,
    runners: Vec<Runner>,
    /// How many step inputs read each tensor (pipeline input or step).
    readers: HashMap<String, usize>,
    /// The output's datatype and its shape as far as it is known before running (`-1`
    /// where it varies): worked out once, for the metadata and every async answer.
    output_datatype: DType,
    output_shape: Vec<i64>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

impl Pipeline {
    /// Binds `spec` to `deployments` (validated with the config: every model exists).
    pub fn new(spec: Spec, deployments: &HashMap<String, Arc<Deployment>>) -> Self {
        let runners = spec
            .steps
            .iter()
            .map(|s| match &s.run {
                StepKind::Model(m) => Runner::Model(Arc::clone(&deployments[m])),
                StepKind::Op(op) => Runner::Op(*op),
            })
            .collect();
        let mut readers = HashMap::new();
        for s in &spec.steps {
            for i in &s.inputs {
                *readers.entry(i.clone()).or_insert(0) += 1;
            }
        }
        let mut pipeline = Pipeline {
            spec,
            runners,
            readers,
            output_datatype: DType::F32,
            output_shape: Vec::new(),
        };
        pipeline.output_datatype = pipeline.derive_output_datatype();
        pipeline.output_shape = pipeline.derive_output_shape();
        pipeline
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Ready when every deployment it uses is.
    pub fn is_ready(&self) -> bool {
        self.runners.iter().all(|r| match r {
            Runner::Model(d) => d.is_ready(),
            Runner::Op(_) => true,
        })
    }

    pub fn output_datatype(&self) -> DType {
        self.output_datatype
    }

    pub fn output_shape(&self) -> &[i64] {
        &self.output_shape
    }

    /// The output's datatype: the model's output type for a model step, FP32 for an op.
    fn derive_output_datatype(&self) -> DType {
        let i = self
            .spec
            .steps
            .iter()
            .position(|s| s.name == self.spec.output_step)
            .expect("the output step exists (validated)");
        match &self.runners[i] {
            Runner::Model(d) => d.spec.output.datatype,
            Runner::Op(_) => DType::F32,
        }
    }

    /// The output's shape as far as it is known before running (`-1` where it varies).
    fn derive_output_shape(&self) -> Vec<i64> {
        let mut shapes: HashMap<&str, Vec<i64>> = self
            .spec
            .inputs
            .iter()
            .map(|t| (t.name.as_str(), t.shape.clone()))
            .collect();
        for (s, r) in self.spec.steps.iter().zip(&self.runners) {
            let arg = |i: usize| shapes[s.inputs[i].as_str()].clone();
            let shape = match r {
                Runner::Model(d) => vec![-1, d.spec.output.features as i64],
                Runner::Op(TaskOp::Matmul) => {
                    let (a, b) = (arg(0), arg(1));
                    vec![a.first().copied().unwrap_or(-1), b.get(1).copied().unwrap_or(-1)]
                }
                Runner::Op(TaskOp::Sum | TaskOp::Mean) => Vec::new(),
                Runner::Op(TaskOp::Transpose) => arg(0).into_iter().rev().collect(),
                Runner::Op(op) if op.arity() == 2 => {
                    let (a, b) = (arg(0), arg(1));
                    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
                    let off = long.len() - short.len();
                    long.iter()
                        .enumerate()
                        .map(|(i, &d)| match i.checked_sub(off).map(|j| short[j]) {
                            None | Some(1) => d,
                            Some(e) if d == 1 || d == e => e,
                            Some(_) => -1,
                        })
                        .collect()
                }
                Runner::Op(_) => arg(0),
            };
            shapes.insert(s.name.as_str(), shape);
        }
        shapes[self.spec.output_step.as_str()].clone()
    }

    /// Starts every step over `inputs` (a ref per pipeline input; `owned` are the ones
    /// the pipeline created and may delete). Returns the ref the output will have.
    fn start(
        self: &Arc<Self>,
        store: &Arc<Store>,
        tasks: &Arc<Tasks>,
        inputs: HashMap<String, (ObjectRef, bool)>,
        output_owner: Owner,
    ) -> ObjectRef {
        let mut refs = inputs;
        for s in &self.spec.steps {
            let owner = if s.name == self.spec.output_step {
                output_owner
            } else {
                Owner::Server
            };
            refs.insert(s.name.clone(), (store.create_pending(owner), true));
        }
        let output = refs[&self.spec.output_step].0;
        let left: Arc<HashMap<String, AtomicUsize>> = Arc::new(
            self.readers
                .iter()
                .map(|(k, n)| (k.clone(), AtomicUsize::new(*n)))
                .collect(),
        );
        // Inputs nobody reads are done with already.
        for t in &self.spec.inputs {
            let (r, owned) = refs[&t.name];
            if owned && !self.readers.contains_key(&t.name) {
                store.delete(r);
            }
        }
        let refs = Arc::new(refs);
        for i in 0..self.spec.steps.len() {
            let (p, store, tasks, refs, left) = (
                Arc::clone(self),
                Arc::clone(store),
                Arc::clone(tasks),
                Arc::clone(&refs),
                Arc::clone(&left),
            );
            tokio::spawn(async move { p.run_step(i, &store, &tasks, &refs, &left).await });
        }
        output
    }

    async fn run_step(
        &self,
        i: usize,
        store: &Arc<Store>,
        tasks: &Arc<Tasks>,
        refs: &HashMap<String, (ObjectRef, bool)>,
        left: &HashMap<String, AtomicUsize>,
    ) {
        let step = &self.spec.steps[i];
        let (out, _) = refs[&step.name];
        let _settles = Settles::new(Arc::clone(store), out, "the pipeline step");
        // Gives back this step's read of each input; the last reader deletes it.
        let release = || {
            for name in &step.inputs {
                let (r, owned) = refs[name];
                if left[name].fetch_sub(1, Ordering::AcqRel) == 1 && owned && *name != self.spec.output_step {
                    store.delete(r);
                }
            }
        };
        let failed = |mut f: Failure| {
            f.message = format!("pipeline `{}`, step `{}`: {}", self.spec.name, step.name, f.message);
            store.fail(out, f);
        };
        match &self.runners[i] {
            Runner::Model(d) => {
                let (r, _) = refs[&step.inputs[0]];
                let lease = store.get(r, None).await;
                release();
                let result = match lease {
                    Err(e) => Err(Failure::upstream(&format!("input `{}`", step.inputs[0]), e)),
                    Ok(lease) => run_model(d, lease).await,
                };
                match result {
                    Ok(y) => store.fulfil_array(out, y.into_dyn(), d.spec.output.datatype).await,
                    Err(f) => failed(f),
                }
            }
            Runner::Op(op) => {
                let args = step.inputs.iter().map(|n| Arg::Ref(refs[n].0)).collect();
                // Pipeline ops are light: they hold no logical CPU.
                let options = TaskOptions {
                    ask: Default::default(),
                    retries: prism_config::Retries {
                        max_retries: 0,
                        retry_exceptions: Vec::new(),
                    },
                    ..TaskOptions::default()
                };
                let y = tasks.run(*op, args, &options).await;
                release();
                match y {
                    Ok(y) => store.fulfil_array(out, y, DType::F32).await,
                    Err(f) => failed(f),
                }
            }
        }
        // A step's output that nothing reads is not needed past here.
        if step.name != self.spec.output_step && !self.readers.contains_key(&step.name) {
            store.delete(out);
        }
    }
}

async fn run_model(d: &Arc<Deployment>, lease: Lease) -> Result<ndarray::Array2<f32>, Failure> {
    let fail = |e: ApiError| inference_failure(&e);
    let rows = codec::object_rows(&d.spec, lease).map_err(fail)?;
    d.infer(rows).await.map_err(fail)
}

/// The tensor of one request input: its datatype and shape, and its bytes from JSON
/// `data` or from the binary part (`binary` is advanced past it, without a copy).
fn input_bytes(input: &v2::InferInput, binary: &mut Bytes) -> Result<(Meta, Bytes), ApiError> {
    let what = format!("input `{}`", input.name);
    let meta = crate::objects::tensor_meta(&input.datatype, &input.shape, &what)?;
    match v2::binary_data_size(input.parameters.as_ref()) {
        None => {
            let bytes = crate::objects::tensor_bytes(input.data.as_ref(), &meta, &what)?;
            Ok((meta, bytes.into()))
        }
        Some(size) => {
            if input.data.is_some() {
                return Err(bad(format!("{what}: has both `data` and `binary_data_size`; send one")));
            }
            if size != meta.bytes() as u64 || binary.len() < meta.bytes() {
                return Err(bad(format!(
                    "{what}: binary_data_size is {size}; shape {:?} of {} needs {} bytes, and {} are left in the body",
                    meta.shape,
                    meta.datatype,
                    meta.bytes(),
                    binary.len()
                )));
            }
            let bytes = binary.split_to(meta.bytes());
            Ok((meta, bytes))
        }
    }
}

/// Deletes its objects when dropped.
struct DeleteOnDrop<'a> {
    store: &'a Store,
    refs: Vec<ObjectRef>,
}

impl<'a> DeleteOnDrop<'a> {
    fn new(store: &'a Store) -> Self {
        DeleteOnDrop {
            store,
            refs: Vec::new(),
        }
    }
}

impl Drop for DeleteOnDrop<'_> {
    fn drop(&mut self) {
        for r in &self.refs {
            self.store.delete(*r);
        }
    }
}

/// Whether `shape` fits the declared one: same rank, equal where the declaration fixes a
/// size.
fn fits(declared: &[i64], shape: &[usize]) -> bool {
    declared.len() == shape.len() && declared.iter().zip(shape).all(|(&d, &s)| d == -1 || d == s as i64)
}

/// `POST /v2/models/{pipeline}/infer`.
pub async fn infer(app: &AppState, p: &Arc<Pipeline>, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let (json_part, mut binary) = codec::body_parts(headers, &body)?;
    let request = codec::parse_request(&json_part)?;
    for input in &request.inputs {
        if !p.spec.inputs.iter().any(|t| t.name == input.name) {
            let names: Vec<&str> = p.spec.inputs.iter().map(|t| t.name.as_str()).collect();
            return Err(bad(format!(
                "pipeline `{}` has no input `{}`; its inputs are {}",
                p.name(),
                input.name,
                names.join(", ")
            )));
        }
    }
    let codec::OutputFlags {
        binary_output,
        output_ref,
        run_async,
    } = codec::output_flags(&request, ("pipeline", p.name()), &p.spec.output_name)?;
    let timeout = codec::request_timeout(request.parameters.as_ref())?;
    // One deadline for the whole request: waiting for ref inputs and for the answer.
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let left = || deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));

    // The binary part belongs to the inputs in the order the request lists them.
    enum Given {
        Ref(ObjectRef),
        Data(Meta, Bytes),
    }
    let mut given: HashMap<&str, Given> = HashMap::new();
    for input in &request.inputs {
        let g = match codec::input_ref(input)? {
            Some(r) => Given::Ref(r),
            None => {
                let (meta, bytes) = input_bytes(input, &mut binary)?;
                Given::Data(meta, bytes)
            }
        };
        if given.insert(&input.name, g).is_some() {
            return Err(bad(format!("input `{}` is given more than once", input.name)));
        }
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "the body has {} bytes of binary data that no input claims",
            binary.len()
        )));
    }

    // Every input into the store (or found there), checked against the declaration.
    // Until the pipeline takes them over, the guard deletes what was stored here, on an
    // error and when the client goes away alike.
    let store = &app.store;
    let mut stored = DeleteOnDrop::new(store);
    let mut inputs: HashMap<String, (ObjectRef, bool)> = HashMap::new();
    for t in &p.spec.inputs {
        let (r, owned, shape) = match given.remove(t.name.as_str()) {
            None => return Err(bad(format!("input `{}` is missing", t.name))),
            Some(Given::Ref(r)) => {
                let lease = store.get(r, left()).await?;
                (r, false, lease.meta.shape.clone())
            }
            Some(Given::Data(meta, bytes)) => {
                let shape = meta.shape.clone();
                let s = Arc::clone(store);
                let r = tokio::task::spawn_blocking(move || s.put(meta, &bytes, Owner::Server))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))??;
                stored.refs.push(r);
                (r, true, shape)
            }
        };
        if !fits(&t.shape, &shape) {
            return Err(bad(format!(
                "input `{}`: expected shape {:?}, got {shape:?}",
                t.name, t.shape
            )));
        }
        inputs.insert(t.name.clone(), (r, owned));
    }

    let keep = run_async || output_ref;
    let owner = if keep {
        Owner::Client { ttl: store.default_ttl }
    } else {
        Owner::Server
    };
    let out = p.start(store, &app.tasks, inputs, owner);
    // The pipeline frees its inputs now; a server-owned output is this handler's to free,
    // even if the client leaves before it is ready.
    stored.refs = if keep { Vec::new() } else { vec![out] };
    let output = |shape: Vec<i64>, datatype: String, data, parameters| InferOutput {
        name: p.spec.output_name.clone(),
        shape,
        datatype,
        parameters,
        data,
    };
    let respond = |o: InferOutput| InferResponse {
        model_name: p.name().to_owned(),
        model_version: Some(MODEL_VERSION.into()),
        id: request.id.clone(),
        parameters: None,
        outputs: vec![o],
    };
    let by_ref = |shape: Vec<i64>, datatype| {
        crate::http::ref_answer(p.name(), request.id.clone(), &p.spec.output_name, shape, datatype, out)
    };
    if run_async {
        let answer = by_ref(p.output_shape().to_vec(), p.output_datatype());
        return Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response());
    }
    let lease = store.get(out, left()).await?;
    let meta = Arc::clone(&lease.meta);
    let shape: Vec<i64> = meta.shape.iter().map(|&d| d as i64).collect();
    if output_ref {
        return Ok(axum::Json(by_ref(shape, meta.datatype)).into_response());
    }
    drop(stored);
    if binary_output {
        let mut params = Parameters::new();
        params.insert("binary_data_size".into(), meta.bytes().into());
        let head =
            v2::to_vec(&respond(output(shape, meta.datatype.to_string(), None, Some(params)))).expect("serializes");
        return Ok(header_then_object(head, lease));
    }
    let data = prism_protocol::binary::decode_tensor(&p.spec.output_name, meta.datatype, lease.bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let body = v2::to_vec(&respond(output(shape, meta.datatype.to_string(), Some(data), None))).expect("serializes");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
