//! The deployment task: drives one deployment through its journaled steps.
//!
//! Each step reads the journaled state, does its (idempotent) work and journals the next state,
//! so a restarted controller resumes a deployment simply by running this task again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use molt_core::{DeployEvent, DeployState};
use molt_provider::InstanceStatus;
use molt_router::EnvStats;
use molt_store::{
    now_ms, CutoverFigures, DeploymentRecord, EnvState, InstanceRecord, InstanceState,
};
use tokio_util::sync::CancellationToken;

use crate::instances::instance_addr;
use crate::shadow::{ShadowBase, ShadowDecision};
use crate::{ActiveDeployment, ControlError, Controller, Result};

/// Why a wait inside a step ended early.
pub(crate) enum Interrupted {
    /// A newer action on the app took over.
    Cancelled,
    /// The step failed, with a message for the user.
    Failed(String),
    /// A control-plane error.
    Error(ControlError),
}

impl From<ControlError> for Interrupted {
    fn from(e: ControlError) -> Self {
        Interrupted::Error(e)
    }
}

impl Controller {
    /// Starts the task that drives deployment `rec`, after superseding whatever deployment of
    /// the same app was still running.
    pub(crate) async fn launch_deployment(&self, rec: DeploymentRecord) {
        self.supersede_active(&rec.app).await;
        let cancel = self.inner.shutdown.child_token();
        let done = Arc::new(tokio::sync::Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let (decisions, mut decided) = tokio::sync::mpsc::channel(1);
        {
            let mut active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            active.insert(
                rec.app.clone(),
                ActiveDeployment {
                    id: rec.id,
                    cancel: cancel.clone(),
                    done: done.clone(),
                    finished: finished.clone(),
                    decisions,
                },
            );
        }
        let this = self.clone();
        self.spawn(async move {
            let id = rec.id;
            if let Err(e) = this.drive(id, &mut decided, &cancel).await {
                tracing::error!(deployment = id, "deployment stopped: {e}");
            }
            finished.store(true, Ordering::SeqCst);
            done.notify_waiters();
            let mut active = this.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            if active.get(&rec.app).is_some_and(|a| a.id == id) {
                active.remove(&rec.app);
            }
        });
    }

    /// Cancels the running deployment of `app`, if any, and waits until it has stepped aside.
    pub(crate) async fn supersede_active(&self, app: &str) {
        let previous = {
            let mut active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            active.remove(app)
        };
        if let Some(prev) = previous {
            let notified = prev.done.notified();
            prev.cancel.cancel();
            if !prev.finished.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(Duration::from_secs(30), notified).await;
            }
        }
    }

