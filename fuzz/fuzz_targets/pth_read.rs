//! Fuzz the `.pth` reader: the zip archive, the restricted unpickler and the
//! storages it names (`dino3d_model::checkpoint::read_pth`, what importing a
//! 3DINO checkpoint runs).
//!
//! The first byte picks the mode: even, the rest is written as a whole `.pth`
//! file; odd, the rest is the pickle itself, stored as `archive/data.pkl` of a
//! zip with a little-endian `byteorder` and one 64-byte storage `archive/data/0`,
//! so mutations reach the unpickler instead of dying in the zip reader.
//!
//! Errors are expected; a panic, a hang or an out-of-memory abort is a bug. A
//! tensor that loads must hold the elements its shape says.

#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use dino3d_model::checkpoint::read_pth;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| PathBuf::from(format!("/dev/shm/dino3d-fuzz-{}.pth", std::process::id())))
}

/// A torch-style zip around `pickle`.
fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in [
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little".as_slice()),
        ("archive/data/0", &[0x3f; 64]),
    ] {
        zip.start_file(name, stored).expect("in-memory zip");
        zip.write_all(bytes).expect("in-memory zip");
    }
    zip.finish().expect("in-memory zip");
    out.into_inner()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 1 { archive(rest) } else { rest.to_vec() };
    if std::fs::write(path(), bytes).is_err() {
        return;
    }
    if let Ok(tensors) = read_pth(path(), &Device::Cpu) {
        for (name, t) in tensors {
            assert_eq!(t.elem_count(), t.dims().iter().product::<usize>(), "{name}");
        }
    }
    let _ = std::fs::remove_file(path());
});
