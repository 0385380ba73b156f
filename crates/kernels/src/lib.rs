//! sparsec's CPU kernels: the unsafe-contained layer under `sparsec-ops` (ONNX Runtime custom
//! operators) and sparsec's own runtime. No ONNX Runtime, tract or ONNX types here: plain slices in,
//! plain slices out.
//!
//! Every kernel has one safe entry point that checks shapes and runs the ISA chosen once at
//! creation ([`Isa`]). CPU feature detection lives in `isa.rs`, `std::arch` only in the per-ISA
//! kernel files; `unsafe` is in those files and in the dispatch code that calls them and hands
//! tasks disjoint output ranges (`Out`, scratch buffers), each block with its `SAFETY` argument.
//! Every ISA path is tested against a scalar reference through [`Isa::forced`] / `SPARSEC_ISA`.

pub mod attention;
pub mod gelu;
pub mod isa;
pub mod layer_norm;
pub mod linear_f32;
pub mod linear_i8;
pub mod par;
mod scratch;
mod selfcheck;

pub use isa::Isa;
pub use par::{Parallel, Serial};
