//! molt-pack: the canonical tar of a folder — one byte stream per directory tree, whatever its
//! mtimes, owners or order. The image store makes an imported folder's layer of it (so the
//! same tree always gets the same image digest), and the CLI streams it to the server when it
//! uploads an app folder or a build context, so both sides agree on what a folder is.
//!
//! [`write_canonical_tar`] is the whole contract for a folder; the lower-level pieces
//! ([`collect_tree`], [`write_tree_styled`] with a [`TarStyle`]) are what the image store's
//! bake stamps its `copy` layers with.
//!
//! Architecture invariant: reading the tree never follows a symlink, and writing never reads
//! outside it; everything here blocks (async callers use `spawn_blocking`).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Why a tree could not be packed.
#[derive(thiserror::Error, Debug)]
pub enum PackError {
    /// Reading `path` of the tree failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry of the tree has no place in an image.
    #[error("unsafe entry {path:?} in image: {why}")]
    UnsafeEntry {
        /// The entry's path relative to the tree's root.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// Writing the tar to its destination failed.
    #[error("writing the image tar: {0}")]
    Write(#[source] io::Error),
}

impl PackError {
    /// Wraps an I/O error with the path it happened on.
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PackError {
        let path = path.into();
        move |source| PackError::Io { path, source }
    }

    /// Builds an `UnsafeEntry` error.
    fn unsafe_entry(path: impl Into<String>, why: impl Into<String>) -> PackError {
        PackError::UnsafeEntry {
            path: path.into(),
            why: why.into(),
        }
    }
}

/// Name of the per-app ignore file read from the top of an imported directory.
pub const IGNORE_FILE: &str = ".moltignore";

/// Prefix of an OCI whiteout entry's name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Largest single file an image may hold.
pub const MAX_ENTRY_SIZE: u64 = 4 << 30;

/// Which paths the walk leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Skip `.git` at any depth and the paths listed in a top-level `.moltignore`.
    AppIgnores,
    /// Keep every regular file, directory and symlink (used to check an unpacked rootfs).
    Nothing,
}

/// One entry of a tree, relative to its root.
#[derive(Debug)]
pub struct TreeEntry {
    /// Path relative to the root, never empty, never with `..`.
    pub rel: PathBuf,
    /// What the entry is.
    pub kind: EntryKind,
}

/// The kinds of entries an image may hold.
#[derive(Debug)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file of `len` bytes.
    File {
        /// Any exec bit set: written with mode 0o755, else 0o644.
        executable: bool,
        /// Its size when the tree was walked.
        len: u64,
    },
    /// A symbolic link and its target, kept as it is (it may be absolute).
    Symlink(PathBuf),
}

/// Counts the bytes that pass through to the inner writer.
struct CountingWriter<W> {
    inner: W,
    written: u64,
}

/// Reads exactly `remaining` bytes of a file, hashing them, and remembers its own errors, so
/// that a failing file is reported with its path and a failing output is not blamed on the file.
struct FileReader<'a> {
    file: fs::File,
    remaining: u64,
    hasher: Sha256,
    error: &'a mut Option<io::Error>,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        match self.file.read(&mut buf[..want]) {
            Ok(0) => {
                *self.error = Some(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while it was being archived",
                ));
                Err(io::Error::other("input file failed"))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                *self.error = Some(e);
                Err(io::Error::other("input file failed"))
            }
        }
    }
}

/// Writes the canonical tar of `dir` to `out` and returns (bytes written, regular files).
///
/// Entries are sorted bytewise by path; only regular files, directories and symlinks are
/// kept; mtime, uid and gid are 0 and user/group names empty; directories and files with
/// any exec bit get mode 0o755, other files 0o644. Symlink targets are kept as they are,
/// absolute ones included: they are data, read inside the image at run time (no writer of
/// the store ever follows a symlink). Hard-linked files are written once per name.
/// `.git` is skipped at any depth, and so is every path listed in a top-level `.moltignore`
/// (one relative path per line, `#` comments).
pub fn write_canonical_tar(dir: &Path, out: &mut impl Write) -> Result<(u64, u64), PackError> {
    let entries = collect_tree(dir, Filter::AppIgnores)?;
    write_tree(dir, &entries, out)
}

