//! The CUDA backend: cuBLAS for the GEMMs, NVRTC kernels for everything else, page-locked
//! staging for every batch.
//!
//! A model's forward pass on a card is a [`plan::Plan`] — kernel launches and GEMMs over
//! numbered buffers — that [`exec::CudaExecutor`] runs on the card and [`mirror::Mirror`]
//! runs on the CPU with the same index arithmetic, so every plan and kernel is tested
//! where there is no card ([`source`] has the kernels, [`launch`] their grids and the
//! architectures' limits).
//!
//! cudarc loads the CUDA libraries at run time and *panics* on first use when one is
//! missing, so [`probe`] checks each library (driver, NVRTC, cuBLAS) before anything else
//! touches them, and [`CudaDevice::new`] runs behind `catch_unwind` as well. Every CUDA
//! failure becomes a [`GpuError`], a system failure the caller may retry elsewhere.

use std::panic::catch_unwind;
use std::sync::Arc;

use cudarc::driver::{CudaContext, PinnedHostSlice};

pub mod encoder;
pub mod exec;
pub mod launch;
pub mod mirror;
pub mod model;
pub mod plan;
pub mod source;

pub use encoder::GpuEncoder;
pub use exec::{CudaDevice, CudaExecutor};
pub use model::GpuModel;

/// A CUDA failure: a system failure, never a panic of the server.
#[derive(Debug, Clone, thiserror::Error)]
#[error("CUDA: {0}")]
pub struct GpuError(pub String);

pub(crate) fn gpu<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> GpuError {
    move |e| GpuError(format!("{what}: {e:?}"))
}

/// One CUDA library cudarc loads at run time, and whether (and from which file) it was
/// found under the names this build's cudarc features look for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    /// `driver`, `nvrtc` or `cublas`: the name cudarc looks for (`libnvrtc.so.13`, ...).
    pub name: &'static str,
    /// The file loaded, as the process maps it; `None` when none of the names was found.
    pub file: Option<String>,
}

/// The three libraries the GPU path needs, each looked up as cudarc would, and kept
/// loaded once found (so that its file can be named). Never panics.
pub fn libraries() -> Vec<Library> {
    // SAFETY: `is_culib_present` only tries to open a library; `culib` opens it for good
    // and is called only once it was found.
    let found = unsafe {
        [
            (
                "cuda",
                cudarc::driver::sys::is_culib_present() && catch_unwind(|| cudarc::driver::sys::culib()).is_ok(),
            ),
            (
                "nvrtc",
                cudarc::nvrtc::sys::is_culib_present() && catch_unwind(|| cudarc::nvrtc::sys::culib()).is_ok(),
            ),
            (
                "cublas",
                cudarc::cublas::sys::is_culib_present() && catch_unwind(|| cudarc::cublas::sys::culib()).is_ok(),
            ),
        ]
    };
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    found
        .into_iter()
        .map(|(name, present)| Library {
            name,
            file: present.then(|| {
                let stem = format!("/lib{name}.so");
                maps.lines()
                    .filter_map(|l| l.split_whitespace().nth(5))
                    .find(|path| path.contains(&stem))
                    .unwrap_or("(found; its file is not in /proc/self/maps)")
                    .to_owned()
            }),
        })
        .collect()
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
