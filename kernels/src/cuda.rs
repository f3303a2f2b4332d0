//! The CUDA backend: cuBLAS for the GEMMs, small NVRTC kernels for bias, activations and
//! softmax, page-locked staging for every batch.
//!
//! cudarc loads the CUDA libraries at run time and *panics* on first use when one is
//! missing, so [`probe`] checks each library (driver, NVRTC, cuBLAS) before anything else
//! touches them, and [`CudaDevice::new`] runs behind `catch_unwind` as well. Every CUDA
//! failure becomes a [`GpuError`], a system failure the caller may retry elsewhere.

use std::collections::HashMap;
use std::panic::catch_unwind;
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg};

use crate::model::{Layer, Model, Step};

/// A CUDA failure: a system failure, never a panic of the server.
#[derive(Debug, Clone, thiserror::Error)]
#[error("CUDA: {0}")]
pub struct GpuError(pub String);

fn gpu<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> GpuError {
    move |e| GpuError(format!("{what}: {e:?}"))
}

/// How many CUDA devices can be used, or why none can. Never panics.
pub fn probe() -> Result<usize, String> {
    // SAFETY: these only try to open the libraries; they touch no CUDA state.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    match (driver, nvrtc, cublas) {
        (false, _, _) => return Err("the CUDA driver library (libcuda) is not installed".into()),
        (_, false, _) => return Err("the NVRTC library (libnvrtc) is not on the library path".into()),
        (_, _, false) => return Err("the cuBLAS library (libcublas) is not on the library path".into()),
        _ => {}
    }
    match catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) => Ok(n.max(0) as usize),
        Ok(Err(e)) => Err(format!("the CUDA driver reports no usable device: {e:?}")),
        Err(_) => Err("the CUDA driver library could not be used (a symbol is missing)".into()),
    }
}

/// The UUID of each CUDA device, by ordinal, spelt as NVML spells it
/// (`GPU-8f6a5d0e-...`), or why CUDA cannot be used. Never panics.
///
/// CUDA numbers only the devices it may use (`CUDA_VISIBLE_DEVICES`), and by default
/// fastest first, while NVML numbers every card in PCI order: a card found through NVML
/// is matched to its CUDA ordinal by UUID, never by index.
pub fn device_uuids() -> Result<Vec<String>, String> {
    let count = probe()?;
    let read = || {
        (0..count)
            .map(|ordinal| {
                let device = cudarc::driver::result::device::get(ordinal as std::ffi::c_int)?;
                let uuid = cudarc::driver::result::device::get_uuid(device)?;
                Ok(format_uuid(uuid.bytes.map(|b| b as u8)))
            })
            .collect::<Result<Vec<_>, cudarc::driver::DriverError>>()
    };
    match catch_unwind(read) {
        Ok(Ok(uuids)) => Ok(uuids),
        Ok(Err(e)) => Err(format!("the CUDA driver could not name its devices: {e:?}")),
        Err(_) => Err("the CUDA driver library could not be used (a symbol is missing)".into()),
    }
}

