//! sparsec's ONNX Runtime custom operators, domain [`DOMAIN`] (`ai.sparsec`): thin adapters from
//! ORT's kernel API onto `sparsec-kernels`. Inference weights are read once, when ORT creates a
//! kernel, and packed; the training operators (`masked_linear`, `attention_train`, `gelu_train`, `embedding_grad`, `layer_norm_grad`) take weight and mask as run-time
//! inputs. `compute` only reads its inputs and writes its outputs, so one kernel may serve
//! concurrent runs. No panic crosses the FFI boundary: every kernel body runs under
//! `catch_unwind` and reports failures as ORT errors naming the node.
//!
//! Built as an `rlib` for sparsec itself and as `libsparsec_ops.so`, whose [`RegisterCustomOps`]
//! lets Python onnxruntime run sparsec's lowered models:
//! `SessionOptions.register_custom_ops_library("libsparsec_ops.so")`.

mod attention;
mod attention_train;
mod embedding_grad;
mod gelu_train;
mod layer_norm;
mod layer_norm_grad;
mod linear;
mod masked_linear;
mod quantized_attention;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use ort::operator::{ComputeContext, KernelContext, OperatorDomain};
use sparsec_kernels::{Isa, Parallel};

pub use attention::{AttentionOp, ATTENTION};
pub use attention_train::{AttentionTrainGradOp, AttentionTrainOp, ATTENTION_TRAIN, ATTENTION_TRAIN_GRAD};
pub use embedding_grad::{EmbeddingGradOp, EMBEDDING_GRAD};
pub use gelu_train::{GeluTrainGradOp, GeluTrainOp, GELU_TRAIN, GELU_TRAIN_GRAD};
pub use layer_norm::{LayerNormOp, LAYER_NORM};
pub use layer_norm_grad::{LayerNormGradOp, LAYER_NORM_GRAD};
pub use linear::{SparseLinearF32Op, SparseLinearOp, SPARSE_LINEAR, SPARSE_LINEAR_F32};
pub use masked_linear::{
    MaskedLinearGradInputOp, MaskedLinearGradWeightOp, MaskedLinearOp, MASKED_LINEAR, MASKED_LINEAR_GRAD_INPUT,
    MASKED_LINEAR_GRAD_WEIGHT,
};
pub use quantized_attention::{QuantizedAttentionOp, QUANTIZED_ATTENTION};

/// The ONNX domain of sparsec's operators.
pub const DOMAIN: &str = "ai.sparsec";

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// How many tasks the kernels split their work into (ORT's intra-op pool runs them); 0 means the
/// number of available cores. Set it to the session's `intra_op_num_threads`.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// `THREADS`, or when it is 0 the number of available cores, read once per process:
/// `available_parallelism` is a `sched_getaffinity` plus cgroup file reads, and the kernels ask
/// several times per node (62 calls per MiniLM inference at batch 1 in Python onnxruntime, where
/// nothing calls [`set_threads`]; see `benches/python_syscalls.sh`).
fn threads() -> usize {
    static AVAILABLE: OnceLock<usize> = OnceLock::new();
    match THREADS.load(Ordering::Relaxed) {
        0 => *AVAILABLE.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        n => n,
    }
}

/// Every sparsec operator in one domain, ready for `SessionBuilder::with_operators`.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(SparseLinearOp)?
        .add(SparseLinearF32Op)?
        .add(AttentionOp)?
        .add(QuantizedAttentionOp)?
        .add(LayerNormOp)?
        .add(MaskedLinearOp)?
        .add(MaskedLinearGradInputOp)?
        .add(MaskedLinearGradWeightOp)?
        .add(AttentionTrainOp)?
        .add(AttentionTrainGradOp)?
        .add(EmbeddingGradOp)?
        .add(GeluTrainOp)?
        .add(GeluTrainGradOp)?
        .add(LayerNormGradOp)
}

/// The instruction set kernels are created with: `SPARSEC_ISA` when set, else the best this CPU has.
fn kernel_isa() -> ort::Result<Isa> {
    Isa::from_env().map_err(|e| ort::Error::new(e.to_string()))
}

/// ORT's intra-op thread pool as the kernels' [`Parallel`].
struct OrtPool<'a>(&'a ComputeContext);

// SAFETY: the kernels call `Parallel::run` only from the thread ORT runs `compute` on, which is
// where `KernelContext_ParallelFor` may be called; the context is never touched from the tasks.
unsafe impl Sync for OrtPool<'_> {}

impl Parallel for OrtPool<'_> {
    fn threads(&self) -> usize {
        threads()
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || threads() <= 1 || self.0.par_for(n, n, f).is_err() {
            (0..n).for_each(f);
        }
    }
}

/// Runs a kernel body, turning a panic into an ORT error that names the node.
fn guarded(node: &str, body: impl FnOnce() -> ort::Result<()>) -> ort::Result<()> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r.map_err(|e| ort::Error::new(format!("{node}: {e}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(ort::Error::new(format!("{node}: kernel panicked: {msg}")))
        }
    }
}

