//! Per-environment traffic figures beyond the plain counters: response status classes and a
//! latency histogram with fixed buckets, for live and for mirrored (shadow) requests, and the
//! resilience counters (ejections, retries, budget exhaustion). Every update is one or two
//! relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets; a last `+Inf` bucket follows.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The same bounds in microseconds, for the hot path.
const BUCKET_MICROS: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// Status classes and latency of one kind of traffic (live or shadow) of an environment.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    classes: [AtomicU64; 5],
    /// Requests per latency bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BUCKET_MICROS.len() + 1],
    /// Sum of all latencies, in microseconds.
    sum_micros: AtomicU64,
    /// Requests that got no response at all (shadow requests whose upstream failed).
    failed: AtomicU64,
}

/// The live and shadow traffic of one environment, and what the router did to protect it.
#[derive(Debug, Default)]
pub(crate) struct TrafficCounters {
    pub(crate) live: Traffic,
    pub(crate) shadow: Traffic,
    /// Mirrors skipped because `shadow_concurrency` mirrors were already in flight.
    shadow_dropped: AtomicU64,
    /// Upstreams of this environment taken out of rotation.
    ejections: AtomicU64,
    /// Requests sent again to another instance after a connection failure.
    retries: AtomicU64,
    /// Retries refused because the retry budget was spent.
    budget_exhausted: AtomicU64,
}

/// A snapshot of [`Traffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrafficStats {
    /// Responses by status class: index 0 is 1xx, … index 4 is 5xx.
    pub classes: [u64; 5],
    /// Latency until the response head.
    pub latency: LatencyHistogram,
    /// Requests that got no response (shadow requests whose upstream failed or timed out).
    pub failed: u64,
}

/// Latency histogram, Prometheus style.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Cumulative counts: `cumulative[i]` requests took at most [`LATENCY_BUCKETS`]`[i]`
    /// seconds; the last entry is every request (`+Inf`).
    pub cumulative: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all latencies in seconds.
    pub sum_seconds: f64,
}

/// Traffic figures of one environment, snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EnvTraffic {
    /// Requests users sent (routed to this environment).
    pub live: TrafficStats,
    /// Requests mirrored to this environment as shadow traffic; their answers were discarded.
    pub shadow: TrafficStats,
    /// Mirrors skipped because too many were in flight.
    pub shadow_dropped: u64,
    /// Times an upstream of this environment was ejected.
    pub ejections: u64,
    /// Upstreams of this environment ejected right now.
    pub ejected: u64,
    /// Requests retried on another instance after a connection failure.
    pub retries: u64,
    /// Retries refused because the retry budget was spent.
    pub retry_budget_exhausted: u64,
}

impl Traffic {
    /// Counts one response with `status` that took `elapsed` until its head.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        self.record_latency(elapsed);
    }

    /// Counts a request that got no response after `elapsed`.
    pub(crate) fn record_failed(&self, elapsed: Duration) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.record_latency(elapsed);
    }

    fn record_latency(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn snapshot(&self) -> TrafficStats {
        let mut latency = LatencyHistogram::default();
        let mut total = 0;
        for (cumulative, bucket) in latency.cumulative.iter_mut().zip(&self.buckets) {
            total += bucket.load(Ordering::Relaxed);
            *cumulative = total;
        }
        latency.sum_seconds = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        TrafficStats {
            classes: std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed)),
            latency,
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl TrafficCounters {
    pub(crate) fn record_shadow_dropped(&self) {
        self.shadow_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_ejection(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot; `ejected` (a property of the current table) is filled in by the caller.
    pub(crate) fn snapshot(&self) -> EnvTraffic {
        EnvTraffic {
            live: self.live.snapshot(),
            shadow: self.shadow.snapshot(),
            shadow_dropped: self.shadow_dropped.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            ejected: 0,
            retries: self.retries.load(Ordering::Relaxed),
            retry_budget_exhausted: self.budget_exhausted.load(Ordering::Relaxed),
        }
    }
}

impl TrafficStats {
    /// All responses and failures counted.
    pub fn requests(&self) -> u64 {
        self.latency.cumulative[LATENCY_BUCKETS.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let traffic = Traffic::default();
        traffic.record(200, Duration::from_micros(1_000));
        traffic.record(204, Duration::from_micros(1_001));
        traffic.record(503, Duration::from_secs(60));
        traffic.record(99, Duration::ZERO);
        traffic.record_failed(Duration::from_millis(30));
        let stats = traffic.snapshot();
        assert_eq!(stats.classes, [1, 2, 0, 0, 1]);
        assert_eq!(stats.failed, 1);
        assert_eq!(stats.latency.cumulative[0], 2);
        assert_eq!(stats.latency.cumulative[1], 3);
        assert_eq!(stats.latency.cumulative[4], 3);
        assert_eq!(stats.latency.cumulative[5], 4);
        assert_eq!(stats.latency.cumulative[11], 4);
        assert_eq!(stats.latency.cumulative[12], 5);
        assert_eq!(stats.requests(), 5);
        assert!((stats.latency.sum_seconds - 60.032_001).abs() < 1e-9);
    }
}
