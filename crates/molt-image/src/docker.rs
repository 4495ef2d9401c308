//! Docker archives: the `docker save` layout (`manifest.json`, a config JSON, one tar per
//! layer), as `skopeo copy … docker-archive:` reads and writes it.
//!
//! On import every layer is decompressed (plain, gzip or zstd, told apart by its first
//! bytes), checked against its diff id and stored gzipped with molt's deterministic encoder;
//! the config is kept byte for byte. An image exported as a Docker archive and imported back
//! therefore gets its original digest.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, BufRead, Read, Write};

use molt_core::Digest;
use oci_spec::image::{Descriptor, MediaType};
use serde::{Deserialize, Serialize};

use crate::archive::{
    append_bytes, count_files, file_header, read_small, ArchiveContents, ArchiveFormat,
    DOCKER_MANIFEST,
};
use crate::blobs::{HashingReader, StagedBlob};
use crate::oci::{
    decompress, deterministic_gzip, image_manifest, layer_compression, parse_config,
    sniff_compression, to_json, to_molt_digest, to_oci_digest,
};
use crate::parts::{check_diff_id, layer_diff_ids};
use crate::{ImageError, ImageStore, ImportedImage};

/// One image of a Docker archive's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerImage {
    /// The member holding the image config.
    config: String,
    /// `name:tag` references; Docker writes `null` for an untagged image.
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    /// The members holding the layer tars, lowest first.
    layers: Vec<String>,
}

