//! `prism`: talk to a V2 inference server from the command line.
//!
//! ```text
//! prism models                                   # what the server serves
//! prism model mlp                                # one model's metadata and config
//! prism infer celsius --input '[[100]]'          # one inference; shape from the nesting
//! prism infer celsius --request '{"inputs": [...]}'
//! prism bench --model mlp --concurrency 1,8,32 --duration 15s --out r.json
//! prism put '[[1, 2], [3, 4]]'                   # into the object store; prints its ref
//! prism task matmul REF '[[1], [1]]' --get       # a task over refs and inline tensors
//! prism get REF ; prism wait REF REF --num-returns 1 ; prism delete REF
//! ```

/// `prism bench` shares the cores with the server it measures, and each call allocates
/// and frees a few small buffers (headers, frames): mimalloc spends less of the machine on
/// that than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use prism_client::bench::{
    self, Format, Load, Protocol, Report, SharedMemory, Transport, Window, Workload, WorkloadSpec,
};
use prism_client::v2::{InferInput, InferRequest, TensorData};
use prism_client::{Client, DType, ObjectRef, TaskArg, Tensor};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "prism",
    version,
    about = "Talk to a KServe V2 inference server (Prism, Triton, MLServer, KServe)"
)]
struct Cli {
    /// The server's base URL.
    #[arg(long, global = true, env = "PRISM_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The bearer token the server needs (its api_token, or admin_token for load, unload
    /// and delete).
    #[arg(long, global = true, env = "PRISM_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Whether the server is live and ready, and what it is.
    Health,
    /// List the models the server serves.
    Models,
    /// Show one model: its metadata and its configuration.
    Model { name: String },
    /// Run one inference and print the answer as JSON.
    Infer {
        model: String,
        /// An input as `NAME=JSON` or just `JSON` for a model with one input, where JSON is
        /// a (nested) array: `--input '[[100]]'` is shape [1, 1]. The datatype is the
        /// model's. Repeat for several inputs.
        #[arg(long = "input", short = 'i')]
        inputs: Vec<String>,
        /// A whole V2 request body instead: JSON text, `@file`, or `-` for standard input.
        #[arg(long, conflicts_with = "inputs")]
        request: Option<String>,
        /// Send the tensors with the binary tensor data extension.
        #[arg(long)]
        binary: bool,
    },
    /// Load-test a model on any V2 server: throughput and latency percentiles.
    Bench(BenchArgs),
    /// Put a tensor into the object store (a nested JSON array, FP32 unless --datatype);
    /// prints its ref.
    Put {
        tensor: String,
        #[arg(long, default_value = "FP32")]
        datatype: String,
        /// Seconds it lives after its last access (the server's default otherwise).
        #[arg(long)]
        ttl_s: Option<f64>,
    },
    /// Get an object (waits while it is pending, like ray.get) and print it as JSON.
    Get {
        object_ref: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Delete an object.
    Delete { object_ref: String },
    /// Wait until `--num-returns` of the objects are ready (like ray.wait).
    Wait {
        object_refs: Vec<String>,
        #[arg(long, default_value_t = 1)]
        num_returns: usize,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Run a task op (`matmul`, `add`, `square`, ...) over refs (32 hex digits) and
    /// inline tensors (nested JSON arrays); prints the ref of its result.
    Task {
        op: String,
        args: Vec<String>,
        /// Options as JSON, e.g. '{"num_cpus": 0.5, "max_retries": 5}'.
        #[arg(long)]
        options: Option<String>,
        /// Wait for the result and print it instead of its ref.
        #[arg(long)]
        get: bool,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The model to load.
    #[arg(long, short = 'm')]
    model: String,
    /// Closed loop: requests in flight; a list is a sweep (`1,8,32,64`).
    #[arg(long, short = 'c', value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Open loop: Poisson arrivals per second; a list is a sweep.
    #[arg(long, short = 'r', value_delimiter = ',', conflicts_with = "concurrency")]
    rate: Vec<f64>,
    /// The measured window of each point.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load offered before each window, not measured.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How tensors travel.
    #[arg(long, value_enum, default_value_t = Format::Binary)]
    format: Format,
    /// The protocol: V2 REST, or V2 gRPC (Triton's `GRPCInferenceService`).
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
    /// Where the gRPC server listens (default: the REST URL's host, port 8001). The REST
    /// URL is still used to read the model's metadata and register shared memory.
    #[arg(long)]
    grpc_url: Option<String>,
    /// gRPC: the HTTP/2 connections a point's calls share, each carrying many calls
    /// (default: one for every 32 calls in flight; one `tritonclient.grpc` client sends
    /// all its calls on one channel).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    grpc_connections: Option<u32>,
    /// `system`: the tensors in POSIX shared memory registered with the server, the
    /// requests carrying only where they are (closed loop only: each worker has its own
    /// output region).
    #[arg(long, value_enum, default_value_t = SharedMemory::None)]
    shared_memory: SharedMemory,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// A V2 JSON request body to send instead of random inputs from the model's metadata.
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// The path to POST to (default `/v2/models/{model}/infer`).
    #[arg(long)]
    path: Option<String>,
    /// Results as JSON here; a CSV and, for a sweep, an SVG latency-throughput plot are
    /// written beside it with the same name.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A request unanswered after this counts as a `timeout` error.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Open loop: most requests in flight; arrivals beyond are `client_overload` errors.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No progress display.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = match &cli.token {
        Some(t) => Client::new(&cli.url).with_token(t)?,
        None => Client::new(&cli.url),
    };
    match cli.command {
        Command::Health => {
            let meta = client.server_metadata().await?;
            println!("server:  {} {} ({})", meta.name, meta.version, client.url());
            println!("live:    {}", client.server_live().await?);
            println!("ready:   {}", client.server_ready().await?);
            println!("extensions: {}", meta.extensions.join(", "));
        }
        Command::Models => {
            let models = client.repository_index().await?;
            println!("{:<24} {:<8} {:<10} REASON", "NAME", "VERSION", "STATE");
            for m in models {
                println!(
                    "{:<24} {:<8} {:<10} {}",
                    m.name,
                    m.version.unwrap_or_default(),
                    m.state.unwrap_or_default(),
                    m.reason.unwrap_or_default()
                );
            }
        }
        Command::Model { name } => {
            let meta = client.model_metadata(&name).await?;
            let config = client.model_config(&name).await.ok();
            let both = serde_json::json!({ "metadata": meta, "config": config });
            println!("{}", serde_json::to_string_pretty(&both)?);
        }
        Command::Infer {
            model,
            inputs,
            request,
            binary,
        } => {
            let request = match request {
                Some(text) => parse_request(&text)?,
                None => request_from_inputs(&client, &model, &inputs).await?,
            };
            let response = if binary {
                client.infer_binary(&model, &request, true).await?
            } else {
                client.infer(&model, &request).await?
            };
            println!("{}", serde_json::to_string_pretty(&response)?);
        }
        Command::Bench(args) => run_bench(&client, args).await?,
        Command::Put {
            tensor,
            datatype,
            ttl_s,
        } => {
            let t = tensor_arg(&tensor, &datatype)?;
            let r = match ttl_s {
                None => client.put(&t).await?,
                Some(ttl) => client.put_with_ttl(&t, ttl).await?,
            };
            println!("{r}");
        }
        Command::Get { object_ref, timeout } => {
            let t = client.get(&ObjectRef(object_ref), timeout).await?;
            print_tensor(&t)?;
        }
        Command::Delete { object_ref } => client.delete(&ObjectRef(object_ref)).await?,
        Command::Wait {
            object_refs,
            num_returns,
            timeout,
        } => {
            let refs: Vec<ObjectRef> = object_refs.into_iter().map(ObjectRef).collect();
            let (ready, not_ready) = client.wait(&refs, num_returns, timeout).await?;
            println!("{}", serde_json::json!({ "ready": ready, "not_ready": not_ready }));
        }
        Command::Task { op, args, options, get } => {
            let args = args
                .iter()
                .map(|a| {
                    if a.len() == 32 && a.bytes().all(|b| b.is_ascii_hexdigit()) {
                        Ok(TaskArg::Ref(ObjectRef(a.clone())))
                    } else {
                        tensor_arg(a, "FP32").map(TaskArg::Tensor)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let options: Value = match options {
                Some(o) => serde_json::from_str(&o).context("--options is not JSON")?,
                None => Value::Object(Default::default()),
            };
            let r = client.task_with(&op, args, &options).await?;
            if get {
                print_tensor(&client.get(&r, None).await?)?;
            } else {
                println!("{r}");
            }
        }
    }
    Ok(())
}

async fn run_bench(client: &Client, args: BenchArgs) -> Result<()> {
    if args.shared_memory == SharedMemory::System && !args.rate.is_empty() {
        anyhow::bail!(
            "--shared-memory system runs closed loops only (--concurrency): each worker has its own output region"
        );
    }
    let workers = args.concurrency.iter().copied().max().unwrap_or(1);
    let spec = WorkloadSpec {
        model: args.model.clone(),
        format: args.format,
        batch_size: args.batch_size.max(1),
        input_file: args.input_file.clone(),
        path: args.path.clone(),
        variants: 16,
        seed: args.seed,
        protocol: args.protocol,
        shared_memory: args.shared_memory,
        workers,
    };
    let workload = Workload::prepare(client, &spec).await?;
    let loads: Vec<Load> = if !args.rate.is_empty() {
        args.rate
            .iter()
            .map(|&rate| Load::Open {
                rate,
                max_in_flight: args.max_in_flight,
            })
            .collect()
    } else if args.concurrency.is_empty() {
        vec![Load::Closed { concurrency: 1 }]
    } else {
        args.concurrency
            .iter()
            .map(|&concurrency| Load::Closed { concurrency })
            .collect()
    };
    let window = Window {
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
    };
    let in_flight = |l: &Load| match l {
        Load::Closed { concurrency } => *concurrency,
        Load::Open { max_in_flight, .. } => *max_in_flight,
    };
    let max_connections = loads.iter().map(in_flight).max().unwrap_or(1);
    // REST shares one pool across the points; gRPC opens its connections for each point
    // (`--grpc-connections`, or one per 32 calls in flight), so none sits idle through a
    // point and is closed by the server's idle timeout under a later one.
    enum Via {
        Rest(Transport),
        Grpc(String),
    }
    let via = match args.protocol {
        Protocol::Http => Via::Rest(Transport::Http {
            client: reqwest::Client::builder()
                .default_headers(match client.token() {
                    Some(t) => prism_client::bearer_headers(t)?,
                    None => Default::default(),
                })
                .timeout(args.timeout)
                .pool_max_idle_per_host(max_connections)
                .tcp_nodelay(true)
                .build()?,
            url: client.url().to_owned(),
        }),
        Protocol::Grpc => Via::Grpc(match &args.grpc_url {
            Some(u) => u.clone(),
            None => grpc_url_beside(client.url())?,
        }),
    };
    let format = match (args.protocol, args.shared_memory) {
        (Protocol::Http, SharedMemory::None) => args.format.to_string(),
        (p, SharedMemory::None) => format!("{p} {}", args.format),
        (p, SharedMemory::System) => format!("{p} system-shm"),
    };
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut points = Vec::new();
    for (i, &load) in loads.iter().enumerate() {
        let bar = (!args.quiet).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>16} [{bar:30}] {elapsed:>4} {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}/{} {}", i + 1, loads.len(), load));
            bar
        });
        let transport = match &via {
            Via::Rest(http) => http.clone(),
            Via::Grpc(url) => {
                let connections = args
                    .grpc_connections
                    .map_or_else(|| in_flight(&load).div_ceil(32), |n| n as usize);
                Transport::grpc(url, connections, args.timeout, client.token()).await?
            }
        };
        points.push(bench::run_point_over(&transport, &workload, load, window, bar).await);
    }
    let report = Report {
        tool: format!("prism bench {}", env!("CARGO_PKG_VERSION")),
        url: client.url().to_owned(),
        model: args.model,
        format,
        batch_size: workload.rows,
        request_bytes: workload.body_bytes,
        warmup_s: args.warmup.as_secs_f64(),
        started_unix_s,
        points,
    };
    print!("{}", report.table());
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        let csv = out.with_extension("csv");
        std::fs::write(&csv, report.csv()).with_context(|| format!("writing {}", csv.display()))?;
        let mut written = vec![out.display().to_string(), csv.display().to_string()];
        if report.points.len() > 1 {
            let svg = out.with_extension("svg");
            bench::write_svg(&report, &svg)?;
            written.push(svg.display().to_string());
        }
        eprintln!("wrote {}", written.join(", "));
    }
    Ok(())
}

/// The gRPC URL beside a REST one: the same host, Triton's gRPC port 8001.
fn grpc_url_beside(rest: &str) -> Result<String> {
    let rest = rest.trim_end_matches('/');
    let (scheme, rest) = rest.split_once("://").unwrap_or(("http", rest));
    let host = match rest.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => rest,
    };
    if host.is_empty() {
        anyhow::bail!("cannot tell the gRPC URL from {rest:?}: give --grpc-url");
    }
    Ok(format!("{scheme}://{host}:8001"))
}

