//! A GEMM for fixed weights on AVX-512 CPUs: `y[m, n] = x[m, k] · W[k, n] + b`, with `W`
//! packed once, at load, into panels of 32 columns (two 512-bit vectors) laid out k-major,
//! so the inner loop streams one panel while a block of rows of `x` is broadcast into it.
//!
//! The `gemm` crate's AVX-512 kernels need a nightly compiler, so on stable it runs AVX2;
//! on a CPU with AVX-512 this kernel does twice the work per instruction. Where the CPU has
//! no AVX-512 (checked once, at run time) [`PackedWeight::matmul`] runs [`ops::matmul`]
//! over the unpacked weight instead, so every machine gets the same answers to rounding.

use std::sync::OnceLock;

use ndarray::{Array2, ArrayView2};

use crate::device::CpuDevice;
use crate::ops;

/// Columns of one panel: two vectors of 16 `f32`.
const NR: usize = 32;
/// Rows of `x` one kernel call holds: 12 × 2 accumulators of the 32 vector registers.
const MR: usize = 12;
/// Depth of one pass over a panel: 256 × 32 × 4 bytes = 32 KiB, the size of an L1 cache.
const KC: usize = 256;

/// Whether this CPU runs the AVX-512 kernel (checked once).
pub fn avx512() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A weight `W[k, n]` in the layout its GEMM reads.
pub struct PackedWeight {
    k: usize,
    n: usize,
    /// With AVX-512: `ceil(n / 32)` panels, each `k × 32` (zero past `n`). Without: `W`
    /// itself, `[k, n]` row-major, for [`ops::matmul`].
    values: Vec<f32>,
    packed: bool,
}

impl PackedWeight {
    /// Packs `w`, `[k, n]` row-major (`[in, out]`, as [`ops::matmul`] takes it).
    pub fn pack(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "pack: length and shape disagree. This is a bug.");
        if !avx512() {
            return PackedWeight {
                k,
                n,
                values: w.to_vec(),
                packed: false,
            };
        }
        let panels = n.div_ceil(NR);
        let mut values = vec![0.0; panels * k * NR];
        for p in 0..panels {
            let cols = NR.min(n - p * NR);
            let panel = &mut values[p * k * NR..(p + 1) * k * NR];
            for kk in 0..k {
                panel[kk * NR..kk * NR + cols].copy_from_slice(&w[kk * n + p * NR..kk * n + p * NR + cols]);
            }
        }
        PackedWeight {
            k,
            n,
            values,
            packed: true,
        }
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    pub fn bytes(&self) -> usize {
        self.values.len() * 4
    }

    /// `x · W + bias`, `x` of `k` columns; the bands of panels split across the device's
    /// threads.
    pub fn matmul(&self, device: &CpuDevice, x: ArrayView2<'_, f32>, bias: Option<&[f32]>) -> Array2<f32> {
        assert_eq!(
            x.ncols(),
            self.k,
            "packed matmul: x has the wrong width. This is a bug."
        );
        if let Some(b) = bias {
            assert_eq!(
                b.len(),
                self.n,
                "packed matmul: the bias has the wrong length. This is a bug."
            );
        }
        if !self.packed {
            return ops::matmul(device, x, &self.values, self.n, bias).expect("shapes checked above");
        }
        let x = x.as_standard_layout();
        let m = x.nrows();
        let mut y = Array2::<f32>::zeros((m, self.n));
        if m == 0 || self.n == 0 {
            return y;
        }
        let a = x.as_slice().expect("standard layout");
        let c = y.as_mut_ptr() as usize;
        let panels = self.n.div_ceil(NR);
        let threads = device.threads().min(panels);
        let run = |first: usize, last: usize| {
            // SAFETY: each call writes only the columns of panels `first..last` of `y`
            // (m × n, row-major), and concurrent calls take disjoint panels; `y`, `a` and
            // the panels outlive the calls (the scope joins first). The pointer travels as
            // `usize` only to cross into the pool's threads.
            unsafe { self.panels(a, m, c as *mut f32, bias, first, last) }
        };
        if threads <= 1 || m * self.n * self.k < 1 << 18 {
            run(0, panels);
        } else {
            let per = panels.div_ceil(threads);
            device.install(|| {
                rayon::scope(|s| {
                    for first in (0..panels).step_by(per) {
                        let last = (first + per).min(panels);
                        s.spawn(move |_| run(first, last));
                    }
                })
            });
        }
        y
    }

    /// Panels `first..last` of `y = a · W + bias`.
    ///
    /// # Safety
    /// `a` is m × k row-major, `c` points to m × n writable `f32`s, and no other thread
    /// writes the columns of these panels meanwhile.
    unsafe fn panels(&self, a: &[f32], m: usize, c: *mut f32, bias: Option<&[f32]>, first: usize, last: usize) {
        let (k, n) = (self.k, self.n);
        // A block of rows of `a`, packed k-major (`block[kk · MR + r]`) so the kernel reads
        // it in one stream; reused for every panel of this band. (Measured against the
        // other order, panels outer with every block streamed past each: 344 against 313
        // sentences/s on all-MiniLM-L6-v2 at 16 words, 49.6 against 44.8 at 100.)
        let mut block = vec![0.0f32; KC * MR];
        for kb in (0..k).step_by(KC) {
            let kc = KC.min(k - kb);
            for mb in (0..m).step_by(MR) {
                let rows = MR.min(m - mb);
                for r in 0..rows {
                    let src = &a[(mb + r) * k + kb..(mb + r) * k + kb + kc];
                    for (kk, &v) in src.iter().enumerate() {
                        block[kk * MR + r] = v;
                    }
                }
                for p in first..last {
                    let cols = NR.min(n - p * NR);
                    let panel = &self.values[p * k * NR + kb * NR..];
                    let bias = if kb == 0 {
                        bias.map(|b| &b[p * NR..p * NR + cols])
                    } else {
                        None
                    };
                    // SAFETY: rows `mb..mb + rows` and columns `p·32 .. p·32 + cols` lie
                    // inside `c` (the caller's contract); the block holds `kc` steps of
                    // `MR` values and the panel `kc` rows of 32 from `kb`.
                    unsafe {
                        kernel(
                            rows,
                            kc,
                            block.as_ptr(),
                            panel.as_ptr(),
                            c.add(mb * n + p * NR),
                            n,
                            cols,
                            kb == 0,
                            bias,
                        );
                    }
                }
            }
        }
    }
}

