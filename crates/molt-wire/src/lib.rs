//! molt-wire: the records molt's REST API sends, in one place. The layers that fill them in
//! (the store, the image store, the registry client, the controller) and the API serialize
//! them; the CLI reads its answers into them. Data only: no I/O, no behaviour.
//!
//! Architecture invariants:
//! - a record here *is* the API's JSON: renaming, removing or retyping a field changes the
//!   API (and its OpenAPI document), whichever crate fills it in;
//! - every field a reader may find absent is an `Option` (or `#[serde(default)]` for fields
//!   that were added later to records the store keeps as JSON); any other field is required,
//!   so a reader that gets an answer without it fails naming the field instead of guessing;
//! - molt-wire depends on molt-core (names and digests), serde and serde_json, nothing else
//!   (checked by `xtask/src/layers.rs`).

mod access;
mod cluster;
mod images;
mod records;
mod scale;
mod server;
mod views;

pub use access::{
    signed_message, AuditEntry, ImageSignature, Role, SecretDelivery, SecretOutcome, SecretRecord,
    TokenCreated, TokenRecord, TokenRequest,
};
pub use cluster::{
    ClusterStatus, EngineEnvironment, EngineNode, EngineStatus, FleetStatus, RouterStatus,
};
pub use images::{
    BakeReport, BlobCollection, ImageDetails, ImageDiff, ImageInspect, ImageUse, ImportFormat,
    ImportOutcome, LayerDetails, PushReport, RemoveOutcome, StepOutcome, StepReport, TagOutcome,
};
pub use records::{
    AppRecord, CutoverFigures, DeploymentRecord, EnvRecord, EnvState, EventRecord, ImageRecord,
    InstanceRecord, InstanceState, JournalEntry, MaintenanceMode, ReleaseRecord, ScaleBounds,
    ShadowComparison, ShadowMode, TagEvent, TrafficSummary,
};
pub use scale::{ScaleDecisionRecord, ScaleOutcome, ScaleRequest, ScalingStatus};
pub use server::{ErrorBody, Health, TlsCertificates, TlsReload};
pub use views::{
    AppStatus, Attestation, DeploymentJournal, EnvStatus, GcReport, InstanceLog, PinOutcome,
    ReleaseConfig, RollbackOutcome, ShadowReport, Status, SwapOutcome, VerifyReport,
};
