//! `sparsec qa`: answers a question about a context (or a file of them) like the Hugging Face
//! question-answering pipeline.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::qa::{squad, Answer, DecodeOptions, Decoder, QaPipeline, QaRequest, WindowOptions};
use crate::runtime::{EngineKind, EngineOptions, Kernels};

#[derive(clap::Args)]
pub struct QaArgs {
    /// A model.onnx with tokenizer.json beside it, or a folder holding both.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, required_unless_present = "file", requires = "context")]
    question: Option<String>,
    #[arg(long, requires = "question")]
    context: Option<String>,
    /// Many questions: JSONL lines `{"id"?, "question", "context"}` or SQuAD JSON (.gz too);
    /// answers are printed as JSONL.
    #[arg(long, conflicts_with_all = ["question", "context"])]
    file: Option<PathBuf>,
    #[command(flatten)]
    pipeline: PipelineFlags,
    /// Windows per model run.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long)]
    json: bool,
}

/// The question-answering settings `sparsec qa` and `sparsec serve` share: same flags, same
/// defaults.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct PipelineFlags {
    /// Number of answers to return.
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    #[arg(long, value_enum, default_value_t = EngineKind::Ort)]
    pub engine: EngineKind,
    /// sparsec's sparse linear and fused attention kernels on ONNX Runtime (`off` for A/B runs).
    #[arg(long, value_enum, default_value_t = Kernels::Auto)]
    pub kernels: Kernels,
    /// Tokens that consecutive windows share [default: min(max-seq-len / 2, 128)].
    #[arg(long)]
    pub doc_stride: Option<usize>,
    /// Longest answer in tokens (the HF pipeline's default is 15).
    #[arg(long, default_value_t = 15)]
    pub max_answer_length: usize,
    #[arg(long, default_value_t = 384)]
    pub max_seq_len: usize,
    /// Questions longer than this many tokens are cut to it.
    #[arg(long, default_value_t = 64)]
    pub max_question_len: usize,
    /// Also consider the empty answer (SQuAD v2 models).
    #[arg(long)]
    pub handle_impossible_answer: bool,
    /// Post-processing: the HF pipeline's, or run_qa.py's n-best logit sums.
    #[arg(long, value_enum, default_value_t = Decoder::Pipeline)]
    pub decoder: Decoder,
    /// Intra-op threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run each batch of windows as one-window pieces on this many single-thread sessions at once
    /// (0 or 1: one session runs the whole batch with all threads); same answers.
    #[arg(long, default_value_t = 0)]
    pub streams: usize,
}

impl PipelineFlags {
    /// Window, decoding and engine settings; fails on values no pipeline can use.
    pub fn resolve(&self) -> Result<(WindowOptions, DecodeOptions, EngineOptions)> {
        if self.top_k == 0 {
            bail!("--top-k must be at least 1");
        }
        if self.max_answer_length == 0 {
            bail!("--max-answer-length must be at least 1");
        }
        let mut wopts = WindowOptions::new(self.max_seq_len);
        wopts.max_question_len = self.max_question_len;
        if let Some(s) = self.doc_stride {
            wopts.doc_stride = s;
        }
        let dopts = DecodeOptions {
            top_k: self.top_k,
            max_answer_len: self.max_answer_length,
            handle_impossible_answer: self.handle_impossible_answer,
            ..DecodeOptions::default()
        };
        let engine = EngineOptions { threads: self.threads, streams: self.streams, ..Default::default() };
        Ok((wopts, dopts, engine))
    }
}

/// The pipeline flags alone, as a command line of their own (`--max-seq-len 128 --top-k 2`, no
/// program name).
#[derive(clap::Parser)]
#[command(name = "kwargs", no_binary_name = true, disable_help_flag = true)]
struct FlagsOnly {
    #[command(flatten)]
    pipeline: PipelineFlags,
}

/// What `sparsec qa`'s pipeline flags resolve to, for a front end that takes them by name (the
/// Python package's `Pipeline.create(**kwargs)`): the same names, defaults and checks.
#[derive(Clone, Debug)]
pub struct QaSettings {
    pub engine: EngineKind,
    pub kernels: Kernels,
    pub decoder: Decoder,
    pub window: WindowOptions,
    pub decode: DecodeOptions,
    pub engine_options: EngineOptions,
}

/// Why pipeline flags were refused, by kind, so that a front end can report an unknown name
/// differently from a bad value.
#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    /// A flag `sparsec qa` does not have.
    #[error("{0}")]
    Unknown(String),
    /// A flag with a value it does not take, or flags that cannot go together.
    #[error("{0}")]
    Invalid(String),
}

