//! The deployment task's loop: read the journaled state, run that step, repeat until a terminal
//! state; step aside when a newer action takes the app over; fail before the swap.

use molt_core::{DeployEvent, DeployState};
use molt_router::EnvStats;
use molt_store::DeploymentRecord;

use super::active::Registration;
use super::shadow::ShadowBase;
use super::steps::Interrupted;
use crate::{Controller, Result};

impl Controller {
    /// Drives the registered deployment until it ends, is superseded or molt shuts down.
    pub(crate) async fn drive(&self, task: &mut Registration) -> Result<()> {
        let id = task.id;
        let cancel = task.cancel.clone();
        let mut baseline: Option<(EnvStats, EnvStats)> = None;
        // Router counters when a shadow deployment started mirroring.
        let mut shadow_base: Option<ShadowBase> = None;
        // Traffic of the previous environment when this task started the deployment (after a
        // restart the router's counters start from zero, which is the right baseline then).
        let mut at_start: Option<EnvStats> = None;
        // How the swap went across the fleet, for the drain's journal entry.
        let mut in_force: Option<String> = None;
        loop {
            let d = self.db(move |s| s.deployment(id)).await?;
            if at_start.is_none() && d.state == DeployState::Pending {
                at_start = d.prev_env.as_deref().map(|p| self.env_stats(p));
            }
            if d.state.is_terminal() {
                return Ok(());
            }
            if self.inner.config.pause_at == Some(d.state) {
                tracing::warn!(deployment = id, state = %d.state, "paused by MOLT_TEST_PAUSE_AT");
                // Said in the history too, so a test knows the previous step has finished.
                let held = format!("deployment {id} held at {} (test hook)", d.state);
                self.event(&d.app, "paused", &held).await;
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
                DeployState::InstancesStarted => self.step_wait_healthy(&d, &cancel).await,
                DeployState::Healthy if d.shadow_share.is_some() => {
                    self.step_start_shadow(&d, &mut shadow_base).await
                }
                DeployState::Shadowing => {
                    self.step_shadow(&d, shadow_base.as_ref(), &mut task.decisions, &cancel)
                        .await
                }
                DeployState::Healthy => match self.canary_of(&d).await {
                    Ok(Some(spec)) => self.step_start_canary(&d, &spec).await,
                    Ok(None) => self.step_swap(&d, &mut baseline, &mut in_force).await,
                    Err(e) => Err(Interrupted::Error(e)),
                },
                DeployState::Canarying => self.step_canary(&d, &mut task.decisions, &cancel).await,
                DeployState::Promoted => self.step_swap(&d, &mut baseline, &mut in_force).await,
                DeployState::Swapped => {
                    self.step_drain(
                        &d,
                        baseline.take(),
                        at_start.take(),
                        in_force.take(),
                        &cancel,
                    )
                    .await
                }
                DeployState::Drained => self.step_watch(&d, &cancel).await,
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

    /// A cancelled deployment steps aside: before the swap its environment is torn down; after
    /// it, the environment stays (it serves) and only the watch ends.
    pub(crate) async fn step_aside(
        &self,
        d: &DeploymentRecord,
        shadow: Option<&ShadowBase>,
    ) -> Result<()> {
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
        } else if d.state == DeployState::Canarying {
            self.leave_canarying(d, event, detail).await?;
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
}
