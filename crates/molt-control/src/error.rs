//! The controller's errors, sorted by what the caller should do about them.

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
    /// Instances could not be started or stopped.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A registry refused or failed a push or pull.
    #[error("{0}")]
    Registry(String),
    /// The server is shutting down.
    #[error("molt is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for the controller.
pub type Result<T> = std::result::Result<T, ControlError>;

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
