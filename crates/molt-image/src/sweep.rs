//! Blob garbage collection by reachability: mark from the images to keep, sweep the rest.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use molt_core::Digest;
use molt_wire::BlobCollection;

use crate::filelist::LISTING_PREFIX;
use crate::fsutil::{remove_tree, TEMP_PREFIX};
use crate::oci::{parse_config, parse_manifest, read_index, to_molt_digest, write_index};
use crate::{ImageError, ImageStore};

impl ImageStore {
    /// Collects everything no image of `keep` reaches.
    ///
    /// Mark: the manifests of `keep` that are stored, with their configs and layers, plus
    /// images listed in `index.json` more recently than `grace` (an import whose catalog
    /// record is not written yet). Sweep: other index entries, blobs nothing marked uses,
    /// unpacked rootfs dirs of unmarked images, temp leftovers older than `grace`, and bake
    /// cache files whose layer blob is swept (or already gone): a later bake rebuilds such a
    /// step instead of finding a dangling entry. If a kept manifest cannot be read, nothing is
    /// swept (what it uses is unknown). Runs under the index lock, so no import commits
    /// halfway through.
    pub fn collect(
        &self,
        keep: &HashSet<Digest>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<BlobCollection, ImageError> {
        let _guard = self.lock_index();
        let now = SystemTime::now();
        let young = |path: &Path| {
            fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() < grace)
                .unwrap_or(false)
        };
        let mut report = BlobCollection {
            dry_run,
            ..BlobCollection::default()
        };
        let mut index = read_index(&self.root)?;
        let mut kept_entries = Vec::new();
        for entry in index.manifests() {
            let keep_it = match to_molt_digest(entry.digest()) {
                Ok(d) if keep.contains(&d) || young(&self.blobs.path(&d)) => true,
                Ok(d) => {
                    report.images.push(d);
                    false
                }
                // Not ours to judge (another digest algorithm): leave it listed.
                Err(_) => true,
            };
            if keep_it {
                kept_entries.push(entry.clone());
            }
        }
        index.set_manifests(kept_entries);
        let live = self.referenced_blobs(&index)?;

        for blob in self.blobs.list()? {
            if !live.contains(&blob) {
                let path = self.blobs.path(&blob);
                report.blobs += 1;
                report.blob_bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
        }
        let live_hex: HashSet<String> = live.iter().map(|d| d.hex().to_string()).collect();
        let mut dead_rootfs = Vec::new();
        for dir in entries(&self.rootfs_dir())? {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(TEMP_PREFIX) || live_hex.contains(name) {
                continue;
            }
            report.rootfs += 1;
            report.rootfs_bytes += tree_size(&dir);
            dead_rootfs.push(dir);
        }
        let mut temps = Vec::new();
        for dir in [self.blobs.dir(), self.rootfs_dir(), self.root.clone()] {
            for path in entries(&dir)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with(TEMP_PREFIX) && !young(&path) {
                    temps.push(path);
                }
            }
        }
        for path in entries(&self.tmp_dir())? {
            if !young(&path) {
                temps.push(path);
            }
        }
        report.temps = temps.len() as u64;
        report.temp_bytes = temps.iter().map(|p| tree_size(p)).sum();
        let dead_cache = self.dangling_cache_files(&index, &live)?;
        report.cache_entries = dead_cache.len() as u64;
        report.images.sort();
        if dry_run {
            return Ok(report);
        }

        if !report.images.is_empty() {
            write_index(&self.root, &index)?;
        }
        for path in dead_rootfs.iter().chain(&temps).chain(&dead_cache) {
            remove_tree(path)?;
        }
        for blob in self.blobs.list()? {
            if !live.contains(&blob) {
                self.blobs.remove(&blob)?;
            }
        }
        Ok(report)
    }
}

impl ImageStore {
    /// Cache files that will point at nothing once the blobs outside `live` are swept: layer
    /// keys whose layer is not live (or unreadable), and listings of diff ids that neither a
    /// kept image's config nor a surviving key names.
    fn dangling_cache_files(
        &self,
        index: &oci_spec::image::ImageIndex,
        live: &HashSet<Digest>,
    ) -> Result<Vec<PathBuf>, ImageError> {
        let mut diff_ids: HashSet<String> = HashSet::new();
        for manifest in index_manifests(index) {
            let manifest = parse_manifest(&self.blobs.read(&manifest)?)?;
            let config = parse_config(
                &self
                    .blobs
                    .read(&to_molt_digest(manifest.config().digest())?)?,
            )?;
            for diff_id in config.rootfs().diff_ids() {
                if let Ok(d) = diff_id.parse::<Digest>() {
                    diff_ids.insert(d.hex().to_string());
                }
            }
        }
        let mut dead = Vec::new();
        let mut listings = Vec::new();
        for path in entries(&self.cache_dir())? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            if let Some(hex) = name
                .strip_prefix(LISTING_PREFIX)
                .and_then(|n| n.strip_suffix(".json"))
            {
                listings.push((path.clone(), hex.to_string()));
                continue;
            }
            match self.cache_entry_at(&path) {
                Some((layer, diff_id)) if live.contains(&layer) => {
                    diff_ids.insert(diff_id.hex().to_string());
                }
                _ => dead.push(path),
            }
        }
        for (path, hex) in listings {
            if !diff_ids.contains(&hex) {
                dead.push(path);
            }
        }
        dead.sort();
        Ok(dead)
    }
}

/// Manifest digests listed in an index.
fn index_manifests(index: &oci_spec::image::ImageIndex) -> Vec<Digest> {
    index
        .manifests()
        .iter()
        .filter_map(|entry| to_molt_digest(entry.digest()).ok())
        .collect()
}

/// The entries of a directory (none if it does not exist).
fn entries(dir: &Path) -> Result<Vec<std::path::PathBuf>, ImageError> {
    match fs::read_dir(dir) {
        Ok(items) => items
            .map(|item| item.map(|i| i.path()).map_err(ImageError::io(dir)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ImageError::io(dir)(e)),
    }
}

/// Bytes of the regular files under `path` (symlinks are not followed).
fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(items) = fs::read_dir(&p) {
                stack.extend(items.filter_map(|i| i.ok()).map(|i| i.path()));
            }
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}
