//! What `molt images inspect` shows of a stored image: its manifest, config and layers.

use molt_core::Digest;
use molt_wire::{ImageDetails, LayerDetails};

use crate::oci::{parse_config, parse_manifest, to_molt_digest};
use crate::{ImageError, ImageStore};

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
