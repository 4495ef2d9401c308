//! Images as the API shows them: imports, inspection (manifest, config, layers), tags, removal,
//! the image store's sweep, bakes, diffs and registry pushes.

use std::collections::BTreeMap;

use molt_core::Digest;
use serde::{Deserialize, Serialize};

use crate::records::{ImageRecord, TagEvent};

/// What an uploaded tar holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    /// Tell from its members: `oci-layout` → OCI, a `docker save` `manifest.json` → Docker,
    /// else a plain tree.
    #[default]
    Auto,
    /// A plain tar of a root filesystem (one layer).
    Tree,
    /// An OCI archive.
    Oci,
    /// A Docker archive.
    Docker,
}

/// What an import did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportOutcome {
    /// The stored image.
    #[serde(flatten)]
    pub image: ImageRecord,
    /// `tree`, `oci` or `docker`.
    pub format: ImportFormat,
    /// Regular files in its layers.
    pub files: u64,
    /// The image the tag named before a forced move.
    pub moved_from: Option<Digest>,
    /// Signatures that came with the image (from an OCI archive or the registry), each
    /// verified against its digest and kept.
    pub signatures: u64,
}

/// A release that runs an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageUse {
    /// The app.
    pub app: String,
    /// The release number.
    pub release: u64,
    /// True when GC keeps the release (live environment, pinned, or among the newest).
    pub kept: bool,
}

/// Everything `molt images inspect` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInspect {
    /// The catalog record (size, import time, tags).
    #[serde(flatten)]
    pub image: ImageRecord,
    /// Manifest, config and layers.
    pub details: ImageDetails,
    /// Releases that run it.
    pub releases: Vec<ImageUse>,
    /// Every change of a tag that named it.
    pub tag_history: Vec<TagEvent>,
}

/// A stored image as its manifest and config describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDetails {
    /// The manifest digest: the image's name.
    pub digest: Digest,
    /// Manifest, config and layer bytes as stored.
    pub size: u64,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// The image config (platform, command, env, rootfs diff ids, history) as stored.
    pub config: serde_json::Value,
    /// The layers, lowest first.
    pub layers: Vec<LayerDetails>,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// True once the image has been unpacked into its read-only rootfs.
    pub unpacked: bool,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDetails {
    /// Digest of the layer blob as stored (compressed).
    pub digest: Digest,
    /// Its media type (`…tar+gzip`, `…tar+zstd`, `…tar`).
    pub media_type: String,
    /// Bytes of the stored blob.
    pub size: u64,
    /// Digest of the uncompressed tar (the config's diff id), if the config lists it.
    pub diff_id: Option<String>,
}

/// What a tag change did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagOutcome {
    /// The tag.
    pub tag: String,
    /// What it names now.
    pub digest: Digest,
    /// What it named before a forced move.
    pub moved_from: Option<Digest>,
}

/// What a removal did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveOutcome {
    /// The removed image.
    pub digest: Digest,
    /// Tags that named it (now gone, recorded in the tag history).
    pub tags: Vec<String>,
    /// Releases that still name it (none of them kept); they cannot be redeployed any more.
    pub orphaned_releases: Vec<ImageUse>,
}

/// What a blob collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobCollection {
    /// True when nothing was changed.
    pub dry_run: bool,
    /// Images dropped from `index.json` because nothing keeps them.
    pub images: Vec<Digest>,
    /// Blobs no kept image uses.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Unpacked root filesystems of images no longer kept.
    pub rootfs: u64,
    /// Their bytes.
    pub rootfs_bytes: u64,
    /// Leftover temp files and directories of interrupted work (older than the grace period).
    pub temps: u64,
    /// Their bytes.
    pub temp_bytes: u64,
    /// Bake cache files (`cache/<key>` naming a layer, `cache/files-<diff id>.json` listing
    /// one) whose layer no kept image uses and no blob holds any more.
    #[serde(default)]
    pub cache_entries: u64,
}

/// Files added, removed and changed between two images.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDiff {
    /// In the second image only.
    pub added: Vec<String>,
    /// In the first image only.
    pub removed: Vec<String>,
    /// In both, with another size or content.
    pub changed: Vec<String>,
}

/// What a bake did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BakeReport {
    /// The image's manifest digest.
    pub digest: Digest,
    /// The cache key of the last step: a digest of every input (base, steps, file contents).
    pub inputs: Digest,
    /// The stored image the bake started from (a named image or an imported archive).
    pub base: Option<Digest>,
    /// The base and each step, in order.
    pub steps: Vec<StepReport>,
    /// Regular files in the image.
    pub files: u64,
    /// Bytes of the image's blobs.
    pub size: u64,
    /// Wall time of the bake in milliseconds.
    pub millis: u64,
}

/// One line of a bake report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's canonical text (or the base).
    pub step: String,
    /// What happened to it.
    pub outcome: StepOutcome,
    /// The layer it contributed, if any.
    pub layer: Option<Digest>,
    /// Time spent on it in milliseconds.
    pub millis: u64,
}

/// How a step was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The base image's layers, used as they are.
    Base,
    /// The layer came from the cache.
    Cached,
    /// The layer was built now.
    Built,
    /// The step changed only the image config.
    Config,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReport {
    /// Where the image went (`registry/repository:tag`).
    pub reference: String,
    /// The manifest digest, the same as in the store.
    pub digest: Digest,
    /// Blobs uploaded.
    pub uploaded: u64,
    /// Blobs mounted from the source repository instead of uploaded.
    pub mounted: u64,
    /// Blobs the repository already had (not sent again).
    #[serde(default)]
    pub present: u64,
    /// Uploaded blobs that were streamed from the store in chunks (the others went up in one
    /// request, read whole, because the registry refused chunks).
    pub streamed: u64,
    /// Bytes uploaded (manifest included, and the signature artifact's).
    pub bytes: u64,
    /// Signatures pushed with it, in an artifact that refers to it (found through the tag
    /// `sha256-<hex>`); 0 when the image has none and nothing but the image went.
    pub signatures: u64,
}
