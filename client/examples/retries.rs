//! Pattern: task retries (the seed's section 3). `incorrect_square` fails half of its
//! executions with the error kind `InjectedFault`. Application errors are not retried
//! by default, as in Ray: some calls fail, with their attempt count. With
//! `retry_exceptions = ["InjectedFault"]` and enough retries, all ten succeed.
//!
//!     cargo run -p prism-client --example retries

use prism_client::{Client, FaultInjection, TaskOptions, Tensor};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let c = Client::new(&std::env::var("PRISM_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    let incorrect = TaskOptions {
        num_cpus: Some(0.25),
        fault_injection: Some(FaultInjection {
            error_rate: Some(0.5),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut refs = Vec::new();
    for _ in 0..10 {
        refs.push(c.task("square", [Tensor::scalar(4.0).into()], &incorrect).await?);
    }
    let mut failures = 0;
    for r in &refs {
        match c.get(r, None).await {
            Ok(t) => println!("ok: {}", t.to_f32()[0]),
            Err(e) => {
                failures += 1;
                println!("failed: {e}");
            }
        }
    }
    println!("without retry_exceptions: {failures} of 10 failed");

    let correct = TaskOptions {
        max_retries: Some(100),
        retry_exceptions: vec!["InjectedFault".into()],
        ..incorrect
    };
    let mut outputs = Vec::new();
    for _ in 0..10 {
        outputs.push(c.task("square", [Tensor::scalar(4.0).into()], &correct).await?);
    }
    let mut values = Vec::new();
    for r in &outputs {
        values.push(c.get(r, None).await?.to_f32()[0]);
    }
    println!("with retry_exceptions: {values:?}");
    assert!(values.iter().all(|&v| v == 16.0));
    Ok(())
}
