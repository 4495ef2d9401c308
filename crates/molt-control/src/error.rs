//! The controller's errors, sorted by what the caller should do about them: each has a
//! [`ErrorKind`], so the API maps kinds to status codes and never looks inside the layers
//! below (image store, state database, provider) or at the words of a message.

use std::io;

use molt_core::{InputError, InvalidTransition};
use molt_image::ImageError;
use molt_provider::ProviderError;
use molt_store::StoreError;
use thiserror::Error;

/// What went wrong in a control-plane operation.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The request itself is wrong (fix the input and retry).
    #[error(transparent)]
    Input(#[from] InputError),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The state database failed.
    #[error(transparent)]
    Store(StoreError),
    /// The image store failed or refused an archive.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The image store refused an uploaded archive: the upload is at fault, whatever the
    /// reason (I/O failures on molt's side stay [`ControlError::Image`]).
    #[error(transparent)]
    Refused(ImageError),
    /// Instances could not be started or stopped.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A registry refused or failed a push or pull.
    #[error("{0}")]
    Registry(String),
    /// The engine environments run on refused or failed a request (its own words kept).
    #[error(transparent)]
    Engine(#[from] molt_provider::EngineError),
    /// The server is shutting down.
    #[error("molt is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an error is, which decides what the caller can do about it (and the
/// API's status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong: fix it and retry.
    BadInput,
    /// Something named does not exist.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// The disk (of the image store or the state database) is full.
    DiskFull,
    /// molt cannot take the request right now (it is shutting down).
    Unavailable,
    /// A service molt talked to (a registry) refused or failed.
    Upstream,
    /// A failure on molt's side, or a bug.
    Internal,
}

/// Result alias for the controller.
pub type Result<T> = std::result::Result<T, ControlError>;

/// `ENOSPC`, the OS error of a write to a full disk (28 on Linux and the BSDs).
const ENOSPC: i32 = 28;

impl ControlError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ControlError::Input(_) | ControlError::Refused(_) => ErrorKind::BadInput,
            ControlError::NotFound(_) => ErrorKind::NotFound,
            ControlError::Conflict(_) => ErrorKind::Conflict,
            ControlError::ShuttingDown => ErrorKind::Unavailable,
            ControlError::Registry(_) => ErrorKind::Upstream,
            ControlError::Engine(molt_provider::EngineError::Refused { status, .. })
                if (400..500).contains(status) =>
            {
                ErrorKind::BadInput
            }
            ControlError::Engine(
                molt_provider::EngineError::Unreachable { .. }
                | molt_provider::EngineError::NotReady(_),
            ) => ErrorKind::Unavailable,
            ControlError::Engine(_) => ErrorKind::Upstream,
            ControlError::Image(
                ImageError::UnsafeEntry { .. } | ImageError::Tar(_) | ImageError::Build(_),
            ) => ErrorKind::BadInput,
            ControlError::Image(ImageError::NotFound(_)) => ErrorKind::NotFound,
            ControlError::Store(e) if e.is_disk_full() => ErrorKind::DiskFull,
            ControlError::Image(_) | ControlError::Provider(_) if self.is_disk_full() => {
                ErrorKind::DiskFull
            }
            ControlError::Store(_)
            | ControlError::Image(_)
            | ControlError::Provider(_)
            | ControlError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// An image store error from importing an upload: the upload's fault unless it is I/O on
    /// molt's side.
    pub(crate) fn refused_upload(e: ImageError) -> ControlError {
        match e {
            ImageError::Io { .. } => ControlError::Image(e),
            refused => ControlError::Refused(refused),
        }
    }

    /// True when an I/O error in the chain of the image store's or provider's error says the
    /// disk is full.
    fn is_disk_full(&self) -> bool {
        let mut next: Option<&(dyn std::error::Error + 'static)> = match self {
            ControlError::Image(e) => Some(e),
            ControlError::Provider(e) => Some(e),
            _ => None,
        };
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if is_disk_full(io) {
                    return true;
                }
            }
            next = e.source();
        }
        false
    }
}