/// A device UUID's 16 bytes as NVML writes them: `GPU-` and 8-4-4-4-12 lowercase hex digits.
pub fn format_uuid(bytes: [u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Allocates page-locked host memory on one card's context: what the object store keeps
/// its objects in when a GPU is present, so that copies from objects to a card can be
/// direct DMA. (A GPU replica still stages a batch through its own page-locked buffer
/// today: the object's rows are copied there by the CPU first.)
#[derive(Clone)]
pub struct PinnedAllocator {
    ctx: Arc<CudaContext>,
}

impl PinnedAllocator {
    /// An allocator on device `ordinal`. Call only after [`probe`] found it.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        let ctx = catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| GpuError("creating a context panicked".into()))?
            .map_err(gpu("creating a context"))?;
        Ok(PinnedAllocator { ctx })
    }

    /// `len` zeroed bytes of page-locked memory: portable (any context may copy from
    /// it) and cached (not write-combined: the CPU reads objects back).
    pub fn zeroed(&self, len: usize) -> Result<PinnedBytes, GpuError> {
        // SAFETY: the memory is uninitialised until the fill below, and nothing reads it
        // before.
        let mut buf = unsafe {
            self.ctx
                .alloc_pinned_with_flags::<u8>(len.max(1), cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE)
        }
        .map_err(gpu("allocating page-locked memory"))?;
        let ptr = buf.as_mut_ptr().map_err(gpu("reaching page-locked memory"))?;
        // SAFETY: `ptr` is valid for `len.max(1)` bytes, freshly allocated and unshared.
        unsafe { std::ptr::write_bytes(ptr, 0, len.max(1)) };
        Ok(PinnedBytes { buf, ptr, len })
    }
}

/// Zeroed page-locked host bytes (see [`PinnedAllocator`]).
pub struct PinnedBytes {
    /// Owns the allocation; never handed to a stream, so no device work is ever pending
    /// on it and its bytes may be read and written directly.
    buf: PinnedHostSlice<u8>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `PinnedBytes` owns its allocation like a `Box<[u8]>`; `PinnedHostSlice` is itself
// Send and Sync, and `ptr` points into it.
unsafe impl Send for PinnedBytes {}
// SAFETY: shared access only reads through `&[u8]`.
unsafe impl Sync for PinnedBytes {}

impl Drop for PinnedBytes {
    /// The last owner may be any thread: the free needs the allocation's context bound to
    /// it (the slice itself then frees the memory).
    fn drop(&mut self) {
        let ctx = self.buf.context();
        // `bind_to_thread` first hands back (and clears) an error stored by an earlier
        // failed call, without binding: then bind again.
        if ctx.bind_to_thread().is_err() {
            let _ = ctx.bind_to_thread();
        }
    }
}

impl std::ops::Deref for PinnedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised bytes while `buf` lives, and no
        // device copy writes to it (it is never given to a stream).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for PinnedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        debug_assert!(self.buf.num_bytes() >= self.len);
        // SAFETY: as above; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

const KERNELS: &str = r#"
extern "C" __global__ void add_row(float* y, const float* t, int rows, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) y[i] += t[i % cols];
}

// act: 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 sigmoid, 5 tanh
extern "C" __global__ void activate(float* y, int n, int act) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = y[i];
    switch (act) {
        case 1: v = fmaxf(v, 0.0f); break;
        case 2: v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); break;
        case 3: v = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v))); break;
        case 4: v = 1.0f / (1.0f + expf(-v)); break;
        case 5: v = tanhf(v); break;
    }
    y[i] = v;
}

// One thread per row: the rows of a serving model are short (tens to thousands).
extern "C" __global__ void softmax_rows(float* y, int rows, int cols) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    float* row = y + (long long)r * cols;
    // NVRTC has no system headers (no INFINITY): start from the first element.
    float m = row[0];
    for (int c = 1; c < cols; c++) m = fmaxf(m, row[c]);
    float s = 0.0f;
    for (int c = 0; c < cols; c++) { row[c] = expf(row[c] - m); s += row[c]; }
    for (int c = 0; c < cols; c++) row[c] /= s;
}

// f32 -> bf16 bits, rounding to nearest even (as the `half` crate does for the weights);
// NaN stays a quiet NaN. Reads the floats as their bits: NVRTC has no headers.
extern "C" __global__ void to_bf16(const unsigned int* x, unsigned short* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int u = x[i];
    if ((u & 0x7fffffffu) > 0x7f800000u) { y[i] = (unsigned short)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    y[i] = (unsigned short)(u >> 16);
}

// f32 -> IEEE fp16 bits, round to nearest even, by the hardware's conversion.
extern "C" __global__ void to_fp16(const float* x, unsigned short* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x[i]));
    y[i] = h;
}
"#;

/// The arithmetic of a GPU replica's GEMMs, per deployment (`precision`). The weights are
/// converted once at upload; biases, element-wise ops and softmax stay in fp32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// IEEE fp32 throughout (cuBLAS sgemm).
    #[default]
    Fp32,
    /// fp32 storage, TF32 tensor-core products (cuBLAS's TF32 math mode).
    Tf32,
    /// bf16 weights and GEMM inputs, fp32 accumulation and outputs (cublasGemmEx).
    Bf16,
    /// fp16 weights and GEMM inputs, fp32 accumulation and outputs (cublasGemmEx).
    /// Values beyond ±65504 become ±inf.
    Fp16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(format!(
                "expected \"fp32\", \"tf32\", \"bf16\" or \"fp16\", got {other:?}"
            )),
        }
    }
}

