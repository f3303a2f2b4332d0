//! Plans on a card: one replica's context, stream and cuBLAS handle, the kernels compiled
//! for the card's own architecture, device buffers by number, page-locked staging.

use std::collections::HashMap;
use std::panic::catch_unwind;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice, PushKernelArg,
};

use super::plan::{Arg, Buf, Executor, Gemm, GemmType, Host, Op, Plan};
use super::source::{self, Kernel, Output, SOURCES};
use super::{GpuError, gpu};

/// One replica's view of a card: its own stream and cuBLAS handle, the kernels compiled
/// once per process for the card's architecture.
pub struct CudaDevice {
    ordinal: usize,
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<Kernel, CudaFunction>,
    /// Compute capability, 90 for `sm_90`.
    arch: u32,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("arch", &self.arch)
            .finish()
    }
}

/// The CUBINs of every source, by architecture, compiled once per process.
fn cubins(arch: u32) -> Result<Vec<Vec<u8>>, GpuError> {
    type Cache = Mutex<HashMap<u32, Result<Vec<Vec<u8>>, GpuError>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry(arch)
        .or_insert_with(|| {
            SOURCES
                .iter()
                .map(|s| source::compile(s, arch, Output::Cubin).map(|c| c.image))
                .collect()
        })
        .clone()
}

impl CudaDevice {
    /// A context on card `ordinal` with a new stream. Call [`super::probe`] first.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        catch_unwind(|| Self::open(ordinal))
            .unwrap_or_else(|_| Err(GpuError("cudarc panicked opening the device".into())))
    }

    fn open(ordinal: usize) -> Result<Self, GpuError> {
        let ctx = CudaContext::new(ordinal).map_err(gpu("create a context"))?;
        let (major, minor) = ctx.compute_capability().map_err(gpu("read the compute capability"))?;
        let arch = (major * 10 + minor) as u32;
        let stream = ctx.new_stream().map_err(gpu("create a stream"))?;
        let blas = CudaBlas::new(Arc::clone(&stream)).map_err(gpu("create a cuBLAS handle"))?;
        let mut functions = HashMap::new();
        for (source, cubin) in SOURCES.iter().zip(cubins(arch)?) {
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                .map_err(gpu("load the kernels"))?;
            for kernel in source.kernels() {
                let f = module.load_function(kernel.name()).map_err(gpu("find a kernel"))?;
                functions.insert(kernel, f);
            }
        }
        Ok(CudaDevice {
            ordinal,
            ctx,
            stream,
            blas,
            functions,
            arch,
        })
    }

    /// The card's compute capability, 90 for `sm_90`.
    pub fn arch(&self) -> u32 {
        self.arch
    }
}

/// Device bytes of one buffer.
struct DeviceBuf {
    bytes: CudaSlice<u8>,
    len: usize,
}

/// Runs plans on one [`CudaDevice`]. Scratch buffers grow to the largest batch seen and
/// are kept; inputs and the answer pass through page-locked buffers.
///
/// Everything runs on the replica's one stream, in order: kernels and GEMMs get raw
/// device addresses (cudarc's per-buffer events are not used to order them), buffers are
/// freed stream-ordered when they grow, and each batch ends with a synchronize (a failed
/// one too) before its staging is reused.
pub struct CudaExecutor {
    device: CudaDevice,
    buffers: Vec<Option<DeviceBuf>>,
    staging_in: Vec<Option<PinnedHostSlice<u8>>>,
    staging_out: Option<PinnedHostSlice<f32>>,
    compute: cublasComputeType_t,
    /// The batches' time on the card since [`CudaExecutor::take_batch_time`], each from
    /// a CUDA event before its first copy in to one after its copy out (failed batches
    /// are not counted).
    card_time: Option<std::time::Duration>,
    /// The two timing events, made once and recorded again for each batch.
    events: Option<(CudaEvent, CudaEvent)>,
}

impl CudaExecutor {
    pub fn new(device: CudaDevice) -> CudaExecutor {
        CudaExecutor {
            device,
            buffers: Vec::new(),
            staging_in: Vec::new(),
            staging_out: None,
            compute: cublasComputeType_t::CUBLAS_COMPUTE_32F,
            card_time: None,
            events: None,
        }
    }

