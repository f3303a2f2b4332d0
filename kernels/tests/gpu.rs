//! The CUDA backend against the CPU path, on fresh random inputs. Runs for real where a
//! GPU and the CUDA libraries are found; elsewhere it says it was skipped.

use prism_kernels::cuda::{CudaDevice, GpuModel, Precision, probe};
use prism_kernels::testing::{every_op_model, mlp_logits, relative_error, uniform};
use prism_kernels::{CpuDevice, builtin};

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

#[test]
fn gpu_encoders_match_the_cpu_path() {
    if !gpu_available() {
        return;
    }
    use prism_kernels::cuda::GpuEncoder;
    use prism_kernels::encoder::{Encoder, Overrides};
    let cpu = CpuDevice::new(1).unwrap();
    let words: Vec<String> = (0..200).map(|i| format!("w{}", i * 7919 % 389)).collect();
    for dir in prism_kernels::testing::encoder_fixtures() {
        let encoder = Encoder::load(&dir, &Overrides::default()).expect("the fixture loads");
        for (precision, tolerance) in [
            (Precision::Fp32, 1e-5),
            (Precision::Tf32, 5e-3),
            (Precision::Bf16, 3e-2),
            (Precision::Fp16, 1e-2),
        ] {
            let device = CudaDevice::new(0).expect("open GPU 0");
            let mut gpu = GpuEncoder::upload(&encoder, device, precision).expect("upload");
            for texts in [1, 7, 32, 100] {
                let owned: Vec<String> = (0..texts)
                    .map(|t| words[t % 50..t % 50 + 1 + (t * 13) % 120].join(" "))
                    .collect();
                let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
                let pairs: Vec<&str> = refs.iter().rev().copied().collect();
                let pairs = dir.ends_with("tiny-cross-encoder").then_some(pairs.as_slice());
                let batch = encoder.tokenizer().encode(&refs, pairs, true).expect("tokenizes");
                let want = encoder.forward(&cpu, &batch);
                let got = gpu.forward(&batch).expect("forward");
                let err = relative_error(&got, want.as_slice().unwrap());
                let name = dir.file_name().unwrap().to_string_lossy();
                eprintln!("{precision} {name} texts={texts}: relative error {err:.2e}");
                assert!(
                    err < tolerance,
                    "{precision} {name} texts={texts}: relative error {err:.2e}"
                );
            }
        }
    }
}
