//! Scaling an environment: an app's `[scale]` bounds and target, and the autoscaler's
//! decision — a pure function of what the router measured, so the same measurements always
//! give the same answer and the rules below can be property-tested.
//!
//! The model is Knative's autoscaler (its documented "KPA" defaults are cited where they are
//! used): the desired count is the average number of requests in flight over a stable window
//! divided by the target per instance, rounded up; a shorter panic window reacts to bursts, and
//! in panic the count never goes down; increases and decreases per decision are rate-limited;
//! a decrease waits until the lower count has been recommended for a whole delay; an app whose
//! minimum is 0 goes to zero instances once no request arrived for `idle`, and a request held
//! while it has none wakes it.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::serde_text;

/// Most instances one environment may have.
pub const MAX_INSTANCES: u32 = 1000;
/// Largest `concurrency` target.
pub const MAX_CONCURRENCY: u32 = 100_000;
/// Panic when the panic window asks for this many times the ready instances (Knative's
/// `panic-threshold-percentage`, 200 %).
pub const PANIC_THRESHOLD: f64 = 2.0;
/// At most this many times the ready instances after one decision (Knative's
/// `max-scale-up-rate`, 1000).
pub const MAX_SCALE_UP_RATE: f64 = 1000.0;
/// At least the ready instances divided by this after one decision (Knative's
/// `max-scale-down-rate`, 2).
pub const MAX_SCALE_DOWN_RATE: f64 = 2.0;

/// How an app's environments scale on load (`[scale]` in `molt.toml`, or bounds set with
/// `molt scale --min/--max`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleSpec {
    /// Fewest instances; 0 scales to zero when idle.
    pub min: u32,
    /// Most instances.
    pub max: u32,
    /// Target of requests in flight per instance.
    pub concurrency: u32,
    /// The stable window the average concurrency is taken over (Knative: 60 s).
    #[serde(with = "serde_text")]
    pub window: Duration,
    /// The panic window, for bursts (Knative: 10 % of the stable window, 6 s).
    #[serde(with = "serde_text")]
    pub panic_window: Duration,
    /// How long a lower count must be recommended before the count goes down.
    #[serde(with = "serde_text")]
    pub scale_down_delay: Duration,
    /// Time without a request before an app whose minimum is 0 goes to zero instances.
    #[serde(with = "serde_text")]
    pub idle: Duration,
}

impl Default for ScaleSpec {
    fn default() -> Self {
        ScaleSpec {
            min: 1,
            max: 10,
            concurrency: 10,
            window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            scale_down_delay: Duration::from_secs(30),
            idle: Duration::from_secs(300),
        }
    }
}

impl ScaleSpec {
    /// Checks the relations between the values (each field's own range is checked where it
    /// is read); the message names the fields.
    pub fn check(&self) -> Result<(), String> {
        if self.max == 0 || self.max > MAX_INSTANCES {
            return Err(format!("max must be between 1 and {MAX_INSTANCES}"));
        }
        if self.min > self.max {
            return Err(format!(
                "min ({}) is more than max ({})",
                self.min, self.max
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(format!(
                "concurrency must be between 1 and {MAX_CONCURRENCY} requests in flight per \
                 instance"
            ));
        }
        if self.window.is_zero() || self.panic_window.is_zero() {
            return Err("window and panic_window must be more than 0".into());
        }
        if self.panic_window > self.window {
            return Err("panic_window must not be longer than window".into());
        }
        if self.idle.is_zero() {
            return Err("idle must be more than 0".into());
        }
        Ok(())
    }

    /// `n` within `[min, max]`.
    pub fn clamp(&self, n: u32) -> u32 {
        n.clamp(self.min, self.max.max(self.min))
    }

    /// The count a new environment starts with: the live environment's count kept (so a
    /// deployment during a spike keeps the capacity), within the bounds, and at least one
    /// (a deployment needs a healthy instance to swap to).
    pub fn starting_count(&self, live: Option<u32>) -> u32 {
        self.clamp(live.unwrap_or(self.min)).max(1).min(self.max)
    }
}

/// One measurement of an environment: requests in flight over all its instances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was taken, ms since the epoch.
    pub at_ms: u64,
    /// Requests in flight to the environment.
    pub in_flight: f64,
}

/// What the autoscaler sees at one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation<'a> {
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// The environment's count as set now.
    pub current: u32,
    /// Its instances ready to take traffic.
    pub ready: u32,
    /// Measurements, oldest first; those older than the stable window are ignored.
    pub samples: &'a [Sample],
    /// When the last request arrived, if one did since the autoscaler started watching.
    pub last_request_ms: Option<u64>,
    /// When the autoscaler started watching (stands in for the last request when none came).
    pub watching_since_ms: u64,
    /// Requests held right now because the environment has no instance.
    pub waiting: u64,
}

