//! A deployment's life, from the request to its last journaled step.
//!
//! - `start.rs`: a deploy or config change becomes a release and a deployment record, after the
//!   app is taken over from whatever deployment still ran;
//! - `active.rs`: each app's running deployment task, and the takeover (the one place a running
//!   deployment is superseded);
//! - `drive.rs`: the task's loop: read the journaled state, run that step, repeat; stepping
//!   aside when superseded, failing before the swap;
//! - `steps.rs`: the steps themselves (environment, instances, health, swap, drain, watch);
//! - `shadow.rs`: the shadow phase of a shadow deployment (mirroring until promoted or
//!   abandoned), and how a user's promote/abandon decision reaches a deployment's task;
//! - `canary.rs`: the canary phase of a canary deployment (the route split by weight, step by
//!   step, each analysis interval judged, until promoted or aborted).
//!
//! Each step is idempotent and journals the next state, so a restarted controller resumes a
//! deployment by running its task again. Route changes (the swap and the swap back) go through
//! `crate::route`, like every other move of a route.

pub(crate) mod active;
pub(crate) mod canary;
pub(crate) mod drive;
pub(crate) mod shadow;
pub(crate) mod start;
pub(crate) mod steps;
