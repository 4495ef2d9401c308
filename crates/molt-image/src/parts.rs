//! An image as its manifest and config describe it, read once for every caller.
//!
//! Unpacking, baking on a base, listing files, exporting and importing all start the same way:
//! parse the manifest, read the config it names, and pair each layer with its diff id. The
//! pairing is where a damaged or foreign image goes wrong (a config listing fewer diff ids than
//! the manifest has layers would silently drop layers in a `zip`), so it is checked here, once.

use molt_core::Digest;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};

use crate::oci::{parse_config, parse_manifest, to_molt_digest};
use crate::{ImageError, ImageStore};

/// A manifest and its config, with exactly one parsed diff id per layer.
pub(crate) struct ImageParts {
    /// The image manifest.
    pub(crate) manifest: ImageManifest,
    /// The digest of the config blob.
    pub(crate) config_digest: Digest,
    /// The config blob as read (a Docker archive carries it byte for byte).
    pub(crate) config_bytes: Vec<u8>,
    /// The parsed config.
    pub(crate) config: ImageConfiguration,
    /// The diff id of each layer of `manifest`, in the same order.
    pub(crate) diff_ids: Vec<Digest>,
}

impl ImageParts {
    /// Parses the manifest of image `digest`, reads its config with `read_config` (given the
    /// config's digest and descriptor) and checks that every layer has a sha256 diff id.
    pub(crate) fn load(
        digest: &Digest,
        manifest_bytes: &[u8],
        read_config: impl FnOnce(&Digest, &Descriptor) -> Result<Vec<u8>, ImageError>,
    ) -> Result<ImageParts, ImageError> {
        let manifest = parse_manifest(manifest_bytes)?;
        let config_digest = to_molt_digest(manifest.config().digest())?;
        let config_bytes = read_config(&config_digest, manifest.config())?;
        let config = parse_config(&config_bytes)?;
        let layers = manifest.layers().len();
        let diff_ids = layer_diff_ids(&config, layers, &format_args!("image {digest}"))?;
        Ok(ImageParts {
            manifest,
            config_digest,
            config_bytes,
            config,
            diff_ids,
        })
    }

    /// Each layer descriptor with its diff id, lowest layer first.
    pub(crate) fn layers(&self) -> impl Iterator<Item = (&Descriptor, &Digest)> {
        self.manifest.layers().iter().zip(&self.diff_ids)
    }
}

impl ImageStore {
    /// The manifest and config of stored image `digest`, both verified against their digests.
    ///
    /// Does not check that the image is listed in the index: callers that take a digest from
    /// outside ask `contains` first.
    pub(crate) fn image_parts(&self, digest: &Digest) -> Result<ImageParts, ImageError> {
        ImageParts::load(digest, &self.blobs.read(digest)?, |config, _| {
            self.blobs.read(config)
        })
    }
}

/// The config's diff ids, parsed, when there is exactly one for each of `layers` layers;
/// `what` names the image in the error.
pub(crate) fn layer_diff_ids(
    config: &ImageConfiguration,
    layers: usize,
    what: &dyn std::fmt::Display,
) -> Result<Vec<Digest>, ImageError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(ImageError::InvalidLayout(format!(
            "{what} has {layers} layers but {} diff ids",
            diff_ids.len()
        )));
    }
    diff_ids.iter().map(|d| parse_diff_id(d)).collect()
}

/// Parses a config's diff id (sha256 only).
fn parse_diff_id(diff_id: &str) -> Result<Digest, ImageError> {
    diff_id
        .parse()
        .map_err(|_| ImageError::InvalidLayout(format!("unsupported diff id {diff_id}")))
}

/// `Corrupt` unless a layer's uncompressed tar hashed to its diff id.
pub(crate) fn check_diff_id(actual: Digest, diff_id: &Digest) -> Result<(), ImageError> {
    if actual == *diff_id {
        Ok(())
    } else {
        Err(ImageError::Corrupt {
            digest: diff_id.clone(),
            actual,
        })
    }
}
