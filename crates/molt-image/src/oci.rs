//! The OCI image layout documents: `oci-layout`, `index.json`, manifests and configs.
//!
//! Everything is built and parsed with `oci-spec` types; this module only decides what molt
//! puts in them and how a layer is compressed.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;

use molt_core::Digest;
use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder,
    ImageManifest, ImageManifestBuilder, MediaType, OciLayout, OciLayoutBuilder, Os, RootFsBuilder,
    ANNOTATION_REF_NAME,
};

use ruzstd::decoding::FrameDecoder;

use crate::fsutil::{fsync_dir, unique_name, TempPath};
use crate::ImageError;

/// The image layout version molt writes and reads.
pub(crate) const LAYOUT_VERSION: &str = "1.0.0";

/// Docker's gzip layer media type, which some OCI layouts still carry.
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The gzip level of every layer molt writes; part of the digest, so never change it lightly.
pub(crate) const GZIP_LEVEL: u32 = 6;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// A plain tar.
    None,
    /// A gzipped tar.
    Gzip,
    /// A zstd-compressed tar (one or more frames).
    Zstd,
}

/// Converts an `oci-spec` digest into molt's (sha256 only).
pub(crate) fn to_molt_digest(digest: &oci_spec::image::Digest) -> Result<Digest, ImageError> {
    digest
        .to_string()
        .parse::<Digest>()
        .ok()
        .filter(|_| digest.to_string().starts_with("sha256:"))
        .ok_or_else(|| ImageError::InvalidLayout(format!("unsupported digest {digest}")))
}

/// Converts molt's digest into an `oci-spec` one.
pub(crate) fn to_oci_digest(digest: &Digest) -> oci_spec::image::Digest {
    oci_spec::image::Digest::from_str(digest.as_str())
        .expect("a molt digest is always a valid sha256 OCI digest")
}

/// The compression of a layer, from its media type.
pub(crate) fn layer_compression(media_type: &MediaType) -> Result<Compression, ImageError> {
    match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Ok(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Ok(Compression::Gzip)
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Ok(Compression::Zstd)
        }
        MediaType::Other(other) if other == DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        other => Err(ImageError::InvalidLayout(format!(
            "unsupported layer media type {other}"
        ))),
    }
}

/// A reader of a layer's uncompressed tar.
pub(crate) fn decompress<'a, R: Read + 'a>(
    reader: R,
    compression: Compression,
) -> Box<dyn Read + 'a> {
    match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(ZstdFrames::new(reader)),
    }
}

/// The compression of a layer file, from its first bytes (Docker archives carry no media type).
pub(crate) fn sniff_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Decodes a zstd stream of one or more concatenated frames (as `zstd` and `pzstd` write).
struct ZstdFrames<R: Read> {
    source: Option<io::BufReader<R>>,
    decoder: Option<ruzstd::decoding::StreamingDecoder<io::BufReader<R>, FrameDecoder>>,
}

impl<R: Read> ZstdFrames<R> {
    fn new(reader: R) -> ZstdFrames<R> {
        ZstdFrames {
            source: Some(io::BufReader::new(reader)),
            decoder: None,
        }
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(decoder) = &mut self.decoder {
                let n = decoder.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                let finished = self.decoder.take().map(|d| d.into_inner());
                self.source = finished;
            }
            let Some(mut source) = self.source.take() else {
                return Ok(0);
            };
            if io::BufRead::fill_buf(&mut source)?.is_empty() {
                return Ok(0);
            }
            let decoder = ruzstd::decoding::StreamingDecoder::new(source)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.decoder = Some(decoder);
        }
    }
}

/// A gzip encoder whose output depends only on its input: no mtime, no name, fixed level.
pub(crate) fn deterministic_gzip<W: Write>(out: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(out, flate2::Compression::new(GZIP_LEVEL))
}

/// The `created` time of molt's images: `SOURCE_DATE_EPOCH` if set, else the Unix epoch.
pub(crate) fn created_timestamp() -> String {
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0)
        .max(0);
    rfc3339(seconds)
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rem = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The config of a molt image: host platform, fixed `created`, the given diff ids.
pub(crate) fn image_config(diff_ids: Vec<String>) -> Result<ImageConfiguration, ImageError> {
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(diff_ids)
        .build()
        .map_err(spec_error)?;
    ImageConfigurationBuilder::default()
        .created(created_timestamp())
        .architecture(Arch::default())
        .os(Os::Linux)
        .rootfs(rootfs)
        .build()
        .map_err(spec_error)
}

