use super::*;

const DIGITS: &str = include_str!("../examples/digits.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", Some(Path::new("/models")))
}

fn error(text: &str) -> String {
    parse(text).expect_err("expected the file to be refused").to_string()
}

#[test]
fn the_embedded_default_serves_celsius_and_mlp() {
    let c = Config::embedded_default();
    assert_eq!(c.server.http_addr, "127.0.0.1:8000".parse().unwrap());
    assert_eq!(c.server.grpc_addr, Some("127.0.0.1:8001".parse().unwrap()));
    assert!(!c.server.allow_shared_memory, "shared memory is off unless asked for");
    let names: Vec<_> = c.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["celsius", "mlp"]);
    let io = c.deployments[1].model.rows_io().unwrap();
    assert_eq!(io.input.shape(), [-1, 784]);
    assert_eq!(io.output.features, 10);
}

#[test]
fn grpc_can_be_turned_off_and_shared_memory_on() {
    let c = parse(&DIGITS.replace(
        "http_addr = \"127.0.0.1:8000\"",
        "http_addr = \"127.0.0.1:8000\"\ngrpc_addr = \"off\"\nallow_shared_memory = true",
    ))
    .unwrap();
    assert_eq!(c.server.grpc_addr, None);
    assert!(c.server.allow_shared_memory);
}

