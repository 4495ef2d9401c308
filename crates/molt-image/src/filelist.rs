//! File listings of layers and images: what `images diff` compares and the SBOM lists.
//!
//! A layer's listing is read once from its tar (or recorded while a bake writes it) and kept in
//! `cache/files-<diff id hex>.json`; an image's files are its layers' listings merged in order
//! with OCI whiteouts applied.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use molt_core::Digest;
use molt_wire::ImageDiff;
use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::oci::{decompress, layer_compression, to_molt_digest, write_atomically};
use crate::{ImageError, ImageStore};
use molt_pack::WrittenFile;

/// Name prefix of a layer listing in the bake cache (`files-v2-<diff id hex>.json`; v2
/// listings record symlinks with their targets).
pub(crate) const LISTING_PREFIX: &str = "files-v2-";

/// How many symlinks a path may pass through before it counts as a loop (Linux's own limit).
const MAX_SYMLINK_HOPS: u32 = 40;

/// A regular file in an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the content, 64 hex digits.
    pub sha256: String,
}

/// What one layer does to the tree, in tar order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayerFiles {
    pub(crate) entries: Vec<LayerEntry>,
}

/// One entry of a layer listing; paths are relative, without `./` or a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LayerEntry {
    /// A regular file.
    File {
        path: String,
        size: u64,
        sha256: String,
    },
    /// A symlink and its target, as stored (it may be absolute).
    Symlink { path: String, target: String },
    /// A directory or anything else that replaces a file of a lower layer.
    Other { path: String },
    /// `.wh.<name>`: removes `path` (and what is under it) from the lower layers.
    Whiteout { path: String },
    /// `.wh..wh..opq`: removes everything under `dir` from the lower layers.
    Opaque { dir: String },
}

impl LayerFiles {
    /// The listing of a tar written by `write_tree_styled` (files only; no whiteouts).
    pub(crate) fn from_written(files: &[WrittenFile]) -> LayerFiles {
        LayerFiles {
            entries: files
                .iter()
                .map(|f| LayerEntry::File {
                    path: normalize(&f.path.to_string_lossy()),
                    size: f.size,
                    sha256: hex(&f.sha256),
                })
                .collect(),
        }
    }
}

impl ImageStore {
    /// Every regular file of a stored image (path → size and sha256), read from its layers.
    ///
    /// Works for any image, baked or imported; layer listings are cached by diff id.
    pub fn files(&self, digest: &Digest) -> Result<BTreeMap<String, FileInfo>, ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let image = self.image_parts(digest)?;
        let mut layers = Vec::new();
        for (layer, diff_id) in image.layers() {
            layers.push(self.layer_files(layer, diff_id)?);
        }
        Ok(merge(&layers))
    }

    /// Files added, removed and changed from image `a` to image `b`.
    pub fn diff(&self, a: &Digest, b: &Digest) -> Result<ImageDiff, ImageError> {
        let (old, new) = (self.files(a)?, self.files(b)?);
        let mut diff = ImageDiff::default();
        for (path, info) in &new {
            match old.get(path) {
                None => diff.added.push(path.clone()),
                Some(before) if before != info => diff.changed.push(path.clone()),
                Some(_) => {}
            }
        }
        diff.removed = old
            .keys()
            .filter(|p| !new.contains_key(*p))
            .cloned()
            .collect();
        Ok(diff)
    }

    /// The file listing of one layer, from the cache or by reading the (verified) blob.
    pub(crate) fn layer_files(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<LayerFiles, ImageError> {
        if let Some(listing) = load_listing(&self.cache_dir(), diff_id) {
            return Ok(listing);
        }
        let compression = layer_compression(layer.media_type())?;
        let digest = to_molt_digest(layer.digest())?;
        let mut blob = self.blobs.open(&digest)?;
        let listing = read_layer(decompress(&mut blob, compression));
        blob.finish()?;
        let listing = listing?;
        store_listing(&self.cache_dir(), diff_id, &listing)?;
        Ok(listing)
    }
}

