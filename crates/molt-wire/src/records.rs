//! The records the store keeps (apps, images, releases, environments, instances, deployments
//! and their journal, history, tag changes), as the API shows them.

use std::collections::BTreeMap;

use molt_core::{DeployState, Digest, RunConfig};
use serde::{Deserialize, Serialize};

/// An app and where its route points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// App name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// The environment the route points at, if any.
    pub routed_env: Option<String>,
    /// Set while the app is in maintenance mode: its hostnames answer 503.
    #[serde(default)]
    pub maintenance: Option<MaintenanceMode>,
    /// Set while a share of the app's idempotent requests is mirrored to another environment.
    #[serde(default)]
    pub shadow: Option<ShadowMode>,
    /// Autoscaling bounds set with `molt scale --min/--max`: kept across deployments, and
    /// ahead of the bounds of the release's `[scale]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleBounds>,
}

/// Autoscaling bounds of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleBounds {
    /// Fewest instances (0: scale to zero when idle).
    pub min: u32,
    /// Most instances.
    pub max: u32,
}

/// Shadow traffic of an app: which environment gets copies of its requests, and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowMode {
    /// The environment mirrored requests go to.
    pub env: String,
    /// Percentage (1–100) of bodiless GET/HEAD/OPTIONS requests mirrored.
    pub share_percent: u32,
}

/// Maintenance mode of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceMode {
    /// Shown to clients.
    pub message: String,
    /// Sent as `Retry-After`, in seconds.
    pub retry_after_secs: u32,
}

/// A stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Content digest.
    pub digest: Digest,
    /// Size of its canonical tar in bytes.
    pub size: u64,
    /// Import time, ms since the epoch.
    pub created_ms: u64,
    /// Tags naming it (immutable).
    pub tags: Vec<String>,
}

/// A numbered release: image + config, never changed once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// Owning app.
    pub app: String,
    /// v1, v2, … per app.
    pub number: u64,
    /// The image the release runs.
    pub image: Digest,
    /// How it runs.
    pub config: RunConfig,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Pinned releases are GC roots.
    pub pinned: bool,
    /// Why it was made ("deploy", "config set KEY", …).
    pub note: String,
}

/// Lifecycle of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvState {
    /// Instances are starting or being checked.
    Starting,
    /// Healthy and able to take traffic.
    Ready,
    /// Torn down: its instances are stopped.
    Retired,
}

/// An environment: instances running exactly one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRecord {
    /// Globally unique id, also its preview hostname label.
    pub id: String,
    /// Owning app.
    pub app: String,
    /// The release it runs.
    pub release: u64,
    /// Lifecycle state.
    pub state: EnvState,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// End of its rollback window once it was swapped out.
    pub warm_until_ms: Option<u64>,
    /// When it was retired.
    pub retired_ms: Option<u64>,
    /// The instances it should have, when set by scaling (`None`: the release's count).
    #[serde(default)]
    pub instances: Option<u32>,
}

/// Lifecycle of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Process started, not yet healthy.
    Starting,
    /// Passing its health check.
    Healthy,
    /// Failing its health check.
    Unhealthy,
    /// Running on an image tree that no longer matches its manifest: never routed again,
    /// replaced and stopped.
    Drifted,
    /// Being stopped.
    Stopping,
    /// Gone: exited by itself or stopped.
    Stopped,
}

/// One instance of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Globally unique id.
    pub id: String,
    /// Its environment.
    pub env: String,
    /// Owning app.
    pub app: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Process id, once started.
    pub pid: Option<u32>,
    /// Kernel start time of the process, to recognise it after a restart.
    pub start_time: Option<u64>,
    /// The loopback address it listens on (`$HOST`).
    pub host: String,
    /// The port it listens on (`$PORT`).
    pub port: u16,
    /// Start time, ms since the epoch.
    pub started_ms: u64,
    /// Why it stopped, once it did.
    pub exit: Option<String>,
}

