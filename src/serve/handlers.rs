//! The HTTP routes: request bodies → QA requests (one `{question, context}`, a list of them,
//! Hugging Face's `{inputs: ...}`, or an Open Inference Protocol tensor request, see [`v2`]) →
//! windows → the endpoint's [`Batcher`] → answers decoded like
//! [`QaPipeline::answer`](crate::qa::QaPipeline::answer). Every failure is a JSON `{error}` with
//! its status: 400 malformed, 404 unknown model, 408 slow body, 413 too large, 422 unanswerable
//! (400 for a tensor request, as the protocol has it), 503 loading or busy (with `Retry-After`),
//! 500 a failed model run.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::batcher::{Batcher, Loaded, Ran, Rejected};
use super::config::{EndpointConfig, Limits};
use super::metrics::{self, Connections, EndpointSample, HttpMetrics};
use super::v2;
use crate::qa::postprocess::{decode, WindowLogits};
use crate::qa::{Answer, QaRequest, Window};

/// One served model: its settings, its queue and, once loaded, its window builder.
pub struct Endpoint {
    pub cfg: EndpointConfig,
    pub batcher: Batcher,
    pub loaded: OnceLock<Loaded>,
    /// Admission: one permit per request being read, tokenized, queued or run.
    permits: Arc<Semaphore>,
}

impl Endpoint {
    pub fn new(cfg: EndpointConfig, batcher: Batcher, max_pending: usize) -> Endpoint {
        Endpoint { cfg, batcher, loaded: OnceLock::new(), permits: Arc::new(Semaphore::new(max_pending)) }
    }

    fn pending(&self, max_pending: usize) -> usize {
        max_pending - self.permits.available_permits()
    }
}

/// What every route shares.
pub struct App {
    pub endpoints: Vec<Endpoint>,
    pub limits: Limits,
    pub http: HttpMetrics,
    pub connections: Arc<Connections>,
}

impl App {
    fn ready(&self) -> bool {
        self.endpoints.iter().all(|e| e.loaded.get().is_some())
    }
}

/// An error response: `{"error": message}` with a status (and `Retry-After` on 503).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError { status, message: message.into() }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type AppState = State<Arc<App>>;

/// Every route of `app`, with request metrics around them.
pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/predict", infer_route(0))
        .route("/v2", get(|| async { Json(v2::server_metadata()) }))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready));
    for (i, e) in app.endpoints.iter().enumerate() {
        let base = format!("/v2/models/{}", e.cfg.name);
        let versioned = format!("{base}/versions/{{version}}");
        r = r
            .route(&format!("{base}/infer"), infer_route(i))
            .route(&base, get(move |State(app): AppState| async move { metadata(&app, i) }))
            .route(&format!("{base}/ready"), get(move |State(app): AppState| async move { model_ready(&app, i) }))
            .route(
                &format!("{versioned}/infer"),
                post(move |State(app): AppState, Path(v): Path<String>, req: Request| async move {
                    check_version(&app, i, &v)?;
                    infer(&app, i, req).await
                })
                .fallback(|| async { err(StatusCode::METHOD_NOT_ALLOWED, "use POST with a JSON body") }),
            )
            .route(
                &versioned,
                get(move |State(app): AppState, Path(v): Path<String>| async move {
                    check_version(&app, i, &v).map(|()| metadata(&app, i))
                }),
            )
            .route(
                &format!("{versioned}/ready"),
                get(move |State(app): AppState, Path(v): Path<String>| async move {
                    check_version(&app, i, &v).map(|()| model_ready(&app, i))
                }),
            );
        for route in &e.cfg.routes {
            r = r.route(route, infer_route(i));
        }
    }
    r.route("/v2/models/{model}", any(unknown_model))
        .route("/v2/models/{model}/{*rest}", any(unknown_model))
        .fallback(|| async { err(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// The routes of a connection past `--max-connections`: health and metrics as usual, 503 else.
pub fn limited_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .fallback(|State(app): AppState| async move {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the server holds --max-connections {} connections; retry", app.limits.max_connections),
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

fn infer_route(endpoint: usize) -> MethodRouter<Arc<App>> {
    post(move |State(app): AppState, req: Request| async move { infer(&app, endpoint, req).await })
        .fallback(|| async { err(StatusCode::METHOD_NOT_ALLOWED, "use POST with a JSON body") })
}

async fn track(State(app): AppState, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    let t0 = Instant::now();
    app.http.begin();
    let resp = next.run(req).await;
    app.http.finish(&route, resp.status().as_u16(), t0.elapsed());
    resp
}

async fn health(State(app): AppState) -> Response {
    let names: Vec<&str> = app.endpoints.iter().map(|e| e.cfg.name.as_str()).collect();
    if app.ready() {
        (StatusCode::OK, Json(json!({ "status": "ready", "endpoints": names }))).into_response()
    } else {
        let mut r =
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "loading", "endpoints": names }))).into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }
}

async fn metrics_text(State(app): AppState) -> Response {
    let mut out = String::new();
    app.http.render(&mut out);
    app.connections.render(&mut out);
    let samples: Vec<EndpointSample> = app
        .endpoints
        .iter()
        .map(|e| EndpointSample {
            name: e.cfg.name.clone(),
            batches: e.batcher.batch_sizes(),
            queue_depth: e.batcher.queue_depth(),
            pending: e.pending(app.limits.max_pending),
        })
        .collect();
    metrics::render_endpoints(&mut out, &samples);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// 200 while the process answers at all: the liveness probe.
async fn live() -> Response {
    Json(json!({ "live": true })).into_response()
}

/// 200 once every model is loaded, 503 before: the readiness probe.
async fn ready(State(app): AppState) -> Response {
    let ready = app.ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready }))).into_response()
}

