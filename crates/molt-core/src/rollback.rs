//! What `molt rollback` goes back to, and whether that can be one route change.
//!
//! A rollback is *warm* when a ready environment still runs the target release (it stayed warm
//! after a swap): the route moves back to it. Otherwise it is *cold*: the target release is
//! deployed again. Without an explicit target, the most recently swapped-out warm environment's
//! release is the target, else the newest release before the one serving.

/// One live environment of the app, as a rollback sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFacts {
    /// Environment id.
    pub id: String,
    /// The release it runs.
    pub release: u64,
    /// True when it is ready to take traffic.
    pub ready: bool,
    /// End of its rollback window (ms since the epoch), set when the route left it.
    pub warm_until_ms: Option<u64>,
}

/// Where a rollback goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPlan {
    /// The release rolled back to.
    pub release: u64,
    /// The ready environment running it to swap to (warm), if any; `None` means a new
    /// deployment of the release (cold). A warm swap that fails falls back to cold.
    pub warm_env: Option<String>,
}

/// Why there is nothing to roll back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No warm environment, and no release older than the one serving.
    NoEarlierRelease {
        /// The release serving.
        serving: u64,
    },
    /// Nothing serves the app and no environment is warm.
    NothingDeployed,
    /// The target is what serves already.
    AlreadyServes(u64),
    /// The target release does not exist.
    UnknownRelease(u64),
}

