//! Execution engines behind one [`Backend`] trait: ONNX Runtime (through `ort`, loaded dynamically
//! from a pip-installed `onnxruntime` or `ORT_DYLIB_PATH`) and tract (pure Rust, nothing to install).
//! The only module that imports `ort` or `tract`.

mod ort_engine;
mod streams;
mod tract_engine;

use std::path::Path;

use anyhow::Result;
use ndarray::ArrayD;

pub use ort_engine::{find_onnxruntime, OrtBackend};
pub use streams::Streams;
pub use tract_engine::{TractBackend, PLAN_CACHE as TRACT_PLAN_CACHE};

/// A host tensor passed to or returned from an engine.
#[derive(Clone, Debug, PartialEq)]
pub enum HostTensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    I8(ArrayD<i8>),
    U8(ArrayD<u8>),
    Bool(ArrayD<bool>),
}

impl HostTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32(a) => a.shape(),
            HostTensor::I64(a) => a.shape(),
            HostTensor::I32(a) => a.shape(),
            HostTensor::I8(a) => a.shape(),
            HostTensor::U8(a) => a.shape(),
            HostTensor::Bool(a) => a.shape(),
        }
    }

    pub fn as_f32(&self) -> Result<&ArrayD<f32>> {
        match self {
            HostTensor::F32(a) => Ok(a),
            other => anyhow::bail!("expected an f32 tensor, got {}", other.dtype_name()),
        }
    }

    pub fn into_f32(self) -> Result<ArrayD<f32>> {
        match self {
            HostTensor::F32(a) => Ok(a),
            other => anyhow::bail!("expected an f32 tensor, got {}", other.dtype_name()),
        }
    }

    pub fn dtype_name(&self) -> &'static str {
        match self {
            HostTensor::F32(_) => "f32",
            HostTensor::I64(_) => "i64",
            HostTensor::I32(_) => "i32",
            HostTensor::I8(_) => "i8",
            HostTensor::U8(_) => "u8",
            HostTensor::Bool(_) => "bool",
        }
    }
}

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Ort,
    Tract,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Ort => "ort",
            EngineKind::Tract => "tract",
        })
    }
}

/// Which of sparsec's own kernels run a model on ONNX Runtime (`--kernels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Sparse linears where a layer is sparse enough, fused attention, and layer normalization.
    #[default]
    Auto,
    /// None: the model runs on ONNX Runtime's own kernels as it is.
    Off,
    /// Sparse linears only.
    Linear,
    /// Fused attention only.
    Attention,
}

/// Whether ONNX Runtime's u8×s8 integer matrix products are exact on this CPU. Its kernels use
/// VNNI (`vpdpbusd`) where the CPU has it; without VNNI they use `vpmaddubsw`, whose 16-bit pair
/// sums saturate (`benches/int8_exactness.py`: 2.4 to 6.4 absolute error on one random layer).
pub fn ort_int8_is_exact() -> bool {
    !cfg!(target_arch = "x86_64") || sparsec_kernels::Isa::cpu_has_vnni()
}

impl Kernels {
    /// The in-memory lowering this choice asks for (`None` for `off`). Where ONNX Runtime's int8
    /// products are not exact ([`ort_int8_is_exact`]), every int8 linear goes to sparsec's exact
    /// kernels, dense ones too; elsewhere only those sparse enough to be faster there.
    pub fn sparse_execution(self) -> Option<crate::passes::SparseExecution> {
        let mut base = crate::passes::SparseExecution::default();
        if !ort_int8_is_exact() {
            base.linear.max_int8_density = 1.0;
        }
        match self {
            Kernels::Off => None,
            Kernels::Auto => Some(base),
            Kernels::Linear => Some(crate::passes::SparseExecution { no_attention: true, no_layer_norm: true, ..base }),
            Kernels::Attention => Some(crate::passes::SparseExecution { no_linear: true, no_layer_norm: true, ..base }),
        }
    }
}

/// Engine settings.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Intra-op threads; `None` lets the engine choose.
    pub threads: Option<usize>,
    /// Only ORT's basic (semantics-preserving) graph rewrites, none of the fusions that change
    /// float rounding; for tests comparing two graphs value for value.
    pub basic_optimizations_only: bool,
    /// With 2 or more: a batch runs as pieces of one sequence each through the whole model, on this
    /// many sessions of one thread each at once ([`Streams`]), instead of the whole batch through
    /// every node with all threads. 0 or 1: one session.
    pub streams: usize,
    /// ONNX Runtime writes a JSON trace of every node run to a file with this prefix.
    pub profile: Option<std::path::PathBuf>,
    /// How ONNX Runtime allocates the memory of a run.
    pub memory: OrtMemory,
}