fn parse_request(text: &str) -> Result<InferRequest> {
    let body = match text {
        "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        t if t.starts_with('@') => std::fs::read_to_string(&t[1..]).with_context(|| format!("reading {}", &t[1..]))?,
        t => t.to_owned(),
    };
    // As the server reads it: NaN and Infinity tokens included.
    prism_client::v2::from_slice(body.as_bytes()).context("the request is not a valid V2 inference request")
}

async fn request_from_inputs(client: &Client, model: &str, inputs: &[String]) -> Result<InferRequest> {
    if inputs.is_empty() {
        bail!("give the inputs with --input NAME=JSON (or --request)");
    }
    let meta = client.model_metadata(model).await?;
    let mut request = InferRequest::default();
    for arg in inputs {
        let (name, json) = match arg.split_once('=') {
            Some((n, j)) if !n.trim_start().starts_with('[') => (n.trim().to_owned(), j),
            _ => match meta.inputs.as_slice() {
                [only] => (only.name.clone(), arg.as_str()),
                _ => bail!(
                    "model `{model}` has {} inputs: name each one, as NAME=JSON",
                    meta.inputs.len()
                ),
            },
        };
        let spec = meta
            .inputs
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("model `{model}` has no input `{name}`"))?;
        let value: Value = serde_json::from_str(json).with_context(|| format!("input `{name}`: not JSON"))?;
        let shape = shape_of(&value);
        let data: TensorData = serde_json::from_value(value).with_context(|| format!("input `{name}`"))?;
        request.inputs.push(InferInput {
            name,
            shape,
            datatype: spec.datatype.clone(),
            parameters: None,
            data: Some(data),
        });
    }
    Ok(request)
}