/// `y[rows×n] = x[rows×k] · w[k×n]` with `w` in bf16 / fp16: `x` is converted into
/// `half` first, the product accumulates in fp32 and lands in `y` as fp32.
fn half_gemm(
    d: &CudaDevice,
    precision: Precision,
    w: &CudaSlice<u16>,
    x: &CudaSlice<f32>,
    half: &mut CudaSlice<u16>,
    y: &mut CudaSlice<f32>,
    (rows, k, n): (usize, usize, usize),
) -> Result<(), GpuError> {
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let (convert, dtype) = match precision {
        Precision::Bf16 => (&d.to_bf16, cudaDataType_t::CUDA_R_16BF),
        Precision::Fp16 => (&d.to_fp16, cudaDataType_t::CUDA_R_16F),
        Precision::Fp32 | Precision::Tf32 => unreachable!("fp32 weights use sgemm. This is a bug."),
    };
    let count = (rows * k) as i32;
    let mut launch = d.stream.launch_builder(convert);
    launch.arg(x).arg(&mut *half).arg(&count);
    // SAFETY: the kernel reads `x[0..rows·k]` and writes `half[0..rows·k]`; both are
    // sized for the widest layer.
    unsafe { launch.launch(grid(rows * k)) }.map_err(gpu("launch the half conversion"))?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (w_ptr, _w) = w.device_ptr(&d.stream);
    let (x_ptr, _x) = half.device_ptr(&d.stream);
    let (y_ptr, _y) = y.device_ptr_mut(&d.stream);
    // SAFETY: as for sgemm (row-major through column-major Cᵀ = Bᵀ·Aᵀ): `w` holds k·n
    // values, `half` rows·k, `y` rows·n; alpha and beta are f32 as COMPUTE_32F wants;
    // everything is on this replica's stream.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *d.blas.handle(),
            cublasOperation_t::CUBLAS_OP_N,
            cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            rows as i32,
            k as i32,
            (&alpha) as *const f32 as *const _,
            w_ptr as *const _,
            dtype,
            n as i32,
            x_ptr as *const _,
            dtype,
            k as i32,
            (&beta) as *const f32 as *const _,
            y_ptr as *mut _,
            cudaDataType_t::CUDA_R_32F,
            n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(gpu("cuBLAS gemmEx"))
}

/// One replica's view of a card: its own stream and cuBLAS handle, the kernels compiled
/// once.
pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    add_row: CudaFunction,
    activate: CudaFunction,
    softmax: CudaFunction,
    to_bf16: CudaFunction,
    to_fp16: CudaFunction,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice").field("ordinal", &self.ordinal).finish()
    }
}

impl CudaDevice {
    /// A context on card `ordinal` with a new stream. Call [`probe`] first.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        catch_unwind(|| Self::open(ordinal))
            .unwrap_or_else(|_| Err(GpuError("cudarc panicked opening the device".into())))
    }

    fn open(ordinal: usize) -> Result<Self, GpuError> {
        let ctx = CudaContext::new(ordinal).map_err(gpu("create a context"))?;
        let stream = ctx.new_stream().map_err(gpu("create a stream"))?;
        let blas = CudaBlas::new(Arc::clone(&stream)).map_err(gpu("create a cuBLAS handle"))?;
        // Compiled once per process; every replica's context loads the same PTX.
        static PTX: std::sync::OnceLock<Result<cudarc::nvrtc::Ptx, GpuError>> = std::sync::OnceLock::new();
        let ptx = PTX
            .get_or_init(|| cudarc::nvrtc::compile_ptx(KERNELS).map_err(gpu("compile the kernels")))
            .clone()?;
        let module = ctx.load_module(ptx).map_err(gpu("load the kernels"))?;
        let f = |name| module.load_function(name).map_err(gpu("find a kernel"));
        Ok(CudaDevice {
            ordinal,
            add_row: f("add_row")?,
            activate: f("activate")?,
            softmax: f("softmax_rows")?,
            to_bf16: f("to_bf16")?,
            to_fp16: f("to_fp16")?,
            ctx,
            stream,
            blas,
        })
    }
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(n.max(1) as u32)
}

/// The weights of a GEMM as the card holds them.
enum GemmWeight {
    F32(CudaSlice<f32>),
    /// bf16 or fp16 bits (see [`Precision`]).
    Half(CudaSlice<u16>),
}

