//! The canary phase of a canary deployment (`[deploy] strategy = "canary"`): once healthy, its
//! new environment takes the first step's weight of the app's clients (the route splits by
//! sticky bucket; the live environment keeps the rest). Each analysis interval the router's
//! counters of both environments are judged (`molt_core::canary::judge`) and the canary moves
//! on, stays, is promoted (then it swaps like any deployment: drain, watch, the old environment
//! warm for rollback) or is aborted (weight 0 in one route change, its environment retired),
//! as `molt_core::canary::next_move` decides. Every verdict and step is journaled with the
//! canary's progress in one transaction, so a restarted molt resumes at its step.

use molt_core::canary::{self, AbortReason, CanaryProgress, Move, Sample};
use molt_core::{CanarySpec, DeployEvent, DeployState};
use molt_router::TrafficStats;
use molt_store::DeploymentRecord;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shadow::{ShadowDecision, ShadowOutcome};
use super::steps::{env_of, Interrupted};
use crate::traffic::{quantile_ms, since};
use crate::{parse_app, ControlError, Controller, Result};

/// Router counters of both sides at the start of an interval.
struct Base {
    canary: TrafficStats,
    stable: TrafficStats,
}

impl Controller {
    /// Aborts the app's canary: its weight goes back to 0 at once and its environment is
    /// retired; the deployment ends `aborted`.
    pub async fn abort_canary(&self, app: &str) -> Result<DeploymentRecord> {
        let app: String = parse_app(app)?.to_string();
        let Some(d) = self.canarying_deployment(&app).await? else {
            return Err(ControlError::Conflict(format!(
                "no canary of {app} is in progress: `molt abort` stops a canary deployment \
                 (strategy = \"canary\"); `molt rollback {app}` goes back to a warm release"
            )));
        };
        self.decide(&app, &d, ShadowOutcome::Abandon).await
    }

    /// The app's newest deployment, if it is in its canary phase.
    pub(crate) async fn canarying_deployment(&self, app: &str) -> Result<Option<DeploymentRecord>> {
        let a = app.to_string();
        let newest = self
            .db(move |s| {
                s.app(&a)?;
                s.deployments(Some(&a), 1)
            })
            .await?
            .into_iter()
            .next();
        Ok(newest.filter(|d| d.state == DeployState::Canarying))
    }

    /// `healthy`: a canary deployment whose app has a live environment splits the route;
    /// any other swaps.
    pub(crate) async fn canary_of(&self, d: &DeploymentRecord) -> Result<Option<CanarySpec>> {
        let (a, number) = (d.app.clone(), d.release);
        let (release, routed) = self
            .db(move |s| Ok((s.release(&a, number)?, s.app(&a)?.routed_env)))
            .await?;
        let splits = routed.is_some() && routed != d.env;
        Ok(release.config.deploy.canary.filter(|_| splits))
    }

    /// `healthy` of a canary deployment: the route splits with the new environment at the
    /// first step's weight, journaled with it.
    pub(crate) async fn step_start_canary(
        &self,
        d: &DeploymentRecord,
        spec: &CanarySpec,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let progress = CanaryProgress::start(spec, self.now_ms());
        let locked = self.lock_app(&d.app).await;
        let a = d.app.clone();
        let stable = self.db(move |s| Ok(s.app(&a)?.routed_env)).await?;
        let stable = stable.unwrap_or_default();
        let detail = format!(
            "canary: {} % of clients to {env}, {} % stay on {stable}",
            progress.weight,
            100 - progress.weight
        );
        let (id, text, p) = (d.id, detail.clone(), progress.clone());
        self.db(move |s| s.canary_step(id, DeployEvent::CanaryStarted, &p, &text))
            .await?;
        self.publish_routes().await?;
        drop(locked);
        let msg = format!(
            "deployment {} of v{}: {detail}; {} step(s), judged every {}; promote with `molt \
             promote {}`, abort with `molt abort {}`",
            d.id,
            d.release,
            spec.steps.len(),
            molt_core::format_duration(spec.analysis.interval),
            d.app,
            d.app
        );
        self.event(&d.app, "canary", &msg).await;
        Ok(())
    }

