//! Pattern: pass an object as a top-level argument (the seed's section 1.1).
//!
//! Two 32x32 matrices are put once; ten `compute` calls (matmul, then sum) reuse them by
//! ref, so the matrices cross the network once, not ten times.
//!
//!     cargo run -p prism-client --example object_argument   # PRISM_URL=http://127.0.0.1:8000

use prism_client::{Client, TaskArg, TaskOptions, Tensor};
use rand::Rng;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let c = Client::new(&std::env::var("PRISM_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    let mut rng = rand::rng();
    let mut random = || Tensor::fp32(vec![32, 32], (0..32 * 32).map(|_| rng.random::<f32>()).collect());
    let mat1 = c.put(&random()).await?;
    let mat2 = c.put(&random()).await?;
    println!("{mat1}\n{mat2}");

    let opts = TaskOptions::default();
    let mut collection = Vec::new();
    for _ in 0..10 {
        // compute(x, y) = matmul(x, y).sum(), chained on the server.
        let product = c
            .task("matmul", [TaskArg::from(&mat1), TaskArg::from(&mat2)], &opts)
            .await?;
        collection.push(c.task("sum", [TaskArg::from(&product)], &opts).await?);
    }
    let mut results = Vec::new();
    for r in &collection {
        results.push(c.get(r, None).await?.to_f32()[0] as i64);
    }
    println!("{results:?}");
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "every call saw the same objects"
    );
    Ok(())
}
