//! The one error type of providers.

use std::io;
use std::path::PathBuf;

/// Why a provider could not do what was asked.
#[derive(thiserror::Error, Debug)]
pub enum ProviderError {
    /// The spec's command is empty.
    #[error("instance {id} has an empty command")]
    EmptyCommand {
        /// The instance id.
        id: String,
    },
    /// The program was not found.
    #[error("command {command:?} not found (looked in {searched})")]
    CommandNotFound {
        /// The program as written in the spec.
        command: String,
        /// Where it was looked for: a path, or the PATH that was searched.
        searched: String,
    },
    /// The program exists but has no exec bit (or is a directory).
    #[error("{} is not executable; run `chmod +x` on it", path.display())]
    NotExecutable {
        /// The resolved program path.
        path: PathBuf,
    },
    /// The operating system refused to start the program.
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        /// The program as written in the spec.
        command: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation (working directory, log file, /proc) failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory being worked on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Setting up or removing an instance's network (bridge, namespace, veth, address) failed.
    #[error("network: cannot {what}: {source}")]
    Network {
        /// What was being done, e.g. "create veth mv1234 for web-1".
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A handle names a pid that must never be signalled (0, 1, molt itself, out of range).
    #[error("refusing to signal pid {pid}: not an instance")]
    InvalidPid {
        /// The pid from the handle.
        pid: u32,
    },
    /// Sending a signal failed for a reason other than the process being gone.
    #[error("cannot signal process group {pid}: {source}")]
    Signal {
        /// The group leader's pid.
        pid: u32,
        /// The underlying error.
        #[source]
        source: nix::errno::Errno,
    },
}

impl ProviderError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ProviderError {
        let path = path.into();
        move |source| ProviderError::Io { path, source }
    }
}
