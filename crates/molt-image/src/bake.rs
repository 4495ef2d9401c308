//! Baking: a `[build]` recipe applied to a build context, one layer per `copy`/`run` step.
//!
//! Every step has a **cache key**, sha256 over the parent's key, the step's canonical text and
//! the content hash (the uncompressed layer's sha256) of its inputs. `cache/<key>` in the store
//! remembers the layer a key produced, so a step whose key is known is not compressed or written
//! again; an unchanged bake reuses every layer and yields the same image digest. Metadata steps
//! (`env`, `workdir`, `user`, `cmd`, `port`) only change the image config and chain the key.
//!
//! Reproducible: entries are sorted, every mtime is the given `SOURCE_DATE_EPOCH` (or 0),
//! owners are 0:0 unless a step says `owner`, and the config and history hold no host name,
//! clock time or local uid. JSON documents are written with sorted keys.
//!
//! Every baked image carries two attachments, blobs named by manifest annotations
//! (`dev.molt.sbom`, `dev.molt.provenance`): a CycloneDX 1.5 SBOM of every file in the image
//! and a provenance record (source commit and dirty flag, inputs digest, steps, molt version).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use molt_core::{BaseImage, BuildSpec, BuildStep, Digest, ImageRef};
use oci_spec::image::{
    Arch, Config, Descriptor, HistoryBuilder, ImageConfigurationBuilder, ImageManifest, MediaType,
    Os, RootFsBuilder,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::blobs::{HashingWriter, StagedBlob};
use crate::canonical::{
    collect_tree, write_tree_styled, EntryKind, Filter, TarStyle, TreeEntry, WHITEOUT_PREFIX,
};
use crate::filelist::{self, LayerFiles};
use crate::fsutil::make_writable;
use crate::fsutil::{unique_name, TempPath};
use crate::oci::{
    deterministic_gzip, parse_manifest, rfc3339, spec_error, to_molt_digest, to_oci_digest,
    write_atomically,
};
use crate::run::{numeric_user, BuildSandbox, RunRequest, Snapshot};
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

/// What a bake needs besides the context and the recipe.
pub struct BakeOptions<'a> {
    /// Turns `base = "name:tag"` (or a digest) into a stored image's digest.
    pub resolve: &'a dyn Fn(&ImageRef) -> Result<Digest, String>,
    /// Source control facts recorded in the provenance.
    pub source: SourceInfo,
    /// mtime of every entry and `created` of the image (`SOURCE_DATE_EPOCH`, else 0).
    pub source_date_epoch: u64,
    /// The name the SBOM gives the image (the app name).
    pub name: String,
    /// Recorded in the provenance and SBOM.
    pub molt_version: String,
    /// Where `run` steps execute; without one they are refused.
    pub sandbox: Option<&'a dyn BuildSandbox>,
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

/// An uploaded build context unpacked under the store's `tmp/`; removed when dropped.
pub struct BuildContext {
    temp: TempPath,
}

impl BuildContext {
    /// The unpacked folder.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }
}

/// What `cache/<key>` remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    layer: Digest,
    diff_id: Digest,
    size: u64,
}

/// The image as it grows, step by step.
struct Building {
    key: [u8; 32],
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    config: Config,
    history: Vec<oci_spec::image::History>,
    staged: Vec<StagedBlob>,
    new_cache: Vec<([u8; 32], CacheEntry)>,
    layer_files: Vec<LayerFiles>,
    reports: Vec<StepReport>,
    provenance_steps: Vec<serde_json::Value>,
    base: Option<Digest>,
}

