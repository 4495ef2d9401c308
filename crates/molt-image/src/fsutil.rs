//! Small filesystem helpers: unique temp names, cleanup guards and permission sweeps.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ImageError;

/// Prefix of every temporary name the store creates; `list` and friends skip such names.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// A path (file or directory tree) that is removed on drop unless `keep` was called.
pub(crate) struct TempPath {
    path: Option<PathBuf>,
}

impl TempPath {
    /// Guards `path`, which the caller is about to create.
    pub(crate) fn new(path: PathBuf) -> TempPath {
        TempPath { path: Some(path) }
    }

    /// The guarded path.
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Disarms the guard: the path was renamed away or must stay.
    pub(crate) fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Best effort: a leftover temp entry is harmless and carries the temp prefix.
            let _ = remove_tree(&path);
        }
    }
}

/// A name that no other call in this or another process uses at the same time.
pub(crate) fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{TEMP_PREFIX}{kind}-{}-{n}-{nanos}", std::process::id())
}

/// Flushes a directory's entries (after a rename into it) to disk.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ImageError::io(dir))
}

/// Removes write bits from every file and directory under `root` (symlinks are left alone).
pub(crate) fn make_read_only(root: &Path) -> Result<(), ImageError> {
    sweep_modes(root, |mode| mode & !0o222)
}

/// Gives the owner write permission again on every file and directory under `root`.
pub(crate) fn make_writable(root: &Path) -> Result<(), ImageError> {
    sweep_modes(root, |mode| mode | 0o200)
}

/// Removes a file or a whole tree, restoring write bits first; a missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), ImageError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io(path)(e)),
    };
    let result = if meta.is_dir() {
        make_writable(path)?;
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::io(path)(e)),
        _ => Ok(()),
    }
}

/// Applies `change` to the permission bits of `root` and everything below it except symlinks.
fn sweep_modes(root: &Path, change: impl Fn(u32) -> u32) -> Result<(), ImageError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(ImageError::io(&path))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let wanted = change(mode);
        if wanted != mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(wanted))
                .map_err(ImageError::io(&path))?;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(ImageError::io(&path))? {
                let entry = entry.map_err(ImageError::io(&path))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}
