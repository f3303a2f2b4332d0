//! Every NVRTC kernel Prism has, the one function that compiles them, and the options it
//! compiles them with.
//!
//! A replica compiles for its own card's architecture straight to a CUBIN (SASS), so the
//! driver never has to JIT PTX: a PTX from a newer NVRTC than the driver (NVRTC 13.5 on a
//! 580 driver, which speaks CUDA 13.0) would not load, while a CUBIN for `sm_XY` does.
//! CI compiles the same sources through the same function for `sm_80` and `sm_90`, to PTX
//! and to CUBIN, with the CUDA 13 NVRTC from the registry (`scripts/test`).

use std::ffi::{CStr, CString, c_char};

use super::GpuError;

/// One kernel function: its source, its name, and how many threads a block of it has
/// (every kernel is written for one block size and says so in `__launch_bounds__`, so
/// that the compiler keeps its registers within what that block may use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    AddRow,
    Activate,
    SoftmaxRows,
    ToBf16,
    ToFp16,
    Embed,
    AddLayerNorm,
    MaskedSoftmax,
    SplitHeads,
    MergeHeads,
    Pool,
    L2Normalize,
}

/// Threads per block of the element-wise kernels (one thread per element or row).
pub const ELEMENT_BLOCK: u32 = 256;
/// Threads per block of the row kernels (one block per row, reducing in shared memory).
/// A power of two: the reductions halve it.
pub const ROW_BLOCK: u32 = 256;

impl Kernel {
    pub const ALL: [Kernel; 12] = [
        Kernel::AddRow,
        Kernel::Activate,
        Kernel::SoftmaxRows,
        Kernel::ToBf16,
        Kernel::ToFp16,
        Kernel::Embed,
        Kernel::AddLayerNorm,
        Kernel::MaskedSoftmax,
        Kernel::SplitHeads,
        Kernel::MergeHeads,
        Kernel::Pool,
        Kernel::L2Normalize,
    ];

    /// The `extern "C"` name in its source.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::AddRow => "add_row",
            Kernel::Activate => "activate",
            Kernel::SoftmaxRows => "softmax_rows",
            Kernel::ToBf16 => "to_bf16",
            Kernel::ToFp16 => "to_fp16",
            Kernel::Embed => "embed",
            Kernel::AddLayerNorm => "add_layer_norm",
            Kernel::MaskedSoftmax => "masked_softmax",
            Kernel::SplitHeads => "split_heads",
            Kernel::MergeHeads => "merge_heads",
            Kernel::Pool => "pool",
            Kernel::L2Normalize => "l2_normalize",
        }
    }

    pub fn source(self) -> &'static Source {
        match self {
            Kernel::AddRow | Kernel::Activate | Kernel::SoftmaxRows | Kernel::ToBf16 | Kernel::ToFp16 => &LAYERS,
            _ => &ENCODER,
        }
    }

    /// The argument (a buffer) the kernel writes; it reads the others. (`split_heads`
    /// writes three, from its second.)
    pub fn written(self) -> usize {
        match self {
            Kernel::ToBf16 | Kernel::ToFp16 | Kernel::MergeHeads | Kernel::Pool | Kernel::SplitHeads => 1,
            _ => 0,
        }
    }

    /// Threads per block, as its `__launch_bounds__` declares.
    pub fn block(self) -> u32 {
        match self {
            Kernel::AddLayerNorm | Kernel::MaskedSoftmax | Kernel::L2Normalize => ROW_BLOCK,
            _ => ELEMENT_BLOCK,
        }
    }
}

/// One translation unit given to NVRTC.
#[derive(Debug)]
pub struct Source {
    /// The program name NVRTC reports in its messages.
    pub name: &'static str,
    pub code: &'static str,
}

impl Source {
    /// The kernels this source defines.
    pub fn kernels(&'static self) -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(move |k| std::ptr::eq(k.source(), self))
    }
}

/// Every source, each compiled into one module.
pub const SOURCES: [&Source; 2] = [&LAYERS, &ENCODER];

/// The layer models' element-wise kernels and the half-precision conversions.
pub static LAYERS: Source = Source {
    name: "prism_layers.cu",
    code: r#"
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) add_row(float* y, const float* t, int rows, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) y[i] += t[i % cols];
}

