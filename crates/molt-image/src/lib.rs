//! molt-image: the image store, an OCI image layout on the local filesystem.
//!
//! An app tree becomes an OCI image with one layer: the canonical tar of the tree (molt-pack's:
//! sorted entries, zeroed times and owners, normalized modes) gzipped deterministically, an
//! image config with a fixed `created` and a manifest. Images are named by their **manifest digest**,
//! so the same tree always gets the same name whether it arrived as a directory or as a tar.
//! Layout under the store root (readable by skopeo, umoci and friends):
//!
//! - `oci-layout`, `index.json` — one entry per image, `org.opencontainers.image.ref.name` =
//!   its digest; replaced atomically;
//! - `blobs/sha256/<hex>` — manifests, configs and layers, written to a temp file, fsynced,
//!   renamed, deduplicated, and checked against their digest on every read;
//! - `rootfs/<manifest hex>/` — the layers unpacked once, read-only, shared by every instance;
//! - `tmp/` — scratch space for imports and bakes; anything named `.tmp-*` is a leftover and can go;
//! - `cache/` — the bake cache: `<key>` (a step's cache key → its layer) and
//!   `files-<diff id>.json` (a layer's file listing); losing it only makes the next bake slower.
//!
//! `[build]` recipes are baked by [`ImageStore::bake`] (module `bake`): one layer per `copy` or
//! `run` step, cached by key, with an SBOM and provenance attached to the manifest.
//!
//! Archives come in and go out as OCI archives (`archive.rs`) or Docker archives
//! (`docker.rs`); layers may be plain, gzip or zstd tars. `collect` (`sweep.rs`) removes
//! whatever the images to keep do not reach.
//!
//! One process owns a store (molt serve's `serve.lock`); inside it, index changes and blob
//! sweeps are serialized by one lock per store root, whichever `ImageStore` value is used.
//! Everything here blocks; async callers use `spawn_blocking`.

mod archive;
mod bake;
mod blobs;
mod details;
mod docker;
mod error;
mod filelist;
mod fsutil;
mod oci;
mod parts;
mod run;
mod signatures;
mod sweep;
mod unpack;
mod verify;

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use molt_core::Digest;
use oci_spec::image::{Descriptor, MediaType};
use sha2::Digest as _;

use crate::blobs::{Blobs, HashingReader, HashingWriter, StagedBlob};
use crate::fsutil::{fsync_dir, make_read_only, remove_tree, unique_name, TempPath};
use crate::oci::{
    decompress, deterministic_gzip, image_config, image_manifest, layer_compression,
    manifest_entry, parse_manifest, read_index, to_json, to_molt_digest, to_oci_digest,
    write_atomically, write_index,
};
use crate::parts::check_diff_id;
use crate::unpack::{unpack_layer, unpack_tar, LenientEnd};
use molt_pack::{collect_tree, write_tree, Filter};

pub use crate::archive::ArchiveFormat;
pub use crate::bake::{
    BakeOptions, BuildContext, SourceInfo, PROVENANCE_ANNOTATION, SBOM_ANNOTATION,
};
pub use crate::docker::sniff_archive;
pub use crate::error::ImageError;
pub use crate::filelist::FileInfo;
pub use crate::run::{BuildSandbox, RunRequest};
pub use crate::signatures::{
    signature_annotations, signatures_in, CarriedSignature, SIGNATURE_ANNOTATION_PREFIX,
};
pub use crate::verify::{TreeEntry, TreeManifest, Verification};
/// The records the image store fills in are the API's.
pub use molt_wire::{
    BakeReport, BlobCollection, ImageDetails, ImageDiff, LayerDetails, StepOutcome, StepReport,
};

/// A content-addressed store of OCI images on the local filesystem.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    blobs: Blobs,
    /// Serializes `index.json` updates and blob sweeps within this process.
    index_lock: Arc<Mutex<()>>,
}

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// Digest of the image manifest: the image's name.
    pub digest: Digest,
    /// Bytes of the image's blobs (manifest, config and layers as stored).
    pub size: u64,
    /// Number of regular files in the image's layers.
    pub files: u64,
    /// Signatures an OCI archive carried for the image, not yet verified (the controller
    /// verifies them before it keeps one); none from other sources.
    pub signatures: Vec<CarriedSignature>,
}

