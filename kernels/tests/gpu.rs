//! The CUDA backend against the CPU path, on fresh random inputs. Runs for real where a
//! GPU and the CUDA libraries are found; elsewhere it says it was skipped.

use prism_kernels::cuda::{CudaDevice, GpuModel, Precision, probe};
use prism_kernels::testing::{relative_error, uniform};
use prism_kernels::{CpuDevice, Layer, Model, Weight, builtin};

/// Whether there is a GPU to test on. Without one the tests say they were skipped, unless
/// `PRISM_REQUIRE_GPU=1` (scripts/gpu-check sets it): then a missing GPU is a failure, so
/// a GPU run cannot pass by skipping.
fn gpu_available() -> bool {
    let why = match probe() {
        Ok(n) if n > 0 => return true,
        Ok(_) => "no CUDA device".to_owned(),
        Err(why) => why,
    };
    assert!(
        std::env::var("PRISM_REQUIRE_GPU").as_deref() != Ok("1"),
        "PRISM_REQUIRE_GPU=1, but no GPU can be used: {why}"
    );
    eprintln!("skipped: {why}");
    false
}

fn every_op_model() -> Model {
    let (i, h, o) = (48, 64, 12);
    let layers = vec![
        Layer::Linear {
            weight: Weight::from_vec(vec![h, i], uniform(h * i, 1)),
            bias: Some(Weight::from_vec(vec![h], uniform(h, 2))),
        },
        Layer::Gelu { tanh: false },
        Layer::Matmul {
            weight: Weight::from_vec(vec![h, h], uniform(h * h, 3)),
        },
        Layer::Add {
            tensor: Weight::from_vec(vec![h], uniform(h, 4)),
        },
        Layer::Tanh,
        Layer::Gelu { tanh: true },
        Layer::Linear {
            weight: Weight::from_vec(vec![o, h], uniform(o * h, 5)),
            bias: None,
        },
        Layer::Sigmoid,
        Layer::Relu,
        Layer::Softmax,
    ];
    Model::new(std::path::Path::new("test:every-op"), layers, i).unwrap()
}

/// The default MLP without its softmax: raw logits, so a GEMM error is not squashed by
/// a softmax into a small relative error.
fn mlp_logits() -> Model {
    let t = builtin::mlp_tensors();
    let w = |i: usize| Weight::from_vec(t[i].1.clone(), t[i].2.clone());
    let layers = vec![
        Layer::Linear {
            weight: w(0),
            bias: Some(w(1)),
        },
        Layer::Relu,
        Layer::Linear {
            weight: w(2),
            bias: Some(w(3)),
        },
    ];
    Model::new(std::path::Path::new("test:mlp-logits"), layers, 784).unwrap()
}

#[test]
fn gpu_models_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    let cpu = CpuDevice::new(1).unwrap();
    // The thresholds of scripts/gpu-check: ‖gpu − cpu‖ / ‖cpu‖ per precision.
    for (precision, tolerance) in [
        (Precision::Fp32, 1e-5),
        (Precision::Tf32, 1e-3),
        (Precision::Bf16, 1e-2),
        (Precision::Fp16, 1e-2),
    ] {
        for (name, model) in [
            ("mlp", builtin::mlp()),
            ("mlp-logits", mlp_logits()),
            ("celsius", builtin::celsius()),
            ("every-op", every_op_model()),
        ] {
            let device = CudaDevice::new(0).expect("open GPU 0");
            let mut gpu = GpuModel::upload(&model, device, precision).expect("upload");
            for rows in [1, 7, 32, 100] {
                let x = uniform(rows * model.in_features(), rows as u64 + 10);
                let view = ndarray::ArrayView2::from_shape((rows, model.in_features()), &x).unwrap();
                let want = model.forward(&cpu, view).unwrap();
                let got = gpu.forward(&x, rows).expect("forward");
                let err = relative_error(&got, want.as_slice().unwrap());
                eprintln!("{precision} {name} rows={rows}: relative error {err:.2e}");
                assert!(
                    err < tolerance,
                    "{precision} {name} rows={rows}: relative error {err:.2e}"
                );
            }
        }
    }
}

#[test]
fn pinned_host_memory_is_zeroed_writable_and_aligned() {
    if !gpu_available() {
        return;
    }
    let alloc = prism_kernels::cuda::PinnedAllocator::new(0).expect("a context on cuda:0");
    for len in [0, 1, 4096, 3 << 20] {
        let mut b = alloc.zeroed(len).expect("page-locked memory");
        assert_eq!(b.len(), len);
        assert!(b.iter().all(|&x| x == 0));
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        assert!(b.iter().enumerate().all(|(i, &x)| x == i as u8));
        assert_eq!(b.as_ptr() as usize % 64, 0, "FP32 views need alignment");
    }
    // Freed on a thread that never touched CUDA; the allocator still works after.
    let b = alloc.zeroed(1 << 20).unwrap();
    std::thread::spawn(move || drop(b)).join().unwrap();
    assert_eq!(alloc.zeroed(16).expect("allocates after a free elsewhere").len(), 16);
}
