//! sparsec's CPU kernels: the unsafe-contained layer under `sparsec-ops` (ONNX Runtime custom
//! operators) and sparsec's own runtime. No ONNX Runtime, tract or ONNX types here: plain slices in,
//! plain slices out.
//!
//! Every kernel has one safe entry point that checks shapes and runs the ISA chosen once at
//! creation ([`Isa`]; `isa.rs` chooses it, admitting AVX-512 after a start-up self-check). CPU
//! feature detection lives in `cpu.rs`, `std::arch` only in the per-ISA kernel files; `unsafe` is
//! in those files and in the dispatch code that calls them and hands tasks disjoint output ranges
//! (`Out`, scratch buffers), each block with its `SAFETY` argument. Every ISA path is tested
//! against a scalar reference through [`Isa::forced`] / `SPARSEC_ISA`.
//!
//! Layers, lowest first: `cpu`, `error`, `par`, `scratch`, `bf16` (bf16 rounding and the portable
//! model of `vdpbf16ps`); the linear kernels' shared
//! infrastructure `blocks` (the packed weight format), `plan` (tasks and shared outputs), `quant`
//! (activation quantization), `gelu` (the exact GELU, per element and over whole tensors with its
//! derivative), `epilogue`, and the x86 in-register transposes `transpose`; the kernels `linear_i8`,
//! `linear_f32`, `attention` (inference, and the training forward and backward), `attention_i8`,
//! `layer_norm`; the training kernels `masked_linear` (over `linear_f32`'s forward kernels) and
//! `embedding_grad`; on top, `isa` (the ISA choice and the self-check that runs the kernels). Beside
//! them, `memory`: the C allocator's settings for training's come-and-go buffers.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod attention;
pub mod attention_i8;
mod bf16;
mod blocks;
mod cpu;
pub mod embedding_grad;
mod epilogue;
mod error;
pub mod gelu;
pub mod isa;
pub mod layer_norm;
pub mod linear_f32;
pub mod linear_i8;
pub mod masked_linear;
pub mod memory;
pub mod par;
mod plan;
mod quant;
mod scratch;
#[cfg(target_arch = "x86_64")]
mod transpose;

pub use isa::Isa;
pub use par::{Parallel, Serial};