// act: 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 sigmoid, 5 tanh
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) activate(float* y, int n, int act) {
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
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) softmax_rows(float* y, int rows, int cols) {
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
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) to_bf16(const unsigned int* x, unsigned short* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int u = x[i];
    if ((u & 0x7fffffffu) > 0x7f800000u) { y[i] = (unsigned short)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    y[i] = (unsigned short)(u >> 16);
}

// f32 -> IEEE fp16 bits, round to nearest even, by the hardware's conversion.
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) to_fp16(const float* x, unsigned short* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x[i]));
    y[i] = h;
}
"#,
};

/// The encoders' kernels. A batch is padded: `batch` texts of `seq` positions each,
/// `lengths[b]` of them real; padding positions are zero after the gather, masked out
/// of every softmax and never pooled.
pub static ENCODER: Source = Source {
    name: "prism_encoder.cu",
    code: r#"
// Sum (op 0) or maximum (op 1) of one value per thread over the block, in shared memory:
// every thread gets the answer. The block is ROW_BLOCK threads, a power of two.
__device__ float block_reduce(float v, float* red, int op) {
    int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (int half = ROW_BLOCK / 2; half > 0; half >>= 1) {
        if (t < half) red[t] = op == 0 ? red[t] + red[t + half] : fmaxf(red[t], red[t + half]);
        __syncthreads();
    }
    float r = red[0];
    __syncthreads();
    return r;
}

// x[b, p, :] = word[ids] + position[p] + type[types], zero past the text's length.
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) embed(
    float* x, const float* word, const float* position, const float* type,
    const int* ids, const int* types, const int* lengths, int batch, int seq, int hidden) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * seq * hidden) return;
    int token = i / hidden, j = i % hidden;
    int b = token / seq, p = token % seq;
    if (p >= lengths[b]) { x[i] = 0.0f; return; }
    x[i] = word[(long long)ids[token] * hidden + j] + position[(long long)p * hidden + j]
         + type[(long long)types[token] * hidden + j];
}

// x[r] = LayerNorm(x[r] + residual[r]) * gamma + beta, one block per row, biased variance
// from a second pass over the centred values (as the CPU path computes it).
extern "C" __global__ void __launch_bounds__(ROW_BLOCK) add_layer_norm(
    float* x, const float* residual, const float* gamma, const float* beta,
    int rows, int cols, float eps, int has_residual) {
    __shared__ float red[ROW_BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    float* row = x + (long long)r * cols;
    const float* res = residual + (long long)r * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += ROW_BLOCK) {
        float v = row[c];
        if (has_residual) { v += res[c]; row[c] = v; }
        s += v;
    }
    float mean = block_reduce(s, red, 0) / cols;
    float q = 0.0f;
    for (int c = threadIdx.x; c < cols; c += ROW_BLOCK) { float d = row[c] - mean; q += d * d; }
    float inv = 1.0f / sqrtf(block_reduce(q, red, 0) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += ROW_BLOCK) row[c] = (row[c] - mean) * inv * gamma[c] + beta[c];
}

// Softmax of each row of scores[batch * heads * seq, seq] over the keys of its text
// (the first lengths[b] columns); the padding keys get exactly 0.
extern "C" __global__ void __launch_bounds__(ROW_BLOCK) masked_softmax(
    float* scores, const int* lengths, int rows, int heads, int seq) {
    __shared__ float red[ROW_BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    int len = lengths[r / (heads * seq)];
    float* row = scores + (long long)r * seq;
    float m = -3.0e38f;
    for (int c = threadIdx.x; c < len; c += ROW_BLOCK) m = fmaxf(m, row[c]);
    m = block_reduce(m, red, 1);
    float s = 0.0f;
    for (int c = threadIdx.x; c < seq; c += ROW_BLOCK) {
        float e = c < len ? expf(row[c] - m) : 0.0f;
        row[c] = e;
        s += e;
    }
    float inv = 1.0f / block_reduce(s, red, 0);
    for (int c = threadIdx.x; c < seq; c += ROW_BLOCK) row[c] *= inv;
}

// qkv[b, p, 3 * hidden] (queries, keys, values side by side) -> q, k, v[b, head, p, d];
// the queries scaled by 1/sqrt(d).
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) split_heads(
    const float* qkv, float* q, float* k, float* v, int batch, int seq, int heads, int d, float scale) {
    int hidden = heads * d;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * seq * 3 * hidden) return;
    int token = i / (3 * hidden), c = i % (3 * hidden);
    int which = c / hidden, hc = c % hidden;
    int head = hc / d, e = hc % d;
    int b = token / seq, p = token % seq;
    long long dst = (((long long)b * heads + head) * seq + p) * d + e;
    float val = qkv[i];
    if (which == 0) q[dst] = val * scale;
    else if (which == 1) k[dst] = val;
    else v[dst] = val;
}

