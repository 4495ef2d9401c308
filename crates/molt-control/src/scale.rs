//! Scaling an environment without a release: `molt scale`, the autoscaler's loop on the
//! router's in-flight counts, scale-down that drains, scale to zero with held requests.
//!
//! An environment's count lives in the store (`EnvRecord::instances`, the release's count
//! until scaling sets one); the reconcile loop and [`Controller::fit_count`] make what runs
//! match it. Only the routed (live) environment of an app is scaled; a warm one keeps what it
//! had until it is retired. Decisions are [`molt_core::scale::decide`]'s; this module only
//! measures, carries them out and records them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use molt_core::scale::{decide, AutoscalerState, Observation, Sample, MAX_INSTANCES};
use molt_core::ScaleSpec;
use molt_store::{AppRecord, EnvRecord, InstanceRecord, InstanceState, ReleaseRecord, ScaleBounds};
use molt_wire::{ScaleDecisionRecord, ScaleOutcome, ScaleRequest, ScalingStatus};

use crate::instances::instance_addr;
use crate::{parse_app, ControlError, Controller, Result};

/// How often the autoscaler samples the router's counters.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often it decides (a request held for an environment at zero is acted on at once).
const DECIDE_EVERY_MS: u64 = 1_000;
/// How often it re-reads which apps autoscale.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long requests for an environment being woken from zero wait for its first instance
/// at most (also bounded by the release's start deadline and the request timeout).
const WAKE_HOLD: Duration = Duration::from_secs(60);
/// A hold that lasts while an environment is at zero (requests still never wait longer than
/// their request timeout).
const ZERO_HOLD: Duration = Duration::from_secs(24 * 3600);

/// What the autoscaler keeps in memory.
#[derive(Default)]
pub(crate) struct Scaling {
    /// Per routed environment: its samples and the autoscaler's state.
    watches: HashMap<String, Watch>,
    /// Per app: the last decision that changed a count (else the latest one).
    last: HashMap<String, ScaleDecisionRecord>,
    /// Environments being woken from zero, with the end of their hold.
    wakes: HashMap<String, Instant>,
}

struct Watch {
    samples: VecDeque<Sample>,
    accepted: u64,
    last_request_ms: Option<u64>,
    since_ms: u64,
    decided_ms: u64,
    state: AutoscalerState,
}

/// The count an environment should have: what scaling set, else its release's.
pub(crate) fn wanted(env: &EnvRecord, release: &ReleaseRecord) -> u32 {
    env.instances.unwrap_or(release.config.instances)
}

/// The autoscaling rules in force for an app's release, and where its bounds come from:
/// bounds set with `molt scale` win over the release's `[scale]`.
pub(crate) fn effective_scale(
    app: &AppRecord,
    release: &ReleaseRecord,
) -> Option<(ScaleSpec, &'static str)> {
    let with_bounds = |spec: ScaleSpec, b: ScaleBounds| ScaleSpec {
        min: b.min,
        max: b.max,
        ..spec
    };
    match (&release.config.scale, app.scale) {
        (Some(spec), Some(b)) => Some((with_bounds(spec.clone(), b), "molt scale")),
        (Some(spec), None) => Some((spec.clone(), "molt.toml")),
        (None, Some(b)) => Some((with_bounds(ScaleSpec::default(), b), "molt scale")),
        (None, None) => None,
    }
}

/// How many instances start or stop at once on this machine.
pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(8)
        .clamp(4, 32)
}

/// One routed environment the autoscaler looks after.
struct Target {
    app: String,
    env: EnvRecord,
    release: ReleaseRecord,
    spec: Option<ScaleSpec>,
    /// A deployment of the app has not finished (its watch judges the environment by its
    /// healthy instances, so it is never scaled to zero meanwhile).
    deploying: bool,
}

