//! Times Prism's CPU `linear` as a model runs it (`y = x·Wᵀ + b`, weights given in
//! `nn.Linear` layout and repacked at load) over the
//! serving shapes and prints one JSON line per shape: GFLOP/s, median and spread over
//! repeated runs. `benches/gemm_vs_numpy.sh` runs this and numpy in the same go.
//!
//! Usage: `gemm [THREADS] [SECONDS_PER_SHAPE]`.

use std::time::{Duration, Instant};

use ndarray::ArrayView2;
use prism_benches::{LINEAR_SHAPES, values};
use prism_kernels::{CpuDevice, ops};

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(2, |a| a.parse().expect("THREADS is a number"));
    let budget = Duration::from_secs_f64(args.next().map_or(1.0, |a| a.parse().expect("SECONDS is a number")));
    let device = CpuDevice::new(threads).expect("a thread pool");
    for &(m, k, n) in LINEAR_SHAPES {
        let x = values(m * k, 1);
        // `nn.Linear` layout [out, in], repacked once as a model does at load; a model
        // runs a lone row over the original layout.
        let w_rows = values(n * k, 2);
        let w = ops::transpose(&w_rows, n, k);
        let b = values(n, 3);
        let xv = ArrayView2::from_shape((m, k), &x).expect("shape");
        let flops = 2.0 * (m * n * k) as f64;
        let run = || {
            let y = if m == 1 {
                ops::linear(&device, xv, &w_rows, n, Some(&b))
            } else {
                ops::matmul(&device, xv, &w, n, Some(&b))
            };
            std::hint::black_box(y.expect("linear"))
        };
        run();
        // Repetitions per sample so a sample lasts ~10 ms; samples until the budget is spent.
        let t = Instant::now();
        run();
        let once = t.elapsed().as_secs_f64().max(1e-7);
        let reps = ((0.01 / once).ceil() as usize).max(1);
        let mut samples = Vec::new();
        let start = Instant::now();
        while samples.len() < 5 || (start.elapsed() < budget && samples.len() < 200) {
            let t = Instant::now();
            for _ in 0..reps {
                run();
            }
            samples.push(flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        samples.sort_by(f64::total_cmp);
        let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        println!(
            "{{\"impl\":\"prism\",\"threads\":{threads},\"m\":{m},\"k\":{k},\"n\":{n},\"gflops_median\":{:.2},\"gflops_p10\":{:.2},\"gflops_p90\":{:.2},\"samples\":{}}}",
            q(0.5),
            q(0.1),
            q(0.9),
            samples.len()
        );
    }
}