/// True when `e` (or an error it wraps) is a write to a full disk.
fn is_disk_full(e: &io::Error) -> bool {
    if e.raw_os_error() == Some(ENOSPC) {
        return true;
    }
    let inner = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<io::Error>());
    inner.is_some_and(is_disk_full)
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ControlError::NotFound(e.to_string()),
            StoreError::Conflict(m) => ControlError::Conflict(m),
            StoreError::Transition(t) => ControlError::Conflict(t.to_string()),
            other => ControlError::Store(other),
        }
    }
}

impl From<molt_registry::RegistryError> for ControlError {
    fn from(e: molt_registry::RegistryError) -> Self {
        use molt_registry::RegistryError as R;
        match e {
            R::Reference { .. } => ControlError::Input(InputError::Invalid(e.to_string())),
            R::Image(i) => ControlError::Image(i),
            other => ControlError::Registry(other.to_string()),
        }
    }
}

impl From<InvalidTransition> for ControlError {
    fn from(e: InvalidTransition) -> Self {
        ControlError::Conflict(e.to_string())
    }
}

impl From<tokio::task::JoinError> for ControlError {
    fn from(e: tokio::task::JoinError) -> Self {
        ControlError::Internal(format!("background task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn io(path: &str, source: io::Error) -> ImageError {
        ImageError::Io {
            path: PathBuf::from(path),
            source,
        }
    }

    #[test]
    fn a_full_disk_is_found_from_the_os_error_not_the_message() {
        let full = || io::Error::from_raw_os_error(ENOSPC);
        assert_eq!(
            ControlError::Image(io("blobs/x", full())).kind(),
            ErrorKind::DiskFull
        );
        let provider = ProviderError::Io {
            path: PathBuf::from("logs/a.log"),
            source: full(),
        };
        assert_eq!(ControlError::Provider(provider).kind(), ErrorKind::DiskFull);
        // Wrapped in another I/O error, as a writer may do.
        let wrapped = io::Error::other(full());
        assert_eq!(
            ControlError::Image(io("tmp/y", wrapped)).kind(),
            ErrorKind::DiskFull
        );
        // Other I/O failures are molt's own; words in a message decide nothing.
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(
            ControlError::Image(io("blobs/x", denied)).kind(),
            ErrorKind::Internal
        );
        let said = ControlError::Internal("instance log: No space left on device".into());
        assert_eq!(said.kind(), ErrorKind::Internal);
    }

    #[test]
    fn kinds_of_image_store_errors() {
        let digest = molt_core::Digest::from_sha256(&[1; 32]);
        let unsafe_entry = ImageError::UnsafeEntry {
            path: "../x".into(),
            why: "escapes".into(),
        };
        assert_eq!(
            ControlError::Image(unsafe_entry).kind(),
            ErrorKind::BadInput
        );
        assert_eq!(
            ControlError::Image(ImageError::NotFound(digest.clone())).kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            ControlError::Image(ImageError::MissingBlob(digest.clone())).kind(),
            ErrorKind::Internal
        );
        // From an upload, whatever the store refuses is the upload's fault; its own I/O is not.
        assert_eq!(
            ControlError::refused_upload(ImageError::MissingBlob(digest)).kind(),
            ErrorKind::BadInput
        );
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(
            ControlError::refused_upload(io("blobs/x", denied)).kind(),
            ErrorKind::Internal
        );
    }

    #[test]
    fn kinds_of_the_controllers_own_errors() {
        let cases = [
            (
                ControlError::Input(InputError::Invalid("x".into())),
                ErrorKind::BadInput,
            ),
            (ControlError::NotFound("x".into()), ErrorKind::NotFound),
            (ControlError::Conflict("x".into()), ErrorKind::Conflict),
            (ControlError::ShuttingDown, ErrorKind::Unavailable),
            (ControlError::Registry("x".into()), ErrorKind::Upstream),
            (ControlError::Internal("x".into()), ErrorKind::Internal),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
        let missing = StoreError::NotFound {
            what: "app",
            key: "shop".into(),
        };
        assert_eq!(ControlError::from(missing).kind(), ErrorKind::NotFound);
    }
}
