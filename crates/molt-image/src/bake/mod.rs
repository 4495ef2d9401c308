//! Baking: a `[build]` recipe applied to a build context, one layer per `copy`/`run` step.
//!
//! Every step has a **cache key** (`cache.rs`), sha256 over the parent's key, the step's
//! canonical text and the content hash (the uncompressed layer's sha256) of its inputs.
//! `cache/<key>` in the store remembers the layer a key produced, so a step whose key is known
//! is not compressed or written again; an unchanged bake reuses every layer and yields the same
//! image digest. Metadata steps (`env`, `workdir`, `user`, `cmd`, `port`) only change the image
//! config and chain the key.
//!
//! Reproducible: entries are sorted, every mtime is the given `SOURCE_DATE_EPOCH` (or 0),
//! owners are 0:0 unless a step says `owner`, and the config and history hold no host name,
//! clock time or local uid. JSON documents are written with sorted keys.
//!
//! This module runs the steps in order and commits the image; what the recipe may read and
//! where a copy lands is `context.rs`, the SBOM and provenance every baked image carries are
//! `attest.rs`, and `run` steps are `crate::run`.

mod attest;
mod cache;
mod context;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use molt_core::{BaseImage, BuildSpec, BuildStep, Digest, ImageRef};
use molt_wire::{BakeReport, StepOutcome, StepReport};
use oci_spec::image::{
    Arch, Config, Descriptor, HistoryBuilder, ImageConfigurationBuilder, ImageManifest, MediaType,
    Os, RootFsBuilder,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::blobs::{HashingWriter, StagedBlob};
use crate::filelist::{self, LayerFiles};
use crate::fsutil::{make_writable, unique_name, TempPath};
use crate::oci::{deterministic_gzip, rfc3339, spec_error, to_oci_digest};
use crate::run::{numeric_user, BuildSandbox, RunRequest, Snapshot};
use crate::{ImageError, ImageStore};
use molt_pack::{collect_tree, write_tree_styled, EntryKind, Filter, TarStyle, TreeEntry};

pub(crate) use self::attest::attached_blobs;
use self::attest::{Provenance, ProvenanceStep, PROVENANCE_SCHEMA};
pub use self::attest::{SourceInfo, PROVENANCE_ANNOTATION, SBOM_ANNOTATION};
use self::cache::{CacheEntry, CacheKey};
pub use self::context::BuildContext;
use self::context::{check_no_whiteouts, copy_plan, inside};

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

/// The image as it grows, step by step.
struct Building {
    key: CacheKey,
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    config: Config,
    history: Vec<oci_spec::image::History>,
    staged: Vec<StagedBlob>,
    new_cache: Vec<(CacheKey, CacheEntry)>,
    layer_files: Vec<LayerFiles>,
    reports: Vec<StepReport>,
    provenance_steps: Vec<ProvenanceStep>,
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
            key: CacheKey::start(),
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
            b.provenance_steps.push(ProvenanceStep::without_layer(
                &spec.base.to_string(),
                b.key.digest(),
            ));
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
                    b.key = b.key.config(&text);
                    b.history.push(history(&created, &text, true)?);
                    b.reports.push(StepReport {
                        step: text.clone(),
                        outcome: StepOutcome::Config,
                        layer: None,
                        millis: 0,
                    });
                    b.provenance_steps
                        .push(ProvenanceStep::without_layer(&text, b.key.digest()));
                }
            }
        }
        self.finish_bake(b, options, &created, started)
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
        b.key = b.key.base_image(digest);
        b.base = Some(digest.clone());
        Ok(())
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
        let key = b.key.layer(text, &diff_id);
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
        let key = b.key.run(text);
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
        key: CacheKey,
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
        b.provenance_steps.push(ProvenanceStep::with_layer(
            text,
            key.digest(),
            entry.layer,
            entry.diff_id,
        ));
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
        let inputs = key.digest();
        let files = filelist::merge(&layer_files);
        let sbom = attest::sbom(&files, &options.name, &options.molt_version, created);
        let sbom_blob = self.stage_json(&sbom, &mut staged)?;
        let provenance = Provenance {
            schema: PROVENANCE_SCHEMA,
            molt_version: &options.molt_version,
            source: &options.source,
            source_date_epoch: options.source_date_epoch,
            inputs: &inputs,
            base: base.as_ref(),
            steps: &provenance_steps,
            sbom: &sbom_blob.0,
            files: files.len(),
        };
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
        manifest.set_annotations(Some(attest::annotations(&sbom_blob.0, &provenance_blob.0)));
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
        self.cache_put(&new_cache)?;
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
}

/// Milliseconds since `since`, for the report.
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