enum GpuStep {
    /// `[in, out]` weights, optional bias.
    Gemm {
        weight: GemmWeight,
        k: usize,
        n: usize,
        bias: Option<CudaSlice<f32>>,
    },
    Add(CudaSlice<f32>),
    Activate(i32),
    Softmax,
}

/// Page-locked host buffers and device buffers for batches of up to `rows` rows.
struct Staging {
    rows: usize,
    input: PinnedHostSlice<f32>,
    output: PinnedHostSlice<f32>,
    /// Activations, ping-ponged between layers; each sized for the widest layer.
    buffers: [CudaSlice<f32>; 2],
    /// The GEMM input in bf16 / fp16, for those precisions.
    half: Option<CudaSlice<u16>>,
}

/// A model on one card: weights uploaded once, staging buffers per batch-size bucket.
pub struct GpuModel {
    device: CudaDevice,
    precision: Precision,
    steps: Vec<GpuStep>,
    in_features: usize,
    out_features: usize,
    widest: usize,
    /// Keyed by rows rounded up to a power of two, so a few buffers serve every batch.
    staging: HashMap<usize, Staging>,
}

impl GpuModel {
    /// Bytes of card memory one replica of `model` needs for batches of up to `max_rows`
    /// rows, as [`GpuModel::upload`] and the staging buckets allocate it: the weights (GEMM
    /// weights in 2 bytes for bf16 / fp16, the rest fp32), per bucket two fp32 activation
    /// buffers of the widest row (plus a half-precision one for bf16 / fp16), and its
    /// cuBLAS handle's workspace. Buckets are powers of two, so all the smaller ones
    /// together take at most as much as the largest. The CUDA context is not counted: the
    /// replicas of a process share each card's primary context.
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
        // cudarc panics on a missing library symbol and on some failed frees: a panic here
        // is a failure to upload, never the end of the replica's thread.
        catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::upload_inner(model, device, precision)
        }))
        .unwrap_or_else(|_| Err(GpuError("cudarc panicked uploading the model".into())))
    }

    fn upload_inner(model: &Model, device: CudaDevice, precision: Precision) -> Result<Self, GpuError> {
        let up = |w: &crate::Weight| device.stream.clone_htod(w.as_slice()).map_err(gpu("upload weights"));
        let up_gemm = |w: &crate::Weight| -> Result<GemmWeight, GpuError> {
            let bits: Vec<u16> = match precision {
                Precision::Fp32 | Precision::Tf32 => return up(w).map(GemmWeight::F32),
                Precision::Bf16 => w
                    .as_slice()
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect(),
                Precision::Fp16 => w.as_slice().iter().map(|&v| half::f16::from_f32(v).to_bits()).collect(),
            };
            device
                .stream
                .clone_htod(&bits)
                .map(GemmWeight::Half)
                .map_err(gpu("upload weights"))
        };
        if precision == Precision::Tf32 {
            // SAFETY: the handle is this replica's own and alive; only the math mode changes.
            let status = unsafe {
                cudarc::cublas::sys::cublasSetMathMode(
                    *device.blas.handle(),
                    cudarc::cublas::sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
                )
            };
            if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(GpuError(format!("cuBLAS: cannot enable TF32: {status:?}")));
            }
        }
        let mut steps = Vec::new();
        for step in model.steps() {
            steps.push(match step {
                Step::Gemm { weight, bias, .. } => {
                    let (k, n) = (weight.shape()[0], weight.shape()[1]);
                    GpuStep::Gemm {
                        weight: up_gemm(weight)?,
                        k,
                        n,
                        bias: bias.as_ref().map(up).transpose()?,
                    }
                }
                Step::Layer(Layer::Add { tensor }) => GpuStep::Add(up(tensor)?),
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
            precision,
            in_features: model.in_features(),
            out_features: model.out_features(),
            widest: model.widest(),
            steps,
            device,
            staging: HashMap::new(),
        })
    }

    /// The buffers for a batch of `rows`, made on first use of their bucket.
    fn staging<'a>(
        d: &CudaDevice,
        map: &'a mut HashMap<usize, Staging>,
        (in_features, out_features, widest): (usize, usize, usize),
        precision: Precision,
        rows: usize,
    ) -> Result<&'a mut Staging, GpuError> {
        let bucket = rows.next_power_of_two();
        // The kernels count elements in 32-bit ints.
        if bucket.saturating_mul(widest) > i32::MAX as usize {
            return Err(GpuError(format!(
                "a batch of {rows} rows of up to {widest} values exceeds 2^31 elements per buffer"
            )));
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(bucket) {
            // SAFETY: the buffers are written before they are read (input by the caller,
            // output by the copy back), and live as long as this model.
            let (input, output) = unsafe {
                (
                    // Write-combined suits a buffer the CPU only writes.
                    d.ctx
                        .alloc_pinned::<f32>(bucket * in_features)
                        .map_err(gpu("allocate pinned input"))?,
                    // The CPU reads this one: plain page-locked memory, not write-combined.
                    d.ctx
                        .alloc_pinned_with_flags::<f32>(
                            bucket * out_features,
                            cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE,
                        )
                        .map_err(gpu("allocate pinned output"))?,
                )
            };
            let buffer = || {
                d.stream
                    .alloc_zeros::<f32>(bucket * widest)
                    .map_err(gpu("allocate activations"))
            };
            let buffers = [buffer()?, buffer()?];
            let half = match precision {
                Precision::Bf16 | Precision::Fp16 => Some(
                    d.stream
                        .alloc_zeros::<u16>(bucket * widest)
                        .map_err(gpu("allocate half activations"))?,
                ),
                Precision::Fp32 | Precision::Tf32 => None,
            };
            slot.insert(Staging {
                rows: bucket,
                input,
                output,
                buffers,
                half,
            });
        }
        Ok(map.get_mut(&bucket).expect("inserted above"))
    }

    /// Runs the model on `rows` rows of `x` (row-major) and returns `rows × out_features`.
    pub fn forward(&mut self, x: &[f32], rows: usize) -> Result<Vec<f32>, GpuError> {
        let (in_features, out_features) = (self.in_features, self.out_features);
        assert_eq!(
            x.len(),
            rows * in_features,
            "input length and rows disagree. This is a bug."
        );
        let GpuModel {
            device: d,
            steps,
            staging,
            widest,
            precision,
            ..
        } = self;
        let staging = Self::staging(d, staging, (in_features, out_features, *widest), *precision, rows)?;
        let bucket = staging.rows;
        // Stage the batch in page-locked memory and copy it to the card asynchronously on
        // this replica's stream. The copies move whole buckets (the buffers' sizes); the
        // maths runs on the batch's own rows only, so the padding is never read.
        {
            let host = staging.input.as_mut_slice().map_err(gpu("map pinned input"))?;
            host[..x.len()].copy_from_slice(x);
        }
        let half = &mut staging.half;
        let [a, b] = &mut staging.buffers;
        let (mut cur, mut other) = (a, b);
        d.stream
            .memcpy_htod(&staging.input, &mut cur.slice_mut(0..bucket * in_features))
            .map_err(gpu("copy the batch to the card"))?;
        let mut width = in_features;
        for step in steps.iter() {
            match step {
                GpuStep::Gemm { weight, k, n, bias } => {
                    let (k, n) = (*k, *n);
                    match weight {
                        GemmWeight::F32(weight) => {
                            // Row-major C[m×n] = A[m×k]·B[k×n] is column-major Cᵀ = Bᵀ·Aᵀ.
                            let cfg = GemmConfig {
                                transa: cublasOperation_t::CUBLAS_OP_N,
                                transb: cublasOperation_t::CUBLAS_OP_N,
                                m: n as i32,
                                n: rows as i32,
                                k: k as i32,
                                alpha: 1.0f32,
                                lda: n as i32,
                                ldb: k as i32,
                                beta: 0.0f32,
                                ldc: n as i32,
                            };
                            // SAFETY: `weight` holds k·n values, `cur` at least bucket·k ≥ rows·k,
                            // `other` at least bucket·n ≥ rows·n (both sized for the widest layer);
                            // all on this stream.
                            unsafe { d.blas.gemm(cfg, weight, &*cur, &mut *other) }.map_err(gpu("cuBLAS sgemm"))?;
                        }
                        GemmWeight::Half(weight) => {
                            let half = half.as_mut().expect("half precisions stage a half buffer");
                            half_gemm(d, *precision, weight, &*cur, half, &mut *other, (rows, k, n))?;
                        }
                    }
                    std::mem::swap(&mut cur, &mut other);
                    if let Some(bias) = bias {
                        let (r, c) = (rows as i32, n as i32);
                        let mut launch = d.stream.launch_builder(&d.add_row);
                        launch.arg(&mut *cur).arg(bias).arg(&r).arg(&c);
                        // SAFETY: the kernel reads `bias[0..n]` and updates `cur[0..rows·n]`.
                        unsafe { launch.launch(grid(rows * n)) }.map_err(gpu("launch add_row"))?;
                    }
                    width = n;
                }
                GpuStep::Add(t) => {
                    let (r, c) = (rows as i32, width as i32);
                    let mut launch = d.stream.launch_builder(&d.add_row);
                    launch.arg(&mut *cur).arg(t).arg(&r).arg(&c);
                    // SAFETY: as above, `t` holds `width` values.
                    unsafe { launch.launch(grid(rows * width)) }.map_err(gpu("launch add_row"))?;
                }
                GpuStep::Activate(act) => {
                    let count = (rows * width) as i32;
                    let mut launch = d.stream.launch_builder(&d.activate);
                    launch.arg(&mut *cur).arg(&count).arg(act);
                    // SAFETY: the kernel touches `cur[0..count]` only.
                    unsafe { launch.launch(grid(rows * width)) }.map_err(gpu("launch activate"))?;
                }
                GpuStep::Softmax => {
                    let (r, c) = (rows as i32, width as i32);
                    let mut launch = d.stream.launch_builder(&d.softmax);
                    launch.arg(&mut *cur).arg(&r).arg(&c);
                    // SAFETY: one thread per row of `cur[0..rows·width]`.
                    unsafe { launch.launch(grid(rows)) }.map_err(gpu("launch softmax"))?;
                }
            }
        }
        d.stream
            .memcpy_dtoh(&cur.slice(0..bucket * out_features), &mut staging.output)
            .map_err(gpu("copy the answer back"))?;
        d.stream.synchronize().map_err(gpu("synchronize"))?;
        let host = staging.output.as_slice().map_err(gpu("map pinned output"))?;
        Ok(host[..rows * out_features].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_spelt_as_nvml_spells_them() {
        let bytes = [
            0x8f, 0x6a, 0x5d, 0x0e, 0x12, 0x34, 0xab, 0xcd, 0x00, 0x01, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
        ];
        assert_eq!(format_uuid(bytes), "GPU-8f6a5d0e-1234-abcd-0001-fedcba987654");
    }

    #[test]
    fn the_memory_ask_counts_what_upload_and_staging_allocate() {
        // The default MLP: 784 -> 256 -> 10, batches of up to 32 rows (one bucket of 32).
        let mlp = crate::builtin::mlp();
        let gemm = 784 * 256 + 256 * 10;
        let biases = (256 + 10) * 4;
        let activations = 2 * 32 * 784 * 4;
        let workspace = 32 << 20;
        assert_eq!(
            GpuModel::memory_needed(&mlp, Precision::Fp32, 32),
            (gemm * 4 + biases + 2 * activations + workspace) as u64
        );
        // bf16 halves the GEMM weights only, and adds a half-precision input buffer.
        assert_eq!(
            GpuModel::memory_needed(&mlp, Precision::Bf16, 32),
            (gemm * 2 + biases + 2 * (activations + 32 * 784 * 2) + workspace) as u64
        );
        assert_eq!(
            GpuModel::memory_needed(&mlp, Precision::Fp32, 20),
            GpuModel::memory_needed(&mlp, Precision::Fp32, 32),
            "rows round up to their power-of-two bucket"
        );
    }

    #[test]
    fn naming_the_devices_never_panics() {
        // Without a driver this is the probe's reason; with one, one UUID per device.
        match (device_uuids(), probe()) {
            (Ok(uuids), Ok(count)) => {
                assert_eq!(uuids.len(), count);
                assert!(
                    uuids.iter().all(|u| u.starts_with("GPU-") && u.len() == 40),
                    "{uuids:?}"
                );
            }
            (Err(why), Err(probe_why)) => assert_eq!(why, probe_why),
            (uuids, count) => panic!("the probe says {count:?} but the UUIDs {uuids:?}"),
        }
    }
}
