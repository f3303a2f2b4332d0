//! Pipelines: a DAG of steps (deployments and task ops) served as one model, like a
//! Triton ensemble or Ray's nested tasks.
//!
//! Every tensor between steps lives in the object store as a server-owned object: each
//! step's output is created pending up front, every step is started at once and waits
//! for its inputs to settle, so independent steps run concurrently. An intermediate is
//! deleted as soon as the last step reading it has taken it (its readers' leases keep
//! the bytes while they compute). A failed step fails every step downstream of it, with
//! its cause.
//!
//! Owns the graph and its run; the request that starts it is decoded and answered by the
//! inference path like any model's, and this module knows no protocol.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prism_config::{Pipeline as Spec, StepKind};
use prism_kernels::TaskOp;
use prism_protocol::DType;

use crate::codec;
use crate::metrics::{Metrics, RequestMetrics};
use crate::serving::Deployment;
use crate::store::{Failure, Lease, ObjectRef, Owner, Settles, Store, StoreError};
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
    /// Its request counters, like a model's.
    pub request_metrics: RequestMetrics,
}

impl Pipeline {
    /// Binds `spec` to `deployments` (validated with the config: every model exists).
    pub fn new(spec: Spec, deployments: &HashMap<String, Arc<Deployment>>, metrics: &Metrics) -> Self {
        let runners: Vec<Runner> = spec
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
        let widths: Vec<Option<(DType, usize)>> = runners
            .iter()
            .map(|r| match r {
                Runner::Model(d) => {
                    let io = d
                        .rows_io()
                        .expect("pipeline steps run models over rows (validated with the config)");
                    Some((io.output.datatype, io.output.features))
                }
                Runner::Op(_) => None,
            })
            .collect();
        let (output_datatype, output_shape) = output_signature(&spec, &widths);
        Pipeline {
            request_metrics: RequestMetrics::new(metrics, &spec.name),
            spec,
            runners,
            readers,
            output_datatype,
            output_shape,
        }
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

    /// Starts every step over `inputs` (a ref per pipeline input; `owned` are the ones
    /// the pipeline created and may delete). Returns the ref the output will have.
    pub fn start(
        self: &Arc<Self>,
        store: &Arc<Store>,
        tasks: &Arc<Tasks>,
        inputs: HashMap<String, (ObjectRef, bool)>,
        output_owner: Owner,
    ) -> Result<ObjectRef, StoreError> {
        let mut refs = inputs;
        let mut created = Vec::with_capacity(self.spec.steps.len());
        for s in &self.spec.steps {
            let owner = if s.name == self.spec.output_step {
                output_owner
            } else {
                Owner::Server
            };
            match store.create_pending(owner) {
                Ok(r) => created.push(r),
                Err(e) => {
                    // None of its steps runs: the objects made for them go.
                    for r in created {
                        store.delete(r);
                    }
                    return Err(e);
                }
            }
            refs.insert(s.name.clone(), (*created.last().expect("just pushed"), true));
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
            let (p, store, step_tasks, refs, left) = (
                Arc::clone(self),
                Arc::clone(store),
                Arc::clone(tasks),
                Arc::clone(&refs),
                Arc::clone(&left),
            );
            tasks
                .background
                .spawn(async move { p.run_step(i, &store, &step_tasks, &refs, &left).await });
        }
        Ok(output)
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
        // Gives back this step's read of each input, once; the last reader deletes it.
        let released = std::sync::atomic::AtomicBool::new(false);
        let release = || {
            if released.swap(true, Ordering::AcqRel) {
                return;
            }
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
        let work = async {
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
                        // A result the store cannot hold fails the object with StoreFull.
                        Ok((y, datatype)) => drop(store.fulfil_array(out, y.into_dyn(), datatype).await),
                        Err(f) => failed(f),
                    }
                }
                Runner::Op(op) => {
                    let args = step.inputs.iter().map(|n| Arg::Ref(refs[n].0)).collect();
                    let y = tasks.run(*op, args, &TaskOptions::pipeline_step()).await;
                    release();
                    match y {
                        Ok(y) => drop(store.fulfil_array(out, y, DType::F32).await),
                        Err(f) => failed(f),
                    }
                }
            }
        };
        // Nobody wants the answer once the pipeline's output is deleted (its client
        // left, or deleted it): the step stops, and its queued batch leaves the queue.
        let output = refs[&self.spec.output_step].0;
        let abandoned = async {
            if let Err(StoreError::NotFound(_)) = store.settled(output).await {
                return;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = work => {}
            () = abandoned => {
                release();
                tracing::debug!(pipeline = %self.spec.name, step = %step.name, "output abandoned; step stopped");
            }
        }
        // A step's output that nothing reads is not needed past here.
        if step.name != self.spec.output_step && !self.readers.contains_key(&step.name) {
            store.delete(out);
        }
    }
}