/// What the autoscaler remembers between decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoscalerState {
    /// When the current panic began.
    pub panic_since_ms: Option<u64>,
    /// Recent recommendations (time, count), for the scale-down delay.
    pub recommendations: VecDeque<(u64, u32)>,
}

/// The autoscaler's answer, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The count the environment should have.
    pub desired: u32,
    /// Whether the panic window rules.
    pub panic: bool,
    /// Average requests in flight over the stable window, when there were samples.
    pub stable_concurrency: Option<f64>,
    /// Average requests in flight over the panic window, when there were samples.
    pub panic_concurrency: Option<f64>,
    /// Why, in words, with the figures.
    pub reason: String,
}

/// Decides the count an environment should have. Pure: the same spec, state and observation
/// always give the same decision and next state.
///
/// Guarantees (property-tested): the count is never outside `[min, max]`; in panic it never
/// goes below the current count (unless the current count is above `max`); it is 0 only when
/// `min` is 0, nothing is held or in flight, and no request came for `idle`.
pub fn decide(
    spec: &ScaleSpec,
    state: &AutoscalerState,
    obs: &Observation<'_>,
) -> (Decision, AutoscalerState) {
    let mut next = state.clone();
    let window_ms = millis(spec.window);
    let stable = average(obs.samples, obs.now_ms, window_ms);
    let panic_avg = average(obs.samples, obs.now_ms, millis(spec.panic_window));
    let target = f64::from(spec.concurrency.max(1));
    let in_flight_now = obs.samples.last().map_or(0.0, |s| s.in_flight);

    // A request waits for an environment at zero: start one at once, whatever the windows say.
    if obs.current == 0 && obs.waiting > 0 {
        let desired = spec.clamp(1).max(1).min(spec.max);
        next.panic_since_ms = None;
        record(&mut next, obs.now_ms, desired, spec);
        return (
            Decision {
                desired,
                panic: false,
                stable_concurrency: stable,
                panic_concurrency: panic_avg,
                reason: format!(
                    "{} request{} held while the environment has no instance",
                    obs.waiting,
                    plural(obs.waiting)
                ),
            },
            next,
        );
    }
    let (Some(stable), Some(panic_avg)) = (stable, panic_avg) else {
        let desired = spec.clamp(obs.current);
        return (
            Decision {
                desired,
                panic: false,
                stable_concurrency: None,
                panic_concurrency: None,
                reason: "no measurements yet: the count stays within the bounds".into(),
            },
            next,
        );
    };
    let ready = f64::from(obs.ready.max(1));
    let stable_desired = (stable / target).ceil();
    let panic_desired = (panic_avg / target).ceil();
    let over_threshold = panic_desired / ready >= PANIC_THRESHOLD;
    // Panic lasts at least a stable window from its start, and while the burst goes on.
    next.panic_since_ms = match (state.panic_since_ms, over_threshold) {
        (_, true) => Some(state.panic_since_ms.unwrap_or(obs.now_ms)),
        (Some(since), false) if obs.now_ms < since.saturating_add(window_ms) => Some(since),
        _ => None,
    };
    let panic = next.panic_since_ms.is_some();
    let mut raw = if panic { panic_desired } else { stable_desired };
    let max_up = (ready * MAX_SCALE_UP_RATE).ceil();
    let min_down = (ready / MAX_SCALE_DOWN_RATE).floor();
    raw = raw.clamp(min_down.min(max_up), max_up);
    let mut desired = to_count(raw);
    let mut why = if panic {
        format!(
            "panic: {panic_avg:.1} in flight over the last {} against a target of {} per \
             instance",
            crate::format_duration(spec.panic_window),
            spec.concurrency
        )
    } else {
        format!(
            "{stable:.1} in flight on average over the last {} against a target of {} per \
             instance",
            crate::format_duration(spec.window),
            spec.concurrency
        )
    };
    if panic && desired < obs.current {
        desired = obs.current;
        why.push_str("; never down in panic");
    }
    // Scale to zero only after `idle` without a request, with nothing in flight.
    if desired == 0 {
        let last = obs.last_request_ms.unwrap_or(obs.watching_since_ms);
        let idle_for = obs.now_ms.saturating_sub(last);
        if spec.min > 0 {
            // Clamped below.
        } else if idle_for >= millis(spec.idle) && in_flight_now == 0.0 {
            why = format!(
                "no request for {}: scaled to zero",
                crate::format_duration(Duration::from_millis(idle_for))
            );
        } else {
            desired = 1;
        }
    }
    record(&mut next, obs.now_ms, desired, spec);
    // A decrease waits until the lower count was recommended for a whole delay (never a
    // reason to go up: the floor is the current count at most).
    let floor = next
        .recommendations
        .iter()
        .map(|&(_, n)| n)
        .max()
        .unwrap_or(desired)
        .min(obs.current);
    if floor > desired {
        desired = floor;
        why.push_str(&format!(
            "; down only after {} of lower recommendations",
            crate::format_duration(spec.scale_down_delay)
        ));
    }
    let clamped = spec.clamp(desired);
    if clamped != desired {
        why.push_str(&format!(" (kept within {}..{})", spec.min, spec.max));
    }
    (
        Decision {
            desired: clamped,
            panic,
            stable_concurrency: Some(stable),
            panic_concurrency: Some(panic_avg),
            reason: why,
        },
        next,
    )
}

