//! Pattern: one model's output feeds the next without a round trip (an encoder's
//! embeddings into a classification head).
//!
//! The texts are embedded once, and the embeddings are kept in the object store
//! (`"object_ref": true`): the client gets a ref, not 64 floats a text. The head takes the
//! ref as its input, so the embeddings go from one model to the next inside the server.
//! The client then fetches them once, to check the head's answer against its own product.
//!
//!     cargo run --release -p prism-server -- --config client/examples/embedding_head.toml
//!     cargo run -p prism-client --example embedding_head   # PRISM_URL=http://127.0.0.1:8000

use prism_client::Client;
use prism_client::v2::{InferInput, InferRequest, TensorData};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let c = Client::new(&std::env::var("PRISM_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into()));
    let texts: Vec<String> = [
        "the cat sat on the mat",
        "stocks fell sharply on tuesday",
        "a recipe for bread with rye flour",
        "the match ended in a draw",
    ]
    .map(String::from)
    .to_vec();
    let request = InferRequest {
        inputs: vec![InferInput {
            name: "TEXT".into(),
            shape: vec![texts.len() as i64],
            datatype: "BYTES".into(),
            parameters: None,
            data: Some(TensorData::Strings(texts.clone())),
        }],
        ..Default::default()
    };
    // The embeddings stay on the server; only their ref comes back.
    let refs = c.infer_to_refs("embed", &request, &["EMBEDDING"]).await?;
    let embedding = &refs[0].1;
    println!("EMBEDDING kept as {embedding}");

    // The head reads them by ref.
    let by_ref = InferRequest {
        inputs: vec![InferInput::object_ref("EMBEDDING", &embedding.0)],
        ..Default::default()
    };
    let answer = c.infer("topics", &by_ref).await?;
    let topics = answer.output("TOPICS").ok_or("no TOPICS output")?;
    let scores = topics
        .data
        .as_ref()
        .and_then(TensorData::to_f32)
        .ok_or("TOPICS holds no numbers")?;
    let width = scores.len() / texts.len();
    for (text, row) in texts.iter().zip(scores.chunks(width)) {
        let best = (0..width).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
        println!("{text:<40} topic {best}  {row:.3?}");
    }

    // The same embeddings, fetched once, through the same head on the client: the answers agree.
    let e = c.get(embedding, None).await?;
    let dim = e.shape[1];
    let e = e.to_f32();
    let weights = topic_head(dim);
    for (i, row) in scores.chunks(width).enumerate() {
        let logits: Vec<f32> = (0..width)
            .map(|t| weights.1[t] + (0..dim).map(|j| weights.0[t * dim + j] * e[i * dim + j]).sum::<f32>())
            .collect();
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        for (t, l) in logits.iter().enumerate() {
            let want = (l - max).exp() / sum;
            assert!((row[t] - want).abs() < 1e-5, "text {i} topic {t}: {} vs {want}", row[t]);
        }
    }
    println!("the head's answers match the fetched embeddings");
    Ok(())
}

/// The weights of `topic_head.safetensors` (3 topics over `dim` values), as it was written:
/// row `r` is `cos((r + 1) · j · 0.37) / 8`.
fn topic_head(dim: usize) -> (Vec<f32>, [f32; 3]) {
    let w = (0..3)
        .flat_map(|r| (0..dim).map(move |j| ((r + 1) as f32 * j as f32 * 0.37).cos() / 8.0))
        .collect();
    (w, [0.1, -0.05, 0.0])
}