/// A model step over its input object: the output rows and their datatype.
async fn run_model(d: &Arc<Deployment>, lease: Lease) -> Result<(ndarray::Array2<f32>, DType), Failure> {
    let io = d
        .rows_io()
        .expect("pipeline steps run models over rows (validated with the config)");
    let rows = codec::signature::object_rows(&d.spec, io, lease, false).map_err(|e| e.failure())?;
    let y = d.infer(rows).await.map_err(|e| e.failure())?;
    Ok((y, io.output.datatype))
}

/// The output's datatype and its shape as far as they are known before running (`-1`
/// where a size varies), from the pipeline's inputs and each step's kind: a model step
/// answers `[-1, features]` of its output datatype (`widths[i]`; `None` for an op), an op
/// FP32 in the shape the op's rule gives.
fn output_signature(spec: &Spec, widths: &[Option<(DType, usize)>]) -> (DType, Vec<i64>) {
    let mut shapes: HashMap<&str, Vec<i64>> = spec.inputs.iter().map(|t| (t.name.as_str(), t.shape.clone())).collect();
    for (s, width) in spec.steps.iter().zip(widths) {
        let arg = |i: usize| shapes[s.inputs[i].as_str()].clone();
        let shape = match (&s.run, width) {
            (StepKind::Model(_), Some((_, features))) => vec![-1, *features as i64],
            (StepKind::Model(m), None) => unreachable!("model step `{m}` has its output width. This is a bug."),
            (StepKind::Op(TaskOp::Matmul), _) => {
                let (a, b) = (arg(0), arg(1));
                vec![a.first().copied().unwrap_or(-1), b.get(1).copied().unwrap_or(-1)]
            }
            (StepKind::Op(TaskOp::Sum | TaskOp::Mean), _) => Vec::new(),
            (StepKind::Op(TaskOp::Transpose), _) => arg(0).into_iter().rev().collect(),
            (StepKind::Op(op), _) if op.arity() == 2 => broadcast(&arg(0), &arg(1)),
            (StepKind::Op(_), _) => arg(0),
        };
        shapes.insert(s.name.as_str(), shape);
    }
    let i = spec
        .steps
        .iter()
        .position(|s| s.name == spec.output_step)
        .expect("the output step exists (validated)");
    let datatype = widths[i].map_or(DType::F32, |(datatype, _)| datatype);
    (datatype, shapes[spec.output_step.as_str()].clone())
}

/// NumPy's broadcast of two shapes whose sizes may be unknown (`-1`): a size of 1 takes
/// the other's; two known sizes that differ, or an unknown against a known one other
/// than 1, stay unknown.
fn broadcast(a: &[i64], b: &[i64]) -> Vec<i64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(text: &str) -> Spec {
        let config = prism_config::Config::parse(text, "test.toml", None).expect("a valid pipeline");
        config.pipelines.into_iter().next().expect("one pipeline")
    }

    const CELSIUS: &str = "[[deployments]]\nname = \"c\"\n[deployments.model]\nbuiltin = \"celsius\"\n";

    #[test]
    fn an_op_step_s_shape_follows_its_rule() {
        let spec = pipeline(&format!(
            "{CELSIUS}[[pipelines]]\nname = \"p\"\noutput = {{ name = \"Y\", step = \"t\" }}\n\
             inputs = [{{ name = \"A\", datatype = \"FP32\", shape = [-1, 3] }}, {{ name = \"B\", datatype = \"FP32\", shape = [3, 4] }}]\n\
             [[pipelines.steps]]\nname = \"m\"\nop = \"matmul\"\ninputs = [\"A\", \"B\"]\n\
             [[pipelines.steps]]\nname = \"t\"\nop = \"transpose\"\ninputs = [\"m\"]\n"
        ));
        assert_eq!(output_signature(&spec, &[None, None]), (DType::F32, vec![4, -1]));
    }

    #[test]
    fn a_model_step_answers_its_width_and_datatype() {
        let spec = pipeline(&format!(
            "{CELSIUS}[[pipelines]]\nname = \"p\"\noutput = {{ name = \"Y\", step = \"c\" }}\n\
             inputs = [{{ name = \"X\", datatype = \"FP32\", shape = [-1, 1] }}]\n\
             [[pipelines.steps]]\nname = \"c\"\nmodel = \"c\"\ninputs = [\"X\"]\n"
        ));
        assert_eq!(
            output_signature(&spec, &[Some((DType::I64, 1))]),
            (DType::I64, vec![-1, 1])
        );
    }

    #[test]
    fn unknown_sizes_broadcast_as_far_as_they_can() {
        assert_eq!(broadcast(&[-1, 3], &[3]), vec![-1, 3]);
        assert_eq!(broadcast(&[-1, 1], &[1, 4]), vec![-1, 4]);
        assert_eq!(broadcast(&[2, 3], &[-1, 3]), vec![-1, 3]);
        assert_eq!(broadcast(&[5], &[]), vec![5]);
    }
}
