//! What a baked image says about itself: a CycloneDX 1.5 SBOM of every file in the image and a
//! provenance record (source commit and dirty flag, inputs digest, steps, molt version).
//!
//! Both are blobs of the image, named by manifest annotations (`dev.molt.sbom`,
//! `dev.molt.provenance`), so they travel with it through archives and registries and are kept
//! by GC as long as the image is. Neither holds a host name, clock time or local uid: the same
//! bake gives the same documents, and so the same image digest.

use std::collections::{BTreeMap, HashMap};

use molt_core::Digest;
use oci_spec::image::ImageManifest;
use serde::{Deserialize, Serialize};

use crate::filelist::FileInfo;
use crate::oci::parse_manifest;
use crate::{ImageError, ImageStore};

/// Manifest annotation naming the SBOM blob of a baked image.
pub const SBOM_ANNOTATION: &str = "dev.molt.sbom";
/// Manifest annotation naming the provenance blob of a baked image.
pub const PROVENANCE_ANNOTATION: &str = "dev.molt.provenance";

/// Where the source of a bake came from, as `git` reported it (the caller runs `git`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `git rev-parse HEAD` of the app folder, if it is in a repository.
    pub commit: Option<String>,
    /// Whether `git status --porcelain` listed anything.
    pub dirty: bool,
}

/// The schema of every provenance record molt writes.
pub(super) const PROVENANCE_SCHEMA: &str = "https://molt.dev/provenance/v1";

/// The provenance record of a baked image.
#[derive(Serialize)]
pub(super) struct Provenance<'a> {
    /// The record's schema: [`PROVENANCE_SCHEMA`].
    #[serde(rename = "_type")]
    pub(super) schema: &'static str,
    /// The molt that baked the image.
    pub(super) molt_version: &'a str,
    /// Source control facts.
    pub(super) source: &'a SourceInfo,
    /// The mtime of every entry and the image's `created`.
    pub(super) source_date_epoch: u64,
    /// The cache key of the last step: a digest of every input.
    pub(super) inputs: &'a Digest,
    /// The stored image the bake started from, if any.
    pub(super) base: Option<&'a Digest>,
    /// The base and each step, in order.
    pub(super) steps: &'a [ProvenanceStep],
    /// The SBOM blob.
    pub(super) sbom: &'a Digest,
    /// Regular files in the image.
    pub(super) files: usize,
}

/// One step in the provenance: its text, its cache key and the layer it made, if any.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ProvenanceStep {
    step: String,
    key: Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff_id: Option<Digest>,
}

impl ProvenanceStep {
    /// A step that added no layer (the base, a config step), after which the key was `key`.
    pub(super) fn without_layer(step: &str, key: Digest) -> ProvenanceStep {
        ProvenanceStep {
            step: step.to_string(),
            key,
            layer: None,
            diff_id: None,
        }
    }

    /// A step that added the layer `layer` (uncompressed: `diff_id`).
    pub(super) fn with_layer(
        step: &str,
        key: Digest,
        layer: Digest,
        diff_id: Digest,
    ) -> ProvenanceStep {
        ProvenanceStep {
            step: step.to_string(),
            key,
            layer: Some(layer),
            diff_id: Some(diff_id),
        }
    }
}

impl ImageStore {
    /// The attachment (`dev.molt.sbom` or `dev.molt.provenance`) of an image, if it has one.
    pub fn attachment(
        &self,
        digest: &Digest,
        annotation: &str,
    ) -> Result<Option<serde_json::Value>, ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let manifest = parse_manifest(&self.blobs.read(digest)?)?;
        let Some(blob) = manifest
            .annotations()
            .as_ref()
            .and_then(|a| a.get(annotation))
            .and_then(|d| d.parse::<Digest>().ok())
        else {
            return Ok(None);
        };
        let bytes = self.blobs.read(&blob)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ImageError::InvalidLayout(format!("attachment {blob}: {e}")))
    }
}

/// The CycloneDX 1.5 JSON SBOM of an image's files.
pub(super) fn sbom(
    files: &BTreeMap<String, FileInfo>,
    name: &str,
    molt_version: &str,
    created: &str,
) -> serde_json::Value {
    let components: Vec<serde_json::Value> = files
        .iter()
        .map(|(path, info)| {
            serde_json::json!({
                "type": "file",
                "bom-ref": format!("file:/{path}"),
                "name": format!("/{path}"),
                "hashes": [{ "alg": "SHA-256", "content": info.sha256 }],
                "properties": [{ "name": "molt:size", "value": info.size.to_string() }],
            })
        })
        .collect();
    serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": { "components": [{ "type": "application", "name": "molt", "version": molt_version }] },
            "component": { "type": "container", "bom-ref": "image", "name": name },
        },
        "components": components,
    })
}

/// The manifest annotations that name an image's SBOM and provenance blobs.
pub(super) fn annotations(sbom: &Digest, provenance: &Digest) -> HashMap<String, String> {
    HashMap::from([
        (SBOM_ANNOTATION.to_string(), sbom.to_string()),
        (PROVENANCE_ANNOTATION.to_string(), provenance.to_string()),
    ])
}

/// The blobs an image's manifest attaches through molt's annotations (SBOM, provenance).
pub(crate) fn attached_blobs(manifest: &ImageManifest) -> Vec<Digest> {
    manifest
        .annotations()
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == SBOM_ANNOTATION || k.as_str() == PROVENANCE_ANNOTATION)
        .filter_map(|(_, v)| v.parse().ok())
        .collect()
}
