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

/// `target/<profile>/examples`, next to this test's own `deps` folder. `cargo test`
/// builds the examples; a test run without them builds them here.
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    if EXAMPLES.iter().any(|e| !dir.join(e).exists()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "prism-client", "--examples"])
            .status()
            .unwrap();
        assert!(status.success(), "building the examples failed");
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tutorial_pattern_runs_as_an_example() {
    let dir = examples_dir();
    let server = TestServer::start(prism_config::Config::embedded_default()).await;
    for name in EXAMPLES {
        let url = server.url.clone();
        let path = dir.join(name);
        let output = tokio::task::spawn_blocking(move || Command::new(path).env("PRISM_URL", url).output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot run example {name}: {e}"));
        assert!(
            output.status.success(),
            "example {name} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{name}: ok\n{}", String::from_utf8_lossy(&output.stdout));
    }
    server.stop().await.unwrap();
}
