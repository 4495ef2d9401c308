//! The data directory is private to the user molt serves as: it holds the API tokens, the
//! state database (config values, the audit trail), instance logs and image trees.
//!
//! `molt serve` sets its umask to 077 before anything starts ([`private_umask`], called by
//! the binary before its runtime's threads exist), so everything it writes is 0600/0700; at
//! start the directory is checked and tightened ([`secure`]), so a directory made by an older
//! molt (0755, world-readable `state.db`) is closed too. Only the top is tightened: the data
//! directory at 0700 already shuts every other user out of what is beneath, and image trees
//! keep the modes their images give them (an instance's user must still read its own files).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use molt_control::SecretKey;

/// The subdirectories molt makes at the top of the data directory.
const DIRS: &[&str] = &["images", "logs", "uploads", "runc", "bundles", "tls"];

/// Sets the process's umask to 077: files 0600, directories 0700.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Makes `dir` (creating it, with `images/`, `logs/` and `uploads/`) private: refuses one
/// owned by another user; then the directory and molt's top-level directories 0700, every
/// regular file at its top and in `logs/` 0600.
pub(crate) fn secure(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let meta = fs::symlink_metadata(dir)
        .with_context(|| format!("reading the data directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "the data directory {} is not a directory (a symlink or a file): pass a real \
             directory with --data-dir",
            dir.display()
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "the data directory {} belongs to uid {}, not to uid {me} that molt serve runs as: \
             run molt serve as its owner, or pass a directory of your own with --data-dir",
            dir.display(),
            meta.uid()
        );
    }
    set_mode(dir, 0o700)?;
    for sub in ["images", "logs", "uploads"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    for sub in DIRS {
        let path = dir.join(sub);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            set_mode(&path, 0o700)?;
        }
    }
    tighten_files(dir)?;
    tighten_files(&dir.join("logs"))
}

/// Every regular file directly in `dir` (when it exists) to 0600; symlinks are left alone,
/// and so is `secrets.key`: a loose key is refused (someone may have read it), not mended.
pub(crate) fn tighten_files(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name() == "secrets.key" {
            continue;
        }
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            set_mode(&path, 0o600)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("making {} private (mode {mode:o})", path.display()))?;
    }
    Ok(())
}

/// The key secrets are sealed with: `given` (hex, from `MOLT_SECRETS_KEY`), else
/// `<dir>/secrets.key`, made (0600) when missing. A key file others may read or change, or
/// of another owner, is refused: whoever reads it opens every secret.
pub(crate) fn secrets_key(dir: &Path, given: Option<&str>) -> Result<SecretKey> {
    if let Some(hex) = given {
        return SecretKey::from_hex(hex).map_err(|e| anyhow::anyhow!("MOLT_SECRETS_KEY: {e}"));
    }
    let path = dir.join("secrets.key");
    match fs::symlink_metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            let me = nix::unistd::geteuid().as_raw();
            if !meta.is_file() || mode & 0o077 != 0 || meta.uid() != me {
                bail!(
                    "{} must be a file of uid {me} that only its owner reads (mode 0600); it is \
                     mode {mode:o} of uid {}: fix it with `chmod 600 {}` (and chown), or give the \
                     key in MOLT_SECRETS_KEY",
                    path.display(),
                    meta.uid(),
                    path.display()
                );
            }
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            SecretKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::generate();
            crate::write_atomically(&path, key.to_hex().as_bytes(), 0o600)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The public key of `--require-signature FILE` (64 hex digits, as `molt images keygen`
/// writes a `.pub` file).
pub(crate) fn signing_key(path: &Path) -> Result<molt_control::SigningKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("--require-signature {}: cannot read it", path.display()))?;
    molt_control::SigningKey::from_hex(&text).map_err(|e| {
        anyhow::anyhow!(
            "--require-signature {}: {e}; pass the .pub file `molt images keygen` wrote",
            path.display()
        )
    })
}
