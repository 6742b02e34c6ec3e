//! Progress bars with rate and ETA (hidden automatically when stderr is not a
//! terminal, so logs and CI output stay clean), and the tasks' [`Progress`]
//! drawn with them: notes go to stderr, above any bar.

use dino3d_tasks::{Bar, Progress};
use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `len` items of `what` (e.g. "files").
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{msg:>10} [{bar:40.cyan/blue}] {human_pos}/{human_len} {per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(what.to_string())
}

/// The terminal's progress for the tasks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Terminal;

impl Progress for Terminal {
    fn bar(&self, len: u64, what: &str) -> Box<dyn Bar> {
        Box::new(TerminalBar(bar(len, what)))
    }

    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// An indicatif bar, cleared when the task drops it.
struct TerminalBar(ProgressBar);

impl Bar for TerminalBar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    fn set_message(&self, message: String) {
        self.0.set_message(message);
    }

    fn note(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }
}

impl Drop for TerminalBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