#[test]
fn the_example_file_parses_with_paths_relative_to_it() {
    let c = parse(DIGITS).unwrap();
    let d = &c.deployments[0];
    assert_eq!(d.num_replicas, 2);
    assert_eq!(d.batching.batch_wait_timeout, Duration::from_millis(2));
    assert_eq!(d.model.rows_io().unwrap().input.features, 64);
    match &d.model {
        ModelSource::Layers { weights, layers, .. } => {
            assert_eq!(weights, Path::new("/models/digits.safetensors"));
            assert_eq!(layers.len(), 4);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unknown_keys_are_refused_with_the_file_and_the_key() {
    let msg = error(&DIGITS.replace("max_queue_size", "max_queue_len"));
    assert!(msg.starts_with("test.toml: "), "{msg}");
    assert!(msg.contains("max_queue_len") && msg.contains("line"), "{msg}");

    let msg = error(&DIGITS.replace("bias = \"fc1.bias\"", "bais = \"fc1.bias\""));
    assert!(msg.contains("bais"), "{msg}");
}

#[test]
fn impossible_values_name_the_key_and_the_reason() {
    let cases = [
        (
            "max_batch_size = 32",
            "max_batch_size = 0",
            "deployments[0] (digits).batching.max_batch_size: must be at least 1, got 0",
        ),
        (
            "num_gpus = 0 ",
            "num_gpus = 1.5 ",
            "actor.num_gpus: must be a fraction up to 1",
        ),
        (
            "shape = [-1, 64]",
            "shape = [64]",
            "model.inputs[0].shape: expected [-1, features]",
        ),
        (
            "datatype = \"FP32\", shape = [-1, 64]",
            "datatype = \"FLOAT\", shape = [-1, 64]",
            "unknown datatype `FLOAT`",
        ),
        (
            "fallback = \"cpu\"",
            "fallback = \"gpu\"",
            "fallback: expected \"cpu\" or \"none\"",
        ),
        (
            "http_addr = \"127.0.0.1:8000\"",
            "http_addr = \"localhost\"",
            "server.http_addr: expected an address",
        ),
        (
            "http_addr = \"127.0.0.1:8000\"",
            "http_addr = \"127.0.0.1:8000\"\ngrpc_addr = \"8001\"",
            "server.grpc_addr: expected an address like \"127.0.0.1:8001\", or \"off\", got \"8001\"",
        ),
        (
            "batch_wait_timeout_ms = 2",
            "batch_wait_timeout_ms = -2",
            "must be a non-negative number",
        ),
        (
            "fallback = \"cpu\"",
            "fallback = \"cpu\"\nwarmup = -1",
            "deployments[0] (digits).warmup: must be at least 0, got -1",
        ),
        (
            "http_addr = \"127.0.0.1:8000\"",
            "http_addr = \"127.0.0.1:8000\"\nmetrics_interval_s = 0.01",
            "server.metrics_interval_s: must be at least 0.1",
        ),
    ];
    for (from, to, want) in cases {
        let text = DIGITS.replace(from, to);
        assert_ne!(text, DIGITS, "the case {from:?} did not apply");
        let msg = error(&text);
        assert!(msg.contains(want), "{to}: {msg}");
    }
}

#[test]
fn model_sources_are_exclusive_and_complete() {
    let builtin = "[[deployments]]\nname = \"m\"\n[deployments.model]\n";
    assert!(
        error(&format!("{builtin}builtin = \"resnet\""))
            .contains("unknown built-in model \"resnet\"; built-ins are celsius, mlp")
    );
    assert!(error(&format!("{builtin}builtin = \"mlp\"\nweights = \"w.safetensors\"")).contains("not both"));
    assert!(error(&format!("{builtin}weights = \"w.safetensors\"")).contains("model.layers: missing"));
    assert!(error(builtin).contains("model.weights: missing"));
    let ok = parse(&format!("{builtin}builtin = \"celsius\"")).unwrap();
    assert!(matches!(&ok.deployments[0].model, ModelSource::Builtin { name, .. } if name == "celsius"));
    assert_eq!(ok.deployments[0].batching.max_batch_size, 32);
}

#[test]
fn names_must_be_unique_and_url_safe() {
    let one = "[[deployments]]\nname = \"m\"\n[deployments.model]\nbuiltin = \"mlp\"\n";
    assert!(error(&format!("{one}{one}")).contains("deployments[1] (m).name: `m` is declared twice"));
    assert!(error(&one.replace("\"m\"", "\"a/b\"")).contains("is not a usable model name"));
    assert!(error("").contains("declares no deployments"));
}

#[test]
fn custom_resources_are_declared_by_the_server_and_asked_for_by_actors() {
    let text = DIGITS.replace("[server]\n", "[server]\nresources = { licence = 2 }\n");
    let with_ask = text.replace("threads = 1 ", "threads = 1\nresources = { licence = 1 } ");
    assert_ne!(with_ask, text);
    let c = parse(&with_ask).unwrap();
    assert_eq!(c.server.resources["licence"], 2.0);
    assert_eq!(c.deployments[0].actor.resources["licence"], 1.0);
    let undeclared = DIGITS.replace("threads = 1 ", "threads = 1\nresources = { licence = 1 } ");
    assert!(error(&undeclared).contains("actor.resources.licence: the server declares no resource `licence`"));
    assert!(
        error(&DIGITS.replace("[server]\n", "[server]\nresources = { GPU = 2 }\n")).contains("built-in resource name")
    );
}

#[test]
fn fault_injection_defaults_its_delay_rate_to_always() {
    let text = format!("{DIGITS}\n[deployments.fault_injection]\ndelay_ms = 50\n");
    let f = parse(&text).unwrap().deployments[0].fault_injection.clone();
    assert_eq!(
        (f.delay, f.delay_rate, f.error_rate),
        (Duration::from_millis(50), 1.0, 0.0)
    );
    assert!(error(&format!("{DIGITS}\n[deployments.fault_injection]\nerror_rate = 2\n")).contains("between 0 and 1"));
}

#[test]
fn precision_defaults_to_fp32_and_names_the_choices() {
    let c = Config::embedded_default();
    assert!(c.deployments.iter().all(|d| d.precision == Precision::Fp32));
    let file = |p: &str| {
        format!("[[deployments]]\nname = \"m\"\nprecision = \"{p}\"\n[deployments.model]\nbuiltin = \"celsius\"\n")
    };
    assert_eq!(parse(&file("bf16")).unwrap().deployments[0].precision, Precision::Bf16);
    let e = error(&file("int8"));
    assert!(
        e.contains("deployments[0] (m).precision: expected \"fp32\", \"tf32\", \"bf16\" or \"fp16\", got \"int8\""),
        "{e}"
    );
}

#[test]
fn object_store_keys_are_checked() {
    let file = |body: &str| {
        format!("[object_store]\n{body}\n[[deployments]]\nname = \"m\"\n[deployments.model]\nbuiltin = \"celsius\"\n")
    };
    let c = parse(&file(
        "object_store_memory = 1073741824\nspill_dir = \"spill\"\ndefault_ttl_s = 60",
    ))
    .unwrap();
    assert_eq!(c.object_store.memory, Some(1 << 30));
    assert_eq!(c.object_store.spill_dir.as_deref(), Some(Path::new("/models/spill")));
    assert_eq!(c.object_store.default_ttl, Duration::from_secs(60));
    assert!(
        error(&file("object_store_memory = 10")).contains("object_store.object_store_memory: must be at least 1048576")
    );
    assert!(error(&file("default_ttl_s = 0")).contains("object_store.default_ttl_s: expected seconds above 0"));
    assert!(error(&file("spill = 1")).contains("unknown field `spill`"));
}

#[test]
fn a_system_failure_is_retried_always_an_application_error_when_named() {
    let r = Retries {
        max_retries: 2,
        retry_exceptions: vec![ErrorKind::InjectedFault],
    };
    assert!(r.again(ErrorKind::Panic, 1) && r.again(ErrorKind::Panic, 2) && !r.again(ErrorKind::Panic, 3));
    assert!(r.again(ErrorKind::InjectedFault, 2) && !r.again(ErrorKind::InjectedFault, 3));
    assert!(!r.again(ErrorKind::ModelError, 1), "not named");
}

#[test]
fn an_encoder_folder_is_a_model_source_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("enc")).unwrap();
    let parse_here = |text: &str| Config::parse(text, "enc.toml", Some(dir.path()));
    let base = "[[deployments]]\nname = \"e\"\n[deployments.model]\nhuggingface = \"enc\"\n";
    let c = parse_here(&format!(
        "{base}pooling = \"cls\"\nnormalize = true\nmax_seq_length = 64\n"
    ))
    .unwrap();
    match &c.deployments[0].model {
        ModelSource::HuggingFace { dir: d, overrides } => {
            assert_eq!(d, &dir.path().join("enc"));
            assert_eq!(overrides.pooling, Some(Pooling::Cls));
            assert_eq!((overrides.normalize, overrides.max_seq_length), (Some(true), Some(64)));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(c.deployments[0].model.rows_io().is_none());
    assert_eq!(c.deployments[0].batching.max_batch_tokens, 16_384);
    let err = |text: &str| parse_here(text).unwrap_err().to_string();
    assert!(err(&format!("{base}pooling = \"sum\"\n")).contains("model.pooling: unknown pooling \"sum\""));
    assert!(err(&base.replace("\"enc\"", "\"missing\"")).contains("model.huggingface:"));
    assert!(err(&format!("{base}inputs = []\n")).contains("tensors come from the folder"));
    // Encoders run on GPU slots as layer models do.
    let on_gpu = parse_here(&format!("{base}[deployments.actor]\nnum_gpus = 0.5\n")).unwrap();
    assert_eq!(on_gpu.deployments[0].actor.num_gpus, 0.5);
    assert!(
        err("[[deployments]]\nname = \"m\"\n[deployments.model]\nbuiltin = \"mlp\"\npooling = \"cls\"\n")
            .contains("model.pooling: applies to a `huggingface` encoder folder only")
    );
    let pipeline = "[[pipelines]]\nname = \"p\"\ninputs = [{ name = \"X\", datatype = \"FP32\", shape = [-1, 1] }]\n\
                    output = { step = \"a\" }\n[[pipelines.steps]]\nname = \"a\"\nmodel = \"e\"\ninputs = [\"X\"]\n";
    assert!(err(&format!("{base}{pipeline}")).contains("`e` is an encoder (texts in)"));
}
