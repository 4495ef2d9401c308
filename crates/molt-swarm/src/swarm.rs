//! Docker Swarm as an [`Engine`]: one service `molt-<env>` per environment.
//!
//! Each service runs the release's image pinned by digest, `instances` replicas, on molt's
//! attachable overlay network with `dnsrr` endpoints (no virtual IP and no routing mesh: molt's
//! routers address each task by its overlay address). The container gets what runc instances
//! get: a read-only root, tmpfs `/tmp` and `/run`, no capabilities, a non-root user
//! (65534:65534), `[limits]` as the task's resources, an init as PID 1. Swarm restarts tasks
//! that end; molt reads the tasks and records what it sees.
//!
//! Secrets delivered as files become Docker secrets of the environment (`secrets.rs`), which
//! Swarm keeps encrypted in its raft log and mounts at `/run/secrets/NAME` on a tmpfs.
//!
//! Every service carries labels: `molt.owner` (this molt's data directory), `molt.app`,
//! `molt.env`, `molt.release`, `molt.port`. A restarted molt finds its services by the owner
//! label; garbage collection removes those nothing reaches.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use molt_provider::secret_files;
use molt_provider::{
    Engine, EngineEnvironment, EngineError, EngineFuture, EngineInstance, EngineInstanceState,
    EngineNode, EnvironmentSpec,
};
use serde_json::json;
use tracing::{debug, info};

use crate::docker::{query_escape, Docker};
use crate::model::{
    ContainerSpec, Created, EndpointSpec, Info, Mount, Network, Node, ResourceLimits, Resources,
    RestartPolicy, Service, ServiceMode, ServiceSpec, Task, TaskTemplate, TmpfsOptions, Ulimit,
};
use crate::model::{NetworkTarget, PortConfig, SecretReference};

/// Label keys molt puts on its services.
pub const LABEL_OWNER: &str = "molt.owner";
/// The app of an environment's service.
pub const LABEL_APP: &str = "molt.app";
/// The environment id.
pub const LABEL_ENV: &str = "molt.env";
/// The release number.
pub const LABEL_RELEASE: &str = "molt.release";
/// The port instances listen on.
pub const LABEL_PORT: &str = "molt.port";
/// What the service is to molt: `environment` or `router`.
pub const LABEL_ROLE: &str = "molt.role";

/// Size of each instance's `/tmp` and `/run` tmpfs (as the runc provider's).
const SCRATCH_BYTES: u64 = 64 << 20;
/// Time between SIGTERM and SIGKILL when a task stops.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Wait before Swarm restarts a task that ended.
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// How molt uses a swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The engine's socket.
    pub socket: std::path::PathBuf,
    /// molt's attachable overlay network (created when missing).
    pub network: String,
    /// This molt's owner id (one per data directory).
    pub owner: String,
}

/// A swarm molt runs environments on.
#[derive(Debug, Clone)]
pub struct Swarm {
    pub(crate) docker: Docker,
    pub(crate) config: SwarmConfig,
}

/// The fleet of routers molt runs on the swarm: one task per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterServiceSpec {
    /// The service's name ([`ROUTER_SERVICE`] unless several molts share a swarm).
    pub name: String,
    /// The router image, pinned by digest.
    pub image: String,
    /// The router's argv (`molt router --control … --listen …`).
    pub command: Vec<String>,
    /// Its environment (the router token travels here, never in argv).
    pub env_vars: Vec<(String, String)>,
    /// Ports published on each node in host mode: (node port, container port).
    pub ports: Vec<(u16, u16)>,
}

/// The usual name of the fleet's service.
pub const ROUTER_SERVICE: &str = "molt-router";

impl Swarm {
    /// Connects to the engine on `config.socket`, checks that this node is a manager of an
    /// active swarm, and creates molt's overlay network when it is missing.
    pub async fn connect(config: SwarmConfig) -> Result<Self, EngineError> {
        let docker = Docker::new(&config.socket);
        docker.ping().await?;
        let info: Info = docker.get("/info", "describe itself").await?;
        if info.swarm.local_node_state != "active" {
            return Err(EngineError::NotReady(format!(
                "{} is not part of a swarm (state {:?}): run `docker swarm init` on it, or \
                 `docker swarm join` to join an existing swarm",
                docker.engine(),
                info.swarm.local_node_state
            )));
        }
        if !info.swarm.control_available {
            return Err(EngineError::NotReady(format!(
                "{} is a swarm worker: run molt on a manager node",
                docker.engine()
            )));
        }
        let swarm = Self { docker, config };
        swarm.ensure_network().await?;
        info!(
            engine = %swarm.docker.engine(),
            version = %info.server_version,
            network = %swarm.config.network,
            "swarm engine ready"
        );
        Ok(swarm)
    }

