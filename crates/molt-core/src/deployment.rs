//! The deployment state machine: which step follows which, and what a restart must do.
//!
//! The controller journals every transition; this module decides which transitions exist, so a
//! deployment can never, say, swap before its environment was healthy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::InputError;

/// Where a deployment stands. The order of the pre-swap states is the order of the steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    /// Recorded, nothing done yet.
    Pending,
    /// The new environment exists in the store.
    EnvCreated,
    /// Its instances were started.
    InstancesStarted,
    /// Every instance passed its health check.
    Healthy,
    /// A shadow deployment: the new environment gets copies of a share of the live idempotent
    /// requests (answers discarded); the route has not moved. Waits to be promoted or abandoned.
    Shadowing,
    /// A canary deployment: the route splits the app's clients between the live environment
    /// and the new one by the current step's weight, judged each analysis interval.
    Canarying,
    /// The shadowed or canary environment was promoted: the swap comes next, as for any
    /// deployment.
    Promoted,
    /// The route points at the new environment.
    Swapped,
    /// The old environment has no request in flight; health is being watched.
    Drained,
    /// The watch window passed; the deployment is done.
    Succeeded,
    /// The new environment never became healthy; traffic never moved.
    Failed,
    /// Health failed during the watch window and the route was swapped back.
    RolledBack,
    /// A newer deployment of the same app took over.
    Superseded,
    /// The shadowed environment was abandoned and retired; traffic never moved.
    Abandoned,
    /// The canary was aborted (by its analysis or the user): its weight went back to 0 and its
    /// environment was retired.
    Aborted,
}

/// What happened, as reported by the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployEvent {
    /// The environment record was written.
    EnvCreated,
    /// All instances were started.
    InstancesStarted,
    /// Every instance is healthy.
    BecameHealthy,
    /// Mirroring to the new (healthy) environment started instead of the swap.
    ShadowStarted,
    /// The user promoted the shadowed environment.
    Promoted,
    /// The user abandoned the shadowed environment.
    Abandoned,
    /// The route started splitting traffic to the new (healthy) environment instead of the swap.
    CanaryStarted,
    /// A canary's analysis interval was judged, or it moved to its next step.
    CanaryProgressed,
    /// The canary's weight went back to 0.
    CanaryAborted,
    /// Instances did not become healthy before the start deadline (or failed to start).
    HealthFailed,
    /// The route now points at the new environment.
    Swapped,
    /// The old environment drained (or had nothing to drain).
    DrainFinished,
    /// The watch window ended with the new environment healthy.
    WatchPassed,
    /// The new environment turned unhealthy during the watch window and the route went back.
    WatchFailed,
    /// A newer deployment of the same app started.
    Superseded,
}

/// What the controller does with an unfinished deployment after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Carry on from the journaled state: every step is idempotent.
    Resume,
    /// Nothing to do: the deployment had finished.
    Finished,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a deployment in state '{from}' cannot take event '{event:?}'")]
pub struct InvalidTransition {
    /// The state the deployment was in.
    pub from: DeployState,
    /// The refused event.
    pub event: DeployEvent,
}

impl DeployState {
    /// Every state, in step order.
    pub const ALL: [DeployState; 15] = [
        DeployState::Pending,
        DeployState::EnvCreated,
        DeployState::InstancesStarted,
        DeployState::Healthy,
        DeployState::Shadowing,
        DeployState::Canarying,
        DeployState::Promoted,
        DeployState::Swapped,
        DeployState::Drained,
        DeployState::Succeeded,
        DeployState::Failed,
        DeployState::RolledBack,
        DeployState::Superseded,
        DeployState::Abandoned,
        DeployState::Aborted,
    ];

    /// Applies an event, or refuses it.
    pub fn next(self, event: DeployEvent) -> Result<DeployState, InvalidTransition> {
        use DeployEvent as E;
        use DeployState as S;
        let to = match (self, event) {
            (S::Pending, E::EnvCreated) => S::EnvCreated,
            (S::EnvCreated, E::InstancesStarted) => S::InstancesStarted,
            (S::InstancesStarted, E::BecameHealthy) => S::Healthy,
            (S::Healthy, E::ShadowStarted) => S::Shadowing,
            (S::Shadowing, E::Promoted) => S::Promoted,
            (S::Shadowing, E::Abandoned) => S::Abandoned,
            (S::Healthy, E::CanaryStarted) => S::Canarying,
            (S::Canarying, E::CanaryProgressed) => S::Canarying,
            (S::Canarying, E::Promoted) => S::Promoted,
            (S::Canarying, E::CanaryAborted) => S::Aborted,
            (s, E::HealthFailed) if s.is_before_swap() => S::Failed,
            (S::Healthy | S::Promoted, E::Swapped) => S::Swapped,
            (S::Swapped, E::DrainFinished) => S::Drained,
            (S::Drained, E::WatchPassed) => S::Succeeded,
            (S::Swapped | S::Drained, E::WatchFailed) => S::RolledBack,
            (s, E::Superseded) if !s.is_terminal() => S::Superseded,
            (from, event) => return Err(InvalidTransition { from, event }),
        };
        Ok(to)
    }

