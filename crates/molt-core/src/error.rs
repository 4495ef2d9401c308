//! Errors for input that does not make sense to the domain.

use thiserror::Error;

/// Input that was rejected at the edge, with a message fit for a user.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum InputError {
    /// A name or identifier does not have the required shape.
    #[error("invalid {kind} '{value}': {why}")]
    InvalidName {
        /// What kind of name (app name, hostname, …).
        kind: &'static str,
        /// The rejected text.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A duration such as `5s` or `15m` did not parse.
    #[error("invalid duration '{0}': use a number and a unit, such as 500ms, 5s, 15m, 1h or 30d")]
    InvalidDuration(String),
    /// `molt.toml` is malformed; the message carries the line and column.
    #[error("{file}: {message}")]
    Manifest {
        /// The file the text came from.
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Any other invalid value.
    #[error("{0}")]
    Invalid(String),
}
