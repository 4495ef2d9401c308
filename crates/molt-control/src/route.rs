//! Changing where an app's traffic goes: `molt swap`, `molt rollback`, a deployment's swap and
//! its swap back after a failed watch (all through [`Controller::move_route`], the one place a
//! route moves), maintenance mode and manual shadow traffic.
//!
//! A route moves only under the app's lock, store first (the route, the deployment's step and
//! the rollback window of the environment left, in one transaction), then the router; a crash
//! in between is repaired by the rebuild at restart.

use std::time::{Duration, Instant};

use molt_core::rollback::{self, EnvFacts, Refusal, RollbackPlan};
use molt_core::{DeployEvent, InputError};
use molt_store::{
    AppRecord, DeploymentRecord, EnvState, InstanceState, MaintenanceMode, ShadowMode,
};
use molt_wire::{RollbackOutcome, SwapOutcome};

use molt_fleet::Publication;

use crate::{parse_app, AppGuard, ControlError, Controller, Result};

/// How a route move is recorded besides the route itself.
struct RouteMove {
    /// The deployment step journaled with the route, in the same transaction.
    step: Option<(u64, DeployEvent, String)>,
    /// How long the environment the route leaves stays warm for a rollback (`None`: as it
    /// was).
    rollback_window: Option<Duration>,
    /// Recorded as the deployment's error once the route has moved (a swap back says why).
    error: Option<String>,
}

impl Controller {
    /// Points an app's route at one of its live, ready environments: one atomic route change.
    pub async fn swap(&self, app: &str, env: &str) -> Result<SwapOutcome> {
        let app = parse_app(app)?.to_string();
        let a = app.clone();
        let shadowing = self.db(move |s| s.shadowing_deployment(&a)).await?;
        if let Some(d) = shadowing.filter(|d| d.env.as_deref() == Some(env)) {
            // Superseding it would retire the very environment asked for.
            return Err(ControlError::Conflict(format!(
                "{env} is the shadow environment of deployment {}: promote it with \
                 `molt promote {app}` (it swaps, then drains and watches like any deployment)",
                d.id
            )));
        }
        let _takeover = self.take_over(&app).await;
        self.swap_to(&app, env, "swap").await
    }

    /// Moves the route to `env`, which must be one of `app`'s environments, ready, with a
    /// healthy instance; the environment left stays warm for the target release's rollback
    /// window. `kind` names the move in the app's history (`swap`, `rollback`).
    async fn swap_to(&self, app: &str, env: &str, kind: &str) -> Result<SwapOutcome> {
        let started = Instant::now();
        let locked = self.lock_app(app).await;
        let e = env.to_string();
        let (target, instances, release) = self
            .db(move |s| {
                let target = s.env(&e)?;
                let release = s.release(&target.app, target.release)?;
                Ok((target, s.instances(Some(&e), false)?, release))
            })
            .await?;
        if target.app != app {
            return Err(ControlError::NotFound(format!(
                "environment '{env}' is not one of {app}'s"
            )));
        }
        if target.state != EnvState::Ready
            || !instances.iter().any(|i| i.state == InstanceState::Healthy)
        {
            return Err(ControlError::Conflict(format!(
                "environment {env} is not ready to take traffic (state {:?}, no healthy instance)",
                target.state
            )));
        }
        let change = RouteMove {
            step: None,
            rollback_window: Some(release.config.deploy.rollback_window),
            error: None,
        };
        let (from, publication) = self.move_route(&locked, app, env, change, |_| {}).await?;
        drop(locked);
        let elapsed_us = started.elapsed().as_micros() as u64;
        let mut msg = format!(
            "route moved from {} to {env} (v{}) in {:.2} ms",
            from.as_deref().unwrap_or("nothing"),
            target.release,
            elapsed_us as f64 / 1000.0
        );
        if let Some(note) = crate::table::fleet_note(&publication) {
            msg.push_str(&format!(", {note}"));
        }
        self.event(app, kind, &msg).await;
        Ok(SwapOutcome {
            app: app.to_string(),
            from,
            to: env.to_string(),
            release: target.release,
            elapsed_us,
        })
    }

