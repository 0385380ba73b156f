//! `sparsec._native`, the native half of the Python package: the `sparsec` command line and the
//! question-answering pipeline of the `sparsec` crate, run in the Python process with the GIL
//! released (`Python::detach`, PyO3's name for what was `allow_threads`). The Python half
//! (`python/sparsec/`) turns `Pipeline.create`'s keyword arguments into `sparsec qa`'s pipeline
//! flags, which [`sparsec::cli::settings_from_flags`] reads with the command line's names,
//! defaults and checks; [`QaModel`] then loads and answers through the same library calls as
//! `sparsec qa` ([`QaPipeline::load`], [`QaPipeline::windower`], [`QaPipeline::answer`]).

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use sparsec::cli::{FlagsError, QaSettings};
use sparsec::qa::features::Windower;
use sparsec::qa::{DecodeOptions, Decoder, QaPipeline, QaRequest};

/// One answer as Python receives it: `(answer, score, start, end)`.
type AnswerTuple = (String, f64, usize, usize);

/// Runs one `sparsec` command line (`argv[0]` is the program name) in this process, with the
/// GIL released, and returns its exit status.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<String>) -> u8 {
    py.detach(move || sparsec::cli::run(argv))
}

/// A model and the window builder for its settings, used by one call at a time.
struct Loaded {
    pipeline: QaPipeline,
    windower: Windower,
}

/// A loaded question-answering model: `sparsec qa --model MODEL --batch-size N FLAGS...`, kept
/// in memory to answer many calls.
#[pyclass(module = "sparsec._native", frozen)]
struct QaModel {
    loaded: Mutex<Loaded>,
    decoder: Decoder,
    decode: DecodeOptions,
    /// Windows per model run.
    #[pyo3(get)]
    batch_size: usize,
    /// Answers returned per question.
    #[pyo3(get)]
    top_k: usize,
    /// The model file that was loaded (a folder resolves to its `model.onnx`).
    #[pyo3(get)]
    model_path: PathBuf,
    /// Tokens per window: the flag's value, or the model's own fixed sequence length.
    #[pyo3(get)]
    sequence_length: usize,
}

#[pymethods]
impl QaModel {
    /// Loads `model` (a `.onnx` file with `tokenizer.json` beside it, or a folder holding both)
    /// with `sparsec qa`'s pipeline `flags`. An unknown flag is a `TypeError`, a bad value a
    /// `ValueError`, a model that cannot be loaded a `RuntimeError`.
    #[new]
    fn new(py: Python<'_>, model: PathBuf, batch_size: usize, flags: Vec<String>) -> PyResult<QaModel> {
        let settings = sparsec::cli::settings_from_flags(&flags).map_err(|e| match e {
            FlagsError::Unknown(m) => PyTypeError::new_err(m),
            FlagsError::Invalid(m) => PyValueError::new_err(m),
        })?;
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let model_path = sparsec::cli::resolve_model_path(&model);
        let (loaded, sequence_length) =
            py.detach(|| load(&model_path, &settings)).map_err(|e| PyRuntimeError::new_err(format!("{e:#}")))?;
        Ok(QaModel {
            loaded: Mutex::new(loaded),
            decoder: settings.decoder,
            decode: settings.decode,
            batch_size,
            top_k: settings.decode.top_k,
            model_path,
            sequence_length,
        })
    }

    /// Answers each `(questions[i], contexts[i])` with the GIL released: per question, up to
    /// `top_k` answers as `(answer, score, start, end)`, best first (`start`/`end` are character
    /// offsets into the context). A question that cannot be answered (an empty one, say) is a
    /// `ValueError` naming its index; a failed model run a `RuntimeError`.
    fn answer(&self, py: Python<'_>, questions: Vec<String>, contexts: Vec<String>) -> PyResult<Vec<Vec<AnswerTuple>>> {
        if questions.len() != contexts.len() {
            return Err(PyValueError::new_err(format!(
                "{} questions but {} contexts: give one context per question",
                questions.len(),
                contexts.len()
            )));
        }
        let requests: Vec<QaRequest> =
            questions.into_iter().zip(contexts).map(|(question, context)| QaRequest { question, context }).collect();
        let results = py
            .detach(|| {
                let mut guard = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
                let Loaded { pipeline, windower } = &mut *guard;
                pipeline.answer(windower, &requests, self.batch_size, self.decoder, &self.decode, |_| {})
            })
            .map_err(|e| PyRuntimeError::new_err(format!("{e:#}")))?;
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Ok(a) => Ok(a.answers.into_iter().map(|a| (a.answer, a.score, a.start, a.end)).collect()),
                Err(e) => Err(PyValueError::new_err(format!("question {i}: {e:#}"))),
            })
            .collect()
    }
}

/// Loads the model and builds its window builder, as `sparsec qa` does; also returns the
/// window length in force (the model's fixed one replaces the flag's).
fn load(model: &std::path::Path, s: &QaSettings) -> anyhow::Result<(Loaded, usize)> {
    let pipeline = QaPipeline::load(model, s.engine, s.kernels, &s.engine_options)?;
    let windower = pipeline.windower(s.window)?;
    let seq = pipeline.fixed_shape().seq.unwrap_or(s.window.max_seq_len);
    Ok((Loaded { pipeline, windower }, seq))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", sparsec::cli::VERSION)?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add_class::<QaModel>()?;
    Ok(())
}
