//! The retry budget of one environment: retries are paid from tokens that requests earn, so
//! when every instance fails, retries add at most a fixed share to the load instead of
//! multiplying it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::config::RetryBudget;

/// Hundredths of a retry: a request earns `ratio_percent` of them, a retry costs 100.
const RETRY_COST: i64 = 100;

/// Token balance of one environment. Lock-free: a request adds with one atomic, a retry takes
/// with a compare-and-swap loop.
#[derive(Debug, Default)]
pub(crate) struct RetryTokens {
    /// Hundredths of a retry available.
    balance: AtomicI64,
    /// The second (on the router's clock) of the last floor grant.
    granted_second: AtomicU64,
}

impl RetryTokens {
    /// A request is being sent upstream: it earns its share of a retry.
    pub(crate) fn deposit(&self, budget: &RetryBudget) {
        let earned = i64::from(budget.ratio_percent);
        if earned == 0 {
            return;
        }
        // A racing deposit may overshoot the cap by a few requests' worth; that is harmless.
        if self.balance.load(Ordering::Relaxed) < cap(budget) {
            self.balance.fetch_add(earned, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget; false when it is exhausted.
    pub(crate) fn withdraw(&self, budget: &RetryBudget, now_ms: u64) -> bool {
        self.grant_floor(budget, now_ms);
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                (balance >= RETRY_COST).then_some(balance - RETRY_COST)
            })
            .is_ok()
    }

    /// Adds the per-second floor once per second (only one second's worth after a quiet
    /// spell, so a quiet environment cannot save up).
    fn grant_floor(&self, budget: &RetryBudget, now_ms: u64) {
        if budget.min_per_second == 0 {
            return;
        }
        let second = now_ms / 1000 + 1;
        let last = self.granted_second.load(Ordering::Relaxed);
        if last >= second {
            return;
        }
        if self
            .granted_second
            .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let floor = i64::from(budget.min_per_second) * RETRY_COST;
            let cap = cap(budget);
            let _ = self
                .balance
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |balance| {
                    Some(balance.max(0).saturating_add(floor).min(cap.max(balance)))
                });
        }
    }
}

/// The most hundredths of a retry an environment may hold: ten seconds of floor, at least
/// 100 retries.
fn cap(budget: &RetryBudget) -> i64 {
    (i64::from(budget.min_per_second) * 10).max(100) * RETRY_COST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests() {
        let tokens = RetryTokens::default();
        let budget = RetryBudget {
            ratio_percent: 20,
            min_per_second: 0,
        };
        assert!(!tokens.withdraw(&budget, 5_000));
        let mut retries = 0;
        for _ in 0..100 {
            tokens.deposit(&budget);
            while tokens.withdraw(&budget, 5_000) {
                retries += 1;
            }
        }
        assert_eq!(retries, 20);
    }

    #[test]
    fn the_floor_is_granted_once_per_second() {
        let tokens = RetryTokens::default();
        let budget = RetryBudget {
            ratio_percent: 0,
            min_per_second: 3,
        };
        let taken = |at: u64| (0..10).filter(|_| tokens.withdraw(&budget, at)).count();
        assert_eq!(taken(10_000), 3);
        assert_eq!(taken(10_500), 0);
        assert_eq!(taken(11_000), 3);
        // A minute of quiet still grants one second's floor, not sixty.
        assert_eq!(taken(71_000), 3);
    }

    #[test]
    fn balance_is_capped() {
        let tokens = RetryTokens::default();
        let budget = RetryBudget {
            ratio_percent: 100,
            min_per_second: 0,
        };
        for _ in 0..1000 {
            tokens.deposit(&budget);
        }
        let taken = (0..1000).filter(|_| tokens.withdraw(&budget, 0)).count();
        assert_eq!(taken, 100);
    }
}
