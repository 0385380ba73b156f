//! What a training run is asked to do besides what the compiled folder holds: data files, batch
//! sizes, sequence windows, the teacher, checkpointing and limits. `cli/` fills it from flags;
//! [`TrainConfig::new`] holds the defaults (Hugging Face `run_qa.py`'s, as the flags do).

use std::path::PathBuf;

use crate::runtime;

/// Where the teacher logits for distillation come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Teacher {
    /// The model `sparsec compile` started from (recorded in plan.json).
    Original,
    /// No distillation: the span loss alone, even if the recipe has a DistillationModifier.
    Disabled,
    Path(PathBuf),
}

/// Everything a run needs besides the compiled folder.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub compiled: PathBuf,
    pub train_file: PathBuf,
    pub eval_file: Option<PathBuf>,
    pub output_dir: PathBuf,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Peak learning rate when the recipe sets none (linear warmup/decay as the HF Trainer).
    pub learning_rate: f32,
    pub warmup_steps: usize,
    pub weight_decay: f32,
    pub max_grad_norm: Option<f32>,
    pub max_seq_length: usize,
    pub doc_stride: usize,
    pub pad_to_max_length: bool,
    /// Batches of windows of similar length ([`grouped_epoch_order`]; HF `group_by_length`).
    pub group_by_length: bool,
    pub teacher: Teacher,
    pub seed: u64,
    pub threads: Option<usize>,
    /// ONNX Runtime's allocation for the training and teacher sessions (and one-shot's); evaluation keeps the default.
    pub ort_memory: runtime::OrtMemory,
    pub max_train_samples: Option<usize>,
    /// Fail (instead of warning) when a training answer does not match its context.
    pub strict_data: bool,
    pub max_eval_samples: Option<usize>,
    pub resume: bool,
    /// Branch another run at this checkpoint (`train --fork-from`).
    pub fork_from: Option<PathBuf>,
    /// Checkpoint every N steps as well as at each epoch end.
    pub save_steps: Option<u64>,
    /// Also evaluate on the eval questions every N steps (besides each epoch end).
    pub eval_steps: Option<u64>,
    /// Newest checkpoints kept.
    pub save_total_limit: usize,
    /// Instead of training, apply the final sparsity and calibrate on this many training windows.
    pub one_shot: Option<usize>,
    /// When given, must equal the recipe's epochs.
    pub num_train_epochs: Option<f64>,
    /// Stop after this many steps (the schedule still spans the recipe's epochs).
    pub max_steps: Option<u64>,
    /// Largest state (Fisher inverses, Hessians) a pruner may build, in bytes.
    pub prune_memory_limit: u64,
    /// SIGINT / SIGTERM stop the run after the current step with a checkpoint
    /// ([`super::interrupt`]) instead of ending the process.
    pub stop_on_signals: bool,
    /// Masked linears on sparsec's block-sparse training kernels ([`super::graphs::SparseTrain`]).
    pub sparse_train: super::graphs::SparseTrain,
    /// Attention and GELU on sparsec's fused training operators, or the graph's nodes (`train --fused-ops`).
    pub fused_ops: super::graphs::FusedOps,
    /// The products of the block-sparse training operators (`train --linear-precision`).
    pub linear_precision: crate::passes::LinearPrecision,
    /// ONNX Runtime's profile of the training-step session (`train --ort-profile`).
    pub ort_profile: Option<PathBuf>,
}

/// The default of [`TrainConfig::prune_memory_limit`]: 4 GiB.
pub const DEFAULT_PRUNE_MEMORY_LIMIT: u64 = 4 << 30;

impl TrainConfig {
    /// A run of the compiled folder `compiled` on `train_file` into `output_dir`, with every other
    /// setting at its default: batches of 16 (32 to evaluate), learning rate 5e-5 without warmup or
    /// weight decay, gradients clipped at norm 1, windows of 384 tokens with stride 128, the
    /// original model as teacher, seed 42, two checkpoints kept, and no evaluation, limits, resume
    /// or one-shot.
    pub fn new(compiled: PathBuf, train_file: PathBuf, output_dir: PathBuf) -> TrainConfig {
        TrainConfig {
            compiled,
            train_file,
            eval_file: None,
            output_dir,
            batch_size: 16,
            eval_batch_size: 32,
            learning_rate: 5e-5,
            warmup_steps: 0,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            max_seq_length: 384,
            doc_stride: 128,
            pad_to_max_length: false,
            group_by_length: false,
            teacher: Teacher::Original,
            seed: 42,
            threads: None,
            ort_memory: runtime::OrtMemory::Lean,
            max_train_samples: None,
            strict_data: false,
            max_eval_samples: None,
            resume: false,
            fork_from: None,
            save_steps: None,
            eval_steps: None,
            save_total_limit: 2,
            one_shot: None,
            num_train_epochs: None,
            max_steps: None,
            prune_memory_limit: DEFAULT_PRUNE_MEMORY_LIMIT,
            stop_on_signals: false,
            sparse_train: Default::default(),
            fused_ops: Default::default(),
            linear_precision: Default::default(),
            ort_profile: None,
        }
    }
}
