//! A layer model on a card: its weights uploaded once, each batch one [`Plan`] of GEMMs
//! and element-wise kernels over two ping-ponged activation buffers.

use super::exec::{CudaDevice, CudaExecutor};
use super::launch::elements;
use super::plan::{Arg, Buf, Elem, Executor, Gemm, GemmType, Host, Plan, int};
use super::source::Kernel;
use super::{GpuError, Precision};
use crate::model::{Layer, Model, Step};

enum GpuStep {
    /// `[in, out]` weights, optional bias.
    Gemm {
        weight: Buf,
        k: usize,
        n: usize,
        bias: Option<Buf>,
    },
    Add(Buf),
    Activate(i32),
    Softmax,
}

/// A model on one executor (a card, or the CPU mirror of one).
pub struct GpuModel<E: Executor = CudaExecutor> {
    exec: E,
    precision: Precision,
    steps: Vec<GpuStep>,
    in_features: usize,
    out_features: usize,
    widest: usize,
    /// The first scratch buffer's number: two activation buffers, then the half one.
    scratch: usize,
}

impl GpuModel {
    /// Bytes of card memory one replica of `model` needs for batches of up to `max_rows`
    /// rows: the weights (GEMM weights in 2 bytes for bf16 / fp16, the rest fp32), two
    /// fp32 activation buffers of the widest row for the largest batch bucket (plus a
    /// half-precision one for bf16 / fp16), counted twice as the page-locked staging
    /// buckets once were, and its cuBLAS handle's workspace. The CUDA context is not
    /// counted: the replicas of a process share each card's primary context.
    pub fn memory_needed(model: &Model, precision: Precision, max_rows: usize) -> u64 {
        /// cuBLAS's default workspace per handle: 32 MiB on Hopper, 4 MiB before it.
        const CUBLAS_WORKSPACE: usize = 32 << 20;
        let bucket = max_rows.max(1).next_power_of_two();
        let widest = model.widest();
        let half = matches!(precision, Precision::Bf16 | Precision::Fp16);
        let weights = model.gpu_weight_bytes(if half { 2 } else { 4 });
        let per_bucket = 2 * bucket * widest * 4 + if half { bucket * widest * 2 } else { 0 };
        (weights + 2 * per_bucket + CUBLAS_WORKSPACE) as u64
    }

    /// Uploads `model`'s weights (the `[in, out]` layout the CPU path also uses) to
    /// `device`, converted once to `precision` for the GEMMs (biases, element-wise ops
    /// and softmax stay in fp32).
    pub fn upload(model: &Model, device: CudaDevice, precision: Precision) -> Result<Self, GpuError> {
        GpuModel::on(model, CudaExecutor::new(device), precision)
    }
}

/// A GEMM weight's values as the card keeps them in `precision`.
pub(super) fn gemm_weight<'a>(values: &'a [f32], precision: Precision, bits: &'a mut Vec<u16>) -> Host<'a> {
    match precision {
        Precision::Fp32 | Precision::Tf32 => Host::F32(values),
        Precision::Bf16 => {
            *bits = values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
            Host::U16(bits)
        }
        Precision::Fp16 => {
            *bits = values.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
            Host::U16(bits)
        }
    }
}

/// The GEMM type and conversion kernel of `precision` (none for fp32 and TF32).
pub(super) fn gemm_type(precision: Precision) -> (GemmType, Option<Kernel>) {
    match precision {
        Precision::Fp32 | Precision::Tf32 => (GemmType::F32, None),
        Precision::Bf16 => (GemmType::Bf16, Some(Kernel::ToBf16)),
        Precision::Fp16 => (GemmType::Fp16, Some(Kernel::ToFp16)),
    }
}

