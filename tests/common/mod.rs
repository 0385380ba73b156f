//! Shared helpers for the integration tests: running the binary, fixture paths and reference
//! tensors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::ArrayD;
use sparsec::runtime::HostTensor;

/// Runs this build's `sparsec` binary with `args`.
pub fn sparsec(args: &[&str]) -> Output {
    sparsec_env(args, &[])
}

/// `SPARSEC_ISA` as this test binary was started with it (Linux: the process's initial
/// environment, which `set_var` does not change). Some tests set it in-process while they run,
/// and a child started meanwhile would inherit their value; a training run's results depend on
/// it (the block-sparse training kernels sum in each ISA's order), so every child gets this one.
fn launch_isa() -> Option<String> {
    static ISA: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ISA.get_or_init(|| match std::fs::read("/proc/self/environ") {
        Ok(env) => env
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"SPARSEC_ISA=").map(|v| String::from_utf8_lossy(v).into_owned())),
        Err(_) => std::env::var("SPARSEC_ISA").ok(),
    })
    .clone()
}

/// Runs this build's `sparsec` binary with `args` and extra environment variables (and
/// `SPARSEC_ISA` as this binary was started with, unless `env` sets it).
/// A `sparsec` command with `SPARSEC_ISA` pinned to [`launch_isa`]'s value: every child a test
/// starts (also the ones it signals or streams from) runs on the ISA the suite was started with.
pub fn sparsec_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sparsec"));
    match launch_isa() {
        Some(isa) => c.env("SPARSEC_ISA", isa),
        None => c.env_remove("SPARSEC_ISA"),
    };
    c
}

pub fn sparsec_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = sparsec_command();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run sparsec")
}

/// Asserts that the command succeeded (showing its stderr and stdout if not); returns its stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sparsec failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub const FIXTURE_MODELS: &[&str] = &["bert", "distilbert", "roberta"];
/// torch's TorchScript exporter (opset 17), torch's dynamo exporter at its native opset 18 (bert's
/// weights as external data), and Hugging Face Optimum's `optimum-cli export onnx` (opset 18).
pub const EXPORTERS: &[&str] = &["legacy", "dynamo", "optimum"];

