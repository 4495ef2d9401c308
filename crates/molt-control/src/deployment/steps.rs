//! The steps of a deployment, one per journaled state: create the environment, start its
//! instances, wait for health, swap, drain, watch. Each is idempotent and journals the next
//! state (the shadow phase's steps are in `shadow.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use molt_core::watch::{self, Look, Verdict};
use molt_core::{DeployEvent, DeployState};
use molt_provider::InstanceStatus;
use molt_router::EnvStats;
use molt_store::{CutoverFigures, DeploymentRecord, EnvState, InstanceState};
use tokio_util::sync::CancellationToken;

use crate::health::LastFailure;
use crate::{ControlError, Controller, Result};

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

/// How many instances of one environment start may be replaced because another program took
/// the port molt picked for them (see `wait_local_healthy`).
const PORT_RETRIES: u32 = 3;

impl Controller {
    pub(crate) async fn step_create_env(
        &self,
        d: &DeploymentRecord,
    ) -> std::result::Result<(), Interrupted> {
        let (app, release, id) = (d.app.clone(), d.release, d.id);
        self.db(move |s| {
            let count = starting_count(s, &app, release)?;
            let env = s.create_env(&app, release, count)?;
            s.attach_env(id, &env.id)
        })
        .await?;
        Ok(())
    }

