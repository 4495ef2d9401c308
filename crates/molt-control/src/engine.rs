//! Environments on an engine that runs instances across machines (Docker Swarm): the engine
//! places, restarts and addresses the instances; molt pushes the release's image to the
//! registry the engine's nodes pull from, asks for the environment as one unit, and records
//! what the engine reports.
//!
//! An instance record is kept per running task (its id derived from the task's), with the
//! address the engine gave it; a task that ends is recorded as stopped with the engine's
//! words, and the engine starts its replacement. Health checks go through the fleet's routers
//! (the instances live on the engine's network). An instance that turns unhealthy leaves the
//! route table; the engine replaces it only if its process ends (molt cannot signal a task on
//! another machine).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use molt_core::DeployEvent;
use molt_provider::{Engine, EngineInstanceState, EnvironmentSpec, RootLayout};
use molt_registry::Credentials;
use molt_store::{DeploymentRecord, EnvState, ReleaseRecord};
use tokio_util::sync::CancellationToken;

use crate::deployment::steps::Interrupted;
use crate::health::LastFailure;
use crate::instances::root_layout;
use crate::{ControlError, Controller, Result};

/// The port instances listen on when `molt.toml` fixes none.
const ENGINE_PORT: u16 = 8080;
/// Tasks that may end while an environment starts before the deployment gives up (per
/// instance it asks for): the engine keeps restarting a program that cannot start.
const ENDED_TASKS_PER_INSTANCE: usize = 3;

/// An engine molt runs environments on, and the registry its nodes pull images from.
#[derive(Clone)]
pub struct EngineSetup {
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// `host[:port]` of the registry (every node must reach it).
    pub registry: String,
    /// Repository prefix under the registry: app `shop` goes to `<registry>/<prefix>/shop`.
    pub repository: String,
    /// Credentials for the registry, if it asks for them.
    pub credentials: Option<Credentials>,
}

impl std::fmt::Debug for EngineSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSetup")
            .field("engine", &self.engine.name())
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .finish()
    }
}

/// What one look at an environment on the engine found.
#[derive(Debug, Default)]
pub(crate) struct EngineLook {
    /// Instances whose task runs and has an address.
    pub(crate) running: usize,
    /// Whether an instance record was added or stopped.
    pub(crate) changed: bool,
    /// Tasks that ended, with the engine's words (newest last).
    pub(crate) ended: Vec<String>,
}

impl Controller {
    /// The engine environments run on, when there is one.
    pub(crate) fn engine(&self) -> Option<&EngineSetup> {
        self.inner.config.engine.as_ref()
    }

    /// Pushes the release's image to the registry (nodes pull it by digest), then asks the
    /// engine for the environment. Nothing starts when the registry cannot be reached.
    pub(crate) async fn engine_start(&self, env: &str, release: &ReleaseRecord) -> Result<u32> {
        let setup = self.engine().expect("engine mode").clone();
        let env_id = env.to_string();
        let instances = crate::scale::wanted(&self.db(move |s| s.env(&env_id)).await?, release);
        let port = release.config.port.unwrap_or(ENGINE_PORT);
        let mut vars: BTreeMap<String, String> = release
            .config
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        // Secrets: variables in the service's environment (Swarm's raft log is encrypted),
        // files as Docker secrets of the environment. molt's own variables win, as locally.
        let secrets = self.open_secrets(release).await?;
        vars.extend(secrets.vars);
        vars.insert("HOST".into(), "0.0.0.0".into());
        vars.insert("PORT".into(), port.to_string());
        vars.insert("MOLT_APP".into(), release.app.clone());
        vars.insert("MOLT_RELEASE".into(), format!("v{}", release.number));
        vars.insert("MOLT_ENV".into(), env.to_string());
        vars.entry("PATH".into())
            .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
        let command = release.config.expand_command(&vars)?;
        // The image is the whole root of a task: its program must be in it.
        let images = self.inner.images.clone();
        let digest = release.image.clone();
        let rootfs = tokio::task::spawn_blocking(move || images.rootfs(&digest)).await??;
        if root_layout(&command, &rootfs) != RootLayout::OwnRoot {
            return Err(ControlError::Input(molt_core::InputError::Invalid(
                format!(
                    "on {} an image runs as its own root, and {:?} is not a program in it (an \
                 absolute path inside the image is needed): bake the app on a base image that \
                 has what it runs ([build] base in molt.toml), or ship a static binary",
                    setup.engine.name(),
                    command.first().map(String::as_str).unwrap_or_default()
                ),
            )));
        }
        vars.insert("MOLT_INSTANCE".into(), "{{.Task.ID}}".into());
        let repository = format!("{}/{}/{}", setup.registry, setup.repository, release.app);
        let target = format!("{repository}:v{}", release.number);
        molt_registry::push(
            &self.inner.images,
            &release.image,
            &target,
            setup.credentials.as_ref(),
            None,
            // Swarm pulls the image to run it; molt checked its signatures at the deploy.
            &[],
        )
        .await?;
        let spec = EnvironmentSpec {
            env: env.to_string(),
            app: release.app.clone(),
            release: u32::try_from(release.number).unwrap_or(u32::MAX),
            image: format!("{repository}@{}", release.image),
            command,
            env_vars: vars.into_iter().collect(),
            port,
            instances,
            limits: release.config.limits,
            secret_files: secrets.files,
        };
        setup.engine.start_environment(&spec).await?;
        Ok(instances)
    }

