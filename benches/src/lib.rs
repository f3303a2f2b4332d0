//! Shared pieces of Prism's benchmarks: the shapes that matter for serving.

/// `(batch, in, out)` of a `linear` layer: the default MLP's layers at serving batch
/// sizes, a skinny batch-64 layer, and square GEMMs.
pub const LINEAR_SHAPES: &[(usize, usize, usize)] = &[
    (1, 784, 256),
    (8, 784, 256),
    (32, 784, 256),
    (64, 1024, 1024),
    (256, 784, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
];

pub use prism_kernels::testing::uniform as values;

/// Returns when a CUDA device can be used; otherwise prints why and exits: with status 1
/// under `PRISM_REQUIRE_GPU=1` (scripts/gpu-check sets it: there a skip is a failure),
/// else 0.
pub fn require_gpu() {
    let why = match prism_kernels::cuda::probe() {
        Ok(n) if n > 0 => return,
        Ok(_) => "no CUDA device".to_owned(),
        Err(why) => why,
    };
    println!("skipped: {why}");
    std::process::exit(if std::env::var("PRISM_REQUIRE_GPU").as_deref() == Ok("1") {
        1
    } else {
        0
    });
}

/// Runs `f` for about `duration` (after `warmup` untimed calls): the calls made and the
/// seconds they took.
pub fn time_for(warmup: usize, duration: std::time::Duration, mut f: impl FnMut()) -> (usize, f64) {
    for _ in 0..warmup {
        f();
    }
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < duration {
        f();
        n += 1;
    }
    (n, start.elapsed().as_secs_f64())
}