/// Reads everything a reader gives and writes a copy of it to `out`.
struct TeeReader<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl ImageStore {
    /// Writes the image `digest` as a Docker archive (`docker save` layout, uncompressed layer
    /// tars named by their diff id, config named by its digest), tagged `repo_tag` if given.
    ///
    /// Each layer is read twice (once to learn its uncompressed size, once to write it) and
    /// checked against its blob digest and diff id; on `Corrupt` the output is incomplete. The
    /// tar is deterministic.
    pub fn export_docker_archive(
        &self,
        digest: &Digest,
        repo_tag: Option<&str>,
        out: impl Write,
    ) -> Result<(), ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let image = self.image_parts(digest)?;
        let mut builder = tar::Builder::new(out);
        let config_name = format!("{}.json", image.config_digest.hex());
        append_bytes(&mut builder, &config_name, &image.config_bytes)?;
        let mut layer_names = Vec::new();
        let mut written = BTreeSet::new();
        for (layer, diff_id) in image.layers() {
            let name = format!("{}.tar", diff_id.hex());
            layer_names.push(name.clone());
            if !written.insert(diff_id) {
                continue;
            }
            let size = self.uncompressed_size(layer, diff_id)?;
            let mut blob = self.blobs.open(&to_molt_digest(layer.digest())?)?;
            let compression = layer_compression(layer.media_type())?;
            let mut header = file_header(size);
            builder
                .append_data(
                    &mut header,
                    &name,
                    decompress(&mut blob, compression).take(size),
                )
                .map_err(ImageError::Write)?;
            blob.finish()?;
        }
        let entry = DockerImage {
            config: config_name,
            repo_tags: repo_tag.map(|t| vec![t.to_string()]),
            layers: layer_names,
        };
        append_bytes(&mut builder, DOCKER_MANIFEST, &to_json(&vec![entry])?)?;
        builder
            .into_inner()
            .and_then(|mut out| out.flush())
            .map_err(ImageError::Write)
    }

    /// Imports the image of an archive already read as a Docker archive.
    pub(crate) fn import_docker_contents(
        &self,
        contents: ArchiveContents,
        reference: Option<&str>,
    ) -> Result<ImportedImage, ImageError> {
        let ArchiveContents {
            mut blobs,
            mut others,
            links,
            ..
        } = contents;
        let manifest_json = read_member(&others, DOCKER_MANIFEST)?;
        let images: Vec<DockerImage> = serde_json::from_slice(&manifest_json)
            .map_err(|e| ImageError::InvalidLayout(format!("{DOCKER_MANIFEST}: {e}")))?;
        let image = select_image(&images, reference)?;
        let config_name = follow_links(&links, &image.config)?;
        let config_bytes = read_member_anywhere(&blobs, &others, &config_name)?;
        let config = parse_config(&config_bytes)?;
        let diff_ids = layer_diff_ids(&config, image.layers.len(), &"the image")?;
        let mut staged = Vec::new();
        let mut layers = Vec::new();
        let mut files = 0;
        for (name, diff_id) in image.layers.iter().zip(&diff_ids) {
            let member = member_anywhere(&blobs, &others, &follow_links(&links, name)?)?;
            let (layer, layer_files) = self.recompress_layer(member, diff_id)?;
            files += layer_files;
            layers.push(Descriptor::new(
                MediaType::ImageLayerGzip,
                layer.size,
                to_oci_digest(&layer.digest),
            ));
            staged.push(layer);
        }
        let config_blob = take_member(&mut blobs, &mut others, &config_name)?;
        let config_descriptor = Descriptor::new(
            MediaType::ImageConfig,
            config_blob.size,
            to_oci_digest(&config_blob.digest),
        );
        staged.push(config_blob);
        let manifest = image_manifest(config_descriptor, layers)?;
        let (digest, size) = self.commit_image(staged, &to_json(&manifest)?)?;
        Ok(ImportedImage {
            digest,
            size,
            files,
            signatures: Vec::new(),
        })
    }

    /// Decompresses a staged layer tar, checks it against its diff id, counts its files and
    /// stores it again as a deterministic gzip blob (staged, not yet visible).
    fn recompress_layer(
        &self,
        member: &StagedBlob,
        diff_id: &Digest,
    ) -> Result<(StagedBlob, u64), ImageError> {
        let file = fs::File::open(member.path()).map_err(ImageError::io(member.path()))?;
        let mut source = io::BufReader::new(file);
        let head = source.fill_buf().map_err(ImageError::io(member.path()))?;
        let compression = sniff_compression(head);
        let mut tee = TeeReader {
            inner: decompress(source, compression),
            out: deterministic_gzip(self.blobs.create()?),
        };
        let mut tar = HashingReader::new(&mut tee);
        let files = count_files(&mut tar)?;
        check_diff_id(tar.digest(), diff_id)?;
        // `import_dir` flushes the encoder once after the whole tar (a sync-flush block): the
        // same bytes in must give the same blob out.
        let out = tee
            .out
            .flush()
            .and_then(|()| tee.out.finish())
            .map_err(ImageError::Write)?;
        Ok((out.finish()?, files))
    }

    /// The length of a stored layer's uncompressed tar, checked against its diff id.
    fn uncompressed_size(&self, layer: &Descriptor, diff_id: &Digest) -> Result<u64, ImageError> {
        let mut blob = self.blobs.open(&to_molt_digest(layer.digest())?)?;
        let compression = layer_compression(layer.media_type())?;
        let mut tar = HashingReader::new(decompress(&mut blob, compression));
        let size = io::copy(&mut tar, &mut io::sink()).map_err(ImageError::Tar)?;
        check_diff_id(tar.digest(), diff_id)?;
        blob.finish()?;
        Ok(size)
    }
}

/// What kind of tar a stream holds: an OCI archive (it has `oci-layout`), a Docker archive
/// (a `manifest.json` that parses as `docker save`'s), or neither (`None`: a plain tree).
///
/// Reads the whole stream (member headers, and `manifest.json` if any); nothing is stored.
pub fn sniff_archive(reader: impl Read) -> Result<Option<ArchiveFormat>, ImageError> {
    let mut docker = false;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(ImageError::Tar)? {
        let mut entry = entry.map_err(ImageError::Tar)?;
        let raw = entry.path_bytes().into_owned();
        let name = raw.strip_prefix(b"./").unwrap_or(&raw);
        if name == b"oci-layout" {
            return Ok(Some(ArchiveFormat::Oci));
        }
        if name == DOCKER_MANIFEST.as_bytes() && entry.header().entry_type().is_file() {
            let bytes = read_small(&mut entry, DOCKER_MANIFEST)?;
            docker = serde_json::from_slice::<Vec<DockerImage>>(&bytes).is_ok();
        }
    }
    Ok(docker.then_some(ArchiveFormat::Docker))
}

