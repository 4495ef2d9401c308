//! OCI archives: a tar of an OCI image layout holding one image, as skopeo's `oci-archive:`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use molt_core::Digest;
use oci_spec::image::{Arch, Descriptor, ImageIndex, MediaType, Os};

use crate::blobs::{HashingReader, StagedBlob, MAX_JSON_SIZE};
use crate::fsutil::unique_name;
use crate::oci::{
    check_layout_marker, decompress, image_index, layer_compression, layout_marker, manifest_entry,
    parse_index, parse_manifest, ref_name, to_json, to_molt_digest,
};
use crate::parts::{check_diff_id, ImageParts};
use crate::signatures::{signature_annotations, signatures_in, CarriedSignature};
use crate::unpack::{safe_relative_path, LenientEnd};
use crate::{ImageError, ImageStore, ImportedImage};
use molt_pack::{MAX_ENTRY_SIZE, WHITEOUT_PREFIX};

/// What an archive's members turned into while reading it.
#[derive(Default)]
pub(crate) struct ArchiveContents {
    /// An `oci-layout` marker was present (and valid).
    pub(crate) layout_marker: bool,
    /// `index.json`, if present.
    pub(crate) index: Option<Vec<u8>>,
    /// `blobs/sha256/<hex>` members, verified against their names.
    pub(crate) blobs: HashMap<Digest, StagedBlob>,
    /// Every other regular member (a Docker archive's `manifest.json`, configs, layer tars),
    /// staged by its relative path.
    pub(crate) others: HashMap<String, StagedBlob>,
    /// Symlinks between members (skopeo's `docker-archive:` writes `<id>/layer.tar` links),
    /// by relative path, to the member path they resolve to inside the archive.
    pub(crate) links: HashMap<String, String>,
}

/// The two archive formats molt reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    /// A tar of an OCI image layout (`skopeo copy … oci-archive:`).
    Oci,
    /// The `docker save` layout: `manifest.json`, a config JSON and one tar per layer
    /// (`skopeo copy … docker-archive:`).
    Docker,
}

impl std::str::FromStr for ArchiveFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<ArchiveFormat, String> {
        match s {
            "oci" => Ok(ArchiveFormat::Oci),
            "docker" => Ok(ArchiveFormat::Docker),
            other => Err(format!(
                "unknown archive format {other:?}: use \"oci\" or \"docker\""
            )),
        }
    }
}

impl std::fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveFormat::Oci => "oci",
            ArchiveFormat::Docker => "docker",
        })
    }
}

impl ImageStore {
    /// Writes a tar of an OCI layout holding just the image `digest`, named `reference`
    /// (`org.opencontainers.image.ref.name`, e.g. `latest`) in its `index.json`, where the
    /// image's entry also carries `signatures` as annotations (`signatures.rs`).
    ///
    /// Every blob is verified as it is copied; on `Corrupt` the output is incomplete. The tar
    /// is deterministic (sorted members, zero times and owners).
    pub fn export_oci_archive(
        &self,
        digest: &Digest,
        reference: &str,
        signatures: &[CarriedSignature],
        out: impl Write,
    ) -> Result<(), ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let manifest_bytes = self.blobs.read(digest)?;
        let manifest = parse_manifest(&manifest_bytes)?;
        let mut blobs = vec![digest.clone(), to_molt_digest(manifest.config().digest())?];
        for layer in manifest.layers() {
            blobs.push(to_molt_digest(layer.digest())?);
        }
        blobs.extend(crate::bake::attached_blobs(&manifest));
        blobs.sort();
        blobs.dedup();
        let mut entry = manifest_entry(digest, manifest_bytes.len() as u64, reference);
        let mut annotations = entry.annotations().clone().unwrap_or_default();
        annotations.extend(signature_annotations(signatures));
        entry.set_annotations(Some(annotations));
        let index = image_index(vec![entry])?;

