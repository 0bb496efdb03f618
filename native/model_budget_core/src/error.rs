//! The one error type of the core.

/// Everything that can go wrong in the core. Each variant says which argument
/// was at fault so that the Elixir side can raise an `ArgumentError` naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An argument is outside what the function accepts.
    #[error("invalid {arg}: {message}")]
    InvalidArgument { arg: &'static str, message: String },
    /// A model file is malformed: `reason` says what was wrong, `offset` is
    /// the byte of the file where it was found.
    #[error("{reason} at byte {offset}")]
    InvalidModel { offset: u64, reason: String },
    /// The file system refused: `code` is the POSIX name Elixir's `File`
    /// uses (`"enoent"`, `"eacces"`, ...).
    #[error("{code}: {message}")]
    Io { code: &'static str, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid(arg: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        arg,
        message: message.into(),
    }
}
