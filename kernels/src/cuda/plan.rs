//! A forward pass as a list of device operations — kernel launches and cuBLAS GEMMs over
//! numbered buffers — built once per batch shape and run by an [`Executor`]: the card
//! ([`super::exec::CudaExecutor`]) or its CPU mirror ([`super::mirror::Mirror`]), which
//! runs each kernel's index arithmetic and each GEMM's column-major parameters in Rust.
//! What runs on a card is therefore tested, op by op, on machines without one.

use cudarc::driver::LaunchConfig;

use super::GpuError;
use super::launch::{Limits, Usage};
use super::source::Kernel;

/// A buffer of a model: its weights (uploaded once) and its scratch (sized per batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Buf(pub usize);

/// What a buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    I32,
    /// bf16 or fp16 bits.
    U16,
}

/// A kernel argument, in the order of the kernel's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Buf(Buf),
    Int(i32),
    Float(f32),
}

/// The element type of a GEMM's `a` and `b` (the output and accumulation are fp32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmType {
    F32,
    Bf16,
    Fp16,
}

/// `c = alpha · op(a) · op(b) + beta · c` in cuBLAS's column-major terms, `batch` times
/// with the strides (in elements) between the batch's matrices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Buf,
    pub lda: usize,
    pub stride_a: usize,
    pub b: Buf,
    pub ldb: usize,
    pub stride_b: usize,
    pub c: Buf,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
    pub ty: GemmType,
}

impl Gemm {
    /// Row-major `y[rows × out] = x[rows × in] · W` with `W` stored as PyTorch stores a
    /// linear layer, `[out, in]` (so the product uses its transpose): column-major that is
    /// `yᵀ = Wᵀᵀ · xᵀ`, `a` = W transposed, `b` = x as it is.
    pub fn linear(x: Buf, w: Buf, y: Buf, rows: usize, inp: usize, out: usize, ty: GemmType) -> Gemm {
        Gemm {
            trans_a: true,
            trans_b: false,
            m: out,
            n: rows,
            k: inp,
            a: w,
            lda: inp,
            stride_a: 0,
            b: x,
            ldb: inp,
            stride_b: 0,
            c: y,
            ldc: out,
            stride_c: 0,
            batch: 1,
            alpha: 1.0,
            beta: 0.0,
            ty,
        }
    }

    /// Row-major `y[rows × n] = x[rows × k] · W[k × n]` (the layer models' `[in, out]`
    /// layout): column-major `yᵀ = Wᵀ · xᵀ`, neither transposed.
    pub fn matmul(x: Buf, w: Buf, y: Buf, rows: usize, k: usize, n: usize, ty: GemmType) -> Gemm {
        Gemm {
            trans_a: false,
            lda: n,
            m: n,
            ..Gemm::linear(x, w, y, rows, k, n, ty)
        }
    }

    /// Elements of `a`, `b` and `c` this GEMM touches (for the bounds checks).
    pub fn extents(&self) -> [(Buf, usize); 3] {
        let span = |rows: usize, cols: usize, ld: usize, stride: usize| {
            if rows == 0 || cols == 0 || self.batch == 0 {
                0
            } else {
                (self.batch - 1) * stride + (cols - 1) * ld + rows
            }
        };
        let (ar, ac) = if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (br, bc) = if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        [
            (self.a, span(ar, ac, self.lda, self.stride_a)),
            (self.b, span(br, bc, self.ldb, self.stride_b)),
            (self.c, span(self.m, self.n, self.ldc, self.stride_c)),
        ]
    }
}

/// One device operation.
#[derive(Clone, Debug)]
pub enum Op {
    Launch {
        kernel: Kernel,
        cfg: LaunchConfig,
        args: Vec<Arg>,
    },
    Gemm(Gemm),
}

/// A forward pass for one batch shape.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Each scratch buffer's type and the elements this batch needs of it.
    pub scratch: Vec<(Buf, Elem, usize)>,
    /// The batch's inputs, copied to these buffers first.
    pub inputs: Vec<Buf>,
    pub ops: Vec<Op>,
    /// The answer: this many fp32 values from the start of this buffer.
    pub output: (Buf, usize),
}

impl Plan {
    pub fn launch(&mut self, kernel: Kernel, cfg: LaunchConfig, args: Vec<Arg>) {
        self.ops.push(Op::Launch { kernel, cfg, args });
    }

    pub fn gemm(&mut self, g: Gemm) {
        self.ops.push(Op::Gemm(g));
    }

    /// Every launch of the plan checked against `limits`, given what each kernel uses
    /// (`usage`, from its CUBIN): the reasons of those that would fail.
    pub fn check_launches(&self, limits: &Limits, usage: impl Fn(Kernel) -> Usage) -> Vec<String> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Launch { kernel, cfg, .. } => limits.check(*kernel, cfg, usage(*kernel)).err(),
                Op::Gemm(_) => None,
            })
            .collect()
    }
}

/// A 32-bit kernel argument from a count, or why it does not fit (the kernels index in
/// `int`).
pub fn int(n: usize, what: &str) -> Result<i32, GpuError> {
    i32::try_from(n).map_err(|_| GpuError(format!("{what} is {n}: beyond the kernels' 2^31 − 1")))
}

/// Host data for a buffer.
#[derive(Clone, Copy, Debug)]
pub enum Host<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
    U16(&'a [u16]),
}

impl Host<'_> {
    pub fn len(&self) -> usize {
        match self {
            Host::F32(v) => v.len(),
            Host::I32(v) => v.len(),
            Host::U16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem(&self) -> Elem {
        match self {
            Host::F32(_) => Elem::F32,
            Host::I32(_) => Elem::I32,
            Host::U16(_) => Elem::U16,
        }
    }
}

/// Where plans run.
pub trait Executor {
    /// Keeps `data` as buffer `buf` for the life of the executor (the weights).
    fn upload(&mut self, buf: Buf, data: Host<'_>) -> Result<(), GpuError>;

    /// Cuts the GEMMs' products to TF32 (cuBLAS's math mode; the mirror keeps fp32).
    fn use_tf32(&mut self) -> Result<(), GpuError>;

    /// Runs `plan` on `inputs` (one per `plan.inputs`, in order) and answers its output.
    fn run(&mut self, plan: &Plan, inputs: &[Host<'_>]) -> Result<Vec<f32>, GpuError>;
}
