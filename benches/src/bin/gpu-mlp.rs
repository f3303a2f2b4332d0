//! The default MLP on a GPU: throughput at batch 1, 32, 256 and 1024, in fp32 and bf16
//! (and tf32, fp16), and its relative error against the CPU path on the same random
//! inputs. Prints one line per precision and batch size; `scripts/gpu-check` puts them
//! beside PyTorch's.

use std::time::Duration;

use prism_kernels::cuda::{CudaDevice, GpuModel, Precision};
use prism_kernels::testing::{relative_error, uniform};
use prism_kernels::{CpuDevice, builtin};

fn main() {
    prism_benches::require_gpu();
    let model = builtin::mlp();
    let cpu = CpuDevice::new(1).expect("a CPU device");
    println!(
        "{:<10}{:<8}{:>14}{:>14}{:>16}",
        "precision", "batch", "rows/s", "ms/batch", "rel. error"
    );
    for precision in [Precision::Fp32, Precision::Tf32, Precision::Bf16, Precision::Fp16] {
        let device = CudaDevice::new(0).expect("open GPU 0");
        let mut gpu = GpuModel::upload(&model, device, precision).expect("upload the MLP");
        run(&model, &cpu, &mut gpu, precision);
    }
}

fn run(model: &prism_kernels::Model, cpu: &CpuDevice, gpu: &mut GpuModel, precision: Precision) {
    for rows in [1usize, 32, 256, 1024] {
        let features = model.in_features();
        let x = uniform(rows * features, rows as u64)
            .into_iter()
            .map(f32::abs)
            .collect::<Vec<_>>();
        let want = model
            .forward(
                cpu,
                ndarray::ArrayView2::from_shape((rows, features), &x).expect("shape"),
            )
            .expect("CPU forward");
        let got = gpu.forward(&x, rows).expect("GPU forward");
        let err = relative_error(&got, want.as_slice().expect("a fresh array is contiguous"));
        let (n, secs) = prism_benches::time_for(20, Duration::from_secs(1), || {
            gpu.forward(&x, rows).expect("GPU forward");
        });
        println!(
            "{precision:<10}{rows:<8}{:>14.0}{:>14.3}{:>16.2e}",
            (n * rows) as f64 / secs,
            secs * 1e3 / n as f64,
            err
        );
    }
}
