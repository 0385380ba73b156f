//! Question answering on top of the runtime: the application layer that turns (question, context)
//! pairs into model windows and model logits back into answers.
//!
//! [`model`] decodes a model file once (its fixed shape, its sparsity, the sparse lowering the
//! caller asks for) → [`tokenize`] loads the model's `tokenizer.json` → [`features`] builds the question/context
//! windows exactly like the Hugging Face question-answering pipeline (and the training features
//! `sparsec train` needs) → [`pipeline`] batches windows through a runtime [`Backend`] →
//! [`postprocess`] decodes spans (the HF pipeline's probability scoring, or `run_qa.py`'s n-best
//! logit sums for SQuAD evaluation) → [`metric`] scores predictions with the official SQuAD
//! v1.1/v2.0 formulas, over data read by [`squad`].
//!
//! [`Backend`]: crate::runtime::Backend

pub mod evaluate;
pub mod features;
pub mod metric;
pub mod model;
pub mod pipeline;
pub mod postprocess;
pub mod squad;
pub mod tokenize;

pub use features::{Window, WindowOptions};
pub use model::{FixedShape, ModelFile};
pub use pipeline::{QaPipeline, QaRequest};
pub use postprocess::{Answer, DecodeOptions, Decoder};
pub use tokenize::QaTokenizer;
