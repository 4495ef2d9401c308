//! Verified immutability of unpacked root filesystems.
//!
//! When a rootfs is unpacked, its **tree manifest** is recorded (`trees/<hex>.json` in the
//! store): one entry per path (type, permission bits, size, sha256 of the
//! content or of the symlink target) and the **rootfs digest**, the sha256 of the canonical
//! listing. [`ImageStore::verify_rootfs`] hashes the tree again and names every file that was
//! edited, added or removed; [`ImageStore::reunpack`] sets a drifted tree aside (instances that
//! still use it keep working until they are replaced) and unpacks a clean one from the blobs,
//! which are themselves verified against their digests.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use molt_core::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::fsutil::{remove_tree, unique_name};
use crate::{ImageError, ImageStore};

/// Directory (under `rootfs/`) where drifted trees wait until nothing uses them.
const SET_ASIDE: &str = ".drifted";

/// One path of an unpacked tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// `dir`, `file` or `symlink`.
    pub kind: String,
    /// Permission bits (`0o7777` of the mode).
    pub mode: u32,
    /// Size in bytes (files), length of the target (symlinks), 0 (directories).
    pub size: u64,
    /// sha256 of the content (files) or of the target (symlinks), hex; empty for directories.
    pub sha256: String,
}

/// The recorded state of an unpacked tree: every path and the digest over all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeManifest {
    /// The rootfs digest: sha256 of the canonical listing of `entries`.
    pub digest: Digest,
    /// Every path below the root, `/`-separated, relative.
    pub entries: BTreeMap<String, TreeEntry>,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The rootfs digest recorded at unpack.
    pub expected: Digest,
    /// The digest of the tree as it is now.
    pub actual: Digest,
    /// Paths whose type, mode, size or content changed.
    pub modified: Vec<String>,
    /// Paths that were not in the image.
    pub added: Vec<String>,
    /// Paths of the image that are gone.
    pub removed: Vec<String>,
}

impl Verification {
    /// True when the tree is exactly as unpacked.
    pub fn is_intact(&self) -> bool {
        self.expected == self.actual
    }

    /// A short description of what drifted, for events and errors.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (what, paths) in [
            ("modified", &self.modified),
            ("added", &self.added),
            ("removed", &self.removed),
        ] {
            if !paths.is_empty() {
                let shown: Vec<&str> = paths.iter().take(5).map(String::as_str).collect();
                let more = paths.len().saturating_sub(5);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                parts.push(format!("{what} {}{more}", shown.join(", ")));
            }
        }
        if parts.is_empty() {
            "intact".to_string()
        } else {
            parts.join("; ")
        }
    }
}

impl TreeManifest {
    /// Hashes the tree under `root` (symlinks are recorded, never followed).
    pub fn of_tree(root: &Path) -> Result<TreeManifest, ImageError> {
        let mut entries = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let dir = root.join(&rel);
            for item in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
                let item = item.map_err(ImageError::io(&dir))?;
                let rel = rel.join(item.file_name());
                let path = item.path();
                let meta = fs::symlink_metadata(&path).map_err(ImageError::io(&path))?;
                let mode = meta.permissions().mode() & 0o7777;
                let entry = if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).map_err(ImageError::io(&path))?;
                    let bytes = target.as_os_str().as_bytes();
                    TreeEntry {
                        kind: "symlink".into(),
                        mode: 0,
                        size: bytes.len() as u64,
                        sha256: molt_core::hex::encode(&Sha256::digest(bytes)),
                    }
                } else if meta.is_dir() {
                    stack.push(rel.clone());
                    TreeEntry {
                        kind: "dir".into(),
                        mode,
                        size: 0,
                        sha256: String::new(),
                    }
                } else if meta.is_file() {
                    TreeEntry {
                        kind: "file".into(),
                        mode,
                        size: meta.len(),
                        sha256: hash_file(&path)?,
                    }
                } else {
                    TreeEntry {
                        kind: "other".into(),
                        mode,
                        size: 0,
                        sha256: String::new(),
                    }
                };
                entries.insert(rel.to_string_lossy().into_owned(), entry);
            }
        }
        let mut listing = Sha256::new();
        for (path, e) in &entries {
            listing.update(
                format!(
                    "{path}\0{}\0{:o}\0{}\0{}\n",
                    e.kind, e.mode, e.size, e.sha256
                )
                .as_bytes(),
            );
        }
        Ok(TreeManifest {
            digest: Digest::from_sha256(&listing.finalize().into()),
            entries,
        })
    }

    /// How `now` differs from this (recorded) manifest.
    pub fn compare(&self, now: &TreeManifest) -> Verification {
        let mut v = Verification {
            expected: self.digest.clone(),
            actual: now.digest.clone(),
            modified: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
        };
        for (path, entry) in &self.entries {
            match now.entries.get(path) {
                None => v.removed.push(format!("/{path}")),
                Some(e) if e != entry => v.modified.push(format!("/{path}")),
                Some(_) => {}
            }
        }
        for path in now.entries.keys() {
            if !self.entries.contains_key(path) {
                v.added.push(format!("/{path}"));
            }
        }
        v
    }
}