/// What the router saw during a cutover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoverFigures {
    /// Requests answered (old and new environment) from the swap to the end of the drain.
    pub served: u64,
    /// Requests that failed in the same span.
    pub failed: u64,
    /// When the route changed, ms since the epoch.
    pub swap_at_ms: u64,
    /// From the start of the deployment to the swap, in ms.
    pub to_swap_ms: u64,
    /// From the swap to the end of the drain, in ms.
    pub drain_ms: u64,
    /// Requests answered for the app from the start of the deployment to the end of the drain.
    #[serde(default)]
    pub deploy_served: u64,
    /// Requests that failed in the same span.
    #[serde(default)]
    pub deploy_failed: u64,
}

/// One environment's traffic of one kind (live or mirrored) over a span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficSummary {
    /// Environment id.
    pub env: String,
    /// Requests counted (answered or failed).
    pub requests: u64,
    /// Responses by status class (`"2xx"`, …).
    pub classes: BTreeMap<String, u64>,
    /// Requests that got no answer.
    pub failed: u64,
    /// Mean time to the response head, in milliseconds.
    pub mean_ms: f64,
    /// Upper bound of the histogram bucket holding the median, in milliseconds (`None` past
    /// the last bucket, or with no request).
    pub p50_ms: Option<f64>,
    /// The same for the 99th percentile.
    pub p99_ms: Option<f64>,
}

/// What a shadow deployment's phase showed: the live environment's traffic next to the copies
/// its new environment answered, over the same span. Recorded when the phase ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowComparison {
    /// Percentage of bodiless GET/HEAD/OPTIONS requests that were mirrored.
    pub share_percent: u32,
    /// When mirroring started, ms since the epoch (or when molt restarted, if it did since:
    /// the router's counters start at zero then).
    pub since_ms: u64,
    /// When the phase ended (promoted, abandoned or superseded), ms since the epoch.
    pub until_ms: u64,
    /// The routed environment's live traffic in that span (`None` if nothing was routed).
    pub live: Option<TrafficSummary>,
    /// The new environment's answers to the mirrored copies (discarded, never seen by users).
    pub shadow: TrafficSummary,
    /// The shadow side judged as a canary's interval would be (the live side as the stable
    /// one), with the release's `[deploy.analysis]` or its defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<molt_core::canary::Judgement>,
}

/// A deployment: the journaled steps from a release to a routed environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// Sequential id.
    pub id: u64,
    /// Owning app.
    pub app: String,
    /// The release being deployed.
    pub release: u64,
    /// The new environment, once created.
    pub env: Option<String>,
    /// The environment the route pointed at when the deployment started.
    pub prev_env: Option<String>,
    /// Where it stands.
    pub state: DeployState,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_ms: u64,
    /// Why it failed or was rolled back.
    pub error: Option<String>,
    /// Cutover figures, once drained.
    pub figures: Option<CutoverFigures>,
    /// For a shadow deployment (`molt deploy --shadow N`): the share of idempotent requests
    /// mirrored to the new environment before it is promoted.
    #[serde(default)]
    pub shadow_share: Option<u32>,
    /// For a shadow deployment whose shadow phase ended: live and shadow side by side.
    #[serde(default)]
    pub shadow: Option<ShadowComparison>,
    /// For a canary deployment: its step, weight and every analysis interval's verdict.
    #[serde(default)]
    pub canary: Option<molt_core::CanaryProgress>,
}

/// One journal line of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The state entered.
    pub state: DeployState,
    /// What happened.
    pub detail: String,
}

/// A line of an app's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Sequential id.
    pub id: u64,
    /// The app it concerns.
    pub app: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Short kind: deploy, swap, rollback, auto-rollback, instance, gc …
    pub kind: String,
    /// What happened, for people.
    pub message: String,
}

/// One change of a tag, as `molt images history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEvent {
    /// Order of the change.
    pub seq: u64,
    /// The tag.
    pub tag: String,
    /// `created`, `moved` or `removed`.
    pub change: String,
    /// What the tag named before (none when created).
    pub old_digest: Option<Digest>,
    /// What it names after (none when removed).
    pub new_digest: Option<Digest>,
    /// Who made the change, as the client reported it.
    pub actor: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
}
