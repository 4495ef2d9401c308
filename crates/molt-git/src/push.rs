//! One push: molt's side of the `pre-receive` hook. The hook writes the pushed refs (and where
//! git holds the pushed objects until the hook says yes) to `request` in the push's directory,
//! then prints the lines molt writes to the `progress` FIFO until molt's `molt-exit N` line.
//! molt checks the ref, checks the commit out, makes the image, deploys it and follows the
//! deployment to its cutover, writing every step back.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use molt_control::{BakeRequest, Controller, DeployRequest, ImportOptions, SourceInfo};
use molt_core::{AppName, DeployState, Manifest};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::source::{Checkout, RefUpdate, SourceError};

/// How long a push may wait for its hook to start (the pack is being received), and how often
/// it looks.
const WAIT_FOR_HOOK: Duration = Duration::from_secs(3600);
const LOOK_EVERY: Duration = Duration::from_millis(20);
/// How long a push follows its deployment, and how often it reads the journal.
const FOLLOW_FOR: Duration = Duration::from_secs(2 * 3600);
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// A push in progress.
pub(crate) struct Push {
    dir: PathBuf,
    controller: Controller,
    app: AppName,
    repo: PathBuf,
    principal: String,
    started: Instant,
}

/// Why a push is refused: each says what to do next, and becomes the push's last `remote:`
/// line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    /// The pushed ref or commit cannot be deployed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The commit has no `molt.toml` at its root.
    #[error("the pushed commit has no molt.toml at its root: add one (`molt init` writes it)")]
    NoManifest,
    /// Its `molt.toml` does not parse.
    #[error("molt.toml: {0}")]
    BadManifest(String),
    /// Its `molt.toml` names another app.
    #[error("molt.toml names app '{named}' but this is the remote of '{app}'")]
    OtherApp {
        /// The app of the URL.
        app: AppName,
        /// The app of the manifest.
        named: String,
    },
    /// The controller refused or failed (bake, import, deploy).
    #[error("{0}")]
    Control(#[from] molt_control::ControlError),
    /// The deployment ended without serving the commit.
    #[error("deployment {id} {state}: {reason}; traffic stays where it was")]
    Deployment {
        /// Its id.
        id: u64,
        /// How it ended.
        state: String,
        /// What it recorded.
        reason: String,
    },
    /// A file of the push could not be written or read.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Where the progress goes: the FIFO the hook prints from.
struct Progress {
    fifo: tokio::fs::File,
}

impl Progress {
    /// Writes one line (or several): a line that would read as the end marker is indented.
    async fn line(&mut self, text: &str) {
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("molt-exit") {
                out.push(' ');
            }
            out.push_str(line);
            out.push('\n');
        }
        self.raw(&out).await;
    }

    /// Ends the hook with `code`: the line it exits on.
    async fn exit(&mut self, code: i32) {
        self.raw(&format!("molt-exit {code}\n")).await;
    }

    async fn raw(&mut self, text: &str) {
        // The hook may be gone (the pusher left): the deployment goes on regardless.
        let _ = self.fifo.write_all(text.as_bytes()).await;
        let _ = self.fifo.flush().await;
    }
}

