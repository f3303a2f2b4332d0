//! `prism-config`: the deployment file.
//!
//! A TOML file declares the server and its deployments (see `config/README.md` for every
//! key). [`Config::from_file`] / [`Config::parse`] read it once into validated types with
//! no `Option`s left; every error names the file, the key and the reason. With no file,
//! [`Config::embedded_default`] serves the two built-in models.

mod raw;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use prism_kernels::LayerSpec;
pub use prism_kernels::cuda::Precision;
pub use prism_kernels::encoder::{Overrides as EncoderOverrides, Pooling};
pub use prism_protocol::{DType, ErrorKind};

/// The embedded default deployment file.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// A deployment file that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {key}: {reason}")]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub source_name: String,
    /// The key at fault, as a path: `deployments[1] (digits).batching.max_batch_size`.
    pub key: String,
    pub reason: String,
}

/// A validated deployment file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages: a path or `<embedded default>`.
    pub source_name: String,
    pub server: ServerConfig,
    pub object_store: ObjectStoreConfig,
    pub deployments: Vec<Deployment>,
    pub pipelines: Vec<Pipeline>,
}

/// A DAG of steps served as one model (like a Triton ensemble): each step is a deployment
/// or a task op; its inputs are the pipeline's inputs or earlier steps' outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub name: String,
    pub inputs: Vec<PipelineTensor>,
    /// The answer's tensor name and the step that produces it.
    pub output_name: String,
    pub output_step: String,
    /// In file order, which is a topological order: a step only reads earlier ones.
    pub steps: Vec<Step>,
}

/// A pipeline input: any rank, `-1` where the size varies.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineTensor {
    pub name: String,
    pub datatype: DType,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub run: StepKind,
    /// Each is a pipeline input's name or an earlier step's name.
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// A deployment of this file, by name (one input, one output).
    Model(String),
    /// A stateless op of the kernels crate (`add`, `matmul`, ...).
    Op(prism_kernels::TaskOp),
}

/// The object store (`[object_store]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStoreConfig {
    /// Bytes of memory for objects; `None`: 30% of the machine's memory, as Ray does.
    pub memory: Option<usize>,
    /// Where objects spill when memory is full; `None`: a folder of its own under the
    /// system's temporary directory.
    pub spill_dir: Option<PathBuf>,
    /// How long an object handed to a client lives after its last access, unless the
    /// put names its own `ttl_s` (default 600 s).
    pub default_ttl: Duration,
    /// Most bytes of spill files; `None`: half the space free under `spill_dir` at
    /// start-up.
    pub max_spill_bytes: Option<u64>,
    /// Most objects the store holds at once, pending ones included.
    pub max_objects: usize,
    /// Largest object a client may put; `None`: the store's memory.
    pub max_object_bytes: Option<u64>,
}

/// The longest time-to-live an object may have: a week.
pub const MAX_TTL_S: f64 = 7.0 * 86_400.0;

/// A `num_gpus` ask, for a replica or a task: a fraction of one card up to 1 (like 0.25)
/// or a whole number of cards.
pub fn gpu_share(num_gpus: f64) -> Result<f64, String> {
    if !num_gpus.is_finite() || num_gpus < 0.0 || (num_gpus > 1.0 && num_gpus.fract() != 0.0) {
        return Err(format!(
            "must be a fraction up to 1 (like 0.25) or a whole number of GPUs, got {num_gpus}"
        ));
    }
    Ok(num_gpus)
}

/// An object's time-to-live from seconds: above 0 and at most [`MAX_TTL_S`].
pub fn ttl(seconds: f64) -> Result<Duration, String> {
    if seconds > 0.0 && seconds <= MAX_TTL_S {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!(
            "expected seconds above 0 and at most {MAX_TTL_S}, got {seconds}"
        ))
    }
}