impl ImageStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        let blobs_dir = root.join("blobs").join("sha256");
        for dir in [blobs_dir.clone(), root.join("rootfs"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            blobs: Blobs::new(blobs_dir),
            index_lock: index_lock_for(root),
        };
        if !root.join("oci-layout").is_file() {
            write_atomically(root, "oci-layout", &oci::layout_marker()?)?;
        }
        if !root.join("index.json").is_file() {
            write_index(root, &oci::image_index(Vec::new())?)?;
        }
        Ok(store)
    }

    /// Writes the canonical tar of `dir` to `out` and returns (bytes written, regular files):
    /// [`molt_pack::write_canonical_tar`], the stream [`ImageStore::import_dir`] makes the
    /// layer of.
    pub fn write_canonical_tar(dir: &Path, out: &mut impl Write) -> Result<(u64, u64), ImageError> {
        Ok(molt_pack::write_canonical_tar(dir, out)?)
    }

    /// Imports a directory as a one-layer OCI image; blobs already stored are kept.
    ///
    /// The layer is the canonical tar, gzipped with a fixed header and level; the config's
    /// `diff_ids` hold the sha256 of the canonical tar; `created` is `SOURCE_DATE_EPOCH` or
    /// the epoch. The same tree on the same platform therefore always gets the same digest.
    pub fn import_dir(&self, dir: &Path) -> Result<ImportedImage, ImageError> {
        let entries = collect_tree(dir, Filter::AppIgnores)?;
        let mut layer = self.blobs.create()?;
        let (files, diff_id) = {
            let mut tar_out = HashingWriter::new(deterministic_gzip(&mut layer));
            let (_, files) = write_tree(dir, &entries, &mut tar_out)?;
            let HashingWriter { inner, hasher, .. } = tar_out;
            inner.finish().map_err(ImageError::Write)?;
            (files, Digest::from_sha256(&hasher.finalize().into()))
        };
        let layer = layer.finish()?;

        let layer_descriptor = Descriptor::new(
            MediaType::ImageLayerGzip,
            layer.size,
            to_oci_digest(&layer.digest),
        );
        let config = self
            .blobs
            .stage_bytes(&to_json(&image_config(vec![diff_id.to_string()])?)?)?;
        let config_descriptor = Descriptor::new(
            MediaType::ImageConfig,
            config.size,
            to_oci_digest(&config.digest),
        );
        let manifest = image_manifest(config_descriptor, vec![layer_descriptor])?;
        let (digest, size) = self.commit_image(vec![config, layer], &to_json(&manifest)?)?;
        Ok(ImportedImage {
            digest,
            size,
            files,
            signatures: Vec::new(),
        })
    }

    /// Imports a tar stream after validating every entry; nothing is left behind on error.
    ///
    /// Absolute paths, `..` components, entries written through a symlink, hard links to
    /// anything but a regular file of the tree, devices, fifos and entries over 4 GiB are
    /// rejected with `UnsafeEntry`; symlinks may point anywhere (see `unpack`). Accepted trees are
    /// unpacked into a temp dir inside the store and re-canonicalized, so the digest matches
    /// `import_dir` of the same tree.
    pub fn import_tar(&self, reader: impl io::Read) -> Result<ImportedImage, ImageError> {
        let temp = TempPath::new(self.tmp_dir().join(unique_name("import")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        unpack_tar(reader, temp.path())?;
        self.import_dir(temp.path())
    }

    /// Imports a directory (as `import_dir`) or a plain tar file (as `import_tar`).
    pub fn import_path(&self, path: &Path) -> Result<ImportedImage, ImageError> {
        let meta = fs::metadata(path).map_err(ImageError::io(path))?;
        if meta.is_dir() {
            self.import_dir(path)
        } else if meta.is_file() {
            let file = fs::File::open(path).map_err(ImageError::io(path))?;
            self.import_tar(BufReader::new(file))
        } else {
            Err(ImageError::NotADirectoryOrTar(path.to_path_buf()))
        }
    }

    /// Whether an image (a manifest listed in `index.json`) with this digest is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        let listed = read_index(&self.root)
            .map(|index| index_digests(index.manifests()).any(|d| d == *digest))
            .unwrap_or(false);
        listed && self.blobs.contains(digest)
    }

    /// Every stored image with the size of its blobs, sorted by digest.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ImageError> {
        let index = read_index(&self.root)?;
        let mut images = Vec::new();
        for entry in index.manifests() {
            let Ok(digest) = to_molt_digest(entry.digest()) else {
                continue;
            };
            // A damaged manifest still shows up, with what the index knows of its size.
            let size = self.image_size(&digest).unwrap_or(entry.size());
            images.push((digest, size));
        }
        images.sort();
        images.dedup_by(|a, b| a.0 == b.0);
        Ok(images)
    }

    /// The unpacked, read-only root filesystem of an image, unpacked on first use.
    ///
    /// The manifest, config and every layer are checked against their digests (and each
    /// layer's uncompressed tar against its diff id), the layers are validated like an import
    /// and applied in order with OCI whiteouts into a temp dir, which is stripped of write bits
    /// and renamed into place, so a rootfs that exists is always complete. Files are not
    /// fsynced one by one; after a crash, `remove` and re-import if a rootfs looks damaged.
    pub fn rootfs(&self, digest: &Digest) -> Result<PathBuf, ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let rootfs_dir = self.rootfs_dir();
        let target = rootfs_dir.join(digest.hex());
        if target.is_dir() {
            return Ok(target);
        }
        let image = self.image_parts(digest)?;
        let temp = TempPath::new(rootfs_dir.join(unique_name("rootfs")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        // The tree's root is the instance's `/` or `/app`: open to its user whatever the
        // umask (`molt serve` runs with 077; the private data directory above keeps others out).
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o755))
                .map_err(ImageError::io(temp.path()))?;
        }
        for (layer, diff_id) in image.layers() {
            self.apply_layer(layer, diff_id, temp.path())?;
        }
        make_read_only(temp.path())?;
        self.record_tree(digest, temp.path())?;
        match fs::rename(temp.path(), &target) {
            Ok(()) => {
                temp.keep();
                fsync_dir(&rootfs_dir)?;
                Ok(target)
            }
            // Another caller unpacked the same image first; theirs is as good as ours.
            Err(_) if target.is_dir() => Ok(target),
            Err(e) => Err(ImageError::io(&target)(e)),
        }
    }

    /// Removes an image: its rootfs, its index entry, and every blob no other image uses.
    ///
    /// Blobs are collected by mark and sweep over the manifests left in `index.json`, so blobs
    /// orphaned by a crash go too. A missing image is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), ImageError> {
        let _guard = self.lock_index();
        remove_tree(&self.rootfs_dir().join(digest.hex()))?;
        remove_tree(&self.tree_manifest_path(digest))?;
        let mut index = read_index(&self.root)?;
        let mut manifests = index.manifests().clone();
        manifests.retain(|entry| to_molt_digest(entry.digest()).ok().as_ref() != Some(digest));
        if manifests.len() != index.manifests().len() {
            index.set_manifests(manifests);
            write_index(&self.root, &index)?;
        }
        // If a remaining manifest cannot be read we cannot know what it uses: sweep nothing.
        let Ok(live) = self.referenced_blobs(&index) else {
            return Ok(());
        };
        for blob in self.blobs.list()? {
            if !live.contains(&blob) {
                self.blobs.remove(&blob)?;
            }
        }
        Ok(())
    }

    /// Stages the manifest, then (under the index lock) commits every blob and lists the image.
    fn commit_image(
        &self,
        blobs: Vec<StagedBlob>,
        manifest: &[u8],
    ) -> Result<(Digest, u64), ImageError> {
        let manifest_blob = self.blobs.stage_bytes(manifest)?;
        let digest = manifest_blob.digest.clone();
        let size = manifest_blob.size + blobs.iter().map(|b| b.size).sum::<u64>();
        let _guard = self.lock_index();
        for blob in blobs {
            self.blobs.commit(blob)?;
        }
        self.blobs.commit(manifest_blob)?;
        let mut index = read_index(&self.root)?;
        if !index_digests(index.manifests()).any(|d| d == digest) {
            let mut manifests = index.manifests().clone();
            manifests.push(manifest_entry(
                &digest,
                manifest.len() as u64,
                digest.as_str(),
            ));
            manifests.sort_by_key(|entry| entry.digest().to_string());
            index.set_manifests(manifests);
            write_index(&self.root, &index)?;
        }
        Ok((digest, size))
    }

    /// Unpacks one layer blob onto `dest`, verifying the blob and its diff id.
    fn apply_layer(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        dest: &Path,
    ) -> Result<(), ImageError> {
        let compression = layer_compression(layer.media_type())?;
        let digest = to_molt_digest(layer.digest())?;
        let mut blob = self.blobs.open(&digest)?;
        let unpacked = (|| -> Result<Digest, ImageError> {
            let mut tar = HashingReader::new(decompress(&mut blob, compression));
            unpack_layer(LenientEnd::new(&mut tar), dest)?;
            io::copy(&mut tar, &mut io::sink()).map_err(ImageError::Tar)?;
            Ok(tar.digest())
        })();
        // A damaged blob is reported as such, even when it also broke the tar or the gzip.
        blob.finish()?;
        check_diff_id(unpacked?, diff_id)
    }

    /// Manifest, config and layer sizes of a stored image.
    fn image_size(&self, digest: &Digest) -> Result<u64, ImageError> {
        let bytes = self.blobs.read(digest)?;
        let manifest = parse_manifest(&bytes)?;
        Ok(bytes.len() as u64
            + manifest.config().size()
            + manifest.layers().iter().map(|l| l.size()).sum::<u64>())
    }

    /// Every blob some manifest of `index` uses, the manifests included.
    fn referenced_blobs(
        &self,
        index: &oci_spec::image::ImageIndex,
    ) -> Result<std::collections::HashSet<Digest>, ImageError> {
        let mut live = std::collections::HashSet::new();
        for manifest_digest in index_digests(index.manifests()) {
            let manifest = parse_manifest(&self.blobs.read(&manifest_digest)?)?;
            live.insert(to_molt_digest(manifest.config().digest())?);
            for layer in manifest.layers() {
                live.insert(to_molt_digest(layer.digest())?);
            }
            live.extend(bake::attached_blobs(&manifest));
            live.insert(manifest_digest);
        }
        Ok(live)
    }

    /// Takes the index lock; a panic elsewhere does not make the index unusable.
    fn lock_index(&self) -> MutexGuard<'_, ()> {
        self.index_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// The one index lock of the store at `root` in this process, however often it is opened.
fn index_lock_for(root: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let key = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Arc::clone(locks.entry(key).or_default())
}

/// The sha256 digests of an index's entries (others are skipped).
fn index_digests(entries: &[Descriptor]) -> impl Iterator<Item = Digest> + '_ {
    entries
        .iter()
        .filter_map(|entry| to_molt_digest(entry.digest()).ok())
}
