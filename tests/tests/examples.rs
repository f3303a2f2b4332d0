//! Every example of `client/examples/` (one per pattern of the Ray Core tutorial), run
//! as a program against a server on the embedded default deployment file.

use std::path::PathBuf;
use std::process::Command;

use prism_tests::TestServer;

const EXAMPLES: [&str; 6] = [
    "object_argument",
    "chaining",
    "retries",
    "wait_pipeline",
    "nested_pipeline",
    "linear_model",
];

/// `target/<profile>`, next to this test's own `deps` folder, with the `prism` CLI and the
/// client examples built there. `cargo test --workspace` builds them already; a run of
/// this package alone would otherwise find stale or missing binaries, so they are built
/// here, for the whole workspace: the features `cargo test --workspace` resolved, so that
/// after it this is a no-op instead of a second build of the dependencies.
fn built() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--workspace", "--bins", "--examples"])
                .status()
                .unwrap();
            assert!(status.success(), "building the CLI and the examples failed");
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().to_owned()
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tutorial_pattern_runs_as_an_example() {
    let server = TestServer::start(prism_config::Config::embedded_default()).await;
    for name in EXAMPLES {
        let printed = run_example(name, &server).await;
        eprintln!("{name}: ok\n{printed}");
    }
    server.stop().await.unwrap();
}

/// Runs example `name` against `server`, and answers what it printed.
async fn run_example(name: &'static str, server: &TestServer) -> String {
    let (url, path) = (server.url.clone(), built().join("examples").join(name));
    let output = tokio::task::spawn_blocking(move || Command::new(path).env("PRISM_URL", url).output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run example {name}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_s_embeddings_feed_a_head_by_ref_in_the_example() {
    // The example's own deployment file, as its documentation says to serve it.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/examples/embedding_head.toml");
    let server = TestServer::start(prism_config::Config::from_file(&file).expect("the example's file loads")).await;
    let printed = run_example("embedding_head", &server).await;
    assert!(
        printed.contains("the head's answers match the fetched embeddings"),
        "{printed}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_puts_runs_tasks_waits_and_gets() {
    let bin = built().join("prism");
    let server = TestServer::start(prism_config::Config::embedded_default()).await;
    let url = server.url.clone();
    let run = move |args: &[&str]| -> Result<String, String> {
        let out = Command::new(&bin).args(args).env("PRISM_URL", &url).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    tokio::task::spawn_blocking(move || {
        let a = run(&["put", "[[1, 2], [3, 4]]"]).unwrap();
        assert_eq!(a.len(), 32, "{a}");
        assert_eq!(
            run(&["get", &a]).unwrap(),
            r#"{"data":[1.0,2.0,3.0,4.0],"datatype":"FP32","shape":[2,2]}"#
        );
        let product = run(&["task", "matmul", &a, "[[1], [1]]", "--get"]).unwrap();
        assert_eq!(product, r#"{"data":[3.0,7.0],"datatype":"FP32","shape":[2,1]}"#);
        let sq = run(&["task", "square", "3"]).unwrap();
        let waited: serde_json::Value = serde_json::from_str(&run(&["wait", &sq]).unwrap()).unwrap();
        assert_eq!(waited["ready"][0], sq);
        assert_eq!(
            run(&["get", &sq]).unwrap(),
            r#"{"data":[9.0],"datatype":"FP32","shape":[]}"#
        );
        run(&["delete", &a]).unwrap();
        let err = run(&["get", &a]).unwrap_err();
        assert!(err.contains("404"), "{err}");
        let err = run(&["put", "[[1, 2], [3]]"]).unwrap_err();
        assert!(err.contains("ragged"), "{err}");
    })
    .await
    .unwrap();
    server.stop().await.unwrap();
}
