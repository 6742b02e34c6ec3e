//! The tasks' error type: what went wrong, with the context a user needs
//! (which file, which item), as a chain of causes.
//!
//! Like `anyhow`'s context, a [`TaskError::Context`] displays only its own
//! message and keeps the cause as its [`std::error::Error::source`]; print a
//! whole chain with [`TaskError::chain`] (or `{:#}` once it is an
//! `anyhow::Error` at the binary's edge).

use std::fmt::Display;

/// Why a task failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// A problem described in words (bad settings, missing data).
    #[error("{0}")]
    Message(String),
    /// A cause, with what was being done when it happened.
    #[error("{context}")]
    Context {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<TaskError>,
    },
    /// A model failure.
    #[error(transparent)]
    Model(#[from] dino3d_model::ModelError),
    /// A tensor operation failure.
    #[error(transparent)]
    Tensor(#[from] dino3d_model::candle_core::Error),
    /// A data-pipeline failure (reading volumes, manifests, transforms).
    #[error(transparent)]
    Pipeline(#[from] dino3d_pipeline::Error),
    /// A launch or rendezvous failure of a distributed job.
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistError),
    /// A file-system failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON failure.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The tasks' result.
pub type Result<T, E = TaskError> = std::result::Result<T, E>;

impl TaskError {
    /// An error with `message`.
    pub fn msg(message: impl Display) -> TaskError {
        TaskError::Message(message.to_string())
    }

    /// This error under `context`.
    pub fn context(self, context: impl Display) -> TaskError {
        TaskError::Context {
            context: context.to_string(),
            source: Box::new(self),
        }
    }

    /// Whether a full file system (or a spent quota) caused this: a passing
    /// state a long run may wait out, unlike a folder it cannot write at all.
    pub fn is_out_of_space(&self) -> bool {
        use std::io::ErrorKind;
        let full = |e: &std::io::Error| {
            matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(c) = cause {
            // `Io` is transparent: its own source skips the io::Error. A
            // context's cause is a `Box<TaskError>`.
            let task = c
                .downcast_ref::<TaskError>()
                .or_else(|| c.downcast_ref::<Box<TaskError>>().map(|b| &**b));
            let io = c.downcast_ref::<std::io::Error>().or(match task {
                Some(TaskError::Io(e)) => Some(e),
                _ => None,
            });
            if io.is_some_and(full) {
                return true;
            }
            cause = c.source();
        }
        false
    }

    /// The message and every cause, `outer: inner: ...`.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            // Errors that print their source (`io: {source}`) are said once.
            let said = c.to_string();
            if !text.ends_with(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            cause = c.source();
        }
        text
    }
}

/// Context for results and options, as `anyhow::Context` gives it.
pub trait Context<T> {
    /// On failure (or `None`), the error under `context`.
    ///
    /// # Errors
    /// When `self` is an error or `None`.
    fn context(self, context: impl Display) -> Result<T>;

    /// [`Context::context`] with a lazily built message.
    ///
    /// # Errors
    /// When `self` is an error or `None`.
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<TaskError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Display) -> Result<T> {
        self.ok_or_else(|| TaskError::msg(context))
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| TaskError::msg(context()))
    }
}

/// Returns a [`TaskError::Message`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::TaskError::msg(format!($($arg)*)))
    };
}

/// [`bail!`] unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::error::bail!($($arg)*);
        }
    };
}

pub(crate) use {bail, ensure};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_displays_alone_and_chains_its_causes() {
        let inner: Result<()> = Err(TaskError::msg("disk full"));
        let e = inner
            .context("writing a.json")
            .context("saving the run")
            .unwrap_err();
        assert_eq!(e.to_string(), "saving the run");
        assert_eq!(e.chain(), "saving the run: writing a.json: disk full");
        let none: Option<u8> = None;
        assert_eq!(none.context("no value").unwrap_err().chain(), "no value");
    }

    /// A full disk is recognised through contexts and each crate's error.
    #[test]
    fn a_full_disk_is_told_from_other_failures() {
        use std::io::{Error, ErrorKind};
        let full = || Error::from(ErrorKind::StorageFull);
        let ctx = |e: TaskError| e.context("writing x").context("saving");
        assert!(ctx(TaskError::Io(full())).is_out_of_space());
        assert!(ctx(TaskError::Io(Error::from(ErrorKind::QuotaExceeded))).is_out_of_space());
        let model = dino3d_model::ModelError::CheckpointIo {
            path: "c.safetensors".into(),
            source: full(),
        };
        assert!(ctx(model.into()).is_out_of_space());
        let cache = dino3d_pipeline::Error::Cache {
            path: "v.nii".into(),
            source: Box::new(dino3d_cache::CacheError::Io {
                path: "e.d3c".into(),
                source: full(),
            }),
        };
        assert!(ctx(cache.into()).is_out_of_space());
        assert!(!ctx(TaskError::Io(Error::from(ErrorKind::PermissionDenied))).is_out_of_space());
        assert!(!ctx(TaskError::msg("No space left on device")).is_out_of_space());
        // The model error prints its io error: the chain says it once.
        let model = dino3d_model::ModelError::CheckpointIo {
            path: "c.safetensors".into(),
            source: Error::other("disk gone"),
        };
        assert_eq!(
            TaskError::from(model).context("saving").chain(),
            "saving: checkpoint c.safetensors: disk gone"
        );
    }
}
