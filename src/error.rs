//! The library's error type: every variant carries a message that names what is
//! wrong and how to fix it.

use thiserror::Error;

/// Errors at the library boundary (user input, files, numerics).
#[derive(Debug, Error)]
pub enum Error {
    /// Invalid configuration value, key or type.
    #[error("config error: {0}")]
    Config(String),
    /// A data source that cannot be used.
    #[error("data error: {0}")]
    Data(String),
    /// A checkpoint that cannot be read or does not match.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// A filesystem failure, with the path involved. The cause is part of the
    /// message (not a separate `source`), so it is printed once.
    #[error("I/O error on {path}: {err}{hint}", hint = crate::files::io_hint(.err))]
    Io {
        /// The path being read or written.
        path: String,
        /// The underlying error.
        err: std::io::Error,
    },
    /// Training diverged (NaN or infinite loss).
    #[error("{0}")]
    Diverged(String),
    /// A backend (device) failure.
    #[error("backend error: {0}")]
    Backend(String),
    /// A directory another process holds (its lock is taken).
    #[error("{0}")]
    Busy(String),
    /// Nothing to do: the run was already complete. Not a failure: the
    /// command line reports it and exits 0, and every file is left as it was.
    #[error("{0}")]
    Complete(String),
}

/// Result with [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<std::path::Path>, err: std::io::Error) -> Error {
        Error::Io { path: path.as_ref().display().to_string(), err }
    }
}
