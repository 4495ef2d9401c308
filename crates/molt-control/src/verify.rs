//! Verified immutability: every image tree is checked against the manifest recorded when it
//! was unpacked — before its first instance starts, every `verify_interval`, and on demand
//! (`molt verify`). On drift, the instances that run on the tree are marked `drifted` in the
//! store and leave the route table at once (their environment *held*: requests wait for the
//! replacements, bounded, instead of failing); the tree is set aside and unpacked again from
//! the verified blobs; new instances start on it and take traffic once healthy (ending the
//! hold); the drifted ones are stopped once drained.
//!
//! Instances attest `{image digest, release, environment, rootfs digest}` (see
//! [`Attestation`]); the rootfs digest is the one recorded at unpack, shown once verified.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use molt_core::Digest;
use molt_provider::InstanceStatus;
use molt_store::{EnvRecord, EnvState, InstanceRecord, InstanceState, ReleaseRecord};
use molt_wire::{Attestation, VerifyReport};

use crate::instances::instance_addr;
use crate::{ControlError, Controller, Result};

/// In-memory verification state of image trees.
#[derive(Default)]
pub(crate) struct Verified {
    /// Rootfs digest of every image verified intact since molt started.
    rootfs: HashMap<Digest, Digest>,
    /// Images whose tree drifted and whose instances are being replaced.
    drifted: HashMap<Digest, String>,
    /// Environments whose instances all drifted and are being replaced: requests for them
    /// wait (until this instant at most) for the replacements instead of failing.
    holds: HashMap<String, Instant>,
}

/// One environment whose instances drifted.
struct Repair<'a> {
    env: &'a EnvRecord,
    release: &'a ReleaseRecord,
    /// Its instances, marked `drifted` in the store.
    drifted: Vec<InstanceRecord>,
}

impl Controller {
    /// Verifies the trees of every image a live environment runs (of `app`, or of all apps),
    /// repairing and replacing what drifted.
    pub async fn verify(&self, app: Option<String>) -> Result<Vec<VerifyReport>> {
        if let Some(setup) = self.engine() {
            return Err(ControlError::Conflict(format!(
                "molt verify checks the image trees of instances on this machine; on {} the \
                 nodes pull each image by its digest and the engine checks it",
                setup.engine.name()
            )));
        }
        let _one_at_a_time = self.inner.verify_lock.lock().await;
        let envs = self.db(|s| s.envs(None, false)).await?;
        let mut by_image: BTreeMap<Digest, Vec<(EnvRecord, ReleaseRecord)>> = BTreeMap::new();
        for env in envs {
            if app.as_ref().is_some_and(|a| *a != env.app) {
                continue;
            }
            if matches!(env.state, EnvState::Retired) {
                continue;
            }
            let (a, n) = (env.app.clone(), env.release);
            let release = self.db(move |s| s.release(&a, n)).await?;
            by_image
                .entry(release.image.clone())
                .or_default()
                .push((env, release));
        }
        let mut reports = Vec::new();
        for (image, users) in by_image {
            reports.push(self.verify_image(&image, &users).await?);
        }
        let images = self.inner.images.clone();
        tokio::task::spawn_blocking(move || images.discard_set_aside()).await??;
        Ok(reports)
    }