impl<E: Executor> GpuModel<E> {
    /// `model` on `exec`: see [`GpuModel::upload`].
    pub fn on(model: &Model, mut exec: E, precision: Precision) -> Result<Self, GpuError> {
        if precision == Precision::Tf32 {
            exec.use_tf32()?;
        }
        let mut next = 0;
        let mut up = |exec: &mut E, data: Host<'_>| -> Result<Buf, GpuError> {
            let buf = Buf(next);
            next += 1;
            exec.upload(buf, data)?;
            Ok(buf)
        };
        let mut steps = Vec::new();
        for step in model.steps() {
            steps.push(match step {
                Step::Gemm { weight, bias, .. } => {
                    let (k, n) = (weight.shape()[0], weight.shape()[1]);
                    let mut bits = Vec::new();
                    let weight = up(&mut exec, gemm_weight(weight.as_slice(), precision, &mut bits))?;
                    let bias = bias
                        .as_ref()
                        .map(|b| up(&mut exec, Host::F32(b.as_slice())))
                        .transpose()?;
                    GpuStep::Gemm { weight, k, n, bias }
                }
                Step::Layer(Layer::Add { tensor }) => GpuStep::Add(up(&mut exec, Host::F32(tensor.as_slice()))?),
                Step::Layer(Layer::Relu) => GpuStep::Activate(1),
                Step::Layer(Layer::Gelu { tanh: false }) => GpuStep::Activate(2),
                Step::Layer(Layer::Gelu { tanh: true }) => GpuStep::Activate(3),
                Step::Layer(Layer::Sigmoid) => GpuStep::Activate(4),
                Step::Layer(Layer::Tanh) => GpuStep::Activate(5),
                Step::Layer(Layer::Softmax) => GpuStep::Softmax,
                Step::Layer(Layer::Linear { .. } | Layer::Matmul { .. }) => {
                    unreachable!("weighted layers are Step::Gemm. This is a bug.")
                }
            });
        }
        Ok(GpuModel {
            exec,
            precision,
            in_features: model.in_features(),
            out_features: model.out_features(),
            widest: model.widest(),
            steps,
            scratch: next,
        })
    }

    /// The plan for a batch of `rows` rows: the activation buffers are sized for the
    /// batch's power-of-two bucket, so a few sizes serve every batch.
    pub fn plan(&self, rows: usize) -> Result<Plan, GpuError> {
        let bucket = rows.max(1).next_power_of_two();
        let size = bucket
            .checked_mul(self.widest)
            .filter(|&n| n <= i32::MAX as usize)
            .ok_or_else(|| {
                GpuError(format!(
                    "a batch of {rows} rows of up to {} values exceeds 2^31 elements per buffer",
                    self.widest
                ))
            })?;
        let (ty, convert) = gemm_type(self.precision);
        let (a, b, half) = (Buf(self.scratch), Buf(self.scratch + 1), Buf(self.scratch + 2));
        let mut plan = Plan {
            scratch: vec![(a, Elem::F32, size), (b, Elem::F32, size)],
            inputs: vec![a],
            ..Plan::default()
        };
        if convert.is_some() {
            plan.scratch.push((half, Elem::U16, size));
        }
        let (mut cur, mut other) = (a, b);
        let mut width = self.in_features;
        let r = int(rows, "rows")?;
        for step in &self.steps {
            match *step {
                GpuStep::Gemm { weight, k, n, bias } => {
                    let x = match convert {
                        Some(kernel) => {
                            let count = rows * k;
                            plan.launch(
                                kernel,
                                elements(kernel, count),
                                vec![Arg::Buf(cur), Arg::Buf(half), Arg::Int(int(count, "elements")?)],
                            );
                            half
                        }
                        None => cur,
                    };
                    plan.gemm(Gemm::matmul(x, weight, other, rows, k, n, ty));
                    std::mem::swap(&mut cur, &mut other);
                    if let Some(bias) = bias {
                        let args = vec![Arg::Buf(cur), Arg::Buf(bias), Arg::Int(r), Arg::Int(int(n, "width")?)];
                        plan.launch(Kernel::AddRow, elements(Kernel::AddRow, rows * n), args);
                    }
                    width = n;
                }
                GpuStep::Add(t) => {
                    let args = vec![Arg::Buf(cur), Arg::Buf(t), Arg::Int(r), Arg::Int(int(width, "width")?)];
                    plan.launch(Kernel::AddRow, elements(Kernel::AddRow, rows * width), args);
                }
                GpuStep::Activate(act) => {
                    let args = vec![Arg::Buf(cur), Arg::Int(int(rows * width, "elements")?), Arg::Int(act)];
                    plan.launch(Kernel::Activate, elements(Kernel::Activate, rows * width), args);
                }
                GpuStep::Softmax => {
                    let args = vec![Arg::Buf(cur), Arg::Int(r), Arg::Int(int(width, "width")?)];
                    plan.launch(Kernel::SoftmaxRows, elements(Kernel::SoftmaxRows, rows), args);
                }
            }
        }
        plan.output = (cur, rows * self.out_features);
        Ok(plan)
    }

    /// Runs the model on `rows` rows of `x` (row-major) and returns `rows × out_features`.
    pub fn forward(&mut self, x: &[f32], rows: usize) -> Result<Vec<f32>, GpuError> {
        assert_eq!(
            x.len(),
            rows * self.in_features,
            "input length and rows disagree. This is a bug."
        );
        let plan = self.plan(rows)?;
        self.exec.run(&plan, &[Host::F32(x)])
    }

    pub fn executor(&self) -> &E {
        &self.exec
    }
}

impl GpuModel<CudaExecutor> {
    /// The card's time on the batches since the last call (see
    /// [`CudaExecutor::take_batch_time`]).
    pub fn take_batch_time(&mut self) -> Option<std::time::Duration> {
        self.exec.take_batch_time()
    }
}