impl Push {
    /// Makes the push's directory under `<root>/pushes/`, with its `progress` FIFO.
    pub(crate) async fn prepare(
        root: &Path,
        controller: Controller,
        app: AppName,
        repo: PathBuf,
        principal: String,
    ) -> io::Result<Push> {
        let dir = root
            .join("pushes")
            .join(format!("{app}-{:016x}", rand::random::<u64>()));
        tokio::fs::create_dir_all(&dir).await?;
        let fifo = dir.join("progress");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).map_err(io::Error::from)?;
        Ok(Push {
            dir,
            controller,
            app,
            repo,
            principal,
            started: Instant::now(),
        })
    }

    /// The push's directory (the hook's `MOLT_PUSH_DIR`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the hook (until `ended`: git finished without running it, e.g. nothing was
    /// pushed), answers it, then removes the push's directory.
    pub(crate) async fn watch(self, mut ended: oneshot::Receiver<()>) {
        let request = self.dir.join("request");
        let deadline = Instant::now() + WAIT_FOR_HOOK;
        let text = loop {
            if let Ok(text) = tokio::fs::read_to_string(&request).await {
                break Some(text);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::select! {
                _ = &mut ended => break None,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        };
        if let Some(text) = text {
            self.answer(&text).await;
        }
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }

    /// Deploys what the hook reported and tells it the verdict.
    async fn answer(&self, request: &str) {
        let fifo = tokio::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("progress"))
            .await;
        let Ok(fifo) = fifo else {
            tracing::warn!(app = %self.app, "a push's hook could not be answered");
            return;
        };
        let mut out = Progress { fifo };
        let code = match self.deliver(request, &mut out).await {
            Ok(()) => 0,
            Err(e) => {
                out.line(&format!("molt: push refused: {e}")).await;
                1
            }
        };
        out.exit(code).await;
    }

    /// Checks the pushed ref, makes its image, deploys it and follows it to its cutover.
    async fn deliver(&self, request: &str, out: &mut Progress) -> Result<(), PushError> {
        let transfer_ms = self.started.elapsed().as_millis();
        let checkout = Checkout::new(&self.repo, &self.dir, request)?;
        let branch = checkout.branch().await;
        let update: RefUpdate = checkout.update_of(&branch)?;
        checkout.check_fast_forward(&update).await?;
        out.line(&format!(
            "molt: {} {} received in {transfer_ms} ms (transfer)",
            update.name,
            update.short()
        ))
        .await;
        let source = checkout.check_out(&update).await?;
        let text = match tokio::fs::read_to_string(source.join("molt.toml")).await {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PushError::NoManifest),
            Err(e) => return Err(e.into()),
        };
        let manifest = Manifest::parse(&text, "molt.toml")
            .map_err(|e| PushError::BadManifest(e.to_string()))?;
        if manifest.name != self.app {
            return Err(PushError::OtherApp {
                app: self.app.clone(),
                named: manifest.name.to_string(),
            });
        }
        let image_started = Instant::now();
        let context = self.dir.join("context.tar");
        let files = pack(&source, &context).await?;
        let digest = if manifest.build.is_some() {
            let report = self
                .controller
                .bake(BakeRequest {
                    context_tar: context,
                    source: SourceInfo {
                        commit: Some(update.new.clone()),
                        dirty: false,
                    },
                    source_date_epoch: checkout.commit_time(&update).await,
                    tag: None,
                })
                .await?;
            for step in &report.steps {
                let outcome = format!("{:?}", step.outcome).to_lowercase();
                out.line(&format!(
                    "molt:   {} ({outcome}, {} ms)",
                    step.step, step.millis
                ))
                .await;
            }
            out.line(&format!(
                "molt: image {} baked from {files} files in {} ms (bake)",
                short(report.digest.as_str()),
                image_started.elapsed().as_millis()
            ))
            .await;
            report.digest.to_string()
        } else {
            let options = ImportOptions {
                actor: Some(self.principal.clone()),
                ..Default::default()
            };
            let outcome = self.controller.import_image_file(context, options).await?;
            out.line(&format!(
                "molt: image {} ({files} files) imported in {} ms (bake: no [build])",
                short(outcome.image.digest.as_str()),
                image_started.elapsed().as_millis()
            ))
            .await;
            outcome.image.digest.to_string()
        };
        let deploy_started = Instant::now();
        let deployment = self
            .controller
            .deploy(
                self.app.as_str(),
                DeployRequest {
                    image: Some(digest),
                    manifest: Some(text),
                    release: None,
                    shadow: None,
                    from: None,
                    note: Some(format!(
                        "git push of {} ({}) by {}",
                        update.new, update.name, self.principal
                    )),
                },
            )
            .await?;
        out.line(&format!(
            "molt: deploying {} v{} (deployment {})",
            self.app, deployment.release, deployment.id
        ))
        .await;
        self.follow(deployment.id, out).await?;
        out.line(&format!(
            "molt: {} v{} serves {}; deploy {} ms; push to serving {} ms",
            self.app,
            deployment.release,
            update.short(),
            deploy_started.elapsed().as_millis(),
            self.started.elapsed().as_millis()
        ))
        .await;
        Ok(())
    }

    /// Writes the deployment's journal as it grows, until its cutover (or shadow phase), or
    /// its end.
    async fn follow(&self, id: u64, out: &mut Progress) -> Result<(), PushError> {
        let started = Instant::now();
        let mut seen = 0;
        while started.elapsed() < FOLLOW_FOR {
            let (deployment, journal) = self.controller.deployment(id).await?;
            for entry in journal.iter().skip(seen) {
                out.line(&format!(
                    "molt: {:>7} ms  {:<18} {}",
                    started.elapsed().as_millis(),
                    entry.state.as_str(),
                    entry.detail
                ))
                .await;
            }
            seen = journal.len();
            match deployment.state {
                DeployState::Drained | DeployState::Succeeded | DeployState::Shadowing => {
                    return Ok(())
                }
                DeployState::Failed
                | DeployState::RolledBack
                | DeployState::Superseded
                | DeployState::Abandoned
                | DeployState::Aborted => {
                    return Err(PushError::Deployment {
                        id,
                        state: deployment.state.as_str().replace('_', " "),
                        reason: deployment
                            .error
                            .unwrap_or_else(|| "no reason recorded".into()),
                    })
                }
                _ => {}
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
        out.line(&format!(
            "molt: deployment {id} goes on; follow it with `molt status {}`",
            self.app
        ))
        .await;
        Ok(())
    }
}

/// Writes the canonical tar of `source` to `context` (what `molt deploy` uploads); returns
/// the number of files.
async fn pack(source: &Path, context: &Path) -> Result<u64, PushError> {
    let (source, context) = (source.to_path_buf(), context.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut file = io::BufWriter::new(std::fs::File::create(&context)?);
        let (_, files) = molt_pack::write_canonical_tar(&source, &mut file)
            .map_err(|e| io::Error::other(e.to_string()))?;
        io::Write::flush(&mut file)?;
        Ok(files)
    })
    .await
    .map_err(io::Error::other)?
}

/// The first 12 characters of a digest's hex.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}