// context[b, head, p, d] -> out[b, p, head * d].
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) merge_heads(
    const float* context, float* out, int batch, int seq, int heads, int d) {
    int hidden = heads * d;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * seq * hidden) return;
    int token = i / hidden, hc = i % hidden;
    int head = hc / d, e = hc % d;
    int b = token / seq, p = token % seq;
    out[i] = context[(((long long)b * heads + head) * seq + p) * d + e];
}

// out[b, j] from states[b, 0..lengths[b], j]: mode 0 mean, 1 first token, 2 maximum,
// 3 sum over sqrt(length), 4 last token.
extern "C" __global__ void __launch_bounds__(ELEMENT_BLOCK) pool(
    const float* states, float* out, const int* lengths, int batch, int seq, int hidden, int mode) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * hidden) return;
    int b = i / hidden, j = i % hidden;
    int len = lengths[b];
    const float* s = states + (long long)b * seq * hidden + j;
    float acc;
    if (mode == 1) acc = s[0];
    else if (mode == 4) acc = s[(long long)(len - 1) * hidden];
    else if (mode == 2) {
        acc = s[0];
        for (int p = 1; p < len; p++) acc = fmaxf(acc, s[(long long)p * hidden]);
    } else {
        acc = 0.0f;
        for (int p = 0; p < len; p++) acc += s[(long long)p * hidden];
        acc = mode == 0 ? acc / fmaxf((float)len, 1e-9f) : acc / sqrtf((float)len);
    }
    out[i] = acc;
}

// Each row over max(its L2 norm, 1e-12), one block per row.
extern "C" __global__ void __launch_bounds__(ROW_BLOCK) l2_normalize(float* x, int rows, int cols) {
    __shared__ float red[ROW_BLOCK];
    int r = blockIdx.x;
    if (r >= rows) return;
    float* row = x + (long long)r * cols;
    float q = 0.0f;
    for (int c = threadIdx.x; c < cols; c += ROW_BLOCK) q += row[c] * row[c];
    float norm = fmaxf(sqrtf(block_reduce(q, red, 0)), 1e-12f);
    for (int c = threadIdx.x; c < cols; c += ROW_BLOCK) row[c] /= norm;
}
"#,
};

/// What NVRTC is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// PTX for `compute_XY`: what the driver JIT-compiles (only if it is as new as NVRTC).
    Ptx,
    /// SASS for `sm_XY`: what a card of that architecture runs as it is.
    Cubin,
}

/// A compiled source: the image (PTX text with its trailing NUL, or a CUBIN), and what
/// NVRTC said about the source (empty when it said nothing).
#[derive(Clone, Debug)]
pub struct Compiled {
    pub image: Vec<u8>,
    pub log: String,
    pub options: Vec<String>,
}

/// The NVRTC options for `arch` (a compute capability, 90 for `sm_90`): the
/// architecture; IEEE-exact division and square roots, no flush-to-zero (the CPU path
/// is the reference: the kernels must agree with it to 1e-5); and the block sizes the
/// launches use ([`ELEMENT_BLOCK`], [`ROW_BLOCK`]) as the macros the sources' launch
/// bounds and reductions are written in.
pub fn options(arch: u32, output: Output) -> Vec<String> {
    let target = match output {
        Output::Ptx => format!("--gpu-architecture=compute_{arch}"),
        Output::Cubin => format!("--gpu-architecture=sm_{arch}"),
    };
    vec![
        target,
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--fmad=true".into(),
        "--std=c++17".into(),
        format!("-DELEMENT_BLOCK={ELEMENT_BLOCK}"),
        format!("-DROW_BLOCK={ROW_BLOCK}"),
    ]
}

