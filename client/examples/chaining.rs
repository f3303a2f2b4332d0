//! Pattern: chaining tasks (the seed's section 2): `expensive_square(2)`, then
//! `remote_add(1, square_ref)`, passing the ref itself, so the intermediate never comes
//! back to the client.
//!
//!     cargo run -p prism-client --example chaining

use prism_client::{Client, FaultInjection, TaskArg, TaskOptions, Tensor};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let c = Client::new(&std::env::var("PRISM_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    // "expensive": every execution sleeps 200 ms.
    let expensive = TaskOptions {
        fault_injection: Some(FaultInjection {
            delay_ms: Some(200.0),
            delay_rate: Some(1.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let square_ref = c.task("square", [Tensor::scalar(2.0).into()], &expensive).await?;
    let sum_ref = c
        .task(
            "add",
            [Tensor::scalar(1.0).into(), TaskArg::from(&square_ref)],
            &TaskOptions::default(),
        )
        .await?;
    let sum_value = c.get(&sum_ref, None).await?.to_f32()[0];
    println!("1 + 2^2 = {sum_value}");
    assert_eq!(sum_value, 5.0);
    Ok(())
}
