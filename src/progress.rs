//! Progress bars with rate and ETA (hidden automatically when stderr is not a
//! terminal, so logs and CI output stay clean).

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
