//! The GPU path without a GPU: every model's plan run on the CPU mirror (each kernel's
//! index arithmetic over its launch grid, each cuBLAS call's column-major parameters)
//! against the CPU path, on fresh random inputs. scripts/gpu-check compares the real
//! kernels with the same CPU path where a card exists (tests/gpu.rs).

use prism_kernels::cuda::launch::ARCHITECTURES;
use prism_kernels::cuda::mirror::Mirror;
use prism_kernels::cuda::plan::Elem;
use prism_kernels::cuda::{GpuEncoder, GpuModel, Precision};
use prism_kernels::encoder::{Encoder, Overrides};
use prism_kernels::testing::{encoder_fixtures, every_op_model, mlp_logits, relative_error, uniform};
use prism_kernels::{CpuDevice, builtin};

const PRECISIONS: [(Precision, f64); 4] = [
    (Precision::Fp32, 1e-5),
    (Precision::Tf32, 1e-5),
    (Precision::Bf16, 1e-2),
    (Precision::Fp16, 1e-2),
];

#[test]
fn layer_models_on_the_mirror_match_the_cpu_path() {
    let cpu = CpuDevice::new(1).unwrap();
    for (precision, tolerance) in PRECISIONS {
        for (name, model) in [
            ("mlp-logits", mlp_logits()),
            ("celsius", builtin::celsius()),
            ("every-op", every_op_model()),
        ] {
            let mut gpu = GpuModel::on(&model, Mirror::new(), precision).expect("upload");
            for rows in [1, 3, 37] {
                let x = uniform(rows * model.in_features(), rows as u64 + 10);
                let view = ndarray::ArrayView2::from_shape((rows, model.in_features()), &x).unwrap();
                let want = model.forward(&cpu, view).unwrap();
                let got = gpu.forward(&x, rows).expect("forward");
                let err = relative_error(&got, want.as_slice().unwrap());
                assert!(
                    err < tolerance,
                    "{precision} {name} rows={rows}: relative error {err:.2e}"
                );
            }
        }
    }
}

#[test]
fn half_precision_really_rounds_the_products() {
    // The bf16 mirror must not be fp32 in disguise: its answer differs from fp32's, by
    // about bf16's precision.
    let model = mlp_logits();
    let x = uniform(4 * model.in_features(), 3);
    let mut full = GpuModel::on(&model, Mirror::new(), Precision::Fp32).unwrap();
    let mut bf16 = GpuModel::on(&model, Mirror::new(), Precision::Bf16).unwrap();
    let err = relative_error(&bf16.forward(&x, 4).unwrap(), &full.forward(&x, 4).unwrap());
    assert!(err > 1e-5 && err < 1e-2, "bf16 against fp32: {err:.2e}");
}

