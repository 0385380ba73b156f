//! The instruction sets sparsec's kernels are written for ([`Isa`]) and which of them this CPU
//! runs: feature detection, and the ISA the `SPARSEC_ISA` environment variable asks for. The
//! choice a kernel is created with, which also admits the AVX-512 kernels through their self-check,
//! is `isa.rs`'s.

use std::fmt;

/// The instruction sets a kernel can run on, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 F/BW with VNNI (`vpdpbusd`): Intel Ice Lake and later, AMD Zen 4 and later.
    Avx512Vnni,
    /// AVX2 + FMA (integer products through `vpmaddwd`, exact, no saturation).
    Avx2,
    /// Portable Rust; the fallback on every CPU.
    Scalar,
}

/// The environment variable that forces an ISA (`avx512vnni`, `avx2`, `scalar`).
pub const ISA_ENV: &str = "SPARSEC_ISA";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsaError {
    Unknown(String),
    Unsupported(Isa),
    /// The AVX-512 kernels computed something other than the scalar kernels at start-up.
    SelfCheck(String),
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::Unknown(s) => {
                write!(f, "{ISA_ENV}='{s}' is not an instruction set sparsec knows (avx512vnni, avx2, scalar)")
            }
            IsaError::Unsupported(isa) => write!(f, "{ISA_ENV} forces {isa}, which this CPU does not support"),
            IsaError::SelfCheck(e) => write!(
                f,
                "the AVX-512 kernels failed their start-up self-check against the scalar kernels ({e}); \
                 set {ISA_ENV}=avx2 to run on AVX2"
            ),
        }
    }
}

impl std::error::Error for IsaError {}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Avx512Vnni, Isa::Avx2, Isa::Scalar];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }

    pub fn parse(s: &str) -> Result<Isa, IsaError> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| IsaError::Unknown(s.into()))
    }

    /// Whether this CPU can run `self`.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The instruction sets this CPU supports, best first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }

    /// The best instruction set of this CPU, ignoring `SPARSEC_ISA`.
    pub fn detect() -> Isa {
        Isa::ALL.into_iter().find(|i| i.supported()).unwrap_or(Isa::Scalar)
    }

    /// The ISA `SPARSEC_ISA` names when set (an error when it names an unknown ISA or one this CPU
    /// lacks), else [`Isa::detect`]; without the AVX-512 self-check that [`Isa::from_env`] adds.
    pub(crate) fn requested() -> Result<Isa, IsaError> {
        match std::env::var(ISA_ENV) {
            Ok(s) if !s.trim().is_empty() => {
                let isa = Isa::parse(&s)?;
                if isa.supported() {
                    Ok(isa)
                } else {
                    Err(IsaError::Unsupported(isa))
                }
            }
            _ => Ok(Isa::detect()),
        }
    }

    /// Whether this CPU has a u8×s8 dot-product instruction (`vpdpbusd`: AVX-512 VNNI or AVX-VNNI),
    /// whichever path sparsec's own kernels take.
    pub fn cpu_has_vnni() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512vnni") || is_x86_feature_detected!("avxvnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Whether this CPU runs AVX-512 BF16 (`vdpbf16ps`) besides [`Isa::Avx512Vnni`].
    pub fn cpu_has_avx512_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            Isa::Avx512Vnni.supported() && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_scalar_is_always_available() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        assert!(Isa::available().contains(&Isa::Scalar));
        assert!(matches!(Isa::parse("sse9"), Err(IsaError::Unknown(_))));
        assert_eq!(Isa::detect(), Isa::available()[0]);
    }
}