    /// The engine's client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The overlay network instances and routers share.
    pub fn network(&self) -> &str {
        &self.config.network
    }

    /// The swarm's nodes.
    pub async fn swarm_nodes(&self) -> Result<Vec<EngineNode>, EngineError> {
        let nodes: Vec<Node> = self.docker.get("/nodes", "list its nodes").await?;
        Ok(nodes
            .into_iter()
            .map(|node| EngineNode {
                id: node.id,
                hostname: node.description.hostname,
                role: node.spec.role,
                state: node.status.state,
                availability: node.spec.availability,
                addr: node.status.addr,
                leader: node.manager_status.is_some_and(|m| m.leader),
            })
            .collect())
    }

    /// Runs (or updates) the fleet's global router service.
    pub async fn ensure_routers(&self, spec: &RouterServiceSpec) -> Result<(), EngineError> {
        let mut labels = self.labels();
        labels.insert(LABEL_ROLE.into(), "router".into());
        let container = ContainerSpec {
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: env_list(&spec.env_vars),
            user: "65534:65534".into(),
            read_only: true,
            mounts: scratch_mounts(),
            capability_drop: vec!["ALL".into()],
            // Published ports below 1024 need it inside the container.
            capability_add: if spec.ports.iter().any(|(_, port)| *port < 1024) {
                vec!["CAP_NET_BIND_SERVICE".into()]
            } else {
                Vec::new()
            },
            // The engine's default (dockerd's own limit, 1 Mi with Debian's unit).
            ulimits: Vec::new(),
            init: true,
            stop_grace_period: STOP_GRACE.as_nanos() as u64,
            labels: labels.clone(),
            secrets: Vec::new(),
        };
        let service = ServiceSpec {
            name: spec.name.clone(),
            labels,
            task_template: TaskTemplate {
                container_spec: container,
                resources: Resources::default(),
                restart_policy: restart_policy(),
                networks: vec![NetworkTarget {
                    target: self.config.network.clone(),
                }],
            },
            mode: ServiceMode::Global {},
            endpoint_spec: EndpointSpec {
                mode: "dnsrr".into(),
                ports: spec
                    .ports
                    .iter()
                    .map(|&(published, target)| PortConfig {
                        protocol: "tcp".into(),
                        target_port: target,
                        published_port: published,
                        publish_mode: "host".into(),
                    })
                    .collect(),
            },
        };
        let action = format!("run service {}", spec.name);
        match self.service(&spec.name).await? {
            None => {
                let created: Created = self
                    .docker
                    .post("/services/create", &service, &action)
                    .await?;
                info!(service = %spec.name, id = %created.id, "router fleet created");
            }
            Some(existing) => {
                let wanted = serde_json::to_value(&service).map_err(|e| EngineError::Protocol {
                    engine: self.docker.engine(),
                    action: action.clone(),
                    message: e.to_string(),
                })?;
                if spec_differs(&existing.spec, &wanted) {
                    self.update(&existing, wanted, &action).await?;
                    info!(service = %spec.name, "router fleet updated");
                }
            }
        }
        Ok(())
    }

    /// The tasks of the router fleet `name`, as instances.
    pub async fn router_tasks(&self, name: &str) -> Result<Vec<EngineInstance>, EngineError> {
        self.tasks(name, 0).await
    }

    /// Removes the router fleet `name`.
    pub async fn remove_routers(&self, name: &str) -> Result<(), EngineError> {
        self.docker
            .delete(
                &format!("/services/{}", query_escape(name)),
                &format!("remove service {name}"),
            )
            .await
            .map(drop)
    }

