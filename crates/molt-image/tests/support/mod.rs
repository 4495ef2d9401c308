//! Helpers shared by the image store tests: reading and writing OCI layouts by hand.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use molt_core::Digest;
use molt_image::ImageStore;
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifest,
    ImageManifestBuilder, MediaType, RootFsBuilder, ANNOTATION_REF_NAME,
};
use sha2::{Digest as _, Sha256};

pub fn sha256(bytes: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(bytes).into())
}

pub fn oci_digest(digest: &Digest) -> oci_spec::image::Digest {
    oci_spec::image::Digest::from_str(digest.as_str()).unwrap()
}

pub fn molt_digest(digest: &oci_spec::image::Digest) -> Digest {
    digest.to_string().parse().unwrap()
}

/// The manifest and config of an image in the layout at `root`.
pub fn read_image(root: &Path, digest: &Digest) -> (ImageManifest, ImageConfiguration) {
    let blob = |d: &Digest| fs::read(root.join("blobs/sha256").join(d.hex())).unwrap();
    let manifest = ImageManifest::from_reader(&blob(digest)[..]).unwrap();
    let config_digest = molt_digest(manifest.config().digest());
    let config = ImageConfiguration::from_reader(&blob(&config_digest)[..]).unwrap();
    (manifest, config)
}

/// The path of a blob in the layout at `root`.
pub fn blob_path(root: &Path, digest: &Digest) -> std::path::PathBuf {
    root.join("blobs/sha256").join(digest.hex())
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A layer to write: its uncompressed tar and whether to gzip it.
pub struct Layer {
    pub tar: Vec<u8>,
    pub gzip: bool,
}

/// Writes (or adds to) an OCI layout at `root` holding one image of `layers`, named
/// `reference` in `index.json`; returns the manifest digest.
pub fn write_layout(root: &Path, layers: &[Layer], reference: &str) -> Digest {
    let blobs = root.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        fs::write(blobs.join(digest.hex()), bytes).unwrap();
        digest
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(sha256(&layer.tar).to_string());
        let (bytes, media_type) = if layer.gzip {
            (gzip(&layer.tar), MediaType::ImageLayerGzip)
        } else {
            (layer.tar.clone(), MediaType::ImageLayer)
        };
        let digest = put(&bytes);
        descriptors.push(Descriptor::new(
            media_type,
            bytes.len() as u64,
            oci_digest(&digest),
        ));
    }
    let config = ImageConfigurationBuilder::default()
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put(&config_bytes);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            oci_digest(&config_digest),
        ))
        .layers(descriptors)
        .build()
        .unwrap();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put(&manifest_bytes);
    let mut entry = Descriptor::new(
        MediaType::ImageManifest,
        manifest_bytes.len() as u64,
        oci_digest(&manifest_digest),
    );
    entry.set_annotations(Some(HashMap::from([(
        ANNOTATION_REF_NAME.to_string(),
        reference.to_string(),
    )])));
    let mut manifests = fs::read(root.join("index.json"))
        .ok()
        .map(|b| {
            oci_spec::image::ImageIndex::from_reader(&b[..])
                .unwrap()
                .manifests()
                .clone()
        })
        .unwrap_or_default();
    manifests.push(entry);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .manifests(manifests)
        .build()
        .unwrap();
    fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    manifest_digest
}

/// Tars the directory `dir` (an OCI layout) with relative member names.
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap()
}

/// The manifest digests listed in the `index.json` of the layout at `root`.
pub fn index_entries(root: &Path) -> Vec<(Digest, Option<String>)> {
    let bytes = fs::read(root.join("index.json")).unwrap();
    let index = oci_spec::image::ImageIndex::from_reader(&bytes[..]).unwrap();
    index
        .manifests()
        .iter()
        .map(|m| {
            (
                molt_digest(m.digest()),
                m.annotations()
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_REF_NAME).cloned()),
            )
        })
        .collect()
}

/// A fresh store in a temp dir (dropped with it).
pub fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    (dir, store)
}

/// Runs a command that must succeed; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