        let mut builder = tar::Builder::new(out);
        append_bytes(&mut builder, "oci-layout", &layout_marker()?)?;
        append_bytes(&mut builder, "index.json", &to_json(&index)?)?;
        append_dir(&mut builder, "blobs/")?;
        append_dir(&mut builder, "blobs/sha256/")?;
        for blob in &blobs {
            let path = self.blobs.path(blob);
            let size = fs::metadata(&path).map_err(ImageError::io(&path))?.len();
            let mut reader = self.blobs.open(blob)?;
            let mut header = file_header(size);
            builder
                .append_data(
                    &mut header,
                    format!("blobs/sha256/{}", blob.hex()),
                    &mut reader,
                )
                .map_err(ImageError::Write)?;
            reader.finish()?;
        }
        builder
            .into_inner()
            .and_then(|mut out| out.flush())
            .map_err(ImageError::Write)
    }

    /// Imports the image of an OCI archive (a tar of an OCI image layout).
    ///
    /// `reference` picks the image by its `org.opencontainers.image.ref.name`; without it the
    /// archive must hold exactly one. Members must be plain files or directories with safe
    /// relative paths; every blob is checked against its name and every layer's uncompressed
    /// tar against its diff id. Plain and gzip layers are accepted; a nested index is resolved
    /// to the manifest for this platform. Layer contents are validated when `rootfs` unpacks
    /// them. Blobs the image does not use are not kept. Signatures the image's index entry
    /// carries come back in `ImportedImage::signatures`, unverified; one that does not read is
    /// an error.
    pub fn import_oci_archive(
        &self,
        reader: impl Read,
        reference: Option<&str>,
    ) -> Result<ImportedImage, ImageError> {
        let contents = self.read_archive(reader)?;
        if !contents.layout_marker {
            return Err(ImageError::InvalidLayout(
                "the archive has no oci-layout file".to_string(),
            ));
        }
        self.import_oci_contents(contents, reference)
    }

    /// Imports an OCI or a Docker archive, telling them apart by their members.
    ///
    /// An archive with an `oci-layout` file is read as an OCI layout (Docker 25+ writes both
    /// layouts at once; the OCI one wins); one with only a `manifest.json` as `docker save`
    /// output. `reference` picks the image: a `ref.name` for OCI, a `RepoTags` entry for
    /// Docker. The same validation applies to both.
    pub fn import_archive(
        &self,
        reader: impl Read,
        reference: Option<&str>,
    ) -> Result<(ImportedImage, ArchiveFormat), ImageError> {
        let contents = self.read_archive(reader)?;
        if contents.layout_marker {
            let image = self.import_oci_contents(contents, reference)?;
            Ok((image, ArchiveFormat::Oci))
        } else if contents.others.contains_key(DOCKER_MANIFEST) {
            let image = self.import_docker_contents(contents, reference)?;
            Ok((image, ArchiveFormat::Docker))
        } else {
            Err(ImageError::InvalidLayout(
                "the archive has neither an oci-layout file nor a Docker manifest.json".to_string(),
            ))
        }
    }

    /// Imports the image of an archive already read as an OCI layout.
    fn import_oci_contents(
        &self,
        contents: ArchiveContents,
        reference: Option<&str>,
    ) -> Result<ImportedImage, ImageError> {
        if let Some(stray) = contents
            .others
            .keys()
            .chain(contents.links.keys())
            .find(|name| !DOCKER_COMPANIONS.contains(&name.as_str()))
        {
            return Err(ImageError::InvalidLayout(format!(
                "{stray} does not belong in an OCI image layout"
            )));
        }
        let index_bytes = contents.index.as_deref().ok_or_else(|| {
            ImageError::InvalidLayout("the archive has no index.json".to_string())
        })?;
        let mut blobs = contents.blobs;
        let index = parse_index(index_bytes)?;
        let mut chosen = select_manifest(&index, reference)?;
        let signatures = signatures_in(chosen.annotations().iter().flatten())
            .map_err(|why| ImageError::InvalidLayout(format!("index.json: {why}")))?;
        if *chosen.media_type() == MediaType::ImageIndex {
            let nested = parse_index(&staged_bytes(&blobs, &to_molt_digest(chosen.digest())?)?)?;
            chosen = select_platform(&nested)?;
        }
        let manifest_digest = to_molt_digest(chosen.digest())?;
        check_size(&blobs, &chosen)?;
        let manifest_bytes = staged_bytes(&blobs, &manifest_digest)?;
        let image = ImageParts::load(&manifest_digest, &manifest_bytes, |config, descriptor| {
            check_size(&blobs, descriptor)?;
            staged_bytes(&blobs, config)
        })?;
        let mut files = 0;
        let mut keep = vec![image.config_digest.clone()];
        for (layer, diff_id) in image.layers() {
            let digest = to_molt_digest(layer.digest())?;
            let blob = blobs
                .get(&digest)
                .ok_or_else(|| ImageError::MissingBlob(digest.clone()))?;
            check_size(&blobs, layer)?;
            files += check_layer(blob, layer, diff_id)?;
            keep.push(digest);
        }
        let mut staged = Vec::new();
        for digest in keep {
            if let Some(blob) = blobs.remove(&digest) {
                staged.push(blob);
            }
        }
        let (digest, size) = self.commit_image(staged, &manifest_bytes)?;
        Ok(ImportedImage {
            digest,
            size,
            files,
            signatures,
        })
    }

    /// Reads every member of an archive, staging blobs (verified against their names).
    pub(crate) fn read_archive(&self, reader: impl Read) -> Result<ArchiveContents, ImageError> {
        let mut contents = ArchiveContents::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(ImageError::Tar)? {
            let mut entry = entry.map_err(ImageError::Tar)?;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let reject = |why: &str| ImageError::unsafe_entry(shown.clone(), why);
            let rel = safe_relative_path(&raw).map_err(reject)?;
            match kind {
                tar::EntryType::Directory => continue,
                tar::EntryType::Regular if raw.ends_with(b"/") => continue,
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                tar::EntryType::Symlink if !raw.starts_with(b"blobs/") => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| reject("symlink without a target"))?;
                    let resolved = resolve_member_link(&rel, &target).map_err(reject)?;
                    contents
                        .links
                        .insert(rel.to_string_lossy().into_owned(), resolved);
                    continue;
                }
                _ => {
                    return Err(reject(
                        "only files and directories may appear in an OCI archive",
                    ))
                }
            }
            if entry.size() > MAX_ENTRY_SIZE {
                return Err(reject("entry is larger than 4 GiB"));
            }
            let name = rel.to_str().unwrap_or("");
            if name == "oci-layout" {
                check_layout_marker(&read_small(&mut entry, &shown)?)?;
                contents.layout_marker = true;
            } else if name == "index.json" {
                contents.index = Some(read_small(&mut entry, &shown)?);
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                let named = blob_name(hex).ok_or_else(|| {
                    ImageError::InvalidLayout(format!("{shown} is not named by a sha256"))
                })?;
                let mut writer = self.blobs.create()?;
                io::copy(&mut entry, &mut writer).map_err(ImageError::Tar)?;
                let staged = writer.finish()?;
                if staged.digest != named {
                    return Err(ImageError::Corrupt {
                        digest: named,
                        actual: staged.digest,
                    });
                }
                contents.blobs.insert(named, staged);
            } else if name.starts_with("blobs/") {
                return Err(ImageError::InvalidLayout(format!(
                    "{shown}: only sha256 blobs are supported"
                )));
            } else {
                let mut writer = self.blobs.create()?;
                io::copy(&mut entry, &mut writer).map_err(ImageError::Tar)?;
                contents.others.insert(name.to_string(), writer.finish()?);
            }
        }
        Ok(contents)
    }
}

