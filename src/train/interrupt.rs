//! Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (`timeout`, a scheduler, `kill`).
//!
//! While a [`StopOnSignals`] guard is alive, the first such signal only raises a flag: the session
//! finishes the step it is in, writes a checkpoint and returns [`Interrupted`], so `--resume`
//! continues from that very step and no work is lost. A second signal ends the process at once with
//! the signal's default action, as would any signal when no guard is alive (the handlers stay
//! installed but act as the default).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

/// The training run stopped on a signal after writing a checkpoint of step `step`.
#[derive(Debug, thiserror::Error)]
#[error(
    "training interrupted by {signal} after step {step}; checkpoint '{checkpoint}' written: run the same command \
     with --resume to continue from it"
)]
pub struct Interrupted {
    pub signal: &'static str,
    pub step: u64,
    pub checkpoint: String,
}

/// A signal arrived while a long phase inside a step ran (an OBS update gathering gradients): the
/// phase stopped at once, before changing any weight or mask, so the run checkpoints the steps done
/// before it and `--resume` runs that phase again.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {signal} in the middle of a step")]
pub struct StepInterrupted {
    pub signal: &'static str,
}

/// The signal a live [`StopOnSignals`] guard was asked to stop by, if any: for long phases within a
/// step to poll (they return [`StepInterrupted`]); `None` when no guard is alive.
pub fn stop_requested() -> Option<&'static str> {
    let h = HANDLERS.get()?.as_ref().ok()?;
    if h.idle.load(Ordering::SeqCst) || !h.requested.load(Ordering::SeqCst) {
        return None;
    }
    Some(signal_hook::low_level::signal_name(h.which.load(Ordering::SeqCst) as i32).unwrap_or("a signal"))
}

struct Handlers {
    /// True while no guard is alive: a signal then takes its default action.
    idle: Arc<AtomicBool>,
    requested: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
    guards: Mutex<usize>,
}

static HANDLERS: OnceLock<std::result::Result<Handlers, String>> = OnceLock::new();

fn handlers() -> Result<&'static Handlers> {
    let h = HANDLERS.get_or_init(|| {
        let idle = Arc::new(AtomicBool::new(true));
        let requested = Arc::new(AtomicBool::new(false));
        let which = Arc::new(AtomicUsize::new(0));
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_default(sig, Arc::clone(&idle)).map_err(|e| e.to_string())?;
            signal_hook::flag::register_conditional_default(sig, Arc::clone(&requested)).map_err(|e| e.to_string())?;
            signal_hook::flag::register_usize(sig, Arc::clone(&which), sig as usize).map_err(|e| e.to_string())?;
            signal_hook::flag::register(sig, Arc::clone(&requested)).map_err(|e| e.to_string())?;
        }
        Ok(Handlers { idle, requested, which, guards: Mutex::new(0) })
    });
    h.as_ref().map_err(|e| anyhow::anyhow!("{e}")).context("cannot install the SIGINT/SIGTERM handlers")
}

/// While alive, SIGINT and SIGTERM request a clean stop instead of ending the process.
pub struct StopOnSignals {
    handlers: &'static Handlers,
}

impl StopOnSignals {
    pub fn new() -> Result<StopOnSignals> {
        let handlers = handlers()?;
        let mut n = handlers.guards.lock().unwrap_or_else(|p| p.into_inner());
        if *n == 0 {
            handlers.requested.store(false, Ordering::SeqCst);
            handlers.which.store(0, Ordering::SeqCst);
            handlers.idle.store(false, Ordering::SeqCst);
        }
        *n += 1;
        Ok(StopOnSignals { handlers })
    }

    /// The signal that asked to stop, if one did.
    pub fn requested(&self) -> Option<&'static str> {
        if !self.handlers.requested.load(Ordering::SeqCst) {
            return None;
        }
        Some(
            signal_hook::low_level::signal_name(self.handlers.which.load(Ordering::SeqCst) as i32)
                .unwrap_or("a signal"),
        )
    }
}

impl Drop for StopOnSignals {
    fn drop(&mut self) {
        let mut n = self.handlers.guards.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.handlers.idle.store(true, Ordering::SeqCst);
        }
    }
}
