//! Settings of `sparsec serve`: the server's limits and one [`EndpointConfig`] per served model,
//! and the YAML file (`--config server.yaml`) in DeepSparse server's shape that lists several.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::qa::{DecodeOptions, Decoder, WindowOptions};
use crate::runtime::{EngineKind, EngineOptions, Kernels};

/// The endpoint name of a server started with `--model` (DeepSparse's task name).
pub const DEFAULT_ENDPOINT: &str = "question_answering";

/// Everything the server needs before it binds.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub limits: Limits,
    /// At least one; names and routes are unique (checked by [`ServeConfig::validate`]).
    pub endpoints: Vec<EndpointConfig>,
    /// Waits this long before loading the models (lets tests observe `/health` while loading).
    pub load_delay: Duration,
}

/// Per-request and per-queue bounds; together they cap the memory a server can hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests a body larger than this get 413.
    pub max_request_bytes: usize,
    /// A context longer than this many characters gets 413.
    pub max_context_chars: usize,
    /// Requests admitted per endpoint at once (being tokenized, queued or run); the next one
    /// gets 503 with `Retry-After`.
    pub max_pending: usize,
    /// A request body that has not fully arrived after this long gets 408.
    pub body_timeout: Duration,
    /// A request's headers must arrive within this long of the connection's turn to read them
    /// (so it is also the longest a kept-alive connection idles); then the connection is closed.
    pub header_timeout: Duration,
    /// Open connections served fully; the ones past it get only health and metrics routes (see
    /// [`listen`](super::listen)).
    pub max_connections: usize,
    /// A request holding more questions than this gets 413.
    pub max_questions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1 << 20,
            max_context_chars: 100_000,
            max_pending: 64,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_questions: 64,
        }
    }
}

/// One served model and how its requests are answered and batched.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// `/v2/models/{name}/infer` and `/v2/models/{name}`.
    pub name: String,
    /// Extra `POST` routes answering like `/v2/models/{name}/infer`.
    pub routes: Vec<String>,
    /// The `model.onnx` (with `tokenizer.json` beside it).
    pub model: PathBuf,
    pub engine: EngineKind,
    /// Which of sparsec's kernels the model is lowered to (on ONNX Runtime).
    pub kernels: Kernels,
    pub engine_options: EngineOptions,
    pub window: WindowOptions,
    pub decode: DecodeOptions,
    pub decoder: Decoder,
    /// Windows per model run, gathered across concurrent requests; 1 turns batching off.
    pub max_batch_size: usize,
    /// How long the first window of a batch waits for others.
    pub batch_timeout: Duration,
}

impl ServeConfig {
    /// Fails on settings the server cannot run with, naming the endpoint.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            bail!("no endpoint to serve");
        }
        if self.limits.max_pending == 0 {
            bail!("--queue-size must be at least 1");
        }
        if self.limits.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if self.limits.max_questions == 0 {
            bail!("--max-questions-per-request must be at least 1");
        }
        if self.limits.header_timeout.is_zero() || self.limits.body_timeout.is_zero() {
            bail!("--header-timeout-s and --body-timeout-s must be at least 1");
        }
        let mut routes: Vec<String> = Vec::new();
        for e in &self.endpoints {
            if e.name.is_empty() || !e.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
                bail!("endpoint name '{}' must be non-empty ASCII letters, digits, '_', '-' or '.'", e.name);
            }
            if e.max_batch_size == 0 {
                bail!("endpoint '{}': the max batch size must be at least 1", e.name);
            }
            if self.endpoints.iter().filter(|o| o.name == e.name).count() > 1 {
                bail!("endpoint name '{}' is taken twice", e.name);
            }
            for r in &e.routes {
                check_route(r).with_context(|| format!("endpoint '{}'", e.name))?;
                if r == "/v2" || r.starts_with("/v2/") {
                    bail!("endpoint '{}': route '{r}': the /v2 routes are the Open Inference Protocol's", e.name);
                }
                if routes.contains(r) || ["/health", "/metrics", "/predict"].contains(&r.as_str()) {
                    bail!("endpoint '{}': route '{r}' is taken twice", e.name);
                }
                routes.push(r.clone());
            }
        }
        Ok(())
    }
}

fn check_route(r: &str) -> Result<()> {
    let ok = r.starts_with('/')
        && r.len() > 1
        && !r.ends_with('/')
        && !r.contains("//")
        && r.chars().all(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c));
    if !ok {
        bail!("route '{r}' must start with '/' and hold only ASCII letters, digits, '/', '_', '-' or '.'");
    }
    Ok(())
}

/// `server.yaml` as DeepSparse's server reads it, restricted to what sparsec serves:
///
/// ```yaml
/// num_cores: 2            # optional: intra-op threads of every endpoint without its own
/// endpoints:
///   - task: question_answering
///     model: ./minilm            # a folder with model.onnx, or a .onnx file (relative to the YAML)
///     route: /qa/predict         # optional extra route
///     name: minilm               # optional: /v2/models/minilm/infer
///     batch_size: 16             # optional: max windows per model run
///     kwargs: {doc_stride: 128, top_k: 2, engine: ort}   # `sparsec qa` flags, '_' for '-'
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub num_cores: Option<usize>,
    pub endpoints: Vec<EndpointEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    pub task: String,
    pub model: PathBuf,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub kwargs: BTreeMap<String, serde_yaml::Value>,
}

const QA_TASKS: &[&str] = &["question_answering", "question-answering", "qa"];

impl ConfigFile {
    /// Reads and checks `path`; model paths are made relative to its folder.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config '{}'", path.display()))?;
        let mut cfg: ConfigFile =
            serde_yaml::from_str(&text).with_context(|| format!("config '{}'", path.display()))?;
        if cfg.endpoints.is_empty() {
            bail!("config '{}': 'endpoints' is empty", path.display());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for (i, e) in cfg.endpoints.iter_mut().enumerate() {
            if !QA_TASKS.contains(&e.task.as_str()) {
                bail!(
                    "config '{}': endpoints[{i}].task '{}' is not served: sparsec serves question_answering",
                    path.display(),
                    e.task
                );
            }
            if e.model.is_relative() {
                e.model = base.join(&e.model);
            }
        }
        Ok(cfg)
    }
}

/// `kwargs` as command-line arguments (`top_k: 2` → `--top-k 2`, `flag: true` → `--flag`), so
/// they are parsed by the same flags, defaults and checks as `sparsec qa`.
pub fn kwargs_as_args(kwargs: &BTreeMap<String, serde_yaml::Value>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (k, v) in kwargs {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            serde_yaml::Value::Bool(true) => out.push(flag),
            serde_yaml::Value::Bool(false) => {}
            serde_yaml::Value::Number(n) => out.extend([flag, n.to_string()]),
            serde_yaml::Value::String(s) => out.extend([flag, s.clone()]),
            other => bail!("kwargs.{k}: expected a number, string or boolean, got {other:?}"),
        }
    }
    Ok(out)
}
