//! How a kernel splits its work: the caller supplies the thread pool (ONNX Runtime's intra-op
//! pool inside a custom operator, rayon or nothing elsewhere), the kernel supplies the tasks.

/// Runs `f(0..n)`, possibly concurrently. Implementations must call `f` exactly once per index and
/// return only when every call has returned.
pub trait Parallel: Sync {
    /// How many tasks can usefully run at once.
    fn threads(&self) -> usize;
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync));
}

/// Runs every task on the calling thread.
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(f)
    }
}