/// Where a symlink member at `rel` pointing at `target` lands, as a member path; refused if
/// it is absolute or climbs out of the archive.
fn resolve_member_link(rel: &Path, target: &[u8]) -> Result<String, &'static str> {
    if target.starts_with(b"/") {
        return Err("symlinks to absolute paths are not allowed");
    }
    let mut parts: Vec<&[u8]> = rel
        .parent()
        .map(|p| p.as_os_str().as_bytes().split(|b| *b == b'/').collect())
        .unwrap_or_default();
    parts.retain(|p| !p.is_empty());
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts
                    .pop()
                    .ok_or("symlinks may not point outside the archive")?;
            }
            name => parts.push(name),
        }
    }
    let joined = parts.join(&b'/');
    String::from_utf8(joined).map_err(|_| "symlink target is not UTF-8")
}

/// The name of a Docker archive's manifest.
pub(crate) const DOCKER_MANIFEST: &str = "manifest.json";

/// Members Docker 25+ writes next to the OCI layout of `docker save`; ignored on OCI import.
const DOCKER_COMPANIONS: &[&str] = &[DOCKER_MANIFEST, "repositories"];

/// The index entry named `reference`, or the only one.
fn select_manifest(index: &ImageIndex, reference: Option<&str>) -> Result<Descriptor, ImageError> {
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|entry| reference.is_none() || ref_name(entry) == reference)
        .collect();
    match (candidates.as_slice(), reference) {
        ([only], _) => Ok((*only).clone()),
        ([], Some(reference)) => Err(ImageError::InvalidLayout(format!(
            "the archive has no image named {reference:?}"
        ))),
        (_, Some(reference)) => Err(ImageError::InvalidLayout(format!(
            "the archive has several images named {reference:?}"
        ))),
        (all, None) => Err(ImageError::InvalidLayout(format!(
            "the archive holds {} images; name the one to import",
            all.len()
        ))),
    }
}

