//! Unpacking untrusted tar streams: every entry is checked before anything touches the disk.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil::remove_tree;
use crate::ImageError;
use molt_pack::{MAX_ENTRY_SIZE, WHITEOUT_PREFIX};

/// A layer stream that may end without its last padding and end-of-archive blocks.
///
/// Some producers (umoci's `insert`, for one) stop right after the last entry's data. Once
/// the inner stream ends, this supplies the missing zeros: up to the next 512-byte boundary,
/// then two empty blocks. Layers are checked against their diff id on the inner bytes, so this
/// only changes how an already-verified stream is read, never what it holds.
pub(crate) struct LenientEnd<R> {
    inner: R,
    read: u64,
    zeros_left: Option<u64>,
}

/// What a validated entry will become on disk.
enum Planned {
    Dir,
    File {
        executable: bool,
    },
    Symlink(PathBuf),
    /// A hard link to the regular file at this path of the tree (relative, plain names).
    HardLink(PathBuf),
}

/// Unpacks `reader` into the existing empty directory `dest`.
///
/// Entries are validated one by one (relative paths without `..`; only files, directories,
/// symlinks and hard links; at most 4 GiB each) and **never written through a symlink**: every
/// parent of an entry must be a real directory already under `dest` (or is created as one), and
/// files are created with `O_EXCL`, so nothing lands outside `dest` even for a hostile archive.
/// That makes a symlink's target plain data: absolute targets (`/etc/alternatives/…`, `lib64 ->
/// /usr/lib64`) and relative ones that climb above the root are kept as they are and mean a
/// path inside the image once it is a container's root. A hard link names another member by
/// its path in the tree, resolved without following any symlink, and must be a regular file.
pub(crate) fn unpack_tar(reader: impl Read, dest: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(ImageError::Tar)? {
        let mut entry = entry.map_err(ImageError::Tar)?;
        unpack_entry(&mut entry, dest)?;
    }
    Ok(())
}

/// Applies one OCI layer on top of what `dest` already holds, honouring whiteouts.
///
/// `.wh.<name>` deletes `<name>` from the lower layers; `.wh..wh..opq` empties its directory
/// of everything the lower layers put there. Other entries are validated and written exactly
/// as `unpack_tar` does. A whiteout never follows a symlink, so it cannot delete outside.
pub(crate) fn unpack_layer(reader: impl Read, dest: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(ImageError::Tar)? {
        let mut entry = entry.map_err(ImageError::Tar)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let rel = safe_relative_path(&raw_path)
            .map_err(|why| ImageError::unsafe_entry(shown.clone(), why))?;
        let name = rel.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = rel.parent().unwrap_or(Path::new(""));
            apply_whiteout(dest, parent, hidden, &this_layer, &shown)?;
            continue;
        }
        unpack_entry(&mut entry, dest)?;
        this_layer.insert(rel);
    }
    Ok(())
}

/// Name (after the prefix) of the opaque-directory whiteout.
const OPAQUE: &[u8] = b".wh..opq";

/// Deletes what a whiteout hides: one name, or (opaque) everything older in `parent`.
fn apply_whiteout(
    dest: &Path,
    parent: &Path,
    hidden: &[u8],
    this_layer: &HashSet<PathBuf>,
    shown: &str,
) -> Result<(), ImageError> {
    let Some(dir) = existing_real_dir(dest, parent, shown)? else {
        return Ok(());
    };
    if hidden == OPAQUE {
        for item in fs::read_dir(&dir).map_err(ImageError::io(&dir))? {
            let item = item.map_err(ImageError::io(&dir))?;
            if !this_layer.contains(&parent.join(item.file_name())) {
                remove_tree(&item.path())?;
            }
        }
        return Ok(());
    }
    if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
        return Err(ImageError::unsafe_entry(shown, "malformed whiteout name"));
    }
    remove_tree(&dir.join(std::ffi::OsStr::from_bytes(hidden)))
}