    /// Verifies one image's tree; on drift re-unpacks it and replaces the instances of `users`.
    async fn verify_image(
        &self,
        image: &Digest,
        users: &[(EnvRecord, ReleaseRecord)],
    ) -> Result<VerifyReport> {
        let images = self.inner.images.clone();
        let digest = image.clone();
        let verification =
            tokio::task::spawn_blocking(move || images.verify_rootfs(&digest)).await??;
        let mut report = VerifyReport {
            image: image.clone(),
            rootfs_digest: verification.expected.clone(),
            intact: verification.is_intact(),
            drift: None,
            envs: users
                .iter()
                .map(|(e, _)| format!("{}/{}", e.app, e.id))
                .collect(),
            replaced: Vec::new(),
        };
        if verification.is_intact() {
            self.verified()
                .rootfs
                .insert(image.clone(), verification.expected);
            return Ok(report);
        }
        let summary = verification.summary();
        report.drift = Some(summary.clone());
        {
            let mut verified = self.verified();
            verified.rootfs.remove(image);
            verified.drifted.insert(image.clone(), summary.clone());
        }
        // No reconcile pass acts on these instances while they are replaced.
        let _guard = self.inner.reconcile_lock.lock().await;
        let mut repairs = Vec::new();
        let mut marked = Ok(());
        for (env, release) in users.iter().filter(|(e, _)| e.state == EnvState::Ready) {
            let id = env.id.clone();
            let drifted = match self.db(move |s| s.mark_drifted(&id)).await {
                Ok(drifted) => drifted,
                Err(e) => {
                    marked = Err(e);
                    break;
                }
            };
            let hold = (self.inner.config.drift_hold).min(release.config.health.start_deadline);
            self.verified()
                .holds
                .insert(env.id.clone(), Instant::now() + hold);
            repairs.push(Repair {
                env,
                release,
                drifted,
            });
        }
        let mut apps: Vec<&str> = users.iter().map(|(e, _)| e.app.as_str()).collect();
        apps.sort_unstable();
        apps.dedup();
        let outcome = async {
            marked?;
            // From here on the router sends nothing to a drifted instance.
            self.publish_routes().await?;
            for app in &apps {
                self.event(
                    app,
                    "drift",
                    &format!(
                        "the unpacked tree of image {image} drifted ({summary}); its \
                         instances take no more traffic; re-unpacking it and replacing them"
                    ),
                )
                .await;
            }
            self.repair(image, &repairs, &summary).await
        }
        .await;
        // Whatever happened, no hold outlives the repair.
        let released = {
            let mut verified = self.verified();
            repairs
                .iter()
                .filter(|r| verified.holds.remove(&r.env.id).is_some())
                .count()
        };
        let republished = match released {
            0 => Ok(()),
            _ => self.publish_routes().await.map(drop),
        };
        if let (Err(e), true) = (&outcome, released > 0) {
            for app in &apps {
                self.event(
                    app,
                    "drift",
                    &format!(
                        "repairing image {image} failed: {e}; its drifted instances take no \
                         traffic (503) until the reconciler replaces them"
                    ),
                )
                .await;
            }
        }
        self.verified().drifted.remove(image);
        report.replaced = outcome?;
        republished?;
        Ok(report)
    }