/// Walks `root` (never following a symlink) and returns its entries sorted bytewise by path.
pub fn collect_tree(root: &Path, filter: Filter) -> Result<Vec<TreeEntry>, PackError> {
    let ignored = match filter {
        Filter::AppIgnores => read_ignore_file(root)?,
        Filter::Nothing => HashSet::new(),
    };
    let mut entries = Vec::new();
    let mut pending_dirs = vec![PathBuf::new()];
    while let Some(dir_rel) = pending_dirs.pop() {
        let dir = root.join(&dir_rel);
        for item in fs::read_dir(&dir).map_err(PackError::io(&dir))? {
            let item = item.map_err(PackError::io(&dir))?;
            let name = item.file_name();
            let rel = dir_rel.join(&name);
            if filter == Filter::AppIgnores && (name == ".git" || ignored.contains(&rel)) {
                continue;
            }
            if filter == Filter::AppIgnores && name.as_bytes().starts_with(WHITEOUT_PREFIX) {
                // In a layer this name would delete a file instead of being one.
                return Err(PackError::unsafe_entry(
                    rel.to_string_lossy(),
                    "names starting with `.wh.` are reserved for OCI whiteouts",
                ));
            }
            let path = item.path();
            let meta = fs::symlink_metadata(&path).map_err(PackError::io(&path))?;
            let file_type = meta.file_type();
            let kind = if file_type.is_dir() {
                pending_dirs.push(rel.clone());
                EntryKind::Dir
            } else if file_type.is_file() {
                if meta.len() > MAX_ENTRY_SIZE {
                    return Err(PackError::unsafe_entry(
                        rel.to_string_lossy(),
                        "file is larger than 4 GiB",
                    ));
                }
                EntryKind::File {
                    executable: meta.permissions().mode() & 0o111 != 0,
                    len: meta.len(),
                }
            } else if file_type.is_symlink() {
                // The target is data: absolute or climbing targets mean paths inside the
                // image once it is a container's root, and no writer follows a symlink.
                EntryKind::Symlink(fs::read_link(&path).map_err(PackError::io(&path))?)
            } else {
                // Sockets, fifos and devices have no place in an image.
                continue;
            };
            entries.push(TreeEntry { rel, kind });
        }
    }
    entries.sort_by(|a, b| {
        a.rel
            .as_os_str()
            .as_bytes()
            .cmp(b.rel.as_os_str().as_bytes())
    });
    Ok(entries)
}

/// Writes `entries` (read from under `root`) as a canonical tar; returns (bytes, regular files).
pub fn write_tree(
    root: &Path,
    entries: &[TreeEntry],
    out: &mut impl Write,
) -> Result<(u64, u64), PackError> {
    let style = TarStyle::default();
    let (written, files) = write_tree_styled(root, entries, &style, out)?;
    Ok((written, files.len() as u64))
}

/// Maps a path under the tree's root to its path in the tar.
pub type Placement = Box<dyn Fn(&Path) -> PathBuf>;

/// How `write_tree_styled` names and stamps entries.
#[derive(Default)]
pub struct TarStyle {
    /// Directories written first, owned by root (each with a trailing `/`), e.g. the parents
    /// of a copy target.
    pub parents: Vec<PathBuf>,
    /// The directory the root itself becomes, stamped like the entries (a copied folder).
    pub root_entry: Option<PathBuf>,
    /// Where an entry goes in the tar, from its path under the root (`None`: the same path).
    pub place: Option<Placement>,
    /// mtime of every entry.
    pub mtime: u64,
    /// Mode of every regular file (else 0o755 with an exec bit, 0o644 without).
    pub file_mode: Option<u32>,
    /// uid and gid of every entry (else 0:0).
    pub owner: Option<(u32, u32)>,
}

