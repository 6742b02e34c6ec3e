//! Fuzz the recipe compiler: YAML parsing (serde-saphyr with its budget), the
//! common sections, every transform's parameter checks, views and their crop
//! sizes, and each task's section (`dino3d_tasks::recipe::compile_str`, what
//! `dino-run` runs on a recipe file).
//!
//! Input: UTF-8 text. Lines after a line `---set---` are `--set key=value`
//! overrides, applied through the same path as the command line (the recipe is
//! written to a per-process file under /dev/shm first, as the overrides edit
//! the file's text).
//!
//! Errors are expected; a panic is a bug. Every error must carry a position
//! inside the text, counting lines as YAML does (or line 0 for errors of the
//! whole file), and a message.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dino3d_tasks::recipe::{compile_file_with, compile_str};
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| PathBuf::from(format!("/dev/shm/dino3d-fuzz-{}.yaml", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (recipe, sets) = text.split_once("\n---set---\n").unwrap_or((text, ""));
    // YAML breaks lines at LF, CRLF and a lone CR.
    let breaks = recipe.matches('\n').count() + recipe.matches('\r').count()
        - recipe.matches("\r\n").count();
    let lines = breaks as u32 + 2;
    match compile_str(recipe, path()) {
        Ok((plan, task)) => {
            // What `recipe check` prints must not panic either.
            let _ = dino3d_tasks::recipe::describe(&plan, &task);
        }
        Err(errors) => {
            for e in &errors.0 {
                assert!(e.line <= lines, "error past the end: {e}");
                assert!(!e.message.is_empty(), "an error without a message");
            }
        }
    }
    if sets.is_empty() {
        return;
    }
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    if std::fs::write(path(), recipe).is_ok() {
        let _ = compile_file_with(path(), &sets);
        let _ = std::fs::remove_file(path());
    }
});
