//! The error a kernel's safe entry point returns when a shape or argument does not fit, and the
//! length check every entry point runs on its slices.

use std::fmt;

/// A shape or argument mismatch found by a kernel's safe entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelError(pub String);

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KernelError {}

/// A [`KernelError`] from a `format!` message.
macro_rules! kerr {
    ($($t:tt)*) => { $crate::error::KernelError(format!($($t)*)) };
}
pub(crate) use kerr;

/// `Ok` when a `[T, cols]` argument named `what` holds exactly `T·cols` elements.
pub(crate) fn check_len(what: &str, len: usize, t: usize, cols: usize) -> Result<(), KernelError> {
    match t.checked_mul(cols) {
        Some(want) if want == len => Ok(()),
        _ => Err(kerr!("{what} have {len} elements, expected T·{cols} = {t}·{cols}")),
    }
}