    async fn ensure_network(&self) -> Result<(), EngineError> {
        let name = &self.config.network;
        let path = format!("/networks/{}", query_escape(name));
        match self
            .docker
            .get::<Network>(&path, &format!("describe network {name}"))
            .await
        {
            Ok(network) => {
                if network.driver != "overlay" || !network.attachable {
                    return Err(EngineError::NotReady(format!(
                        "network {name} exists but is not an attachable overlay network \
                         (driver {:?}, attachable {}): remove it or choose another with \
                         --swarm-network",
                        network.driver, network.attachable
                    )));
                }
                Ok(())
            }
            Err(EngineError::Refused { status: 404, .. }) => {
                let body = json!({
                    "Name": name,
                    "Driver": "overlay",
                    "Attachable": true,
                    "CheckDuplicate": true,
                    "Labels": { LABEL_OWNER: self.config.owner },
                });
                let created: Created = self
                    .docker
                    .post(
                        "/networks/create",
                        &body,
                        &format!("create overlay network {name}"),
                    )
                    .await?;
                info!(network = %name, id = %created.id, "overlay network created");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// molt's labels common to every service.
    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(LABEL_OWNER.to_owned(), self.config.owner.clone())])
    }

    /// The service named `name`, if the engine has it.
    async fn service(&self, name: &str) -> Result<Option<Service>, EngineError> {
        match self
            .docker
            .get::<Service>(
                &format!("/services/{}", query_escape(name)),
                &format!("describe service {name}"),
            )
            .await
        {
            Ok(service) => Ok(Some(service)),
            Err(EngineError::Refused { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn update(
        &self,
        service: &Service,
        spec: serde_json::Value,
        action: &str,
    ) -> Result<(), EngineError> {
        let path = format!(
            "/services/{}/update?version={}",
            service.id, service.version.index
        );
        self.docker.post_unit(&path, &spec, action).await
    }

    /// The tasks of service `name` (ended ones too, as Swarm still lists them), with the
    /// address on molt's network and `port`.
    async fn tasks(&self, name: &str, port: u16) -> Result<Vec<EngineInstance>, EngineError> {
        let filters = json!({ "service": [name] }).to_string();
        let tasks: Vec<Task> = self
            .docker
            .get(
                &format!("/tasks?filters={}", query_escape(&filters)),
                &format!("list the tasks of {name}"),
            )
            .await?;
        Ok(tasks
            .into_iter()
            .map(|task| instance_of(task, &self.config.network, port))
            .collect())
    }
}

impl Engine for Swarm {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn start_environment<'a>(&'a self, spec: &'a EnvironmentSpec) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let name = service_name(&spec.env);
            let action = format!("create service {name}");
            if let Some(existing) = self.service(&name).await? {
                debug!(service = %name, "service exists; setting its replicas");
                return self.set_replicas(&existing, spec.instances, &action).await;
            }
            let secrets = self.create_secrets(spec).await?;
            let service = self.environment_service(spec, secrets);
            let created: Created = self
                .docker
                .post("/services/create", &service, &action)
                .await?;
            info!(service = %name, id = %created.id, replicas = spec.instances, "service created");
            Ok(())
        })
    }

    fn scale<'a>(&'a self, env: &'a str, instances: u32) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let name = service_name(env);
            let action = format!("scale service {name} to {instances}");
            let Some(service) = self.service(&name).await? else {
                return Err(EngineError::Refused {
                    engine: self.docker.engine(),
                    action,
                    message: format!("service {name} not found"),
                    status: 404,
                });
            };
            self.set_replicas(&service, instances, &action).await
        })
    }

    fn instances<'a>(&'a self, env: &'a str) -> EngineFuture<'a, Vec<EngineInstance>> {
        Box::pin(async move {
            let name = service_name(env);
            let Some(service) = self.service(&name).await? else {
                return Ok(Vec::new());
            };
            let port = label(&service.spec, LABEL_PORT)
                .and_then(|port| port.parse().ok())
                .unwrap_or(0);
            self.tasks(&name, port).await
        })
    }

    fn stop_environment<'a>(&'a self, env: &'a str) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let name = service_name(env);
            if self
                .docker
                .delete(
                    &format!("/services/{}", query_escape(&name)),
                    &format!("remove service {name}"),
                )
                .await?
            {
                info!(service = %name, "service removed");
            }
            self.remove_secrets(env).await;
            Ok(())
        })
    }

    fn nodes(&self) -> EngineFuture<'_, Vec<EngineNode>> {
        Box::pin(self.swarm_nodes())
    }

    fn environments(&self) -> EngineFuture<'_, Vec<EngineEnvironment>> {
        Box::pin(async move {
            let filters = json!({
                "label": [
                    format!("{LABEL_OWNER}={}", self.config.owner),
                    format!("{LABEL_ROLE}=environment"),
                ]
            })
            .to_string();
            let services: Vec<Service> = self
                .docker
                .get(
                    &format!("/services?filters={}", query_escape(&filters)),
                    "list molt's services",
                )
                .await?;
            Ok(services
                .iter()
                .filter_map(|service| {
                    Some(EngineEnvironment {
                        env: label(&service.spec, LABEL_ENV)?.to_owned(),
                        app: label(&service.spec, LABEL_APP)?.to_owned(),
                        release: label(&service.spec, LABEL_RELEASE)?.parse().ok()?,
                        instances: service.spec["Mode"]["Replicated"]["Replicas"]
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(0),
                        image: service.spec["TaskTemplate"]["ContainerSpec"]["Image"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    })
                })
                .collect())
        })
    }
}

