//! The operations the API exposes: deploy, config, swap, rollback and the read-only views.

use std::collections::BTreeMap;
use std::time::Instant;

use molt_core::{AppName, EnvVarName, InputError, Manifest, RunConfig};
use molt_store::{
    AppRecord, DeploymentRecord, EnvRecord, EnvState, EventRecord, ImageRecord, InstanceRecord,
    InstanceState, JournalEntry, MaintenanceMode, ReleaseRecord,
};
use serde::{Deserialize, Serialize};

use crate::{ControlError, Controller, Result};

/// A request to deploy: an image plus either a manifest (`molt.toml` text) or an existing release.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DeployRequest {
    /// Image digest or tag; required with `manifest`.
    #[serde(default)]
    pub image: Option<String>,
    /// The text of `molt.toml`.
    #[serde(default)]
    pub manifest: Option<String>,
    /// Redeploy an existing release number instead.
    #[serde(default)]
    pub release: Option<u64>,
    /// A shadow deployment: once healthy, mirror this percentage (1–100) of the app's
    /// GET/HEAD/OPTIONS requests to the new environment instead of swapping, until it is
    /// promoted or abandoned.
    #[serde(default)]
    pub shadow: Option<u32>,
}

/// What a swap did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapOutcome {
    /// The app.
    pub app: String,
    /// Where the route pointed before.
    pub from: Option<String>,
    /// Where it points now.
    pub to: String,
    /// The release now serving.
    pub release: u64,
    /// From the request to the route in force, in microseconds.
    pub elapsed_us: u64,
}

/// What a rollback did: a warm swap, or a cold redeploy when nothing warm was left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackOutcome {
    /// `warm` (one route change) or `cold` (a new deployment of an old release).
    pub kind: String,
    /// The release rolled back to.
    pub release: u64,
    /// The swap, for a warm rollback.
    pub swap: Option<SwapOutcome>,
    /// The deployment, for a cold rollback.
    pub deployment: Option<DeploymentRecord>,
}

/// One app's state for `molt status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    /// The app record.
    pub app: AppRecord,
    /// The release being served, if routed.
    pub serving: Option<ReleaseRecord>,
    /// URLs that reach it through the router.
    pub hostnames: Vec<String>,
    /// Live environments with their instances.
    pub envs: Vec<EnvStatus>,
    /// The latest deployment.
    pub last_deployment: Option<DeploymentRecord>,
}

/// An environment with its instances and traffic counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvStatus {
    /// The environment record.
    pub env: EnvRecord,
    /// True when the app's route points here.
    pub routed: bool,
    /// Its live instances.
    pub instances: Vec<InstanceRecord>,
    /// Requests accepted by the router for it since molt started.
    pub requests: u64,
    /// Requests currently in flight.
    pub in_flight: u64,
    /// Router-made errors for it since molt started.
    pub failed: u64,
    /// What its instances attest to (image, release, environment, rootfs digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<crate::Attestation>,
}

/// The whole picture for `molt status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Provider isolation level ("none" for plain processes).
    pub isolation: String,
    /// Every app.
    pub apps: Vec<AppStatus>,
}

impl Controller {
    /// Imports an image tar already on disk (a tree, OCI or Docker archive, told apart by its
    /// members) and optionally tags it; a tag never moves here.
    pub async fn import_image(
        &self,
        archive: std::path::PathBuf,
        tag: Option<String>,
    ) -> Result<ImageRecord> {
        let options = crate::ImportOptions {
            tag,
            ..Default::default()
        };
        Ok(self.import_image_file(archive, options).await?.image)
    }

    /// Every stored image.
    pub async fn images(&self) -> Result<Vec<ImageRecord>> {
        self.db(|s| s.images()).await
    }

    /// Creates a release from the request and starts deploying it; returns the new deployment
    /// (in state `pending`). A deployment of the same app still running is superseded.
    pub async fn deploy(&self, app: &str, req: DeployRequest) -> Result<DeploymentRecord> {
        let app = parse_app(app)?;
        if let Some(share) = req.shadow {
            self.check_shadow_deploy(&app, share).await?;
        }
        let release = match (&req.manifest, req.release) {
            (Some(text), None) => {
                let manifest = Manifest::parse(text, "molt.toml")?;
                if manifest.name != app {
                    return Err(InputError::Invalid(format!(
                        "molt.toml names app '{}' but the request is for '{app}'",
                        manifest.name
                    ))
                    .into());
                }
                let image = req.image.clone().ok_or_else(|| {
                    InputError::Invalid("a deploy with a manifest needs an image".into())
                })?;
                let (a, config) = (app.to_string(), manifest.config);
                self.db(move |s| {
                    let img = s.resolve_image(&image)?;
                    s.create_release(&a, &img.digest, &config, "deploy")
                })
                .await?
            }
            (None, Some(n)) => {
                let a = app.to_string();
                self.db(move |s| s.release(&a, n)).await?
            }
            _ => {
                return Err(InputError::Invalid(
                    "give either an image with a manifest, or a release number".into(),
                )
                .into())
            }
        };
        self.start_deployment(&release, req.shadow).await
    }