/// Parses and resolves `sparsec qa`'s pipeline flags given without the program name, the
/// model or the questions (`["--max-seq-len", "128", "--handle-impossible-answer"]`).
pub fn settings_from_flags(args: &[String]) -> std::result::Result<QaSettings, FlagsError> {
    let flags = <FlagsOnly as clap::Parser>::try_parse_from(args).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        match e.kind() {
            clap::error::ErrorKind::UnknownArgument => FlagsError::Unknown(first),
            _ => FlagsError::Invalid(first),
        }
    })?;
    let p = flags.pipeline;
    let (window, decode, engine_options) = p.resolve().map_err(|e| FlagsError::Invalid(format!("{e:#}")))?;
    Ok(QaSettings { engine: p.engine, kernels: p.kernels, decoder: p.decoder, window, decode, engine_options })
}

#[derive(Serialize)]
struct FileAnswer<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<&'a Answer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answers: Option<&'a [Answer]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(args: QaArgs) -> Result<()> {
    let model = super::resolve_model_path(&args.model);
    let (wopts, dopts, engine_opts) = args.pipeline.resolve()?;
    let requests: Vec<(String, QaRequest)> = match &args.file {
        Some(f) => read_requests(f)?,
        None => vec![(
            String::new(),
            QaRequest {
                question: args.question.clone().expect("clap requires --question"),
                context: args.context.clone().expect("clap requires --context"),
            },
        )],
    };
    let mut pipeline = QaPipeline::load(&model, args.pipeline.engine, args.pipeline.kernels, &engine_opts)?;
    let windower = pipeline.windower(wopts)?;
    let reqs: Vec<QaRequest> = requests.iter().map(|(_, r)| r.clone()).collect();
    let results = pipeline.answer(&windower, &reqs, args.batch_size, args.pipeline.decoder, &dopts, |_| {})?;

    if args.file.is_none() {
        let answers = results.into_iter().next().expect("one result")?.answers;
        return print_single(&answers, args.pipeline.top_k, args.json);
    }
    let mut failed = 0;
    for ((id, _), res) in requests.iter().zip(results) {
        let line = match &res {
            Ok(a) if args.pipeline.top_k == 1 => {
                FileAnswer { id, answer: Some(a.answers.first().unwrap_or(&NO_ANSWER)), answers: None, error: None }
            }
            Ok(a) => FileAnswer { id, answer: None, answers: Some(&a.answers), error: None },
            Err(e) => {
                failed += 1;
                eprintln!("error: question '{id}': {e:#}");
                FileAnswer { id, answer: None, answers: None, error: Some(format!("{e:#}")) }
            }
        };
        println!("{}", serde_json::to_string(&line)?);
    }
    if failed > 0 {
        bail!("{failed} of {} questions failed", requests.len());
    }
    Ok(())
}

static NO_ANSWER: Answer = Answer { answer: String::new(), score: 0.0, start: 0, end: 0 };

fn print_single(answers: &[Answer], top_k: usize, json: bool) -> Result<()> {
    if json {
        let v = if top_k == 1 {
            serde_json::to_string_pretty(answers.first().unwrap_or(&NO_ANSWER))?
        } else {
            serde_json::to_string_pretty(answers)?
        };
        println!("{v}");
        return Ok(());
    }
    if answers.is_empty() {
        println!("(no answer: the context has no candidate span)");
    }
    for a in answers {
        println!(
            "{:.6}\t{}..{}\t{}",
            a.score,
            a.start,
            a.end,
            if a.answer.is_empty() { "(no answer)" } else { &a.answer }
        );
    }
    Ok(())
}

/// Questions of a `--file`: SQuAD JSON (an object with `data`) or JSONL.
fn read_requests(path: &std::path::Path) -> Result<Vec<(String, QaRequest)>> {
    let text = squad::read_text(path)?;
    let origin = path.display().to_string();
    if text.trim_start().starts_with('{') && serde_json::from_str::<Value>(&text).is_ok_and(|v| v.get("data").is_some())
    {
        return Ok(squad::parse(&text, &origin)?
            .into_iter()
            .map(|e| (e.id, QaRequest { question: e.question, context: e.context }))
            .collect());
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("'{origin}' line {}", i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let field = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("{}: missing string field '{k}'", at()))
        };
        let id = match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => (i + 1).to_string(),
        };
        out.push((id, QaRequest { question: field("question")?, context: field("context")? }));
    }
    if out.is_empty() {
        bail!("'{origin}' holds no questions");
    }
    Ok(out)
}
