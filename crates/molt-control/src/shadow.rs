//! Shadow traffic: a share of an app's live idempotent requests mirrored to another of its
//! environments (typically the next release, before the swap), and the two compared. A shadow
//! deployment (`molt deploy --shadow N`) mirrors to its new environment instead of swapping,
//! until it is promoted (then it swaps like any deployment) or abandoned (its environment is
//! retired); the comparison is recorded on the deployment when the shadow phase ends.

use molt_core::{DeployEvent, DeployState, InputError};
use molt_router::{TrafficStats, LATENCY_BUCKETS};
use molt_store::{
    now_ms, AppRecord, DeploymentRecord, EnvState, InstanceState, ShadowComparison, ShadowMode,
    TrafficSummary,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::deploy::{env_of, Interrupted};
use crate::{ControlError, Controller, Result};

/// Live and shadow traffic of an app side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The app.
    pub app: String,
    /// What is mirrored where, if anything.
    pub mode: Option<ShadowMode>,
    /// The routed environment's live traffic.
    pub live: Option<TrafficSummary>,
    /// The shadow environment's mirrored traffic (answers were discarded).
    pub shadow: Option<TrafficSummary>,
}

/// How a shadow deployment's shadow phase ends, by the user's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOutcome {
    /// Swap to the shadowed environment (then drain and watch as usual).
    Promote,
    /// Retire the shadowed environment; the route never moved.
    Abandon,
}

/// A decision handed to the deployment's task, which alone moves its state; the caller waits
/// for the journaled result.
pub(crate) struct ShadowDecision {
    outcome: ShadowOutcome,
    reply: oneshot::Sender<Result<DeploymentRecord>>,
}

/// Router counters when mirroring started, so the comparison covers the shadow phase only.
/// After a restart there is none: the router's counters started at zero with molt.
pub(crate) struct ShadowBase {
    live_env: String,
    live: TrafficStats,
    shadow: TrafficStats,
}

impl Controller {
    /// Mirrors `share_percent` % of the app's bodiless GET/HEAD/OPTIONS requests to `env`
    /// (one of its ready environments other than the routed one), or stops mirroring
    /// (`None`). Users always get the routed environment's answers.
    pub async fn set_shadow(&self, app: &str, target: Option<(String, u32)>) -> Result<AppRecord> {
        let app: String = app.parse::<molt_core::AppName>()?.to_string();
        if let Some((_, share)) = &target {
            if !(1..=100).contains(share) {
                return Err(InputError::Invalid(format!(
                    "shadow share must be 1 to 100 (percent), not {share}"
                ))
                .into());
            }
        }
        let lock = self.app_lock(&app);
        let _guard = lock.lock().await;
        let a = app.clone();
        let rec = self
            .db(move |s| {
                if let Some(d) = shadowing_deployment(s, &a)? {
                    return Ok(Err(ControlError::Conflict(format!(
                        "deployment {} of {a} mirrors to {}: promote it (`molt promote {a}`) or \
                         abandon it (`molt abandon {a}`) first",
                        d.id,
                        d.env.as_deref().unwrap_or("its environment")
                    ))));
                }
                let mode = match target {
                    None => None,
                    Some((env, share_percent)) => {
                        let rec = s.env(&env)?;
                        if rec.app != a {
                            return Ok(Err(ControlError::NotFound(format!(
                                "environment '{env}' is not one of {a}'s"
                            ))));
                        }
                        if rec.state != EnvState::Ready {
                            return Ok(Err(ControlError::Conflict(format!(
                                "environment {env} is not ready (state {:?}): shadow a running environment",
                                rec.state
                            ))));
                        }
                        if s.app(&a)?.routed_env.as_deref() == Some(env.as_str()) {
                            return Ok(Err(ControlError::Conflict(format!(
                                "environment {env} already serves {a}'s route: shadow another environment"
                            ))));
                        }
                        Some(ShadowMode { env, share_percent })
                    }
                };
                Ok(s.set_shadow(&a, mode.as_ref()).map_err(ControlError::from))
            })
            .await??;
        self.publish_routes().await?;
        let msg = match &rec.shadow {
            Some(m) => format!(
                "{} % of idempotent requests mirrored to {}",
                m.share_percent, m.env
            ),
            None => "shadow traffic off".to_owned(),
        };
        self.event(&app, "shadow", &msg).await;
        Ok(rec)
    }

