//! The one error type of the image store.

use std::io;
use std::path::PathBuf;

use molt_core::Digest;

/// Why an image operation failed.
#[derive(thiserror::Error, Debug)]
pub enum ImageError {
    /// A filesystem operation on `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory being worked on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry of a tar or a directory would escape the image root or is of a forbidden kind.
    #[error("unsafe entry {path:?} in image: {why}")]
    UnsafeEntry {
        /// The entry's path as written in the archive or relative to the directory.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// No image with this digest is stored.
    #[error("image {0} is not in the store")]
    NotFound(Digest),
    /// `import_path` was given something that is neither a directory nor a regular file.
    #[error("{} is neither a directory nor a tar file", .0.display())]
    NotADirectoryOrTar(PathBuf),
    /// A stored blob no longer hashes to its name.
    #[error(
        "image blob {digest} is corrupt (its content hashes to {actual}); remove and re-import it"
    )]
    Corrupt {
        /// The digest the blob is stored under.
        digest: Digest,
        /// What its bytes hash to now.
        actual: Digest,
    },
    /// An OCI layout, index, manifest or config is malformed or uses something molt does not
    /// support (another digest algorithm, an unknown layer media type, a nested index for another
    /// platform).
    #[error("invalid OCI image: {0}")]
    InvalidLayout(String),
    /// A manifest refers to a blob that is not there.
    #[error("blob {0} is missing")]
    MissingBlob(Digest),
    /// The tar stream could not be parsed.
    #[error("malformed tar stream: {0}")]
    Tar(#[source] io::Error),
    /// A bake could not be carried out (base not found, a step failed, run steps without a
    /// sandbox); the message says what to do.
    #[error("bake: {0}")]
    Build(String),
    /// Writing the canonical tar to its destination failed.
    #[error("writing the image tar: {0}")]
    Write(#[source] io::Error),
}

impl From<molt_pack::PackError> for ImageError {
    /// A tree that could not be packed fails an import the same way, with the same words.
    fn from(e: molt_pack::PackError) -> ImageError {
        match e {
            molt_pack::PackError::Io { path, source } => ImageError::Io { path, source },
            molt_pack::PackError::UnsafeEntry { path, why } => {
                ImageError::UnsafeEntry { path, why }
            }
            molt_pack::PackError::Write(e) => ImageError::Write(e),
        }
    }
}

impl ImageError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }

    /// Builds an `UnsafeEntry` error.
    pub(crate) fn unsafe_entry(path: impl Into<String>, why: impl Into<String>) -> ImageError {
        ImageError::UnsafeEntry {
            path: path.into(),
            why: why.into(),
        }
    }
}