    /// True once nothing more will happen to this deployment.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeployState::Succeeded
                | DeployState::Failed
                | DeployState::RolledBack
                | DeployState::Superseded
                | DeployState::Abandoned
                | DeployState::Aborted
        )
    }

    /// True when the route has been moved to this deployment's environment (and may still be).
    pub fn route_moved(self) -> bool {
        matches!(
            self,
            DeployState::Swapped | DeployState::Drained | DeployState::Succeeded
        )
    }

    /// True while traffic has not yet moved: the new environment is disposable.
    pub fn is_before_swap(self) -> bool {
        matches!(
            self,
            DeployState::Pending
                | DeployState::EnvCreated
                | DeployState::InstancesStarted
                | DeployState::Healthy
                | DeployState::Shadowing
                | DeployState::Canarying
                | DeployState::Promoted
        )
    }

    /// What a restarted controller does with a deployment in this state.
    pub fn recovery(self) -> Recovery {
        if self.is_terminal() {
            Recovery::Finished
        } else {
            Recovery::Resume
        }
    }

    /// The state's stable name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployState::Pending => "pending",
            DeployState::EnvCreated => "env_created",
            DeployState::InstancesStarted => "instances_started",
            DeployState::Healthy => "healthy",
            DeployState::Shadowing => "shadowing",
            DeployState::Canarying => "canarying",
            DeployState::Promoted => "promoted",
            DeployState::Swapped => "swapped",
            DeployState::Drained => "drained",
            DeployState::Succeeded => "succeeded",
            DeployState::Failed => "failed",
            DeployState::RolledBack => "rolled_back",
            DeployState::Superseded => "superseded",
            DeployState::Abandoned => "abandoned",
            DeployState::Aborted => "aborted",
        }
    }
}

impl fmt::Display for DeployState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Of the deployments unfinished when molt stopped, as (app, id), the ones a restart resumes:
/// the newest (highest id) of each app. Each older one had been superseded by a newer one
/// before molt stopped, and is marked so.
pub fn resumed_at_restart<'a>(
    unfinished: impl IntoIterator<Item = (&'a str, u64)>,
) -> BTreeSet<u64> {
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for (app, id) in unfinished {
        let n = newest.entry(app).or_insert(id);
        *n = (*n).max(id);
    }
    newest.into_values().collect()
}

