//! Starting deployments: a deploy request or a config change becomes release *vN* and a
//! deployment in state `pending`, whose task is then launched.

use std::collections::BTreeMap;

use molt_core::{AppName, EnvVarName, InputError, Manifest, RunConfig};
use molt_store::{DeploymentRecord, ReleaseRecord};
use serde::{Deserialize, Serialize};

use super::active::Takeover;
use crate::{parse_app, ControlError, Controller, Result};

/// A request to deploy: a manifest (`molt.toml` text) with an image or another app's release
/// (`from`), or an existing release.
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
    /// Promotion across stages: deploy the exact image of another app's release (`APP` for
    /// its newest, or `APP@vN`) with this request's manifest, instead of an image.
    #[serde(default)]
    pub from: Option<String>,
    /// What the release records as its origin (a `git push` names its commit); not part of
    /// the API's request, which records "deploy".
    #[serde(skip)]
    pub note: Option<String>,
}

impl Controller {
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
                let (a, mut config) = (app.to_string(), manifest.config);
                match (req.image.clone(), &req.from) {
                    (Some(image), None) => {
                        let digest = self.resolve_image_record(&image).await?.digest;
                        let app_key = config.deploy.require_signature.clone();
                        self.check_signature(digest.as_str(), app_key.as_deref())
                            .await?;
                        let note = req.note.clone().unwrap_or_else(|| "deploy".into());
                        self.db(move |s| {
                            let img = s.resolve_image(&image)?;
                            config.secrets = crate::secrets::current_versions(s, &a)?;
                            s.create_release(&a, &img.digest, &config, &note)
                        })
                        .await?
                    }
                    (None, Some(from)) => {
                        let (source, number) = parse_from(from)?;
                        let release = self
                            .db(move |s| match number {
                                Some(n) => s.release(&source, n),
                                None => s.latest_release(&source)?.ok_or_else(|| {
                                    molt_store::StoreError::NotFound {
                                        what: "release of app",
                                        key: source.clone(),
                                    }
                                }),
                            })
                            .await?;
                        let app_key = config.deploy.require_signature.clone();
                        self.check_signature(release.image.as_str(), app_key.as_deref())
                            .await?;
                        self.db(move |s| {
                            let note = format!("promoted from {}@v{}", release.app, release.number);
                            config.secrets = crate::secrets::current_versions(s, &a)?;
                            s.create_release(&a, &release.image, &config, &note)
                        })
                        .await?
                    }
                    _ => {
                        return Err(InputError::Invalid(
                            "a deploy with a manifest needs an image, or another app's release \
                             to promote (from)"
                                .into(),
                        )
                        .into())
                    }
                }
            }
            (None, Some(n)) if req.image.is_none() && req.from.is_none() => {
                let a = app.to_string();
                let release = self.db(move |s| s.release(&a, n)).await?;
                let app_key = release.config.deploy.require_signature.as_deref();
                self.check_signature(release.image.as_str(), app_key)
                    .await?;
                release
            }
            _ => {
                return Err(InputError::Invalid(
                    "give either an image with a manifest, or a release number alone".into(),
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

    /// Takes the app over, then records a deployment of `release` (a shadow deployment with
    /// `shadow_share`) and launches it.
    pub(crate) async fn start_deployment(
        &self,
        release: &ReleaseRecord,
        shadow_share: Option<u32>,
    ) -> Result<DeploymentRecord> {
        let takeover = self.take_over(&release.app).await;
        self.start_deployment_as(&takeover, release, shadow_share)
            .await
    }

    /// Records a deployment of `release` and launches it, for an action that has taken its app
    /// over already.
    pub(crate) async fn start_deployment_as(
        &self,
        takeover: &Takeover,
        release: &ReleaseRecord,
        shadow_share: Option<u32>,
    ) -> Result<DeploymentRecord> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ControlError::ShuttingDown);
        }
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
        self.launch_deployment(takeover, rec.clone());
        Ok(rec)
    }

    /// Takes `app` over: its running deployment steps aside first (see
    /// [`super::active::ActiveDeployments::take_over`]).
    pub(crate) async fn take_over(&self, app: &str) -> Takeover {
        self.inner.active.take_over(app).await
    }

    /// Starts the task that drives deployment `rec` of the app taken over.
    pub(crate) fn launch_deployment(&self, takeover: &Takeover, rec: DeploymentRecord) {
        debug_assert_eq!(takeover.app(), rec.app);
        let cancel = self.inner.shutdown.child_token();
        let mut registration = self.inner.active.register(takeover, rec.id, cancel);
        let this = self.clone();
        self.spawn(async move {
            let id = registration.id;
            if let Err(e) = this.drive(&mut registration).await {
                tracing::error!(deployment = id, "deployment stopped: {e}");
            }
            this.inner.active.end(registration);
        });
    }
}

/// `APP` or `APP@vN` (the `v` optional): the app and the release number, if one is named.
fn parse_from(text: &str) -> Result<(String, Option<u64>)> {
    let (app, number) = match text.split_once('@') {
        Some((app, n)) => {
            let digits = n.strip_prefix('v').unwrap_or(n);
            let number = digits.parse::<u64>().map_err(|_| {
                InputError::Invalid(format!(
                    "'{text}' names no release: use APP or APP@vN, e.g. shop-staging@v12"
                ))
            })?;
            (app, Some(number))
        }
        None => (text, None),
    };
    Ok((parse_app(app)?.to_string(), number))
}
