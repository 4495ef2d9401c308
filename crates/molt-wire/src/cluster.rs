//! The cluster as `molt cluster status` shows it: the routers of the fleet, and the engine's
//! machines and the environments it runs.

use serde::{Deserialize, Serialize};

/// What `molt cluster status` shows: the routers of the fleet and where instances run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The routers beyond `molt serve`'s own, with the version each applied.
    pub routers: FleetStatus,
    /// Where instances run: `local`/`runc` on this machine, or an engine's name.
    pub provider: String,
    /// The engine's machines and the environments it runs for this molt (on an engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineStatus>,
}

/// An engine as `molt cluster status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineStatus {
    /// Its machines.
    pub nodes: Vec<EngineNode>,
    /// The environments it runs for this molt (one engine service each).
    pub environments: Vec<EngineEnvironment>,
}

/// The fleet as `molt cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The current version of the table.
    pub version: u64,
    /// Every router seen since the control plane started.
    pub routers: Vec<RouterStatus>,
}

/// One router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStatus {
    /// Its name.
    pub name: String,
    /// Where it takes client connections.
    pub listen: String,
    /// Whether its stream is open.
    pub connected: bool,
    /// Out of the fleet until it catches up.
    pub fenced: bool,
    /// The version it applied.
    pub acknowledged: u64,
    /// Versions it is behind.
    pub lag: u64,
    /// Milliseconds since it was last heard from.
    pub last_seen_ms: u64,
}

/// A machine of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineNode {
    /// The engine's id of the node.
    pub id: String,
    /// Its hostname.
    pub hostname: String,
    /// `manager` or `worker` (Swarm's words).
    pub role: String,
    /// `ready`, `down`, …
    pub state: String,
    /// Whether it takes new instances: `active`, `pause` or `drain`.
    pub availability: String,
    /// Its address.
    pub addr: String,
    /// Whether it leads the managers.
    pub leader: bool,
}

/// An environment the engine runs for this molt, found by its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineEnvironment {
    /// Environment id.
    pub env: String,
    /// Its app.
    pub app: String,
    /// Its release.
    pub release: u32,
    /// Instances it asks for.
    pub instances: u32,
    /// The image it runs.
    pub image: String,
}