impl FromStr for DeployState {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, InputError> {
        DeployState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| InputError::Invalid(format!("unknown deployment state '{s}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EVENTS: [DeployEvent; 15] = [
        DeployEvent::EnvCreated,
        DeployEvent::InstancesStarted,
        DeployEvent::BecameHealthy,
        DeployEvent::ShadowStarted,
        DeployEvent::Promoted,
        DeployEvent::Abandoned,
        DeployEvent::CanaryStarted,
        DeployEvent::CanaryProgressed,
        DeployEvent::CanaryAborted,
        DeployEvent::HealthFailed,
        DeployEvent::Swapped,
        DeployEvent::DrainFinished,
        DeployEvent::WatchPassed,
        DeployEvent::WatchFailed,
        DeployEvent::Superseded,
    ];

    #[test]
    fn happy_path() {
        let mut s = DeployState::Pending;
        for e in [
            DeployEvent::EnvCreated,
            DeployEvent::InstancesStarted,
            DeployEvent::BecameHealthy,
            DeployEvent::Swapped,
            DeployEvent::DrainFinished,
            DeployEvent::WatchPassed,
        ] {
            s = s.next(e).unwrap();
        }
        assert_eq!(s, DeployState::Succeeded);
    }

    #[test]
    fn a_shadow_deployment_swaps_only_once_promoted() {
        let shadowing = DeployState::Pending
            .next(DeployEvent::EnvCreated)
            .and_then(|s| s.next(DeployEvent::InstancesStarted))
            .and_then(|s| s.next(DeployEvent::BecameHealthy))
            .and_then(|s| s.next(DeployEvent::ShadowStarted))
            .unwrap();
        assert_eq!(shadowing, DeployState::Shadowing);
        assert!(shadowing.next(DeployEvent::Swapped).is_err());
        assert!(shadowing.is_before_swap() && !shadowing.route_moved());
        let promoted = shadowing.next(DeployEvent::Promoted).unwrap();
        assert_eq!(
            promoted.next(DeployEvent::Swapped).unwrap(),
            DeployState::Swapped
        );
        assert!(promoted.next(DeployEvent::ShadowStarted).is_err());
        let abandoned = shadowing.next(DeployEvent::Abandoned).unwrap();
        assert!(abandoned.is_terminal());
        assert_eq!(
            shadowing.next(DeployEvent::Superseded).unwrap(),
            DeployState::Superseded
        );
        assert_eq!(abandoned.recovery(), Recovery::Finished);
        assert_eq!(shadowing.recovery(), Recovery::Resume);
    }

    #[test]
    fn a_canary_steps_in_place_and_ends_promoted_or_aborted() {
        let canary = DeployState::Healthy
            .next(DeployEvent::CanaryStarted)
            .unwrap();
        assert_eq!(canary, DeployState::Canarying);
        assert_eq!(
            canary.next(DeployEvent::CanaryProgressed).unwrap(),
            DeployState::Canarying
        );
        assert!(canary.next(DeployEvent::Swapped).is_err());
        assert!(canary.is_before_swap() && canary.recovery() == Recovery::Resume);
        let promoted = canary.next(DeployEvent::Promoted).unwrap();
        assert_eq!(
            promoted.next(DeployEvent::Swapped).unwrap(),
            DeployState::Swapped
        );
        let aborted = canary.next(DeployEvent::CanaryAborted).unwrap();
        assert!(aborted.is_terminal() && !aborted.route_moved());
        assert!(DeployState::Shadowing
            .next(DeployEvent::CanaryAborted)
            .is_err());
    }

    #[test]
    fn a_restart_resumes_the_newest_deployment_of_each_app() {
        let unfinished = [("shop", 3), ("blog", 4), ("shop", 7), ("shop", 5)];
        assert_eq!(
            resumed_at_restart(unfinished),
            BTreeSet::from([4, 7]),
            "shop's 3 and 5 were superseded by 7"
        );
        assert!(resumed_at_restart([]).is_empty());
    }

    #[test]
    fn names_round_trip() {
        for s in DeployState::ALL {
            assert_eq!(s.as_str().parse::<DeployState>().unwrap(), s);
        }
    }

    proptest! {
        /// Random event sequences: only legal transitions are taken, and the invariants hold.
        #[test]
        fn transitions_keep_invariants(events in proptest::collection::vec(0usize..15, 0..40)) {
            let mut state = DeployState::Pending;
            let mut was_healthy = false;
            let mut was_shadowing = false;
            let mut was_canary = false;
            for i in events {
                let event = EVENTS[i];
                match state.next(event) {
                    Ok(next) => {
                        // Terminal states absorb everything.
                        prop_assert!(!state.is_terminal());
                        // Traffic only moves to an environment that was healthy.
                        if next == DeployState::Swapped {
                            prop_assert!(was_healthy);
                        }
                        // Once the route moved, we never go back to a pre-swap step.
                        if state.route_moved() {
                            prop_assert!(!next.is_before_swap());
                        }
                        // A failed deployment never moved traffic.
                        if next == DeployState::Failed {
                            prop_assert!(state.is_before_swap());
                        }
                        // Only a shadowed or canary environment is promoted, only a
                        // shadowed one abandoned, only a canary aborted.
                        if next == DeployState::Promoted {
                            prop_assert!(matches!(state, DeployState::Shadowing | DeployState::Canarying));
                        }
                        if next == DeployState::Abandoned {
                            prop_assert_eq!(state, DeployState::Shadowing);
                        }
                        if next == DeployState::Aborted {
                            prop_assert_eq!(state, DeployState::Canarying);
                        }
                        // A canary splits only a healthy environment's way.
                        if next == DeployState::Canarying {
                            prop_assert!(was_healthy);
                        }
                        // A shadow or canary deployment swaps only once promoted.
                        if next == DeployState::Swapped && (was_shadowing || was_canary) {
                            prop_assert_eq!(state, DeployState::Promoted);
                        }
                        was_healthy |= next == DeployState::Healthy;
                        was_shadowing |= next == DeployState::Shadowing;
                        was_canary |= next == DeployState::Canarying;
                        state = next;
                    }
                    Err(e) => {
                        prop_assert_eq!(e.from, state);
                    }
                }
                prop_assert_eq!(state.recovery() == Recovery::Finished, state.is_terminal());
            }
        }

        /// Exactly one deployment per app resumes, and none newer of the same app is left.
        #[test]
        fn one_deployment_per_app_resumes(ids in proptest::collection::btree_map(0u64..50, 0usize..3, 0..12)) {
            let apps = ["a", "b", "c"];
            let unfinished: Vec<(&str, u64)> = ids.iter().map(|(id, app)| (apps[*app], *id)).collect();
            let resumed = resumed_at_restart(unfinished.iter().copied());
            for app in apps {
                let of_app: Vec<u64> = unfinished.iter().filter(|(a, _)| *a == app).map(|(_, id)| *id).collect();
                let kept: Vec<u64> = of_app.iter().copied().filter(|id| resumed.contains(id)).collect();
                prop_assert_eq!(kept.len(), usize::from(!of_app.is_empty()));
                if let Some(id) = kept.first() {
                    prop_assert_eq!(Some(id), of_app.iter().max());
                }
            }
        }

        /// From any non-terminal state there is a path to a terminal one (no dead ends).
        #[test]
        fn no_dead_ends(start in 0usize..15) {
            let state = DeployState::ALL[start];
            if !state.is_terminal() {
                prop_assert!(state.next(DeployEvent::Superseded).unwrap().is_terminal());
            }
        }
    }
}