/// The image of `manifest.json` tagged `reference`, or the only one.
fn select_image<'a>(
    images: &'a [DockerImage],
    reference: Option<&str>,
) -> Result<&'a DockerImage, ImageError> {
    let tagged = |image: &&DockerImage| match reference {
        None => true,
        Some(r) => image.repo_tags.iter().flatten().any(|t| names_tag(t, r)),
    };
    let candidates: Vec<&DockerImage> = images.iter().filter(tagged).collect();
    match (candidates.as_slice(), reference) {
        ([only], _) => Ok(only),
        ([], Some(r)) => Err(ImageError::InvalidLayout(format!(
            "the archive has no image tagged {r:?}"
        ))),
        ([], None) => Err(ImageError::InvalidLayout(format!(
            "{DOCKER_MANIFEST} lists no image"
        ))),
        (_, Some(r)) => Err(ImageError::InvalidLayout(format!(
            "the archive has several images tagged {r:?}"
        ))),
        (all, None) => Err(ImageError::InvalidLayout(format!(
            "the archive holds {} images; name the one to import by its tag",
            all.len()
        ))),
    }
}

/// Whether a `RepoTags` entry is `reference`, also once registry and namespace are dropped
/// (skopeo writes `shop:2` as `docker.io/library/shop:2`).
fn names_tag(repo_tag: &str, reference: &str) -> bool {
    repo_tag == reference
        || repo_tag
            .strip_suffix(reference)
            .is_some_and(|prefix| prefix.ends_with('/'))
}

/// The member a name reaches through symlink members (a bounded number of hops).
fn follow_links(links: &HashMap<String, String>, name: &str) -> Result<String, ImageError> {
    let mut current = name.trim_start_matches("./").to_string();
    for _ in 0..8 {
        match links.get(&current) {
            Some(next) => current = next.clone(),
            None => return Ok(current),
        }
    }
    Err(ImageError::InvalidLayout(format!(
        "{name:?} is a chain of too many symlinks"
    )))
}

/// A member named by `manifest.json`: a `blobs/sha256/…` blob or any other staged member.
fn member_anywhere<'a>(
    blobs: &'a HashMap<Digest, StagedBlob>,
    others: &'a HashMap<String, StagedBlob>,
    name: &str,
) -> Result<&'a StagedBlob, ImageError> {
    let blob = name
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| hex.parse::<Digest>().ok())
        .and_then(|digest| blobs.get(&digest));
    blob.or_else(|| others.get(name)).ok_or_else(|| {
        ImageError::InvalidLayout(format!(
            "{DOCKER_MANIFEST} names {name:?}, which the archive lacks"
        ))
    })
}

/// Removes a member from whichever map holds it, to commit it as a blob.
fn take_member(
    blobs: &mut HashMap<Digest, StagedBlob>,
    others: &mut HashMap<String, StagedBlob>,
    name: &str,
) -> Result<StagedBlob, ImageError> {
    let from_blobs = name
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| hex.parse::<Digest>().ok())
        .and_then(|digest| blobs.remove(&digest));
    from_blobs.or_else(|| others.remove(name)).ok_or_else(|| {
        ImageError::InvalidLayout(format!(
            "{DOCKER_MANIFEST} names {name:?}, which the archive lacks"
        ))
    })
}

/// Reads a small staged member (a JSON document) whole.
fn read_member(others: &HashMap<String, StagedBlob>, name: &str) -> Result<Vec<u8>, ImageError> {
    let member = others
        .get(name)
        .ok_or_else(|| ImageError::InvalidLayout(format!("the archive has no {name}")))?;
    read_staged(member, name)
}

/// Reads a small member named by `manifest.json` whole.
fn read_member_anywhere(
    blobs: &HashMap<Digest, StagedBlob>,
    others: &HashMap<String, StagedBlob>,
    name: &str,
) -> Result<Vec<u8>, ImageError> {
    read_staged(member_anywhere(blobs, others, name)?, name)
}

fn read_staged(member: &StagedBlob, name: &str) -> Result<Vec<u8>, ImageError> {
    let mut file = fs::File::open(member.path()).map_err(ImageError::io(member.path()))?;
    read_small(&mut file, name)
}