/// Reads a layer's uncompressed tar into a listing, hashing every regular file.
pub(crate) fn read_layer(tar: impl Read) -> Result<LayerFiles, ImageError> {
    let mut archive = tar::Archive::new(tar);
    let mut entries = Vec::new();
    for entry in archive.entries().map_err(ImageError::Tar)? {
        let mut entry = entry.map_err(ImageError::Tar)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = normalize(&raw);
        if path.is_empty() {
            continue;
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (String::new(), path.clone()),
        };
        if name == ".wh..wh..opq" {
            entries.push(LayerEntry::Opaque { dir: parent });
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let path = if parent.is_empty() {
                hidden.to_string()
            } else {
                format!("{parent}/{hidden}")
            };
            entries.push(LayerEntry::Whiteout { path });
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_file() {
            let mut hasher = Sha256::new();
            let size = io::copy(&mut entry, &mut HashSink(&mut hasher)).map_err(ImageError::Tar)?;
            entries.push(LayerEntry::File {
                path,
                size,
                sha256: hex(&hasher.finalize().into()),
            });
        } else if kind == tar::EntryType::Symlink {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            entries.push(LayerEntry::Symlink { path, target });
        } else if kind == tar::EntryType::Link {
            // A hard link is one more name for a file of this layer, with its content.
            let target = entry
                .link_name_bytes()
                .map(|t| normalize(&String::from_utf8_lossy(&t)))
                .unwrap_or_default();
            let linked = entries.iter().rev().find_map(|e| match e {
                LayerEntry::File { path, size, sha256 } if *path == target => {
                    Some((*size, sha256.clone()))
                }
                _ => None,
            });
            entries.push(match linked {
                Some((size, sha256)) => LayerEntry::File { path, size, sha256 },
                None => LayerEntry::Other { path },
            });
        } else {
            entries.push(LayerEntry::Other { path });
        }
    }
    Ok(LayerFiles { entries })
}

/// The regular files of layers applied in order: whiteouts of a layer hide lower layers only.
pub(crate) fn merge(layers: &[LayerFiles]) -> BTreeMap<String, FileInfo> {
    let mut files: BTreeMap<String, FileInfo> = BTreeMap::new();
    for layer in layers {
        for entry in &layer.entries {
            match entry {
                LayerEntry::Whiteout { path } => remove_under(&mut files, path, true),
                LayerEntry::Opaque { dir } => remove_under(&mut files, dir, false),
                _ => {}
            }
        }
        for entry in &layer.entries {
            match entry {
                LayerEntry::File { path, size, sha256 } => {
                    files.insert(
                        path.clone(),
                        FileInfo {
                            size: *size,
                            sha256: sha256.clone(),
                        },
                    );
                }
                LayerEntry::Other { path } | LayerEntry::Symlink { path, .. } => {
                    files.remove(path);
                }
                _ => {}
            }
        }
    }
    files
}

/// The symlinks of layers applied in order (path → target), whiteouts honoured.
pub(crate) fn symlinks(layers: &[LayerFiles]) -> BTreeMap<String, String> {
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    for layer in layers {
        for entry in &layer.entries {
            match entry {
                LayerEntry::Whiteout { path } => remove_links_under(&mut links, path, true),
                LayerEntry::Opaque { dir } => remove_links_under(&mut links, dir, false),
                _ => {}
            }
        }
        for entry in &layer.entries {
            match entry {
                LayerEntry::Symlink { path, target } => {
                    links.insert(path.clone(), target.clone());
                }
                LayerEntry::File { path, .. } | LayerEntry::Other { path } => {
                    links.remove(path);
                }
                _ => {}
            }
        }
    }
    links
}

/// Resolves the relative image path `rel` through `links` the way the kernel would with the
/// image as the root (absolute targets restart at the root, `..` stops there); components
/// that are not links are taken literally. Err on a symlink loop.
pub(crate) fn resolve_in_image(
    links: &BTreeMap<String, String>,
    rel: &str,
) -> Result<String, String> {
    let mut pending: std::collections::VecDeque<String> =
        rel.split('/').map(str::to_string).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(name) = pending.pop_front() {
        match name.as_str() {
            "" | "." => {}
            ".." => {
                resolved.pop();
            }
            _ => {
                resolved.push(name);
                let here = resolved.join("/");
                if let Some(target) = links.get(&here) {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(format!("/{rel}: too many levels of symlinks"));
                    }
                    resolved.pop();
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    for part in target.split('/').rev() {
                        pending.push_front(part.to_string());
                    }
                }
            }
        }
    }
    Ok(resolved.join("/"))
}

/// Drops the links at `path` (if `itself`) and under it.
fn remove_links_under(links: &mut BTreeMap<String, String>, path: &str, itself: bool) {
    if itself {
        links.remove(path);
    }
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    links.retain(|p, _| !p.starts_with(&prefix));
}

