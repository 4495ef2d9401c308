//! Read-only views for the API and the CLI: status, releases, environments, deployments and
//! their journals, history, logs, and live next to shadow traffic. Nothing here changes state.

use molt_store::{
    AppRecord, DeploymentRecord, EnvRecord, EventRecord, ImageRecord, InstanceState, JournalEntry,
    ReleaseRecord,
};
use molt_wire::{AppStatus, ClusterStatus, EngineStatus, EnvStatus, ShadowReport, Status};

use crate::traffic::summarize;
use crate::{parse_app, ControlError, Controller, Result};

impl Controller {
    /// Every stored image.
    pub async fn images(&self) -> Result<Vec<ImageRecord>> {
        self.db(|s| s.images()).await
    }

    /// The routers of the fleet and where instances run.
    pub async fn cluster(&self) -> Result<ClusterStatus> {
        let (provider, engine) = match self.engine() {
            Some(setup) => (
                setup.engine.name().to_owned(),
                Some(EngineStatus {
                    nodes: setup.engine.nodes().await?,
                    environments: setup.engine.environments().await?,
                }),
            ),
            None => (self.inner.provider.name().to_owned(), None),
        };
        Ok(ClusterStatus {
            routers: self.inner.config.fleet.status(),
            provider,
            engine,
        })
    }

    /// Everything `molt status` shows.
    pub async fn status(&self, only: Option<String>) -> Result<Status> {
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
                        let stats = this.env_stats(&env.id);
                        let release = s.release(&app.name, env.release)?;
                        envs.push(EnvStatus {
                            desired: crate::scale::wanted(&env, &release),
                            routed: app.routed_env.as_deref() == Some(env.id.as_str()),
                            instances: s.instances(Some(&env.id), false)?,
                            requests: stats.accepted,
                            in_flight: stats.in_flight,
                            failed: stats.failed,
                            traffic: Some(crate::traffic::summarize(
                                &env.id,
                                &this.env_live_traffic(&env.id),
                            )),
                            attestation: Some(this.attestation(&env, &release)),
                            env,
                        });
                    }
                    let serving = match app.routed_env.as_deref() {
                        Some(e) => Some(s.release(&app.name, s.env(e)?.release)?),
                        None => None,
                    };
                    let mut hostnames =
                        vec![format!("{}.{}", app.name, crate::table::LOCAL_SUFFIX)];
                    if let Some(r) = &serving {
                        hostnames.extend(r.config.hostnames.iter().map(|h| h.to_string()));
                    }
                    out.push(AppStatus {
                        scaling: this.scaling_status(&app, serving.as_ref()),
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
        let a = crate::parse_app(app)?.to_string();
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

    /// The app's live traffic next to its shadow environment's mirrored traffic.
    pub async fn shadow_report(&self, app: &str) -> Result<ShadowReport> {
        let app: String = parse_app(app)?.to_string();
        let a = app.clone();
        let rec = self.db(move |s| s.app(&a)).await?;
        let router = &self.inner.router;
        let live = rec
            .routed_env
            .as_ref()
            .map(|env| summarize(env, &router.env_traffic(env).live));
        let shadow = rec
            .shadow
            .as_ref()
            .map(|m| summarize(&m.env, &router.env_traffic(&m.env).shadow));
        Ok(ShadowReport {
            app,
            mode: rec.shadow,
            live,
            shadow,
        })
    }
}