fn model_ready(app: &App, i: usize) -> Response {
    let e = &app.endpoints[i];
    let ready = e.loaded.get().is_some();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "name": e.cfg.name, "ready": ready }))).into_response()
}

async fn unknown_model(State(app): AppState, Path(params): Path<Vec<(String, String)>>) -> ApiError {
    let name = params.into_iter().find(|(k, _)| k == "model").map(|(_, v)| v).unwrap_or_default();
    let served: Vec<&str> = app.endpoints.iter().map(|e| e.cfg.name.as_str()).collect();
    if served.contains(&name.as_str()) {
        return err(StatusCode::NOT_FOUND, "no such route");
    }
    err(StatusCode::NOT_FOUND, format!("unknown model '{name}'; this server serves {}", served.join(", ")))
}

fn check_version(app: &App, i: usize, version: &str) -> Result<(), ApiError> {
    if version == v2::VERSION {
        return Ok(());
    }
    let name = &app.endpoints[i].cfg.name;
    Err(err(StatusCode::NOT_FOUND, format!("model '{name}' has no version '{version}'; its one version is '1'")))
}

/// The protocol's model metadata with sparsec's own fields beside it (clients read the fields
/// they know; tritonclient returns the whole object).
fn metadata(app: &App, i: usize) -> Response {
    let e = &app.endpoints[i];
    let loaded = e.loaded.get();
    let Value::Object(extra) = json!({
        "task": "question_answering",
        "model": e.cfg.model.display().to_string(),
        "engine": e.cfg.engine.to_string(),
        "sparsity": loaded.and_then(|l| l.sparsity),
        "version": env!("CARGO_PKG_VERSION"),
        "ready": loaded.is_some(),
        "max_batch_size": e.cfg.max_batch_size,
        "batch_timeout_ms": e.cfg.batch_timeout.as_millis() as u64,
        "max_seq_len": loaded.map_or(e.cfg.window.max_seq_len, |l| l.windower.options().max_seq_len),
        "doc_stride": e.cfg.window.doc_stride,
        "top_k": e.cfg.decode.top_k,
    }) else {
        unreachable!("an object")
    };
    Json(v2::model_metadata(&e.cfg.name, e.cfg.decode.top_k, extra)).into_response()
}

/// The questions of a request body and how the answers are shaped.
struct Parsed {
    items: Vec<QaRequest>,
    form: Form,
}

enum Form {
    /// One `{question, context}`: one answer value.
    One,
    /// A list, columns or Hugging Face's list: a list of answer values.
    List,
    /// An Open Inference Protocol tensor request.
    Tensor(v2::TensorRequest),
}

async fn infer(app: &App, endpoint: usize, req: Request) -> Result<Response, ApiError> {
    let e = &app.endpoints[endpoint];
    let Some(loaded) = e.loaded.get() else {
        return Err(err(StatusCode::SERVICE_UNAVAILABLE, format!("the model of '{}' is loading", e.cfg.name)));
    };
    let Ok(_permit) = e.permits.clone().try_acquire_owned() else {
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the server is busy: {} requests pending on '{}'", app.limits.max_pending, e.cfg.name),
        ));
    };
    let header_len = binary_header_len(&req)?;
    let body = read_body(req, &app.limits).await?;
    let parsed = parse_body(&body, header_len)?;
    let tensor = matches!(parsed.form, Form::Tensor(_));
    answer(app, e, loaded, parsed).await.map_err(|mut x| {
        if tensor && x.status == StatusCode::UNPROCESSABLE_ENTITY {
            x.status = StatusCode::BAD_REQUEST;
        }
        x
    })
}

