//! Pattern: actors (the seed's section 8, exercise): the `LinearModel` actor holds its
//! weights (w0 = 9/5, w1 = 32) and converts Celsius to Fahrenheit. In Prism it is the
//! `celsius` deployment: a replica that loaded its weights once, called through V2.
//!
//!     cargo run -p prism-client --example linear_model

use prism_client::Client;
use prism_client::v2::{InferInput, InferRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let c = Client::new(&std::env::var("PRISM_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    let request = InferRequest {
        inputs: vec![InferInput::fp32("INPUT0", vec![1, 1], vec![100.0])],
        ..Default::default()
    };
    let answer = c.infer("celsius", &request).await?;
    let fahrenheit = answer.outputs[0]
        .data
        .as_ref()
        .and_then(|d| d.to_f32())
        .unwrap_or_default();
    println!("100 C = {fahrenheit:?} F");
    assert_eq!(fahrenheit, vec![212.0]);
    Ok(())
}