/// Decides a rollback of an app. `routed` is the environment its route points at, `envs` its
/// live environments newest first, `releases` its release numbers, `to` the release asked for.
pub fn plan(
    routed: Option<&str>,
    envs: &[EnvFacts],
    releases: &[u64],
    to: Option<u64>,
) -> Result<RollbackPlan, Refusal> {
    let serving = routed
        .and_then(|r| envs.iter().find(|e| e.id == r))
        .map(|e| e.release);
    let target = match to {
        Some(n) => n,
        None => {
            let warm = envs
                .iter()
                .filter(|e| Some(e.id.as_str()) != routed && e.ready)
                .max_by_key(|e| e.warm_until_ms.unwrap_or(0));
            match (warm, serving) {
                (Some(e), _) => e.release,
                (None, Some(serving)) => releases
                    .iter()
                    .copied()
                    .filter(|n| *n < serving)
                    .max()
                    .ok_or(Refusal::NoEarlierRelease { serving })?,
                (None, None) => return Err(Refusal::NothingDeployed),
            }
        }
    };
    if Some(target) == serving {
        return Err(Refusal::AlreadyServes(target));
    }
    if !releases.contains(&target) {
        return Err(Refusal::UnknownRelease(target));
    }
    let warm_env = envs
        .iter()
        .filter(|e| e.release == target && e.ready)
        .max_by_key(|e| e.warm_until_ms.unwrap_or(0))
        .map(|e| e.id.clone());
    Ok(RollbackPlan {
        release: target,
        warm_env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(id: &str, release: u64, ready: bool, warm: Option<u64>) -> EnvFacts {
        EnvFacts {
            id: id.to_string(),
            release,
            ready,
            warm_until_ms: warm,
        }
    }

    #[test]
    fn a_warm_environment_makes_the_rollback_one_swap() {
        // v3 serves; v2 was swapped out last (latest window end), v1 before it.
        let envs = [
            env("e3", 3, true, None),
            env("e2", 2, true, Some(2_000)),
            env("e1", 1, true, Some(1_000)),
        ];
        let p = plan(Some("e3"), &envs, &[1, 2, 3], None).unwrap();
        assert_eq!(
            p,
            RollbackPlan {
                release: 2,
                warm_env: Some("e2".into())
            }
        );
        // Asked for v1, still warm: a swap to it too.
        let p = plan(Some("e3"), &envs, &[1, 2, 3], Some(1)).unwrap();
        assert_eq!(p.warm_env.as_deref(), Some("e1"));
    }

    #[test]
    fn without_a_warm_environment_the_rollback_is_a_cold_redeploy() {
        // v3 serves and nothing else runs: the release before it, deployed again.
        let envs = [env("e3", 3, true, None)];
        let p = plan(Some("e3"), &envs, &[1, 2, 3], None).unwrap();
        assert_eq!(
            p,
            RollbackPlan {
                release: 2,
                warm_env: None
            }
        );
        // An environment that is not ready (still starting, say) is not warm.
        let envs = [env("e3", 3, true, None), env("e2", 2, false, Some(5))];
        assert_eq!(
            plan(Some("e3"), &envs, &[1, 2, 3], None).unwrap().warm_env,
            None
        );
        // An explicit target that nothing runs any more.
        let envs = [env("e3", 3, true, None), env("e2", 2, true, Some(5))];
        let p = plan(Some("e3"), &envs, &[1, 2, 3], Some(1)).unwrap();
        assert_eq!((p.release, p.warm_env), (1, None));
    }

    #[test]
    fn refusals_say_why() {
        let serving = [env("e1", 1, true, None)];
        assert_eq!(
            plan(Some("e1"), &serving, &[1], None),
            Err(Refusal::NoEarlierRelease { serving: 1 })
        );
        assert_eq!(plan(None, &[], &[], None), Err(Refusal::NothingDeployed));
        assert_eq!(
            plan(Some("e1"), &serving, &[1, 2], Some(1)),
            Err(Refusal::AlreadyServes(1))
        );
        assert_eq!(
            plan(Some("e1"), &serving, &[1], Some(7)),
            Err(Refusal::UnknownRelease(7))
        );
        // With nothing routed, a warm environment is still a way back.
        let warm = [env("e2", 2, true, Some(9))];
        assert_eq!(
            plan(None, &warm, &[1, 2], None).map(|p| p.warm_env),
            Ok(Some("e2".into()))
        );
    }

    proptest! {
        /// A plan never targets what serves, always names an existing release, takes the
        /// release asked for, and is warm exactly when a ready environment runs the target
        /// (then it picks one of those); every refusal is true.
        #[test]
        fn plans_are_consistent(
            envs in proptest::collection::vec((1u64..6, any::<bool>(), proptest::option::of(0u64..100)), 0..6),
            routed in proptest::option::of(0usize..6),
            to in proptest::option::of(0u64..7),
        ) {
            let envs: Vec<EnvFacts> = envs
                .iter()
                .enumerate()
                .map(|(i, (release, ready, warm))| env(&format!("e{i}"), *release, *ready, *warm))
                .collect();
            let routed = routed.filter(|i| *i < envs.len()).map(|i| envs[i].id.clone());
            let releases = [1, 2, 3, 4, 5];
            let serving = routed
                .as_ref()
                .and_then(|r| envs.iter().find(|e| &e.id == r))
                .map(|e| e.release);
            match plan(routed.as_deref(), &envs, &releases, to) {
                Ok(p) => {
                    prop_assert!(releases.contains(&p.release));
                    prop_assert_ne!(Some(p.release), serving);
                    if let Some(n) = to {
                        prop_assert_eq!(p.release, n);
                    }
                    if let Some(id) = &p.warm_env {
                        let e = envs.iter().find(|e| &e.id == id).unwrap();
                        prop_assert!(e.ready);
                        prop_assert_eq!(e.release, p.release);
                    } else {
                        prop_assert!(!envs.iter().any(|e| e.ready && e.release == p.release));
                    }
                }
                Err(Refusal::AlreadyServes(n)) => prop_assert_eq!(Some(n), serving),
                Err(Refusal::UnknownRelease(n)) => prop_assert!(!releases.contains(&n)),
                Err(Refusal::NothingDeployed) => {
                    prop_assert!(to.is_none() && serving.is_none());
                }
                Err(Refusal::NoEarlierRelease { serving: s }) => {
                    prop_assert_eq!(Some(s), serving);
                    prop_assert!(releases.iter().all(|n| *n >= s));
                }
            }
        }
    }
}
