//! Helpers shared by the plain-`main` benches.

/// Peak resident memory of this process (MiB), from `/proc/self/status`;
/// NaN where that file does not exist.
pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// As `dino-run` does at start-up (`dino3d_cache::reuse_large_buffers`, which
/// this crate cannot depend on): glibc serves blocks up to 1 GiB from the heap
/// and keeps freed ones, so candle's per-op tensors stop page-faulting fresh
/// memory in on every allocation. `DINO3D_DEFAULT_ALLOCATOR=1` measures without.
#[allow(dead_code)]
pub(crate) fn reuse_large_buffers() {
    if std::env::var_os("DINO3D_DEFAULT_ALLOCATOR").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        // -1: the largest size, so the heap is never trimmed (as dino-run).
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}
