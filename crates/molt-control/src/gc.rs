//! Garbage collection by reachability (the plan is `molt_core::gc::plan`; this carries it
//! out), pins, retirement of environments, and orphan hunting.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use molt_core::gc::{plan, EnvFacts, ImageFacts, ReleaseFacts, Snapshot};
use molt_core::Digest;
use molt_image::BlobCollection;
use molt_store::EnvState;
use molt_wire::GcReport;

use crate::{parse_app, Controller, Result};

impl Controller {
    /// Collects what nothing reaches any more; with `dry_run`, only reports it.
    pub async fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let snapshot = self.gc_snapshot().await?;
        let planned = plan(&snapshot);
        let mut report = GcReport {
            dry_run,
            envs: planned.envs.clone(),
            images: planned.images.clone(),
            orphans: Vec::new(),
            kept: planned.kept_envs.clone(),
            store: BlobCollection::default(),
        };
        report.orphans = self.stop_orphans(dry_run).await?;
        if dry_run {
            report.store = self.sweep_image_store(&planned.images, true).await?;
            return Ok(report);
        }
        for env in &planned.envs {
            self.retire_env(
                env,
                "garbage-collected: outside the rollback window and not routed",
            )
            .await?;
        }
        self.remove_retired_logs().await?;
        for digest in &planned.images {
            let d = digest.clone();
            self.db(move |s| s.remove_image(&d)).await?;
            let images = self.inner.images.clone();
            let d = digest.clone();
            tokio::task::spawn_blocking(move || images.remove(&d)).await??;
        }
        report.store = self.sweep_image_store(&[], false).await?;
        Ok(report)
    }

    /// Collects only images: those GC would delete (no kept release, no tag, past the grace
    /// period), then sweeps the image store. Environments are left alone.
    pub async fn gc_images(&self, dry_run: bool) -> Result<GcReport> {
        let planned = plan(&self.gc_snapshot().await?);
        let mut report = GcReport {
            dry_run,
            images: planned.images.clone(),
            ..GcReport::default()
        };
        if !dry_run {
            for digest in &planned.images {
                let d = digest.clone();
                self.db(move |s| s.remove_image(&d)).await?;
            }
        }
        report.store = self.sweep_image_store(&planned.images, dry_run).await?;
        Ok(report)
    }

    /// Sweeps the image store: keeps the images the store has records for (minus `dropping`,
    /// which this collection removes) and anything imported within the image grace period.
    pub(crate) async fn sweep_image_store(
        &self,
        dropping: &[Digest],
        dry_run: bool,
    ) -> Result<BlobCollection> {
        let mut keep: HashSet<Digest> = self
            .db(|s| s.images())
            .await?
            .into_iter()
            .map(|i| i.digest)
            .collect();
        for digest in dropping {
            keep.remove(digest);
        }
        let images = self.inner.images.clone();
        let grace = self.inner.config.image_grace;
        Ok(tokio::task::spawn_blocking(move || images.collect(&keep, grace, dry_run)).await??)
    }

    /// What GC looks at, read from the store in one go.
    pub(crate) async fn gc_snapshot(&self) -> Result<Snapshot> {
        let keep_releases = self.inner.config.keep_releases;
        let image_grace_ms = self.inner.config.image_grace.as_millis() as u64;
        let now_ms = self.now_ms();
        self.db(move |s| {
            let routed: HashSet<String> = s.routes()?.into_iter().map(|(_, e)| e).collect();
            let deploying: HashSet<String> = s
                .unfinished_deployments()?
                .into_iter()
                .filter_map(|d| d.env)
                .collect();
            let envs = s
                .envs(None, false)?
                .into_iter()
                .map(|e| EnvFacts {
                    routed: routed.contains(&e.id),
                    deploying: deploying.contains(&e.id),
                    id: e.id,
                    app: e.app,
                    release: e.release,
                    warm_until_ms: e.warm_until_ms,
                })
                .collect();
            let releases = s
                .releases(None)?
                .into_iter()
                .map(|r| ReleaseFacts {
                    app: r.app,
                    number: r.number,
                    image: r.image,
                    pinned: r.pinned,
                })
                .collect();
            let images = s
                .images()?
                .into_iter()
                .map(|i| ImageFacts {
                    tagged: !i.tags.is_empty(),
                    digest: i.digest,
                    created_ms: i.created_ms,
                })
                .collect();
            Ok(Snapshot {
                now_ms,
                envs,
                releases,
                images,
                keep_releases,
                image_grace_ms,
            })
        })
        .await
    }

    /// Retires an environment: no new traffic, in-flight requests finish (bounded by the
    /// release's drain timeout), then its instances stop.
    pub(crate) async fn retire_env(&self, env: &str, why: &str) -> Result<()> {
        let _guard = self.inner.reconcile_lock.lock().await;
        let id = env.to_string();
        let (rec, instances) = self
            .db(move |s| {
                s.set_env_state(&id, EnvState::Retired)?;
                Ok((s.env(&id)?, s.instances(Some(&id), false)?))
            })
            .await?;
        self.publish_routes().await?;
        let (app, number) = (rec.app.clone(), rec.release);
        let drain = self
            .db(move |s| Ok(s.release(&app, number)?.config.deploy.drain_timeout))
            .await
            .unwrap_or(Duration::from_secs(30));
        let deadline = Instant::now() + drain;
        while !self.is_drained(env) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.engine().is_some() {
            self.engine_stop(env, why).await?;
        } else {
            self.stop_instances(&instances, why).await?;
        }
        self.inner.router.forget_env(env);
        self.event(&rec.app, "retire", &format!("{env} retired: {why}"))
            .await;
        Ok(())
    }

    /// Finds processes carrying this molt's marker that the store does not count as live, and
    /// stops them (unless `dry_run`). Returns their instance ids.
    pub(crate) async fn stop_orphans(&self, dry_run: bool) -> Result<Vec<String>> {
        if self.engine().is_some() {
            return self.engine_orphans(dry_run).await;
        }
        let provider = self.inner.provider.clone();
        let running = tokio::task::spawn_blocking(move || provider.scan()).await?;
        let known: HashSet<(String, u32)> = self
            .db(|s| s.instances(None, false))
            .await?
            .into_iter()
            .filter_map(|i| Some((i.id, i.pid?)))
            .collect();
        let mut orphans = Vec::new();
        for (id, handle) in running {
            if known.contains(&(id.clone(), handle.pid)) {
                continue;
            }
            orphans.push(id.clone());
            if !dry_run {
                tracing::warn!(instance = %id, pid = handle.pid, "stopping orphaned instance");
                self.terminate(&id, handle).await;
                let provider = self.inner.provider.clone();
                tokio::task::spawn_blocking(move || provider.forget(&id)).await?;
            }
        }
        if !dry_run {
            // What ended without a `forget` (e.g. while molt was down): network namespaces …
            let provider = self.inner.provider.clone();
            for what in tokio::task::spawn_blocking(move || provider.sweep()).await? {
                tracing::warn!(removed = %what, "removed what an ended instance left");
            }
        }
        Ok(orphans)
    }

    pub(crate) async fn gc_loop(&self) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.inner.config.gc_interval) => {}
            }
            match self.gc(false).await {
                Ok(r)
                    if !(r.envs.is_empty()
                        && r.images.is_empty()
                        && r.orphans.is_empty()
                        && r.store.blobs == 0
                        && r.store.rootfs == 0) =>
                {
                    tracing::info!(
                        envs = r.envs.len(),
                        images = r.images.len(),
                        orphans = r.orphans.len(),
                        blobs = r.store.blobs,
                        blob_bytes = r.store.blob_bytes,
                        rootfs = r.store.rootfs,
                        "garbage collected"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("gc: {e}"),
            }
        }
    }
}

impl Controller {
    /// Pins or unpins a release (pinned releases are never collected).
    pub async fn pin(&self, app: &str, release: u64, pinned: bool) -> Result<()> {
        let a = parse_app(app)?.to_string();
        self.db(move |s| s.set_pinned(&a, release, pinned)).await
    }

    /// Stops every instance this controller knows (used when molt is told to leave nothing
    /// running, e.g. by tests). The store keeps the environments; a restart replaces instances.
    pub async fn stop_all_instances(&self) -> Result<()> {
        if self.engine().is_some() {
            let envs: std::collections::BTreeSet<String> = self
                .db(|s| s.instances(None, false))
                .await?
                .into_iter()
                .map(|i| i.env)
                .collect();
            for env in envs {
                self.engine_stop(&env, "molt stopped with --stop-instances")
                    .await?;
            }
            return Ok(());
        }
        let instances = self.db(|s| s.instances(None, false)).await?;
        self.stop_instances(&instances, "molt stopped with --stop-instances")
            .await
    }
}