impl Controller {
    /// `molt scale`: sets the live environment's count and/or the app's autoscaling bounds.
    /// Checked whole before anything changes; no release is made and the route does not move.
    pub async fn scale(&self, app: &str, req: ScaleRequest) -> Result<ScaleOutcome> {
        let app = parse_app(app)?.to_string();
        let actor = req.actor.as_deref().unwrap_or("an API client").to_owned();
        let actor = actor.as_str();
        check_request(&req)?;
        let _locked = self.lock_app(&app).await;
        let a = app.clone();
        let (rec, env, release) = self
            .db(move |s| {
                let rec = s.app(&a)?;
                let Some(routed) = rec.routed_env.clone() else {
                    return Ok((rec, None, None));
                };
                let env = s.env(&routed)?;
                let release = s.release(&a, env.release)?;
                Ok((rec, Some(env), Some(release)))
            })
            .await?;
        let (Some(env), Some(release)) = (env, release) else {
            return Err(ControlError::Conflict(format!(
                "{app} has no live environment: deploy it first (molt scale changes the \
                 environment its route points at)"
            )));
        };
        let from = wanted(&env, &release);
        // The bounds after this request, checked before anything is written.
        let bounds = if req.reset {
            None
        } else if req.min.is_some() || req.max.is_some() {
            let base = effective_scale(&rec, &release).map(|(s, _)| (s.min, s.max));
            let min = req.min.or(base.map(|b| b.0)).unwrap_or(1);
            let max = req
                .max
                .or(base.map(|b| b.1))
                .unwrap_or_else(|| ScaleSpec::default().max.max(min).max(from));
            if min > max {
                return Err(invalid_input(format!(
                    "min ({min}) is more than max ({max})"
                )));
            }
            Some(ScaleBounds { min, max })
        } else {
            rec.scale
        };
        let after = AppRecord {
            scale: bounds,
            ..rec.clone()
        };
        let spec = effective_scale(&after, &release).map(|(s, _)| s);
        let to = match (req.instances, &spec) {
            (Some(n), Some(s)) if n < s.min || n > s.max => {
                return Err(invalid_input(format!(
                    "{n} is outside the autoscaling bounds {}..{}: change them with --min/--max \
                     (or --reset to go back to molt.toml's)",
                    s.min, s.max
                )))
            }
            (Some(n), _) => n,
            (None, Some(s)) => s.clamp(from),
            (None, None) => from,
        };
        if to == 0 && from != 0 {
            let a = app.clone();
            let deploying = self
                .db(move |s| Ok(s.unfinished_deployments()?.iter().any(|d| d.app == a)))
                .await?;
            if deploying {
                return Err(ControlError::Conflict(format!(
                    "a deployment of {app} has not finished (its watch needs a healthy \
                     instance): scale to zero once it has"
                )));
            }
        }
        if bounds != rec.scale {
            let a = app.clone();
            self.db(move |s| s.set_scale_bounds(&a, bounds.as_ref()))
                .await?;
            let what = match (&bounds, &spec) {
                (Some(b), _) => format!("autoscaling bounds {}..{} set by {actor}", b.min, b.max),
                (None, Some(s)) => format!(
                    "autoscaling bounds reset by {actor}: molt.toml's {}..{} apply",
                    s.min, s.max
                ),
                (None, None) => format!("autoscaling turned off by {actor}"),
            };
            self.event(&app, "scale", &what).await;
            self.scaling().watches.remove(&env.id);
        }
        if to != from {
            self.scale_env(&env, &release, to, &format!("by {actor}"))
                .await?;
        }
        Ok(ScaleOutcome {
            app,
            env: env.id,
            from,
            to,
            autoscaling: spec,
        })
    }

    /// Sets an environment's count, records why, and makes what runs match: new instances
    /// start at once (in parallel); leaving ones are drained, then stopped.
    pub(crate) async fn scale_env(
        &self,
        env: &EnvRecord,
        release: &ReleaseRecord,
        to: u32,
        why: &str,
    ) -> Result<()> {
        let from = wanted(env, release);
        let id = env.id.clone();
        self.db(move |s| s.set_env_instances(&id, to)).await?;
        self.event(
            &env.app,
            "scale",
            &format!("{} scaled from {from} to {to} instance(s) {why}", env.id),
        )
        .await;
        if to > 0 && from == 0 {
            let hold = release.config.health.start_deadline.min(WAKE_HOLD);
            self.scaling()
                .wakes
                .insert(env.id.clone(), Instant::now() + hold);
        }
        if let Some(setup) = self.engine() {
            // The engine starts and stops tasks; the reconcile loop records them.
            setup.engine.scale(&env.id, to).await?;
            return Ok(());
        }
        let _guard = self.inner.reconcile_lock.lock().await;
        let env = EnvRecord {
            instances: Some(to),
            ..env.clone()
        };
        let id = env.id.clone();
        let instances = self.db(move |s| s.instances(Some(&id), false)).await?;
        self.fit_count(&env, release, instances).await
    }

