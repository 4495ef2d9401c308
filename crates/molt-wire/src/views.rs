//! The controller's answers: what serves (status, shadow traffic), what a route move did
//! (swap, rollback), what a collection and a verification found.

use std::collections::BTreeMap;

use molt_core::{Digest, EnvVarName};
use serde::{Deserialize, Serialize};

use crate::images::BlobCollection;
use crate::records::{
    AppRecord, DeploymentRecord, EnvRecord, InstanceRecord, JournalEntry, ReleaseRecord,
    ShadowMode, TrafficSummary,
};

/// The whole picture for `molt status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Provider isolation level ("none" for plain processes).
    pub isolation: String,
    /// Every app.
    pub apps: Vec<AppStatus>,
}

/// One app's state for `molt status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    /// The app record.
    pub app: AppRecord,
    /// The release being served, if routed.
    pub serving: Option<ReleaseRecord>,
    /// URLs that reach it through the router.
    pub hostnames: Vec<String>,
    /// Live environments with their instances.
    pub envs: Vec<EnvStatus>,
    /// The latest deployment.
    pub last_deployment: Option<DeploymentRecord>,
    /// The autoscaler's rules and last decision, when the app autoscales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<crate::ScalingStatus>,
}

/// An environment with its instances and traffic counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvStatus {
    /// The environment record.
    pub env: EnvRecord,
    /// True when the app's route points here.
    pub routed: bool,
    /// Its live instances.
    pub instances: Vec<InstanceRecord>,
    /// The count it should have (what scaling set, else its release's).
    #[serde(default)]
    pub desired: u32,
    /// Requests accepted by the router for it since molt started.
    pub requests: u64,
    /// Requests currently in flight.
    pub in_flight: u64,
    /// Router-made errors for it since molt started.
    pub failed: u64,
    /// Its live traffic since molt started: status classes, mean and bucketed p50/p99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSummary>,
    /// What its instances attest to (image, release, environment, rootfs digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<Attestation>,
}

/// What an environment's instances attest to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The image (OCI manifest digest) the instances booted from.
    pub image: Digest,
    /// The release number.
    pub release: u64,
    /// The environment.
    pub env: String,
    /// Digest of the unpacked tree as recorded at unpack; `None` until verified once.
    pub rootfs_digest: Option<Digest>,
    /// `verified`, `drifted` (being replaced) or `unverified`.
    pub state: String,
    /// How the instances are isolated.
    pub isolation: String,
}

/// Live and shadow traffic of an app side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The app.
    pub app: String,
    /// What is mirrored where, if anything.
    pub mode: Option<ShadowMode>,
    /// The routed environment's live traffic.
    pub live: Option<TrafficSummary>,
    /// The shadow environment's mirrored traffic (answers were discarded).
    pub shadow: Option<TrafficSummary>,
}

/// What a swap did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapOutcome {
    /// The app.
    pub app: String,
    /// Where the route pointed before.
    pub from: Option<String>,
    /// Where it points now.
    pub to: String,
    /// The release now serving.
    pub release: u64,
    /// From the request to the route in force, in microseconds.
    pub elapsed_us: u64,
}

/// What a rollback did: a warm swap, or a cold redeploy when nothing warm was left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackOutcome {
    /// `warm` (one route change) or `cold` (a new deployment of an old release).
    pub kind: String,
    /// The release rolled back to.
    pub release: u64,
    /// The swap, for a warm rollback.
    pub swap: Option<SwapOutcome>,
    /// The deployment, for a cold rollback.
    pub deployment: Option<DeploymentRecord>,
}

/// What a collection did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcReport {
    /// True when nothing was changed.
    pub dry_run: bool,
    /// Environments retired (their instances stopped).
    pub envs: Vec<String>,
    /// Images deleted.
    pub images: Vec<Digest>,
    /// Processes found running for this molt that the store did not know, stopped.
    pub orphans: Vec<String>,
    /// Environments kept, with why.
    pub kept: BTreeMap<String, String>,
    /// What the image store's sweep removed (or would): index entries no stored image record
    /// keeps, unreferenced blobs, unpacked rootfs dirs and temp leftovers, with bytes.
    #[serde(default)]
    pub store: BlobCollection,
}

/// The outcome of verifying one image tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The image.
    pub image: Digest,
    /// The rootfs digest recorded at unpack.
    pub rootfs_digest: Digest,
    /// True when the tree is exactly as unpacked.
    pub intact: bool,
    /// What drifted (paths edited, added, removed), when not intact.
    pub drift: Option<String>,
    /// Environments (`app/env`) running this image.
    pub envs: Vec<String>,
    /// Instances replaced because they ran on the drifted tree.
    pub replaced: Vec<String>,
}

/// A deployment with its journal (`GET /v1/deployments/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentJournal {
    /// The deployment.
    pub deployment: DeploymentRecord,
    /// Every state it entered, oldest first.
    pub journal: Vec<JournalEntry>,
}

/// The variables of an app's newest release (`GET /v1/apps/{app}/config`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseConfig {
    /// The variables.
    pub env: BTreeMap<EnvVarName, String>,
    /// The secrets instances get as variables too: names and versions, never values.
    #[serde(default)]
    pub secrets: BTreeMap<EnvVarName, u64>,
    /// The release they belong to.
    pub release: u64,
}

/// A release pinned or unpinned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinOutcome {
    /// The app.
    pub app: String,
    /// True when the release is now kept forever.
    pub pinned: bool,
    /// The release number.
    pub release: u64,
}

/// The tail of one instance's output (`GET /v1/apps/{app}/logs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceLog {
    /// The instance.
    pub instance: String,
    /// Its last lines.
    pub log: String,
}
