//! Keeping what runs equal to what the store says: recovery after a restart, health checks of
//! ready environments, replacement of dead or unhealthy instances.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use molt_core::deployment::resumed_at_restart;
use molt_core::Recovery;
use molt_provider::InstanceStatus;
use molt_store::{EnvState, InstanceRecord, InstanceState, ReleaseRecord};

use crate::health::CheckFailure;
use crate::instances::{handle_of, instance_addr};
use crate::scale::{at_most, parallelism};
use crate::{Controller, Result};

/// How often the reconciler looks at instances.
const TICK: Duration = Duration::from_millis(100);

/// Per-instance health bookkeeping, kept in memory.
#[derive(Default)]
struct Streak {
    successes: u32,
    failures: u32,
    next_check: Option<Instant>,
}

impl Controller {
    /// Recovers after a (re)start — adopts or forgets instances, stops orphans, rebuilds the
    /// route table, resumes unfinished deployments — then starts the background loops.
    pub async fn start(&self) -> Result<()> {
        self.recover().await?;
        let this = self.clone();
        self.spawn(async move { this.reconcile_loop().await });
        let this = self.clone();
        self.spawn(async move { this.gc_loop().await });
        let this = self.clone();
        self.spawn(async move { this.autoscale_loop().await });
        let this = self.clone();
        self.spawn(async move { this.log_rotation_loop().await });
        // Image trees are checked where instances run from them: on this machine only.
        let local = self.engine().is_none();
        if let Some(interval) = self.inner.config.verify_interval.filter(|_| local) {
            let this = self.clone();
            self.spawn(async move { this.verify_loop(interval).await });
        }
        Ok(())
    }

    async fn recover(&self) -> Result<()> {
        if self.engine().is_some() {
            // The engine's instances were never this process's children: look at them again,
            // and remove what the engine runs for this molt that nothing reaches any more.
            if let Err(e) = self.engine_recover().await {
                tracing::warn!("could not look at the engine's environments at start: {e}");
            }
        } else {
            self.recover_local().await?;
        }
        self.resume().await
    }

