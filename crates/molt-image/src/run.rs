//! `run` steps: a command runs in a sandbox over a scratch copy of the image so far, and what
//! it changed becomes a layer (with OCI whiteouts for what it deleted).
//!
//! The sandbox itself is the caller's (`BuildSandbox`; molt wires a runc container from
//! molt-runtime): this crate never runs processes. Changes are found by comparing a snapshot of
//! every entry's metadata (kind, mode, owner, size, mtime, ctime, inode) before and after; the
//! kernel sets ctime on every change, so nothing written is missed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::filelist::{LayerEntry, LayerFiles};
use crate::ImageError;
use molt_pack::WrittenFile;

/// Runs one build command with a root filesystem; molt-image's seam to a container runtime.
pub trait BuildSandbox {
    /// Runs `request.argv` with `rootfs` (writable) as its root; Err carries the reason and
    /// the command's output tail.
    fn run(&self, rootfs: &Path, request: &RunRequest<'_>) -> Result<(), String>;
}

/// What a `run` step asks the sandbox for.
#[derive(Debug, Clone)]
pub struct RunRequest<'a> {
    /// Program and arguments (no shell).
    pub argv: &'a [String],
    /// The image's environment so far, `NAME=value`.
    pub env: Vec<String>,
    /// The image's working directory so far (`/` by default).
    pub workdir: String,
    /// The image's user so far (`uid[:gid]`), if numeric; else root.
    pub user: Option<(u32, u32)>,
    /// Whether the command may use the network.
    pub network: bool,
}

/// The metadata that tells whether an entry changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

/// Every entry under a root with its stamp.
pub(crate) struct Snapshot(BTreeMap<PathBuf, Stamp>);

/// What a run step changed under `root`.
pub(crate) struct RunChanges {
    root: PathBuf,
    /// New or modified entries, sorted.
    changed: Vec<PathBuf>,
    /// Entries gone (only the topmost of a deleted subtree), sorted.
    deleted: Vec<PathBuf>,
}

impl Snapshot {
    /// Walks `root` without following symlinks.
    pub(crate) fn take(root: &Path) -> Result<Snapshot, ImageError> {
        let mut map = BTreeMap::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let dir = root.join(&rel);
            for item in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
                let item = item.map_err(ImageError::io(&dir))?;
                let child = rel.join(item.file_name());
                let meta =
                    fs::symlink_metadata(item.path()).map_err(ImageError::io(item.path()))?;
                if meta.is_dir() {
                    pending.push(child.clone());
                }
                map.insert(
                    child,
                    Stamp {
                        mode: meta.mode(),
                        uid: meta.uid(),
                        gid: meta.gid(),
                        size: meta.size(),
                        mtime: (meta.mtime(), meta.mtime_nsec()),
                        ctime: (meta.ctime(), meta.ctime_nsec()),
                        ino: meta.ino(),
                    },
                );
            }
        }
        Ok(Snapshot(map))
    }

    /// What differs from `before` to `self`, both of the tree at `root`.
    pub(crate) fn changes_since(self, before: &Snapshot, root: &Path) -> RunChanges {
        let changed = self
            .0
            .iter()
            .filter(|(path, stamp)| before.0.get(*path) != Some(*stamp))
            .map(|(path, _)| path.clone())
            .collect();
        let mut deleted: Vec<PathBuf> = Vec::new();
        for path in before.0.keys() {
            if self.0.contains_key(path) {
                continue;
            }
            if deleted.last().is_some_and(|top| path.starts_with(top)) {
                continue;
            }
            deleted.push(path.clone());
        }
        RunChanges {
            root: root.to_path_buf(),
            changed,
            deleted,
        }
    }
}

impl RunChanges {
    /// Writes the changes as a layer tar (sorted; whiteouts for deletions; every mtime
    /// `epoch`; modes and owners as the command left them) and returns its listing.
    pub(crate) fn write_layer(
        &self,
        epoch: u64,
        out: &mut impl Write,
    ) -> Result<LayerFiles, ImageError> {
        let mut items: Vec<(Vec<u8>, Option<&PathBuf>, Option<&PathBuf>)> = Vec::new();
        for path in &self.changed {
            items.push((path.as_os_str().as_bytes().to_vec(), Some(path), None));
        }
        let mut whiteouts = Vec::new();
        for path in &self.deleted {
            let name = path.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(name);
            let wh_path = path
                .parent()
                .unwrap_or(Path::new(""))
                .join(std::ffi::OsStr::from_bytes(&wh));
            whiteouts.push((wh_path, path.clone()));
        }
        for (wh_path, path) in &whiteouts {
            items.push((wh_path.as_os_str().as_bytes().to_vec(), None, Some(path)));
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));

        let mut builder = tar::Builder::new(out);
        let mut listing = LayerFiles::default();
        let mut written = Vec::new();
        for (name, changed, deleted) in items {
            let name = PathBuf::from(std::ffi::OsStr::from_bytes(&name));
            let mut header = tar::Header::new_gnu();
            header.set_mtime(epoch);
            header.set_size(0);
            if let Some(deleted) = deleted {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_uid(0);
                header.set_gid(0);
                builder
                    .append_data(&mut header, &name, io::empty())
                    .map_err(ImageError::Write)?;
                listing.entries.push(LayerEntry::Whiteout {
                    path: deleted.to_string_lossy().into_owned(),
                });
                continue;
            }
            let rel = changed.expect("a change or a deletion");
            let path = self.root.join(rel);
            let meta = fs::symlink_metadata(&path).map_err(ImageError::io(&path))?;
            header.set_mode(meta.mode() & 0o7777);
            header.set_uid(u64::from(meta.uid()));
            header.set_gid(u64::from(meta.gid()));
            let shown = rel.to_string_lossy().into_owned();
            if meta.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                let mut dir = rel.clone().into_os_string();
                dir.push("/");
                builder
                    .append_data(&mut header, Path::new(&dir), io::empty())
                    .map_err(ImageError::Write)?;
                listing.entries.push(LayerEntry::Other { path: shown });
            } else if meta.is_file() {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(meta.len());
                let file = fs::File::open(&path).map_err(ImageError::io(&path))?;
                let mut reader = crate::blobs::HashingReader::new(io::BufReader::new(file));
                builder
                    .append_data(&mut header, rel, &mut reader)
                    .map_err(ImageError::Write)?;
                use sha2::Digest as _;
                written.push(WrittenFile {
                    path: rel.clone(),
                    size: meta.len(),
                    sha256: reader.hasher.finalize().into(),
                });
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(ImageError::io(&path))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                builder
                    .append_link(&mut header, rel, &target)
                    .map_err(ImageError::Write)?;
                listing.entries.push(LayerEntry::Symlink {
                    path: shown,
                    target: target.to_string_lossy().into_owned(),
                });
            } else {
                return Err(ImageError::Build(format!(
                    "run step left {shown}, which is neither a file, a folder nor a symlink"
                )));
            }
        }
        builder
            .into_inner()
            .and_then(|out| out.flush())
            .map_err(ImageError::Write)?;
        listing
            .entries
            .extend(LayerFiles::from_written(&written).entries);
        Ok(listing)
    }
}

/// `uid` or `uid:gid` (numeric) → ids; names are not resolved (the image may have no passwd).
pub(crate) fn numeric_user(user: &str) -> Option<(u32, u32)> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Some((u.parse().ok()?, g.parse().ok()?))
}
