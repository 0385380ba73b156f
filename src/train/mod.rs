//! Training: the optimiser, the pruning algorithms, observers and checkpoints that
//! `sparsec train` drives over the forward+backward graph built by `autodiff` and run by `runtime`.

pub mod checkpoint;
pub mod data;
pub mod evidence;
pub mod interrupt;
pub mod observers;
mod oneshot;
pub mod optim;
pub mod prune;
pub mod session;
pub mod step;
pub mod tensorboard;