/// `dest/rel` if it is a directory reached without passing through a symlink; `None` if absent.
fn existing_real_dir(dest: &Path, rel: &Path, shown: &str) -> Result<Option<PathBuf>, ImageError> {
    let mut current = dest.to_path_buf();
    for name in rel.iter() {
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ImageError::unsafe_entry(
                    shown,
                    "whiteout goes through a symlink",
                ))
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(&current)(e)),
        }
    }
    Ok(Some(current))
}

impl<R: Read> LenientEnd<R> {
    /// Wraps a layer's uncompressed tar.
    pub(crate) fn new(inner: R) -> LenientEnd<R> {
        LenientEnd {
            inner,
            read: 0,
            zeros_left: None,
        }
    }
}

impl<R: Read> Read for LenientEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.zeros_left.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            self.zeros_left = Some((512 - self.read % 512) % 512 + 1024);
        }
        let left = self.zeros_left.as_mut().expect("set just above");
        let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}

/// Validates one entry and writes it under `dest`.
fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, dest: &Path) -> Result<(), ImageError> {
    let entry_type = entry.header().entry_type();
    if entry_type.is_pax_global_extensions() {
        // Archive-wide metadata (git archive stores the commit id here); no file behind it.
        return Ok(());
    }
    let raw_path = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let reject = |why: &str| ImageError::unsafe_entry(shown.clone(), why);
    let rel = safe_relative_path(&raw_path).map_err(&reject)?;
    if entry.size() > MAX_ENTRY_SIZE {
        return Err(reject("entry is larger than 4 GiB"));
    }
    let planned = match entry_type {
        tar::EntryType::Directory => Planned::Dir,
        // Old (v7) archives mark directories only by a trailing slash.
        tar::EntryType::Regular if raw_path.ends_with(b"/") => Planned::Dir,
        tar::EntryType::Regular | tar::EntryType::Continuous => Planned::File {
            executable: entry.header().mode().map_err(ImageError::Tar)? & 0o111 != 0,
        },
        tar::EntryType::Symlink => match entry.link_name_bytes() {
            Some(target) if !target.is_empty() => {
                Planned::Symlink(PathBuf::from(std::ffi::OsStr::from_bytes(&target)))
            }
            _ => return Err(reject("symlink without a target")),
        },
        tar::EntryType::Link => match entry.link_name_bytes() {
            Some(target) if !target.is_empty() => {
                let target = safe_relative_path(&target)
                    .map_err(|why| reject(&format!("hard link target: {why}")))?;
                if target.as_os_str().is_empty() || target == rel {
                    return Err(reject("hard link to itself or to the root"));
                }
                Planned::HardLink(target)
            }
            _ => return Err(reject("hard link without a target")),
        },
        tar::EntryType::Char | tar::EntryType::Block => {
            return Err(reject("device entries are not allowed"))
        }
        tar::EntryType::Fifo => return Err(reject("fifo entries are not allowed")),
        tar::EntryType::GNUSparse => return Err(reject("sparse files are not supported")),
        other => return Err(reject(&format!("unsupported entry type {other:?}"))),
    };
    if rel.as_os_str().is_empty() {
        return match planned {
            // "./" itself: the root already exists.
            Planned::Dir => Ok(()),
            _ => Err(reject("entry has an empty path")),
        };
    }
    create_parents(dest, &rel, &shown)?;
    let path = dest.join(&rel);
    // Resolved before `clear_existing`, which may remove what an earlier entry put here.
    let link_source = match &planned {
        Planned::HardLink(target) => Some(existing_regular_file(dest, target, &shown)?),
        _ => None,
    };
    clear_existing(&path, matches!(planned, Planned::Dir))?;
    match planned {
        Planned::Dir => {
            match fs::create_dir(&path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(ImageError::io(&path)(e))
                }
                _ => {}
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(ImageError::io(&path))?;
        }
        Planned::File { executable } => {
            let mode = if executable { 0o755 } else { 0o644 };
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(ImageError::io(&path))?;
            copy_entry(entry, &mut file, &path)?;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(ImageError::io(&path))?;
        }
        Planned::Symlink(target) => {
            std::os::unix::fs::symlink(&target, &path).map_err(ImageError::io(&path))?;
        }
        Planned::HardLink(_) => {
            // linkat(2) without AT_SYMLINK_FOLLOW: the source is the checked file itself.
            let source = link_source.expect("resolved above for hard links");
            fs::hard_link(&source, &path).map_err(ImageError::io(&path))?;
        }
    }
    Ok(())
}

