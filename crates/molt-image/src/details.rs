//! What `molt images inspect` shows of a stored image: its manifest, config and layers.

use std::collections::BTreeMap;

use molt_core::Digest;
use serde::{Deserialize, Serialize};

use crate::oci::{parse_config, parse_manifest, to_molt_digest};
use crate::{ImageError, ImageStore};

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

impl ImageStore {
    /// The manifest, config and layers of a stored image; the manifest and config are
    /// verified against their digests (layers are verified when read, not here).
    pub fn inspect(&self, digest: &Digest) -> Result<ImageDetails, ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let manifest_bytes = self.blobs.read(digest)?;
        let manifest = parse_manifest(&manifest_bytes)?;
        let config_digest = to_molt_digest(manifest.config().digest())?;
        let config_bytes = self.blobs.read(&config_digest)?;
        // Parsed with the spec type first so a malformed config is reported as such.
        let diff_ids = parse_config(&config_bytes)?.rootfs().diff_ids().clone();
        let config: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::InvalidLayout(format!("image config: {e}")))?;
        let mut layers = Vec::new();
        for (i, layer) in manifest.layers().iter().enumerate() {
            layers.push(LayerDetails {
                digest: to_molt_digest(layer.digest())?,
                media_type: layer.media_type().to_string(),
                size: layer.size(),
                diff_id: diff_ids.get(i).cloned(),
            });
        }
        let size = manifest_bytes.len() as u64
            + manifest.config().size()
            + layers.iter().map(|l| l.size).sum::<u64>();
        Ok(ImageDetails {
            digest: digest.clone(),
            size,
            config_digest,
            config,
            layers,
            annotations: manifest
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            unpacked: self.rootfs_dir().join(digest.hex()).is_dir(),
        })
    }
}