/// `c[rows, cols] (=|+=) a[rows, kc] · panel[kc, 32] (+ bias)`, `a` packed k-major.
///
/// # Safety
/// AVX-512F is available; `a` has `kc` steps of `MR` values (the first `rows` used);
/// `panel` has `kc` rows of 32; `c` has `rows` rows of `cols` (≤ 32) writable values at
/// stride `ldc`.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    rows: usize,
    kc: usize,
    a: *const f32,
    panel: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    first: bool,
    bias: Option<&[f32]>,
) {
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match rows {
                // SAFETY: as this function's contract.
                $($r => unsafe { avx512::kernel::<$r>(kc, a, panel, c, ldc, cols, first, bias) },)*
                _ => unreachable!("a block has 1 to {MR} rows. This is a bug."),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The `R`-row kernel: `R × 2` accumulators held in registers over the whole depth.
    ///
    /// # Safety
    /// As [`super::kernel`], with `R` rows.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel<const R: usize>(
        kc: usize,
        a: *const f32,
        panel: *const f32,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        first: bool,
        bias: Option<&[f32]>,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for kk in 0..kc {
            // SAFETY: `kk < kc`: inside the panel's rows and each row of `a`.
            unsafe {
                let b0 = _mm512_loadu_ps(panel.add(kk * 32));
                let b1 = _mm512_loadu_ps(panel.add(kk * 32 + 16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(kk * super::MR + r));
                    acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                }
            }
        }
        let lo: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            ((1u32 << cols) - 1) as u16
        };
        let hi: __mmask16 = if cols >= 32 {
            0xffff
        } else if cols > 16 {
            ((1u32 << (cols - 16)) - 1) as u16
        } else {
            0
        };
        // SAFETY: the bias has `cols` values; masked loads read no lane past them.
        let (bias_lo, bias_hi) = match bias {
            Some(b) => unsafe {
                (
                    _mm512_maskz_loadu_ps(lo, b.as_ptr()),
                    // The upper half's address may lie past a short bias: formed with
                    // wrapping arithmetic, and read only in the lanes `hi` allows.
                    _mm512_maskz_loadu_ps(hi, b.as_ptr().wrapping_add(16)),
                )
            },
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row `r < R` of `c`, its first `cols` values (masked past them).
            unsafe {
                let row = c.add(r * ldc);
                let (mut v0, mut v1) = (acc[0], acc[1]);
                if first {
                    v0 = _mm512_add_ps(v0, bias_lo);
                    v1 = _mm512_add_ps(v1, bias_hi);
                } else {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(lo, row));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(hi, row.wrapping_add(16)));
                }
                _mm512_mask_storeu_ps(row, lo, v0);
                // Past the row's end when `cols <= 16`: then `hi` is empty and nothing is
                // written.
                _mm512_mask_storeu_ps(row.wrapping_add(16), hi, v1);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel<const R: usize>(
        _: usize,
        _: *const f32,
        _: *const f32,
        _: *mut f32,
        _: usize,
        _: usize,
        _: bool,
        _: Option<&[f32]>,
    ) {
        unreachable!("weights are packed only where AVX-512 runs. This is a bug.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::uniform;

    fn check(threads: usize, m: usize, k: usize, n: usize, bias: bool) {
        let device = CpuDevice::new(threads).unwrap();
        let x = uniform(m * k, 1);
        let w = uniform(k * n, 2);
        let b = uniform(n, 3);
        let xv = ArrayView2::from_shape((m, k), &x).unwrap();
        let packed = PackedWeight::pack(&w, k, n);
        let got = packed.matmul(&device, xv, bias.then_some(&b[..]));
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[p * n + j] as f64).sum::<f64>()
                    + if bias { b[j] as f64 } else { 0.0 };
                let g = got[[i, j]] as f64;
                assert!(
                    (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{m}x{k}x{n} [{i}, {j}] on {threads} thread(s): {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn matches_float64_on_edges_of_every_block() {
        // Rows and columns off the block sizes, depths across KC.
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 384, 1152),
            (13, 300, 33),
            (12, 256, 32),
            (25, 513, 70),
            (7, 40, 17),
            (64, 128, 96),
        ] {
            check(1, m, k, n, true);
            check(2, m, k, n, false);
        }
    }

    #[test]
    fn equals_the_unpacked_gemm_to_rounding() {
        let device = CpuDevice::new(2).unwrap();
        let (m, k, n) = (40, 384, 1536);
        let x = uniform(m * k, 7);
        let w = uniform(k * n, 8);
        let b = uniform(n, 9);
        let xv = ArrayView2::from_shape((m, k), &x).unwrap();
        let packed = PackedWeight::pack(&w, k, n).matmul(&device, xv, Some(&b));
        let plain = ops::matmul(&device, xv, &w, n, Some(&b)).unwrap();
        let d = packed
            .iter()
            .zip(plain.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-4, "{d}");
    }
}
