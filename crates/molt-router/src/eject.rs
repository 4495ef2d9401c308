//! Passive health: an upstream whose connections keep failing is skipped for a while.
//!
//! The state lives per socket address in a registry the router keeps across publishes, so a
//! republished table (the controller republishes on every instance change) does not forget
//! that an address is failing. Every field is an atomic: the request path never locks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::EjectionPolicy;
use crate::stats::PerAddress;

/// Passive health of one upstream address.
#[derive(Debug, Default)]
pub(crate) struct UpstreamHealth {
    /// Connection failures in a row since the last success or ejection.
    failures: AtomicU32,
    /// Ejections in a row without a success in between; non-zero means ejected or on
    /// probation (the next failure ejects again, for twice as long).
    level: AtomicU32,
    /// Ejected until this instant ([`now_ms`]); 0 when never ejected.
    until_ms: AtomicU64,
}

/// Upstream address -> health, shared by every route to it. Locked only when publishing.
#[derive(Debug, Default)]
pub(crate) struct HealthRegistry {
    upstreams: PerAddress<UpstreamHealth>,
}

/// What a failure did to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still in rotation (or already ejected).
    Kept,
    /// Taken out of rotation now, for this many milliseconds.
    Ejected(u64),
}

impl UpstreamHealth {
    /// Whether the upstream is out of rotation at `now` (from [`now_ms`]).
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        self.until_ms.load(Ordering::Relaxed) > now
    }

    /// A response came back: the upstream is healthy (ends probation).
    pub(crate) fn record_success(&self) {
        // Loads first: the common case writes nothing, so the cache line stays shared.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.level.load(Ordering::Relaxed) != 0 {
            self.level.store(0, Ordering::Relaxed);
        }
    }

    /// A connection to the upstream failed before a response.
    pub(crate) fn record_failure(&self, policy: &EjectionPolicy) -> Verdict {
        if policy.consecutive_failures == 0 {
            return Verdict::Kept;
        }
        let now = now_ms();
        let until = self.until_ms.load(Ordering::Relaxed);
        if until > now {
            // A request that picked it before the ejection: nothing new learnt.
            return Verdict::Kept;
        }
        let level = self.level.load(Ordering::Relaxed);
        let on_probation = level > 0;
        if !on_probation
            && self.failures.fetch_add(1, Ordering::Relaxed) + 1 < policy.consecutive_failures
        {
            return Verdict::Kept;
        }
        let backoff = policy
            .base_backoff
            .saturating_mul(1 << level.min(16))
            .min(policy.max_backoff);
        let backoff_ms = u64::try_from(backoff.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // One of several concurrent failures ejects; the others see it ejected.
        match self.until_ms.compare_exchange(
            until,
            now.saturating_add(backoff_ms),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                self.failures.store(0, Ordering::Relaxed);
                self.level.store(level.saturating_add(1), Ordering::Relaxed);
                Verdict::Ejected(backoff_ms)
            }
            Err(_) => Verdict::Kept,
        }
    }
}

impl HealthRegistry {
    /// The health of each address (in order), created on first use.
    pub(crate) fn bind(
        &self,
        addrs: impl Iterator<Item = SocketAddr>,
    ) -> Arc<[Arc<UpstreamHealth>]> {
        self.upstreams.bind(addrs)
    }

    /// Forgets every address not in `keep` (no longer routed: its state is stale).
    pub(crate) fn retain(&self, keep: &HashSet<SocketAddr>) {
        self.upstreams.retain(|addr, _| keep.contains(addr));
    }
}

/// Milliseconds on a monotonic clock private to the router (never 0 after start-up, so an
/// `until_ms` of 0 always means "not ejected").
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(base_ms: u64) -> EjectionPolicy {
        EjectionPolicy {
            consecutive_failures: 3,
            base_backoff: Duration::from_millis(base_ms),
            max_backoff: Duration::from_millis(base_ms * 4),
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_and_backs_off_on_probation() {
        let health = UpstreamHealth::default();
        let hour = policy(3_600_000);
        assert_eq!(health.record_failure(&hour), Verdict::Kept);
        health.record_success();
        // A success in between resets the count.
        assert_eq!(health.record_failure(&hour), Verdict::Kept);
        assert_eq!(health.record_failure(&hour), Verdict::Kept);
        assert!(!health.is_ejected(now_ms()));
        assert_eq!(health.record_failure(&hour), Verdict::Ejected(3_600_000));
        assert!(health.is_ejected(now_ms()));
        // Failures of requests already under way do not extend it.
        assert_eq!(health.record_failure(&hour), Verdict::Kept);

        // Back on probation (the ejection ran out): one failure ejects again, twice as long,
        // doubling up to the cap.
        health.until_ms.store(1, Ordering::Relaxed);
        assert!(!health.is_ejected(now_ms()));
        assert_eq!(health.record_failure(&hour), Verdict::Ejected(7_200_000));
        health.until_ms.store(1, Ordering::Relaxed);
        assert_eq!(health.record_failure(&hour), Verdict::Ejected(14_400_000));
        health.until_ms.store(1, Ordering::Relaxed);
        assert_eq!(health.record_failure(&hour), Verdict::Ejected(14_400_000));
        // A success on probation ends it: three failures are needed again.
        health.until_ms.store(1, Ordering::Relaxed);
        health.record_success();
        assert_eq!(health.record_failure(&hour), Verdict::Kept);
    }

    #[test]
    fn zero_threshold_never_ejects() {
        let health = UpstreamHealth::default();
        let off = EjectionPolicy {
            consecutive_failures: 0,
            ..policy(1000)
        };
        for _ in 0..10 {
            assert_eq!(health.record_failure(&off), Verdict::Kept);
        }
        assert!(!health.is_ejected(now_ms()));
    }

    #[test]
    fn registry_shares_state_per_address_until_it_is_dropped() {
        let registry = HealthRegistry::default();
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let b = SocketAddr::from(([127, 0, 0, 1], 2));
        let first = registry.bind([a, b].into_iter());
        let again = registry.bind([b, a].into_iter());
        assert!(Arc::ptr_eq(&first[0], &again[1]));
        registry.retain(&HashSet::from([b]));
        let later = registry.bind([a, b].into_iter());
        assert!(!Arc::ptr_eq(&first[0], &later[0]));
        assert!(Arc::ptr_eq(&first[1], &later[1]));
    }
}
