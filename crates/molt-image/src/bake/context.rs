//! The build context: the app folder a bake reads, uploaded as a tar or given as a path.
//!
//! Every path a recipe names (`copy` sources, an archive or rootfs base) is resolved inside the
//! context and refused if it leads outside it, through `..` or a symlink; what a copy step takes
//! and where it puts it in the image is decided here, before anything is hashed or written.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::fsutil::{unique_name, TempPath};
use crate::{ImageError, ImageStore};
use molt_pack::{collect_tree, EntryKind, Filter, TarStyle, TreeEntry, WHITEOUT_PREFIX};

/// An uploaded build context unpacked under the store's `tmp/`; removed when dropped.
pub struct BuildContext {
    temp: TempPath,
}

impl BuildContext {
    /// The unpacked folder.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }
}

impl ImageStore {
    /// Unpacks an uploaded build context (a tar, validated like an import) into `tmp/`.
    pub fn receive_context(&self, reader: impl io::Read) -> Result<BuildContext, ImageError> {
        let temp = TempPath::new(self.root.join("tmp").join(unique_name("context")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        crate::unpack::unpack_tar(reader, temp.path())?;
        Ok(BuildContext { temp })
    }

    /// A directory to read a tree from: `path` itself, or a plain tar unpacked into `tmp/`.
    pub(super) fn tree_root(&self, path: &Path) -> Result<(PathBuf, Option<TempPath>), ImageError> {
        let meta = fs::metadata(path).map_err(ImageError::io(path))?;
        if meta.is_dir() {
            return Ok((path.to_path_buf(), None));
        }
        let temp = TempPath::new(self.root.join("tmp").join(unique_name("bake-rootfs")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        let file = fs::File::open(path).map_err(ImageError::io(path))?;
        crate::unpack::unpack_tar(io::BufReader::new(file), temp.path())?;
        Ok((temp.path().to_path_buf(), Some(temp)))
    }
}

/// `rel` under `context`, refusing anything that resolves outside it (through `..` or links).
pub(super) fn inside(context: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let joined = context.join(rel);
    let resolved = fs::canonicalize(&joined).map_err(ImageError::io(&joined))?;
    if resolved.starts_with(context) {
        Ok(resolved)
    } else {
        Err(ImageError::Build(format!(
            "{rel} resolves outside the app folder"
        )))
    }
}

/// A name starting with `.wh.` would delete instead of add once in a layer.
pub(super) fn check_no_whiteouts(entries: &[TreeEntry]) -> Result<(), ImageError> {
    for entry in entries {
        let name = entry.rel.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
        if name.starts_with(WHITEOUT_PREFIX) {
            return Err(ImageError::unsafe_entry(
                entry.rel.to_string_lossy(),
                "names starting with `.wh.` are reserved for OCI whiteouts",
            ));
        }
    }
    Ok(())
}

/// The image path `to` as a relative path of plain names.
fn image_rel(to: &str) -> PathBuf {
    Path::new(to)
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// Every proper ancestor of `rel` ("a/b/c" → "a", "a/b").
fn ancestors(rel: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = rel
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

/// What a copy step reads (root and entries) and how it names and stamps them.
///
/// `resolve` maps an image path through the symlinks of the image so far, so a copy to
/// `/bin/server` in a merged-/usr base (`bin -> usr/bin`) lands in `usr/bin/server` instead of
/// a `bin/` directory that would replace the link (and hide everything behind it).
pub(super) fn copy_plan(
    context: &Path,
    src: &str,
    to: &str,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    epoch: u64,
    resolve: &dyn Fn(&Path) -> Result<PathBuf, ImageError>,
) -> Result<(PathBuf, Vec<TreeEntry>, TarStyle), ImageError> {
    let path = inside(context, src)?;
    let meta = fs::metadata(&path).map_err(ImageError::io(&path))?;
    let to_rel = image_rel(to);
    let mut style = TarStyle {
        mtime: epoch,
        file_mode: mode,
        owner,
        ..TarStyle::default()
    };
    if meta.is_dir() {
        // The whole folder keeps the app's ignore rules; a subfolder is copied as it is.
        let filter = if path == context {
            Filter::AppIgnores
        } else {
            Filter::Nothing
        };
        let entries = collect_tree(&path, filter)?;
        check_no_whiteouts(&entries)?;
        let to_rel = resolve(&to_rel)?;
        style.parents = ancestors(&to_rel);
        if !to_rel.as_os_str().is_empty() {
            style.root_entry = Some(to_rel.clone());
        }
        style.place = Some(Box::new(move |rel: &Path| to_rel.join(rel)));
        return Ok((path, entries, style));
    }
    if !meta.is_file() {
        return Err(ImageError::Build(format!(
            "copy {src}: only files and folders can be copied"
        )));
    }
    if meta.len() > molt_pack::MAX_ENTRY_SIZE {
        return Err(ImageError::unsafe_entry(src, "file is larger than 4 GiB"));
    }
    let name = path
        .file_name()
        .map(PathBuf::from)
        .ok_or_else(|| ImageError::Build(format!("copy {src}: not a file name")))?;
    if name.as_os_str().as_bytes().starts_with(WHITEOUT_PREFIX) {
        return Err(ImageError::unsafe_entry(
            src,
            "names starting with `.wh.` are reserved for OCI whiteouts",
        ));
    }
    let target = if to.ends_with('/') || to_rel.as_os_str().is_empty() {
        resolve(&to_rel)?.join(&name)
    } else {
        let file_name = to_rel.file_name().map(PathBuf::from).unwrap_or_default();
        resolve(to_rel.parent().unwrap_or(Path::new("")))?.join(file_name)
    };
    style.parents = ancestors(&target);
    style.place = Some(Box::new(move |_: &Path| target.clone()));
    let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let entries = vec![TreeEntry {
        rel: name,
        kind: EntryKind::File {
            executable: meta.permissions().mode() & 0o111 != 0,
            len: meta.len(),
        },
    }];
    Ok((root, entries, style))
}