    /// `canarying`: judge each interval and carry out the canary's next move, until it is
    /// promoted or aborted (by its analysis or the user), or a newer action takes over.
    pub(crate) async fn step_canary(
        &self,
        d: &DeploymentRecord,
        decisions: &mut mpsc::Receiver<ShadowDecision>,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let (a, number) = (d.app.clone(), d.release);
        let (release, stable) = self
            .db(move |s| Ok((s.release(&a, number)?, s.app(&a)?.routed_env)))
            .await?;
        let Some(spec) = release.config.deploy.canary else {
            return Err(Interrupted::Failed(format!(
                "release v{number} has no canary steps"
            )));
        };
        let stable = stable.unwrap_or_default();
        let mut progress = d
            .canary
            .clone()
            .unwrap_or_else(|| CanaryProgress::start(&spec, self.now_ms()));
        // After a restart the router's counters start from zero: the first interval counts
        // from here either way.
        let mut base = self.canary_base(&env, &stable);
        loop {
            let decision = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                decision = decisions.recv() => match decision {
                    Some(decision) => Some(decision),
                    None => {
                        // The sender goes away only when a newer action is about to cancel us.
                        cancel.cancelled().await;
                        return Err(Interrupted::Cancelled);
                    }
                },
                _ = tokio::time::sleep(spec.analysis.interval) => None,
            };
            if let Some(decision) = decision {
                let result = match decision.outcome {
                    ShadowOutcome::Promote => {
                        self.promote_canary(d, &progress, "promoted by the user")
                            .await
                    }
                    ShadowOutcome::Abandon => {
                        self.abort_canary_now(d, &mut progress, AbortReason::User)
                            .await
                    }
                };
                let done = result.is_ok();
                let _ = decision.reply.send(result);
                if done {
                    return Ok(());
                }
                continue;
            }
            let now = self.canary_base(&env, &stable);
            let judgement = canary::judge(
                &spec.analysis,
                sample(&since(&now.canary, Some(&base.canary))),
                Some(sample(&since(&now.stable, Some(&base.stable)))),
            );
            base = now;
            let now_ms = self.now_ms();
            let line = judgement.to_string();
            progress.record(judgement.clone(), now_ms);
            let step_line = format!(
                "step {}/{} at {} %",
                progress.step + 1,
                spec.steps.len(),
                progress.weight
            );
            self.event(&d.app, "canary-verdict", &format!("{step_line}: {line}"))
                .await;
            match canary::next_move(&spec, &progress, now_ms) {
                Move::Stay => {
                    self.journal_canary(d, &progress, &format!("{step_line}: {line}"), false)
                        .await?;
                }
                Move::Step(next) => {
                    progress.enter_step(&spec, next, now_ms);
                    let detail = format!(
                        "{step_line}: {line}; step {}/{}: {} % of clients to {env}",
                        next + 1,
                        spec.steps.len(),
                        progress.weight
                    );
                    self.journal_canary(d, &progress, &detail, true).await?;
                    self.event(&d.app, "canary", &detail).await;
                }
                Move::Promote => {
                    self.journal_canary(d, &progress, &format!("{step_line}: {line}"), false)
                        .await?;
                    self.promote_canary(d, &progress, "every step passed")
                        .await?;
                    return Ok(());
                }
                Move::Abort(reason) => {
                    self.abort_canary_now(d, &mut progress, reason).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Both sides' live counters now, over every router.
    fn canary_base(&self, canary: &str, stable: &str) -> Base {
        Base {
            canary: self.env_live_traffic(canary),
            stable: self.env_live_traffic(stable),
        }
    }

    /// Journals an interval (and, with `moved`, a new weight: the route table follows).
    async fn journal_canary(
        &self,
        d: &DeploymentRecord,
        progress: &CanaryProgress,
        detail: &str,
        moved: bool,
    ) -> Result<()> {
        let locked = self.lock_app(&d.app).await;
        let (id, p, text) = (d.id, progress.clone(), detail.to_string());
        self.db(move |s| s.canary_step(id, DeployEvent::CanaryProgressed, &p, &text))
            .await?;
        if moved {
            self.publish_routes().await?;
        }
        drop(locked);
        Ok(())
    }

    /// The canary is promoted: journaled `promoted`; the swap, drain and watch follow. The
    /// split stays until the swap replaces it.
    async fn promote_canary(
        &self,
        d: &DeploymentRecord,
        progress: &CanaryProgress,
        why: &str,
    ) -> Result<DeploymentRecord> {
        let env = env_of(d)?;
        if !self.is_warm(&env).await? {
            return Err(ControlError::Conflict(format!(
                "{env} has no healthy instance right now: wait for the replacements (`molt \
                 status {}`) or abort it (`molt abort {}`)",
                d.app, d.app
            )));
        }
        let detail = format!("{why}: the route moves to {env} next");
        let (id, p, text) = (d.id, progress.clone(), detail.clone());
        let rec = self
            .db(move |s| {
                s.canary_step(id, DeployEvent::Promoted, &p, &text)?;
                s.deployment(id)
            })
            .await?;
        let msg = format!(
            "deployment {} of v{} promoted at {} % ({why}) after {} interval(s), {} failed",
            d.id,
            d.release,
            progress.weight,
            progress.verdicts.len(),
            progress.failed
        );
        self.event(&d.app, "promote", &msg).await;
        Ok(rec)
    }

    /// Weight back to 0 in one route change, the numbers recorded, the canary retired.
    async fn abort_canary_now(
        &self,
        d: &DeploymentRecord,
        progress: &mut CanaryProgress,
        reason: AbortReason,
    ) -> Result<DeploymentRecord> {
        let env = env_of(d)?;
        let was = progress.weight;
        progress.weight = 0;
        progress.aborted = Some(reason);
        let last = progress
            .verdicts
            .last()
            .map(|v| format!("; last interval {}", v.judgement))
            .unwrap_or_default();
        let why = format!(
            "canary aborted at {was} % ({reason}): {} interval(s), {} failed{last}",
            progress.verdicts.len(),
            progress.failed
        );
        let locked = self.lock_app(&d.app).await;
        let (id, p, text) = (d.id, progress.clone(), why.clone());
        let rec = self
            .db(move |s| {
                s.canary_step(id, DeployEvent::CanaryAborted, &p, &text)?;
                s.set_deployment_error(id, &text)?;
                s.deployment(id)
            })
            .await?;
        self.publish_routes().await?;
        drop(locked);
        self.retire_env(&env, "its canary was aborted").await?;
        self.event(
            &d.app,
            "canary-abort",
            &format!(
                "deployment {} of v{}: {why}; {env} retired",
                d.id, d.release
            ),
        )
        .await;
        Ok(rec)
    }

    /// Out of `canarying` for any other reason (superseded, failed): the split ends with the
    /// journaled step, in one transaction.
    pub(crate) async fn leave_canarying(
        &self,
        d: &DeploymentRecord,
        event: DeployEvent,
        detail: &str,
    ) -> Result<()> {
        let mut progress = d.canary.clone().unwrap_or_default();
        progress.weight = 0;
        let locked = self.lock_app(&d.app).await;
        let (id, text) = (d.id, detail.to_string());
        self.db(move |s| s.canary_step(id, event, &progress, &text))
            .await?;
        self.publish_routes().await?;
        drop(locked);
        Ok(())
    }
}

/// What the analysis judges of an environment's counters over an interval.
pub(crate) fn sample(stats: &TrafficStats) -> Sample {
    Sample {
        requests: stats.requests(),
        errors: stats.classes[4],
        p99_ms: quantile_ms(stats, 0.99),
    }
}

/// The shadow side's counters as the analysis judges them: a mirrored copy that got no answer
/// counts as a failed request.
pub(crate) fn shadow_sample(stats: &TrafficStats) -> Sample {
    Sample {
        requests: stats.requests() + stats.failed,
        errors: stats.classes[4] + stats.failed,
        p99_ms: quantile_ms(stats, 0.99),
    }
}
