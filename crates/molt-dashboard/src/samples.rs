//! The last hour of each app's traffic, for the charts: every [`SAMPLE_EVERY`] the router's
//! per-environment counters (requests, status classes, latency histogram) are read, and the
//! difference since the last look becomes one sample per app, kept in a ring of [`KEEP`].
//! Memory only: a restart starts a new hour.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use molt_control::{Controller, EnvMetrics, LATENCY_BUCKETS};
use tokio_util::sync::CancellationToken;

/// How often the counters are read.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per app: one hour.
pub(crate) const KEEP: usize = 720;

/// One app's traffic over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// Requests answered (or failed) per second.
    pub(crate) per_second: f64,
    /// Share of them answered with 5xx, 0 to 1.
    pub(crate) error_rate: f64,
    /// The 99th percentile's bucket bound, in ms (`None`: no requests).
    pub(crate) p99_ms: Option<f64>,
}

/// Cumulative counters of one environment at the last look.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    cumulative: [u64; LATENCY_BUCKETS.len() + 1],
}

/// Every app's ring, and the counters of the last look.
#[derive(Default)]
pub(crate) struct Samples {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    rings: BTreeMap<String, VecDeque<Sample>>,
    last: HashMap<String, Counters>,
}

impl Samples {
    /// The app's samples, oldest first.
    pub(crate) fn of(&self, app: &str) -> Vec<Sample> {
        let state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state
            .rings
            .get(app)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Adds one look at the counters, `seconds` after the last one.
    fn record(&self, envs: &[EnvMetrics], seconds: f64) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut per_app: BTreeMap<String, Counters> = BTreeMap::new();
        let mut seen = HashMap::new();
        for env in envs {
            let live = &env.traffic.live;
            let now = Counters {
                requests: live.requests(),
                errors: live.classes[4],
                cumulative: live.latency.cumulative,
            };
            let before = state.last.get(&env.env).copied().unwrap_or_default();
            let sum = per_app.entry(env.app.clone()).or_default();
            sum.requests += now.requests.saturating_sub(before.requests);
            sum.errors += now.errors.saturating_sub(before.errors);
            for (i, c) in sum.cumulative.iter_mut().enumerate() {
                *c += now.cumulative[i].saturating_sub(before.cumulative[i]);
            }
            seen.insert(env.env.clone(), now);
        }
        state.last = seen;
        for (app, delta) in per_app {
            let ring = state.rings.entry(app).or_default();
            if ring.len() == KEEP {
                ring.pop_front();
            }
            ring.push_back(sample_of(&delta, seconds));
        }
    }
}

/// A sample from the counters of one interval.
fn sample_of(delta: &Counters, seconds: f64) -> Sample {
    let requests = delta.requests;
    Sample {
        per_second: requests as f64 / seconds.max(0.001),
        error_rate: if requests == 0 {
            0.0
        } else {
            delta.errors as f64 / requests as f64
        },
        p99_ms: p99_ms(&delta.cumulative),
    }
}

/// The upper bound (ms) of the bucket holding the 99th percentile; the last bound for the
/// `+Inf` bucket.
fn p99_ms(cumulative: &[u64; LATENCY_BUCKETS.len() + 1]) -> Option<f64> {
    let total = cumulative[LATENCY_BUCKETS.len()];
    if total == 0 {
        return None;
    }
    let wanted = (total * 99).div_ceil(100);
    let index = cumulative
        .iter()
        .position(|&c| c >= wanted)
        .unwrap_or(LATENCY_BUCKETS.len());
    let bound = LATENCY_BUCKETS
        .get(index)
        .or(LATENCY_BUCKETS.last())
        .copied()
        .unwrap_or(0.0);
    Some(bound * 1000.0)
}

/// Reads the counters every [`SAMPLE_EVERY`] while the dashboard (the owner of `samples`)
/// exists: the loop ends at the first look after it is dropped, or at `stop`.
pub(crate) async fn run(controller: Controller, samples: Weak<Samples>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(samples) = samples.upgrade() else {
            return;
        };
        match controller.metrics().await {
            Ok(snapshot) => {
                let seconds = last.elapsed().as_secs_f64();
                last = tokio::time::Instant::now();
                samples.record(&snapshot.envs, seconds);
            }
            Err(error) => tracing::debug!(%error, "the dashboard could not read the counters"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_is_the_bound_of_its_bucket() {
        let mut c = [0u64; LATENCY_BUCKETS.len() + 1];
        assert_eq!(p99_ms(&c), None);
        // 100 requests: 98 under 1 ms, 2 under 250 ms.
        for (i, v) in c.iter_mut().enumerate() {
            *v = if i < 7 { 98 } else { 100 };
        }
        assert_eq!(p99_ms(&c), Some(250.0));
        let mut slow = [0u64; LATENCY_BUCKETS.len() + 1];
        slow[LATENCY_BUCKETS.len()] = 5;
        assert_eq!(p99_ms(&slow), Some(10_000.0));
    }

    #[test]
    fn a_sample_is_a_rate_over_its_interval() {
        let mut delta = Counters {
            requests: 50,
            errors: 5,
            ..Default::default()
        };
        delta.cumulative = [50; LATENCY_BUCKETS.len() + 1];
        let s = sample_of(&delta, 5.0);
        assert_eq!(s.per_second, 10.0);
        assert_eq!(s.error_rate, 0.1);
        assert_eq!(s.p99_ms, Some(1.0));
    }
}
