//! Garbage collection by reachability: given a snapshot of what exists, decide what nothing
//! reaches any more.
//!
//! Roots: routed environments, environments inside their rollback window, environments of
//! deployments still in progress, pinned releases, the newest releases of each app, tagged images
//! and images imported recently. Everything else is collected.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::Digest;

/// One environment as GC sees it.
#[derive(Debug, Clone)]
pub struct EnvFacts {
    /// Environment id.
    pub id: String,
    /// Owning app.
    pub app: String,
    /// Release number it runs.
    pub release: u64,
    /// True when a route points at it.
    pub routed: bool,
    /// End of its rollback window (ms since the epoch), if it has one.
    pub warm_until_ms: Option<u64>,
    /// True while a non-terminal deployment owns it.
    pub deploying: bool,
}

/// One release as GC sees it.
#[derive(Debug, Clone)]
pub struct ReleaseFacts {
    /// Owning app.
    pub app: String,
    /// Release number.
    pub number: u64,
    /// The image it runs.
    pub image: Digest,
    /// Pinned releases are always kept.
    pub pinned: bool,
}

/// One stored image as GC sees it.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// The image.
    pub digest: Digest,
    /// When it was imported (ms since the epoch).
    pub created_ms: u64,
    /// True when a tag names it.
    pub tagged: bool,
}

/// Everything GC needs, read from the store in one go.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The time of the snapshot (ms since the epoch).
    pub now_ms: u64,
    /// Live (not yet retired) environments.
    pub envs: Vec<EnvFacts>,
    /// Every release.
    pub releases: Vec<ReleaseFacts>,
    /// Images present in the store.
    pub images: Vec<ImageFacts>,
    /// How many newest releases per app keep their image.
    pub keep_releases: usize,
    /// Images younger than this are kept (an import about to be deployed).
    pub image_grace_ms: u64,
}

/// What to collect, and why each root was kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Environments to stop and retire.
    pub envs: Vec<String>,
    /// Images to delete.
    pub images: Vec<Digest>,
    /// Environments kept, with the reason.
    pub kept_envs: BTreeMap<String, String>,
}

impl Plan {
    /// True when there is nothing to collect.
    pub fn is_empty(&self) -> bool {
        self.envs.is_empty() && self.images.is_empty()
    }
}

/// Marks from the roots and sweeps the rest.
pub fn plan(s: &Snapshot) -> Plan {
    let (mut out, kept_releases) = mark(s);
    let live_images: BTreeSet<&Digest> = s
        .releases
        .iter()
        .filter(|r| kept_releases.contains(&(r.app.clone(), r.number)))
        .map(|r| &r.image)
        .collect();
    for img in &s.images {
        let young = s.now_ms.saturating_sub(img.created_ms) < s.image_grace_ms;
        if !live_images.contains(&img.digest) && !img.tagged && !young {
            out.images.push(img.digest.clone());
        }
    }
    out.envs.sort();
    out.images.sort();
    out
}

/// The releases GC keeps, as (app, number): those of kept environments, pinned ones and the
/// newest `keep_releases` of each app. Their images are never collected.
pub fn kept_releases(s: &Snapshot) -> BTreeSet<(String, u64)> {
    mark(s).1
}