    async fn drive(
        &self,
        id: u64,
        decisions: &mut tokio::sync::mpsc::Receiver<ShadowDecision>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let mut baseline: Option<(EnvStats, EnvStats)> = None;
        // Router counters when a shadow deployment started mirroring.
        let mut shadow_base: Option<ShadowBase> = None;
        // Traffic of the previous environment when this task started the deployment (after a
        // restart the router's counters start from zero, which is the right baseline then).
        let mut at_start: Option<EnvStats> = None;
        loop {
            let d = self.db(move |s| s.deployment(id)).await?;
            if at_start.is_none() && d.state == DeployState::Pending {
                at_start = d
                    .prev_env
                    .as_deref()
                    .map(|p| self.inner.router.env_stats(p));
            }
            if d.state.is_terminal() {
                return Ok(());
            }
            if self.inner.config.pause_at == Some(d.state) {
                tracing::warn!(deployment = id, state = %d.state, "paused by MOLT_TEST_PAUSE_AT");
                cancel.cancelled().await;
            }
            if cancel.is_cancelled() {
                if self.inner.shutdown.is_cancelled() {
                    return Ok(());
                }
                return self.step_aside(&d, shadow_base.as_ref()).await;
            }
            let outcome = match d.state {
                DeployState::Pending => self.step_create_env(&d).await,
                DeployState::EnvCreated => self.step_start_instances(&d).await,
                DeployState::InstancesStarted => self.step_wait_healthy(&d, cancel).await,
                DeployState::Healthy if d.shadow_share.is_some() => {
                    self.step_start_shadow(&d, &mut shadow_base).await
                }
                DeployState::Shadowing => {
                    self.step_shadow(&d, shadow_base.as_ref(), decisions, cancel)
                        .await
                }
                DeployState::Healthy | DeployState::Promoted => {
                    self.step_swap(&d, &mut baseline).await
                }
                DeployState::Swapped => {
                    self.step_drain(&d, baseline.take(), at_start.take(), cancel)
                        .await
                }
                DeployState::Drained => self.step_watch(&d, cancel).await,
                _ => return Ok(()),
            };
            match outcome {
                Ok(()) => {}
                Err(Interrupted::Cancelled) => continue,
                Err(Interrupted::Failed(msg)) => {
                    return self.fail(&d, &msg, shadow_base.as_ref()).await
                }
                Err(Interrupted::Error(e)) => {
                    if d.state.is_before_swap() {
                        return self.fail(&d, &e.to_string(), shadow_base.as_ref()).await;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn step_create_env(&self, d: &DeploymentRecord) -> std::result::Result<(), Interrupted> {
        let (app, release, id) = (d.app.clone(), d.release, d.id);
        self.db(move |s| {
            let env = s.create_env(&app, release)?;
            s.attach_env(id, &env.id)
        })
        .await?;
        Ok(())
    }

    async fn step_start_instances(
        &self,
        d: &DeploymentRecord,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number) = (d.app.clone(), d.release);
        let release = self.db(move |s| s.release(&app, number)).await?;
        let live = self.live_instances(&env).await?;
        let missing = (release.config.instances as usize).saturating_sub(live);
        for _ in 0..missing {
            if let Err(e) = self.start_instance(&env, &release).await {
                return Err(Interrupted::Failed(format!(
                    "could not start an instance: {e}"
                )));
            }
        }
        let id = d.id;
        let detail = format!(
            "{} instance(s) of v{number} started",
            release.config.instances
        );
        self.db(move |s| s.advance(id, DeployEvent::InstancesStarted, &detail))
            .await?;
        Ok(())
    }

    /// Counts the environment's instances whose process runs; marks the others stopped.
    async fn live_instances(&self, env: &str) -> Result<usize> {
        let env_id = env.to_string();
        let instances = self.db(move |s| s.instances(Some(&env_id), false)).await?;
        let mut live = 0;
        for inst in instances {
            let status = self.process_status(&inst);
            if status == InstanceStatus::Running {
                live += 1;
            } else {
                self.mark_stopped(&inst.id, &self.describe_end(&inst, &status))
                    .await?;
            }
        }
        Ok(live)
    }

    async fn step_wait_healthy(
        &self,
        d: &DeploymentRecord,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number) = (d.app.clone(), d.release);
        let release = self.db(move |s| s.release(&app, number)).await?;
        // After a restart some instances may have been lost: top the environment up first.
        let live = self.live_instances(&env).await?;
        for _ in live..release.config.instances as usize {
            if let Err(e) = self.start_instance(&env, &release).await {
                return Err(Interrupted::Failed(format!(
                    "could not start an instance: {e}"
                )));
            }
        }
        let health = &release.config.health;
        let poll = health.interval.min(Duration::from_millis(25));
        let deadline = Instant::now() + health.start_deadline;
        let mut streak: HashMap<String, u32> = HashMap::new();
        let mut last_failure = String::from("no check has completed yet");
        let mut last_instance = String::new();
        loop {
            let env_id = env.clone();
            let instances = self.db(move |s| s.instances(Some(&env_id), false)).await?;
            if instances.is_empty() {
                return Err(Interrupted::Failed(
                    "the environment has no instance left".into(),
                ));
            }
            let mut healthy = 0;
            for inst in &instances {
                let status = self.process_status(inst);
                if status != InstanceStatus::Running {
                    let msg = format!("instance {} {} before it became healthy", inst.id, {
                        self.describe_end(inst, &status)
                    });
                    return Err(Interrupted::Failed(self.with_log_tail(&inst.id, msg).await));
                }
                if inst.state == InstanceState::Healthy {
                    healthy += 1;
                    continue;
                }
                match self
                    .inner
                    .health
                    .check(instance_addr(inst), &health.path, health.timeout)
                    .await
                {
                    Ok(()) => {
                        let n = streak.entry(inst.id.clone()).or_default();
                        *n += 1;
                        if *n >= health.healthy_threshold {
                            let id = inst.id.clone();
                            self.db(move |s| {
                                s.set_instance_state(&id, InstanceState::Healthy, None)
                            })
                            .await?;
                            healthy += 1;
                        }
                    }
                    Err(why) => {
                        streak.insert(inst.id.clone(), 0);
                        last_failure = why;
                        last_instance = inst.id.clone();
                    }
                }
            }
            if healthy >= release.config.instances as usize {
                break;
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "not healthy within the start deadline of {}: last health check failure: {last_failure}",
                    molt_core::format_duration(health.start_deadline)
                );
                let msg = if last_instance.is_empty() {
                    msg
                } else {
                    self.with_log_tail(&last_instance, msg).await
                };
                return Err(Interrupted::Failed(msg));
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                _ = tokio::time::sleep(poll) => {}
            }
        }
        let (id, env_id) = (d.id, env.clone());
        self.db(move |s| {
            s.set_env_state(&env_id, EnvState::Ready)?;
            s.advance(
                id,
                DeployEvent::BecameHealthy,
                &format!("{env_id} is healthy"),
            )
        })
        .await?;
        // The preview hostname starts answering as soon as the environment is ready.
        self.publish_routes().await?;
        Ok(())
    }

    async fn step_swap(
        &self,
        d: &DeploymentRecord,
        baseline: &mut Option<(EnvStats, EnvStats)>,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number) = (d.app.clone(), d.release);
        let release = self.db(move |s| s.release(&app, number)).await?;
        let lock = self.app_lock(&d.app);
        let _guard = lock.lock().await;
        let (app, id, env_id) = (d.app.clone(), d.id, env.clone());
        let window = release.config.deploy.rollback_window;
        let previous = self
            .db(move |s| {
                let detail = format!("route {app} -> {env_id}");
                let step = Some((id, DeployEvent::Swapped, detail.as_str()));
                s.swap_route(&app, &env_id, step, Some(window.as_millis() as u64))
            })
            .await?;
        let router = &self.inner.router;
        let prev_stats = previous
            .as_deref()
            .map(|p| router.env_stats(p))
            .unwrap_or_default();
        *baseline = Some((router.env_stats(&env), prev_stats));
        self.publish_routes().await?;
        let msg = match &previous {
            Some(p) => format!("v{} is live: route moved from {p} to {env}", d.release),
            None => format!("v{} is live on {env}", d.release),
        };
        self.event(&d.app, "swap", &msg).await;
        Ok(())
    }

    async fn step_drain(
        &self,
        d: &DeploymentRecord,
        baseline: Option<(EnvStats, EnvStats)>,
        at_start: Option<EnvStats>,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number, id) = (d.app.clone(), d.release, d.id);
        let release = self.db(move |s| s.release(&app, number)).await?;
        let journal = self.db(move |s| s.journal(id)).await?;
        let swap_at = journal
            .iter()
            .rev()
            .find(|j| j.state == DeployState::Swapped)
            .map(|j| j.at_ms)
            .unwrap_or_else(now_ms);
        let router = self.inner.router.clone();
        if let Some(prev) = d.prev_env.as_deref() {
            let deadline = Instant::now() + release.config.deploy.drain_timeout;
            while router.env_stats(prev).in_flight > 0 && Instant::now() < deadline {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        }
        let (base_new, base_prev) = baseline.unwrap_or_default();
        let now_new = router.env_stats(&env);
        let now_prev = d
            .prev_env
            .as_deref()
            .map(|p| router.env_stats(p))
            .unwrap_or_default();
        let start = at_start.unwrap_or_default();
        let figures = CutoverFigures {
            served: delta(now_new.answered, base_new.answered)
                + delta(now_prev.answered, base_prev.answered),
            failed: delta(now_new.failed, base_new.failed)
                + delta(now_prev.failed, base_prev.failed),
            swap_at_ms: swap_at,
            to_swap_ms: swap_at.saturating_sub(d.created_ms),
            drain_ms: now_ms().saturating_sub(swap_at),
            deploy_served: now_new.answered + delta(now_prev.answered, start.answered),
            deploy_failed: now_new.failed + delta(now_prev.failed, start.failed),
        };
        let detail = format!(
            "drained: served {}, failed {} during cutover",
            figures.served, figures.failed
        );
        self.db(move |s| {
            s.set_figures(id, &figures)?;
            s.advance(id, DeployEvent::DrainFinished, &detail)
        })
        .await?;
        Ok(())
    }

    async fn step_watch(
        &self,
        d: &DeploymentRecord,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number, id) = (d.app.clone(), d.release, d.id);
        let release = self.db(move |s| s.release(&app, number)).await?;
        let swap_at = d.figures.map(|f| f.swap_at_ms).unwrap_or(d.updated_ms);
        let watch_end = swap_at + release.config.deploy.watch.as_millis() as u64;
        let mut warned = false;
        // The reconciler updates instance health; look often so a swap back is quick.
        let poll = release
            .config
            .health
            .interval
            .min(Duration::from_millis(50));
        while now_ms() < watch_end {
            tokio::select! {
                _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                _ = tokio::time::sleep(poll) => {}
            }
            let env_id = env.clone();
            let instances = self.db(move |s| s.instances(Some(&env_id), false)).await?;
            // Drifted instances are being replaced (their requests wait for the replacements):
            // not a reason to swap back.
            let serving = |i: &InstanceRecord| {
                matches!(i.state, InstanceState::Healthy | InstanceState::Drifted)
            };
            if instances.iter().any(serving) {
                continue;
            }
            match self.warm_previous(d).await? {
                Some(prev) => return self.swap_back(d, &env, &prev).await,
                None if !warned => {
                    warned = true;
                    let msg = format!(
                        "{env} has no healthy instance and no warm environment to swap back to"
                    );
                    self.event(&d.app, "unhealthy", &msg).await;
                }
                None => {}
            }
        }
        let detail = format!("healthy through the watch window; {env} serves v{number}");
        self.db(move |s| s.advance(id, DeployEvent::WatchPassed, &detail))
            .await?;
        Ok(())
    }