    /// Starts what the environment lacks, in parallel, or drains and stops what it has too
    /// many of (those not serving first, then the newest: taken out of the route table at
    /// once). `instances` are its live records; ones already leaving are not counted. Called
    /// with the reconcile lock held.
    pub(crate) async fn fit_count(
        &self,
        env: &EnvRecord,
        release: &ReleaseRecord,
        instances: Vec<InstanceRecord>,
    ) -> Result<()> {
        let mut staying: Vec<InstanceRecord> = instances
            .into_iter()
            .filter(|i| !matches!(i.state, InstanceState::Stopping | InstanceState::Stopped))
            .collect();
        let want = wanted(env, release) as usize;
        if staying.len() < want {
            let started = self
                .start_instances(&env.id, release, want - staying.len())
                .await;
            for outcome in started {
                let message = match outcome {
                    Ok(inst) => format!("started {} in {}", inst.id, env.id),
                    Err(e) => format!("could not start an instance of {}: {e}", env.id),
                };
                self.event(&env.app, "instance", &message).await;
            }
            return Ok(());
        }
        if staying.len() == want {
            return Ok(());
        }
        // Leaving first: instances that serve nothing, then the newest.
        staying.sort_by_key(|i| {
            (
                i.state == InstanceState::Healthy,
                std::cmp::Reverse(i.started_ms),
            )
        });
        let surplus = staying.len() - want;
        let leaving: Vec<InstanceRecord> = staying.into_iter().take(surplus).collect();
        let ids: Vec<String> = leaving.iter().map(|i| i.id.clone()).collect();
        self.db(move |s| {
            for id in &ids {
                s.set_instance_state(id, InstanceState::Stopping, None)?;
            }
            Ok(())
        })
        .await?;
        // Out of the table before anything stops: no new request reaches them.
        self.publish_routes().await?;
        let drain = release.config.deploy.drain_timeout;
        let this = self.clone();
        self.spawn(async move { this.drain_and_stop(leaving, drain).await });
        Ok(())
    }

    /// Waits until nothing is in flight to the instances (bounded by `drain`), then stops
    /// them, in parallel.
    async fn drain_and_stop(&self, leaving: Vec<InstanceRecord>, drain: Duration) {
        let deadline = Instant::now() + drain;
        let router = self.inner.router.clone();
        while Instant::now() < deadline
            && !leaving
                .iter()
                .all(|i| router.is_upstream_drained(instance_addr(i)))
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Err(e) = self.stop_instances(&leaving, "scaled down").await {
            tracing::warn!("scaling down: {e}");
        }
    }

    /// Stops instances at once (at most [`parallelism`] at a time); the first error, after
    /// every stop was tried.
    pub(crate) async fn stop_instances(
        &self,
        instances: &[InstanceRecord],
        why: &str,
    ) -> Result<()> {
        let stops = instances.iter().map(|inst| self.stop_instance(inst, why));
        at_most(parallelism(), stops).await.into_iter().collect()
    }

    /// Starts `n` instances of `env` at once (at most [`parallelism`] at a time).
    pub(crate) async fn start_instances(
        &self,
        env: &str,
        release: &ReleaseRecord,
        n: usize,
    ) -> Vec<Result<InstanceRecord>> {
        let starts = (0..n).map(|_| self.start_instance(env, release));
        at_most(parallelism(), starts).await
    }

    /// Holds the table makes: requests for an environment being woken from zero wait for its
    /// first instance.
    pub(crate) fn wake_holds(&self) -> HashMap<String, Instant> {
        let mut scaling = self.scaling();
        let now = Instant::now();
        scaling.wakes.retain(|_, until| *until > now);
        scaling.wakes.clone()
    }

    /// What `molt status` shows of an app's autoscaling.
    pub(crate) fn scaling_status(
        &self,
        app: &AppRecord,
        release: Option<&ReleaseRecord>,
    ) -> Option<ScalingStatus> {
        let (spec, from) = effective_scale(app, release?)?;
        Some(ScalingStatus {
            spec,
            bounds_from: from.to_owned(),
            last: self.scaling().last.get(&app.name).cloned(),
        })
    }

