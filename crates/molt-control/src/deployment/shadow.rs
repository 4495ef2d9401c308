//! The shadow phase of a shadow deployment (`molt deploy --shadow N`): once healthy, its new
//! environment gets a share of the app's live idempotent requests (mirrored, answers
//! discarded) instead of the route, until it is promoted (then it swaps like any deployment) or
//! abandoned (its environment is retired); live and shadow traffic of the phase are compared
//! and the comparison recorded on the deployment when the phase ends. (Mirroring to any
//! environment by hand, `molt shadow`, is a route change: `crate::route`.)

use molt_core::{DeployEvent, DeployState};
use molt_router::TrafficStats;
use molt_store::{DeploymentRecord, ShadowComparison, ShadowMode, TrafficSummary};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::steps::{env_of, Interrupted};
use crate::traffic::{since, summarize};
use crate::{parse_app, ControlError, Controller, Result};

/// How a shadow deployment's shadow phase (or a canary deployment's canary phase) ends, by the
/// user's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOutcome {
    /// Swap to the shadowed environment (then drain and watch as usual).
    Promote,
    /// Retire the shadowed environment; the route never moved. (A canary is aborted.)
    Abandon,
}

/// A decision handed to the deployment's task, which alone moves its state; the caller waits
/// for the journaled result.
pub(crate) struct ShadowDecision {
    /// Promote, or abandon (for a canary: abort).
    pub(crate) outcome: ShadowOutcome,
    /// Where the task answers with the journaled result.
    pub(crate) reply: oneshot::Sender<Result<DeploymentRecord>>,
}

/// Router counters when mirroring started, so the comparison covers the shadow phase only.
/// After a restart there is none: the router's counters started at zero with molt.
pub(crate) struct ShadowBase {
    live_env: String,
    live: TrafficStats,
    shadow: TrafficStats,
}

impl Controller {
    /// Ends the shadow phase of the app's shadow deployment: `Promote` swaps to its
    /// environment like any deployment (the returned record is in state `promoted`; the swap,
    /// drain and watch follow), `Abandon` retires it. Either way live and shadow traffic of
    /// the phase are recorded on the deployment.
    pub async fn end_shadow_phase(
        &self,
        app: &str,
        outcome: ShadowOutcome,
    ) -> Result<DeploymentRecord> {
        let app: String = parse_app(app)?.to_string();
        let a = app.clone();
        let shadowing = self
            .db(move |s| {
                s.app(&a)?;
                s.shadowing_deployment(&a)
            })
            .await?;
        let d = match shadowing {
            Some(d) => d,
            // A canary deployment is promoted (or aborted) the same way.
            None => match self.canarying_deployment(&app).await? {
                Some(d) => d,
                None => {
                    return Err(ControlError::Conflict(format!(
                        "no deployment of {app} is shadowing or in its canary phase: start one \
                         with `molt deploy --shadow 10`, or with strategy = \"canary\""
                    )))
                }
            },
        };
        self.decide(&app, &d, outcome).await
    }