    /// A shadow deployment needs a share in 1–100 and something serving to mirror from.
    async fn check_shadow_deploy(&self, app: &AppName, share: u32) -> Result<()> {
        if !(1..=100).contains(&share) {
            return Err(InputError::Invalid(format!(
                "shadow share must be 1 to 100 (percent), not {share}"
            ))
            .into());
        }
        let a = app.to_string();
        let routed = self
            .db(move |s| Ok(s.app(&a).ok().and_then(|a| a.routed_env)))
            .await?;
        if routed.is_none() {
            return Err(ControlError::Conflict(format!(
                "nothing serves {app} yet, so there is no traffic to mirror: deploy without --shadow first"
            )));
        }
        Ok(())
    }

    /// Records a deployment of `release` (a shadow deployment with `shadow_share`) and
    /// launches it.
    pub(crate) async fn start_deployment(
        &self,
        release: &ReleaseRecord,
        shadow_share: Option<u32>,
    ) -> Result<DeploymentRecord> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ControlError::ShuttingDown);
        }
        self.supersede_active(&release.app).await;
        let (app, number) = (release.app.clone(), release.number);
        let rec = self
            .db(move |s| {
                let prev = s.app(&app).ok().and_then(|a| a.routed_env);
                s.create_deployment(&app, number, prev.as_deref(), shadow_share)
            })
            .await?;
        self.event(
            &rec.app,
            "deploy",
            &format!("deployment {} of v{number} started", rec.id),
        )
        .await;
        self.launch_deployment(rec.clone()).await;
        Ok(rec)
    }

    /// Makes a new release with environment variables set or removed, and deploys it.
    pub async fn config_set(
        &self,
        app: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) -> Result<DeploymentRecord> {
        let app = parse_app(app)?;
        let mut parsed_set = BTreeMap::new();
        for (k, v) in set {
            parsed_set.insert(k.parse::<EnvVarName>()?, v);
        }
        let parsed_unset = unset
            .iter()
            .map(|k| k.parse::<EnvVarName>())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if parsed_set.is_empty() && parsed_unset.is_empty() {
            return Err(InputError::Invalid(
                "nothing to change: give KEY=VALUE or --unset KEY".into(),
            )
            .into());
        }
        let a = app.to_string();
        let release = self
            .db(move |s| {
                let latest = s
                    .latest_release(&a)?
                    .ok_or(molt_store::StoreError::NotFound {
                        what: "release of app",
                        key: a.clone(),
                    })?;
                let mut config: RunConfig = latest.config.clone();
                let mut changed = Vec::new();
                for (k, v) in parsed_set {
                    changed.push(k.to_string());
                    config.env.insert(k, v);
                }
                for k in parsed_unset {
                    changed.push(format!("-{k}"));
                    config.env.remove(&k);
                }
                let note = format!("config set {}", changed.join(" "));
                s.create_release(&a, &latest.image, &config, &note)
            })
            .await?;
        self.start_deployment(&release, None).await
    }

    /// Points an app's route at one of its live, ready environments: one atomic route change.
    pub async fn swap(&self, app: &str, env: &str) -> Result<SwapOutcome> {
        let app = parse_app(app)?.to_string();
        let a = app.clone();
        let newest = self
            .db(move |s| Ok(s.deployments(Some(&a), 1)?.into_iter().next()))
            .await?;
        if let Some(d) = newest.filter(|d| {
            d.state == molt_core::DeployState::Shadowing && d.env.as_deref() == Some(env)
        }) {
            // Superseding it would retire the very environment asked for.
            return Err(ControlError::Conflict(format!(
                "{env} is the shadow environment of deployment {}: promote it with \
                 `molt promote {app}` (it swaps, then drains and watches like any deployment)",
                d.id
            )));
        }
        self.supersede_active(&app).await;
        self.swap_to(&app, env, "swap").await
    }

    pub(crate) async fn swap_to(&self, app: &str, env: &str, kind: &str) -> Result<SwapOutcome> {
        let started = Instant::now();
        let lock = self.app_lock(app);
        let _guard = lock.lock().await;
        let (a, e) = (app.to_string(), env.to_string());
        let (target, instances) = self
            .db(move |s| Ok((s.env(&e)?, s.instances(Some(&e), false)?)))
            .await?;
        if target.app != app {
            return Err(ControlError::NotFound(format!(
                "environment '{env}' is not one of {app}'s"
            )));
        }
        if target.state != EnvState::Ready
            || !instances.iter().any(|i| i.state == InstanceState::Healthy)
        {
            return Err(ControlError::Conflict(format!(
                "environment {env} is not ready to take traffic (state {:?}, no healthy instance)",
                target.state
            )));
        }
        let window_release = target.release;
        let e = env.to_string();
        let from = self
            .db(move |s| {
                let window = s.release(&a, window_release)?.config.deploy.rollback_window;
                s.swap_route(&a, &e, None, Some(window.as_millis() as u64))
            })
            .await?;
        self.publish_routes().await?;
        let elapsed_us = started.elapsed().as_micros() as u64;
        let msg = format!(
            "route moved from {} to {env} (v{}) in {:.2} ms",
            from.as_deref().unwrap_or("nothing"),
            target.release,
            elapsed_us as f64 / 1000.0
        );
        self.event(app, kind, &msg).await;
        Ok(SwapOutcome {
            app: app.to_string(),
            from,
            to: env.to_string(),
            release: target.release,
            elapsed_us,
        })
    }

    /// Rolls back to `to` (default: the most recently swapped-out warm environment). Warm:
    /// one route change. Cold (nothing warm runs that release): a new deployment of it.
    pub async fn rollback(&self, app: &str, to: Option<u64>) -> Result<RollbackOutcome> {
        let app = parse_app(app)?.to_string();
        self.supersede_active(&app).await;
        let a = app.clone();
        let (current, envs, releases) = self
            .db(move |s| {
                Ok((
                    s.app(&a)?.routed_env,
                    s.envs(Some(&a), false)?,
                    s.releases(Some(&a))?,
                ))
            })
            .await?;
        let current_release = current
            .as_ref()
            .and_then(|c| envs.iter().find(|e| &e.id == c))
            .map(|e| e.release);
        let target_release = match to {
            Some(n) => n,
            None => {
                let warm = envs
                    .iter()
                    .filter(|e| Some(&e.id) != current.as_ref() && e.state == EnvState::Ready)
                    .max_by_key(|e| e.warm_until_ms.unwrap_or(0));
                match (warm, current_release) {
                    (Some(e), _) => e.release,
                    (None, Some(cur)) => releases
                        .iter()
                        .map(|r| r.number)
                        .filter(|n| *n < cur)
                        .max()
                        .ok_or_else(|| {
                            ControlError::Conflict(format!(
                                "{app} has no release before v{cur} to roll back to"
                            ))
                        })?,
                    (None, None) => {
                        return Err(ControlError::Conflict(format!(
                            "{app} has nothing deployed to roll back from"
                        )))
                    }
                }
            }
        };
        if Some(target_release) == current_release {
            return Err(ControlError::Conflict(format!(
                "{app} already serves v{target_release}"
            )));
        }
        let release = releases
            .iter()
            .find(|r| r.number == target_release)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("release v{target_release} of {app} not found"))
            })?;
        let warm_env = envs
            .iter()
            .filter(|e| e.release == target_release && e.state == EnvState::Ready)
            .max_by_key(|e| e.warm_until_ms.unwrap_or(0));
        if let Some(env) = warm_env {
            if let Ok(swap) = self.swap_to(&app, &env.id, "rollback").await {
                return Ok(RollbackOutcome {
                    kind: "warm".into(),
                    release: target_release,
                    swap: Some(swap),
                    deployment: None,
                });
            }
        }
        let image = release.image.clone();
        let present = self.inner.images.contains(&image);
        if !present {
            return Err(ControlError::Conflict(format!(
                "v{target_release} is no longer warm and its image {} was collected: deploy it again from source",
                image.short()
            )));
        }
        let deployment = self.start_deployment(&release, None).await?;
        self.event(&app, "rollback", &format!("cold rollback to v{target_release}: nothing warm runs it, redeploying (deployment {})", deployment.id)).await;
        Ok(RollbackOutcome {
            kind: "cold".into(),
            release: target_release,
            swap: None,
            deployment: Some(deployment),
        })
    }

    /// Puts an app in maintenance mode (its hostnames answer 503 with `Retry-After`) or takes
    /// it out (`None`). Instances keep running; preview hostnames keep working.
    pub async fn set_maintenance(
        &self,
        app: &str,
        mode: Option<MaintenanceMode>,
    ) -> Result<AppRecord> {
        let a = parse_app(app)?.to_string();
        let on = mode.is_some();
        let rec = self
            .db(move |s| s.set_maintenance(&a, mode.as_ref()))
            .await?;
        self.publish_routes().await?;
        let msg = if on {
            "maintenance mode on: hostnames answer 503"
        } else {
            "maintenance mode off"
        };
        self.event(app, "maintenance", msg).await;
        Ok(rec)
    }

    /// Pins or unpins a release (pinned releases are never collected).
    pub async fn pin(&self, app: &str, release: u64, pinned: bool) -> Result<()> {
        let a = parse_app(app)?.to_string();
        self.db(move |s| s.set_pinned(&a, release, pinned)).await
    }

    /// Everything `molt status` shows.
    pub async fn status(&self, only: Option<String>) -> Result<Status> {
        let router = self.inner.router.clone();
        let this = self.clone();
        let apps = self
            .db(move |s| {
                let mut out = Vec::new();
                for app in s.apps()? {
                    if only.as_ref().is_some_and(|o| o != &app.name) {
                        continue;
                    }
                    let mut envs = Vec::new();
                    for env in s.envs(Some(&app.name), false)? {
                        let stats = router.env_stats(&env.id);
                        let release = s.release(&app.name, env.release)?;
                        envs.push(EnvStatus {
                            routed: app.routed_env.as_deref() == Some(env.id.as_str()),
                            instances: s.instances(Some(&env.id), false)?,
                            requests: stats.accepted,
                            in_flight: stats.in_flight,
                            failed: stats.failed,
                            attestation: Some(this.attestation(&env, &release)),
                            env,
                        });
                    }
                    let serving = match app.routed_env.as_deref() {
                        Some(e) => Some(s.release(&app.name, s.env(e)?.release)?),
                        None => None,
                    };
                    let mut hostnames =
                        vec![format!("{}.{}", app.name, crate::routes::LOCAL_SUFFIX)];
                    if let Some(r) = &serving {
                        hostnames.extend(r.config.hostnames.iter().map(|h| h.to_string()));
                    }
                    out.push(AppStatus {
                        last_deployment: s.deployments(Some(&app.name), 1)?.into_iter().next(),
                        app,
                        serving,
                        hostnames,
                        envs,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(Status {
            isolation: self.isolation().to_string(),
            apps,
        })
    }

    /// An app's record; errors when it does not exist.
    pub async fn app(&self, app: &str) -> Result<AppRecord> {
        let a = app.to_string();
        self.db(move |s| s.app(&a)).await
    }

    /// Releases of an app, newest first.
    pub async fn releases(&self, app: &str) -> Result<Vec<ReleaseRecord>> {
        self.app(app).await?;
        let a = app.to_string();
        self.db(move |s| s.releases(Some(&a))).await
    }

    /// Environments of an app, newest first.
    pub async fn envs(&self, app: &str, with_retired: bool) -> Result<Vec<EnvRecord>> {
        self.app(app).await?;
        let a = app.to_string();
        self.db(move |s| s.envs(Some(&a), with_retired)).await
    }

    /// Deployments of an app (all apps when `None`), newest first.
    pub async fn deployments(
        &self,
        app: Option<String>,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>> {
        self.db(move |s| s.deployments(app.as_deref(), limit)).await
    }

    /// One deployment with its journal.
    pub async fn deployment(&self, id: u64) -> Result<(DeploymentRecord, Vec<JournalEntry>)> {
        self.db(move |s| Ok((s.deployment(id)?, s.journal(id)?)))
            .await
    }

    /// An app's history, newest first.
    pub async fn events(&self, app: Option<String>, limit: usize) -> Result<Vec<EventRecord>> {
        self.db(move |s| s.events(app.as_deref(), limit)).await
    }

    /// The last `lines` lines of each of an app's live instances (or of one instance).
    pub async fn logs(
        &self,
        app: &str,
        instance: Option<String>,
        lines: usize,
    ) -> Result<Vec<(String, String)>> {
        self.app(app).await?;
        let a = app.to_string();
        let instances = self
            .db(move |s| {
                let mut all = Vec::new();
                for env in s.envs(Some(&a), false)? {
                    all.extend(s.instances(Some(&env.id), true)?);
                }
                Ok(all)
            })
            .await?;
        let mut out = Vec::new();
        for inst in instances {
            if instance.as_ref().is_some_and(|i| i != &inst.id) {
                continue;
            }
            if instance.is_none() && inst.state == InstanceState::Stopped {
                continue;
            }
            out.push((inst.id.clone(), self.log_tail(&inst.id, lines).await));
        }
        if let Some(i) = instance {
            if out.is_empty() {
                return Err(ControlError::NotFound(format!(
                    "instance '{i}' of {app} not found"
                )));
            }
        }
        Ok(out)
    }
}

fn parse_app(app: &str) -> Result<AppName> {
    Ok(app.parse::<AppName>()?)
}