/// A token: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A token: at least 16 characters, printable ASCII without spaces (it travels in an
    /// HTTP header).
    pub fn new(token: String) -> Result<Self, String> {
        if token.len() < 16 {
            return Err(format!("must be at least 16 characters, got {}", token.len()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces (it is sent in an HTTP header)".into());
        }
        Ok(Secret(token))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The bounds on client connections (`[server]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    /// Most connections open at once on one listener; more wait to be accepted
    /// (default 4096).
    pub max_connections: usize,
    /// How long a request's head (its line and headers) may take to arrive, from its
    /// first byte (default 10 s).
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight (default 75 s:
    /// longer than the 60 s that load balancers keep idle connections).
    pub idle_timeout: Duration,
    /// How long a request's whole body may take to arrive (default 60 s).
    pub body_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub http_addr: SocketAddr,
    /// Where V2 gRPC listens (default `127.0.0.1:8001`, Triton's port); `None`: off
    /// (`grpc_addr = "off"`).
    pub grpc_addr: Option<SocketAddr>,
    /// Triton's system shared-memory extension (default off, as in Triton): clients on
    /// this host may register `/dev/shm` regions for inputs and outputs.
    pub allow_shared_memory: bool,
    /// Largest request body accepted, in bytes (default 64 MiB).
    pub max_request_bytes: usize,
    /// After SIGTERM / Ctrl-C: how long accepted requests may take to finish (default 30 s).
    pub shutdown_timeout: Duration,
    /// How connections are bounded, per listener (REST and gRPC each).
    pub connections: ConnectionLimits,
    /// The bearer token of every route but health (`PRISM_API_TOKEN` when absent).
    pub api_token: Option<Secret>,
    /// The bearer token of the admin routes (`PRISM_ADMIN_TOKEN` when absent).
    pub admin_token: Option<Secret>,
    /// Custom logical resources and how many of each the server has (`[server.resources]`).
    pub resources: BTreeMap<String, f64>,
    /// How often the GPUs' figures (`prism_gpu_*`) are read from NVML (default 5 s).
    pub metrics_interval: Duration,
}

/// One deployment: a model served by `num_replicas` actors behind one batcher.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    pub num_replicas: usize,
    pub fallback: Fallback,
    pub model: ModelSource,
    pub actor: ActorOptions,
    pub batching: Batching,
    pub fault_injection: FaultInjection,
    pub retries: Retries,
    pub restarts: Restarts,
    /// The arithmetic of the GEMMs on GPU replicas; CPU replicas compute in fp32.
    pub precision: Precision,
    /// Whether NaN and ±Inf inputs are passed to the model (refused with 400 otherwise).
    pub allow_non_finite: bool,
    /// Batches each replica runs at load, of `max_batch_size` rows of zeros (or texts),
    /// before the deployment reports ready (default 0).
    pub warmup: usize,
}

/// How a replica that crashed is restarted: at most `max_restarts` times in any
/// `window`; past that it is marked failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Restarts {
    pub max_restarts: u32,
    pub window: Duration,
}

/// How a failed batch is retried on its replica: system failures (a panic in the model)
/// up to `max_retries` times, application errors only when `retry_exceptions` names
/// their kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    pub max_retries: u32,
    pub retry_exceptions: Vec<ErrorKind>,
}

impl Retries {
    /// Whether an execution that failed with error `kind` after `attempts` runs runs again:
    /// a system failure (`Panic`) always, an application error when `retry_exceptions`
    /// names it, for at most `max_retries` retries.
    pub fn again(&self, kind: ErrorKind, attempts: u32) -> bool {
        attempts <= self.max_retries && (kind.is_system() || self.retry_exceptions.contains(&kind))
    }
}

/// What to do with a replica whose GPU ask cannot be met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Run it on the CPU instead.
    Cpu,
    /// Leave it pending.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A model built into the server (`celsius`, `mlp`).
    Builtin { name: String, io: RowsIo },
    /// Layers over the tensors of a safetensors file (the path resolved against the
    /// deployment file's folder).
    Layers {
        weights: PathBuf,
        layers: Vec<LayerSpec>,
        io: RowsIo,
    },
    /// A Hugging Face / sentence-transformers encoder folder (resolved against the
    /// deployment file's folder), served as it is: its tensors come from the folder when it
    /// loads. `overrides`: the file's `pooling`, `normalize` and `max_seq_length`.
    HuggingFace { dir: PathBuf, overrides: EncoderOverrides },
}

/// The one input and one output of a model over rows of numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsIo {
    pub input: TensorSpec,
    pub output: TensorSpec,
}

impl ModelSource {
    /// The tensors of a model over rows (built-ins and layer stacks); `None` for an
    /// encoder folder.
    pub fn rows_io(&self) -> Option<&RowsIo> {
        match self {
            ModelSource::Builtin { io, .. } | ModelSource::Layers { io, .. } => Some(io),
            ModelSource::HuggingFace { .. } => None,
        }
    }
}

/// A model input or output: `[-1, features]`, the first dimension being the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DType,
    pub features: usize,
}

impl TensorSpec {
    /// The V2 metadata shape: `[-1, features]`.
    pub fn shape(&self) -> [i64; 2] {
        [-1, self.features as i64]
    }
}

/// The resources a replica asks for (logical, like Ray's) and its intra-op threads.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorOptions {
    pub num_cpus: f64,
    pub num_gpus: f64,
    pub threads: usize,
    /// Custom resources one replica asks for; each is declared in `[server.resources]`.
    pub resources: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    /// Most rows in one batch (a request of `[n, f]` counts `n`; a text counts 1).
    pub max_batch_size: usize,
    /// Most padded tokens in one batch of an encoder (texts × the longest text's tokens),
    /// as text-embeddings-inference counts them.
    pub max_batch_tokens: usize,
    /// Longest a batch waits for more requests after its first one arrived.
    pub batch_wait_timeout: Duration,
    /// Requests waiting for a batch beyond this get 503 at once.
    pub max_queue_size: usize,
}

/// Deliberate failures and delays, for drills and tests (like Envoy's fault filter).
/// Each execution of a batch fails with probability `error_rate` and is delayed by
/// `delay` with probability `delay_rate`; a deployment's replica breaks with probability
/// `break_rate` per batch (its batches fail as a crash would, until it is restarted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultInjection {
    pub error_rate: f64,
    pub delay: Duration,
    pub delay_rate: f64,
    pub break_rate: f64,
}

impl FaultInjection {
    /// From its three keys as written, in a deployment file or in a task's options:
    /// rates between 0 and 1, `delay_ms` up to an hour; `delay_ms` alone delays every
    /// execution. An error is `(key, reason)`.
    pub fn from_parts(
        error_rate: Option<f64>,
        delay_ms: Option<f64>,
        delay_rate: Option<f64>,
    ) -> Result<Self, (String, String)> {
        Ok(FaultInjection {
            error_rate: fraction("error_rate", error_rate)?,
            delay: seconds("delay_ms", delay_ms.unwrap_or(0.0), 1e-3, 3_600_000.0)?,
            delay_rate: fraction("delay_rate", delay_rate.or(delay_ms.map(|_| 1.0)))?,
            break_rate: 0.0,
        })
    }

    pub fn is_active(&self) -> bool {
        self.error_rate > 0.0 || self.break_rate > 0.0 || (self.delay_rate > 0.0 && !self.delay.is_zero())
    }
}

impl Config {
    /// The embedded default: `celsius` and `mlp` on 127.0.0.1:8000.
    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_TOML, "<embedded default>", None)
            .expect("the embedded default deployment is valid. This is a bug.")
    }

    /// Reads and validates a deployment file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: path.display().to_string(),
            key: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string(), path.parent())
    }

    /// Validates a deployment file's text. `base_dir` is where relative weight paths
    /// point (the file's folder); `None` means the current directory.
    pub fn parse(text: &str, source_name: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let file: raw::File = toml::from_str(text).map_err(|e| {
            // toml's message names the line, the column and the key; keep it whole.
            err("(syntax)", e.to_string().trim_end().to_owned())
        })?;

        let server = validate_server(&file.server).map_err(|(k, r)| err(&format!("server.{k}"), r))?;
        let object_store = validate_object_store(&file.object_store, base_dir)
            .map_err(|(k, r)| err(&format!("object_store.{k}"), r))?;
        if file.deployments.is_empty() {
            return Err(err(
                "deployments",
                "the file declares no deployments; add at least one [[deployments]] table".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut deployments = Vec::new();
        for (i, d) in file.deployments.iter().enumerate() {
            let at = format!("deployments[{i}] ({})", d.name);
            let dep =
                validate_deployment(d, base_dir, &server.resources).map_err(|(k, r)| err(&format!("{at}.{k}"), r))?;
            if !names.insert(dep.name.clone()) {
                return Err(err(
                    &format!("{at}.name"),
                    format!("`{}` is declared twice; deployment names must be unique", dep.name),
                ));
            }
            deployments.push(dep);
        }
        let mut pipelines = Vec::new();
        for (i, p) in file.pipelines.iter().enumerate() {
            let at = format!("pipelines[{i}] ({})", p.name);
            let pipeline = validate_pipeline(p, &deployments).map_err(|(k, r)| err(&format!("{at}.{k}"), r))?;
            if !names.insert(pipeline.name.clone()) {
                return Err(err(
                    &format!("{at}.name"),
                    format!(
                        "`{}` is already a deployment or pipeline; model names must be unique",
                        p.name
                    ),
                ));
            }
            pipelines.push(pipeline);
        }
        Ok(Config {
            source_name: source_name.to_owned(),
            server,
            object_store,
            deployments,
            pipelines,
        })
    }
}

/// The widest input or output row: 16 M values (64 MiB of FP32 per row).
const MAX_FEATURES: i64 = 1 << 24;

/// A key (relative to the section being checked) and the reason it is wrong.
type Invalid = (String, String);

fn invalid<T>(key: &str, reason: impl fmt::Display) -> Result<T, Invalid> {
    Err((key.to_owned(), reason.to_string()))
}

fn validate_server(s: &raw::Server) -> Result<ServerConfig, Invalid> {
    let addr = s.http_addr.as_deref().unwrap_or("127.0.0.1:8000");
    let http_addr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            return invalid(
                "http_addr",
                format!("expected an address like \"127.0.0.1:8000\", got {addr:?}"),
            );
        }
    };
    let grpc = s.grpc_addr.as_deref().unwrap_or("127.0.0.1:8001");
    let grpc_addr = match grpc {
        "off" => None,
        a => match a.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                return invalid(
                    "grpc_addr",
                    format!("expected an address like \"127.0.0.1:8001\", or \"off\", got {grpc:?}"),
                );
            }
        },
    };
    let max_request_bytes = match s.max_request_bytes {
        None => 64 << 20,
        Some(0) => return invalid("max_request_bytes", "must be at least 1"),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let shutdown_timeout = seconds(
        "shutdown_timeout_s",
        s.shutdown_timeout_s.unwrap_or(30.0),
        1.0,
        86_400.0,
    )?;
    let d = ConnectionLimits::default();
    let timeout = |key: &str, value: Option<f64>, default: Duration| -> Result<Duration, Invalid> {
        let t = seconds(key, value.unwrap_or(default.as_secs_f64()), 1.0, 86_400.0)?;
        if t.is_zero() {
            return invalid(key, "must be above 0");
        }
        Ok(t)
    };
    let connections = ConnectionLimits {
        max_connections: in_range(
            "max_connections",
            s.max_connections,
            d.max_connections as i64,
            1,
            1 << 20,
        )?,
        header_read_timeout: timeout("header_read_timeout_s", s.header_read_timeout_s, d.header_read_timeout)?,
        idle_timeout: timeout("idle_timeout_s", s.idle_timeout_s, d.idle_timeout)?,
        body_read_timeout: timeout("body_read_timeout_s", s.body_read_timeout_s, d.body_read_timeout)?,
    };
    let token = |key: &str, value: &Option<String>| match value {
        None => Ok(None),
        Some(t) => Secret::new(t.clone()).map(Some).map_err(|e| (key.to_owned(), e)),
    };
    let metrics_interval = seconds("metrics_interval_s", s.metrics_interval_s.unwrap_or(5.0), 1.0, 3600.0)?;
    if metrics_interval < Duration::from_millis(100) {
        return invalid("metrics_interval_s", "must be at least 0.1 (seconds)");
    }
    let api_token = token("api_token", &s.api_token)?;
    let admin_token = token("admin_token", &s.admin_token)?;
    for (name, &amount) in &s.resources {
        let key = format!("resources.{name}");
        if matches!(name.as_str(), "CPU" | "GPU" | "memory" | "object_store_memory") || name.is_empty() {
            return invalid(&key, "is a built-in resource name; custom resources need other names");
        }
        if !amount.is_finite() || amount < 0.0 {
            return invalid(&key, format!("must be a non-negative number, got {amount}"));
        }
    }
    Ok(ServerConfig {
        http_addr,
        grpc_addr,
        allow_shared_memory: s.allow_shared_memory.unwrap_or(false),
        max_request_bytes,
        shutdown_timeout,
        connections,
        api_token,
        admin_token,
        resources: s.resources.clone(),
        metrics_interval,
    })
}

fn validate_object_store(o: &raw::ObjectStore, base_dir: Option<&Path>) -> Result<ObjectStoreConfig, Invalid> {
    let memory = match o.object_store_memory {
        None => None,
        Some(n) if n < 1 << 20 => {
            return invalid(
                "object_store_memory",
                format!("must be at least 1048576 bytes (1 MiB), got {n}"),
            );
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let spill_dir = o.spill_dir.as_ref().map(|p| match base_dir {
        Some(base) if p.is_relative() => base.join(p),
        _ => p.clone(),
    });
    let default_ttl = ttl(o.default_ttl_s.unwrap_or(600.0)).map_err(|e| ("default_ttl_s".to_owned(), e))?;
    let max_objects = in_range("max_objects", o.max_objects, 100_000, 1, i64::MAX)?;
    if o.max_object_bytes == Some(0) {
        return invalid("max_object_bytes", "must be at least 1 byte, got 0".to_owned());
    }
    Ok(ObjectStoreConfig {
        memory,
        spill_dir,
        default_ttl,
        max_spill_bytes: o.max_spill_bytes,
        max_objects,
        max_object_bytes: o.max_object_bytes,
    })
}

/// A duration from a number of `unit`-seconds, refusing negatives, non-numbers and
/// values over `max` (in the key's own unit).
fn seconds(key: &str, value: f64, unit: f64, max: f64) -> Result<Duration, Invalid> {
    if !value.is_finite() || value < 0.0 {
        return invalid(key, format!("must be a non-negative number, got {value}"));
    }
    if value > max {
        return invalid(key, format!("must be at most {max}, got {value}"));
    }
    Ok(Duration::from_secs_f64(value * unit))
}

/// An integer in `min..=max`, `default` when absent.
fn in_range(key: &str, value: Option<i64>, default: i64, min: i64, max: i64) -> Result<usize, Invalid> {
    let v = value.unwrap_or(default);
    if v < min {
        return invalid(key, format!("must be at least {min}, got {v}"));
    }
    if v > max {
        return invalid(key, format!("must be at most {max}, got {v}"));
    }
    Ok(v as usize)
}

fn fraction(key: &str, value: Option<f64>) -> Result<f64, Invalid> {
    let v = value.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&v) {
        return invalid(key, format!("must be between 0 and 1, got {v}"));
    }
    Ok(v)
}

fn validate_deployment(
    d: &raw::Deployment,
    base_dir: Option<&Path>,
    declared: &BTreeMap<String, f64>,
) -> Result<Deployment, Invalid> {
    check_model_name(&d.name)?;
    let num_replicas = in_range("num_replicas", d.num_replicas, 1, 1, 1024)?;
    let fallback = match d.fallback.as_deref() {
        None | Some("cpu") => Fallback::Cpu,
        Some("none") => Fallback::None,
        Some(other) => return invalid("fallback", format!("expected \"cpu\" or \"none\", got {other:?}")),
    };

    let num_cpus = d.actor.num_cpus.unwrap_or(1.0);
    if !num_cpus.is_finite() || num_cpus < 0.0 {
        return invalid(
            "actor.num_cpus",
            format!("must be a non-negative number, got {num_cpus}"),
        );
    }
    let num_gpus = gpu_share(d.actor.num_gpus.unwrap_or(0.0)).or_else(|reason| invalid("actor.num_gpus", reason))?;
    let threads = in_range("actor.threads", d.actor.threads, 1, 1, 1024)?;
    for (name, &amount) in &d.actor.resources {
        let key = format!("actor.resources.{name}");
        if !declared.contains_key(name) {
            return invalid(
                &key,
                format!("the server declares no resource `{name}`; declare it under [server.resources]"),
            );
        }
        if !amount.is_finite() || amount < 0.0 {
            return invalid(&key, format!("must be a non-negative number, got {amount}"));
        }
    }

    let max_batch_size = in_range("batching.max_batch_size", d.batching.max_batch_size, 32, 1, 1 << 16)?;
    let max_batch_tokens = in_range(
        "batching.max_batch_tokens",
        d.batching.max_batch_tokens,
        16_384,
        1,
        1 << 24,
    )?;
    let batch_wait_timeout = seconds(
        "batching.batch_wait_timeout_ms",
        d.batching.batch_wait_timeout_ms.unwrap_or(2.0),
        1e-3,
        60_000.0,
    )?;
    let max_queue_size = in_range("batching.max_queue_size", d.batching.max_queue_size, 1024, 1, 1 << 24)?;

    let fault_injection = match &d.fault_injection {
        None => FaultInjection::default(),
        Some(f) => FaultInjection {
            break_rate: fraction("fault_injection.break_rate", f.break_rate)?,
            ..FaultInjection::from_parts(f.error_rate, f.delay_ms, f.delay_rate)
                .map_err(|(k, r)| (format!("fault_injection.{k}"), r))?
        },
    };
    let max_restarts = in_range("max_restarts", d.max_restarts, 3, 0, 1000)? as u32;
    let restart_window = seconds("restart_window_s", d.restart_window_s.unwrap_or(60.0), 1.0, 86_400.0)?;
    if restart_window.is_zero() {
        return invalid("restart_window_s", "must be above 0");
    }

    let max_retries = in_range("max_retries", d.max_retries, 3, 0, 100)? as u32;
    let retry_exceptions = d
        .retry_exceptions
        .iter()
        .flatten()
        .map(|k| {
            ErrorKind::parse_retryable(k, &ErrorKind::BATCH_RETRYABLE).map_err(|e| {
                (
                    "retry_exceptions".to_owned(),
                    format!("{e} (a panic is a system failure, always retried)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let precision = match &d.precision {
        None => Precision::Fp32,
        Some(p) => p.parse().map_err(|e: String| ("precision".to_owned(), e))?,
    };

    let model = validate_model(&d.model, base_dir)?;
    Ok(Deployment {
        name: d.name.clone(),
        num_replicas,
        fallback,
        model,
        actor: ActorOptions {
            num_cpus,
            num_gpus,
            threads,
            resources: d.actor.resources.clone(),
        },
        batching: Batching {
            max_batch_size,
            max_batch_tokens,
            batch_wait_timeout,
            max_queue_size,
        },
        fault_injection,
        retries: Retries {
            max_retries,
            retry_exceptions,
        },
        restarts: Restarts {
            max_restarts,
            window: restart_window,
        },
        precision,
        allow_non_finite: d.allow_non_finite.unwrap_or(false),
        warmup: in_range("warmup", d.warmup, 0, 0, 1000)?,
    })
}

fn validate_model(m: &raw::Model, base_dir: Option<&Path>) -> Result<ModelSource, Invalid> {
    let resolve = |p: &PathBuf| match base_dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.clone(),
    };
    if m.huggingface.is_none() {
        for (key, set) in [
            ("model.pooling", m.pooling.is_some()),
            ("model.normalize", m.normalize.is_some()),
            ("model.max_seq_length", m.max_seq_length.is_some()),
        ] {
            if set {
                return invalid(key, "applies to a `huggingface` encoder folder only");
            }
        }
    }
    match (&m.builtin, &m.weights, &m.layers, &m.huggingface) {
        (None, None, None, Some(dir)) => {
            if m.inputs.is_some() || m.outputs.is_some() {
                return invalid(
                    "model.inputs",
                    "an encoder folder's tensors come from the folder (TEXT in; EMBEDDING, or LOGITS and LABEL, out); remove `inputs` / `outputs`",
                );
            }
            let dir = resolve(dir);
            if !dir.is_dir() {
                return invalid("model.huggingface", format!("{} is not a folder", dir.display()));
            }
            let pooling = match &m.pooling {
                None => None,
                Some(p) => Some(Pooling::parse(p).map_or_else(
                    || {
                        invalid(
                            "model.pooling",
                            format!("unknown pooling {p:?}; the poolings are {}", Pooling::NAMES),
                        )
                    },
                    Ok,
                )?),
            };
            let max_seq_length = match m.max_seq_length {
                None => None,
                Some(n) if (1..=1 << 20).contains(&n) => Some(n as usize),
                Some(n) => {
                    return invalid(
                        "model.max_seq_length",
                        format!("must be from 1 to {}, got {n}", 1 << 20),
                    );
                }
            };
            Ok(ModelSource::HuggingFace {
                dir,
                overrides: EncoderOverrides {
                    pooling,
                    normalize: m.normalize,
                    max_seq_length,
                },
            })
        }
        (Some(name), None, None, None) => {
            if m.inputs.is_some() || m.outputs.is_some() {
                return invalid(
                    "model.inputs",
                    "a built-in model has fixed inputs and outputs; remove `inputs` / `outputs`",
                );
            }
            let (input, output) = match name.as_str() {
                "celsius" => (1, 1),
                "mlp" => (
                    prism_kernels::builtin::MLP_SIZES[0],
                    prism_kernels::builtin::MLP_SIZES[2],
                ),
                other => {
                    return invalid(
                        "model.builtin",
                        format!(
                            "unknown built-in model {other:?}; built-ins are {}",
                            prism_kernels::builtin::NAMES.join(", ")
                        ),
                    );
                }
            };
            let spec = |name: &str, features| TensorSpec {
                name: name.into(),
                datatype: DType::F32,
                features,
            };
            Ok(ModelSource::Builtin {
                name: name.clone(),
                io: RowsIo {
                    input: spec("INPUT0", input),
                    output: spec("OUTPUT0", output),
                },
            })
        }
        (None, Some(weights), Some(layers), None) => {
            if layers.is_empty() {
                return invalid("model.layers", "must list at least one layer");
            }
            let input = single_tensor("model.inputs", m.inputs.as_deref())?;
            let output = single_tensor("model.outputs", m.outputs.as_deref())?;
            Ok(ModelSource::Layers {
                weights: resolve(weights),
                layers: layers.clone(),
                io: RowsIo { input, output },
            })
        }
        (b, w, _, h) if [b.is_some(), w.is_some(), h.is_some()].iter().filter(|&&x| x).count() > 1 => invalid(
            "model",
            "set either `builtin`, or `weights` and `layers`, or `huggingface`, not both",
        ),
        (None, None, _, None) => invalid(
            "model.weights",
            "missing: a model needs `builtin = \"...\"`, `weights` (a safetensors file) and `layers`, or `huggingface = \"folder\"`",
        ),
        (None, Some(_), None, None) => invalid("model.layers", "missing: list the layers to apply to the weights"),
        _ => invalid(
            "model",
            "`layers` go with `weights`, not with `builtin` or `huggingface`",
        ),
    }
}

/// A name usable in `/v2/models/{name}` URLs.
fn check_model_name(name: &str) -> Result<(), Invalid> {
    if name == "stats" {
        return invalid(
            "name",
            "\"stats\" is reserved: /v2/models/stats is the statistics of every model",
        );
    }
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.');
    if !name_ok {
        return invalid(
            "name",
            format!(
                "{name:?} is not a usable model name: use 1-128 letters, digits, '_', '-' or '.', not starting with '.'"
            ),
        );
    }
    Ok(())
}

fn validate_pipeline(p: &raw::Pipeline, deployments: &[Deployment]) -> Result<Pipeline, Invalid> {
    check_model_name(&p.name)?;
    let Some(raw_inputs) = p.inputs.as_deref().filter(|i| !i.is_empty()) else {
        return invalid(
            "inputs",
            "missing: declare the request's tensors, like [{ name = \"INPUT0\", datatype = \"FP32\", shape = [-1, 1] }]",
        );
    };
    let mut known: Vec<&str> = Vec::new();
    let mut inputs = Vec::new();
    for (i, t) in raw_inputs.iter().enumerate() {
        let key = format!("inputs[{i}]");
        if t.name.is_empty() || known.contains(&t.name.as_str()) {
            return invalid(
                &format!("{key}.name"),
                format!("{:?} is empty or declared twice", t.name),
            );
        }
        let datatype = match t.datatype.parse::<DType>() {
            Ok(d) if d.is_numeric() => d,
            Ok(d) => return invalid(&format!("{key}.datatype"), format!("{d} is not numeric")),
            Err(e) => return invalid(&format!("{key}.datatype"), e),
        };
        if t.shape.iter().any(|&d| d < -1 || d == 0) {
            return invalid(
                &format!("{key}.shape"),
                format!(
                    "dimensions are positive, or -1 where the size varies; got {:?}",
                    t.shape
                ),
            );
        }
        known.push(&t.name);
        inputs.push(PipelineTensor {
            name: t.name.clone(),
            datatype,
            shape: t.shape.clone(),
        });
    }
    if p.steps.is_empty() {
        return invalid("steps", "the pipeline has no steps; add [[pipelines.steps]] tables");
    }
    let mut steps = Vec::new();
    for (i, s) in p.steps.iter().enumerate() {
        let key = format!("steps[{i}] ({})", s.name);
        if s.name.is_empty() || known.contains(&s.name.as_str()) {
            return invalid(
                &format!("{key}.name"),
                format!("{:?} is empty, or already a pipeline input or step", s.name),
            );
        }
        let run = match (&s.model, &s.op) {
            (Some(m), None) => {
                match deployments.iter().find(|d| &d.name == m) {
                    None => {
                        let names: Vec<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
                        return invalid(
                            &format!("{key}.model"),
                            format!("no deployment `{m}` in this file (it has: {})", names.join(", ")),
                        );
                    }
                    Some(d) if d.model.rows_io().is_none() => {
                        return invalid(
                            &format!("{key}.model"),
                            format!(
                                "`{m}` is an encoder (texts in): a pipeline step runs a model over rows of numbers; feed its EMBEDDING on by ref instead"
                            ),
                        );
                    }
                    Some(_) => {}
                }
                if s.inputs.len() != 1 {
                    return invalid(
                        &format!("{key}.inputs"),
                        format!("a model step takes exactly one input, got {}", s.inputs.len()),
                    );
                }
                StepKind::Model(m.clone())
            }
            (None, Some(op)) => {
                let op: prism_kernels::TaskOp = op.parse().map_err(|e: String| (format!("{key}.op"), e))?;
                if op.check_arity(s.inputs.len()).is_err() {
                    let n = op.arity();
                    return invalid(
                        &format!("{key}.inputs"),
                        format!(
                            "op `{op}` takes {n} input{}, got {}",
                            if n == 1 { "" } else { "s" },
                            s.inputs.len()
                        ),
                    );
                }
                StepKind::Op(op)
            }
            _ => return invalid(&key, "give exactly one of `model` (a deployment) or `op` (a task op)"),
        };
        for (j, source) in s.inputs.iter().enumerate() {
            if !known.contains(&source.as_str()) {
                return invalid(
                    &format!("{key}.inputs[{j}]"),
                    format!(
                        "`{source}` is neither a pipeline input nor an earlier step (steps may only read inputs and the steps above them)"
                    ),
                );
            }
        }
        known.push(&s.name);
        steps.push(Step {
            name: s.name.clone(),
            run,
            inputs: s.inputs.clone(),
        });
    }
    let Some(output) = &p.output else {
        return invalid(
            "output",
            "missing: name the step whose result is the answer, like { step = \"total\" }",
        );
    };
    if !steps.iter().any(|s| s.name == output.step) {
        return invalid("output.step", format!("no step named `{}`", output.step));
    }
    Ok(Pipeline {
        name: p.name.clone(),
        inputs,
        output_name: output.name.clone().unwrap_or_else(|| "OUTPUT0".into()),
        output_step: output.step.clone(),
        steps,
    })
}

fn single_tensor(key: &str, tensors: Option<&[raw::Tensor]>) -> Result<TensorSpec, Invalid> {
    let tensors = match tensors {
        None => {
            return invalid(
                key,
                "missing: declare one tensor, like [{ name = \"INPUT0\", datatype = \"FP32\", shape = [-1, 64] }]",
            );
        }
        Some(t) => t,
    };
    let [t] = tensors else {
        return invalid(
            key,
            format!("a layer model has exactly one tensor here, got {}", tensors.len()),
        );
    };
    let key0 = format!("{key}[0]");
    if t.name.is_empty() {
        return invalid(&format!("{key0}.name"), "must not be empty");
    }
    let datatype = match t.datatype.parse::<DType>() {
        Ok(d) if d.is_numeric() => d,
        Ok(d) => {
            return invalid(
                &format!("{key0}.datatype"),
                format!("{d} cannot feed a numeric model; use a numeric type such as FP32"),
            );
        }
        Err(e) => return invalid(&format!("{key0}.datatype"), e),
    };
    let features = match t.shape.as_slice() {
        [-1, f] if (1..=MAX_FEATURES).contains(f) => *f as usize,
        other => {
            return invalid(
                &format!("{key0}.shape"),
                format!(
                    "expected [-1, features]: a batch dimension, then a fixed width from 1 to {MAX_FEATURES}; got {other:?}"
                ),
            );
        }
    };
    Ok(TensorSpec {
        name: t.name.clone(),
        datatype,
        features,
    })
}

#[cfg(test)]
mod tests;
