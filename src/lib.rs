//! sparsec: an ONNX-native sparsification compiler for transformer question-answering models.
//!
//! The crate is a pipeline of stages over one graph IR:
//! [`onnx`] decodes and encodes `ModelProto` → [`ir`] holds the graph, its facts and the one patch
//! API → `passes` and `autodiff` rewrite it → [`runtime`] runs it on ONNX Runtime or tract →
//! `qa`, `train`, [`cli`] and [`serve`] (HTTP) are the applications on top.

pub mod autodiff;
pub mod bench;
pub mod cli;
pub mod compile;
pub mod export;
pub mod files;
pub mod info;
pub mod ir;
pub mod onnx;
pub mod passes;
pub mod qa;
pub mod recipe;
pub mod runtime;
pub mod serve;
pub mod sparsify;
pub mod train;
