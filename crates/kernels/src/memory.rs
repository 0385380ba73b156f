//! The C allocator's handling of large blocks, for a process whose big buffers come and go on
//! every run (ONNX Runtime without its arena, as `sparsec train` runs it by default).
//!
//! glibc serves each block above its mmap threshold (32 MiB at most) with a fresh `mmap` and gives
//! it back with `munmap` when freed, so every training step pays the page faults and the zeroing of
//! its activations again (a 16 × 384 MiniLM step frees and maps gigabytes). [`reuse_freed_memory`]
//! makes glibc take every block from its heap and keep freed memory there for the next run: the
//! peak stays what the run needs at once, and the pages stay mapped.

/// glibc's `mallopt` parameters (`malloc.h`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_TRIM_THRESHOLD: i32 = -1;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_MMAP_MAX: i32 = -4;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}

/// No `mmap` for large blocks, and freed memory kept unless over 2 GiB sits free at the heap's
/// top. Returns whether the allocator took both settings (false where the C library is not glibc).
pub fn reuse_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets glibc's allocator parameters under its own lock; it reads
        // and writes no memory of ours, and glibc allows it at any time from any thread.
        let (a, b) = unsafe { (mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, i32::MAX)) };
        a == 1 && b == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_settings_and_large_blocks_still_work() {
        let took = super::reuse_freed_memory();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
        for n in [1usize << 20, 100 << 20, 300 << 20] {
            let mut v = vec![0u8; n];
            v[n - 1] = 7;
            assert_eq!(v.iter().map(|&x| x as u64).sum::<u64>(), 7);
        }
    }
}
