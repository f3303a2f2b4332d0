//! CPU ops over `[batch, features]` matrices.
//!
//! `linear` and `matmul` go through `gemm` on raw row-major slices, so a weight stored in
//! PyTorch's `nn.Linear` layout (`[out, in]`) is used in place, transposed by strides,
//! never copied. The element-wise ops work in place on their input.

use ndarray::{Array, Array2, ArrayView2, Axis, Dimension};

use crate::device::CpuDevice;
use crate::error::KernelError;

/// Below this many multiply-adds a GEMM runs on one thread: waking a pool costs more than
/// it saves (a batch-1 GEMV of the default MLP is ~200k).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Up to this many rows, a parallel GEMM splits the output's columns between threads.
const SKINNY_ROWS: usize = 128;

/// `y = x · wᵀ + b` with `w` in `[out, in]` layout (PyTorch `nn.Linear`).
pub fn linear(
    device: &CpuDevice,
    x: ArrayView2<'_, f32>,
    weight: &[f32],
    out_features: usize,
    bias: Option<&[f32]>,
) -> Result<Array2<f32>, KernelError> {
    let k = x.ncols();
    check_len("linear", out_features * k, weight.len())?;
    // wᵀ is [k, n]: element (depth d, column c) is w[c * k + d].
    gemm_into(device, x, weight, out_features, (1, k as isize), bias)
}

/// `y = x · w (+ b)` with `w` in `[in, out]` layout (numpy / scikit-learn `coefs_`).
///
/// This is the layout `gemm` streams fastest for serving batches: measured here against
/// `linear`'s `[out, in]` on 784→256, 2.3× at batch 8 and 1.3× at batch 32 on one thread
/// (see `benches/gemm_vs_numpy.sh`), so models repack `linear` weights into it at load.
pub fn matmul(
    device: &CpuDevice,
    x: ArrayView2<'_, f32>,
    weight: &[f32],
    out_features: usize,
    bias: Option<&[f32]>,
) -> Result<Array2<f32>, KernelError> {
    let k = x.ncols();
    check_len("matmul", out_features * k, weight.len())?;
    gemm_into(device, x, weight, out_features, (out_features as isize, 1), bias)
}

/// `w` (`[rows, cols]`, row-major) transposed into `[cols, rows]`.
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        rows * cols,
        "transpose: length and shape disagree. This is a bug."
    );
    let view = ArrayView2::from_shape((rows, cols), w).expect("length checked above");
    view.t().as_standard_layout().into_owned().into_raw_vec_and_offset().0
}

fn check_len(op: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Shape { op, expected, got })
    }
}

