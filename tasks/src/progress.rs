//! How a task reports while it runs: bars for its loops and notes for the
//! user. The binary draws them (indicatif on a terminal); a library user
//! can pass [`Silent`].

/// Where a task's progress goes.
pub trait Progress: Sync {
    /// A bar of `len` steps of `what` (e.g. "volumes"); cleared when dropped.
    fn bar(&self, len: u64, what: &str) -> Box<dyn Bar>;

    /// A line for the user (the binary prints it on stderr).
    fn note(&self, line: &str);
}

/// One running bar.
pub trait Bar: Send + Sync {
    /// Advances by `n` steps.
    fn inc(&self, n: u64);

    /// Replaces the text beside the bar.
    fn set_message(&self, message: String);

    /// A line for the user, printed above the bar.
    fn note(&self, line: &str);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn bar(&self, _len: u64, _what: &str) -> Box<dyn Bar> {
        Box::new(Silent)
    }

    fn note(&self, _line: &str) {}
}

impl Bar for Silent {
    fn inc(&self, _n: u64) {}

    fn set_message(&self, _message: String) {}

    fn note(&self, _line: &str) {}
}
