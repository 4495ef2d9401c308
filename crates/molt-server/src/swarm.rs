//! `molt serve --provider swarm`: environments as Docker Swarm services, images through a
//! registry, and the fleet of routers as a global service that molt builds from its own
//! executable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use molt_control::EngineSetup;
use molt_image::ImageStore;
use molt_swarm::{RouterServiceSpec, Swarm, SwarmConfig, ROUTER_EXECUTABLE};

/// How `molt serve` uses a swarm.
#[derive(Debug, Clone)]
pub struct SwarmServeConfig {
    /// The Docker engine's socket (a manager node's).
    pub socket: PathBuf,
    /// molt's attachable overlay network.
    pub network: String,
    /// `host[:port]` of the registry every node pulls from.
    pub registry: String,
    /// Repository prefix under the registry.
    pub repository: String,
    /// Credentials for the registry (from `MOLT_REGISTRY_USERNAME` / `_PASSWORD`).
    pub registry_credentials: Option<molt_control::Credentials>,
    /// The URL the fleet's routers dial (default: `https://` + the API's TLS address).
    pub control_url: Option<String>,
    /// Ports the fleet's routers publish on every node (node port, router port); empty runs
    /// no router fleet (routers started by hand with `molt router` follow all the same).
    pub router_ports: Vec<(u16, u16)>,
    /// The name of the fleet's service.
    pub router_service: String,
    /// The `molt` executable the router image is built from (default: this process's own).
    pub router_executable: Option<PathBuf>,
}

/// The container port the fleet's routers listen on.
pub const ROUTER_PORT: u16 = 8080;

impl SwarmServeConfig {
    /// The defaults: Docker's socket, network `molt`, repository prefix `molt`, routers
    /// published on every node's port 80.
    pub fn new(registry: impl Into<String>) -> Self {
        Self {
            socket: PathBuf::from(molt_swarm::DEFAULT_SOCKET),
            network: "molt".into(),
            registry: registry.into(),
            repository: "molt".into(),
            registry_credentials: None,
            control_url: None,
            router_ports: vec![(80, ROUTER_PORT)],
            router_service: molt_swarm::ROUTER_SERVICE.into(),
            router_executable: None,
        }
    }
}

/// Connects to the swarm (checking it is an active manager and creating the network).
pub(crate) async fn connect(config: &SwarmServeConfig, owner: &str) -> Result<EngineSetup> {
    let swarm = Swarm::connect(SwarmConfig {
        socket: config.socket.clone(),
        network: config.network.clone(),
        owner: owner.to_owned(),
    })
    .await
    .context("--provider swarm")?;
    Ok(EngineSetup {
        engine: Arc::new(swarm),
        registry: config.registry.clone(),
        repository: config.repository.clone(),
        credentials: config.registry_credentials.clone(),
    })
}

/// Builds the router image from this executable, pushes it and runs (or updates) the fleet's
/// global service. Runs in the background: `molt serve` serves meanwhile.
pub(crate) async fn run_router_fleet(
    config: SwarmServeConfig,
    owner: String,
    images: ImageStore,
    data_dir: PathBuf,
    control_url: String,
    router_token: String,
    control_ca: String,
) -> Result<()> {
    let tree = data_dir.join("tmp").join("router-image");
    let executable = match &config.router_executable {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding molt's own executable")?,
    };
    let imported = {
        let (images, tree) = (images.clone(), tree.clone());
        tokio::task::spawn_blocking(move || -> Result<_> {
            let _ = std::fs::remove_dir_all(&tree);
            molt_swarm::write_router_tree(&tree, &executable)
                .context("collecting molt's executable and the libraries it links")?;
            let imported = images
                .import_dir(&tree)
                .context("storing the router image")?;
            let _ = std::fs::remove_dir_all(&tree);
            Ok(imported)
        })
        .await??
    };
    let repository = format!("{}/{}/molt-router", config.registry, config.repository);
    let short = &imported.digest.to_string()[7..19];
    molt_registry::push(
        &images,
        &imported.digest,
        &format!("{repository}:{short}"),
        config.registry_credentials.as_ref(),
        None,
        // molt's own router image: nothing signs it.
        &[],
    )
    .await
    .context("pushing the router image")?;
    let swarm = Swarm::connect(SwarmConfig {
        socket: config.socket.clone(),
        network: config.network.clone(),
        owner,
    })
    .await?;
    swarm
        .ensure_routers(&RouterServiceSpec {
            name: config.router_service.clone(),
            image: format!("{repository}@{}", imported.digest),
            command: vec![
                ROUTER_EXECUTABLE.into(),
                "router".into(),
                "--control".into(),
                control_url,
                "--listen".into(),
                format!("0.0.0.0:{ROUTER_PORT}"),
                "--state-dir".into(),
                "/tmp/molt-router".into(),
            ],
            env_vars: vec![
                ("MOLT_ROUTER_TOKEN".into(), router_token),
                ("MOLT_CONTROL_CA".into(), control_ca),
                ("MOLT_ROUTER_NAME".into(), "{{.Node.Hostname}}".into()),
                ("MOLT_LOG".into(), "info".into()),
            ],
            ports: config.router_ports.clone(),
        })
        .await?;
    tracing::info!(image = %imported.digest, "the router fleet runs on every node of the swarm");
    Ok(())
}

/// Whether `path` exists (for a clear error before connecting).
pub(crate) fn socket_exists(path: &Path) -> bool {
    path.exists()
}
