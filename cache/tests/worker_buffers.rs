//! A block larger than a glibc thread arena (64 MiB), freed and made again on
//! a worker thread, is reused without faulting its pages in anew once
//! `reuse_large_buffers` has run: the case of a 512×512×256 CT decoded on a
//! loader thread. Without the setting each of its ~24,600 pages faults again
//! (glibc maps such blocks afresh outside the main arena).

fn minor_faults() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        u.ru_minflt
    }
}

fn main() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    assert!(dino3d_cache::reuse_large_buffers());
    let faults = std::thread::spawn(|| {
        let n = 24 << 20; // 96 MiB of f32
        let fill = |v: f32| {
            let a: Vec<f32> = vec![v; n];
            std::hint::black_box(&a);
        };
        fill(1.0);
        let before = minor_faults();
        fill(2.0);
        minor_faults() - before
    })
    .join()
    .unwrap();
    assert!(
        faults < 1000,
        "{faults} page faults for a reused 96 MiB block on a worker thread"
    );
    println!("worker_buffers: ok ({faults} page faults for the second block)");
}
