//! The watch after a swap: the new environment's health keeps being judged until the watch
//! window ends; if it serves nothing while the environment it replaced is still warm, the
//! route goes back there. With nothing warm to go back to, the watch can only say so.

use std::time::Duration;

/// When the watch of a deployment swapped at `swap_at_ms` ends (ms since the epoch).
pub fn window_end_ms(swap_at_ms: u64, watch: Duration) -> u64 {
    swap_at_ms + watch.as_millis() as u64
}

/// One look at a deployment during its watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// Instances of the new environment that take traffic (healthy, or drifted and being
    /// replaced: their requests wait for the replacements).
    pub serving_instances: usize,
    /// The environment the route left is still ready, with a healthy instance.
    pub previous_warm: bool,
}

/// What the watch does after a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The new environment serves: keep watching.
    KeepWatching,
    /// The new environment serves nothing and the previous one is warm: swap back.
    SwapBack,
    /// The new environment serves nothing and there is nowhere to go back to: say so and
    /// keep watching (it may recover; the reconciler replaces what died).
    Stranded,
}

impl Look {
    /// The watch's decision.
    pub fn verdict(&self) -> Verdict {
        match (self.serving_instances, self.previous_warm) {
            (0, true) => Verdict::SwapBack,
            (0, false) => Verdict::Stranded,
            _ => Verdict::KeepWatching,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn swaps_back_only_when_nothing_serves_and_the_previous_is_warm() {
        let look = |serving_instances, previous_warm| {
            Look {
                serving_instances,
                previous_warm,
            }
            .verdict()
        };
        assert_eq!(look(0, true), Verdict::SwapBack);
        assert_eq!(look(0, false), Verdict::Stranded);
        assert_eq!(look(1, true), Verdict::KeepWatching);
        assert_eq!(look(2, false), Verdict::KeepWatching);
        assert_eq!(window_end_ms(10_000, Duration::from_secs(5)), 15_000);
    }

    proptest! {
        /// An environment that serves is never swapped away from, and the route never goes
        /// back to an environment that is not warm.
        #[test]
        fn never_swaps_back_from_a_serving_env_or_to_a_cold_one(serving in 0usize..4, warm in any::<bool>()) {
            let verdict = Look { serving_instances: serving, previous_warm: warm }.verdict();
            if verdict == Verdict::SwapBack {
                prop_assert!(serving == 0 && warm);
            }
            prop_assert_eq!(verdict == Verdict::KeepWatching, serving > 0);
        }
    }
}
