//! The integration tests, as one binary (so CI links once): each module below is one area,
//! and `common` holds the helpers they share (running the binary, fixture paths, skipping).

mod common;

mod autodiff_fixtures;
mod autodiff_ops;
mod compile_fixtures;
mod compile_train_graph;
mod explain;
mod export;
mod file_modes;
mod ir_patch;
mod matrix;
mod prune_cli;
mod prune_reference;
mod python_pkg;
mod qa_bench;
mod qa_errors;
mod qa_eval;
mod qa_features;
mod qa_metric;
mod qa_pipeline;
mod recipe_parse;
mod recipe_values;
mod recipes_cli;
mod runtime_errors;
mod schema_validation;
mod serve;
mod sparse_exec;
mod sparse_train;
mod sparseml_attention;
mod sparseml_exports;
mod sparsify;
mod spine;
mod static_shapes;
mod streams;
mod tidy;
mod train_cli;
mod train_data_check;
mod train_fused_ops;
mod train_reference;