/// A tensor from a nested JSON array (a bare number is a scalar).
fn tensor_arg(json: &str, datatype: &str) -> Result<Tensor> {
    let value: Value = serde_json::from_str(json).with_context(|| format!("{json:?} is not JSON"))?;
    let shape: Vec<usize> = if value.is_array() {
        shape_of(&value).into_iter().map(|d| d as usize).collect()
    } else {
        Vec::new()
    };
    if !rectangular(&value, &shape) {
        bail!("the array is ragged: every row must have the same length (shape {shape:?} from its first elements)");
    }
    let data: TensorData = serde_json::from_value(if value.is_array() {
        value
    } else {
        Value::Array(vec![value])
    })
    .context("a tensor is a (nested) array of numbers or booleans")?;
    let datatype: DType = datatype.parse()?;
    Ok(Tensor { datatype, shape, data })
}

fn print_tensor(t: &Tensor) -> Result<()> {
    println!("{}", serde_json::to_string(&t.json())?);
    Ok(())
}

/// Whether every sub-array of `value` has the length `shape` gives its depth.
fn rectangular(value: &Value, shape: &[usize]) -> bool {
    match (value, shape.split_first()) {
        (Value::Array(items), Some((&n, rest))) => items.len() == n && items.iter().all(|i| rectangular(i, rest)),
        (Value::Array(_), None) => false,
        (_, None) => true,
        (_, Some(_)) => false,
    }
}

/// The shape of a nested JSON array, read along its first elements.
fn shape_of(value: &Value) -> Vec<i64> {
    let mut shape = Vec::new();
    let mut v = value;
    while let Value::Array(items) = v {
        shape.push(items.len() as i64);
        match items.first() {
            Some(first) => v = first,
            None => break,
        }
    }
    if shape.is_empty() {
        shape.push(1);
    }
    shape
}