/// `dst[m, n] = x[m, k] · rhs[k, n] (+ bias)`, where `rhs_strides` = (row stride, column
/// stride) of `rhs` in elements.
fn gemm_into(
    device: &CpuDevice,
    x: ArrayView2<'_, f32>,
    rhs: &[f32],
    n: usize,
    (rhs_rs, rhs_cs): (isize, isize),
    bias: Option<&[f32]>,
) -> Result<Array2<f32>, KernelError> {
    let x = x.as_standard_layout();
    let (m, k) = x.dim();
    let mut dst = match bias {
        Some(b) => {
            check_len("bias", n, b.len())?;
            let row = ArrayView2::from_shape((1, n), b).expect("length checked above");
            row.broadcast((m, n))
                .expect("a [1, n] row broadcasts to [m, n]")
                .to_owned()
        }
        None => Array2::zeros((m, n)),
    };
    if m == 0 || n == 0 {
        return Ok(dst);
    }
    let parallel = m * n * k >= PARALLEL_MIN_MACS && device.threads() > 1;
    let lhs = x.as_slice().expect("standard layout is contiguous");
    let dst_slice = dst.as_slice_mut().expect("a fresh array is contiguous");
    let (lhs_ptr, rhs_ptr, dst_ptr) = (
        lhs.as_ptr() as usize,
        rhs.as_ptr() as usize,
        dst_slice.as_mut_ptr() as usize,
    );
    let read_dst = bias.is_some();
    let run = |col0: usize, cols: usize, parallelism| {
        // SAFETY: `lhs` is m×k row-major (k = columns), `rhs` holds k·n elements addressed
        // by the caller-checked strides, and `dst` is m×n row-major; columns
        // `col0..col0 + cols` lie inside both, and concurrent calls take disjoint column
        // bands, so no element of `dst` is written twice. All three buffers outlive the
        // calls (the scope joins before `dst` is returned). Pointers travel as `usize`
        // only to cross into the pool's threads.
        unsafe {
            gemm::gemm(
                m,
                cols,
                k,
                (dst_ptr as *mut f32).add(col0),
                1,
                n as isize,
                read_dst,
                lhs_ptr as *const f32,
                1,
                k as isize,
                (rhs_ptr as *const f32).offset(col0 as isize * rhs_cs),
                rhs_cs,
                rhs_rs,
                if read_dst { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        }
    };
    let threads = device.threads();
    if !parallel {
        // Small products run on the calling thread: a hop into the pool costs more.
        run(0, n, gemm::Parallelism::None);
    } else if m <= SKINNY_ROWS && n >= threads * 64 {
        // Few rows: each thread takes a band of output columns (and so its own slice of
        // the weights), which splits the work better than gemm's own scheme here
        // (measured on 64×1024×1024 with 2 threads: 104 → 160 GFLOP/s, against numpy's
        // 132; benches/gemm_vs_numpy.sh).
        let band = n.div_ceil(threads).next_multiple_of(16);
        device.install(|| {
            rayon::scope(|scope| {
                for col0 in (0..n).step_by(band) {
                    let cols = band.min(n - col0);
                    scope.spawn(move |_| run(col0, cols, gemm::Parallelism::None));
                }
            })
        });
    } else {
        // Inside the replica's own pool, so gemm's rayon work lands on its threads.
        device.install(|| run(0, n, device.parallelism()));
    }
    Ok(dst)
}

/// `x += t`, with `t` one value per column, broadcast over the rows.
pub fn add_row(x: &mut Array2<f32>, t: &[f32]) -> Result<(), KernelError> {
    check_len("add", x.ncols(), t.len())?;
    let row = ArrayView2::from_shape((1, t.len()), t).expect("length checked above");
    *x += &row;
    Ok(())
}

pub fn relu<D: Dimension>(x: &mut Array<f32, D>) {
    x.mapv_inplace(|v| v.max(0.0));
}

pub fn sigmoid<D: Dimension>(x: &mut Array<f32, D>) {
    x.mapv_inplace(|v| 1.0 / (1.0 + (-v).exp()));
}

pub fn tanh<D: Dimension>(x: &mut Array<f32, D>) {
    x.mapv_inplace(f32::tanh);
}

/// GELU as PyTorch's `nn.GELU()`: exact (`erf`) by default, or its `tanh` approximation.
pub fn gelu(x: &mut Array2<f32>, tanh_approximation: bool) {
    match x.as_slice_mut() {
        Some(values) => gelu_slice(values, tanh_approximation),
        None => x.mapv_inplace(|v| gelu_one(v, tanh_approximation)),
    }
}

/// [`gelu`] over a slice of values.
pub fn gelu_slice(values: &mut [f32], tanh_approximation: bool) {
    if tanh_approximation {
        values.iter_mut().for_each(|v| *v = gelu_one(*v, true));
    } else {
        // Branch-free, so the compiler runs it lanes at a time.
        values
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2)));
    }
}

fn gelu_one(v: f32, tanh_approximation: bool) -> f32 {
    if tanh_approximation {
        const C: f32 = 0.797_884_6; // sqrt(2 / pi)
        0.5 * v * (1.0 + (C * (v + 0.044_715 * v * v * v)).tanh())
    } else {
        0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
    }
}

/// The error function in single precision, as a rational function of `x` (odd degree-13
/// numerator over even degree-8 denominator) on `[-4, 4]`, where `erf` reaches ±1 in
/// f32: the approximation Eigen and XLA use. Within a few ulp of `libm::erff` (tested),
/// and without branches or calls.
#[inline]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

