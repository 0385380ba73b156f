//! ONNX Runtime through `ort` with `load-dynamic`: finds `libonnxruntime.so`, initialises one
//! process-wide environment, and runs sessions.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::{DynValue, Tensor, ValueType};

use super::{Backend, EngineKind, EngineOptions, HostTensor};

const INSTALL_HINT: &str = "ONNX Runtime was not found: install it with `pip install onnxruntime==1.23.2` \
     (sparsec loads the libonnxruntime.so that the wheel ships) or set ORT_DYLIB_PATH to a libonnxruntime.so";

/// Locates `libonnxruntime.so`: `ORT_DYLIB_PATH`, else the `onnxruntime/capi/` folder of a
/// pip-installed `onnxruntime` in the usual site-packages locations, else asks `python3` where it is.
pub fn find_onnxruntime() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("ORT_DYLIB_PATH is set to '{}', which is not a file", p.display());
    }
    for dir in site_packages_candidates() {
        if let Some(lib) = lib_in_capi(&dir.join("onnxruntime").join("capi")) {
            return Ok(lib);
        }
    }
    if let Ok(out) = std::process::Command::new("python3")
        .args(["-c", "import os, onnxruntime; print(os.path.dirname(onnxruntime.__file__))"])
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
            if let Some(lib) = lib_in_capi(&dir) {
                return Ok(lib);
            }
        }
    }
    bail!(INSTALL_HINT)
}

fn lib_in_capi(dir: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    libs.sort();
    libs.pop()
}

fn site_packages_candidates() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v));
    }
    if let Ok(home) = std::env::var("HOME") {
        let home = PathBuf::from(home);
        roots.push(home.join(".local"));
        if let Ok(rd) = std::fs::read_dir(home.join(".pyenv/versions")) {
            roots.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    roots.extend(["/usr/local", "/usr", "/opt/conda"].iter().map(PathBuf::from));
    let mut out: Vec<PathBuf> =
        std::env::var("PYTHONPATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for root in roots {
        let Ok(rd) = std::fs::read_dir(root.join("lib")) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with("python3") {
                out.push(e.path().join("site-packages"));
                out.push(e.path().join("dist-packages"));
            }
        }
    }
    out
}

fn environment() -> Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = find_onnxruntime().map_err(|e| e.to_string())?;
        tracing::debug!("loading ONNX Runtime from {}", lib.display());
        let builder = ort::init_from(&lib).map_err(|e| format!("cannot load '{}': {e}", lib.display()))?;
        builder.with_name("sparsec").build().map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

/// Held while a session is built: ONNX Runtime registers custom-operator domains in a
/// process-wide table, and two sessions registering `ai.sparsec` at the same moment collide
/// ("domain already exists"), so sessions are created one at a time.
static SESSION_CREATION: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A model session on ONNX Runtime.
pub struct OrtBackend {
    session: Session,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl OrtBackend {
    fn builder(opts: &EngineOptions) -> Result<ort::session::builder::SessionBuilder> {
        let env = environment()?;
        let mut b = Session::builder(env)?
            .with_optimization_level(if opts.basic_optimizations_only {
                GraphOptimizationLevel::Level1
            } else {
                GraphOptimizationLevel::Level3
            })
            .map_err(|e| anyhow!("{e}"))?
            .with_log_level(ort::logging::LogLevel::Error)
            .map_err(|e| anyhow!("{e}"))?;
        if let Some(t) = opts.threads {
            b = b.with_intra_threads(t).map_err(|e| anyhow!("{e}"))?;
        }
        if opts.memory == super::OrtMemory::Lean {
            if !sparsec_kernels::memory::reuse_freed_memory() {
                tracing::debug!("the C allocator is not glibc: large tensors may be mapped afresh on every run");
            }
            b = b.with_memory_pattern(false).map_err(|e| anyhow!("{e}"))?;
            b = b
                .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
                .map_err(|e| anyhow!("cannot configure ONNX Runtime's CPU allocator: {e}"))?;
        }
        if let Some(prefix) = &opts.profile {
            b = b.with_profiling(prefix).map_err(|e| anyhow!("cannot enable ONNX Runtime profiling: {e}"))?;
        }
        sparsec_ops::set_threads(opts.threads.unwrap_or(0));
        let domain = sparsec_ops::domain().map_err(|e| anyhow!("cannot create sparsec's custom operators: {e}"))?;
        b = b.with_operators(domain).map_err(|e| anyhow!("cannot register sparsec's custom operators: {e}"))?;
        Ok(b)
    }

    pub fn from_file(path: &Path, opts: &EngineOptions) -> Result<OrtBackend> {
        let _one_at_a_time = SESSION_CREATION.lock().unwrap_or_else(|p| p.into_inner());
        let session = Self::builder(opts)?
            .commit_from_file(path)
            .with_context(|| format!("ONNX Runtime cannot load '{}'", path.display()))?;
        Ok(Self::wrap(session))
    }

    pub fn from_bytes(bytes: &[u8], opts: &EngineOptions) -> Result<OrtBackend> {
        let _one_at_a_time = SESSION_CREATION.lock().unwrap_or_else(|p| p.into_inner());
        let session = Self::builder(opts)?.commit_from_memory(bytes).context("ONNX Runtime cannot load the model")?;
        Ok(Self::wrap(session))
    }

    fn wrap(session: Session) -> OrtBackend {
        let inputs = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let outputs = session.outputs().iter().map(|o| o.name().to_string()).collect();
        OrtBackend { session, inputs, outputs }
    }
}

fn to_value(t: &HostTensor) -> Result<DynValue> {
    Ok(match t {
        HostTensor::F32(a) => Tensor::from_array(a.clone())?.into_dyn(),
        HostTensor::I64(a) => Tensor::from_array(a.clone())?.into_dyn(),
        HostTensor::I32(a) => Tensor::from_array(a.clone())?.into_dyn(),
        HostTensor::I8(a) => Tensor::from_array(a.clone())?.into_dyn(),
        HostTensor::U8(a) => Tensor::from_array(a.clone())?.into_dyn(),
        HostTensor::Bool(a) => Tensor::from_array(a.clone())?.into_dyn(),
    })
}

fn from_value(v: &DynValue) -> Result<HostTensor> {
    use ort::value::TensorElementType as T;
    let ty = match v.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => bail!("unsupported output type {other:?}"),
    };
    Ok(match ty {
        T::Float32 => HostTensor::F32(v.try_extract_array::<f32>()?.to_owned()),
        T::Int64 => HostTensor::I64(v.try_extract_array::<i64>()?.to_owned()),
        T::Int32 => HostTensor::I32(v.try_extract_array::<i32>()?.to_owned()),
        T::Int8 => HostTensor::I8(v.try_extract_array::<i8>()?.to_owned()),
        T::Uint8 => HostTensor::U8(v.try_extract_array::<u8>()?.to_owned()),
        T::Bool => HostTensor::Bool(v.try_extract_array::<bool>()?.to_owned()),
        other => bail!("unsupported output element type {other:?}"),
    })
}

impl Backend for OrtBackend {
    fn engine(&self) -> EngineKind {
        EngineKind::Ort
    }
    fn input_names(&self) -> &[String] {
        &self.inputs
    }
    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        let mut feed: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            feed.push((name.to_string(), to_value(t).with_context(|| format!("input '{name}'"))?));
        }
        let outputs = self.session.run(feed).context("ONNX Runtime run failed")?;
        let mut out = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            out.push((name.clone(), from_value(&outputs[name.as_str()]).with_context(|| format!("output '{name}'"))?));
        }
        Ok(out)
    }
}