    /// Replaces the drifted instances of `repairs` (marked `drifted` in the store and out of
    /// the published table, their environments held): the tree is re-unpacked, replacements
    /// start, each environment's are published as soon as they are healthy (ending its hold),
    /// and the drifted instances are stopped once drained. Returns the instances stopped. An
    /// environment whose replacements fail is released from its hold with an event; the
    /// reconcile loop then replaces what is missing.
    async fn repair(
        &self,
        image: &Digest,
        repairs: &[Repair<'_>],
        summary: &str,
    ) -> Result<Vec<String>> {
        let images = self.inner.images.clone();
        let digest = image.clone();
        let repaired = tokio::task::spawn_blocking(move || {
            images.reunpack(&digest)?;
            images.verify_rootfs(&digest)
        })
        .await??;
        if !repaired.is_intact() {
            return Err(crate::ControlError::Internal(format!(
                "image {image} still differs from its manifest after re-unpacking: {}",
                repaired.summary()
            )));
        }
        self.verified()
            .rootfs
            .insert(image.clone(), repaired.expected.clone());
        // Every replacement starts before any is waited for: environments sharing the image
        // come back together.
        let mut started = Vec::new();
        for r in repairs {
            let mut fresh = Vec::new();
            let mut failure = None;
            let count = crate::scale::wanted(r.env, r.release) as usize;
            for outcome in self.start_instances(&r.env.id, r.release, count).await {
                match outcome {
                    Ok(inst) => fresh.push(inst),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            started.push((fresh, failure));
        }
        let mut failure = None;
        for (r, (fresh, start_failure)) in repairs.iter().zip(started) {
            let outcome = match start_failure {
                Some(e) => Err(e),
                None => self.wait_healthy(&fresh, r.release).await,
            };
            self.verified().holds.remove(&r.env.id);
            self.publish_routes().await?;
            match outcome {
                Ok(()) => {
                    let names: Vec<&str> = fresh.iter().map(|i| i.id.as_str()).collect();
                    let old: Vec<&str> = r.drifted.iter().map(|i| i.id.as_str()).collect();
                    self.event(
                        &r.env.app,
                        "drift",
                        &format!(
                            "replaced {} in {} by {} (clean tree)",
                            old.join(", "),
                            r.env.id,
                            names.join(", ")
                        ),
                    )
                    .await;
                }
                Err(e) => {
                    self.event(
                        &r.env.app,
                        "drift",
                        &format!(
                            "could not replace the drifted instances of {}: {e}; it has no \
                             instance taking traffic (503) until new ones are healthy",
                            r.env.id
                        ),
                    )
                    .await;
                    failure = Some(e);
                }
            }
        }
        let mut replaced = Vec::new();
        for r in repairs {
            let drain_timeout = r.release.config.deploy.drain_timeout;
            let deadline = Instant::now() + drain_timeout;
            for inst in &r.drifted {
                let addr = instance_addr(inst);
                while !self.inner.router.is_upstream_drained(addr) {
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            instance = %inst.id,
                            "still serving requests after {drain_timeout:?}; stopping it anyway"
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                self.stop_instance(inst, &format!("its image tree drifted ({summary})"))
                    .await?;
                replaced.push(inst.id.clone());
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(replaced),
        }
    }

    /// Waits until each of `fresh` passes a health check (within the release's
    /// `start_deadline`), then records it healthy.
    async fn wait_healthy(&self, fresh: &[InstanceRecord], release: &ReleaseRecord) -> Result<()> {
        let health = &release.config.health;
        for inst in fresh {
            let deadline = Instant::now() + health.start_deadline;
            loop {
                let check = self
                    .probe_instance(instance_addr(inst), &health.path, health.timeout)
                    .await;
                let why = match check {
                    Ok(()) => break,
                    Err(why) => why.to_string(),
                };
                let status = self.process_status(inst);
                if status != InstanceStatus::Running {
                    let msg = format!(
                        "replacement {} {} before it became healthy",
                        inst.id,
                        self.describe_end(inst, &status)
                    );
                    return Err(crate::ControlError::Internal(
                        self.with_log_tail(&inst.id, msg).await,
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(crate::ControlError::Internal(format!(
                        "replacement {} did not become healthy within {:?}: {why}",
                        inst.id, health.start_deadline
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let id = inst.id.clone();
            self.db(move |s| s.set_instance_state(&id, InstanceState::Healthy, None))
                .await?;
        }
        Ok(())
    }

    /// Verifies `image`'s tree before its first instance starts (once per image and run of
    /// molt); a drifted tree is re-unpacked first.
    pub(crate) async fn verify_before_start(&self, app: &str, image: &Digest) -> Result<()> {
        if self.verified().rootfs.contains_key(image) {
            return Ok(());
        }
        let images = self.inner.images.clone();
        let digest = image.clone();
        let verification =
            tokio::task::spawn_blocking(move || images.verify_rootfs(&digest)).await??;
        if verification.is_intact() {
            self.verified()
                .rootfs
                .insert(image.clone(), verification.expected);
            return Ok(());
        }
        self.event(
            app,
            "drift",
            &format!(
                "the unpacked tree of image {image} drifted before it was started ({}); \
                 re-unpacking it",
                verification.summary()
            ),
        )
        .await;
        let images = self.inner.images.clone();
        let digest = image.clone();
        let repaired = tokio::task::spawn_blocking(move || {
            images.reunpack(&digest)?;
            images.verify_rootfs(&digest)
        })
        .await??;
        if repaired.is_intact() {
            self.verified()
                .rootfs
                .insert(image.clone(), repaired.expected);
        }
        Ok(())
    }

    /// What the instances of `env` (running `release`) attest to.
    pub(crate) fn attestation(&self, env: &EnvRecord, release: &ReleaseRecord) -> Attestation {
        let verified = self.verified();
        let rootfs_digest = verified.rootfs.get(&release.image).cloned();
        let state = if verified.drifted.contains_key(&release.image) {
            "drifted"
        } else if rootfs_digest.is_some() {
            "verified"
        } else {
            "unverified"
        };
        Attestation {
            image: release.image.clone(),
            release: release.number,
            env: env.id.clone(),
            rootfs_digest,
            state: state.to_string(),
            isolation: self.isolation().to_string(),
        }
    }

    /// Runs [`Controller::verify`] every `interval` until shutdown (the first pass at once).
    pub(crate) async fn verify_loop(&self, interval: Duration) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            if let Err(e) = self.verify(None).await {
                tracing::warn!("verify: {e}");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// The environments held right now, for the route table.
    /// Environments whose requests wait for their next instances (until the instant): those
    /// whose drifted instances are being replaced, and those being woken from zero.
    pub(crate) fn holds(&self) -> HashMap<String, Instant> {
        let mut holds = self.verified().holds.clone();
        for (env, until) in self.wake_holds() {
            let at = holds.entry(env).or_insert(until);
            *at = (*at).max(until);
        }
        holds
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
