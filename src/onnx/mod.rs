//! ONNX front and back end: decodes `ModelProto` bytes (with external data) into the IR and encodes
//! the IR back. The only module that touches prost types.

mod decode;
mod encode;
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto;

use std::path::{Path, PathBuf};

pub use decode::decode_model;
pub use encode::{encode_model, SaveOptions};

use crate::ir::Model;

/// Errors of reading or writing ONNX files; each names the file, tensor or node concerned.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read '{path}': {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write '{path}': {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("'{path}' is not a valid ONNX model: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("'{path}': {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("'{path}': external data of tensor '{tensor}': {reason}")]
    ExternalData { path: PathBuf, tensor: String, reason: String },
    #[error("'{path}': {source}")]
    Ir { path: PathBuf, source: crate::ir::IrError },
}

/// Loads a model file, resolving external data relative to its folder.
pub fn load(path: impl AsRef<Path>) -> Result<Model, OnnxError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Read { path: path.to_path_buf(), source })?;
    decode_model(&bytes, path)
}

/// Saves a model atomically: written to a temporary file beside `path`, then renamed. Tensors go
/// to an external data file when `opts` asks for it or the model would exceed protobuf's 2 GB limit.
pub fn save(model: &Model, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<(), OnnxError> {
    encode::save(model, path.as_ref(), opts)
}
