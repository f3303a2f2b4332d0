//! Where a replica's kernels run.
//!
//! One [`Device`] value per replica (actor): the CPU with the replica's own intra-op
//! pool, or a CUDA card (see [`crate::cuda`]).

use std::sync::Arc;

use crate::error::KernelError;

/// A device that runs kernels.
#[derive(Clone, Debug)]
pub enum Device {
    Cpu(CpuDevice),
    /// A CUDA card by ordinal. The replica that gets it opens its own context, stream and
    /// cuBLAS handle on its own thread ([`crate::cuda::CudaDevice::new`]).
    Cuda {
        ordinal: usize,
    },
}

impl Device {
    /// A CPU device with `threads` physical intra-op threads (at least 1).
    pub fn cpu(threads: usize) -> Result<Self, KernelError> {
        Ok(Device::Cpu(CpuDevice::new(threads)?))
    }

    /// The place this device stands for, for labels and equality.
    pub fn location(&self) -> Location {
        match self {
            Device::Cpu(_) => Location::Cpu,
            Device::Cuda { ordinal } => Location::Cuda(*ordinal),
        }
    }
}

/// A `Copy + Hash` name for a device, used in labels, status pages and placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Cpu => f.write_str("cpu"),
            Location::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The CPU backend of one replica: its own pool of intra-op threads, so that replicas do
/// not fight over one global pool (the `threads` key of a deployment, like the seed's
/// `OMP_NUM_THREADS`). With one thread no pool is made and kernels run on the caller.
#[derive(Clone)]
pub struct CpuDevice {
    pool: Option<Arc<rayon::ThreadPool>>,
    threads: usize,
}

impl std::fmt::Debug for CpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuDevice").field("threads", &self.threads).finish()
    }
}

impl CpuDevice {
    pub fn new(threads: usize) -> Result<Self, KernelError> {
        let threads = threads.max(1);
        let pool = if threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("prism-intra-op-{i}"))
                .build()
                .map_err(|e| KernelError::ThreadPool {
                    threads,
                    reason: e.to_string(),
                })?;
            Some(Arc::new(pool))
        } else {
            None
        };
        Ok(CpuDevice { pool, threads })
    }

    /// One thread, the caller's: no pool, so it cannot fail.
    pub fn single() -> Self {
        CpuDevice { pool: None, threads: 1 }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` inside this device's thread pool (so `gemm`'s rayon work lands there).
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    pub(crate) fn parallelism(&self) -> gemm::Parallelism {
        if self.threads > 1 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        }
    }
}