    /// The swap step of deployment `d`: the route moves to its environment `env` and the
    /// step is journaled with it; the environment left stays warm for `rollback_window`.
    /// `before_publish` sees the environment left once the store has the move and before any
    /// request can see it (the cutover figures start there). Returns the environment left.
    pub(crate) async fn swap_for_deployment(
        &self,
        d: &DeploymentRecord,
        env: &str,
        rollback_window: Duration,
        before_publish: impl FnOnce(Option<&str>),
    ) -> Result<(Option<String>, Publication)> {
        let locked = self.lock_app(&d.app).await;
        let change = RouteMove {
            step: Some((
                d.id,
                DeployEvent::Swapped,
                format!("route {} -> {env}", d.app),
            )),
            rollback_window: Some(rollback_window),
            error: None,
        };
        self.move_route(&locked, &d.app, env, change, before_publish)
            .await
    }

    /// Deployment `d`'s environment `env` failed its watch (`failure` says how): the route
    /// goes back to `prev` (no rollback window starts for `env`), journaled as `rolled_back`
    /// with why.
    pub(crate) async fn swap_back(
        &self,
        d: &DeploymentRecord,
        env: &str,
        prev: &str,
        failure: &str,
    ) -> Result<()> {
        let locked = self.lock_app(&d.app).await;
        let why = format!("{env} {failure} during the watch window; swapped back to {prev}");
        let change = RouteMove {
            step: Some((d.id, DeployEvent::WatchFailed, why.clone())),
            rollback_window: None,
            error: Some(why.clone()),
        };
        let (_, publication) = self
            .move_route(&locked, &d.app, prev, change, |_| {})
            .await?;
        drop(locked);
        let why = match crate::table::fleet_note(&publication) {
            Some(note) => format!("{why} ({note})"),
            None => why,
        };
        self.event(&d.app, "auto-rollback", &why).await;
        Ok(())
    }

    /// Moves `app`'s route to `env`: the store first (route, deployment step and rollback
    /// window in one transaction), then `before_publish`, then the router. Returns where the
    /// route pointed before. Holding the app's lock is the caller's proof that no other move
    /// of this app's route interleaves.
    async fn move_route(
        &self,
        _locked: &AppGuard,
        app: &str,
        env: &str,
        change: RouteMove,
        before_publish: impl FnOnce(Option<&str>),
    ) -> Result<(Option<String>, Publication)> {
        let (a, e) = (app.to_string(), env.to_string());
        let previous = self
            .db(move |s| {
                let step = change
                    .step
                    .as_ref()
                    .map(|(id, event, detail)| (*id, *event, detail.as_str()));
                let window_ms = change.rollback_window.map(|w| w.as_millis() as u64);
                let previous = s.swap_route(&a, &e, step, window_ms)?;
                if let (Some((id, ..)), Some(error)) = (&change.step, &change.error) {
                    s.set_deployment_error(*id, error)?;
                }
                Ok(previous)
            })
            .await?;
        before_publish(previous.as_deref());
        let publication = self.publish_routes().await?;
        Ok((previous, publication))
    }

