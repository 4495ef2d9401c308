//! Scaling: what `molt scale` asks for, what it changed, and what `molt status` shows of the
//! autoscaler.

use molt_core::ScaleSpec;
use serde::{Deserialize, Serialize};

/// `POST /v1/apps/{app}/scale`: a count for the live environment, autoscaling bounds, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The count the live environment gets now (0–1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// The fewest instances the autoscaler keeps (0: scale to zero when idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// The most instances the autoscaler starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Forget bounds set earlier: the release's `[scale]` applies again (or none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// Who asks, for the app's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// What `molt scale` changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleOutcome {
    /// The app.
    pub app: String,
    /// Its live environment.
    pub env: String,
    /// The count it had.
    pub from: u32,
    /// The count it has now.
    pub to: u32,
    /// The autoscaling rules in force after the change, if the app autoscales.
    pub autoscaling: Option<ScaleSpec>,
}

/// The autoscaler's view of an app, for `molt status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingStatus {
    /// The rules in force: the release's `[scale]` with the app's bounds applied.
    pub spec: ScaleSpec,
    /// Where the bounds come from: `molt scale` or the release's `molt.toml`.
    pub bounds_from: String,
    /// The last decision that changed the count, or the latest one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ScaleDecisionRecord>,
}

/// One decision of the autoscaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleDecisionRecord {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The environment it is about.
    pub env: String,
    /// Its count before.
    pub from: u32,
    /// The count decided.
    pub to: u32,
    /// Whether the panic window ruled.
    pub panic: bool,
    /// Average requests in flight over the stable window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_concurrency: Option<f64>,
    /// Why, with the figures.
    pub reason: String,
}