impl ImageStore {
    /// Bakes `spec` over the build context `context` (the app folder); see the module docs.
    ///
    /// Nothing is visible until the image is complete: layers are staged, the image committed
    /// like an import, and only then are cache entries written. A failing step leaves nothing.
    pub fn bake(
        &self,
        context: &Path,
        spec: &BuildSpec,
        options: &BakeOptions<'_>,
    ) -> Result<BakeReport, ImageError> {
        let started = Instant::now();
        let context = fs::canonicalize(context).map_err(ImageError::io(context))?;
        let epoch = options.source_date_epoch;
        let created = rfc3339(i64::try_from(epoch).unwrap_or(i64::MAX));
        let mut b = Building {
            key: chain(&[0; 32], &[b"molt-bake-v1"]),
            layers: Vec::new(),
            diff_ids: Vec::new(),
            config: Config::default(),
            history: Vec::new(),
            staged: Vec::new(),
            new_cache: Vec::new(),
            layer_files: Vec::new(),
            reports: Vec::new(),
            provenance_steps: Vec::new(),
            base: None,
        };
        let base_started = Instant::now();
        match &spec.base {
            BaseImage::Scratch => {}
            BaseImage::Image(reference) => {
                let digest = (options.resolve)(reference).map_err(ImageError::Build)?;
                self.start_from_image(&mut b, &digest)?;
            }
            BaseImage::Archive(rel) => {
                let path = inside(&context, rel)?;
                let file = fs::File::open(&path).map_err(ImageError::io(&path))?;
                let (imported, _) = self.import_archive(io::BufReader::new(file), None)?;
                self.start_from_image(&mut b, &imported.digest)?;
            }
            BaseImage::Rootfs(rel) => {
                let path = inside(&context, rel)?;
                let (root, _temp) = self.tree_root(&path)?;
                let entries = collect_tree(&root, Filter::Nothing)?;
                check_no_whiteouts(&entries)?;
                let style = TarStyle {
                    mtime: epoch,
                    ..TarStyle::default()
                };
                let text = spec.base.to_string();
                self.tree_layer(&mut b, &root, &entries, &style, &text, &created)?;
            }
        }
        if !matches!(spec.base, BaseImage::Rootfs(_)) {
            b.reports.push(StepReport {
                step: spec.base.to_string(),
                outcome: StepOutcome::Base,
                layer: None,
                millis: millis(base_started),
            });
            b.provenance_steps.push(serde_json::json!({
                "step": spec.base.to_string(),
                "key": Digest::from_sha256(&b.key).to_string(),
            }));
        }
        for step in &spec.steps {
            let text = step.to_string();
            match step {
                BuildStep::Copy {
                    src,
                    to,
                    mode,
                    owner,
                } => {
                    let links = filelist::symlinks(&b.layer_files);
                    let resolve = |rel: &Path| -> Result<PathBuf, ImageError> {
                        filelist::resolve_in_image(&links, &rel.to_string_lossy())
                            .map(PathBuf::from)
                            .map_err(|why| ImageError::Build(format!("{text}: {why}")))
                    };
                    let (root, entries, style) =
                        copy_plan(&context, src, to, *mode, *owner, epoch, &resolve)?;
                    self.tree_layer(&mut b, &root, &entries, &style, &text, &created)?;
                }
                BuildStep::Run { argv, network } => {
                    self.run_step(&mut b, argv, *network, &text, &created, options)?;
                }
                _ => {
                    apply_config_step(&mut b.config, step);
                    b.key = chain(&b.key, &[b"config", text.as_bytes()]);
                    b.history.push(history(&created, &text, true)?);
                    b.reports.push(StepReport {
                        step: text.clone(),
                        outcome: StepOutcome::Config,
                        layer: None,
                        millis: 0,
                    });
                    b.provenance_steps.push(serde_json::json!({
                        "step": text,
                        "key": Digest::from_sha256(&b.key).to_string(),
                    }));
                }
            }
        }
        self.finish_bake(b, options, &created, started)
    }