    /// Reads the environment's instances from the engine and records them: a running task
    /// gets an instance record (once), a record whose task is gone or ended is stopped.
    pub(crate) async fn engine_look(&self, env: &str) -> Result<EngineLook> {
        let setup = self.engine().expect("engine mode").clone();
        let tasks = setup.engine.instances(env).await?;
        let env_id = env.to_string();
        let records = self.db(move |s| s.instances(Some(&env_id), false)).await?;
        let mut look = EngineLook::default();
        let mut running = HashSet::new();
        for task in &tasks {
            let id = instance_id(env, &task.id);
            match (&task.state, task.addr) {
                (EngineInstanceState::Running, Some(addr)) => {
                    running.insert(id.clone());
                    look.running += 1;
                    if !records.iter().any(|r| r.id == id) {
                        let (env_id, host) = (env.to_string(), addr.ip().to_string());
                        self.db(move |s| {
                            s.record_engine_instance(&env_id, &id, &host, addr.port())
                        })
                        .await?;
                        look.changed = true;
                    }
                }
                (EngineInstanceState::Ended { .. }, _) if !task.message.is_empty() => {
                    look.ended.push(format!("{}: {}", task.id, task.message));
                }
                _ => {}
            }
        }
        for record in records {
            if running.contains(&record.id) {
                continue;
            }
            let why = tasks
                .iter()
                .find(|t| instance_id(env, &t.id) == record.id)
                .map(|t| format!("its task ended ({})", t.message))
                .unwrap_or_else(|| "its task is gone".to_owned());
            self.mark_stopped(&record.id, &why).await?;
            look.changed = true;
        }
        Ok(look)
    }

