//! A 1 GiB object put and got back over loopback, with the process's peak memory
//! measured: the body streams into the store and back out of it, so the peak stays under
//! 1.5x the object. Alone in its own test binary (its own process), so nothing else
//! moves the peak.

use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use prism_tests::{TestServer, config};

const SIZE: usize = 1 << 30;
const BLOCK: usize = 1 << 20;

/// Peak resident memory of this process since the last reset, in bytes.
fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn current_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<usize>().ok()? * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_object_round_trips_under_1_5x_its_size_in_peak_memory() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(
        r#"
[object_store]
object_store_memory = 2147483648

[[deployments]]
name = "celsius"
[deployments.model]
builtin = "celsius"
"#,
        dir.path(),
    ))
    .await;
    // One MiB of pseudo-random bytes, repeated: the client never holds the object.
    let block: Bytes = (0..BLOCK)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
        .collect::<Vec<u8>>()
        .into();
    let head = format!(r#"{{"datatype":"UINT8","shape":[{SIZE}],"parameters":{{"binary_data_size":{SIZE}}}}}"#);
    let head_len = head.len();

    let baseline = current_rss().expect("/proc/self/status");
    // Resets VmHWM to the current RSS (Linux 4.0 and later).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let started = Instant::now();
    let sent = block.clone();
    let chunks = std::iter::once(Bytes::from(head)).chain((0..SIZE / BLOCK).map(move |_| sent.clone()));
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks.map(Ok::<_, std::io::Error>)));
    let http = reqwest::Client::new();
    let put = http
        .post(format!("{}/v2/objects", s.url))
        .header("Inference-Header-Content-Length", head_len)
        .header("Content-Length", head_len + SIZE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let r: serde_json::Value = put.json().await.unwrap();
    let r = r["object_ref"].as_str().unwrap().to_owned();
    let put_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let get = http
        .get(format!("{}/v2/objects/{r}", s.url))
        .header("Accept", "application/octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let answer_head: usize = get.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut stream = get.bytes_stream();
    let mut offset = 0usize; // bytes of the whole body seen
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.unwrap();
        if offset < answer_head {
            let skip = (answer_head - offset).min(chunk.len());
            offset += skip;
            chunk = chunk.slice(skip..);
        }
        // Compare against the block pattern, piece by piece.
        while !chunk.is_empty() {
            let at = (offset - answer_head) % BLOCK;
            let n = (BLOCK - at).min(chunk.len());
            assert!(chunk[..n] == block[at..at + n], "byte {} differs", offset - answer_head);
            offset += n;
            chunk = chunk.slice(n..);
        }
    }
    assert_eq!(offset - answer_head, SIZE);
    let get_s = started.elapsed().as_secs_f64();

    let peak = peak_rss().unwrap();
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "1 GiB: put {put_s:.2} s, get {get_s:.2} s; peak RSS {:.0} MiB over a baseline of {:.0} MiB (+{:.2}x the object){}",
        peak as f64 / (1 << 20) as f64,
        baseline as f64 / (1 << 20) as f64,
        grown as f64 / SIZE as f64,
        if reset {
            ""
        } else {
            " (VmHWM could not be reset: the figure includes start-up)"
        }
    );
    assert!(
        grown < SIZE * 3 / 2,
        "peak grew by {grown} bytes for a {SIZE}-byte object"
    );
    s.stop().await.unwrap();
}