impl Swarm {
    fn environment_service(
        &self,
        spec: &EnvironmentSpec,
        secrets: Vec<SecretReference>,
    ) -> ServiceSpec {
        let mut labels = self.labels();
        labels.extend([
            (LABEL_ROLE.to_owned(), "environment".to_owned()),
            (LABEL_APP.to_owned(), spec.app.clone()),
            (LABEL_ENV.to_owned(), spec.env.clone()),
            (LABEL_RELEASE.to_owned(), spec.release.to_string()),
            (LABEL_PORT.to_owned(), spec.port.to_string()),
        ]);
        let limits = &spec.limits;
        ServiceSpec {
            name: service_name(&spec.env),
            labels: labels.clone(),
            task_template: TaskTemplate {
                container_spec: ContainerSpec {
                    image: spec.image.clone(),
                    command: spec.command.clone(),
                    env: env_list(&spec.env_vars)
                        .into_iter()
                        .chain((!secrets.is_empty()).then(|| {
                            format!("{}={}", secret_files::DIR_VAR, secret_files::CONTAINER_DIR)
                        }))
                        .collect(),
                    secrets,
                    user: "65534:65534".into(),
                    read_only: true,
                    mounts: scratch_mounts(),
                    capability_drop: vec!["ALL".into()],
                    capability_add: Vec::new(),
                    // Only when `[limits] nofile` is set: otherwise the engine's default
                    // (dockerd's own limit: 1 Mi with Debian's systemd unit), which a node
                    // that cannot raise limits also cannot exceed.
                    ulimits: limits.nofile.map(nofile).into_iter().collect(),
                    init: true,
                    stop_grace_period: STOP_GRACE.as_nanos() as u64,
                    labels,
                },
                resources: Resources {
                    limits: ResourceLimits {
                        nano_cpus: limits.cpu_millis.map(|m| u64::from(m) * 1_000_000),
                        memory_bytes: limits.memory,
                        pids: limits.pids.map(u64::from),
                    },
                },
                restart_policy: restart_policy(),
                networks: vec![NetworkTarget {
                    target: self.config.network.clone(),
                }],
            },
            mode: ServiceMode::Replicated {
                replicas: u64::from(spec.instances),
            },
            endpoint_spec: EndpointSpec {
                mode: "dnsrr".into(),
                ports: Vec::new(),
            },
        }
    }

    async fn set_replicas(
        &self,
        service: &Service,
        instances: u32,
        action: &str,
    ) -> Result<(), EngineError> {
        let current = service.spec["Mode"]["Replicated"]["Replicas"].as_u64();
        if current == Some(u64::from(instances)) {
            return Ok(());
        }
        let mut spec = service.spec.clone();
        spec["Mode"] = json!({ "Replicated": { "Replicas": instances } });
        self.update(service, spec, action).await
    }
}

/// The service of environment `env`.
pub fn service_name(env: &str) -> String {
    format!("molt-{env}")
}

/// A task as molt sees an instance: running only when it runs and is meant to; its address
/// on `network` with `port`.
fn instance_of(task: Task, network: &str, port: u16) -> EngineInstance {
    let desired_running = task.desired_state == "running";
    let state = match task.status.state.as_str() {
        "running" if desired_running => EngineInstanceState::Running,
        "new" | "allocated" | "pending" | "assigned" | "accepted" | "preparing" | "ready"
        | "starting"
            if desired_running =>
        {
            EngineInstanceState::Starting
        }
        _ => EngineInstanceState::Ended {
            exit_code: task.status.container_status.and_then(|c| c.exit_code),
        },
    };
    let addr = task
        .networks_attachments
        .iter()
        .find(|attachment| attachment.network.spec.name == network)
        .and_then(|attachment| attachment.addresses.first())
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port));
    let message = match task.status.err {
        Some(err) if !err.is_empty() => format!("{}: {err}", task.status.message),
        _ => task.status.message,
    };
    EngineInstance {
        id: task.id,
        node: task.node_id.filter(|node| !node.is_empty()),
        state,
        addr,
        message,
    }
}

