//! Criterion benches of the CPU kernels: `linear` over the serving shapes, reported as
//! throughput in FLOP (criterion's "elements" are multiply-adds × 2).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::ArrayView2;
use prism_benches::{LINEAR_SHAPES, values};
use prism_kernels::{CpuDevice, builtin, ops};

fn linear(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    for threads in [1, 2] {
        let device = CpuDevice::new(threads).expect("thread pool");
        for &(m, k, n) in LINEAR_SHAPES.iter().filter(|s| s.0 * s.1 * s.2 <= 1 << 28) {
            let x = values(m * k, 1);
            // `nn.Linear` layout [out, in], repacked once as a model does at load.
            let w = ops::transpose(&values(n * k, 2), n, k);
            let b = values(n, 3);
            let xv = ArrayView2::from_shape((m, k), &x).expect("shape");
            group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{threads}t"), format!("{m}x{k}x{n}")),
                &(),
                |bench, _| bench.iter(|| ops::matmul(&device, xv, &w, n, Some(&b)).expect("linear")),
            );
        }
    }
    group.finish();
}

fn mlp(c: &mut Criterion) {
    let model = builtin::mlp();
    let device = CpuDevice::new(1).expect("device");
    let mut group = c.benchmark_group("mlp_forward");
    for batch in [1usize, 8, 32] {
        let x = ndarray::Array2::from_shape_vec((batch, 784), values(batch * 784, 4)).expect("shape");
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &(), |bench, _| {
            bench.iter(|| model.forward(&device, x.view()).expect("forward"))
        });
    }
    group.finish();
}

criterion_group!(benches, linear, mlp);
criterion_main!(benches);
