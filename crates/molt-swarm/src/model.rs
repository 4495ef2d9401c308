//! The parts of the Docker Engine API's JSON that molt reads. Fields molt does not use are
//! left out (serde ignores them); a service's spec is kept as raw JSON when it is sent back
//! in an update, so nothing molt does not model is lost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /info`, the swarm part.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Info {
    /// The swarm as this node sees it.
    #[serde(default)]
    pub swarm: SwarmInfo,
    /// The engine's version.
    #[serde(default)]
    pub server_version: String,
}

/// This node's view of its swarm.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmInfo {
    /// `"active"` once the node is part of a swarm (`"inactive"`, `"pending"`, `"error"`,
    /// `"locked"` otherwise).
    #[serde(default)]
    pub local_node_state: String,
    /// Whether this node is a manager (services can be created here).
    #[serde(default)]
    pub control_available: bool,
}

/// `GET /nodes`, one node.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    /// The node's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Hostname and platform.
    #[serde(default)]
    pub description: NodeDescription,
    /// Role and availability, as set by operators.
    #[serde(default)]
    pub spec: NodeSpec,
    /// Whether it is up, and its address.
    #[serde(default)]
    pub status: NodeStatus,
    /// Present on managers.
    #[serde(default)]
    pub manager_status: Option<ManagerStatus>,
}

/// A node's hostname.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDescription {
    /// The machine's hostname.
    #[serde(default)]
    pub hostname: String,
}

/// A node's role and availability.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpec {
    /// `"manager"` or `"worker"`.
    #[serde(default)]
    pub role: String,
    /// `"active"`, `"pause"` or `"drain"`.
    #[serde(default)]
    pub availability: String,
}

/// A node's state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatus {
    /// `"ready"`, `"down"`, `"unknown"` or `"disconnected"`.
    #[serde(default)]
    pub state: String,
    /// The node's address.
    #[serde(default)]
    pub addr: String,
}

/// A manager's state in the raft group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatus {
    /// Whether it leads the group.
    #[serde(default)]
    pub leader: bool,
}

/// `GET /networks/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    /// `"overlay"` for swarm-wide networks.
    #[serde(default)]
    pub driver: String,
    /// Whether standalone containers may join it.
    #[serde(default)]
    pub attachable: bool,
}

/// The answer of a create call.
#[derive(Debug, Clone, Deserialize)]
pub struct Created {
    /// The new object's id.
    #[serde(rename = "ID", alias = "Id")]
    pub id: String,
}

/// `GET /services/{id}` and `GET /services`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    /// The service's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The version an update must name.
    pub version: ObjectVersion,
    /// The spec, as the engine holds it.
    pub spec: serde_json::Value,
}

/// A swarm object's version.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ObjectVersion {
    /// Increases with every change.
    pub index: u64,
}

/// `GET /tasks`, one task.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    /// The task's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Where it was placed.
    #[serde(default, rename = "NodeID")]
    pub node_id: Option<String>,
    /// What it is doing.
    pub status: TaskStatus,
    /// What the orchestrator wants of it (`"running"`, `"shutdown"`, …).
    #[serde(default)]
    pub desired_state: String,
    /// Its addresses on each network.
    #[serde(default)]
    pub networks_attachments: Vec<NetworkAttachment>,
}

/// A task's state.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    /// `new` … `running`, `complete`, `failed`, `shutdown`, `rejected`, `orphaned`, `remove`.
    pub state: String,
    /// The orchestrator's words on it.
    #[serde(default)]
    pub message: String,
    /// Why it failed, when it did.
    #[serde(default)]
    pub err: Option<String>,
    /// The container's state, once it has one.
    #[serde(default)]
    pub container_status: Option<ContainerStatus>,
}

/// A task's container.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerStatus {
    /// The process's exit code, once it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
}

/// A task's attachment to one network.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAttachment {
    /// The network.
    pub network: AttachedNetwork,
    /// CIDR addresses, e.g. `10.0.1.7/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// The network of an attachment.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachedNetwork {
    /// Its spec (for its name).
    #[serde(default)]
    pub spec: NamedSpec,
}

/// A spec of which molt reads the name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NamedSpec {
    /// The object's name.
    #[serde(default)]
    pub name: String,
}

/// A service spec as molt writes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    /// `molt-<env>`.
    pub name: String,
    /// molt's labels: owner, app, env, release, port.
    pub labels: BTreeMap<String, String>,
    /// What each task runs.
    pub task_template: TaskTemplate,
    /// Replicated N times, or global (one per node).
    pub mode: ServiceMode,
    /// How the service is reached.
    pub endpoint_spec: EndpointSpec,
}