/// Sorts environments into kept (with why) and collectable, and marks the kept releases.
fn mark(s: &Snapshot) -> (Plan, BTreeSet<(String, u64)>) {
    let mut out = Plan::default();
    let mut kept_releases: BTreeSet<(String, u64)> = BTreeSet::new();
    for env in &s.envs {
        let reason = if env.routed {
            Some("routed".to_string())
        } else if env.deploying {
            Some("deployment in progress".to_string())
        } else {
            match env.warm_until_ms {
                Some(until) if until > s.now_ms => Some(format!(
                    "rollback window ({}s left)",
                    (until - s.now_ms).div_ceil(1000)
                )),
                _ => None,
            }
        };
        match reason {
            Some(r) => {
                kept_releases.insert((env.app.clone(), env.release));
                out.kept_envs.insert(env.id.clone(), r);
            }
            None => out.envs.push(env.id.clone()),
        }
    }
    let mut per_app: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &s.releases {
        per_app.entry(&r.app).or_default().push(r.number);
        if r.pinned {
            kept_releases.insert((r.app.clone(), r.number));
        }
    }
    for (app, mut numbers) in per_app {
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        for n in numbers.into_iter().take(s.keep_releases) {
            kept_releases.insert((app.to_string(), n));
        }
    }
    (out, kept_releases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256(&[n; 32])
    }

    fn env(id: &str, release: u64, routed: bool, warm: Option<u64>) -> EnvFacts {
        EnvFacts {
            id: id.to_string(),
            app: "shop".to_string(),
            release,
            routed,
            warm_until_ms: warm,
            deploying: false,
        }
    }

    fn release(number: u64, image: u8, pinned: bool) -> ReleaseFacts {
        ReleaseFacts {
            app: "shop".to_string(),
            number,
            image: digest(image),
            pinned,
        }
    }

    fn image(n: u8) -> ImageFacts {
        ImageFacts {
            digest: digest(n),
            created_ms: 0,
            tagged: false,
        }
    }

    #[test]
    fn keeps_roots_and_collects_the_rest() {
        let s = Snapshot {
            now_ms: 10_000_000,
            envs: vec![
                env("e3", 3, true, None),
                env("e2", 2, false, Some(10_500_000)),
                env("e1", 1, false, Some(9_000_000)),
            ],
            releases: vec![
                release(1, 1, false),
                release(2, 2, false),
                release(3, 3, false),
                release(4, 9, true),
            ],
            images: vec![image(1), image(2), image(3), image(9), image(7)],
            keep_releases: 1,
            image_grace_ms: 1000,
        };
        let p = plan(&s);
        assert_eq!(p.envs, vec!["e1".to_string()]);
        // release 1 is neither kept by an env, nor pinned, nor among the newest one.
        assert_eq!(p.images, vec![digest(1), digest(7)]);
        assert_eq!(p.kept_envs["e3"], "routed");
        assert!(p.kept_envs["e2"].starts_with("rollback window"));
    }

    #[test]
    fn each_root_is_kept_and_says_why() {
        let now = 100_000;
        let mut deploying = env("e2", 2, false, None);
        deploying.deploying = true;
        let s = Snapshot {
            now_ms: now,
            envs: vec![
                env("e1", 1, true, Some(now - 1)),
                deploying,
                // 1.5 s of its window left: said in whole seconds, rounded up.
                env("e3", 3, false, Some(now + 1_500)),
                // The window ends at `warm_until`: on the dot, it is over.
                env("e4", 4, false, Some(now)),
                env("e5", 5, false, None),
            ],
            releases: (1..=7).map(|n| release(n, n as u8, n == 6)).collect(),
            images: vec![
                image(1),
                image(2),
                image(3),
                image(4),
                image(5),
                image(6),
                image(7),
                ImageFacts {
                    tagged: true,
                    ..image(8)
                },
                ImageFacts {
                    created_ms: now - 10,
                    ..image(9)
                },
            ],
            keep_releases: 1,
            image_grace_ms: 1_000,
        };
        let p = plan(&s);
        let kept: Vec<(&str, &str)> = p
            .kept_envs
            .iter()
            .map(|(e, why)| (e.as_str(), why.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                ("e1", "routed"),
                ("e2", "deployment in progress"),
                ("e3", "rollback window (2s left)")
            ]
        );
        assert_eq!(p.envs, ["e4", "e5"]);
        // Kept: releases 1-3 (kept environments), 6 (pinned), 7 (the newest); image 8 is
        // tagged and image 9 younger than the grace period.
        assert_eq!(p.images, [digest(4), digest(5)]);
        let releases = kept_releases(&s);
        assert_eq!(
            releases.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [1, 2, 3, 6, 7]
        );
        // Once the grace period is over, the untagged image nothing runs goes too.
        let later = Snapshot {
            now_ms: now + 2_000,
            ..s
        };
        assert!(plan(&later).images.contains(&digest(9)));
    }

    proptest! {
        /// Nothing routed, pinned or in use by a kept environment is ever collected.
        #[test]
        fn roots_are_never_collected(
            envs in proptest::collection::vec((1u64..6, any::<bool>(), proptest::option::of(0u64..200), any::<bool>()), 0..8),
            pins in proptest::collection::vec(any::<bool>(), 5),
            now in 0u64..200,
        ) {
            let s = Snapshot {
                now_ms: now,
                envs: envs.iter().enumerate().map(|(i, (rel, routed, warm, deploying))| EnvFacts {
                    id: format!("e{i}"), app: "shop".into(), release: *rel,
                    routed: *routed, warm_until_ms: *warm, deploying: *deploying,
                }).collect(),
                releases: (1..6).map(|n| release(n, n as u8, pins[n as usize - 1])).collect(),
                images: (1..6).map(image).collect(),
                keep_releases: 0,
                image_grace_ms: 0,
            };
            let p = plan(&s);
            for e in &s.envs {
                let root = e.routed || e.deploying || e.warm_until_ms.is_some_and(|w| w > now);
                prop_assert_eq!(p.envs.contains(&e.id), !root);
                if root {
                    prop_assert!(!p.images.contains(&digest(e.release as u8)));
                }
            }
            for r in &s.releases {
                if r.pinned {
                    prop_assert!(!p.images.contains(&r.image));
                }
            }
        }
    }
}
