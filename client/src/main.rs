//! `prism`: talk to a V2 inference server from the command line.
//!
//! ```text
//! prism models                                   # what the server serves
//! prism model mlp                                # one model's metadata and config
//! prism infer celsius --input '[[100]]'          # one inference; shape from the nesting
//! prism infer celsius --request '{"inputs": [...]}'
//! ```

use std::io::Read;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use prism_client::Client;
use prism_client::v2::{InferInput, InferRequest, TensorData};
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let client = Client::new(&cli.url);
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
    }
    Ok(())
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
    serde_json::from_str(&body).context("the request is not a valid V2 inference request")
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