/// What each task of a service runs, and where.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskTemplate {
    /// The container.
    pub container_spec: ContainerSpec,
    /// Limits.
    pub resources: Resources,
    /// When the orchestrator restarts a task.
    pub restart_policy: RestartPolicy,
    /// The networks it joins.
    pub networks: Vec<NetworkTarget>,
}

/// A task's container.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSpec {
    /// `registry/repository@sha256:…`.
    pub image: String,
    /// The whole argv (replaces the image's entrypoint and command).
    pub command: Vec<String>,
    /// `KEY=value`, the whole environment.
    pub env: Vec<String>,
    /// `uid:gid`.
    pub user: String,
    /// A read-only root filesystem.
    pub read_only: bool,
    /// tmpfs mounts.
    pub mounts: Vec<Mount>,
    /// Capabilities taken away (`ALL`).
    pub capability_drop: Vec<String>,
    /// Capabilities given back (only what a router needs to bind low ports).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capability_add: Vec<String>,
    /// Resource limits of the process (open files).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// An init process as PID 1, so the program gets signals and zombies are reaped.
    pub init: bool,
    /// Time between SIGTERM and SIGKILL, in nanoseconds.
    pub stop_grace_period: u64,
    /// Labels of each container.
    pub labels: BTreeMap<String, String>,
    /// Docker secrets mounted as files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretReference>,
}

/// A Docker secret given to a task's container as a file under `/run/secrets`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecretReference {
    /// The file.
    pub file: SecretTarget,
    /// The secret's id.
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    /// The secret's name.
    pub secret_name: String,
}

/// Where and how a secret's file appears.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecretTarget {
    /// Its name under `/run/secrets`.
    pub name: String,
    /// Owner.
    #[serde(rename = "UID")]
    pub uid: String,
    /// Group.
    #[serde(rename = "GID")]
    pub gid: String,
    /// Permission bits (0400).
    pub mode: u32,
}

/// `POST /secrets/create`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecretSpec {
    /// Its name (unique in the swarm).
    pub name: String,
    /// Labels: owner, environment, secret name.
    pub labels: BTreeMap<String, String>,
    /// The value, standard base64.
    pub data: String,
}

/// `GET /secrets`.
#[derive(Debug, Deserialize)]
pub struct SecretListed {
    /// Its id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its spec.
    #[serde(rename = "Spec")]
    pub spec: serde_json::Value,
}

/// A mount of a task's container.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mount {
    /// `"tmpfs"`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Where in the container.
    pub target: String,
    /// Size and mode of a tmpfs.
    pub tmpfs_options: TmpfsOptions,
}

/// Size and mode of a tmpfs mount.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TmpfsOptions {
    /// Size in bytes.
    pub size_bytes: u64,
    /// Permission bits.
    pub mode: u32,
}

/// A process resource limit.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ulimit {
    /// e.g. `"nofile"`.
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// A task's limits.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resources {
    /// Upper limits.
    pub limits: ResourceLimits,
}

/// Upper limits of a task.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceLimits {
    /// CPU in billionths of a CPU.
    #[serde(rename = "NanoCPUs", skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<u64>,
    /// Memory in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Processes and threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// When the orchestrator restarts a task.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    /// `"any"`: whenever it ends.
    pub condition: String,
    /// Wait before a restart, in nanoseconds.
    pub delay: u64,
}

/// A network a task joins.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkTarget {
    /// The network's name or id.
    pub target: String,
}

/// Replicated or global.
#[derive(Debug, Clone, Serialize)]
pub enum ServiceMode {
    /// N tasks, placed by the orchestrator.
    Replicated {
        /// How many.
        #[serde(rename = "Replicas")]
        replicas: u64,
    },
    /// One task on every node.
    Global {},
}

/// How a service is reached.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpec {
    /// `"dnsrr"`: no virtual IP (molt's routers address tasks themselves).
    pub mode: String,
    /// Ports published on the nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

/// A port published on every node where a task runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortConfig {
    /// `"tcp"`.
    pub protocol: String,
    /// The port in the container.
    pub target_port: u16,
    /// The port on the node.
    pub published_port: u16,
    /// `"host"`: straight to the task on its node, no routing mesh.
    pub publish_mode: String,
}
