//! Image operations: import (trees, OCI and Docker archives), inspect, tags and their
//! history, removal, export, registry push and pull; baking on the server (`bake.rs`).

mod bake;

pub use bake::{BakeRequest, BuildIsolation};

use std::io::{self, Write};
use std::path::PathBuf;

use molt_core::gc::kept_releases;
use molt_core::{Digest, ImageTag, InputError};
use molt_image::{ArchiveFormat, ImageStore};
use molt_registry::{Credentials, PushReport};
use molt_store::{ImageRecord, TagEvent, TagMove};
use molt_wire::{
    ImageInspect, ImageSignature, ImageUse, ImportFormat, ImportOutcome, RemoveOutcome, TagOutcome,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::signing::verified_signatures;
use crate::{ControlError, Controller, Result};

/// How to import an upload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportOptions {
    /// Tag to name the image with.
    #[serde(default)]
    pub tag: Option<String>,
    /// Move the tag even if it names another image (recorded in the tag history).
    #[serde(default)]
    pub force: bool,
    /// Who asks, as the client reports it (for the tag history).
    #[serde(default)]
    pub actor: Option<String>,
    /// What the upload is.
    #[serde(default)]
    pub format: ImportFormat,
    /// Which image of a multi-image archive (`ref.name` or a Docker `RepoTags` entry).
    #[serde(default)]
    pub reference: Option<String>,
}

/// A pull from a registry.
#[derive(Clone, Default, Deserialize, Serialize)]
pub struct PullRequest {
    /// `host[:port]/repository:tag` or `…@sha256:…`.
    pub source: String,
    /// Tag to name the pulled image with.
    #[serde(default)]
    pub tag: Option<String>,
    /// Move the tag if it names another image.
    #[serde(default)]
    pub force: bool,
    /// Who asks, for the tag history.
    #[serde(default)]
    pub actor: Option<String>,
    /// Registry user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Registry password or token (never logged or echoed).
    #[serde(default)]
    pub password: Option<String>,
}

impl PullRequest {
    fn credentials(&self) -> Option<Credentials> {
        credentials(self.username.clone(), self.password.clone())
    }
}

/// Credentials from an optional user name and password (both needed).
pub fn credentials(username: Option<String>, password: Option<String>) -> Option<Credentials> {
    match (username, password) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        _ => None,
    }
}

/// An export being written by a blocking task: chunks of the archive, then the end.
pub struct ImageExport {
    /// The exported image.
    pub digest: Digest,
    /// The archive format.
    pub format: ArchiveFormat,
    /// The archive bytes in order; an `Err` means the export failed part way.
    pub chunks: mpsc::Receiver<std::result::Result<Vec<u8>, String>>,
}

/// A `Write` that hands its bytes to an async receiver in chunks.
struct ChannelWriter {
    tx: mpsc::Sender<std::result::Result<Vec<u8>, String>>,
    buf: Vec<u8>,
}