/// `Inference-Header-Content-Length`: the binary tensor extension's JSON header length.
fn binary_header_len(req: &Request) -> Result<Option<usize>, ApiError> {
    let Some(v) = req.headers().get("inference-header-content-length") else { return Ok(None) };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "Inference-Header-Content-Length must be a byte count"))
}

async fn answer(app: &App, e: &Endpoint, loaded: &Loaded, parsed: Parsed) -> Result<Response, ApiError> {
    check_items(&parsed.items, &app.limits)?;
    let windower = loaded.windower.clone();
    let items = parsed.items;
    let (items, windows) = tokio::task::spawn_blocking(move || {
        let ws: Result<Vec<Vec<Window>>, String> = items
            .iter()
            .enumerate()
            .map(|(i, r)| windower.windows(&r.question, &r.context).map_err(|e| at(i, items.len(), &format!("{e:#}"))))
            .collect();
        (items, ws)
    })
    .await
    .map_err(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "tokenization panicked"))?;
    let windows = windows.map_err(|m| err(StatusCode::UNPROCESSABLE_ENTITY, m))?;
    let counts: Vec<usize> = windows.iter().map(Vec::len).collect();
    let rx = e.batcher.submit(windows.into_iter().flatten().collect()).map_err(|r| match r {
        Rejected::Full => err(StatusCode::SERVICE_UNAVAILABLE, format!("the queue of '{}' is full", e.cfg.name)),
        Rejected::Stopped => err(StatusCode::INTERNAL_SERVER_ERROR, "the inference worker has stopped"),
    })?;
    let ran = rx
        .await
        .map_err(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "the inference worker has stopped"))?
        .map_err(|m| err(StatusCode::INTERNAL_SERVER_ERROR, m))?;
    let answers = decode_all(&e.cfg, &items, &counts, ran);
    let top_k = e.cfg.decode.top_k;
    let out = match parsed.form {
        Form::Tensor(req) => v2::response(&e.cfg.name, &req, &answers, top_k),
        Form::List => Value::Array(answers.iter().map(|a| shape_answers(a, top_k)).collect()),
        Form::One => shape_answers(&answers[0], top_k),
    };
    Ok(Json(out).into_response())
}

async fn read_body(req: Request, limits: &Limits) -> Result<Bytes, ApiError> {
    let too_big = || {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over --max-request-bytes {}", limits.max_request_bytes),
        )
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_bytes as u64) {
        return Err(too_big());
    }
    let collect = Limited::new(req.into_body(), limits.max_request_bytes).collect();
    match tokio::time::timeout(limits.body_timeout, collect).await {
        Err(_) => Err(err(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", limits.body_timeout.as_secs_f64()),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_big()),
        Ok(Err(e)) => Err(err(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))),
    }
}

const SHAPES: &str = "expected {\"question\": ..., \"context\": ...}, a list of them, {\"inputs\": ...}, or \
                      {\"inputs\": [tensors]} (the Open Inference Protocol)";

