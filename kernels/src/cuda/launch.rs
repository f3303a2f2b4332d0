//! Launch configurations, computed in one place for the GPU and for its CPU mirror, and
//! the limits of the architectures Prism is built for, to check them against.

use cudarc::driver::LaunchConfig;

use super::source::Kernel;

/// One thread per element (or per row, for the kernels that loop over a row): blocks of
/// the kernel's own size.
pub fn elements(kernel: Kernel, n: usize) -> LaunchConfig {
    let block = kernel.block();
    LaunchConfig {
        grid_dim: (
            (n.max(1) as u64).div_ceil(block as u64).min(u32::MAX as u64) as u32,
            1,
            1,
        ),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row.
pub fn row_blocks(kernel: Kernel, rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1).min(u32::MAX as usize) as u32, 1, 1),
        block_dim: (kernel.block(), 1, 1),
        shared_mem_bytes: 0,
    }
}

/// What a kernel of an architecture may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Compute capability, 80 for `sm_80`.
    pub arch: u32,
    pub max_threads_per_block: u32,
    pub max_grid: (u32, u32, u32),
    /// Static plus dynamic shared memory a block may have without opting in.
    pub max_shared_per_block: u32,
    pub registers_per_block: u32,
    pub max_registers_per_thread: u32,
}

/// A100 (`sm_80`) and H100 / H200 (`sm_90`), from the CUDA programming guide's table of
/// compute capabilities.
pub const ARCHITECTURES: [Limits; 2] = [
    Limits {
        arch: 80,
        max_threads_per_block: 1024,
        max_grid: (i32::MAX as u32, 65535, 65535),
        max_shared_per_block: 48 << 10,
        registers_per_block: 64 << 10,
        max_registers_per_thread: 255,
    },
    Limits {
        arch: 90,
        max_threads_per_block: 1024,
        max_grid: (i32::MAX as u32, 65535, 65535),
        max_shared_per_block: 48 << 10,
        registers_per_block: 64 << 10,
        max_registers_per_thread: 255,
    },
];

/// What a compiled kernel uses, as its CUBIN records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub registers: u32,
    pub static_shared: u32,
}

impl Limits {
    /// Whether `cfg` may launch `kernel` (using `usage`) on this architecture; the reason
    /// if not.
    pub fn check(&self, kernel: Kernel, cfg: &LaunchConfig, usage: Usage) -> Result<(), String> {
        let (bx, by, bz) = cfg.block_dim;
        let threads = bx * by * bz;
        let fail = |what: String| Err(format!("{} on sm_{}: {what}", kernel.name(), self.arch));
        if threads == 0 || threads > self.max_threads_per_block {
            return fail(format!(
                "{threads} threads a block (at most {})",
                self.max_threads_per_block
            ));
        }
        if threads != kernel.block() {
            return fail(format!(
                "{threads} threads a block, but its __launch_bounds__ is {}",
                kernel.block()
            ));
        }
        let (gx, gy, gz) = cfg.grid_dim;
        let (mx, my, mz) = self.max_grid;
        if gx == 0 || gx > mx || gy == 0 || gy > my || gz == 0 || gz > mz {
            return fail(format!("grid {:?} (at most {:?})", cfg.grid_dim, self.max_grid));
        }
        let shared = usage.static_shared + cfg.shared_mem_bytes;
        if shared > self.max_shared_per_block {
            return fail(format!(
                "{shared} bytes of shared memory a block (at most {})",
                self.max_shared_per_block
            ));
        }
        if usage.registers > self.max_registers_per_thread || usage.registers * threads > self.registers_per_block {
            return fail(format!(
                "{} registers a thread × {threads} threads (at most {} a block)",
                usage.registers, self.registers_per_block
            ));
        }
        Ok(())
    }
}
