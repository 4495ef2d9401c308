//! Baking on the server: the CLI uploads the app folder (the build context, as `molt deploy`
//! always did) and the server bakes it into its image store, where base images, tags, the layer
//! cache and the `run` sandbox are.

use std::fmt;
use std::path::{Path, PathBuf};

use molt_core::{BaseImage, Digest, ImageRef, InputError, Manifest};
use molt_image::{BakeOptions, BakeReport, BuildSandbox, ImageDiff, RunRequest, SourceInfo};

use crate::{ControlError, Controller, Result};

/// Where bake `run` steps run: molt-control's seam to a container runtime. Whoever assembles
/// molt hands one in (`molt serve`: runc containers, through molt-runtime); asked once per
/// bake, so a runtime that appears while molt runs is used from the next bake on.
pub trait BuildIsolation: fmt::Debug + Send + Sync {
    /// A sandbox for one bake's `run` steps, or why they cannot run on this machine (a
    /// message for the user, saying what is missing).
    fn sandbox(&self) -> std::result::Result<Box<dyn BuildSandbox + Send>, String>;
}

/// `run` steps in the sandbox handed in, or the reason they cannot run here.
enum Sandbox {
    Isolated(Box<dyn BuildSandbox + Send>),
    Unavailable(String),
}

impl BuildSandbox for Sandbox {
    fn run(&self, rootfs: &Path, request: &RunRequest<'_>) -> std::result::Result<(), String> {
        match self {
            Sandbox::Unavailable(why) => Err(why.clone()),
            Sandbox::Isolated(sandbox) => sandbox.run(rootfs, request),
        }
    }
}

/// A bake request: the uploaded context and what only the client knows.
#[derive(Debug, Clone)]
pub struct BakeRequest {
    /// The build context, a tar already on disk (the app folder, `.git` and ignored paths left out).
    pub context_tar: PathBuf,
    /// `git` facts of the app folder, run by the client.
    pub source: SourceInfo,
    /// `SOURCE_DATE_EPOCH` of the client (0 without one).
    pub source_date_epoch: u64,
    /// Tag the baked image with this immutable tag.
    pub tag: Option<String>,
}

impl Controller {
    /// Bakes the `[build]` of the context's `molt.toml`, records the image and tags it.
    pub async fn bake(&self, req: BakeRequest) -> Result<BakeReport> {
        let images = self.inner.images.clone();
        let tar = req.context_tar.clone();
        let (context, manifest) = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&tar).map_err(|e| {
                ControlError::Internal(format!("reading upload {}: {e}", tar.display()))
            })?;
            let context = images.receive_context(std::io::BufReader::new(file))?;
            let text = std::fs::read_to_string(context.path().join("molt.toml")).map_err(|_| {
                InputError::Invalid(
                    "the build context has no molt.toml: bake a folder that has one".into(),
                )
            })?;
            let manifest = Manifest::parse(&text, "molt.toml")?;
            Ok::<_, ControlError>((context, manifest))
        })
        .await??;
        let Some(spec) = manifest.build.clone() else {
            return Err(InputError::Invalid(
                "molt.toml has no [build]: without one, `molt deploy` uses the folder itself as \
                 the image"
                    .into(),
            )
            .into());
        };
        let base = match &spec.base {
            BaseImage::Image(reference) => {
                let text = match reference {
                    ImageRef::Digest(d) => d.to_string(),
                    ImageRef::Tag(t) => t.clone(),
                };
                let record = self.db(move |s| s.resolve_image(&text)).await?;
                Some(record.digest)
            }
            _ => None,
        };
        let images = self.inner.images.clone();
        let name = manifest.name.to_string();
        let isolation = self.inner.config.build_isolation.clone();
        let report = tokio::task::spawn_blocking(move || {
            let sandbox = match &isolation {
                Some(isolation) => match isolation.sandbox() {
                    Ok(sandbox) => Sandbox::Isolated(sandbox),
                    Err(why) => Sandbox::Unavailable(why),
                },
                None => Sandbox::Unavailable(
                    "run steps need isolation: root and runc (this controller has no build \
                     sandbox)"
                        .to_string(),
                ),
            };
            let resolve = move |_: &ImageRef| -> std::result::Result<Digest, String> {
                base.clone()
                    .ok_or_else(|| "the base image was not resolved".to_string())
            };
            let options = BakeOptions {
                resolve: &resolve,
                source: req.source,
                source_date_epoch: req.source_date_epoch,
                name,
                molt_version: env!("CARGO_PKG_VERSION").to_string(),
                sandbox: Some(&sandbox),
            };
            let report = images.bake(context.path(), &spec, &options);
            drop(context);
            report.map_err(ControlError::from)
        })
        .await??;
        let recorded = report.clone();
        let tag = req.tag;
        self.db(move |s| {
            if let Some(base) = &recorded.base {
                s.put_image(base, 0)?;
            }
            s.put_image(&recorded.digest, recorded.size)?;
            if let Some(t) = &tag {
                s.tag_image(t, &recorded.digest)?;
            }
            Ok(())
        })
        .await?;
        Ok(report)
    }

    /// Files added, removed and changed between two stored images (digests or tags).
    pub async fn image_diff(&self, a: String, b: String) -> Result<ImageDiff> {
        let (a, b) = self
            .db(move |s| Ok((s.resolve_image(&a)?.digest, s.resolve_image(&b)?.digest)))
            .await?;
        let images = self.inner.images.clone();
        Ok(tokio::task::spawn_blocking(move || images.diff(&a, &b)).await??)
    }
}