    /// The autoscaler: samples every routed environment's requests in flight, decides about
    /// once a second for apps that autoscale, and wakes any environment at zero the moment a
    /// request waits for it.
    pub(crate) async fn autoscale_loop(&self) {
        let shutdown = self.inner.shutdown.clone();
        let mut targets: Vec<Target> = Vec::new();
        let mut refreshed: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
            if refreshed.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
                match self.scale_targets().await {
                    Ok(t) => targets = t,
                    Err(e) => tracing::warn!("autoscaler: {e}"),
                }
                refreshed = Some(Instant::now());
                let live: Vec<&str> = targets.iter().map(|t| t.env.id.as_str()).collect();
                self.scaling()
                    .watches
                    .retain(|env, _| live.contains(&env.as_str()));
            }
            let mut acted = false;
            for target in &targets {
                if let Some((to, record)) = self.observe(target) {
                    acted = true;
                    if let Err(e) = self.autoscale(target, to, record).await {
                        tracing::warn!(app = %target.app, "autoscaler: {e}");
                    }
                }
            }
            if acted {
                refreshed = None;
            }
        }
    }

    /// Every app's routed environment with its release and autoscaling rules.
    async fn scale_targets(&self) -> Result<Vec<Target>> {
        self.db(|s| {
            let mut out = Vec::new();
            let unfinished = s.unfinished_deployments()?;
            for app in s.apps()? {
                let Some(routed) = app.routed_env.clone() else {
                    continue;
                };
                let env = s.env(&routed)?;
                let release = s.release(&app.name, env.release)?;
                let spec = effective_scale(&app, &release).map(|(spec, _)| spec);
                out.push(Target {
                    deploying: unfinished.iter().any(|d| d.app == app.name),
                    app: app.name,
                    env,
                    release,
                    spec,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Takes one sample of the target and, when due, decides: the new count (if it differs)
    /// and the decision's record.
    fn observe(&self, target: &Target) -> Option<(u32, ScaleDecisionRecord)> {
        let now_ms = self.now_ms();
        // Every router's counts: this process's own, and the fleet's latest reports.
        let stats = self.env_stats(&target.env.id);
        let held = self.inner.router.held_for(&target.env.id);
        let current = wanted(&target.env, &target.release);
        let mut scaling = self.scaling();
        let watch = scaling
            .watches
            .entry(target.env.id.clone())
            .or_insert_with(|| Watch {
                samples: VecDeque::new(),
                accepted: stats.accepted,
                last_request_ms: None,
                since_ms: now_ms,
                decided_ms: now_ms,
                state: AutoscalerState::default(),
            });
        if stats.accepted != watch.accepted || held > 0 {
            watch.accepted = stats.accepted;
            watch.last_request_ms = Some(now_ms);
        }
        watch.samples.push_back(Sample {
            at_ms: now_ms,
            in_flight: stats.in_flight as f64,
        });
        let window_ms = target
            .spec
            .as_ref()
            .map_or(60_000, |s| s.window.as_millis() as u64);
        while watch
            .samples
            .front()
            .is_some_and(|s| now_ms.saturating_sub(s.at_ms) > window_ms)
        {
            watch.samples.pop_front();
        }
        let waking = current == 0 && held > 0;
        let due = now_ms.saturating_sub(watch.decided_ms) >= DECIDE_EVERY_MS;
        if !(waking || (due && target.spec.is_some())) {
            return None;
        }
        watch.decided_ms = now_ms;
        // Without autoscaling an environment at zero still wakes for a request: at the
        // smallest count the app allows.
        let mut spec = target.spec.clone().unwrap_or(ScaleSpec {
            min: 0,
            max: MAX_INSTANCES,
            ..ScaleSpec::default()
        });
        if target.deploying {
            spec.min = spec.min.max(1);
        }
        let samples: Vec<Sample> = watch.samples.iter().copied().collect();
        let observation = Observation {
            now_ms,
            current,
            ready: current,
            samples: &samples,
            last_request_ms: watch.last_request_ms,
            watching_since_ms: watch.since_ms,
            waiting: held,
        };
        let (decision, state) = decide(&spec, &watch.state, &observation);
        watch.state = state;
        let record = ScaleDecisionRecord {
            at_ms: now_ms,
            env: target.env.id.clone(),
            from: current,
            to: decision.desired,
            panic: decision.panic,
            stable_concurrency: decision.stable_concurrency,
            reason: decision.reason,
        };
        let changes = decision.desired != current;
        let keep_last = scaling
            .last
            .get(&target.app)
            .is_none_or(|last| last.from == last.to || changes);
        if keep_last {
            scaling.last.insert(target.app.clone(), record.clone());
        }
        changes.then_some((decision.desired, record))
    }

    /// Carries out an autoscaler decision, if the environment is still the app's live one.
    async fn autoscale(&self, target: &Target, to: u32, record: ScaleDecisionRecord) -> Result<()> {
        let _locked = self.lock_app(&target.app).await;
        let (app, env_id) = (target.app.clone(), target.env.id.clone());
        let still = self
            .db(move |s| {
                let routed = s.app(&app)?.routed_env;
                (routed.as_deref() == Some(env_id.as_str()))
                    .then(|| s.env(&env_id))
                    .transpose()
            })
            .await?;
        let Some(env) = still else {
            return Ok(());
        };
        if wanted(&env, &target.release) != record.from {
            return Ok(());
        }
        let why = format!("by the autoscaler: {}", record.reason);
        self.scale_env(&env, &target.release, to, &why).await
    }

    fn scaling(&self) -> std::sync::MutexGuard<'_, Scaling> {
        self.inner
            .scaling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs the futures, at most `limit` at a time; their outputs in the order they finish.
pub(crate) async fn at_most<T>(
    limit: usize,
    futures: impl IntoIterator<Item = impl std::future::Future<Output = T>>,
) -> Vec<T> {
    let futures: Vec<_> = futures.into_iter().collect();
    stream::iter(futures)
        .buffer_unordered(limit)
        .collect()
        .await
}

/// A request that is wrong in itself.
fn invalid_input(message: String) -> ControlError {
    ControlError::Input(molt_core::InputError::Invalid(message))
}

/// Checks a `molt scale` request on its own: numbers in range, something to change.
fn check_request(req: &ScaleRequest) -> Result<()> {
    let invalid = |m: String| Err(invalid_input(m));
    if req.instances.is_none() && req.min.is_none() && req.max.is_none() && !req.reset {
        return invalid("nothing to change: give a count, --min/--max, or --reset".into());
    }
    if req.reset && (req.min.is_some() || req.max.is_some()) {
        return invalid("--reset cannot be combined with --min or --max".into());
    }
    if let Some(n) = req.instances.filter(|n| *n > MAX_INSTANCES) {
        return invalid(format!(
            "{n} instances is too many: the count must be between 0 and {MAX_INSTANCES}"
        ));
    }
    if let Some(n) = req.min.filter(|n| *n > MAX_INSTANCES) {
        return invalid(format!(
            "min must be between 0 and {MAX_INSTANCES}, not {n}"
        ));
    }
    if let Some(n) = req.max.filter(|n| *n == 0 || *n > MAX_INSTANCES) {
        return invalid(format!(
            "max must be between 1 and {MAX_INSTANCES}, not {n}"
        ));
    }
    if let (Some(min), Some(max)) = (req.min, req.max) {
        if min > max {
            return invalid(format!("min ({min}) is more than max ({max})"));
        }
    }
    Ok(())
}

/// A hold for every environment at zero, from the store: requests wait for the wake.
pub(crate) fn zero_hold(env: &EnvRecord, now: Instant) -> Option<Instant> {
    (env.instances == Some(0)).then(|| now + ZERO_HOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_anything_changes() {
        let bad = [
            (ScaleRequest::default(), "nothing to change"),
            (
                ScaleRequest {
                    instances: Some(1001),
                    ..Default::default()
                },
                "between 0 and 1000",
            ),
            (
                ScaleRequest {
                    min: Some(5),
                    max: Some(2),
                    ..Default::default()
                },
                "min (5) is more than max (2)",
            ),
            (
                ScaleRequest {
                    max: Some(0),
                    ..Default::default()
                },
                "max must be between 1",
            ),
            (
                ScaleRequest {
                    reset: true,
                    min: Some(1),
                    ..Default::default()
                },
                "--reset cannot",
            ),
        ];
        for (req, words) in bad {
            let e = check_request(&req).unwrap_err().to_string();
            assert!(e.contains(words), "{e}");
        }
        assert!(check_request(&ScaleRequest {
            instances: Some(0),
            ..Default::default()
        })
        .is_ok());
    }
}
