//! Pattern: pipeline data processing with `wait` (the seed's section 7): start ten
//! expensive squares, process each result as soon as it is ready, then the same in
//! batches of three (section 7.1).
//!
//!     cargo run -p prism-client --example wait_pipeline

use prism_client::{Client, FaultInjection, ObjectRef, TaskOptions, Tensor};

async fn expensive_squares(c: &Client, n: usize) -> Result<Vec<ObjectRef>, prism_client::ClientError> {
    // 70% of them sleep 300 ms and the rest none, so they finish out of order.
    let opts = TaskOptions {
        num_cpus: Some(0.1),
        fault_injection: Some(FaultInjection {
            delay_ms: Some(300.0),
            delay_rate: Some(0.7),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut refs = Vec::new();
    for i in 0..n {
        refs.push(c.task("square", [Tensor::scalar(i as f32).into()], &opts).await?);
    }
    Ok(refs)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let c = Client::new(&std::env::var("PRISM_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));

    // One at a time.
    let mut not_ready = expensive_squares(&c, 10).await?;
    let mut results = Vec::new();
    while !not_ready.is_empty() {
        let (ready, rest) = c.wait(&not_ready, 1, None).await?;
        let value = c.get(&ready[0], None).await?.to_f32()[0];
        println!("{} is ready; result: {value}", ready[0]);
        results.push(value);
        not_ready = rest;
    }
    results.sort_by(f32::total_cmp);
    assert_eq!(results, (0..10).map(|i| (i * i) as f32).collect::<Vec<_>>());

    // In batches of three.
    const BATCH_SIZE: usize = 3;
    let mut not_ready = expensive_squares(&c, 10).await?;
    let mut seen = 0;
    while !not_ready.is_empty() {
        let k = BATCH_SIZE.min(not_ready.len());
        let (ready, rest) = c.wait(&not_ready, k, None).await?;
        let mut values = Vec::new();
        for r in &ready {
            values.push(c.get(r, None).await?.to_f32()[0]);
        }
        println!("{} are ready; results: {values:?}", ready.len());
        seen += ready.len();
        not_ready = rest;
    }
    assert_eq!(seen, 10);
    Ok(())
}