/// Texts of many lengths, some longer than the tiny models' position tables (they are
/// truncated), a single-word one and an empty-ish one.
fn texts() -> Vec<String> {
    let words = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches";
    let w: Vec<&str> = words.split(' ').collect();
    (0..9)
        .map(|i| {
            w.iter()
                .cycle()
                .skip(i * 3)
                .take(1 + i * i)
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn encoders_on_the_mirror_match_the_cpu_path() {
    let cpu = CpuDevice::new(1).unwrap();
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for dir in encoder_fixtures() {
        let encoder = Encoder::load(&dir, &Overrides::default()).expect("the fixture loads");
        let pairs: Vec<&str> = refs.iter().rev().copied().collect();
        let pairs = dir.ends_with("tiny-cross-encoder").then_some(pairs.as_slice());
        let batch = encoder.tokenizer().encode(&refs, pairs, true).expect("tokenizes");
        let want = encoder.forward(&cpu, &batch);
        for (precision, tolerance) in PRECISIONS {
            let mut gpu = GpuEncoder::on(&encoder, Mirror::new(), precision).expect("upload");
            let got = gpu.forward(&batch).expect("forward");
            let err = relative_error(&got, want.as_slice().unwrap());
            assert!(
                err < tolerance,
                "{} {precision}: relative error {err:.2e} over {} texts",
                dir.display(),
                refs.len()
            );
        }
        // A text's answer does not depend on its batch: alone, it is the same row.
        let mut gpu = GpuEncoder::on(&encoder, Mirror::new(), Precision::Fp32).unwrap();
        let width = gpu.output_width();
        for i in [0, 4, 8] {
            let pair = pairs.map(|p| &p[i..=i]);
            let alone = encoder.tokenizer().encode(&refs[i..=i], pair, true).unwrap();
            let got = gpu.forward(&alone).unwrap();
            let err = relative_error(&got, &want.as_slice().unwrap()[i * width..(i + 1) * width]);
            assert!(err < 1e-5, "{} text {i} alone: relative error {err:.2e}", dir.display());
        }
    }
}

#[test]
fn the_largest_batches_launch_within_every_architectures_limits() {
    // Launch grids and 32-bit counts for the largest batches the configs allow: the
    // default MLP at the largest max_batch_size (2^16), an encoder at 512 tokens by 64
    // texts. (Registers and shared memory are what each kernel's CUBIN says:
    // tests/nvrtc.rs checks those.)
    let mlp = GpuModel::on(&builtin::mlp(), Mirror::new(), Precision::Bf16).unwrap();
    let encoder = Encoder::load(&encoder_fixtures()[0], &Overrides::default()).unwrap();
    let bert = GpuEncoder::on(&encoder, Mirror::new(), Precision::Fp32).unwrap();
    for plan in [
        mlp.plan(1 << 16).unwrap(),
        bert.plan(64, 512).unwrap(),
        bert.plan(1, 1).unwrap(),
    ] {
        for limits in &ARCHITECTURES {
            let failures = plan.check_launches(limits, |_| Default::default());
            assert!(failures.is_empty(), "{failures:#?}");
        }
    }
    // Past 2^31 elements a plan is refused, not launched with wrapped indices; a GPU
    // replica checks its deployment's largest batch before it takes any.
    let err = bert.plan(4096, 4096).expect_err("2^31 attention scores");
    assert!(err.0.contains("2^31"), "{err}");
    bert.fits(16_384, 512).expect("the default max_batch_tokens fits");
    let err = bert
        .fits(1 << 24, 512)
        .expect_err("the largest max_batch_tokens does not");
    assert!(err.0.contains("2^31"), "{err}");
}

#[test]
fn every_pooling_mode_on_the_mirror_matches_the_cpu_path() {
    use prism_kernels::encoder::Pooling;
    let cpu = CpuDevice::new(1).unwrap();
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for pooling in [
        Pooling::Mean,
        Pooling::Cls,
        Pooling::Max,
        Pooling::MeanSqrtLen,
        Pooling::LastToken,
    ] {
        for normalize in [false, true] {
            let overrides = Overrides {
                pooling: Some(pooling),
                normalize: Some(normalize),
                ..Overrides::default()
            };
            let encoder = Encoder::load(&encoder_fixtures()[0], &overrides).unwrap();
            let batch = encoder.tokenizer().encode(&refs, None, true).unwrap();
            let want = encoder.forward(&cpu, &batch);
            let got = GpuEncoder::on(&encoder, Mirror::new(), Precision::Fp32)
                .unwrap()
                .forward(&batch)
                .unwrap();
            let err = relative_error(&got, want.as_slice().unwrap());
            assert!(
                err < 1e-5,
                "{pooling:?} normalize={normalize}: relative error {err:.2e}"
            );
        }
    }
}

#[test]
fn an_encoder_s_memory_ask_covers_its_weights_and_its_largest_batch() {
    // The ask is a formula (placement needs it before any upload); it must cover what the
    // upload holds and what the plan of the largest batch asks for, in each precision.
    for dir in encoder_fixtures() {
        let encoder = Encoder::load(&dir, &Overrides::default()).unwrap();
        for precision in [Precision::Fp32, Precision::Bf16] {
            let gpu = GpuEncoder::on(&encoder, Mirror::new(), precision).unwrap();
            let weights = gpu.executor().bytes();
            let (max_tokens, max_seq) = (4096, 64);
            let plan = gpu.plan(max_tokens / max_seq, max_seq).unwrap();
            let scratch: usize = plan
                .scratch
                .iter()
                .map(|&(_, elem, len)| len * if elem == Elem::U16 { 2 } else { 4 })
                .sum();
            let ask = GpuEncoder::memory_needed(&encoder, precision, max_tokens, max_seq) as usize - (32 << 20);
            assert!(
                ask >= weights + scratch,
                "{} {precision}: asks {ask} bytes, holds {weights} + {scratch}",
                dir.display()
            );
            assert!(
                ask <= (weights + scratch) * 5 / 4,
                "{} {precision}: asks {ask}, far above {}",
                dir.display(),
                weights + scratch
            );
        }
    }
}
