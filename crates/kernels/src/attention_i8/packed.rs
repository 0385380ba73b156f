//! The packed `B` operand of `gemm.rs`'s products, below the per-ISA kernels that read it.

/// `B [K, N]` packed for one ISA's product kernel.
pub(crate) struct Packed {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) zb: u8,
    /// VNNI: `[⌈N/16⌉][⌈K/4⌉][16][4]` bytes `b ^ 0x80`, padding 0.
    pub(crate) bytes: Vec<u8>,
    /// VNNI: `Σ_k b[k, n]`, padded with zeros to a multiple of 16 columns.
    pub(crate) colsum: Vec<i32>,
    /// AVX2: `[⌈N/8⌉][⌈K/2⌉][8][2]` of `b − zb`, padding 0; scalar: `[K][N]` of `b − zb`.
    pub(crate) words: Vec<i16>,
}