/// The names an exporter gives the dynamic batch and sequence dims.
pub fn dim_names(exporter: &str) -> (&'static str, &'static str) {
    match exporter {
        "optimum" => ("batch_size", "sequence_length"),
        _ => ("batch", "sequence"),
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_dir(model: &str) -> PathBuf {
    root().join("fixtures").join(model)
}

/// Every committed fixture export: (model, exporter, path).
pub fn fixture_exports() -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for m in FIXTURE_MODELS {
        for e in EXPORTERS {
            let p = fixture_dir(m).join(format!("model.{e}.onnx"));
            if p.exists() {
                out.push((m.to_string(), e.to_string(), p));
            }
        }
    }
    assert!(!out.is_empty(), "no fixtures found under fixtures/: run fixtures/generate.py");
    out
}

/// Says that a check cannot run here and why (`SKIPPED: …` on stderr). Under CI (`CI` set), which
/// has `../shared` and installs the Python packages the tests use, a skip is a failure instead, so
/// a missing input can never pass as a green check.
pub fn skip(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0") {
        panic!("this check must run under CI but cannot: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// `../shared/models/minilm-l6-squad`, or `None` with a message saying the test is skipped.
pub fn shared_minilm() -> Option<PathBuf> {
    let p = root().join("../shared/models/minilm-l6-squad");
    if p.join("model.onnx").exists() {
        Some(p)
    } else {
        skip("../shared/models/minilm-l6-squad is absent; this check needs the shared MiniLM model");
        None
    }
}

pub fn shared_data(name: &str) -> Option<PathBuf> {
    let p = root().join("../shared/data").join(name);
    if p.exists() {
        Some(p)
    } else {
        skip(&format!("../shared/data/{name} is absent; this check needs the shared SQuAD data"));
        None
    }
}

/// Reads every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> Vec<(String, HostTensor)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let shape: Vec<usize> = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => HostTensor::F32(
                ArrayD::from_shape_vec(
                    shape,
                    data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                )
                .unwrap(),
            ),
            safetensors::Dtype::I64 => HostTensor::I64(
                ArrayD::from_shape_vec(
                    shape,
                    data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
                )
                .unwrap(),
            ),
            other => panic!("unexpected dtype {other:?} for {name}"),
        };
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Loads `path` on `engine`: as it is with `sparse` `None`, else decoded once and lowered to
/// sparsec's kernels with those settings (what `qa`, `eval` and `bench` do with `--kernels`).
/// Returns the backend and what the lowering did.
pub fn load_lowered(
    path: &Path,
    engine: sparsec::runtime::EngineKind,
    sparse: Option<sparsec::passes::SparseExecution>,
    opts: &sparsec::runtime::EngineOptions,
) -> (Box<dyn sparsec::runtime::Backend>, Vec<sparsec::passes::PassReport>) {
    let Some(cfg) = sparse else {
        let b = sparsec::runtime::load_file(path, engine, opts).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        return (b, Vec::new());
    };
    let mut file = sparsec::qa::ModelFile::open(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let reports = file.lower_with(&cfg).unwrap_or_else(|e| panic!("{}: {e:#}", path.display())).to_vec();
    let b = file.load(engine, opts).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    (b, reports)
}

/// Every initializer of the model at `path`, by name (sorted), as raw bytes: for bit-for-bit
/// comparisons of trained models.
pub fn initializer_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let m = sparsec::onnx::load(path).unwrap();
    let g = &m.graph;
    let mut v: Vec<(String, Vec<u8>)> =
        g.initializers().iter().map(|(&id, t)| (g.value(id).name.clone(), t.raw().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Compiles the bert fixture (legacy export) with `recipe` and recipe args `args` into `out`.
pub fn compile_fixture(recipe: &Path, args: &str, out: &Path) {
    let model = fixture_dir("bert").join("model.legacy.onnx");
    ok(&sparsec(&["compile", s(&model), "--recipe", s(recipe), "--recipe-args", args, "-o", s(out)]));
}

/// `recipes/gmp80-unstructured-qat-distill.yaml` with `quantize_attention_matmuls: true` on its
/// QuantizationModifier (int8 attention QAT), written into `dir`.
pub fn int8_attention_recipe(dir: &Path) -> PathBuf {
    let base = std::fs::read_to_string(root().join("recipes/gmp80-unstructured-qat-distill.yaml")).unwrap();
    let text =
        base.replace("    activation_bits: 8\n", "    activation_bits: 8\n    quantize_attention_matmuls: true\n");
    assert_ne!(text, base, "the recipe gained the field");
    let recipe = dir.join("int8-attention.yaml");
    std::fs::write(&recipe, text).unwrap();
    recipe
}

/// An f32 runtime input's values from its name, shape and position among the runtime inputs.
pub type F32Input<'a> = &'a dyn Fn(&str, &[usize], usize) -> Vec<f32>;

/// How [`bert_feed`] fills a training graph's runtime inputs.
pub struct BertFeed<'a> {
    pub batch: usize,
    pub seq: usize,
    /// The value of every bool input (a compiled graph's fake-quantization switch).
    pub bools: bool,
    /// `attention_mask` for `count` tokens in windows of `seq`.
    pub attention_mask: &'a dyn Fn(usize, usize) -> Vec<i64>,
    pub f32_input: F32Input<'a>,
}

/// Values for every runtime input of a training graph of the bert fixture: symbolic axes named
/// `*batch*` get `batch`, the others `seq`; token ids, fixed answer spans, `attention_mask` and the
/// f32 and bool inputs as `spec` says; u8 inputs 128, other i64 inputs 0.
pub fn bert_feed(g: &sparsec::ir::Graph, spec: &BertFeed) -> Vec<(String, HostTensor)> {
    use ndarray::IxDyn;
    use sparsec::ir::{DType, Dim};
    let (batch, seq) = (spec.batch, spec.seq);
    let mut feed = Vec::new();
    for (i, v) in g.runtime_inputs().enumerate() {
        let value = g.value(v);
        let name = value.name.as_str();
        let dims = value.facts.shape.as_ref().unwrap_or_else(|| panic!("input {name} has no shape"));
        let shape: Vec<usize> = dims
            .iter()
            .map(|d| match d {
                Dim::Known(n) => *n as usize,
                Dim::Sym(s) if s.contains("batch") => batch,
                _ => seq,
            })
            .collect();
        let count: usize = shape.iter().product();
        let t = match value.facts.dtype.unwrap_or_else(|| panic!("input {name} has no type")) {
            DType::I64 => {
                let data: Vec<i64> = match name {
                    "input_ids" => (0..count as i64).map(|i| 5 + (i * 37) % 900).collect(),
                    "attention_mask" => (spec.attention_mask)(count, seq),
                    "start_positions" => vec![3, 7],
                    "end_positions" => vec![5, 9],
                    _ => vec![0; count],
                };
                HostTensor::I64(ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap())
            }
            DType::U8 => HostTensor::U8(ArrayD::from_shape_vec(IxDyn(&shape), vec![128; count]).unwrap()),
            DType::Bool => HostTensor::Bool(ArrayD::from_shape_vec(IxDyn(&shape), vec![spec.bools; count]).unwrap()),
            DType::F32 => {
                HostTensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), (spec.f32_input)(name, &shape, i)).unwrap())
            }
            other => panic!("unexpected input dtype {other} for {name}"),
        };
        feed.push((name.to_string(), t));
    }
    feed
}

/// Orders the tests of this process that force `SPARSEC_ISA` (writers, [`force_isa`]) against the
/// tests whose kernels must see the machine's own ISA (readers, [`own_isa`]): the variable is
/// process-wide and read when kernels are created, and the tests run on parallel threads.
static ISA_ENV: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// `SPARSEC_ISA` set to one ISA in this process until the guard drops (even on a panic), with no
/// [`own_isa`] test running meanwhile.
pub struct ForcedIsa(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>);

impl Drop for ForcedIsa {
    fn drop(&mut self) {
        std::env::remove_var("SPARSEC_ISA");
    }
}

/// Forces `isa` for the kernels this process creates until the guard drops.
pub fn force_isa(isa: &str) -> ForcedIsa {
    let guard = ISA_ENV.write().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("SPARSEC_ISA", isa);
    ForcedIsa(guard)
}

/// Holds off every [`force_isa`] while the guard lives: the caller's kernels get the ISA this
/// process started with (for tests whose result depends on it, such as bf16 products, which only
/// AVX-512 BF16 and the scalar model run).
pub fn own_isa() -> std::sync::RwLockReadGuard<'static, ()> {
    ISA_ENV.read().unwrap_or_else(|e| e.into_inner())
}