    /// The time the card spent on the batches run since the last call (their copies and
    /// kernels, timed by CUDA events); `None` when none ran to the end.
    pub fn take_batch_time(&mut self) -> Option<std::time::Duration> {
        self.card_time.take()
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    fn slot(&mut self, buf: Buf) -> &mut Option<DeviceBuf> {
        if self.buffers.len() <= buf.0 {
            self.buffers.resize_with(buf.0 + 1, || None);
        }
        &mut self.buffers[buf.0]
    }

    /// Buffer `buf` with room for at least `bytes`, grown (its contents dropped) if it had
    /// less.
    fn ensure(&mut self, buf: Buf, bytes: usize) -> Result<(), GpuError> {
        let stream = Arc::clone(&self.device.stream);
        let slot = self.slot(buf);
        if slot.as_ref().is_none_or(|b| b.len < bytes) {
            *slot = None;
            // SAFETY: scratch is written by the plan before it is read (the mirror checks
            // that every plan does), so it need not be zeroed.
            let bytes_buf = unsafe { stream.alloc::<u8>(bytes.max(1)) }.map_err(gpu("allocate a buffer"))?;
            *slot = Some(DeviceBuf {
                bytes: bytes_buf,
                len: bytes,
            });
        }
        Ok(())
    }

    fn ptr(&self, buf: Buf) -> Result<u64, GpuError> {
        let b = self
            .buffers
            .get(buf.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| GpuError(format!("buffer {buf:?} is used before it exists. This is a bug.")))?;
        let (ptr, _sync) = b.bytes.device_ptr(&self.device.stream);
        Ok(ptr)
    }

    fn launch(&self, kernel: Kernel, cfg: cudarc::driver::LaunchConfig, args: &[Arg]) -> Result<(), GpuError> {
        let f = self
            .device
            .functions
            .get(&kernel)
            .ok_or_else(|| GpuError(format!("kernel {} is not loaded", kernel.name())))?;
        enum Value {
            Ptr(u64),
            Int(i32),
            Float(f32),
        }
        let values = args
            .iter()
            .map(|a| {
                Ok(match *a {
                    Arg::Buf(b) => Value::Ptr(self.ptr(b)?),
                    Arg::Int(i) => Value::Int(i),
                    Arg::Float(x) => Value::Float(x),
                })
            })
            .collect::<Result<Vec<_>, GpuError>>()?;
        let mut launch = self.device.stream.launch_builder(f);
        for v in &values {
            match v {
                Value::Ptr(p) => launch.arg(p),
                Value::Int(i) => launch.arg(i),
                Value::Float(x) => launch.arg(x),
            };
        }
        // SAFETY: the arguments are those of the kernel's signature in order (pointers as
        // 64-bit device addresses, ints, floats); the mirror runs every plan's launches over
        // the same grids and buffer sizes and panics on any out-of-bounds index.
        unsafe { launch.launch(cfg) }
            .map(drop)
            .map_err(|e| GpuError(format!("launch {}: {e:?}", kernel.name())))
    }

    fn gemm(&self, g: &Gemm) -> Result<(), GpuError> {
        let ty = match g.ty {
            GemmType::F32 => cudaDataType_t::CUDA_R_32F,
            GemmType::Bf16 => cudaDataType_t::CUDA_R_16BF,
            GemmType::Fp16 => cudaDataType_t::CUDA_R_16F,
        };
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (a, b, c) = (self.ptr(g.a)?, self.ptr(g.b)?, self.ptr(g.c)?);
        let int = |n: usize| super::plan::int(n, "a GEMM dimension");
        // SAFETY: the pointers are this executor's buffers, sized by the plan that the
        // mirror checks every GEMM's extents against; alpha and beta are f32 as
        // COMPUTE_32F wants; everything runs on this replica's stream.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.device.blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                int(g.m)?,
                int(g.n)?,
                int(g.k)?,
                (&g.alpha) as *const f32 as *const _,
                a as *const _,
                ty,
                int(g.lda)?,
                g.stride_a as i64,
                b as *const _,
                ty,
                int(g.ldb)?,
                g.stride_b as i64,
                (&g.beta) as *const f32 as *const _,
                c as *mut _,
                cudaDataType_t::CUDA_R_32F,
                int(g.ldc)?,
                g.stride_c as i64,
                int(g.batch)?,
                self.compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(gpu("cuBLAS GemmStridedBatchedEx"))
    }

    fn run_inner(&mut self, plan: &Plan, inputs: &[Host<'_>]) -> Result<Vec<f32>, GpuError> {
        for &(buf, elem, len) in &plan.scratch {
            let size = match elem {
                super::plan::Elem::F32 | super::plan::Elem::I32 => 4,
                super::plan::Elem::U16 => 2,
            };
            self.ensure(buf, len * size)?;
        }
        if self.staging_in.len() < inputs.len() {
            self.staging_in.resize_with(inputs.len(), || None);
        }
        assert_eq!(
            inputs.len(),
            plan.inputs.len(),
            "one input per plan input. This is a bug."
        );
        // The host's part first: each input into its page-locked staging, and the output's
        // staging, (re)allocated as they grow. (Each batch ends synchronized, so the
        // previous batch's copies are done with them.)
        for (i, data) in inputs.iter().enumerate() {
            let bytes = bytes(data);
            let staging = &mut self.staging_in[i];
            if staging.as_ref().is_none_or(|s| s.len() < bytes.len()) {
                *staging = None;
                // SAFETY: written just below, before any copy reads it.
                *staging = Some(
                    unsafe {
                        self.device
                            .ctx
                            .alloc_pinned::<u8>(bytes.len().next_power_of_two().max(1))
                    }
                    .map_err(gpu("allocate pinned input"))?,
                );
            }
            let staging = staging.as_mut().expect("allocated above");
            staging.as_mut_slice().map_err(gpu("map pinned input"))?[..bytes.len()].copy_from_slice(bytes);
        }
        let (buf, len) = plan.output;
        if self.staging_out.as_ref().is_none_or(|s| s.len() < len) {
            self.staging_out = None;
            // SAFETY: written by the copy below before it is read. Plain page-locked
            // memory, not write-combined: the CPU reads it.
            self.staging_out = Some(
                unsafe {
                    self.device.ctx.alloc_pinned_with_flags::<f32>(
                        len.next_power_of_two().max(1),
                        cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE,
                    )
                }
                .map_err(gpu("allocate pinned output"))?,
            );
        }
        // The card's part, timed on the stream: the copies in, the kernels, the copy out.
        if self.events.is_none() {
            let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let event = || self.device.ctx.new_event(timing).map_err(gpu("make a timing event"));
            self.events = Some((event()?, event()?));
        }
        let (started, _) = self.events.as_ref().expect("made above");
        started.record(&self.device.stream).map_err(gpu("record an event"))?;
        for (i, (&buf, data)) in plan.inputs.iter().zip(inputs).enumerate() {
            let n = bytes(data).len();
            let staging = self.staging_in[i].as_ref().expect("staged above");
            let stream = Arc::clone(&self.device.stream);
            let dst = &mut self.buffers[buf.0].as_mut().expect("inputs are scratch").bytes;
            stream
                .memcpy_htod(
                    &staging.as_slice().map_err(gpu("map pinned input"))?[..n],
                    &mut dst.slice_mut(0..n),
                )
                .map_err(gpu("copy the batch to the card"))?;
        }
        for op in &plan.ops {
            match op {
                Op::Launch { kernel, cfg, args } => self.launch(*kernel, *cfg, args)?,
                Op::Gemm(g) => self.gemm(g)?,
            }
        }
        let stream = Arc::clone(&self.device.stream);
        let src = &self.buffers[buf.0].as_ref().expect("the output is a buffer").bytes;
        let out = self.staging_out.as_mut().expect("allocated above");
        let src = src.slice(0..len * 4);
        // SAFETY: the output buffer holds fp32 values; the view reinterprets its bytes.
        let src = unsafe { src.transmute::<f32>(len) }.ok_or_else(|| GpuError("the output is too short".into()))?;
        // Exactly `len` values: cudarc copies as many bytes as the destination holds, and
        // the staging buffer may be longer than this batch's answer.
        let dst = &mut out.as_mut_slice().map_err(gpu("map pinned output"))?[..len];
        stream.memcpy_dtoh(&src, dst).map_err(gpu("copy the answer back"))?;
        let (started, ended) = self.events.as_ref().expect("made above");
        ended.record(&stream).map_err(gpu("record an event"))?;
        stream.synchronize().map_err(gpu("synchronize"))?;
        if let Ok(ms) = started.elapsed_ms(ended) {
            let took = std::time::Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3);
            self.card_time = Some(self.card_time.unwrap_or_default() + took);
        }
        Ok(dst.to_vec())
    }
}

/// The bytes of host data, as they are copied to the card.
fn bytes<'a>(data: &Host<'a>) -> &'a [u8] {
    match *data {
        Host::F32(v) => bytemuck::cast_slice(v),
        Host::I32(v) => bytemuck::cast_slice(v),
        Host::U16(v) => bytemuck::cast_slice(v),
    }
}

impl Executor for CudaExecutor {
    fn upload(&mut self, buf: Buf, data: Host<'_>) -> Result<(), GpuError> {
        let bytes = bytes(&data);
        let copy = self.device.stream.clone_htod(bytes).map_err(gpu("upload weights"))?;
        *self.slot(buf) = Some(DeviceBuf {
            len: bytes.len(),
            bytes: copy,
        });
        Ok(())
    }

    fn use_tf32(&mut self) -> Result<(), GpuError> {
        self.compute = cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32;
        Ok(())
    }

    fn run(&mut self, plan: &Plan, inputs: &[Host<'_>]) -> Result<Vec<f32>, GpuError> {
        // cudarc panics on a missing library symbol and on some failed frees: a panic here
        // is a failed batch, never the end of the replica's thread.
        let result = catch_unwind(std::panic::AssertUnwindSafe(|| self.run_inner(plan, inputs)))
            .unwrap_or_else(|_| Err(GpuError("cudarc panicked running a batch".into())));
        if result.is_err() {
            // A failed batch may leave copies and kernels queued on the staging and scratch
            // buffers (a successful one ends synchronized): let them finish before the next
            // batch reuses or grows the buffers.
            let _ = self.device.stream.synchronize();
        }
        result
    }
}
