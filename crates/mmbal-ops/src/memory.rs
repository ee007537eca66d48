//! The process allocator's setting for training loops.

/// Keeps freed memory in the process instead of handing it back to the kernel (glibc only;
/// elsewhere it does nothing and returns false). A training step frees and allocates the same
/// tensors every step; with glibc's defaults every block above 128 KiB is unmapped on free and
/// page-faulted back, zeroed, on the next allocation, which cost AV-MNIST steps 25% and GRID
/// steps 18% on the 2-core machine (docs/performance.md). Blocks up to 32 MiB (glibc's
/// maximum for this setting) now come from the heap, and the heap is not trimmed: the resident
/// size stays at the run's peak. Process-wide: binaries call it first thing in `main`.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Safety: mallopt only changes allocator parameters; called before other threads
        // allocate, it races with nothing.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
