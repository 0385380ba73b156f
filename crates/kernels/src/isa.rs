//! Choosing the instruction set kernels are created with: `SPARSEC_ISA` when set (for tests and
//! A/B runs: `avx512vnni`, `avx2`, `scalar`), else the best this CPU has ([`Isa`], `cpu.rs`). The
//! AVX-512 kernels are admitted only after they pass a self-check against the scalar kernels, run
//! once per process the first time AVX-512 is chosen: a wrong result on a CPU the test suite never
//! ran on is an error at the choice instead of wrong answers. Kernel constructors take the chosen
//! [`Isa`] and only check that the CPU supports it.

use std::sync::OnceLock;

pub use crate::cpu::{Isa, IsaError, ISA_ENV};

mod selfcheck;

impl Isa {
    /// `SPARSEC_ISA` when set (an error when it names an unknown ISA or one this CPU lacks), else
    /// [`Isa::detect`]; admitted as [`Isa::forced`] admits it.
    pub fn from_env() -> Result<Isa, IsaError> {
        admit(Isa::requested()?)
    }

    /// `isa` when this CPU supports it and, for [`Isa::Avx512Vnni`], the AVX-512 kernels pass
    /// their start-up self-check.
    pub fn forced(isa: Isa) -> Result<Isa, IsaError> {
        if !isa.supported() {
            return Err(IsaError::Unsupported(isa));
        }
        admit(isa)
    }
}

/// `isa`, once the self-check (run at most once per process) has passed where it applies.
fn admit(isa: Isa) -> Result<Isa, IsaError> {
    static AVX512: OnceLock<Result<(), String>> = OnceLock::new();
    if isa == Isa::Avx512Vnni {
        AVX512.get_or_init(selfcheck::avx512).clone().map_err(IsaError::SelfCheck)?;
    }
    Ok(isa)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_admits_what_this_cpu_runs_and_nothing_else() {
        for isa in Isa::ALL {
            match Isa::forced(isa) {
                Ok(got) => assert!(got == isa && isa.supported(), "{isa}"),
                Err(IsaError::Unsupported(i)) => assert!(i == isa && !isa.supported(), "{isa}"),
                Err(e) => panic!("{isa}: {e}"),
            }
        }
        assert!(Isa::available().contains(&Isa::from_env().unwrap_or(Isa::Scalar)));
    }
}