/// Softmax over the last axis (each row of a matrix), shifted by the lane's maximum so
/// large logits cannot overflow.
pub fn softmax<D: Dimension>(x: &mut Array<f32, D>) {
    let Some(last) = x.ndim().checked_sub(1) else {
        return;
    };
    for mut lane in x.lanes_mut(Axis(last)) {
        let max = lane.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        lane.mapv_inplace(|v| (v - max).exp());
        let sum = lane.sum();
        lane.mapv_inplace(|v| v / sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::uniform;
    use ndarray::array;

    #[test]
    fn erf_agrees_with_libm_to_a_few_ulp() {
        // Against the float64 erf: the largest error relative to the value, and (where the
        // value is near ±1) the absolute error, beside libm's own erff.
        let (mut rel, mut abs, mut libm_abs) = (0.0f64, 0.0f64, 0.0f64);
        for i in -120_000..=120_000 {
            let x = i as f32 * 5e-5;
            let want = libm::erf(x as f64);
            let err = (erf(x) as f64 - want).abs();
            abs = abs.max(err);
            libm_abs = libm_abs.max((libm::erff(x) as f64 - want).abs());
            if x.abs() < 2.0 {
                rel = rel.max(err / want.abs().max(1e-30));
            }
        }
        assert!(rel < 4e-7, "erf is off by {rel:.2e} of the value below |x| = 2");
        assert!(abs < 6e-7, "erf is off by {abs:.2e}; libm's erff by {libm_abs:.2e}");
        assert!((erf(10.0) - 1.0).abs() < 2e-7 && (erf(-10.0) + 1.0).abs() < 2e-7 && erf(0.0) == 0.0);
    }

    fn reference_matmul(x: &[f64], w: &[f64], m: usize, k: usize, n: usize, transposed: bool) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|d| x[i * k + d] * if transposed { w[j * k + d] } else { w[d * n + j] })
                    .sum();
            }
        }
        out
    }

    fn check_gemm(threads: usize, m: usize, k: usize, n: usize) {
        let device = CpuDevice::new(threads).unwrap();
        let x = uniform(m * k, 1);
        let w = uniform(n * k, 2);
        let b = uniform(n, 3);
        let xv = ArrayView2::from_shape((m, k), &x).unwrap();
        let to64 = |v: &[f32]| v.iter().map(|&f| f as f64).collect::<Vec<_>>();

        let y = linear(&device, xv, &w, n, Some(&b)).unwrap();
        let expect = reference_matmul(&to64(&x), &to64(&w), m, k, n, true);
        for (i, (got, want)) in y.iter().zip(&expect).enumerate() {
            let want = want + b[i % n] as f64;
            assert!(
                (*got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                "linear {m}x{k}x{n} [{i}]: {got} vs {want}"
            );
        }
        let y = matmul(&device, xv, &w, n, None).unwrap();
        let expect = reference_matmul(&to64(&x), &to64(&w), m, k, n, false);
        for (got, want) in y.iter().zip(&expect) {
            assert!((*got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()));
        }
    }

    #[test]
    fn gemm_matches_float64_reference_on_serving_shapes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 784, 256),
            (7, 33, 5),
            (32, 784, 256),
            (64, 128, 96),
            (40, 256, 300),
        ] {
            check_gemm(1, m, k, n);
            check_gemm(2, m, k, n);
        }
    }

    #[test]
    fn matmul_over_a_transposed_weight_equals_linear() {
        let device = CpuDevice::new(1).unwrap();
        let (m, k, n) = (5, 9, 4);
        let x = uniform(m * k, 4);
        let w = uniform(n * k, 5);
        let b = uniform(n, 6);
        let xv = ArrayView2::from_shape((m, k), &x).unwrap();
        let a = linear(&device, xv, &w, n, Some(&b)).unwrap();
        let c = matmul(&device, xv, &transpose(&w, n, k), n, Some(&b)).unwrap();
        for (p, q) in a.iter().zip(c.iter()) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }

    #[test]
    fn wrong_weight_length_is_an_error_not_a_panic() {
        let device = CpuDevice::new(1).unwrap();
        let x = Array2::<f32>::zeros((2, 3));
        let err = linear(&device, x.view(), &[0.0; 5], 2, None).unwrap_err();
        assert!(err.to_string().contains("expected 6"), "{err}");
    }

    #[test]
    fn activations_match_their_definitions() {
        let mut x = array![[-2.0f32, 0.0, 3.0]];
        relu(&mut x);
        assert_eq!(x, array![[0.0, 0.0, 3.0]]);

        let mut x = array![[0.0f32, 1.0]];
        sigmoid(&mut x);
        assert!((x[[0, 0]] - 0.5).abs() < 1e-7 && (x[[0, 1]] - 0.731_058_6).abs() < 1e-6);

        // torch.nn.GELU()(torch.tensor([1.0, -0.5])) and approximate="tanh"
        let mut x = array![[1.0f32, -0.5]];
        gelu(&mut x, false);
        assert!((x[[0, 0]] - 0.841_344_7).abs() < 1e-6 && (x[[0, 1]] + 0.154_268_6).abs() < 1e-6);
        let mut x = array![[1.0f32]];
        gelu(&mut x, true);
        assert!((x[[0, 0]] - 0.841_192).abs() < 1e-6);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_logits() {
        let mut x = array![[1000.0f32, 1000.0], [0.0, (2.0f32).ln()]];
        softmax(&mut x);
        assert_eq!(x.row(0).to_vec(), vec![0.5, 0.5]);
        assert!((x[[1, 1]] - 2.0 / 3.0).abs() < 1e-6);
    }
}