/// A body of any accepted shape; `header_len` splits a binary-extension body into its JSON
/// header and tensor bytes.
fn parse_body(body: &[u8], header_len: Option<usize>) -> Result<Parsed, ApiError> {
    let bad = |m: String| err(StatusCode::BAD_REQUEST, m);
    let (json_part, binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(bad(format!("Inference-Header-Content-Length {n} is over the body's {} bytes", body.len())))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let v: Value =
        serde_json::from_slice(json_part).map_err(|e| bad(format!("the request body is not valid JSON: {e}")))?;
    if header_len.is_some() || v2::is_tensor_request(&v) {
        let mut t = v2::parse(&v, binary).map_err(bad)?;
        return Ok(Parsed { items: std::mem::take(&mut t.items), form: Form::Tensor(t) });
    }
    parse_value(&v).map_err(bad)
}

fn parse_value(v: &Value) -> Result<Parsed, String> {
    match v {
        Value::Object(o) if o.contains_key("inputs") && !o.contains_key("question") => parse_value(&o["inputs"]),
        Value::Object(o) => match (o.get("question"), o.get("context")) {
            (Some(Value::Array(qs)), Some(Value::Array(cs))) => {
                if qs.len() != cs.len() {
                    return Err(format!("{} questions but {} contexts", qs.len(), cs.len()));
                }
                let items = qs
                    .iter()
                    .zip(cs)
                    .enumerate()
                    .map(|(i, (q, c))| {
                        Ok(QaRequest { question: string(q, "question", i)?, context: string(c, "context", i)? })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                non_empty(items)
            }
            _ => Ok(Parsed { items: vec![item(v, None)?], form: Form::One }),
        },
        Value::Array(a) => {
            let items = a.iter().enumerate().map(|(i, x)| item(x, Some(i))).collect::<Result<Vec<_>, String>>()?;
            non_empty(items)
        }
        _ => Err(SHAPES.to_string()),
    }
}

fn non_empty(items: Vec<QaRequest>) -> Result<Parsed, String> {
    if items.is_empty() {
        return Err("the request holds no questions".to_string());
    }
    Ok(Parsed { items, form: Form::List })
}

fn item(v: &Value, index: Option<usize>) -> Result<QaRequest, String> {
    let prefix = index.map(|i| format!("item {i}: ")).unwrap_or_default();
    let Value::Object(o) = v else { return Err(format!("{prefix}{SHAPES}")) };
    let field = |k: &str| match o.get(k) {
        None => Err(format!("{prefix}missing field '{k}'")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{prefix}field '{k}' must be a string, got {}", kind(other))),
    };
    Ok(QaRequest { question: field("question")?, context: field("context")? })
}

fn string(v: &Value, what: &str, i: usize) -> Result<String, String> {
    v.as_str().map(str::to_string).ok_or_else(|| format!("item {i}: field '{what}' must be a string, got {}", kind(v)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn at(i: usize, n: usize, m: &str) -> String {
    if n == 1 {
        m.to_string()
    } else {
        format!("item {i}: {m}")
    }
}

/// 413 for too many questions or a context over the limit, 422 for an empty question or context.
fn check_items(items: &[QaRequest], limits: &Limits) -> Result<(), ApiError> {
    if items.len() > limits.max_questions {
        let m = format!(
            "the request holds {} questions, over --max-questions-per-request {}",
            items.len(),
            limits.max_questions
        );
        return Err(err(StatusCode::PAYLOAD_TOO_LARGE, m));
    }
    for (i, r) in items.iter().enumerate() {
        if r.question.trim().is_empty() {
            return Err(err(StatusCode::UNPROCESSABLE_ENTITY, at(i, items.len(), "the question is empty")));
        }
        if r.context.trim().is_empty() {
            return Err(err(StatusCode::UNPROCESSABLE_ENTITY, at(i, items.len(), "the context is empty")));
        }
        let chars = r.context.chars().count();
        if chars > limits.max_context_chars {
            let m =
                format!("the context has {chars} characters, over --max-context-chars {}", limits.max_context_chars);
            return Err(err(StatusCode::PAYLOAD_TOO_LARGE, at(i, items.len(), &m)));
        }
    }
    Ok(())
}

/// Each item's answers from its share of the job's windows and logits.
fn decode_all(cfg: &EndpointConfig, items: &[QaRequest], counts: &[usize], ran: Ran) -> Vec<Vec<Answer>> {
    let mut windows = ran.windows.into_iter();
    let mut logits = ran.logits.into_iter();
    items
        .iter()
        .zip(counts)
        .map(|(r, &n)| {
            let ws: Vec<Window> = windows.by_ref().take(n).collect();
            let ls: Vec<_> = logits.by_ref().take(n).collect();
            let views: Vec<WindowLogits> = ls.iter().map(|(s, e)| WindowLogits { start: s, end: e }).collect();
            decode(cfg.decoder, &ws, &views, &r.context, &cfg.decode)
        })
        .collect()
}

/// One answer object for `top_k == 1` (the empty answer when there is none), a list otherwise,
/// as the HF pipeline and `sparsec qa --json` print them.
fn shape_answers(answers: &[Answer], top_k: usize) -> Value {
    let one = |a: &Answer| json!({ "score": a.score, "answer": a.answer, "start": a.start, "end": a.end });
    if top_k == 1 {
        answers.first().map(one).unwrap_or_else(|| json!({ "score": 0.0, "answer": "", "start": 0, "end": 0 }))
    } else {
        Value::Array(answers.iter().map(one).collect())
    }
}

/// Requests whose handling began and has not finished.
pub fn in_flight(app: &App) -> u64 {
    let t = app.http.totals();
    t.received - t.answered
}