    /// Adopts the instance processes that still run, forgets the others, stops orphans and
    /// what retired environments left.
    async fn recover_local(&self) -> Result<()> {
        let instances = self.db(|s| s.instances(None, false)).await?;
        let mut adopted = 0;
        for inst in &instances {
            let alive = handle_of(inst).is_some_and(|h| self.inner.provider.adopt(&inst.id, h));
            if alive {
                adopted += 1;
            } else {
                let id = inst.id.clone();
                self.db(move |s| {
                    s.set_instance_state(
                        &id,
                        InstanceState::Stopped,
                        Some("lost while molt was down"),
                    )
                })
                .await?;
            }
        }
        tracing::info!(adopted, "instances re-adopted after start");
        self.stop_orphans(false).await?;
        // Instances a scale-down was draining when molt stopped: out of the table already.
        for inst in instances
            .iter()
            .filter(|i| i.state == InstanceState::Stopping)
        {
            self.stop_instance(inst, "scaled down (finished after a restart)")
                .await?;
        }
        // Instances of retired environments that outlived a crash during teardown.
        for env in self.db(|s| s.envs(None, true)).await? {
            if env.state == EnvState::Retired {
                let id = env.id.clone();
                for inst in self.db(move |s| s.instances(Some(&id), false)).await? {
                    self.stop_instance(&inst, "its environment is retired")
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Rebuilds the route table from the store and resumes the newest unfinished deployment
    /// of each app (older ones are superseded).
    async fn resume(&self) -> Result<()> {
        self.publish_routes().await?;
        let unfinished = self.db(|s| s.unfinished_deployments()).await?;
        let resumed = resumed_at_restart(unfinished.iter().map(|d| (d.app.as_str(), d.id)));
        for d in unfinished {
            if d.state.recovery() == Recovery::Finished {
                continue;
            }
            if !resumed.contains(&d.id) {
                // An older deployment that a newer one had superseded when molt stopped.
                self.leave(
                    &d,
                    molt_core::DeployEvent::Superseded,
                    "superseded (found at restart)",
                    None,
                )
                .await?;
                if d.state.is_before_swap() {
                    if let Some(env) = &d.env {
                        self.retire_env(env, "its deployment was superseded")
                            .await?;
                    }
                }
                continue;
            }
            tracing::info!(deployment = d.id, state = %d.state, "resuming deployment");
            self.event(
                &d.app,
                "resume",
                &format!("resuming deployment {} from step {}", d.id, d.state),
            )
            .await;
            let takeover = self.take_over(&d.app).await;
            self.launch_deployment(&takeover, d);
        }
        Ok(())
    }

    async fn reconcile_loop(&self) {
        let mut streaks: HashMap<String, Streak> = HashMap::new();
        let shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            if let Err(e) = self.reconcile_once(&mut streaks).await {
                tracing::warn!("reconcile: {e}");
            }
        }
    }

    /// One pass over every ready environment.
    async fn reconcile_once(&self, streaks: &mut HashMap<String, Streak>) -> Result<()> {
        let _guard = self.inner.reconcile_lock.lock().await;
        let envs = self.db(|s| s.envs(None, false)).await?;
        let mut changed = false;
        let mut seen = Vec::new();
        for env in envs.into_iter().filter(|e| e.state == EnvState::Ready) {
            if self.engine().is_some() {
                changed |= self.reconcile_engine_env(&env, streaks, &mut seen).await?;
                continue;
            }
            let (app, number, id) = (env.app.clone(), env.release, env.id.clone());
            let (release, instances) = self
                .db(move |s| Ok((s.release(&app, number)?, s.instances(Some(&id), false)?)))
                .await?;
            seen.extend(instances.iter().map(|i| i.id.clone()));
            // Every instance is checked at once: one slow or hanging instance does not delay
            // the others' verdicts.
            let release = &release;
            let checks = instances
                .into_iter()
                // Leaving (scaled down): drained and stopped by its own task.
                .filter(|inst| inst.state != InstanceState::Stopping)
                .map(|inst| {
                    let mut streak = streaks.remove(&inst.id).unwrap_or_default();
                    async move {
                        // Left by a repair that failed or was cut short by a restart: it takes
                        // no traffic (the table never routes a drifted instance): replaced.
                        let verdict = if inst.state == InstanceState::Drifted {
                            Ok(Verdict::Replace("ran on a drifted image tree".into()))
                        } else {
                            self.check_instance(&inst, release, &mut streak).await
                        };
                        (inst, streak, verdict)
                    }
                });
            let checked = at_most(parallelism(), checks).await;
            let mut staying = Vec::new();
            for (inst, streak, verdict) in checked {
                streaks.insert(inst.id.clone(), streak);
                match verdict? {
                    Verdict::Keep { state_changed } => {
                        staying.push(inst);
                        changed |= state_changed;
                    }
                    Verdict::Replace(why) => {
                        changed = true;
                        self.stop_instance(&inst, &why).await?;
                        self.event(
                            &env.app,
                            "instance",
                            &format!("{} {why}; replacing it", inst.id),
                        )
                        .await;
                    }
                }
            }
            self.fit_count(&env, release, staying).await?;
        }
        streaks.retain(|id, _| seen.contains(id));
        if changed {
            self.publish_routes().await?;
        }
        Ok(())
    }

    /// One pass over a ready environment on an engine: its instances as the engine reports
    /// them, and their health (the engine starts and replaces tasks; an instance that stays
    /// unhealthy is kept out of the route table). Whether the route table must change.
    async fn reconcile_engine_env(
        &self,
        env: &molt_store::EnvRecord,
        streaks: &mut HashMap<String, Streak>,
        seen: &mut Vec<String>,
    ) -> Result<bool> {
        let look = self.engine_look(&env.id).await?;
        let mut changed = look.changed;
        let (app, number, id) = (env.app.clone(), env.release, env.id.clone());
        let (release, instances) = self
            .db(move |s| Ok((s.release(&app, number)?, s.instances(Some(&id), false)?)))
            .await?;
        for inst in instances {
            seen.push(inst.id.clone());
            let streak = streaks.entry(inst.id.clone()).or_default();
            match self.judge_health(&inst, &release, streak).await? {
                Verdict::Keep { state_changed } => changed |= state_changed,
                Verdict::Replace(why) => {
                    if inst.state != InstanceState::Unhealthy {
                        let id = inst.id.clone();
                        self.db(move |s| s.set_instance_state(&id, InstanceState::Unhealthy, None))
                            .await?;
                        self.event(
                            &env.app,
                            "instance",
                            &format!(
                                "{} {why}; out of the route table until it answers (the engine \
                                 replaces it if its process ends)",
                                inst.id
                            ),
                        )
                        .await;
                        changed = true;
                    }
                }
            }
        }
        Ok(changed)
    }

    async fn check_instance(
        &self,
        inst: &InstanceRecord,
        release: &ReleaseRecord,
        streak: &mut Streak,
    ) -> Result<Verdict> {
        let status = self.process_status(inst);
        if status != InstanceStatus::Running {
            return Ok(Verdict::Replace(self.describe_end(inst, &status)));
        }
        self.judge_health(inst, release, streak).await
    }

    /// Runs the instance's health check when it is due and judges the streak: keep (maybe with
    /// a new state), or replace.
    async fn judge_health(
        &self,
        inst: &InstanceRecord,
        release: &ReleaseRecord,
        streak: &mut Streak,
    ) -> Result<Verdict> {
        let health = &release.config.health;
        let now = Instant::now();
        if streak.next_check.is_some_and(|t| t > now) {
            return Ok(Verdict::Keep {
                state_changed: false,
            });
        }
        streak.next_check = Some(now + health.interval);
        let result = self
            .probe_instance(instance_addr(inst), &health.path, health.timeout)
            .await;
        let next_state = match result {
            Ok(()) => {
                streak.successes += 1;
                streak.failures = 0;
                (streak.successes >= health.healthy_threshold).then_some(InstanceState::Healthy)
            }
            Err(CheckFailure::Unknown(why)) => {
                tracing::debug!(instance = %inst.id, "health unknown: {why}");
                None
            }
            Err(CheckFailure::Unhealthy(why)) => {
                streak.successes = 0;
                streak.failures += 1;
                tracing::debug!(instance = %inst.id, "health check failed: {why}");
                if streak.failures >= 2 * health.unhealthy_threshold {
                    return Ok(Verdict::Replace(format!("stayed unhealthy ({why})")));
                }
                let starting_too_long = inst.state == InstanceState::Starting
                    && self.now_ms().saturating_sub(inst.started_ms)
                        > health.start_deadline.as_millis() as u64;
                if starting_too_long {
                    return Ok(Verdict::Replace(format!(
                        "not healthy within its start deadline ({why})"
                    )));
                }
                (streak.failures >= health.unhealthy_threshold).then_some(InstanceState::Unhealthy)
            }
        };
        match next_state {
            Some(state) if state != inst.state => {
                let id = inst.id.clone();
                self.db(move |s| s.set_instance_state(&id, state, None))
                    .await?;
                if state == InstanceState::Unhealthy {
                    self.event(
                        &inst.app,
                        "instance",
                        &format!("{} turned unhealthy", inst.id),
                    )
                    .await;
                }
                Ok(Verdict::Keep {
                    state_changed: true,
                })
            }
            _ => Ok(Verdict::Keep {
                state_changed: false,
            }),
        }
    }
}

enum Verdict {
    Keep { state_changed: bool },
    Replace(String),
}