/// `dest/rel` if it is a regular file reached through real directories only; a hard link
/// target that is missing, a directory, a symlink or behind a symlink is refused.
fn existing_regular_file(dest: &Path, rel: &Path, shown: &str) -> Result<PathBuf, ImageError> {
    let reject = |why: &str| ImageError::unsafe_entry(shown, why);
    let mut current = dest.to_path_buf();
    let names: Vec<_> = rel.iter().collect();
    for (i, name) in names.iter().enumerate() {
        current.push(name);
        let last = i + 1 == names.len();
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(reject(if last {
                    "hard link to a symlink"
                } else {
                    "hard link target goes through a symlink"
                }))
            }
            Ok(meta) if last && meta.is_file() => {}
            Ok(meta) if !last && meta.is_dir() => {}
            Ok(_) => return Err(reject("hard link target is not a regular file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(reject("hard link target is not in the archive"))
            }
            Err(e) => return Err(ImageError::io(&current)(e)),
        }
    }
    Ok(current)
}

/// Turns an archive path into a relative path of plain names (empty for the root itself).
pub(crate) fn safe_relative_path(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.is_empty() {
        return Err("entry has an empty path");
    }
    if raw.starts_with(b"/") {
        return Err("absolute paths are not allowed");
    }
    let mut rel = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("paths with `..` are not allowed"),
            name => rel.push(std::ffi::OsStr::from_bytes(name)),
        }
    }
    Ok(rel)
}

/// Creates the missing parents of `rel` under `dest`, refusing to pass through a symlink.
fn create_parents(dest: &Path, rel: &Path, shown: &str) -> Result<(), ImageError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut current = dest.to_path_buf();
    for name in parent.iter() {
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ImageError::unsafe_entry(
                    shown,
                    "path goes through a symlink",
                ))
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::unsafe_entry(
                    shown,
                    "a parent of this entry is not a directory",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(ImageError::io(&current))?;
                fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                    .map_err(ImageError::io(&current))?;
            }
            Err(e) => return Err(ImageError::io(&current)(e)),
        }
    }
    Ok(())
}

/// Makes room for a later entry that repeats a path: the last one wins, as with `tar -x`.
fn clear_existing(path: &Path, keep_directory: bool) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() && keep_directory => Ok(()),
        Ok(_) => remove_tree(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(path)(e)),
    }
}

/// Copies an entry's data, telling a broken archive apart from a failing disk.
fn copy_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    file: &mut fs::File,
    path: &Path,
) -> Result<(), ImageError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::Tar(e)),
        };
        file.write_all(&buf[..n]).map_err(ImageError::io(path))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalized_or_rejected() {
        assert_eq!(safe_relative_path(b"./a//b/"), Ok(PathBuf::from("a/b")));
        assert_eq!(safe_relative_path(b"./"), Ok(PathBuf::new()));
        assert!(safe_relative_path(b"/etc/passwd").is_err());
        assert!(safe_relative_path(b"a/../../b").is_err());
        assert!(safe_relative_path(b"").is_err());
    }

    #[test]
    fn a_layer_may_end_right_after_its_last_data() {
        let mut header = tar::Header::new_gnu();
        header.set_path("f.txt").unwrap();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(b"hi\n");
        let dest = std::env::temp_dir().join(crate::fsutil::unique_name("lenient"));
        fs::create_dir(&dest).unwrap();
        let unpacked = unpack_layer(LenientEnd::new(&bytes[..]), &dest);
        let contents = fs::read_to_string(dest.join("f.txt"));
        remove_tree(&dest).unwrap();
        fs::create_dir(&dest).unwrap();
        let strict = unpack_tar(&bytes[..], &dest);
        remove_tree(&dest).unwrap();
        unpacked.unwrap();
        assert_eq!(contents.unwrap(), "hi\n");
        assert!(
            matches!(strict, Err(ImageError::Tar(_))),
            "plain imports stay strict"
        );
    }
}