    /// The previous environment, if it is still warm and has a healthy instance.
    async fn warm_previous(&self, d: &DeploymentRecord) -> Result<Option<String>> {
        let Some(prev) = d.prev_env.clone() else {
            return Ok(None);
        };
        let p = prev.clone();
        let (env, instances) = self
            .db(move |s| Ok((s.env(&p)?, s.instances(Some(&p), false)?)))
            .await?;
        let healthy = instances.iter().any(|i| i.state == InstanceState::Healthy);
        Ok((env.state == EnvState::Ready && healthy).then_some(prev))
    }

    async fn swap_back(
        &self,
        d: &DeploymentRecord,
        env: &str,
        prev: &str,
    ) -> std::result::Result<(), Interrupted> {
        let lock = self.app_lock(&d.app);
        let _guard = lock.lock().await;
        let (app, id, prev_id) = (d.app.clone(), d.id, prev.to_string());
        let why = format!("{env} turned unhealthy during the watch window; swapped back to {prev}");
        let detail = why.clone();
        self.db(move |s| {
            s.swap_route(
                &app,
                &prev_id,
                Some((id, DeployEvent::WatchFailed, &detail)),
                None,
            )?;
            s.set_deployment_error(id, &detail)
        })
        .await?;
        self.publish_routes().await?;
        self.event(&d.app, "auto-rollback", &why).await;
        Ok(())
    }