/// Keeps the recommendations of the last `scale_down_delay`, this one included.
fn record(state: &mut AutoscalerState, now_ms: u64, desired: u32, spec: &ScaleSpec) {
    let delay = millis(spec.scale_down_delay);
    state.recommendations.push_back((now_ms, desired));
    while state
        .recommendations
        .front()
        .is_some_and(|&(at, _)| now_ms.saturating_sub(at) > delay)
    {
        state.recommendations.pop_front();
    }
}

/// The mean of the samples taken within `window_ms` before `now_ms`.
fn average(samples: &[Sample], now_ms: u64, window_ms: u64) -> Option<f64> {
    let from = now_ms.saturating_sub(window_ms);
    let (sum, n) = samples
        .iter()
        .filter(|s| s.at_ms > from && s.at_ms <= now_ms && s.in_flight.is_finite())
        .fold((0.0, 0u32), |(sum, n), s| {
            (sum + s.in_flight.max(0.0), n + 1)
        });
    (n > 0).then(|| sum / f64::from(n))
}

fn to_count(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(MAX_INSTANCES) {
        MAX_INSTANCES
    } else {
        x as u32
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(min: u32, max: u32) -> ScaleSpec {
        ScaleSpec {
            min,
            max,
            concurrency: 10,
            window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            scale_down_delay: Duration::from_secs(30),
            idle: Duration::from_secs(300),
        }
    }

    fn steady(now_ms: u64, in_flight: f64, secs: u64) -> Vec<Sample> {
        (0..secs * 10)
            .map(|i| Sample {
                at_ms: now_ms - (secs * 10 - 1 - i) * 100,
                in_flight,
            })
            .collect()
    }

    fn obs(now_ms: u64, current: u32, samples: &[Sample]) -> Observation<'_> {
        Observation {
            now_ms,
            current,
            ready: current,
            samples,
            last_request_ms: Some(now_ms),
            watching_since_ms: 0,
            waiting: 0,
        }
    }

    #[test]
    fn steady_load_asks_for_load_over_target() {
        let now = 1_000_000;
        let samples = steady(now, 45.0, 60);
        let (d, _) = decide(&spec(1, 20), &Default::default(), &obs(now, 4, &samples));
        assert_eq!(d.desired, 5);
        assert!(!d.panic);
        assert!(d.reason.contains("45.0 in flight"), "{}", d.reason);
    }

    #[test]
    fn a_burst_panics_and_scales_up_at_once() {
        let now = 1_000_000;
        let mut samples = steady(now - 6_000, 5.0, 54);
        samples.extend(steady(now, 100.0, 6));
        let (d, state) = decide(&spec(1, 50), &Default::default(), &obs(now, 1, &samples));
        assert!(d.panic);
        assert_eq!(d.desired, 10);
        assert_eq!(state.panic_since_ms, Some(now));
    }

    #[test]
    fn going_down_waits_for_the_delay() {
        let s = spec(1, 20);
        let mut state = AutoscalerState::default();
        let mut now = 1_000_000;
        let busy = steady(now, 50.0, 60);
        let (d, next) = decide(&s, &state, &obs(now, 5, &busy));
        assert_eq!(d.desired, 5);
        state = next;
        // Quiet from now on: the count stays until 30 s of lower recommendations passed.
        let mut seen_down_at = None;
        for step in 1..=40 {
            now += 1_000;
            let quiet = steady(now, 0.0, 60);
            let (d, next) = decide(&s, &state, &obs(now, 5, &quiet));
            state = next;
            if d.desired < 5 && seen_down_at.is_none() {
                seen_down_at = Some(step);
            }
        }
        assert_eq!(seen_down_at, Some(31));
    }

    #[test]
    fn zero_only_after_idle() {
        let s = spec(0, 5);
        let now = 10_000_000;
        let quiet = steady(now, 0.0, 60);
        let mut o = obs(now, 1, &quiet);
        o.last_request_ms = Some(now - 299_000);
        let (d, _) = decide(&s, &AutoscalerState::default(), &o);
        assert_eq!(d.desired, 1);
        o.last_request_ms = Some(now - 300_000);
        let (d, _) = decide(&s, &AutoscalerState::default(), &o);
        assert_eq!(d.desired, 0, "{}", d.reason);
        assert!(d.reason.contains("scaled to zero"));
    }

    #[test]
    fn a_held_request_wakes_an_environment_at_zero() {
        let s = spec(0, 5);
        let now = 10_000_000;
        let mut o = obs(now, 0, &[]);
        o.ready = 0;
        o.waiting = 1;
        let (d, _) = decide(&s, &AutoscalerState::default(), &o);
        assert_eq!(d.desired, 1);
        assert!(d.reason.contains("1 request held"));
    }

    #[test]
    fn checks_its_relations() {
        let mut s = spec(3, 2);
        assert!(s
            .check()
            .unwrap_err()
            .contains("min (3) is more than max (2)"));
        s = spec(0, 2);
        s.concurrency = 0;
        assert!(s.check().unwrap_err().contains("concurrency"));
        s = spec(0, 2);
        s.panic_window = Duration::from_secs(120);
        assert!(s.check().is_err());
        assert!(spec(0, 2).check().is_ok());
    }

    #[test]
    fn a_deployment_starts_with_the_live_count_within_bounds() {
        let s = spec(0, 8);
        assert_eq!(s.starting_count(Some(5)), 5);
        assert_eq!(s.starting_count(Some(12)), 8);
        assert_eq!(s.starting_count(Some(0)), 1);
        assert_eq!(s.starting_count(None), 1);
        assert_eq!(spec(3, 8).starting_count(None), 3);
    }

    fn arb_spec() -> impl Strategy<Value = ScaleSpec> {
        (
            0u32..20,
            1u32..40,
            1u32..50,
            1u64..120,
            1u64..30,
            0u64..60,
            1u64..600,
        )
            .prop_map(
                |(min, extra, concurrency, window, panic, delay, idle)| ScaleSpec {
                    min,
                    max: min.max(1) + extra,
                    concurrency,
                    window: Duration::from_secs(window.max(panic)),
                    panic_window: Duration::from_secs(panic.min(window.max(panic))),
                    scale_down_delay: Duration::from_secs(delay),
                    idle: Duration::from_secs(idle),
                },
            )
    }

    fn arb_samples() -> impl Strategy<Value = Vec<(u64, f64)>> {
        prop::collection::vec((0u64..200_000, 0.0f64..5_000.0), 0..60)
    }

    fn arb_state() -> impl Strategy<Value = AutoscalerState> {
        (
            prop::option::of(800_000u64..1_000_000),
            prop::collection::vec((800_000u64..1_000_000, 0u32..60), 0..10),
        )
            .prop_map(|(panic_since_ms, recs)| AutoscalerState {
                panic_since_ms,
                recommendations: recs.into_iter().collect(),
            })
    }

    proptest! {
        #[test]
        fn never_outside_bounds_never_down_in_panic_and_deterministic(
            s in arb_spec(),
            state in arb_state(),
            raw in arb_samples(),
            current in 0u32..60,
            ready in 0u32..60,
            waiting in 0u64..3,
            last in prop::option::of(0u64..1_000_000),
        ) {
            let now = 1_000_000u64;
            let mut samples: Vec<Sample> = raw
                .into_iter()
                .map(|(ago, in_flight)| Sample { at_ms: now - ago, in_flight })
                .collect();
            samples.sort_by_key(|s| s.at_ms);
            let o = Observation {
                now_ms: now,
                current,
                ready: ready.min(current),
                samples: &samples,
                last_request_ms: last,
                watching_since_ms: 0,
                waiting,
            };
            let (d, next) = decide(&s, &state, &o);
            prop_assert!(d.desired >= s.min && d.desired <= s.max, "{d:?} {s:?}");
            if d.panic {
                prop_assert!(d.desired >= current.min(s.max), "{d:?} current {current}");
            }
            if d.desired == 0 {
                prop_assert_eq!(s.min, 0);
                prop_assert_eq!(waiting, 0);
                let in_flight_now = samples.last().map_or(0.0, |x| x.in_flight);
                prop_assert_eq!(in_flight_now, 0.0);
            }
            let (again, next_again) = decide(&s, &state, &o);
            prop_assert_eq!(&d, &again);
            prop_assert_eq!(next, next_again);
        }
    }
}
