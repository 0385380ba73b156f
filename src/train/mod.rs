//! Training: the optimiser, magnitude-pruning masks and checkpoints that `sparsec train` drives
//! over the forward+backward graph built by `autodiff` and run by `runtime`.

pub mod checkpoint;
pub mod data;
pub mod masks;
pub mod observers;
pub mod optim;
pub mod session;
pub mod step;
