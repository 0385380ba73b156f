//! `sparsec serve`: the QA pipeline as an HTTP server (the Open Inference Protocol's routes and
//! DeepSparse server's, and its config), with the same question-answering flags and defaults as
//! `sparsec qa`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use super::qa::PipelineFlags;
use crate::serve::config::{kwargs_as_args, ConfigFile, DEFAULT_ENDPOINT};
use crate::serve::{EndpointConfig, Event, Limits, ServeConfig};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A model.onnx with tokenizer.json beside it, or a folder holding both.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    model: Option<PathBuf>,
    /// The model's name with --model (`/v2/models/{name}/...`); KServe passes its
    /// InferenceService's name here. A server.yaml names each endpoint itself.
    #[arg(long, default_value = DEFAULT_ENDPOINT, conflicts_with = "config")]
    name: String,
    /// A DeepSparse-style server.yaml (`endpoints: - task, model, route, name, batch_size,
    /// kwargs`) serving several models; the flags below are every endpoint's defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// 0 picks a free port (printed on the `listening on` line).
    #[arg(long, default_value_t = 5543)]
    port: u16,
    #[command(flatten)]
    pipeline: PipelineFlags,
    /// Windows per model run, gathered across concurrent requests; 1 turns batching off.
    #[arg(long, default_value_t = 16)]
    max_batch_size: usize,
    /// How long a batch's first window waits for more.
    #[arg(long, default_value_t = 5)]
    batch_timeout_ms: u64,
    /// Requests admitted at once per endpoint (read, tokenized, queued or running); the next
    /// one gets 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue_size: usize,
    /// Larger request bodies get 413.
    #[arg(long, default_value_t = 1 << 20)]
    max_request_bytes: usize,
    /// Longer contexts (in characters) get 413.
    #[arg(long, default_value_t = 100_000)]
    max_context_chars: usize,
    /// Seconds a request body may take to arrive (then 408).
    #[arg(long, default_value_t = 10)]
    body_timeout_s: u64,
    /// Seconds a request's headers may take to arrive (also the longest a kept-alive connection
    /// idles); then the connection is closed.
    #[arg(long, default_value_t = 10)]
    header_timeout_s: u64,
    /// Open connections served fully; up to 16 more get the health and metrics routes (others
    /// answer 503), further ones are closed at once.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// More questions in one request get 413.
    #[arg(long, default_value_t = 64)]
    max_questions_per_request: usize,
    /// Waits this long before loading the models (for tests of /health while loading).
    #[arg(long, default_value_t = 0, hide = true)]
    load_delay_ms: u64,
}

/// The pipeline flags of one endpoint: the command line's, then the endpoint's kwargs.
#[derive(Parser)]
#[command(name = "kwargs", no_binary_name = true, args_override_self = true, disable_help_flag = true)]
struct KwargsFlags {
    #[command(flatten)]
    pipeline: PipelineFlags,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let config = resolve(&args)?;
    crate::serve::run(config, print_event)
}

fn resolve(args: &ServeArgs) -> Result<ServeConfig> {
    let endpoint = |name: String, model: PathBuf, routes, flags: &PipelineFlags, max_batch_size| {
        let (window, decode, engine_options) = flags.resolve()?;
        Ok::<_, anyhow::Error>(EndpointConfig {
            name,
            routes,
            model: super::resolve_model_path(&model),
            engine: flags.engine,
            kernels: flags.kernels,
            engine_options,
            window,
            decode,
            decoder: flags.decoder,
            max_batch_size,
            batch_timeout: Duration::from_millis(args.batch_timeout_ms),
        })
    };
    let endpoints = match (&args.model, &args.config) {
        (Some(model), _) => {
            vec![endpoint(args.name.clone(), model.clone(), Vec::new(), &args.pipeline, args.max_batch_size)?]
        }
        (None, Some(path)) => {
            let file = ConfigFile::load(path)?;
            let mut out = Vec::new();
            for (i, e) in file.endpoints.into_iter().enumerate() {
                let at = || format!("config '{}': endpoints[{i}]", path.display());
                let mut argv = flag_args(&args.pipeline);
                if let (None, Some(n)) = (args.pipeline.threads, file.num_cores) {
                    argv.extend(["--threads".to_string(), n.to_string()]);
                }
                argv.extend(kwargs_as_args(&e.kwargs).with_context(at)?);
                let flags = KwargsFlags::try_parse_from(&argv).map_err(|err| {
                    let first = err.to_string().lines().next().unwrap_or_default().to_string();
                    anyhow::anyhow!("{}: kwargs: {}", at(), first.trim_start_matches("error: "))
                })?;
                let name = e.name.clone().unwrap_or_else(|| {
                    if i == 0 {
                        DEFAULT_ENDPOINT.to_string()
                    } else {
                        format!("{DEFAULT_ENDPOINT}_{i}")
                    }
                });
                let routes = e.route.iter().cloned().collect();
                let batch = e.batch_size.unwrap_or(args.max_batch_size);
                out.push(endpoint(name, e.model, routes, &flags.pipeline, batch).with_context(at)?);
            }
            out
        }
        (None, None) => unreachable!("clap requires --model or --config"),
    };
    Ok(ServeConfig {
        addr: SocketAddr::new(args.host, args.port),
        limits: Limits {
            max_request_bytes: args.max_request_bytes,
            max_context_chars: args.max_context_chars,
            max_pending: args.queue_size,
            body_timeout: Duration::from_secs(args.body_timeout_s),
            header_timeout: Duration::from_secs(args.header_timeout_s),
            max_connections: args.max_connections,
            max_questions: args.max_questions_per_request,
        },
        endpoints,
        load_delay: Duration::from_millis(args.load_delay_ms),
    })
}

/// `flags` written back as arguments, so an endpoint's kwargs can override them.
fn flag_args(f: &PipelineFlags) -> Vec<String> {
    let mut out = vec![
        format!("--top-k={}", f.top_k),
        format!("--engine={}", f.engine),
        format!("--max-answer-length={}", f.max_answer_length),
        format!("--max-seq-len={}", f.max_seq_len),
        format!("--max-question-len={}", f.max_question_len),
        format!("--decoder={}", clap::ValueEnum::to_possible_value(&f.decoder).expect("listed").get_name()),
    ];
    out.extend(f.doc_stride.map(|s| format!("--doc-stride={s}")));
    out.extend(f.threads.map(|t| format!("--threads={t}")));
    if f.handle_impossible_answer {
        out.push("--handle-impossible-answer".to_string());
    }
    out
}

fn print_event(e: Event) {
    match e {
        Event::Listening(addr) => println!("listening on http://{addr}"),
        Event::Ready { endpoint, model, sparsity } => {
            let sparsity = sparsity.map(|s| format!(", {:.2}% sparse", s * 100.0)).unwrap_or_default();
            println!("ready: {endpoint} ({}{sparsity})", model.display());
        }
        Event::Stopping { in_flight } => println!("stopping: {in_flight} requests in flight"),
        Event::Stopped(t) => {
            println!("stopped: {} requests received, {} answered, {} with status 200", t.received, t.answered, t.ok)
        }
    }
}