/// The cached listing of the layer with this diff id, if any.
pub(crate) fn load_listing(cache_dir: &Path, diff_id: &Digest) -> Option<LayerFiles> {
    let bytes = fs::read(cache_dir.join(listing_name(diff_id))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Caches the listing of the layer with this diff id (atomically; an existing one is kept).
pub(crate) fn store_listing(
    cache_dir: &Path,
    diff_id: &Digest,
    listing: &LayerFiles,
) -> Result<(), ImageError> {
    fs::create_dir_all(cache_dir).map_err(ImageError::io(cache_dir))?;
    let name = listing_name(diff_id);
    if cache_dir.join(&name).is_file() {
        return Ok(());
    }
    let bytes =
        serde_json::to_vec(listing).map_err(|e| ImageError::InvalidLayout(e.to_string()))?;
    write_atomically(cache_dir, &name, &bytes)
}

fn listing_name(diff_id: &Digest) -> String {
    format!("{LISTING_PREFIX}{}.json", diff_id.hex())
}

/// Drops `path` itself (if `itself`) and everything under it.
fn remove_under(files: &mut BTreeMap<String, FileInfo>, path: &str, itself: bool) {
    if itself {
        files.remove(path);
    }
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    files.retain(|p, _| !p.starts_with(&prefix));
}

/// `./a/b/` → `a/b`.
fn normalize(raw: &str) -> String {
    raw.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn hex(bytes: &[u8; 32]) -> String {
    Digest::from_sha256(bytes).hex().to_string()
}

/// Feeds written bytes to a hasher.
struct HashSink<'a>(&'a mut Sha256);

impl io::Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, sha: &str) -> LayerEntry {
        LayerEntry::File {
            path: path.into(),
            size: 1,
            sha256: sha.into(),
        }
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let lower = LayerFiles {
            entries: vec![
                file("a", "1"),
                file("d/x", "2"),
                file("d/y", "3"),
                file("e/z", "4"),
            ],
        };
        let upper = LayerFiles {
            entries: vec![
                LayerEntry::Whiteout { path: "a".into() },
                LayerEntry::Opaque { dir: "d".into() },
                file("d/new", "5"),
                LayerEntry::Other { path: "e/z".into() },
                file("a", "6"),
            ],
        };
        let merged = merge(&[lower, upper]);
        let paths: Vec<&str> = merged.keys().map(String::as_str).collect();
        assert_eq!(paths, ["a", "d/new"]);
        assert_eq!(merged["a"].sha256, "6");
    }

    #[test]
    fn image_paths_resolve_through_the_image_links() {
        let layers = [LayerFiles {
            entries: vec![
                LayerEntry::Symlink {
                    path: "bin".into(),
                    target: "usr/bin".into(),
                },
                LayerEntry::Symlink {
                    path: "lib64".into(),
                    target: "/usr/lib64".into(),
                },
                LayerEntry::Symlink {
                    path: "usr/lib64/up".into(),
                    target: "../../../../etc".into(),
                },
                LayerEntry::Symlink {
                    path: "loop".into(),
                    target: "loop/x".into(),
                },
                LayerEntry::Symlink {
                    path: "gone".into(),
                    target: "/etc".into(),
                },
            ],
        }];
        let mut links = symlinks(&layers);
        assert_eq!(resolve_in_image(&links, "bin"), Ok("usr/bin".into()));
        assert_eq!(
            resolve_in_image(&links, "lib64/x"),
            Ok("usr/lib64/x".into())
        );
        assert_eq!(resolve_in_image(&links, "lib64/up/a"), Ok("etc/a".into()));
        assert_eq!(resolve_in_image(&links, "srv/app"), Ok("srv/app".into()));
        assert!(resolve_in_image(&links, "loop").is_err());
        assert_eq!(resolve_in_image(&links, "gone"), Ok("etc".into()));
        let whiteout = LayerFiles {
            entries: vec![LayerEntry::Whiteout {
                path: "gone".into(),
            }],
        };
        links = symlinks(&[layers[0].clone(), whiteout]);
        assert_eq!(resolve_in_image(&links, "gone"), Ok("gone".into()));
    }

    #[test]
    fn normalizes_tar_paths() {
        assert_eq!(normalize("./a//b/"), "a/b");
        assert_eq!(normalize("/x"), "x");
    }
}