impl ImageStore {
    /// Where the tree manifest of `digest`'s rootfs is kept (`trees/<hex>.json`).
    pub(crate) fn tree_manifest_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("trees")
            .join(format!("{}.json", digest.hex()))
    }

    /// Records the manifest of a freshly unpacked tree (before it is renamed into place).
    pub(crate) fn record_tree(&self, digest: &Digest, tree: &Path) -> Result<(), ImageError> {
        let manifest = TreeManifest::of_tree(tree)?;
        let path = self.tree_manifest_path(digest);
        let json = serde_json::to_vec(&manifest).map_err(|e| ImageError::io(&path)(e.into()))?;
        let dir = self.root.join("trees");
        fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
        let tmp = dir.join(unique_name("tree"));
        fs::write(&tmp, json).map_err(ImageError::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(ImageError::io(&path))
    }

    /// The manifest recorded when `digest`'s rootfs was unpacked (unpacking it if needed).
    ///
    /// A rootfs unpacked by a molt that recorded no manifest is re-unpacked, so a manifest
    /// always describes a tree made from the verified blobs.
    pub fn tree_manifest(&self, digest: &Digest) -> Result<TreeManifest, ImageError> {
        let path = self.tree_manifest_path(digest);
        let read = |path: &Path| -> Result<Option<TreeManifest>, ImageError> {
            match fs::read(path) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ImageError::InvalidLayout(format!("{}: {e}", path.display()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ImageError::io(path)(e)),
            }
        };
        if let Some(manifest) = read(&path)? {
            return Ok(manifest);
        }
        self.reunpack(digest)?;
        read(&path)?.ok_or_else(|| {
            ImageError::InvalidLayout(format!("no tree manifest was recorded for {digest}"))
        })
    }

    /// Hashes `digest`'s unpacked tree and compares it with the manifest recorded at unpack.
    pub fn verify_rootfs(&self, digest: &Digest) -> Result<Verification, ImageError> {
        let recorded = self.tree_manifest(digest)?;
        let now = TreeManifest::of_tree(&self.rootfs(digest)?)?;
        Ok(recorded.compare(&now))
    }

    /// Sets `digest`'s unpacked tree aside (whoever still uses it keeps it until
    /// [`ImageStore::discard_set_aside`]) and unpacks a clean one from the verified blobs.
    pub fn reunpack(&self, digest: &Digest) -> Result<PathBuf, ImageError> {
        let current = self.rootfs_dir().join(digest.hex());
        if current.exists() {
            let aside_dir = self.rootfs_dir().join(SET_ASIDE);
            fs::create_dir_all(&aside_dir).map_err(ImageError::io(&aside_dir))?;
            let aside = aside_dir.join(format!("{}-{}", digest.hex(), unique_name("old")));
            fs::rename(&current, &aside).map_err(ImageError::io(&current))?;
        }
        let _ = fs::remove_file(self.tree_manifest_path(digest));
        self.rootfs(digest)
    }

    /// Removes every tree [`ImageStore::reunpack`] set aside.
    pub fn discard_set_aside(&self) -> Result<(), ImageError> {
        remove_tree(&self.rootfs_dir().join(SET_ASIDE))
    }
}

/// sha256 of a file's content, hex.
fn hash_file(path: &Path) -> Result<String, ImageError> {
    let mut file = fs::File::open(path).map_err(ImageError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(ImageError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(molt_core::hex::encode(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_additions_and_removals_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/file"), "one").unwrap();
        fs::write(root.join("gone"), "x").unwrap();
        std::os::unix::fs::symlink("a/b/file", root.join("link")).unwrap();
        let before = TreeManifest::of_tree(root).unwrap();
        assert!(before
            .compare(&TreeManifest::of_tree(root).unwrap())
            .is_intact());
        assert_eq!(before.entries["a/b/file"].size, 3);
        assert_eq!(before.entries["link"].kind, "symlink");

        fs::write(root.join("a/b/file"), "two").unwrap();
        fs::write(root.join("new"), "").unwrap();
        fs::remove_file(root.join("gone")).unwrap();
        let v = before.compare(&TreeManifest::of_tree(root).unwrap());
        assert!(!v.is_intact());
        assert_eq!(v.modified, ["/a/b/file"]);
        assert_eq!(v.added, ["/new"]);
        assert_eq!(v.removed, ["/gone"]);
        assert!(
            v.summary().contains("modified /a/b/file"),
            "{}",
            v.summary()
        );

        // A mode change alone is drift too.
        fs::write(root.join("a/b/file"), "one").unwrap();
        fs::write(root.join("gone"), "x").unwrap();
        fs::remove_file(root.join("new")).unwrap();
        assert!(before
            .compare(&TreeManifest::of_tree(root).unwrap())
            .is_intact());
        fs::set_permissions(root.join("gone"), fs::Permissions::from_mode(0o777)).unwrap();
        let v = before.compare(&TreeManifest::of_tree(root).unwrap());
        assert_eq!(v.modified, ["/gone"]);
    }
}
