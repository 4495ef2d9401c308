//! Verified immutability: every image tree is checked against the manifest recorded when it
//! was unpacked — before its first instance starts, every `verify_interval`, and on demand
//! (`molt verify`). A drifted tree is set aside and unpacked again from the verified blobs,
//! and the instances that ran on it are replaced: new instances start on the clean tree, and
//! once they are healthy the drifted ones leave the route table and are stopped.
//!
//! Instances attest `{image digest, release, environment, rootfs digest}` (see
//! [`Attestation`]); the rootfs digest is the one recorded at unpack, shown once verified.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use molt_core::Digest;
use molt_store::{EnvRecord, EnvState, InstanceState, ReleaseRecord};
use serde::{Deserialize, Serialize};

use crate::instances::instance_addr;
use crate::{Controller, Result};

/// What an environment's instances attest to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The image (OCI manifest digest) the instances booted from.
    pub image: Digest,
    /// The release number.
    pub release: u64,
    /// The environment.
    pub env: String,
    /// Digest of the unpacked tree as recorded at unpack; `None` until verified once.
    pub rootfs_digest: Option<Digest>,
    /// `verified`, `drifted` (being replaced) or `unverified`.
    pub state: String,
    /// How the instances are isolated.
    pub isolation: String,
}

/// The outcome of verifying one image tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The image.
    pub image: Digest,
    /// The rootfs digest recorded at unpack.
    pub rootfs_digest: Digest,
    /// True when the tree is exactly as unpacked.
    pub intact: bool,
    /// What drifted (paths edited, added, removed), when not intact.
    pub drift: Option<String>,
    /// Environments (`app/env`) running this image.
    pub envs: Vec<String>,
    /// Instances replaced because they ran on the drifted tree.
    pub replaced: Vec<String>,
}

/// In-memory verification state of image trees.
#[derive(Default)]
pub(crate) struct Verified {
    /// Rootfs digest of every image verified intact since molt started.
    rootfs: HashMap<Digest, Digest>,
    /// Images whose tree drifted and whose instances are being replaced.
    drifted: HashMap<Digest, String>,
}

impl Controller {
    /// Verifies the trees of every image a live environment runs (of `app`, or of all apps),
    /// repairing and replacing what drifted.
    pub async fn verify(&self, app: Option<String>) -> Result<Vec<VerifyReport>> {
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
        self.verified().rootfs.remove(image);
        self.verified()
            .drifted
            .insert(image.clone(), summary.clone());
        let mut apps: Vec<&str> = users.iter().map(|(e, _)| e.app.as_str()).collect();
        apps.dedup();
        for app in &apps {
            self.event(
                app,
                "drift",
                &format!(
                    "the unpacked tree of image {image} drifted ({summary}); re-unpacking it \
                     and replacing its instances"
                ),
            )
            .await;
        }
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
        let mut failure = None;
        for (env, release) in users {
            if env.state != EnvState::Ready {
                continue;
            }
            match self.replace_drifted(env, release, &summary).await {
                Ok(replaced) => report.replaced.extend(replaced),
                Err(e) => failure = Some(e),
            }
        }
        self.verified().drifted.remove(image);
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Replaces every instance of `env`: new ones start on the clean tree; once they pass a
    /// health check the old ones leave the route table (published) and are stopped.
    async fn replace_drifted(
        &self,
        env: &EnvRecord,
        release: &ReleaseRecord,
        summary: &str,
    ) -> Result<Vec<String>> {
        let _guard = self.inner.reconcile_lock.lock().await;
        let env_id = env.id.clone();
        let old = self.db(move |s| s.instances(Some(&env_id), false)).await?;
        let health = &release.config.health;
        let mut fresh = Vec::new();
        for _ in 0..release.config.instances {
            let inst = self.start_instance(&env.id, release).await?;
            fresh.push(inst);
        }
        for inst in &fresh {
            let deadline = Instant::now() + health.start_deadline;
            loop {
                let check = self
                    .inner
                    .health
                    .check(instance_addr(inst), &health.path, health.timeout)
                    .await;
                if check.is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(crate::ControlError::Internal(format!(
                        "replacement {} of a drifted instance did not become healthy: {}",
                        inst.id,
                        check.err().unwrap_or_default()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let id = inst.id.clone();
            self.db(move |s| s.set_instance_state(&id, InstanceState::Healthy, None))
                .await?;
        }
        for inst in &old {
            let id = inst.id.clone();
            self.db(move |s| s.set_instance_state(&id, InstanceState::Stopping, None))
                .await?;
        }
        // From here on the router sends nothing to the drifted instances.
        self.publish_routes().await?;
        let mut replaced = Vec::new();
        for inst in &old {
            self.stop_instance(inst, &format!("its image tree drifted ({summary})"))
                .await?;
            replaced.push(inst.id.clone());
        }
        let names: Vec<&str> = fresh.iter().map(|i| i.id.as_str()).collect();
        self.event(
            &env.app,
            "drift",
            &format!(
                "replaced {} in {} by {} (clean tree)",
                replaced.join(", "),
                env.id,
                names.join(", ")
            ),
        )
        .await;
        Ok(replaced)
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

    fn verified(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