fn label<'a>(spec: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    spec["Labels"][key].as_str()
}

fn env_list(vars: &[(String, String)]) -> Vec<String> {
    vars.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn scratch_mounts() -> Vec<Mount> {
    ["/tmp", "/run"]
        .into_iter()
        .map(|target| Mount {
            kind: "tmpfs".into(),
            target: target.into(),
            tmpfs_options: TmpfsOptions {
                size_bytes: SCRATCH_BYTES,
                mode: 0o1777,
            },
        })
        .collect()
}

fn nofile(limit: u64) -> Ulimit {
    Ulimit {
        name: "nofile".into(),
        soft: limit,
        hard: limit,
    }
}

fn restart_policy() -> RestartPolicy {
    RestartPolicy {
        condition: "any".into(),
        delay: RESTART_DELAY.as_nanos() as u64,
    }
}

/// Whether the engine's spec differs from what molt would write, in the fields molt writes
/// (the engine adds defaults of its own).
fn spec_differs(current: &serde_json::Value, wanted: &serde_json::Value) -> bool {
    fn covers(current: &serde_json::Value, wanted: &serde_json::Value) -> bool {
        match (current, wanted) {
            (serde_json::Value::Object(current), serde_json::Value::Object(wanted)) => wanted
                .iter()
                .all(|(key, value)| current.get(key).is_some_and(|c| covers(c, value))),
            (current, wanted) => current == wanted,
        }
    }
    !covers(current, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: serde_json::Value) -> Task {
        serde_json::from_value(json).expect("task JSON")
    }

    #[test]
    fn a_running_task_has_its_overlay_address() {
        let instance = instance_of(
            task(json!({
                "ID": "t1", "ServiceID": "s", "NodeID": "n1", "DesiredState": "running",
                "Status": { "State": "running", "Message": "started" },
                "NetworksAttachments": [
                    { "Network": { "ID": "i", "Spec": { "Name": "ingress" } }, "Addresses": ["10.0.0.5/24"] },
                    { "Network": { "ID": "m", "Spec": { "Name": "molt" } }, "Addresses": ["10.0.1.7/24"] }
                ]
            })),
            "molt",
            8080,
        );
        assert_eq!(instance.state, EngineInstanceState::Running);
        assert_eq!(instance.addr, Some("10.0.1.7:8080".parse().expect("addr")));
        assert_eq!(instance.node.as_deref(), Some("n1"));
    }

    #[test]
    fn a_task_being_shut_down_is_not_running() {
        let instance = instance_of(
            task(json!({
                "ID": "t2", "DesiredState": "shutdown",
                "Status": { "State": "running", "Message": "started" }
            })),
            "molt",
            8080,
        );
        assert_eq!(
            instance.state,
            EngineInstanceState::Ended { exit_code: None }
        );
        assert_eq!(instance.addr, None);
    }

    #[test]
    fn a_failed_task_keeps_the_engines_words() {
        let instance = instance_of(
            task(json!({
                "ID": "t3", "DesiredState": "shutdown",
                "Status": {
                    "State": "failed", "Message": "started",
                    "Err": "task: non-zero exit (3)",
                    "ContainerStatus": { "ExitCode": 3 }
                }
            })),
            "molt",
            8080,
        );
        assert_eq!(
            instance.state,
            EngineInstanceState::Ended { exit_code: Some(3) }
        );
        assert_eq!(instance.message, "started: task: non-zero exit (3)");
    }

    #[test]
    fn specs_differ_only_in_what_molt_writes() {
        let current = json!({ "Name": "x", "Labels": { "a": "1" }, "Extra": 5 });
        assert!(!spec_differs(
            &current,
            &json!({ "Name": "x", "Labels": { "a": "1" } })
        ));
        assert!(spec_differs(
            &current,
            &json!({ "Name": "x", "Labels": { "a": "2" } })
        ));
    }
}