/// Bytes per chunk of an export.
const EXPORT_CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Controller {
    /// Imports an image tar already on disk (a tree, OCI or Docker archive, told apart by its
    /// members) and optionally tags it; a tag never moves here.
    pub async fn import_image(&self, archive: PathBuf, tag: Option<String>) -> Result<ImageRecord> {
        let options = ImportOptions {
            tag,
            ..Default::default()
        };
        Ok(self.import_image_file(archive, options).await?.image)
    }

    /// Imports an uploaded tar (already on disk) as `options.format` says, then tags it. The
    /// signatures an OCI archive carries are verified and kept; one that does not verify
    /// refuses the upload and leaves the catalog as it was.
    pub async fn import_image_file(
        &self,
        path: PathBuf,
        options: ImportOptions,
    ) -> Result<ImportOutcome> {
        let tag = parse_tag(options.tag.as_deref())?;
        let actor = actor_name(options.actor.as_deref());
        let images = self.inner.images.clone();
        let (imported, format) = tokio::task::spawn_blocking(move || {
            let open = || {
                std::fs::File::open(&path)
                    .map(io::BufReader::new)
                    .map_err(|e| {
                        ControlError::Internal(format!("reading upload {}: {e}", path.display()))
                    })
            };
            let refused = ControlError::refused_upload;
            let format = match options.format {
                ImportFormat::Auto => match molt_image::sniff_archive(open()?).map_err(refused)? {
                    Some(ArchiveFormat::Oci) => ImportFormat::Oci,
                    Some(ArchiveFormat::Docker) => ImportFormat::Docker,
                    None => ImportFormat::Tree,
                },
                other => other,
            };
            let imported = match format {
                ImportFormat::Tree | ImportFormat::Auto => {
                    images.import_tar(open()?).map_err(refused)?
                }
                ImportFormat::Oci | ImportFormat::Docker => {
                    let (image, found) = images
                        .import_archive(open()?, options.reference.as_deref())
                        .map_err(refused)?;
                    let wanted = if format == ImportFormat::Oci {
                        ArchiveFormat::Oci
                    } else {
                        ArchiveFormat::Docker
                    };
                    if found != wanted {
                        return Err(ControlError::Input(InputError::Invalid(format!(
                            "the upload is a {found} archive, not {wanted} as requested; \
                             import it with format {found} (or auto)"
                        ))));
                    }
                    image
                }
            };
            Ok::<_, ControlError>((imported, format))
        })
        .await??;
        let signatures = verified_signatures(
            &imported.digest,
            imported.signatures,
            "the archive",
            &actor,
            self.now_ms(),
        )
        .map_err(|why| {
            ControlError::Input(InputError::Invalid(format!(
                "{why}: the archive was altered or is not what was signed; nothing was imported"
            )))
        })?;
        let count = signatures.len() as u64;
        let (image, moved_from) = self
            .catalog_image(
                imported.digest.clone(),
                imported.size,
                tag,
                tag_move(options.force),
                actor,
                signatures,
            )
            .await?;
        Ok(ImportOutcome {
            image,
            format,
            files: imported.files,
            moved_from,
            signatures: count,
        })
    }

    /// Points a tag at an image; moving it needs `force` and is recorded.
    pub async fn tag_image(
        &self,
        reference: &str,
        tag: &str,
        force: bool,
        actor: Option<&str>,
    ) -> Result<TagOutcome> {
        let tag: ImageTag = tag.parse()?;
        let actor = actor_name(actor);
        let reference = reference.to_string();
        let mode = tag_move(force);
        self.db(move |s| {
            let image = s.resolve_image(&reference)?;
            let moved_from = s.set_tag(tag.as_str(), &image.digest, mode, &actor)?;
            Ok(TagOutcome {
                tag: tag.to_string(),
                digest: image.digest,
                moved_from,
            })
        })
        .await
    }

    /// Tag history: of one image (a digest), of one tag, or of every tag (`None`).
    pub async fn image_history(&self, reference: Option<String>) -> Result<Vec<TagEvent>> {
        self.db(move |s| match reference {
            None => s.tag_history(None),
            Some(r) => match r.parse::<Digest>() {
                Ok(d) => {
                    s.image(&d)?;
                    s.image_tag_history(&d)
                }
                Err(_) => {
                    let history = s.tag_history(Some(&r))?;
                    if history.is_empty() {
                        return Err(molt_store::StoreError::NotFound {
                            what: "tag",
                            key: r,
                        });
                    }
                    Ok(history)
                }
            },
        })
        .await
    }

    /// Config, layers, sizes, annotations, tags and the releases that use an image.
    pub async fn inspect_image(&self, reference: &str) -> Result<ImageInspect> {
        let image = self.resolve_image(reference).await?;
        let uses = self.image_uses(&image.digest).await?;
        let images = self.inner.images.clone();
        let digest = image.digest.clone();
        let details = tokio::task::spawn_blocking(move || images.inspect(&digest)).await??;
        let digest = image.digest.clone();
        let tag_history = self.db(move |s| s.image_tag_history(&digest)).await?;
        Ok(ImageInspect {
            image,
            details,
            releases: uses,
            tag_history,
        })
    }

    /// Removes an image, its tags, blobs and rootfs; refused while a kept release uses it.
    pub async fn remove_image(&self, reference: &str) -> Result<RemoveOutcome> {
        let image = self.resolve_image(reference).await?;
        let uses = self.image_uses(&image.digest).await?;
        let kept: Vec<String> = uses
            .iter()
            .filter(|u| u.kept)
            .map(|u| format!("{} v{}", u.app, u.release))
            .collect();
        if !kept.is_empty() {
            return Err(ControlError::Conflict(format!(
                "image {} is used by {}, which molt keeps (live environment, pinned or among \
                 the newest releases); deploy something else and unpin, then `molt gc` \
                 collects it",
                image.digest,
                kept.join(", ")
            )));
        }
        let digest = image.digest.clone();
        self.db(move |s| s.remove_image(&digest)).await?;
        let images = self.inner.images.clone();
        let digest = image.digest.clone();
        tokio::task::spawn_blocking(move || images.remove(&digest)).await??;
        Ok(RemoveOutcome {
            digest: image.digest,
            tags: image.tags,
            orphaned_releases: uses,
        })
    }

    /// Starts exporting an image; the archive arrives in `chunks` while a blocking task
    /// writes it. `name` is the OCI `ref.name` or the Docker `RepoTags` entry. An OCI archive
    /// carries the image's signatures; a Docker archive has no place for them.
    pub async fn export_image(
        &self,
        reference: &str,
        format: ArchiveFormat,
        name: Option<String>,
    ) -> Result<ImageExport> {
        let image = self.resolve_image(reference).await?;
        if let Some(n) = &name {
            n.parse::<ImageTag>()?;
        }
        let name = name.or_else(|| image.tags.first().cloned());
        let images: ImageStore = self.inner.images.clone();
        let (tx, rx) = mpsc::channel(4);
        let digest = image.digest.clone();
        if !self.inner.images.contains(&digest) {
            return Err(ControlError::NotFound(format!(
                "image {digest} is in the catalog but its blobs are gone; re-import it"
            )));
        }
        let signatures = match format {
            ArchiveFormat::Oci => self.carried_signatures(&digest).await?,
            ArchiveFormat::Docker => Vec::new(),
        };
        let task_digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::new(),
            };
            let written = match format {
                ArchiveFormat::Oci => images.export_oci_archive(
                    &task_digest,
                    name.as_deref().unwrap_or("latest"),
                    &signatures,
                    &mut out,
                ),
                ArchiveFormat::Docker => {
                    images.export_docker_archive(&task_digest, name.as_deref(), &mut out)
                }
            };
            let ended = written
                .map_err(|e| e.to_string())
                .and_then(|()| out.flush().map_err(|e| e.to_string()));
            if let Err(e) = ended {
                tracing::warn!(image = %task_digest, "export failed: {e}");
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(ImageExport {
            digest,
            format,
            chunks: rx,
        })
    }

    /// Pushes an image to a registry reference (`host[:port]/repository:tag`), with its
    /// signatures when it has any.
    pub async fn push_image(
        &self,
        reference: &str,
        target: &str,
        credentials: Option<Credentials>,
        mount_from: Option<String>,
    ) -> Result<PushReport> {
        let image = self.resolve_image(reference).await?;
        let signatures = self.carried_signatures(&image.digest).await?;
        Ok(molt_registry::push(
            &self.inner.images,
            &image.digest,
            target,
            credentials.as_ref(),
            mount_from.as_deref(),
            &signatures,
        )
        .await?)
    }

    /// Pulls an image from a registry into the store and the catalog, optionally tagging it
    /// (a tag moves only with `force`, as for an import), with the signatures the registry
    /// holds for it, verified; one that does not verify fails the pull, the catalog unchanged.
    pub async fn pull_image(&self, request: PullRequest) -> Result<ImportOutcome> {
        let tag = parse_tag(request.tag.as_deref())?;
        let actor = actor_name(request.actor.as_deref());
        let pulled = molt_registry::pull(
            &self.inner.images,
            &request.source,
            request.credentials().as_ref(),
        )
        .await?;
        let signatures = verified_signatures(
            &pulled.digest,
            pulled.signatures,
            "the registry",
            &actor,
            self.now_ms(),
        )
        .map_err(|why| {
            ControlError::Registry(format!(
                "{why}: it was altered or is not what was signed; nothing was added to the catalog"
            ))
        })?;
        let count = signatures.len() as u64;
        let (image, moved_from) = self
            .catalog_image(
                pulled.digest.clone(),
                pulled.size,
                tag,
                tag_move(request.force),
                actor,
                signatures,
            )
            .await?;
        Ok(ImportOutcome {
            image,
            format: ImportFormat::Oci,
            files: pulled.files,
            moved_from,
            signatures: count,
        })
    }

    /// Records a stored image in the catalog with the (verified) `signatures` it came with
    /// and points `tag` at it. A refused tag leaves the catalog as it was (an image new to it
    /// is taken out again); the blobs are swept by GC once the grace period is over.
    async fn catalog_image(
        &self,
        digest: Digest,
        size: u64,
        tag: Option<ImageTag>,
        mode: TagMove,
        actor: String,
        signatures: Vec<ImageSignature>,
    ) -> Result<(ImageRecord, Option<Digest>)> {
        self.db(move |s| {
            let new = s.image(&digest).is_err();
            s.put_image(&digest, size)?;
            let moved = match &tag {
                Some(t) => match s.set_tag(t.as_str(), &digest, mode, &actor) {
                    Ok(moved) => moved,
                    Err(e) => {
                        if new {
                            s.remove_image(&digest)?;
                        }
                        return Err(e);
                    }
                },
                None => None,
            };
            // A key that signed the image here already keeps its record (who, when).
            let kept = s.image_signatures(digest.as_str())?;
            for signature in &signatures {
                if !kept.iter().any(|k| k.public_key == signature.public_key) {
                    s.add_image_signature(signature)?;
                }
            }
            Ok((s.image(&digest)?, moved))
        })
        .await
    }

    /// A digest or tag resolved to its catalog record (for the other modules).
    pub(crate) async fn resolve_image_record(&self, reference: &str) -> Result<ImageRecord> {
        self.resolve_image(reference).await
    }

    /// A digest or tag resolved to its catalog record.
    async fn resolve_image(&self, reference: &str) -> Result<ImageRecord> {
        let reference = reference.to_string();
        self.db(move |s| s.resolve_image(&reference)).await
    }

    /// The releases that run an image, and whether GC keeps each.
    async fn image_uses(&self, digest: &Digest) -> Result<Vec<ImageUse>> {
        let kept = kept_releases(&self.gc_snapshot().await?);
        let digest = digest.clone();
        let releases = self.db(move |s| s.image_releases(&digest)).await?;
        Ok(releases
            .into_iter()
            .map(|r| ImageUse {
                kept: kept.contains(&(r.app.clone(), r.number)),
                app: r.app,
                release: r.number,
            })
            .collect())
    }
}

/// A tag from a request, checked.
fn parse_tag(tag: Option<&str>) -> Result<Option<ImageTag>> {
    Ok(tag.map(str::parse::<ImageTag>).transpose()?)
}

/// Whether a tag that names another image may move.
fn tag_move(force: bool) -> TagMove {
    if force {
        TagMove::Force
    } else {
        TagMove::Refuse
    }
}

/// The actor recorded in the tag history: what the client says, trimmed to something printable.
fn actor_name(actor: Option<&str>) -> String {
    let cleaned: String = actor
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    if cleaned.trim().is_empty() {
        "api".to_string()
    } else {
        cleaned.trim().to_string()
    }
}
