//! molt's domain: names, the app manifest, the deployment state machine and the decisions the
//! controller carries out (the garbage-collection plan, rollback targets, the watch).
//!
//! Architecture invariant: this crate does no I/O. It never touches the filesystem, the network,
//! a clock or a process; callers pass in what it needs (text, timestamps, snapshots).

pub mod authorization;
pub mod build;
pub mod canary;
pub mod clock;
pub mod deployment;
pub mod duration;
pub mod error;
pub mod gc;
pub mod hash;
pub mod hex;
pub mod limits;
pub mod manifest;
pub mod names;
pub mod rollback;
pub mod scale;
pub mod size;
pub mod subnet;
pub mod tag;
pub mod watch;

pub use build::{BaseImage, BuildSpec, BuildStep, ImageRef};
pub use canary::{CanaryProgress, CanarySpec};
pub use clock::{Clock, ManualClock};
pub use deployment::{DeployEvent, DeployState, InvalidTransition, Recovery};
pub use duration::{format_duration, parse_duration};
pub use error::InputError;
pub use limits::{Limits, DEFAULT_NOFILE};
pub use manifest::{DeployPolicy, HealthCheck, Manifest, RouterLimits, RunConfig};
pub use names::{AppName, Digest, EnvVarName, Hostname};
pub use scale::ScaleSpec;
pub use size::parse_size;
pub use subnet::Subnet;
pub use tag::ImageTag;