    /// Hands `outcome` to deployment `d`'s task and waits for the journaled result.
    pub(crate) async fn decide(
        &self,
        app: &str,
        d: &DeploymentRecord,
        outcome: ShadowOutcome,
    ) -> Result<DeploymentRecord> {
        let sender = self.inner.active.decisions(app, d.id);
        let (reply, answer) = oneshot::channel();
        let sent = match sender {
            Some(tx) => tx.send(ShadowDecision { outcome, reply }).await.is_ok(),
            None => false,
        };
        let stopped = || {
            ControlError::Conflict(format!(
                "deployment {} of {app} is not running right now (molt is starting or stopping); \
                 try again",
                d.id
            ))
        };
        if !sent {
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }

    /// `healthy` of a shadow deployment: mirror its share of the app's idempotent requests to
    /// the new environment instead of swapping (the route stays where it is).
    pub(crate) async fn step_start_shadow(
        &self,
        d: &DeploymentRecord,
        base: &mut Option<ShadowBase>,
    ) -> std::result::Result<(), Interrupted> {
        let env = env_of(d)?;
        let share = d.shadow_share.unwrap_or(10);
        let _locked = self.lock_app(&d.app).await;
        let a = d.app.clone();
        let live = self.db(move |s| Ok(s.app(&a)?.routed_env)).await?;
        let Some(live) = live.filter(|l| *l != env) else {
            return Err(Interrupted::Failed(format!(
                "nothing serves {} to mirror from: deploy without --shadow",
                d.app
            )));
        };
        let router = &self.inner.router;
        *base = Some(ShadowBase {
            live: router.env_traffic(&live).live,
            shadow: router.env_traffic(&env).shadow,
            live_env: live.clone(),
        });
        let mode = ShadowMode {
            env: env.clone(),
            share_percent: share,
        };
        let detail =
            format!("mirroring {share} % of GET/HEAD/OPTIONS to {env}; the route stays on {live}");
        // Mirroring is in force (stored, then published) before `shadowing` is journaled, so
        // whoever sees that state can rely on it. A restart or a newer action in between finds
        // `healthy`: this step runs again, or `leave` stops the mirroring.
        let a = d.app.clone();
        self.db(move |s| s.set_shadow(&a, Some(&mode))).await?;
        self.publish_routes().await?;
        let (id, text) = (d.id, detail.clone());
        self.db(move |s| s.advance(id, DeployEvent::ShadowStarted, &text))
            .await?;
        let msg = format!(
            "deployment {} of v{}: {detail}; promote with `molt promote {}`",
            d.id, d.release, d.app
        );
        self.event(&d.app, "shadow", &msg).await;
        Ok(())
    }

    /// `shadowing`: wait for the user's decision (or a newer action, or shutdown). Mirroring
    /// itself needs nothing from this task: the route table carries it, rebuilt from the
    /// store after a restart.
    pub(crate) async fn step_shadow(
        &self,
        d: &DeploymentRecord,
        base: Option<&ShadowBase>,
        decisions: &mut mpsc::Receiver<ShadowDecision>,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), Interrupted> {
        loop {
            let decision = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Interrupted::Cancelled),
                decision = decisions.recv() => decision,
            };
            let Some(decision) = decision else {
                // The sender goes away only when a newer action is about to cancel us.
                cancel.cancelled().await;
                return Err(Interrupted::Cancelled);
            };
            let result = match decision.outcome {
                ShadowOutcome::Promote => self.promote_shadowed(d, base).await,
                ShadowOutcome::Abandon => self.abandon_shadowed(d, base).await,
            };
            let done = result.is_ok();
            let _ = decision.reply.send(result);
            if done {
                return Ok(());
            }
        }
    }

    async fn promote_shadowed(
        &self,
        d: &DeploymentRecord,
        base: Option<&ShadowBase>,
    ) -> Result<DeploymentRecord> {
        let env = env_of(d)?;
        // Mirroring went on for a while: the environment must still be able to take traffic.
        if !self.is_warm(&env).await? {
            return Err(ControlError::Conflict(format!(
                "{env} has no healthy instance right now: wait for the replacements (`molt \
                 status {}`) or abandon it (`molt abandon {}`)",
                d.app, d.app
            )));
        }
        let detail = format!("promoted: the route moves to {env} next");
        let rec = self
            .leave_shadowing(d, DeployEvent::Promoted, &detail, base)
            .await?;
        let msg = format!(
            "deployment {} of v{} promoted after shadowing: {}",
            d.id,
            d.release,
            comparison_line(rec.shadow.as_ref())
        );
        self.event(&d.app, "promote", &msg).await;
        Ok(rec)
    }

    async fn abandon_shadowed(
        &self,
        d: &DeploymentRecord,
        base: Option<&ShadowBase>,
    ) -> Result<DeploymentRecord> {
        let env = env_of(d)?;
        let detail = format!("abandoned: {env} retired; the route never moved");
        let rec = self
            .leave_shadowing(d, DeployEvent::Abandoned, &detail, base)
            .await?;
        self.retire_env(&env, "its shadow deployment was abandoned")
            .await?;
        let msg = format!(
            "deployment {} of v{} abandoned after shadowing: {}",
            d.id,
            d.release,
            comparison_line(rec.shadow.as_ref())
        );
        self.event(&d.app, "abandon", &msg).await;
        Ok(rec)
    }

    /// Takes `event` out of `shadowing`: snapshots the comparison, stops the mirroring and
    /// journals the step in one transaction, then republishes the route table.
    pub(crate) async fn leave_shadowing(
        &self,
        d: &DeploymentRecord,
        event: DeployEvent,
        detail: &str,
        base: Option<&ShadowBase>,
    ) -> Result<DeploymentRecord> {
        let _locked = self.lock_app(&d.app).await;
        let comparison = self.shadow_comparison(d, base).await?;
        let (id, detail) = (d.id, detail.to_string());
        let rec = self
            .db(move |s| {
                s.end_shadow(id, event, &detail, Some(&comparison))?;
                s.deployment(id)
            })
            .await?;
        self.publish_routes().await?;
        Ok(rec)
    }

    /// Live and shadow traffic of `d`'s shadow phase so far, from the router's counters.
    async fn shadow_comparison(
        &self,
        d: &DeploymentRecord,
        base: Option<&ShadowBase>,
    ) -> Result<ShadowComparison> {
        let env = env_of(d)?;
        let (a, id, number) = (d.app.clone(), d.id, d.release);
        let (app, journal, release) = self
            .db(move |s| Ok((s.app(&a)?, s.journal(id)?, s.release(&a, number)?)))
            .await?;
        let mirrored_since = journal
            .iter()
            .rev()
            .find(|j| j.state == DeployState::Shadowing)
            .map(|j| j.at_ms)
            .unwrap_or(d.updated_ms);
        let since_ms = match base {
            Some(_) => mirrored_since,
            None => mirrored_since.max(self.inner.started_ms),
        };
        let share_percent = match &app.shadow {
            Some(m) if m.env == env => m.share_percent,
            _ => d.shadow_share.unwrap_or(0),
        };
        let router = &self.inner.router;
        let live_stats = app.routed_env.as_ref().map(|l| {
            let from = base.filter(|b| b.live_env == *l).map(|b| &b.live);
            (l, since(&router.env_traffic(l).live, from))
        });
        let shadow_stats = since(&router.env_traffic(&env).shadow, base.map(|b| &b.shadow));
        let deploy = &release.config.deploy;
        let analysis = match (&deploy.canary, &deploy.watch_analysis) {
            (Some(c), _) => c.analysis.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => Default::default(),
        };
        let verdict = molt_core::canary::judge(
            &analysis,
            super::canary::shadow_sample(&shadow_stats),
            live_stats.as_ref().map(|(_, s)| super::canary::sample(s)),
        );
        Ok(ShadowComparison {
            share_percent,
            since_ms,
            until_ms: self.now_ms(),
            live: live_stats.map(|(l, s)| summarize(l, &s)),
            shadow: summarize(&env, &shadow_stats),
            verdict: Some(verdict),
        })
    }
}

/// One line for the history: requests and 2xx of each side.
fn comparison_line(c: Option<&ShadowComparison>) -> String {
    let Some(c) = c else {
        return "no comparison recorded".into();
    };
    let side = |t: &TrafficSummary| {
        format!(
            "{} requests, {} 2xx, {} 5xx, p99 {}",
            t.requests,
            t.classes.get("2xx").copied().unwrap_or(0),
            t.classes.get("5xx").copied().unwrap_or(0),
            t.p99_ms
                .map(|ms| format!("≤{ms} ms"))
                .unwrap_or_else(|| "-".into())
        )
    };
    let live = c.live.as_ref().map(side).unwrap_or_else(|| "none".into());
    let verdict = c
        .verdict
        .as_ref()
        .map(|j| format!("; judged {}", j.verdict))
        .unwrap_or_default();
    format!("live {live}; shadow {}{verdict}", side(&c.shadow))
}
