//! Router counters as molt reports them: what grew since a baseline, and summaries with
//! quantiles (for `molt shadow` and the comparison a shadow deployment records).

use molt_router::{EnvStats, TrafficStats, LATENCY_BUCKETS};
use molt_store::TrafficSummary;

use crate::Controller;

impl Controller {
    /// An environment's counters over every router: this process's own plus the fleet's
    /// latest reports.
    pub(crate) fn env_stats(&self, env: &str) -> EnvStats {
        let local = self.inner.router.env_stats(env);
        let fleet = self.inner.config.fleet.env_counts(env);
        EnvStats {
            accepted: local.accepted + fleet.accepted,
            in_flight: local.in_flight + fleet.in_flight,
            answered: local.answered + fleet.answered,
            failed: local.failed + fleet.failed,
        }
    }

    /// An environment's live traffic over every router: this process's own plus the fleet's
    /// latest reports (sent every second, so a fleet router's part lags by up to a second).
    /// What the canary and watch analyses judge.
    pub(crate) fn env_live_traffic(&self, env: &str) -> TrafficStats {
        let mut stats = self.inner.router.env_traffic(env).live;
        let fleet = self.inner.config.fleet.env_counts(env).live.to_stats();
        for (n, f) in stats.classes.iter_mut().zip(fleet.classes) {
            *n += f;
        }
        for (n, f) in stats
            .latency
            .cumulative
            .iter_mut()
            .zip(fleet.latency.cumulative)
        {
            *n += f;
        }
        stats.latency.sum_seconds += fleet.latency.sum_seconds;
        stats
    }

    /// True when no router, this process's or the fleet's, still has a request of `env` in
    /// flight (each fleet router counted by a report at the version in force or later).
    pub(crate) fn is_drained(&self, env: &str) -> bool {
        let fleet = &self.inner.config.fleet;
        self.inner.router.env_stats(env).in_flight == 0 && fleet.is_drained(env, fleet.version())
    }
}

/// Counters grown since `base` (all of them without one; a counter that went backwards, after
/// a restart, counts from zero).
pub(crate) fn since(now: &TrafficStats, base: Option<&TrafficStats>) -> TrafficStats {
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

/// An environment's counters as the API shows them: requests, status classes, mean and
/// quantile latencies.
pub(crate) fn summarize(env: &str, stats: &TrafficStats) -> TrafficSummary {
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
pub(crate) fn quantile_ms(stats: &TrafficStats, q: f64) -> Option<f64> {
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