/// An f32 tensor type for shape inference. ORT reads a dimension without a symbol as a fixed
/// value, so every unknown (`-1`) dimension gets a symbol: the input's, or a fresh one.
fn f32_type(dims: Vec<i64>, mut symbols: Vec<String>) -> ort::value::ValueType {
    static FRESH: AtomicUsize = AtomicUsize::new(0);
    symbols.resize(dims.len(), String::new());
    for (d, s) in dims.iter().zip(symbols.iter_mut()) {
        if *d >= 0 {
            s.clear();
        } else if s.is_empty() {
            *s = format!("sparsec_dim_{}", FRESH.fetch_add(1, Ordering::Relaxed));
        }
    }
    ort::value::ValueType::Tensor {
        ty: ort::value::TensorElementType::Float32,
        shape: ort::value::Shape::new(dims),
        dimension_symbols: ort::value::SymbolicDimensions::new(symbols),
    }
}

fn err(msg: impl Into<String>) -> ort::Error {
    ort::Error::new(msg.into())
}

/// Names of a node's inputs; an omitted optional input has an empty name.
/// A required attribute that must be a positive integer (`num_heads`, `head_dim`).
fn positive_int(kctx: &KernelContext, node: &str, name: &str) -> ort::Result<usize> {
    match kctx.get::<i64>(name) {
        Some(v) if v > 0 => Ok(v as usize),
        _ => Err(err(format!("{node}: attribute '{name}' must be a positive integer"))),
    }
}

fn input_names(kctx: &KernelContext) -> ort::Result<Vec<String>> {
    Ok(kctx.inputs()?.into_iter().map(|o| o.name().to_string()).collect())
}

fn present(names: &[String], i: usize) -> bool {
    names.get(i).is_some_and(|n| !n.is_empty())
}

/// A constant (initializer) input copied out, or an error naming the node and slot.
fn const_input<T: ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug>(
    kctx: &KernelContext,
    node: &str,
    slot: usize,
    what: &str,
) -> ort::Result<(Vec<i64>, Vec<T>)> {
    let v = kctx
        .constant_input::<ort::value::DynTensorValueType>(slot)
        .map_err(|e| err(format!("{node}: input {slot} ({what}) must be a constant initializer: {e}")))?;
    let (shape, data) = v.try_extract_tensor::<T>().map_err(|e| err(format!("{node}: input {slot} ({what}): {e}")))?;
    Ok((shape.to_vec(), data.to_vec()))
}

/// `RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*)`, the entry point ONNX Runtime
/// calls from `SessionOptions.register_custom_ops_library`.
///
/// # Safety
/// Called by ONNX Runtime with valid pointers.
#[no_mangle]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut ort::sys::OrtSessionOptions,
    api_base: *const ort::sys::OrtApiBase,
) -> ort::sys::OrtStatusPtr {
    let api = if api_base.is_null() {
        std::ptr::null()
    } else {
        // SAFETY: `api_base` is not null (checked just above) and ORT passes its own `OrtApiBase`
        // (this function's contract), whose `GetApi` may be called with any version.
        unsafe { ((*api_base).GetApi)(ort::sys::ORT_API_VERSION) }
    };
    if api.is_null() {
        // No API of the version sparsec-ops was built for: nothing can even report the error.
        return ort::sys::OrtStatusPtr(std::ptr::null_mut());
    }
    // SAFETY: not null (checked just above): `GetApi` returned ORT's static API table, which lives
    // as long as the process.
    let api = unsafe { &*api };
    let fail = |msg: String| {
        let msg = std::ffi::CString::new(format!("sparsec-ops: {msg}")).unwrap_or_default();
        // SAFETY: `CreateStatus` comes from ORT's API table; `msg` is a NUL-terminated string that
        // lives across the call (ORT copies it into the status).
        unsafe { (api.CreateStatus)(ort::sys::OrtErrorCode::ORT_FAIL, msg.as_ptr()) }
    };
    let made = catch_unwind(|| {
        // SAFETY: `OrtApi` is a table of function pointers; a bitwise copy is the same table.
        ort::set_api(unsafe { std::ptr::read(api) });
        domain()
    });
    match made {
        Ok(Ok(domain)) => {
            let ptr = ort::AsPointer::ptr(&domain).cast_mut();
            // The domain must outlive every session that uses it: the library is never unloaded.
            std::mem::forget(domain);
            // SAFETY: `options` is ORT's session options (this function's contract) and `ptr` the
            // domain just built and forgotten, so it outlives every session that uses it.
            unsafe { (api.AddCustomOpDomain)(options, ptr) }
        }
        Ok(Err(e)) => fail(e.to_string()),
        Err(_) => fail("panic while creating the operator domain".into()),
    }
}
