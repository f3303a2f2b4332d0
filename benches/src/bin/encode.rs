//! Times Prism's encoder in process, the way sentence-transformers' `encode` is timed:
//! `SENTENCES` sentences of `WORDS` words, tokenized, then run through the model in
//! batches of `BATCH` on `THREADS` intra-op threads. Prints one JSON line: sentences/s
//! and tokens/s (median and range over `ROUNDS` rounds), and the tokenizer's share.
//!
//! Usage: `encode MODEL_DIR [WORDS] [SENTENCES] [BATCH] [THREADS] [ROUNDS]`
//! (defaults 16 words, 512 sentences, batches of 32, 2 threads, 5 rounds).

use std::time::Instant;

use prism_kernels::CpuDevice;
use prism_kernels::encoder::{Encoder, Overrides};

/// `n` sentences of `words` words each, varied so no two are alike.
pub fn sentences(n: usize, words: usize) -> Vec<String> {
    const VOCAB: [&str; 24] = [
        "the", "model", "serves", "requests", "in", "batches", "on", "graphics", "cards", "and", "answers", "quickly",
        "while", "a", "queue", "holds", "what", "waits", "for", "its", "turn", "every", "replica", "computes",
    ];
    (0..n)
        .map(|i| {
            (0..words)
                .map(|j| VOCAB[(i * 7 + j * 13 + (i * j) % 5) % VOCAB.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: encode MODEL_DIR [WORDS] [SENTENCES] [BATCH] [THREADS] [ROUNDS]");
    let mut num = |default: usize| args.next().map_or(default, |a| a.parse().expect("a number"));
    let (words, n, batch, threads, rounds) = (num(16), num(512), num(32), num(2), num(5));
    let encoder = Encoder::load(std::path::Path::new(&dir), &Overrides::default()).expect("the model loads");
    let device = CpuDevice::new(threads).expect("a pool");
    let texts = sentences(n, words);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut per_round = Vec::new();
    let mut tokenize_share = Vec::new();
    let mut tokens_per_sentence = 0.0;
    for _ in 0..rounds {
        let started = Instant::now();
        let mut tokenizing = 0.0;
        let mut tokens = 0;
        for chunk in refs.chunks(batch) {
            let t = Instant::now();
            let batch = encoder.tokenizer().encode(chunk, None, true).expect("tokenizes");
            tokenizing += t.elapsed().as_secs_f64();
            tokens += batch.total();
            std::hint::black_box(encoder.forward(&device, &batch));
        }
        let took = started.elapsed().as_secs_f64();
        per_round.push(n as f64 / took);
        tokenize_share.push(tokenizing / took);
        tokens_per_sentence = tokens as f64 / n as f64;
    }
    per_round.sort_by(f64::total_cmp);
    let median = per_round[per_round.len() / 2];
    println!(
        "{{\"words\": {words}, \"tokens_per_sentence\": {tokens_per_sentence:.1}, \"batch\": {batch}, \"threads\": {threads}, \
         \"sentences_per_s\": {median:.1}, \"min\": {:.1}, \"max\": {:.1}, \"tokens_per_s\": {:.0}, \"tokenizer_share\": {:.3}}}",
        per_round[0],
        per_round[per_round.len() - 1],
        median * tokens_per_sentence,
        tokenize_share.iter().sum::<f64>() / tokenize_share.len() as f64
    );
}