    /// Rolls back to `to` (default: the most recently swapped-out warm environment). Warm:
    /// one route change. Cold (nothing warm runs that release): a new deployment of it.
    pub async fn rollback(&self, app: &str, to: Option<u64>) -> Result<RollbackOutcome> {
        let app = parse_app(app)?.to_string();
        let takeover = self.take_over(&app).await;
        let a = app.clone();
        let (routed, envs, releases) = self
            .db(move |s| {
                Ok((
                    s.app(&a)?.routed_env,
                    s.envs(Some(&a), false)?,
                    s.releases(Some(&a))?,
                ))
            })
            .await?;
        let facts: Vec<EnvFacts> = envs
            .iter()
            .map(|e| EnvFacts {
                id: e.id.clone(),
                release: e.release,
                ready: e.state == EnvState::Ready,
                warm_until_ms: e.warm_until_ms,
            })
            .collect();
        let numbers: Vec<u64> = releases.iter().map(|r| r.number).collect();
        let RollbackPlan {
            release: target,
            warm_env,
        } = rollback::plan(routed.as_deref(), &facts, &numbers, to)
            .map_err(|refusal| refused(&app, refusal))?;
        let release = releases
            .iter()
            .find(|r| r.number == target)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("release v{target} of {app} not found"))
            })?;
        if let Some(env) = warm_env {
            if let Ok(swap) = self.swap_to(&app, &env, "rollback").await {
                return Ok(RollbackOutcome {
                    kind: "warm".into(),
                    release: target,
                    swap: Some(swap),
                    deployment: None,
                });
            }
        }
        let image = release.image.clone();
        let present = self.inner.images.contains(&image);
        if !present {
            return Err(ControlError::Conflict(format!(
                "v{target} is no longer warm and its image {} was collected: deploy it again from source",
                image.short()
            )));
        }
        let deployment = self.start_deployment_as(&takeover, &release, None).await?;
        drop(takeover);
        self.event(
            &app,
            "rollback",
            &format!(
                "cold rollback to v{target}: nothing warm runs it, redeploying (deployment {})",
                deployment.id
            ),
        )
        .await;
        Ok(RollbackOutcome {
            kind: "cold".into(),
            release: target,
            swap: None,
            deployment: Some(deployment),
        })
    }

    /// Puts an app in maintenance mode (its hostnames answer 503 with `Retry-After`) or takes
    /// it out (`None`). Instances keep running; preview hostnames keep working.
    pub async fn set_maintenance(
        &self,
        app: &str,
        mode: Option<MaintenanceMode>,
    ) -> Result<AppRecord> {
        let a = parse_app(app)?.to_string();
        let on = mode.is_some();
        let rec = self
            .db(move |s| s.set_maintenance(&a, mode.as_ref()))
            .await?;
        self.publish_routes().await?;
        let msg = if on {
            "maintenance mode on: hostnames answer 503"
        } else {
            "maintenance mode off"
        };
        self.event(app, "maintenance", msg).await;
        Ok(rec)
    }

    /// Mirrors `share_percent` % of the app's bodiless GET/HEAD/OPTIONS requests to `env`
    /// (one of its ready environments other than the routed one), or stops mirroring
    /// (`None`). Users always get the routed environment's answers.
    pub async fn set_shadow(&self, app: &str, target: Option<(String, u32)>) -> Result<AppRecord> {
        let app: String = parse_app(app)?.to_string();
        if let Some((_, share)) = &target {
            if !(1..=100).contains(share) {
                return Err(InputError::Invalid(format!(
                    "shadow share must be 1 to 100 (percent), not {share}"
                ))
                .into());
            }
        }
        let _locked = self.lock_app(&app).await;
        let a = app.clone();
        let rec = self
            .db(move |s| {
                if let Some(d) = s.shadowing_deployment(&a)? {
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
}

/// A rollback the plan refused, as the controller's error.
fn refused(app: &str, refusal: Refusal) -> ControlError {
    match refusal {
        Refusal::NoEarlierRelease { serving } => ControlError::Conflict(format!(
            "{app} has no release before v{serving} to roll back to"
        )),
        Refusal::NothingDeployed => {
            ControlError::Conflict(format!("{app} has nothing deployed to roll back from"))
        }
        Refusal::AlreadyServes(n) => ControlError::Conflict(format!("{app} already serves v{n}")),
        Refusal::UnknownRelease(n) => {
            ControlError::NotFound(format!("release v{n} of {app} not found"))
        }
    }
}
