//! `prism-server`: serve the deployments of a file (or the embedded default).

/// Requests allocate and free many small buffers across threads. Measured against glibc's
/// malloc on the default MLP at concurrency 32, three interleaved rounds: +3% JSON
/// throughput (every round ahead), +1-3% binary (within the spread).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use prism_config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "prism-server",
    version,
    about = "A batch inference server speaking the KServe V2 protocol"
)]
struct Args {
    /// The deployment file (TOML). Without it, the embedded default (`celsius`, `mlp`).
    #[arg(long, short = 'c', env = "PRISM_CONFIG")]
    config: Option<PathBuf>,
    /// Listen here instead of the file's `server.http_addr`.
    #[arg(long, env = "PRISM_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Serve V2 gRPC here instead of the file's `server.grpc_addr`; `off` turns it off.
    #[arg(long, env = "PRISM_GRPC_ADDR", value_name = "ADDR|off")]
    grpc_addr: Option<String>,
    /// Print the embedded default deployment file and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Place replicas on simulated GPUs instead of the machine's (placement only: a
    /// simulated card runs nothing): `2x80GiB`, `1x80GiB,2x24GB`.
    #[arg(long, value_name = "COUNTxSIZE")]
    simulate_gpus: Option<String>,
    /// Check the deployment file (and load its models), then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

/// The server's runtime: tokio's multi-threaded scheduler, without its LIFO slot where
/// the build allows (`--cfg tokio_unstable`, set in `.cargo/config.toml`).
///
/// With the slot, a task that wakes another runs it next: each gRPC call's answer wakes
/// its HTTP/2 connection's task, which then writes that one answer. When a batch answers
/// many calls multiplexed on one connection, that is a write per answer. Without the
/// slot the connection runs after the calls already woken, and writes their answers
/// together (at 32 calls in flight on 4 connections, 0.37 writes per answer instead of
/// 0.94). The README's "gRPC and system shared memory" has the A/B figures. A build whose
/// rustflags replace the config's (RUSTFLAGS, CARGO_ENCODED_RUSTFLAGS, a target's
/// rustflags) keeps the slot; the start-up log says which.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

async fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", prism_config::DEFAULT_TOML);
        return ExitCode::SUCCESS;
    }
    let mut config = match &args.config {
        Some(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::embedded_default(),
    };
    if let Some(addr) = args.http_addr {
        config.server.http_addr = addr;
    }
    match args.grpc_addr.as_deref() {
        None => {}
        Some("off") => config.server.grpc_addr = None,
        Some(a) => match a.parse() {
            Ok(addr) => config.server.grpc_addr = Some(addr),
            Err(_) => {
                eprintln!("error: --grpc-addr: expected an address like 127.0.0.1:8001, or off, got {a:?}");
                return ExitCode::from(2);
            }
        },
    }
    // Tokens the file does not set come from the environment (keep secrets out of files).
    for (var, token) in [
        ("PRISM_API_TOKEN", &mut config.server.api_token),
        ("PRISM_ADMIN_TOKEN", &mut config.server.admin_token),
    ] {
        if let (None, Ok(value)) = (&token, std::env::var(var)) {
            match prism_config::Secret::new(value) {
                Ok(t) => *token = Some(t),
                Err(e) => {
                    eprintln!("error: {var}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    if config.server.api_token.is_none() {
        let exposed = std::iter::once(config.server.http_addr)
            .chain(config.server.grpc_addr)
            .filter(|a| !a.ip().is_loopback())
            .map(|a| a.to_string())
            .collect::<Vec<_>>();
        if !exposed.is_empty() {
            tracing::warn!(
                addresses = exposed.join(", "),
                "listening beyond loopback with no api_token: anyone who reaches these ports can run, load and \
                 unload models and read and delete objects; set server.api_token or PRISM_API_TOKEN"
            );
        }
    }
    tracing::info!(
        config = %config.source_name,
        deployments = config.deployments.len(),
        lifo_slot = !cfg!(tokio_unstable),
        "starting"
    );
    let inventory: std::sync::Arc<dyn prism_server::resources::inventory::Inventory> = match &args.simulate_gpus {
        Some(spec) => match prism_server::resources::inventory::SimulatedInventory::parse(spec) {
            Ok(i) => std::sync::Arc::new(i),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => std::sync::Arc::new(prism_server::resources::inventory::SystemInventory::probe()),
    };
    let server = match prism_server::Server::start_with(&config, inventory) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: OK ({} deployments)", config.source_name, config.deployments.len());
        return ExitCode::SUCCESS;
    }
    let addr = config.server.http_addr;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let grpc = match config.server.grpc_addr {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!(
                    "error: cannot listen for gRPC on {addr}: {e} (choose another with --grpc-addr, or --grpc-addr off)"
                );
                return ExitCode::from(1);
            }
        },
    };
    let shutdown = shutdown_signal();
    // gRPC first: a client waiting for the HTTP line then knows both.
    if let Some(g) = &grpc
        && let Ok(a) = g.local_addr()
    {
        tracing::info!("listening for gRPC on {a}");
    }
    tracing::info!("listening on http://{}", listener.local_addr().map_or(addr, |a| a));
    match server.serve_all(listener, grpc, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: called before the server says it listens, a signal sent the
/// moment it does is never missed (nor left to a disposition the parent may have set to
/// "ignore").
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut streams: Vec<_> = [SignalKind::interrupt(), SignalKind::terminate()]
            .into_iter()
            .filter_map(|kind| {
                signal(kind)
                    .map_err(|e| tracing::warn!("cannot listen for signal {kind:?}: {e}"))
                    .ok()
            })
            .collect();
        async move {
            if streams.is_empty() {
                return std::future::pending().await;
            }
            let any = futures::future::select_all(streams.iter_mut().map(|s| Box::pin(s.recv())));
            any.await;
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