/// The manifest of a (multi-platform) index for this host, or its only manifest.
fn select_platform(index: &ImageIndex) -> Result<Descriptor, ImageError> {
    if let [only] = index.manifests().as_slice() {
        return Ok(only.clone());
    }
    index
        .manifests()
        .iter()
        .find(|entry| {
            entry
                .platform()
                .as_ref()
                .is_some_and(|p| *p.architecture() == Arch::default() && *p.os() == Os::Linux)
        })
        .cloned()
        .ok_or_else(|| {
            ImageError::InvalidLayout("the image has no manifest for this platform".to_string())
        })
}

/// Checks that the blob a descriptor names has the size the descriptor claims.
fn check_size(
    blobs: &HashMap<Digest, StagedBlob>,
    descriptor: &Descriptor,
) -> Result<(), ImageError> {
    let digest = to_molt_digest(descriptor.digest())?;
    let blob = blobs
        .get(&digest)
        .ok_or_else(|| ImageError::MissingBlob(digest.clone()))?;
    if blob.size == descriptor.size() {
        Ok(())
    } else {
        Err(ImageError::InvalidLayout(format!(
            "blob {digest} has {} bytes but its descriptor says {}",
            blob.size,
            descriptor.size()
        )))
    }
}

/// Reads a staged JSON blob.
pub(crate) fn staged_bytes(
    blobs: &HashMap<Digest, StagedBlob>,
    digest: &Digest,
) -> Result<Vec<u8>, ImageError> {
    let blob = blobs
        .get(digest)
        .ok_or_else(|| ImageError::MissingBlob(digest.clone()))?;
    if blob.size > MAX_JSON_SIZE {
        return Err(ImageError::InvalidLayout(format!(
            "blob {digest} is too large for a JSON document"
        )));
    }
    fs::read(blob.path()).map_err(ImageError::io(blob.path()))
}

/// Decompresses a staged layer, checks its diff id and counts its regular files.
fn check_layer(blob: &StagedBlob, layer: &Descriptor, diff_id: &Digest) -> Result<u64, ImageError> {
    let compression = layer_compression(layer.media_type())?;
    let file = fs::File::open(blob.path()).map_err(ImageError::io(blob.path()))?;
    let mut tar = HashingReader::new(decompress(io::BufReader::new(file), compression));
    let files = count_files(&mut tar)?;
    check_diff_id(tar.digest(), diff_id).map(|()| files)
}

/// Reads a layer tar to its very end and counts its regular files (whiteouts excluded).
pub(crate) fn count_files(tar: &mut impl Read) -> Result<u64, ImageError> {
    let mut files = 0;
    {
        let mut archive = tar::Archive::new(LenientEnd::new(&mut *tar));
        for entry in archive.entries().map_err(ImageError::Tar)? {
            let entry = entry.map_err(ImageError::Tar)?;
            let name = entry.path_bytes();
            let base = name.rsplit(|b| *b == b'/').next().unwrap_or(&name[..]);
            if entry.header().entry_type().is_file() && !base.starts_with(WHITEOUT_PREFIX) {
                files += 1;
            }
        }
    }
    io::copy(tar, &mut io::sink()).map_err(ImageError::Tar)?;
    Ok(files)
}

