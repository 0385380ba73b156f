//! The kernels' tests, as one binary: each module checks one kernel family against its scalar
//! reference on every instruction set this CPU runs.

mod attention;
mod attention_i8;
mod attention_train;
mod embedding_grad;
mod gelu;
mod layer_norm_grad;
mod linear_f32;
mod linear_i8;
mod masked_linear;