/// How ONNX Runtime allocates the intermediate tensors of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OrtMemory {
    /// ONNX Runtime's defaults: a memory pattern planned and cached for each set of input shapes,
    /// allocated from its CPU arena, which keeps its largest size.
    #[default]
    Arena,
    /// No memory pattern and no CPU arena: every tensor from the system allocator when it is
    /// needed, freed after its last use, and the allocator told to keep freed memory for the next
    /// run instead of unmapping it ([`sparsec_kernels::memory::reuse_freed_memory`]). For training,
    /// where a pattern per input shape and an arena sized to the largest run hold the peak at
    /// several times what one step needs.
    Lean,
}

/// A loaded model that can be run repeatedly.
pub trait Backend: Send {
    fn engine(&self) -> EngineKind;
    /// Names of the inputs a caller must feed, in model order.
    fn input_names(&self) -> &[String];
    fn output_names(&self) -> &[String];
    /// Runs the model on named inputs; returns every output, in model order.
    fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<Vec<(String, HostTensor)>>;
}

/// Loads a model file on the chosen engine, as it is (the engine decodes it).
pub fn load_file(path: &Path, engine: EngineKind, opts: &EngineOptions) -> Result<Box<dyn Backend>> {
    with_streams(opts, |o| {
        Ok(match engine {
            EngineKind::Ort => Box::new(OrtBackend::from_file(path, o)?),
            EngineKind::Tract => Box::new(TractBackend::from_file(path, o)?),
        })
    })
}

/// Loads an already-decoded model (a lowered one, say) on the chosen engine.
pub fn load_model(model: &crate::ir::Model, engine: EngineKind, opts: &EngineOptions) -> Result<Box<dyn Backend>> {
    load_bytes(&crate::onnx::encode_model(model), engine, opts)
}

/// Loads a serialized model (all tensors inline) on the chosen engine.
pub fn load_bytes(bytes: &[u8], engine: EngineKind, opts: &EngineOptions) -> Result<Box<dyn Backend>> {
    with_streams(opts, |o| {
        Ok(match engine {
            EngineKind::Ort => Box::new(OrtBackend::from_bytes(bytes, o)?),
            EngineKind::Tract => Box::new(TractBackend::from_bytes(bytes, o)?),
        })
    })
}

/// One session, or with `opts.streams` ≥ 2 that many sessions sharing the threads, as [`Streams`].
fn with_streams(
    opts: &EngineOptions,
    open: impl Fn(&EngineOptions) -> Result<Box<dyn Backend>>,
) -> Result<Box<dyn Backend>> {
    if opts.streams < 2 {
        return open(opts);
    }
    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let each = EngineOptions { threads: Some((threads / opts.streams).max(1)), streams: 0, ..opts.clone() };
    let sessions = (0..opts.streams).map(|_| open(&each)).collect::<Result<Vec<_>>>()?;
    Ok(Box::new(Streams::new(sessions, 1)?))
}

/// A backend with some inputs bound to fixed values (weights, masks, quantization parameters of
/// a training graph evaluated in inference mode): callers see and feed only the other inputs.
pub struct WithInputs {
    inner: Box<dyn Backend>,
    bound: Vec<(String, HostTensor)>,
    free: Vec<String>,
}

impl WithInputs {
    pub fn new(inner: Box<dyn Backend>, bound: Vec<(String, HostTensor)>) -> WithInputs {
        let free = inner.input_names().iter().filter(|n| !bound.iter().any(|(b, _)| b == *n)).cloned().collect();
        WithInputs { inner, bound, free }
    }
}

impl Backend for WithInputs {
    fn engine(&self) -> EngineKind {
        self.inner.engine()
    }

    fn input_names(&self) -> &[String] {
        &self.free
    }

    fn output_names(&self) -> &[String] {
        self.inner.output_names()
    }

    fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        let mut feed: Vec<(&str, HostTensor)> = inputs.to_vec();
        feed.extend(self.bound.iter().map(|(n, t)| (n.as_str(), t.clone())));
        self.inner.run(&feed)
    }
}