    /// Unpacks an uploaded build context (a tar, validated like an import) into `tmp/`.
    pub fn receive_context(&self, reader: impl io::Read) -> Result<BuildContext, ImageError> {
        let temp = TempPath::new(self.root.join("tmp").join(unique_name("context")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        crate::unpack::unpack_tar(reader, temp.path())?;
        Ok(BuildContext { temp })
    }

    /// Every regular file of a stored image (path → size and sha256), read from its layers.
    ///
    /// Works for any image, baked or imported; layer listings are cached by diff id.
    pub fn files(
        &self,
        digest: &Digest,
    ) -> Result<BTreeMap<String, filelist::FileInfo>, ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let image = self.image_parts(digest)?;
        let mut layers = Vec::new();
        for (layer, diff_id) in image.layers() {
            layers.push(self.layer_files(layer, diff_id)?);
        }
        Ok(filelist::merge(&layers))
    }

    /// Files added, removed and changed from image `a` to image `b`.
    pub fn diff(&self, a: &Digest, b: &Digest) -> Result<ImageDiff, ImageError> {
        let (old, new) = (self.files(a)?, self.files(b)?);
        let mut diff = ImageDiff::default();
        for (path, info) in &new {
            match old.get(path) {
                None => diff.added.push(path.clone()),
                Some(before) if before != info => diff.changed.push(path.clone()),
                Some(_) => {}
            }
        }
        diff.removed = old
            .keys()
            .filter(|p| !new.contains_key(*p))
            .cloned()
            .collect();
        Ok(diff)
    }

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

    /// Takes over a stored image's layers, config and history as the start of a bake.
    fn start_from_image(&self, b: &mut Building, digest: &Digest) -> Result<(), ImageError> {
        if !self.contains(digest) {
            return Err(ImageError::NotFound(digest.clone()));
        }
        let image = self.image_parts(digest)?;
        for (layer, diff_id) in image.layers() {
            b.layer_files.push(self.layer_files(layer, diff_id)?);
        }
        b.config = image.config.config().clone().unwrap_or_default();
        b.history = image.config.history().clone().unwrap_or_default();
        b.layers = image.manifest.layers().clone();
        b.diff_ids = image.diff_ids;
        b.key = chain(&b.key, &[b"base image", digest.as_str().as_bytes()]);
        b.base = Some(digest.clone());
        Ok(())
    }

    /// A directory to read a tree from: `path` itself, or a plain tar unpacked into `tmp/`.
    fn tree_root(&self, path: &Path) -> Result<(PathBuf, Option<TempPath>), ImageError> {
        let meta = fs::metadata(path).map_err(ImageError::io(path))?;
        if meta.is_dir() {
            return Ok((path.to_path_buf(), None));
        }
        let temp = TempPath::new(self.root.join("tmp").join(unique_name("bake-rootfs")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        let file = fs::File::open(path).map_err(ImageError::io(path))?;
        crate::unpack::unpack_tar(io::BufReader::new(file), temp.path())?;
        Ok((temp.path().to_path_buf(), Some(temp)))
    }

    /// Adds the layer of a tree: from the cache if its key is known, else built and staged.
    fn tree_layer(
        &self,
        b: &mut Building,
        root: &Path,
        entries: &[TreeEntry],
        style: &TarStyle,
        text: &str,
        created: &str,
    ) -> Result<(), ImageError> {
        let step_started = Instant::now();
        // Pass 1: the uncompressed tar's hash is the content hash of the step's inputs.
        let mut hashing = HashingWriter::new(io::sink());
        let (_, files) = write_tree_styled(root, entries, style, &mut hashing)?;
        let diff_id = Digest::from_sha256(&hashing.hasher.finalize().into());
        let key = chain(
            &b.key,
            &[b"layer", text.as_bytes(), diff_id.as_str().as_bytes()],
        );
        let mut listing = LayerFiles::from_written(&files);
        for entry in entries {
            if let EntryKind::Symlink(target) = &entry.kind {
                let placed = style.place.as_ref().map(|place| place(&entry.rel));
                let path = placed.as_deref().unwrap_or(&entry.rel);
                listing.entries.push(filelist::LayerEntry::Symlink {
                    path: path.to_string_lossy().into_owned(),
                    target: target.to_string_lossy().into_owned(),
                });
            }
        }
        let (entry, outcome) = match self.cache_lookup(&key, &diff_id) {
            Some(entry) => (entry, StepOutcome::Cached),
            None => {
                // Pass 2: the same stream, gzipped into a staged blob.
                let mut blob = self.blobs.create()?;
                let again = {
                    let mut tar_out = HashingWriter::new(deterministic_gzip(&mut blob));
                    write_tree_styled(root, entries, style, &mut tar_out)?;
                    let HashingWriter { inner, hasher, .. } = tar_out;
                    inner.finish().map_err(ImageError::Write)?;
                    Digest::from_sha256(&hasher.finalize().into())
                };
                if again != diff_id {
                    return Err(ImageError::Build(format!(
                        "{text}: the input files changed while they were being baked; bake again"
                    )));
                }
                let staged = blob.finish()?;
                let entry = CacheEntry {
                    layer: staged.digest.clone(),
                    diff_id: diff_id.clone(),
                    size: staged.size,
                };
                b.staged.push(staged);
                b.new_cache.push((key, entry.clone()));
                (entry, StepOutcome::Built)
            }
        };
        self.push_layer(b, key, entry, listing, text, created, outcome, step_started)
    }

    /// Adds the layer of a `run` step: cached by (parent key, step), else run in the sandbox
    /// over a scratch copy of the image so far and captured as a layer.
    fn run_step(
        &self,
        b: &mut Building,
        argv: &[String],
        network: bool,
        text: &str,
        created: &str,
        options: &BakeOptions<'_>,
    ) -> Result<(), ImageError> {
        let step_started = Instant::now();
        let key = chain(&b.key, &[b"run", text.as_bytes()]);
        if let Some(entry) = self.cache_get(&key) {
            let descriptor = Descriptor::new(
                MediaType::ImageLayerGzip,
                entry.size,
                to_oci_digest(&entry.layer),
            );
            let listing = self.layer_files(&descriptor, &entry.diff_id)?;
            return self.push_layer(
                b,
                key,
                entry,
                listing,
                text,
                created,
                StepOutcome::Cached,
                step_started,
            );
        }
        let sandbox = options.sandbox.ok_or_else(|| {
            ImageError::Build(
                "run steps need isolation: root and runc (run molt serve as root with runc \
                 installed, or replace the step by a copy of prebuilt files)"
                    .to_string(),
            )
        })?;
        let scratch = self.unpack_layers(b)?;
        make_writable(scratch.path())?;
        let before = Snapshot::take(scratch.path())?;
        let request = RunRequest {
            argv,
            env: b.config.env().clone().unwrap_or_default(),
            workdir: b
                .config
                .working_dir()
                .clone()
                .unwrap_or_else(|| "/".to_string()),
            user: b.config.user().as_deref().and_then(numeric_user),
            network,
        };
        sandbox
            .run(scratch.path(), &request)
            .map_err(|why| ImageError::Build(format!("{text} failed: {why}")))?;
        let changes = Snapshot::take(scratch.path())?.changes_since(&before, scratch.path());
        let mut blob = self.blobs.create()?;
        let (listing, diff_id) = {
            let mut tar_out = HashingWriter::new(deterministic_gzip(&mut blob));
            let listing = changes.write_layer(options.source_date_epoch, &mut tar_out)?;
            let HashingWriter { inner, hasher, .. } = tar_out;
            inner.finish().map_err(ImageError::Write)?;
            (listing, Digest::from_sha256(&hasher.finalize().into()))
        };
        let staged = blob.finish()?;
        let entry = CacheEntry {
            layer: staged.digest.clone(),
            diff_id,
            size: staged.size,
        };
        b.staged.push(staged);
        b.new_cache.push((key, entry.clone()));
        self.push_layer(
            b,
            key,
            entry,
            listing,
            text,
            created,
            StepOutcome::Built,
            step_started,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn push_layer(
        &self,
        b: &mut Building,
        key: [u8; 32],
        entry: CacheEntry,
        listing: LayerFiles,
        text: &str,
        created: &str,
        outcome: StepOutcome,
        step_started: Instant,
    ) -> Result<(), ImageError> {
        filelist::store_listing(&self.cache_dir(), &entry.diff_id, &listing)?;
        b.key = key;
        b.layers.push(Descriptor::new(
            MediaType::ImageLayerGzip,
            entry.size,
            to_oci_digest(&entry.layer),
        ));
        b.diff_ids.push(entry.diff_id.clone());
        b.layer_files.push(listing);
        b.history.push(history(created, text, false)?);
        b.reports.push(StepReport {
            step: text.to_string(),
            outcome,
            layer: Some(entry.layer.clone()),
            millis: millis(step_started),
        });
        b.provenance_steps.push(serde_json::json!({
            "step": text,
            "key": Digest::from_sha256(&key).to_string(),
            "layer": entry.layer,
            "diff_id": entry.diff_id,
        }));
        Ok(())
    }

    /// The rootfs of the layers so far, unpacked into a fresh writable temp dir.
    fn unpack_layers(&self, b: &Building) -> Result<TempPath, ImageError> {
        let temp = TempPath::new(self.root.join("tmp").join(unique_name("bake-run")));
        fs::create_dir(temp.path()).map_err(ImageError::io(temp.path()))?;
        for (layer, diff_id) in b.layers.iter().zip(&b.diff_ids) {
            // Layers made by this bake are still staged: read them from their temp files.
            if let Some(staged) = b
                .staged
                .iter()
                .find(|s| to_oci_digest(&s.digest) == *layer.digest())
            {
                let file = fs::File::open(staged.path()).map_err(ImageError::io(staged.path()))?;
                let tar = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
                crate::unpack::unpack_layer(tar, temp.path())?;
            } else {
                self.apply_layer(layer, diff_id, temp.path())?;
            }
        }
        Ok(temp)
    }

    /// Writes the config, SBOM, provenance and manifest; commits the image; fills the cache.
    fn finish_bake(
        &self,
        b: Building,
        options: &BakeOptions<'_>,
        created: &str,
        started: Instant,
    ) -> Result<BakeReport, ImageError> {
        let Building {
            key,
            layers,
            diff_ids,
            config,
            history,
            mut staged,
            new_cache,
            layer_files,
            reports,
            provenance_steps,
            base,
        } = b;
        let inputs = Digest::from_sha256(&key);
        let files = filelist::merge(&layer_files);
        let sbom = filelist::cyclonedx(&files, &options.name, &options.molt_version, created);
        let sbom_blob = self.stage_json(&sbom, &mut staged)?;
        let provenance = serde_json::json!({
            "_type": "https://molt.dev/provenance/v1",
            "molt_version": options.molt_version,
            "source": options.source,
            "source_date_epoch": options.source_date_epoch,
            "inputs": inputs,
            "base": base,
            "steps": provenance_steps,
            "sbom": sbom_blob.0,
            "files": files.len(),
        });
        let provenance_blob = self.stage_json(&provenance, &mut staged)?;

        let rootfs = RootFsBuilder::default()
            .typ("layers")
            .diff_ids(diff_ids.iter().map(Digest::to_string).collect::<Vec<_>>())
            .build()
            .map_err(spec_error)?;
        let image_config = ImageConfigurationBuilder::default()
            .created(created.to_string())
            .architecture(Arch::default())
            .os(Os::Linux)
            .config(config)
            .rootfs(rootfs)
            .history(history)
            .build()
            .map_err(spec_error)?;
        let config_blob = self.stage_json(&image_config, &mut staged)?;
        let mut manifest: ImageManifest = crate::oci::image_manifest(
            Descriptor::new(
                MediaType::ImageConfig,
                config_blob.1,
                to_oci_digest(&config_blob.0),
            ),
            layers,
        )?;
        manifest.set_annotations(Some(HashMap::from([
            (SBOM_ANNOTATION.to_string(), sbom_blob.0.to_string()),
            (
                PROVENANCE_ANNOTATION.to_string(),
                provenance_blob.0.to_string(),
            ),
        ])));
        let manifest_bytes = canonical_json(&manifest)?;
        let manifest_digest = Digest::from_sha256(&Sha256::digest(&manifest_bytes).into());
        // An unchanged bake: the very same image is already stored, nothing to write.
        let digest = if staged.is_empty() && self.contains(&manifest_digest) {
            manifest_digest
        } else {
            self.commit_image(staged, &manifest_bytes)?.0
        };
        // The whole image (manifest, config, every layer), whether its blobs are new or not.
        let size = self.image_size(&digest)?;
        let cache_dir = self.cache_dir();
        fs::create_dir_all(&cache_dir).map_err(ImageError::io(&cache_dir))?;
        for (key, entry) in new_cache {
            let bytes =
                serde_json::to_vec(&entry).map_err(|e| ImageError::InvalidLayout(e.to_string()))?;
            write_atomically(&cache_dir, &hex(&key), &bytes)?;
        }
        Ok(BakeReport {
            digest,
            inputs,
            base,
            steps: reports,
            files: files.len() as u64,
            size,
            millis: millis(started),
        })
    }

    /// Stages a JSON document as a blob unless it is stored already; returns its digest and size.
    fn stage_json(
        &self,
        value: &impl Serialize,
        staged: &mut Vec<StagedBlob>,
    ) -> Result<(Digest, u64), ImageError> {
        let bytes = canonical_json(value)?;
        let digest = Digest::from_sha256(&Sha256::digest(&bytes).into());
        if !self.blobs.contains(&digest) {
            staged.push(self.blobs.stage_bytes(&bytes)?);
        }
        Ok((digest, bytes.len() as u64))
    }

    /// The cached layer of `key` with this diff id, if its blob is still stored.
    fn cache_lookup(&self, key: &[u8; 32], diff_id: &Digest) -> Option<CacheEntry> {
        self.cache_get(key)
            .filter(|entry| entry.diff_id == *diff_id)
    }

    /// The cached layer of `key`, if it is known and its blob is still stored.
    fn cache_get(&self, key: &[u8; 32]) -> Option<CacheEntry> {
        let bytes = fs::read(self.cache_dir().join(hex(key))).ok()?;
        let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        self.blobs.contains(&entry.layer).then_some(entry)
    }

    /// The file listing of one layer, from the cache or by reading the (verified) blob.
    fn layer_files(&self, layer: &Descriptor, diff_id: &Digest) -> Result<LayerFiles, ImageError> {
        if let Some(listing) = filelist::load_listing(&self.cache_dir(), diff_id) {
            return Ok(listing);
        }
        let compression = crate::oci::layer_compression(layer.media_type())?;
        let digest = to_molt_digest(layer.digest())?;
        let mut blob = self.blobs.open(&digest)?;
        let listing = filelist::read_layer(crate::oci::decompress(&mut blob, compression));
        blob.finish()?;
        let listing = listing?;
        filelist::store_listing(&self.cache_dir(), diff_id, &listing)?;
        Ok(listing)
    }

    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// The layer and diff id a `cache/<key>` file names, if it parses.
    pub(crate) fn cache_entry_at(&self, path: &Path) -> Option<(Digest, Digest)> {
        let bytes = fs::read(path).ok()?;
        let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        Some((entry.layer, entry.diff_id))
    }
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

/// sha256 over the parent key and length-prefixed parts.
fn chain(parent: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(parent);
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn hex(bytes: &[u8; 32]) -> String {
    Digest::from_sha256(bytes).hex().to_string()
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// JSON with sorted keys (through `serde_json::Value`), so maps never reorder a digest.
fn canonical_json(value: &impl Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_value(value)
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| ImageError::InvalidLayout(e.to_string()))
}

fn history(
    created: &str,
    text: &str,
    empty_layer: bool,
) -> Result<oci_spec::image::History, ImageError> {
    let mut builder = HistoryBuilder::default()
        .created(created.to_string())
        .created_by(format!("molt bake: {text}"));
    if empty_layer {
        builder = builder.empty_layer(true);
    }
    builder.build().map_err(spec_error)
}

/// `rel` under `context`, refusing anything that resolves outside it (through `..` or links).
fn inside(context: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let joined = context.join(rel);
    let resolved = fs::canonicalize(&joined).map_err(ImageError::io(&joined))?;
    if resolved.starts_with(context) {
        Ok(resolved)
    } else {
        Err(ImageError::Build(format!(
            "{rel} resolves outside the app folder"
        )))
    }
}

/// A name starting with `.wh.` would delete instead of add once in a layer.
fn check_no_whiteouts(entries: &[TreeEntry]) -> Result<(), ImageError> {
    for entry in entries {
        let name = entry.rel.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
        if name.starts_with(WHITEOUT_PREFIX) {
            return Err(ImageError::unsafe_entry(
                entry.rel.to_string_lossy(),
                "names starting with `.wh.` are reserved for OCI whiteouts",
            ));
        }
    }
    Ok(())
}

/// The image path `to` as a relative path of plain names.
fn image_rel(to: &str) -> PathBuf {
    Path::new(to)
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// Every proper ancestor of `rel` ("a/b/c" → "a", "a/b").
fn ancestors(rel: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = rel
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

/// What a copy step reads (root and entries) and how it names and stamps them.
///
/// `resolve` maps an image path through the symlinks of the image so far, so a copy to
/// `/bin/server` in a merged-/usr base (`bin -> usr/bin`) lands in `usr/bin/server` instead of
/// a `bin/` directory that would replace the link (and hide everything behind it).
fn copy_plan(
    context: &Path,
    src: &str,
    to: &str,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    epoch: u64,
    resolve: &dyn Fn(&Path) -> Result<PathBuf, ImageError>,
) -> Result<(PathBuf, Vec<TreeEntry>, TarStyle), ImageError> {
    let path = inside(context, src)?;
    let meta = fs::metadata(&path).map_err(ImageError::io(&path))?;
    let to_rel = image_rel(to);
    let mut style = TarStyle {
        mtime: epoch,
        file_mode: mode,
        owner,
        ..TarStyle::default()
    };
    if meta.is_dir() {
        // The whole folder keeps the app's ignore rules; a subfolder is copied as it is.
        let filter = if path == context {
            Filter::AppIgnores
        } else {
            Filter::Nothing
        };
        let entries = collect_tree(&path, filter)?;
        check_no_whiteouts(&entries)?;
        let to_rel = resolve(&to_rel)?;
        style.parents = ancestors(&to_rel);
        if !to_rel.as_os_str().is_empty() {
            style.root_entry = Some(to_rel.clone());
        }
        style.place = Some(Box::new(move |rel: &Path| to_rel.join(rel)));
        return Ok((path, entries, style));
    }
    if !meta.is_file() {
        return Err(ImageError::Build(format!(
            "copy {src}: only files and folders can be copied"
        )));
    }
    if meta.len() > crate::canonical::MAX_ENTRY_SIZE {
        return Err(ImageError::unsafe_entry(src, "file is larger than 4 GiB"));
    }
    let name = path
        .file_name()
        .map(PathBuf::from)
        .ok_or_else(|| ImageError::Build(format!("copy {src}: not a file name")))?;
    if name.as_os_str().as_bytes().starts_with(WHITEOUT_PREFIX) {
        return Err(ImageError::unsafe_entry(
            src,
            "names starting with `.wh.` are reserved for OCI whiteouts",
        ));
    }
    let target = if to.ends_with('/') || to_rel.as_os_str().is_empty() {
        resolve(&to_rel)?.join(&name)
    } else {
        let file_name = to_rel.file_name().map(PathBuf::from).unwrap_or_default();
        resolve(to_rel.parent().unwrap_or(Path::new("")))?.join(file_name)
    };
    style.parents = ancestors(&target);
    style.place = Some(Box::new(move |_: &Path| target.clone()));
    let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let entries = vec![TreeEntry {
        rel: name,
        kind: EntryKind::File {
            executable: meta.permissions().mode() & 0o111 != 0,
            len: meta.len(),
        },
    }];
    Ok((root, entries, style))
}

/// Applies a metadata step to the image config.
fn apply_config_step(config: &mut Config, step: &BuildStep) {
    match step {
        BuildStep::Env(vars) => {
            let mut env: Vec<String> = config.env().clone().unwrap_or_default();
            for (k, v) in vars {
                let prefix = format!("{}=", k.as_str());
                env.retain(|e| !e.starts_with(&prefix));
                env.push(format!("{prefix}{v}"));
            }
            config.set_env(Some(env));
        }
        BuildStep::Workdir(dir) => {
            config.set_working_dir(Some(dir.clone()));
        }
        BuildStep::User(user) => {
            config.set_user(Some(user.clone()));
        }
        BuildStep::Cmd(argv) => {
            config.set_cmd(Some(argv.clone()));
        }
        BuildStep::Port(port) => {
            let mut ports = config.exposed_ports().clone().unwrap_or_default();
            ports.push(format!("{port}/tcp"));
            ports.sort();
            ports.dedup();
            config.set_exposed_ports(Some(ports));
        }
        BuildStep::Copy { .. } | BuildStep::Run { .. } => {}
    }
}