    /// The app's live traffic next to its shadow environment's mirrored traffic.
    pub async fn shadow_report(&self, app: &str) -> Result<ShadowReport> {
        let app: String = app.parse::<molt_core::AppName>()?.to_string();
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
        let app: String = app.parse::<molt_core::AppName>()?.to_string();
        let a = app.clone();
        let shadowing = self
            .db(move |s| {
                s.app(&a)?;
                shadowing_deployment(s, &a)
            })
            .await?;
        let Some(d) = shadowing else {
            return Err(ControlError::Conflict(format!(
                "no deployment of {app} is shadowing: start one with `molt deploy --shadow 10`"
            )));
        };
        let sender = {
            let active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            active
                .get(&app)
                .filter(|a| a.id == d.id)
                .map(|a| a.decisions.clone())
        };
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
        let lock = self.app_lock(&d.app);
        let _guard = lock.lock().await;
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
        let e = env.clone();
        let (rec, instances) = self
            .db(move |s| Ok((s.env(&e)?, s.instances(Some(&e), false)?)))
            .await?;
        if rec.state != EnvState::Ready
            || !instances.iter().any(|i| i.state == InstanceState::Healthy)
        {
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
        let lock = self.app_lock(&d.app);
        let _guard = lock.lock().await;
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
        let (a, id) = (d.app.clone(), d.id);
        let (app, journal) = self.db(move |s| Ok((s.app(&a)?, s.journal(id)?))).await?;
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
        let live = app.routed_env.as_ref().map(|l| {
            let from = base.filter(|b| b.live_env == *l).map(|b| &b.live);
            summarize(l, &since(&router.env_traffic(l).live, from))
        });
        let shadow = summarize(
            &env,
            &since(&router.env_traffic(&env).shadow, base.map(|b| &b.shadow)),
        );
        Ok(ShadowComparison {
            share_percent,
            since_ms,
            until_ms: now_ms(),
            live,
            shadow,
        })
    }
}

/// The app's newest deployment, if it is in its shadow phase.
fn shadowing_deployment(
    s: &molt_store::Store,
    app: &str,
) -> std::result::Result<Option<DeploymentRecord>, molt_store::StoreError> {
    let newest = s.deployments(Some(app), 1)?.into_iter().next();
    Ok(newest.filter(|d| d.state == DeployState::Shadowing))
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
    format!("live {live}; shadow {}", side(&c.shadow))
}

/// Counters grown since `base` (all of them without one; a counter that went backwards, after
/// a restart, counts from zero).
fn since(now: &TrafficStats, base: Option<&TrafficStats>) -> TrafficStats {
    let Some(base) = base else {
        return *now;
    };
    let mut out = *now;
    for (n, b) in out.classes.iter_mut().zip(&base.classes) {
        *n = n.saturating_sub(*b);
    }
    for (n, b) in out
        .latency
        .cumulative
        .iter_mut()
        .zip(&base.latency.cumulative)
    {
        *n = n.saturating_sub(*b);
    }
    out.latency.sum_seconds = (now.latency.sum_seconds - base.latency.sum_seconds).max(0.0);
    out.failed = now.failed.saturating_sub(base.failed);
    out
}

fn summarize(env: &str, stats: &TrafficStats) -> TrafficSummary {
    let requests = stats.requests();
    let classes = stats
        .classes
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{}xx", i + 1), *n))
        .collect();
    let mean_ms = if requests == 0 {
        0.0
    } else {
        stats.latency.sum_seconds * 1000.0 / requests as f64
    };
    TrafficSummary {
        env: env.to_owned(),
        requests,
        classes,
        failed: stats.failed,
        mean_ms,
        p50_ms: quantile_ms(stats, 0.5),
        p99_ms: quantile_ms(stats, 0.99),
    }
}

/// The upper bound (ms) of the bucket where quantile `q` falls; `None` when no request was
/// counted or it falls past the last bucket.
fn quantile_ms(stats: &TrafficStats, q: f64) -> Option<f64> {
    let requests = stats.requests();
    if requests == 0 {
        return None;
    }
    let rank = (q * requests as f64).ceil() as u64;
    LATENCY_BUCKETS
        .iter()
        .zip(&stats.latency.cumulative)
        .find(|(_, n)| **n >= rank)
        .map(|(bound, _)| bound * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_router::LatencyHistogram;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let stats = TrafficStats {
            classes: [0, 99, 0, 0, 1],
            latency: LatencyHistogram {
                // 50 requests ≤ 1 ms, 49 more ≤ 5 ms, one past 10 s.
                cumulative: [50, 50, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 100],
                sum_seconds: 20.0,
            },
            failed: 0,
        };
        let summary = summarize("e", &stats);
        assert_eq!(summary.requests, 100);
        assert_eq!(summary.p50_ms, Some(1.0));
        assert_eq!(summary.p99_ms, Some(5.0));
        assert_eq!(summary.classes["5xx"], 1);
        assert!((summary.mean_ms - 200.0).abs() < 1e-9);
        assert_eq!(quantile_ms(&TrafficStats::default(), 0.5), None);
        // Every request past the last bucket.
        let mut cumulative = [0; 13];
        cumulative[12] = 3;
        let slow = TrafficStats {
            latency: LatencyHistogram {
                cumulative,
                sum_seconds: 60.0,
            },
            ..TrafficStats::default()
        };
        assert_eq!(quantile_ms(&slow, 0.5), None);
    }

    #[test]
    fn the_comparison_counts_only_what_grew_since_the_base() {
        let at = |requests: u64, seconds: f64| TrafficStats {
            classes: [0, requests, 0, 0, 0],
            latency: LatencyHistogram {
                cumulative: [requests; 13],
                sum_seconds: seconds,
            },
            failed: 0,
        };
        let (base, now) = (at(15, 0.15), at(18, 0.18));
        let grown = since(&now, Some(&base));
        assert_eq!(grown.requests(), 3);
        assert_eq!(grown.classes[1], 3);
        assert!((grown.latency.sum_seconds - 0.03).abs() < 1e-9);
        assert_eq!(since(&now, None), now);
        // Counters that went backwards (a restart) count from zero, never underflow.
        assert_eq!(since(&base, Some(&now)).requests(), 0);
    }
}
