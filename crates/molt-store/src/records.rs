//! The records the store keeps are the API's (`molt-wire`); the store adds only how a tag may
//! move when it is set.

pub use molt_wire::{
    AppRecord, CutoverFigures, DeploymentRecord, EnvRecord, EnvState, EventRecord, ImageRecord,
    InstanceRecord, InstanceState, JournalEntry, MaintenanceMode, ReleaseRecord, ScaleBounds,
    ShadowComparison, ShadowMode, TagEvent, TrafficSummary,
};

/// How a tag may change when it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagMove {
    /// A tag names one digest forever: pointing it elsewhere is refused.
    Refuse,
    /// Move it anyway (`--force`); the move is recorded in the tag history.
    Force,
}