    pub(crate) async fn step_start_instances(
        &self,
        d: &DeploymentRecord,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number) = (d.app.clone(), d.release);
        let release = self.db(move |s| s.release(&app, number)).await?;
        if self.engine().is_some() {
            return self.engine_started_step(d, &release).await;
        }
        let want = self.wanted_of(&env, &release).await?;
        self.top_up(&env, &release, want).await?;
        let id = d.id;
        let detail = format!("{want} instance(s) of v{number} started");
        self.db(move |s| s.advance(id, DeployEvent::InstancesStarted, &detail))
            .await?;
        Ok(())
    }

    /// The count the environment should have.
    async fn wanted_of(&self, env: &str, release: &molt_store::ReleaseRecord) -> Result<u32> {
        let id = env.to_string();
        let rec = self.db(move |s| s.env(&id)).await?;
        Ok(crate::scale::wanted(&rec, release))
    }

    /// Starts, all at once, what the environment lacks of `want` running instances.
    async fn top_up(
        &self,
        env: &str,
        release: &molt_store::ReleaseRecord,
        want: u32,
    ) -> std::result::Result<(), Interrupted> {
        let live = self.live_instances(env).await?;
        let missing = (want as usize).saturating_sub(live);
        let started = self.start_instances(env, release, missing).await;
        if let Some(e) = started.into_iter().find_map(|r| r.err()) {
            return Err(Interrupted::Failed(format!(
                "could not start an instance: {e}"
            )));
        }
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

    pub(crate) async fn step_wait_healthy(
        &self,
        d: &DeploymentRecord,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number) = (d.app.clone(), d.release);
        let release = self.db(move |s| s.release(&app, number)).await?;
        if self.engine().is_some() {
            self.engine_wait_healthy(&env, &release, cancel).await?;
        } else {
            self.wait_local_healthy(&env, &release, cancel).await?;
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

    /// Starts what is missing of the environment on this machine and waits until the
    /// release's count of instances is healthy, within its start deadline.
    async fn wait_local_healthy(
        &self,
        env: &str,
        release: &molt_store::ReleaseRecord,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        let env = env.to_string();
        // After a restart some instances may have been lost: top the environment up first.
        let want = self.wanted_of(&env, release).await?;
        self.top_up(&env, release, want).await?;
        let health = &release.config.health;
        let poll = health.interval.min(Duration::from_millis(25));
        let deadline = Instant::now() + health.start_deadline;
        let mut streak: HashMap<String, u32> = HashMap::new();
        let mut last = LastFailure {
            instance: String::new(),
            why: "no check has completed yet".into(),
        };
        let mut port_retries = 0;
        'check: loop {
            let env_id = env.clone();
            let instances = self.db(move |s| s.instances(Some(&env_id), false)).await?;
            if instances.is_empty() {
                return Err(Interrupted::Failed(
                    "the environment has no instance left".into(),
                ));
            }
            for inst in &instances {
                let status = self.process_status(inst);
                if status != InstanceStatus::Running {
                    // Another program took the port molt picked before the app listened on
                    // it (nothing can reserve a port for a process that is not yet there):
                    // a replacement gets another port.
                    if port_retries < PORT_RETRIES && self.lost_its_port(inst, release).await {
                        port_retries += 1;
                        tracing::warn!(
                            instance = %inst.id,
                            port = inst.port,
                            "its port was taken before it listened; starting a replacement on \
                             another port"
                        );
                        self.top_up(&env, release, want).await?;
                        continue 'check;
                    }
                    let msg = format!("instance {} {} before it became healthy", inst.id, {
                        self.describe_end(inst, &status)
                    });
                    return Err(Interrupted::Failed(self.with_log_tail(&inst.id, msg).await));
                }
            }
            let healthy = self
                .advance_health(&instances, health, &mut streak, &mut last)
                .await?;
            if healthy >= want as usize {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "not healthy within the start deadline of {}: last health check failure: {}",
                    molt_core::format_duration(health.start_deadline),
                    last.why
                );
                let msg = if last.instance.is_empty() {
                    msg
                } else {
                    self.with_log_tail(&last.instance, msg).await
                };
                return Err(Interrupted::Failed(msg));
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// `healthy` (or `promoted`): the route moves to the new environment, the step journaled
    /// with it; the router's counters at that moment are the cutover's baseline.
    pub(crate) async fn step_swap(
        &self,
        d: &DeploymentRecord,
        baseline: &mut Option<(EnvStats, EnvStats)>,
        in_force: &mut Option<String>,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number) = (d.app.clone(), d.release);
        let release = self.db(move |s| s.release(&app, number)).await?;
        let window = release.config.deploy.rollback_window;
        let (previous, publication) = self
            .swap_for_deployment(d, &env, window, |previous| {
                let prev_stats = previous.map(|p| self.env_stats(p)).unwrap_or_default();
                *baseline = Some((self.env_stats(&env), prev_stats));
            })
            .await?;
        *in_force = crate::table::fleet_note(&publication);
        let mut msg = match &previous {
            Some(p) => format!("v{} is live: route moved from {p} to {env}", d.release),
            None => format!("v{} is live on {env}", d.release),
        };
        if let Some(note) = in_force.as_deref() {
            msg.push_str(&format!(", {note}"));
        }
        self.event(&d.app, "swap", &msg).await;
        Ok(())
    }

    pub(crate) async fn step_drain(
        &self,
        d: &DeploymentRecord,
        baseline: Option<(EnvStats, EnvStats)>,
        at_start: Option<EnvStats>,
        in_force: Option<String>,
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
            .unwrap_or_else(|| self.now_ms());
        if let Some(prev) = d.prev_env.as_deref() {
            let deadline = Instant::now() + release.config.deploy.drain_timeout;
            while !self.is_drained(prev) && Instant::now() < deadline {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        }
        let (base_new, base_prev) = baseline.unwrap_or_default();
        let now_new = self.env_stats(&env);
        let now_prev = d
            .prev_env
            .as_deref()
            .map(|p| self.env_stats(p))
            .unwrap_or_default();
        let start = at_start.unwrap_or_default();
        let figures = CutoverFigures {
            served: delta(now_new.answered, base_new.answered)
                + delta(now_prev.answered, base_prev.answered),
            failed: delta(now_new.failed, base_new.failed)
                + delta(now_prev.failed, base_prev.failed),
            swap_at_ms: swap_at,
            to_swap_ms: swap_at.saturating_sub(d.created_ms),
            drain_ms: self.now_ms().saturating_sub(swap_at),
            deploy_served: now_new.answered + delta(now_prev.answered, start.answered),
            deploy_failed: now_new.failed + delta(now_prev.failed, start.failed),
        };
        let mut detail = format!(
            "drained: served {}, failed {} during cutover",
            figures.served, figures.failed
        );
        // The swap's acknowledgment by the fleet, when this task made the swap.
        if let Some(note) = in_force {
            detail.push_str(&format!("; the swap was {note}"));
        }
        self.db(move |s| {
            s.set_figures(id, &figures)?;
            s.advance(id, DeployEvent::DrainFinished, &detail)
        })
        .await?;
        Ok(())
    }

    /// `drained`: health is judged until the watch window ends (on the controller's clock);
    /// an environment that serves nothing while the previous one is warm is swapped back.
    pub(crate) async fn step_watch(
        &self,
        d: &DeploymentRecord,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (app, number, id) = (d.app.clone(), d.release, d.id);
        let release = self.db(move |s| s.release(&app, number)).await?;
        let swap_at = d.figures.map(|f| f.swap_at_ms).unwrap_or(d.updated_ms);
        let watch_end = watch::window_end_ms(swap_at, release.config.deploy.watch);
        let mut warned = false;
        // The reconciler updates instance health; look often so a swap back is quick.
        let poll = release
            .config
            .health
            .interval
            .min(Duration::from_millis(50));
        // The new environment's traffic is judged each interval too (`[deploy.analysis]` or
        // its defaults; releases recorded before that default have none).
        let mut judged = release
            .config
            .deploy
            .watch_analysis
            .as_ref()
            .map(|a| WatchAnalysis::new(a, self.env_live_traffic(&env)));
        while self.now_ms() < watch_end {
            tokio::select! {
                _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                _ = tokio::time::sleep(poll) => {}
            }
            if let Some(analysis) = judged.as_mut() {
                let now = self.env_live_traffic(&env);
                if let Some((judgement, failed)) = analysis.look(now) {
                    // A failed interval is news; a passed or inconclusive one is not (the
                    // watch judges every interval of every deployment).
                    if judgement.verdict == molt_core::canary::Verdict::Failed {
                        let line = format!("watch interval of {env}: {judgement}");
                        self.event(&d.app, "watch-verdict", &line).await;
                    }
                    let prev = d.prev_env.as_deref();
                    let warm = match prev {
                        Some(p) if failed => self.is_warm(p).await?,
                        _ => false,
                    };
                    if warm {
                        if let Some(prev) = prev {
                            let failure = format!(
                                "failed {} analysis interval(s) (last: {judgement})",
                                analysis.failed
                            );
                            return Ok(self.swap_back(d, &env, prev, &failure).await?);
                        }
                    }
                }
            }
            let look = self.look_at(&env, d.prev_env.as_deref()).await?;
            match look.verdict() {
                Verdict::KeepWatching => {}
                Verdict::SwapBack => {
                    if let Some(prev) = d.prev_env.as_deref() {
                        return Ok(self.swap_back(d, &env, prev, "turned unhealthy").await?);
                    }
                }
                Verdict::Stranded if !warned => {
                    warned = true;
                    let msg = format!(
                        "{env} has no healthy instance and no warm environment to swap back to"
                    );
                    self.event(&d.app, "unhealthy", &msg).await;
                }
                Verdict::Stranded => {}
            }
        }
        let detail = format!("healthy through the watch window; {env} serves v{number}");
        self.db(move |s| s.advance(id, DeployEvent::WatchPassed, &detail))
            .await?;
        Ok(())
    }

    /// Whether `env` can take the route (back): ready, with a healthy instance.
    pub(crate) async fn is_warm(&self, env: &str) -> Result<bool> {
        let env = env.to_string();
        self.db(move |s| {
            let ready = s.env(&env)?.state == EnvState::Ready;
            let healthy = s
                .instances(Some(&env), false)?
                .iter()
                .any(|i| i.state == InstanceState::Healthy);
            Ok(ready && healthy)
        })
        .await
    }

    /// What the watch judges: the new environment's serving instances, and whether the
    /// previous environment is still warm (ready, with a healthy instance).
    async fn look_at(&self, env: &str, prev: Option<&str>) -> Result<Look> {
        let (env, prev) = (env.to_string(), prev.map(str::to_string));
        self.db(move |s| {
            // Drifted instances are being replaced (their requests wait for the
            // replacements): not a reason to swap back.
            let serving_instances = s
                .instances(Some(&env), false)?
                .iter()
                .filter(|i| matches!(i.state, InstanceState::Healthy | InstanceState::Drifted))
                .count();
            // The previous environment decides only when nothing serves: only then is it read.
            let previous_warm = match &prev {
                Some(p) if serving_instances == 0 => {
                    let ready = s.env(p)?.state == EnvState::Ready;
                    let healthy = s
                        .instances(Some(p), false)?
                        .iter()
                        .any(|i| i.state == InstanceState::Healthy);
                    ready && healthy
                }
                _ => false,
            };
            Ok(Look {
                serving_instances,
                previous_warm,
            })
        })
        .await
    }
}

/// The watch's analysis of the new environment's traffic (`[deploy.analysis]` of a blue/green
/// deployment): one judgement per interval, with molt-core's `canary::judge`.
struct WatchAnalysis<'a> {
    analysis: &'a molt_core::canary::Analysis,
    base: molt_router::TrafficStats,
    next_at: Instant,
    failed: u32,
}

impl<'a> WatchAnalysis<'a> {
    fn new(analysis: &'a molt_core::canary::Analysis, base: molt_router::TrafficStats) -> Self {
        WatchAnalysis {
            analysis,
            base,
            next_at: Instant::now() + analysis.interval,
            failed: 0,
        }
    }

    /// At the end of an interval: its judgement, and whether `failure_limit` is reached.
    fn look(
        &mut self,
        now: molt_router::TrafficStats,
    ) -> Option<(molt_core::canary::Judgement, bool)> {
        if Instant::now() < self.next_at {
            return None;
        }
        self.next_at = Instant::now() + self.analysis.interval;
        let grown = crate::traffic::since(&now, Some(&self.base));
        self.base = now;
        let judgement = molt_core::canary::judge(
            self.analysis,
            crate::deployment::canary::sample(&grown),
            None,
        );
        if judgement.verdict == molt_core::canary::Verdict::Failed {
            self.failed += 1;
        }
        Some((judgement, self.failed >= self.analysis.failure_limit))
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

/// The count a deployment's new environment starts with. With autoscaling: the live
/// environment's count within the bounds, so a deployment during a spike keeps the capacity.
/// Without: the live environment's count if scaling set one, else the release's (`None`).
fn starting_count(
    s: &molt_store::Store,
    app: &str,
    release: u64,
) -> std::result::Result<Option<u32>, molt_store::StoreError> {
    let rec = s.app(app)?;
    let new = s.release(app, release)?;
    let live = match &rec.routed_env {
        Some(env) => {
            let env = s.env(env)?;
            let live_release = s.release(app, env.release)?;
            Some((env.instances, crate::scale::wanted(&env, &live_release)))
        }
        None => None,
    };
    Ok(match crate::scale::effective_scale(&rec, &new) {
        Some((spec, _)) => Some(spec.starting_count(live.map(|(_, n)| n))),
        None => live.and_then(|(set, _)| set).map(|n| n.max(1)),
    })
}