/// The NVRTC version (major, minor). Call only once [`super::libraries`] found NVRTC.
pub fn nvrtc_version() -> Result<(i32, i32), GpuError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for one int; NVRTC was found by the caller.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    check(status, "nvrtcVersion")?;
    Ok((major, minor))
}

fn check(status: cudarc::nvrtc::sys::nvrtcResult, what: &str) -> Result<(), GpuError> {
    if status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(GpuError(format!("NVRTC: {what}: {status:?}")))
    }
}

/// Compiles `source` for compute capability `arch` (80, 86, 90, ...) into `output`.
/// Never panics: a missing NVRTC is an error (checked before cudarc is touched), and so
/// is a source NVRTC refuses, with its log.
pub fn compile(source: &Source, arch: u32, output: Output) -> Result<Compiled, GpuError> {
    // SAFETY: this only tries to open the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(GpuError(
            "the NVRTC library (libnvrtc) is not on the library path".into(),
        ));
    }
    std::panic::catch_unwind(|| compile_inner(source, arch, output))
        .unwrap_or_else(|_| Err(GpuError("NVRTC: a symbol is missing from libnvrtc".into())))
}

fn compile_inner(source: &Source, arch: u32, output: Output) -> Result<Compiled, GpuError> {
    use cudarc::nvrtc::sys;
    let code = CString::new(source.code).expect("kernel sources hold no NUL");
    let name = CString::new(source.name).expect("source names hold no NUL");
    let options = options(arch, output);
    let c_options: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).expect("no NUL"))
        .collect();
    let pointers: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: `code` and `name` outlive the program (destroyed below); no headers.
    check(
        unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                code.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        },
        "create the program",
    )?;
    // SAFETY: `prog` is a live program until the destroy at the end; every buffer below
    // is sized by the matching *Size call.
    let result = unsafe {
        let compiled = sys::nvrtcCompileProgram(prog, pointers.len() as i32, pointers.as_ptr());
        let log = read(prog, sys::nvrtcGetProgramLogSize, sys::nvrtcGetProgramLog).map(|bytes| {
            CStr::from_bytes_until_nul(&bytes).map_or(String::new(), |s| s.to_string_lossy().into_owned())
        });
        match (check(compiled, "compile"), log) {
            (Err(e), log) => Err(GpuError(format!(
                "{e} ({} for {} with {options:?}): {}",
                source.name,
                arch,
                log.unwrap_or_default().trim()
            ))),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(log)) => {
                let image = match output {
                    Output::Ptx => read(prog, sys::nvrtcGetPTXSize, sys::nvrtcGetPTX),
                    Output::Cubin => read(prog, sys::nvrtcGetCUBINSize, sys::nvrtcGetCUBIN),
                };
                image.map(|image| Compiled {
                    image,
                    log: log.trim().to_owned(),
                    options: options.clone(),
                })
            }
        }
    };
    // SAFETY: created above, destroyed once.
    check(unsafe { sys::nvrtcDestroyProgram(&mut prog) }, "destroy the program")?;
    result
}

/// One of NVRTC's size-then-copy reads.
///
/// # Safety
/// `prog` must be a live, compiled program.
unsafe fn read(
    prog: cudarc::nvrtc::sys::nvrtcProgram,
    size: unsafe fn(cudarc::nvrtc::sys::nvrtcProgram, *mut usize) -> cudarc::nvrtc::sys::nvrtcResult,
    copy: unsafe fn(cudarc::nvrtc::sys::nvrtcProgram, *mut c_char) -> cudarc::nvrtc::sys::nvrtcResult,
) -> Result<Vec<u8>, GpuError> {
    let mut len = 0usize;
    // SAFETY: the caller's contract; `len` is valid.
    check(unsafe { size(prog, &mut len) }, "read a size")?;
    let mut bytes = vec![0u8; len];
    // SAFETY: `bytes` holds the `len` bytes NVRTC asked for.
    check(unsafe { copy(prog, bytes.as_mut_ptr().cast()) }, "read an image")?;
    Ok(bytes)
}