    /// Waits until the environment's instances on the engine are healthy (checked through the
    /// fleet's routers), as many as the release asks for, within its start deadline.
    pub(crate) async fn engine_wait_healthy(
        &self,
        env: &str,
        release: &ReleaseRecord,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        // After a restart the environment may be missing on the engine: ask again (a no-op
        // when it is there).
        let wanted = self
            .engine_start(env, release)
            .await
            .map_err(|e| Interrupted::Failed(format!("could not start the environment: {e}")))?
            as usize;
        let health = &release.config.health;
        let poll = health.interval.max(Duration::from_millis(100));
        let deadline = Instant::now() + health.start_deadline;
        let mut streak: HashMap<String, u32> = HashMap::new();
        let mut last = LastFailure {
            instance: String::new(),
            why: "no instance is running yet".into(),
        };
        loop {
            let look = self.engine_look(env).await?;
            if look.ended.len() >= ENDED_TASKS_PER_INSTANCE * wanted.max(1) {
                return Err(Interrupted::Failed(format!(
                    "{} instances ended before the environment became healthy; the engine says: {}",
                    look.ended.len(),
                    look.ended.last().map(String::as_str).unwrap_or("nothing")
                )));
            }
            let env_id = env.to_string();
            let instances = self.db(move |s| s.instances(Some(&env_id), false)).await?;
            let healthy = self
                .advance_health(&instances, health, &mut streak, &mut last)
                .await?;
            if healthy >= wanted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let engine_words = look
                    .ended
                    .last()
                    .map(|m| format!("; the engine says: {m}"))
                    .unwrap_or_default();
                return Err(Interrupted::Failed(format!(
                    "not healthy within the start deadline of {} ({healthy} of {wanted} healthy): \
                     last health check failure: {}{engine_words}",
                    molt_core::format_duration(health.start_deadline),
                    if last.instance.is_empty() {
                        last.why.clone()
                    } else {
                        format!("{}: {}", last.instance, last.why)
                    }
                )));
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Removes the environment from the engine and records its instances as stopped.
    pub(crate) async fn engine_stop(&self, env: &str, why: &str) -> Result<()> {
        let setup = self.engine().expect("engine mode").clone();
        setup.engine.stop_environment(env).await?;
        let env_id = env.to_string();
        for inst in self.db(move |s| s.instances(Some(&env_id), false)).await? {
            self.mark_stopped(&inst.id, why).await?;
        }
        Ok(())
    }

    /// Environments the engine runs for this molt that the store does not count as live
    /// (retired, or unknown after a crash): removed unless `dry_run`. Their names.
    pub(crate) async fn engine_orphans(&self, dry_run: bool) -> Result<Vec<String>> {
        let setup = self.engine().expect("engine mode").clone();
        let running = setup.engine.environments().await?;
        let live: HashSet<String> = self
            .db(|s| s.envs(None, false))
            .await?
            .into_iter()
            .filter(|e| e.state != EnvState::Retired)
            .map(|e| e.id)
            .collect();
        let mut orphans = Vec::new();
        for env in running {
            if live.contains(&env.env) {
                continue;
            }
            if !dry_run {
                tracing::warn!(env = %env.env, app = %env.app, "removing an orphaned environment from the engine");
                setup.engine.stop_environment(&env.env).await?;
            }
            orphans.push(env.env);
        }
        Ok(orphans)
    }

    /// A deployment resumed on an engine after a restart: the engine's environment is looked
    /// at again (its instances were never this process's children).
    pub(crate) async fn engine_recover(&self) -> Result<()> {
        for env in self.db(|s| s.envs(None, false)).await? {
            if env.state != EnvState::Retired {
                self.engine_look(&env.id).await?;
            }
        }
        let orphans = self.engine_orphans(false).await?;
        if !orphans.is_empty() {
            tracing::info!(?orphans, "orphaned environments removed from the engine");
        }
        Ok(())
    }

    /// Records that a deployment's environment was asked of the engine.
    pub(crate) async fn engine_started_step(
        &self,
        d: &DeploymentRecord,
        release: &ReleaseRecord,
    ) -> std::result::Result<(), Interrupted> {
        let env = d
            .env
            .clone()
            .ok_or_else(|| Interrupted::Failed("the deployment has no environment".into()))?;
        let instances = self
            .engine_start(&env, release)
            .await
            .map_err(|e| Interrupted::Failed(format!("could not start the environment: {e}")))?;
        let (id, name) = (
            d.id,
            self.engine().map(|s| s.engine.name()).unwrap_or("engine"),
        );
        let detail = format!(
            "{instances} instance(s) of v{} asked of {name}",
            release.number
        );
        self.db(move |s| s.advance(id, DeployEvent::InstancesStarted, &detail))
            .await?;
        Ok(())
    }
}

/// The instance id of an engine's task in `env`.
fn instance_id(env: &str, task: &str) -> String {
    format!("{env}-{}", &task[..task.len().min(12)])
}
