//! Pattern: nested tasks (the seed's section 6). The seed's `main` task schedules two
//! `expensive_square`s and a `remote_add` and returns the sum; in Prism that graph is
//! the pipeline `sum_of_squares` of the default deployment file, run server-side with
//! both squares in parallel and its intermediates kept in the store.
//!
//!     cargo run -p prism-client --example nested_pipeline

use prism_client::Client;
use prism_client::v2::{InferInput, InferRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let c = Client::new(&std::env::var("PRISM_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    let request = InferRequest {
        inputs: vec![
            InferInput::fp32("A", vec![1], vec![1.0]),
            InferInput::fp32("B", vec![1], vec![2.0]),
        ],
        ..Default::default()
    };
    let answer = c.infer("sum_of_squares", &request).await?;
    let value = answer.outputs[0]
        .data
        .as_ref()
        .and_then(|d| d.to_f32())
        .unwrap_or_default();
    println!("1^2 + 2^2 = {value:?}");
    assert_eq!(value, vec![5.0]);

    // The same, asynchronously: a ref at once, the value when it is ready.
    let refs = c.infer_async("sum_of_squares", &request).await?;
    let later = c.get(&refs[0].1, None).await?;
    assert_eq!(later.to_f32(), vec![5.0]);
    c.delete(&refs[0].1).await?;
    Ok(())
}