/// A manifest pointing at `config` and `layers`.
pub(crate) fn image_manifest(
    config: Descriptor,
    layers: Vec<Descriptor>,
) -> Result<ImageManifest, ImageError> {
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .map_err(spec_error)
}

/// An index of `manifests`.
pub(crate) fn image_index(manifests: Vec<Descriptor>) -> Result<ImageIndex, ImageError> {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(spec_error)
}

/// The descriptor of a manifest named `reference` in an index.
pub(crate) fn manifest_entry(digest: &Digest, size: u64, reference: &str) -> Descriptor {
    let mut descriptor = Descriptor::new(MediaType::ImageManifest, size, to_oci_digest(digest));
    descriptor.set_annotations(Some(HashMap::from([(
        ANNOTATION_REF_NAME.to_string(),
        reference.to_string(),
    )])));
    descriptor
}

/// The `ref.name` annotation of an index entry, if any.
pub(crate) fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

/// The `oci-layout` marker document.
pub(crate) fn layout_marker() -> Result<Vec<u8>, ImageError> {
    let layout: OciLayout = OciLayoutBuilder::default()
        .image_layout_version(LAYOUT_VERSION)
        .build()
        .map_err(spec_error)?;
    serde_json::to_vec(&layout).map_err(|e| ImageError::InvalidLayout(e.to_string()))
}

/// Checks an `oci-layout` marker read from an archive.
pub(crate) fn check_layout_marker(bytes: &[u8]) -> Result<(), ImageError> {
    let layout = OciLayout::from_reader(bytes).map_err(spec_error)?;
    if layout.image_layout_version().split('.').next() == Some("1") {
        Ok(())
    } else {
        Err(ImageError::InvalidLayout(format!(
            "unsupported image layout version {}",
            layout.image_layout_version()
        )))
    }
}

/// Serializes any spec document.
pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| ImageError::InvalidLayout(e.to_string()))
}

/// Parses a manifest, refusing anything that is not a single-platform image manifest.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<ImageManifest, ImageError> {
    let manifest = ImageManifest::from_reader(bytes).map_err(spec_error)?;
    if manifest.schema_version() != 2 {
        return Err(ImageError::InvalidLayout(format!(
            "unsupported manifest schema version {}",
            manifest.schema_version()
        )));
    }
    match manifest.config().media_type() {
        MediaType::ImageConfig => Ok(manifest),
        MediaType::Other(t) if t == "application/vnd.docker.container.image.v1+json" => {
            Ok(manifest)
        }
        other => Err(ImageError::InvalidLayout(format!(
            "manifest config has media type {other}, not an image config"
        ))),
    }
}

/// Parses an image config.
pub(crate) fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, ImageError> {
    ImageConfiguration::from_reader(bytes).map_err(spec_error)
}

/// Parses an index.
pub(crate) fn parse_index(bytes: &[u8]) -> Result<ImageIndex, ImageError> {
    ImageIndex::from_reader(bytes).map_err(spec_error)
}

/// Reads `index.json` of the layout at `root` (an empty index if there is none yet).
pub(crate) fn read_index(root: &Path) -> Result<ImageIndex, ImageError> {
    let path = root.join("index.json");
    match fs::read(&path) {
        Ok(bytes) => parse_index(&bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => image_index(Vec::new()),
        Err(e) => Err(ImageError::io(path)(e)),
    }
}

/// Replaces a small file at the top of the layout atomically (temp, fsync, rename).
pub(crate) fn write_atomically(root: &Path, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let temp = TempPath::new(root.join(unique_name(name)));
    let mut file = fs::File::create(temp.path()).map_err(ImageError::io(temp.path()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(ImageError::io(temp.path()))?;
    drop(file);
    let target = root.join(name);
    fs::rename(temp.path(), &target).map_err(ImageError::io(&target))?;
    temp.keep();
    fsync_dir(root)
}

/// Writes `index.json` of the layout at `root`.
pub(crate) fn write_index(root: &Path, index: &ImageIndex) -> Result<(), ImageError> {
    write_atomically(root, "index.json", &to_json(index)?)
}

/// Maps an `oci-spec` error (bad JSON, missing field) to a layout error.
pub(crate) fn spec_error(e: oci_spec::OciSpecError) -> ImageError {
    ImageError::InvalidLayout(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