/// A regular file written to a tar: its path there, its size and the sha256 of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Its path in the tar.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The sha256 of its content.
    pub sha256: [u8; 32],
}

/// Writes `entries` as a tar stamped by `style`; returns the bytes written and every regular
/// file with its hash. With the default style this is exactly `write_tree`'s stream.
pub fn write_tree_styled(
    root: &Path,
    entries: &[TreeEntry],
    style: &TarStyle,
    out: &mut impl Write,
) -> Result<(u64, Vec<WrittenFile>), PackError> {
    let mut counter = CountingWriter {
        inner: out,
        written: 0,
    };
    let mut builder = tar::Builder::new(&mut counter);
    let mut files = Vec::new();
    let (uid, gid) = style.owner.unwrap_or((0, 0));
    let new_header = || {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(style.mtime);
        header.set_uid(u64::from(uid));
        header.set_gid(u64::from(gid));
        header.set_size(0);
        header
    };
    let parents = style.parents.iter().map(|p| (p, false));
    for (parent, stamped) in parents.chain(style.root_entry.iter().map(|p| (p, true))) {
        let mut header = new_header();
        if !stamped {
            header.set_uid(0);
            header.set_gid(0);
        }
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        let mut name = parent.clone().into_os_string();
        name.push("/");
        builder
            .append_data(&mut header, Path::new(&name), io::empty())
            .map_err(PackError::Write)?;
    }
    for entry in entries {
        let mut header = new_header();
        let placed = style.place.as_ref().map(|place| place(&entry.rel));
        let name = placed.as_deref().unwrap_or(&entry.rel);
        match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                let mut name = name.to_path_buf().into_os_string();
                name.push("/");
                builder
                    .append_data(&mut header, Path::new(&name), io::empty())
                    .map_err(PackError::Write)?;
            }
            EntryKind::File { executable, len } => {
                header.set_entry_type(tar::EntryType::Regular);
                let mode = if *executable { 0o755 } else { 0o644 };
                header.set_mode(style.file_mode.unwrap_or(mode));
                header.set_size(*len);
                let path = root.join(&entry.rel);
                let file = fs::File::open(&path).map_err(PackError::io(&path))?;
                let mut file_error = None;
                let mut reader = FileReader {
                    file,
                    remaining: *len,
                    hasher: Sha256::new(),
                    error: &mut file_error,
                };
                let appended = builder.append_data(&mut header, name, &mut reader);
                if let Err(e) = appended {
                    return Err(match file_error {
                        Some(source) => PackError::Io { path, source },
                        None => PackError::Write(e),
                    });
                }
                files.push(WrittenFile {
                    path: name.to_path_buf(),
                    size: *len,
                    sha256: reader.hasher.finalize().into(),
                });
            }
            EntryKind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                builder
                    .append_link(&mut header, name, target)
                    .map_err(PackError::Write)?;
            }
        }
    }
    builder.into_inner().map_err(PackError::Write)?;
    counter.flush().map_err(PackError::Write)?;
    Ok((counter.written, files))
}

/// The plain names of a relative path, dropping `.`.
fn normal_components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_os_string()),
        _ => None,
    })
}

/// Reads the top-level `.moltignore`: one relative path per line, `#` starts a comment line.
fn read_ignore_file(root: &Path) -> Result<HashSet<PathBuf>, PackError> {
    let path = root.join(IGNORE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(PackError::io(path)(e)),
    };
    let mut ignored = HashSet::new();
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let path = Path::new(OsStr::from_bytes(line));
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            continue;
        }
        let rel: PathBuf = normal_components(path).collect();
        if !rel.as_os_str().is_empty() {
            ignored.insert(rel);
        }
    }
    Ok(ignored)
}
