//! Keeping large buffers in the process instead of returning them to the
//! kernel after every sample.
//!
//! A decoded volume is tens of MiB. glibc's allocator serves such blocks with
//! `mmap` and unmaps them on `free` (its adaptive threshold stops at 32 MiB),
//! so every sample read from the cache faults its whole volume in again, page
//! by page, with the kernel zeroing each page first: about a third of the
//! decode time of a 256×256×128 volume. Raising the thresholds lets freed
//! volumes be reused. That holds in glibc's main arena only: the arenas of
//! other threads are heaps of at most 64 MiB, so a larger block (a
//! 512×512×256 CT, a batch of 128 3DINO samples) made on a worker thread is
//! mapped afresh every time, whatever the thresholds. All threads therefore
//! share the main arena (small blocks still come from per-thread caches).
//! This is process-wide, so binaries (and benchmarks) opt in at start-up,
//! before they start threads; the library never changes it by itself.

/// Serve blocks up to 1 GiB from the heap, from one arena for all threads,
/// and never give freed heap memory back to the kernel, so it is reused.
/// Returns whether the allocator accepted it (glibc on Linux; elsewhere
/// nothing changes and it returns false).
pub fn reuse_large_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called
        // before the process allocates large blocks, and any value is valid.
        unsafe {
            // glibc reads the trim threshold as a size: -1 is the largest
            // one, so the heap is never trimmed.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minor_faults() -> i64 {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
            u.ru_minflt
        }
    }

    /// The allocator accepts the setting, and a second 48 MiB volume after the
    /// first is freed costs almost no page faults (without it, each of its
    /// ~12,000 pages faults).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_volumes_are_reused_without_page_faults() {
        assert!(reuse_large_buffers());
        let n = 12 << 20;
        let fill = |v: f32| {
            let a: Vec<f32> = vec![v; n];
            std::hint::black_box(&a);
        };
        fill(1.0);
        let before = minor_faults();
        fill(2.0);
        let faults = minor_faults() - before;
        assert!(
            faults < 1000,
            "{faults} page faults for a reused 48 MiB block"
        );
    }
}
