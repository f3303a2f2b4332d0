//! An encoder folder on a GPU: its relative error against the CPU path on random token
//! batches, and its throughput at batch 1, 32 and 256 texts of 128 tokens, in fp32 and
//! bf16 (and tf32, fp16). Prints one line per precision and batch size; `scripts/gpu-check`
//! runs it on a MiniLM-shaped folder that `benches/gpu_torch.py --encoder DIR` writes,
//! and puts PyTorch's figures for the same folder beside it.
//!
//!     gpu-encoder DIR [TOKENS]

use std::time::Duration;

use prism_kernels::CpuDevice;
use prism_kernels::cuda::{CudaDevice, GpuEncoder, Precision};
use prism_kernels::encoder::{Encoder, Overrides, Tokens};
use prism_kernels::testing::{relative_error, uniform};

/// `texts` texts of `tokens` ids each, drawn from the vocabulary (the first and last as
/// `[CLS]` / `[SEP]` would be, the rest random).
fn batch(texts: usize, tokens: usize, vocab: usize, seed: u64) -> Tokens {
    let ids: Vec<u32> = uniform(texts * tokens, seed)
        .iter()
        .map(|v| ((v.abs() * (vocab - 1) as f32) as u32).min(vocab as u32 - 1))
        .collect();
    Tokens {
        type_ids: vec![0; ids.len()],
        ids,
        lengths: vec![tokens; texts],
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: gpu-encoder DIR [TOKENS]");
        std::process::exit(2);
    };
    let tokens: usize = args.next().map_or(128, |t| t.parse().expect("TOKENS is a count"));
    prism_benches::require_gpu();
    let encoder = Encoder::load(std::path::Path::new(&dir), &Overrides::default()).expect("load the folder");
    let vocab = encoder.config().shape.vocab_size;
    let tokens = tokens.min(encoder.config().max_seq_length);
    let cpu = CpuDevice::new(std::thread::available_parallelism().map_or(1, |n| n.get())).expect("a CPU device");
    println!(
        "{:<10}{:<8}{:>10}{:>14}{:>14}{:>16}",
        "precision", "texts", "tokens", "texts/s", "ms/batch", "rel. error"
    );
    for precision in [Precision::Fp32, Precision::Tf32, Precision::Bf16, Precision::Fp16] {
        let device = CudaDevice::new(0).expect("open GPU 0");
        let mut gpu = GpuEncoder::upload(&encoder, device, precision).expect("upload the encoder");
        for texts in [1usize, 32, 256] {
            let b = batch(texts, tokens, vocab, texts as u64);
            // The CPU answer for a few of the texts (all 256 would take the CPU minutes).
            let check = batch(texts.min(8), tokens, vocab, texts as u64);
            let want = encoder.forward(&cpu, &check);
            let err = relative_error(&gpu.forward(&check).expect("GPU forward"), want.as_slice().unwrap());
            let (n, secs) = prism_benches::time_for(5, Duration::from_secs(1), || {
                gpu.forward(&b).expect("GPU forward");
            });
            println!(
                "{precision:<10}{texts:<8}{tokens:>10}{:>14.0}{:>14.3}{:>16.2e}",
                (n * texts) as f64 / secs,
                secs * 1e3 / n as f64,
                err
            );
        }
    }
}