/// The digest a `blobs/sha256/<hex>` member is named by.
fn blob_name(hex: &str) -> Option<Digest> {
    let lower = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    lower.then(|| hex.parse().ok()).flatten()
}

/// Reads a small member (a JSON document) whole.
pub(crate) fn read_small(entry: &mut impl Read, shown: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    entry
        .take(MAX_JSON_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(ImageError::Tar)?;
    if bytes.len() as u64 > MAX_JSON_SIZE {
        return Err(ImageError::InvalidLayout(format!("{shown} is too large")));
    }
    Ok(bytes)
}

/// A header for a regular member of a deterministic tar.
pub(crate) fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header
}

/// Appends a small regular member.
pub(crate) fn append_bytes<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> Result<(), ImageError> {
    let mut header = file_header(bytes.len() as u64);
    builder
        .append_data(&mut header, name, bytes)
        .map_err(ImageError::Write)
}

/// Appends a directory member.
fn append_dir<W: Write>(builder: &mut tar::Builder<W>, name: &str) -> Result<(), ImageError> {
    let mut header = file_header(0);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    builder
        .append_data(&mut header, name, io::empty())
        .map_err(ImageError::Write)
}

impl ImageStore {
    /// The manifest of a stored image, byte for byte (verified against its digest).
    pub fn manifest_bytes(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        self.blobs.read(digest)
    }

    /// A whole blob of the store (a layer or config), verified against its digest.
    ///
    /// Read whole into memory: for small blobs, and for registries that refuse chunked
    /// uploads (`blob_file` streams instead).
    pub fn blob_bytes(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let mut reader = self.blobs.open(digest)?;
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(ImageError::io(self.blobs.path(digest)))?;
        reader.finish()?;
        Ok(bytes)
    }

    /// The file holding a stored blob and its size, for a caller that streams it elsewhere
    /// (a registry upload) and checks it against `digest` on the way, as every reader must.
    pub fn blob_file(&self, digest: &Digest) -> Result<(std::path::PathBuf, u64), ImageError> {
        let path = self.blobs.path(digest);
        match fs::metadata(&path) {
            Ok(meta) => Ok((path, meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ImageError::MissingBlob(digest.clone()))
            }
            Err(e) => Err(ImageError::io(&path)(e)),
        }
    }

    /// Where a pulled blob may be downloaded before `import_pulled` (inside the store, so
    /// nothing is written elsewhere; a leftover is swept by `collect`).
    pub fn download_path(&self) -> std::path::PathBuf {
        self.tmp_dir().join(unique_name("pull"))
    }

    /// Imports an image whose manifest and blobs were fetched from elsewhere (a registry):
    /// `blobs` maps each digest to a downloaded file. Everything is checked exactly as for an
    /// OCI archive (names, sizes, diff ids); the files are copied, not moved.
    pub fn import_pulled(
        &self,
        manifest: &[u8],
        blobs: &[(Digest, std::path::PathBuf)],
    ) -> Result<ImportedImage, ImageError> {
        let mut contents = ArchiveContents {
            layout_marker: true,
            ..ArchiveContents::default()
        };
        for (named, path) in blobs {
            let mut file = fs::File::open(path).map_err(ImageError::io(path))?;
            let mut writer = self.blobs.create()?;
            io::copy(&mut file, &mut writer).map_err(ImageError::io(path))?;
            let staged = writer.finish()?;
            if staged.digest != *named {
                return Err(ImageError::Corrupt {
                    digest: named.clone(),
                    actual: staged.digest,
                });
            }
            contents.blobs.insert(named.clone(), staged);
        }
        let manifest_blob = self.blobs.stage_bytes(manifest)?;
        let digest = manifest_blob.digest.clone();
        contents.blobs.insert(digest.clone(), manifest_blob);
        let index = image_index(vec![manifest_entry(
            &digest,
            manifest.len() as u64,
            "pulled",
        )])?;
        contents.index = Some(to_json(&index)?);
        self.import_oci_contents(contents, None)
    }
}