    /// A cancelled deployment steps aside: before the swap its environment is torn down; after
    /// it, the environment stays (it serves) and only the watch ends.
    async fn step_aside(&self, d: &DeploymentRecord, shadow: Option<&ShadowBase>) -> Result<()> {
        let id = d.id;
        let before_swap = d.state.is_before_swap();
        self.leave(
            d,
            DeployEvent::Superseded,
            "superseded by a newer action",
            shadow,
        )
        .await?;
        if before_swap {
            if let Some(env) = &d.env {
                self.retire_env(env, "its deployment was superseded")
                    .await?;
            }
        }
        self.event(&d.app, "superseded", &format!("deployment {id} superseded"))
            .await;
        Ok(())
    }

    async fn fail(
        &self,
        d: &DeploymentRecord,
        msg: &str,
        shadow: Option<&ShadowBase>,
    ) -> Result<()> {
        let (id, m) = (d.id, msg.to_string());
        self.db(move |s| s.set_deployment_error(id, &m)).await?;
        self.leave(
            d,
            DeployEvent::HealthFailed,
            "failed before the swap; traffic untouched",
            shadow,
        )
        .await?;
        if let Some(env) = &d.env {
            self.retire_env(env, "its deployment failed").await?;
        }
        let first = msg.lines().next().unwrap_or_default();
        self.event(
            &d.app,
            "deploy-failed",
            &format!("deployment {id} failed: {first}"),
        )
        .await;
        Ok(())
    }

    /// Journals `event`; for a shadow deployment, the mirroring is stopped in the same
    /// transaction, and out of `shadowing` the shadow phase's comparison is recorded too.
    pub(crate) async fn leave(
        &self,
        d: &DeploymentRecord,
        event: DeployEvent,
        detail: &str,
        shadow: Option<&ShadowBase>,
    ) -> Result<()> {
        let (id, text) = (d.id, detail.to_string());
        if d.state == DeployState::Shadowing {
            self.leave_shadowing(d, event, detail, shadow).await?;
        } else if d.shadow_share.is_some() && d.state.is_before_swap() {
            // Mirroring may have been set just before `shadowing` would have been journaled.
            self.db(move |s| s.end_shadow(id, event, &text, None))
                .await?;
            self.publish_routes().await?;
        } else {
            self.db(move |s| s.advance(id, event, &text)).await?;
        }
        Ok(())
    }

    /// Records a line of the app's history; failures to record are logged, not fatal.
    pub(crate) async fn event(&self, app: &str, kind: &str, message: &str) {
        tracing::info!(app, kind, "{message}");
        let (a, k, m) = (app.to_string(), kind.to_string(), message.to_string());
        if let Err(e) = self.db(move |s| s.record_event(&a, &k, &m)).await {
            tracing::warn!("could not record event: {e}");
        }
    }
}

/// Growth of a monotonic counter since `base` (zero if the counter restarted).
fn delta(now: u64, base: u64) -> u64 {
    now.saturating_sub(base)
}

pub(crate) fn env_of(d: &DeploymentRecord) -> Result<String> {
    d.env.clone().ok_or_else(|| {
        ControlError::Internal(format!(
            "deployment {} is in state {} without an environment",
            d.id, d.state
        ))
    })
}
