//! The seam for engines that run instances across machines (Docker Swarm today, Kubernetes
//! next): an environment is started, scaled, listed and stopped as one unit, and the engine
//! itself places, restarts and addresses its instances.
//!
//! A [`Provider`](crate::Provider) starts one process at a time on this machine and molt
//! replaces what dies; an [`Engine`] is told how many instances an environment has and keeps
//! that many running wherever it likes. molt never schedules: it reads what the engine reports
//! (instances, their state and address) and records it. Identity is the engine's own (a Swarm
//! task id, a Kubernetes pod uid), so adoption after a restart is a lookup by the labels every
//! environment carries ([`EngineEnvironment`]).
//!
//! The methods are asynchronous (engines are reached over a socket or the network); they
//! return boxed futures so that the controller can hold an `Arc<dyn Engine>`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use molt_core::Limits;

/// The engine as `molt cluster status` shows it: the API's records.
pub use molt_wire::{EngineEnvironment, EngineNode};

/// A future an engine returns.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

/// Everything an engine needs to run one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentSpec {
    /// Environment id (unique across apps); the engine's unit is named after it.
    pub env: String,
    /// The app it belongs to.
    pub app: String,
    /// The release it runs.
    pub release: u32,
    /// The image as the engine's nodes pull it, pinned by digest
    /// (`registry/repository@sha256:…`), never a tag.
    pub image: String,
    /// Program and arguments, already expanded.
    pub command: Vec<String>,
    /// The complete environment of each instance.
    pub env_vars: Vec<(String, String)>,
    /// The port each instance's HTTP server listens on.
    pub port: u16,
    /// How many instances.
    pub instances: u32,
    /// Resource limits of each instance.
    pub limits: Limits,
    /// Secrets each instance gets as a file under `/run/secrets`.
    pub secret_files: Vec<crate::SecretFile>,
}

/// What an engine reports of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInstance {
    /// The engine's id of the instance (a Swarm task id).
    pub id: String,
    /// Where it runs (a node id), when placed.
    pub node: Option<String>,
    /// Its state.
    pub state: EngineInstanceState,
    /// The address its HTTP server answers on, once the engine has given it one.
    pub addr: Option<SocketAddr>,
    /// The engine's words on the state (e.g. why it failed).
    pub message: String,
}

/// The state of an engine's instance, reduced to what molt acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineInstanceState {
    /// Accepted, being placed, pulled or started.
    Starting,
    /// Its process runs.
    Running,
    /// It ended (exited, failed, was rejected or shut down); the engine replaces it when
    /// the environment still wants it.
    Ended {
        /// Exit code, when the process exited.
        exit_code: Option<i32>,
    },
}

/// Why an engine could not do what was asked. The engine's own message is kept whole: it is
/// what the user needs to see (image missing, bad resources, no such network).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The engine could not be reached at all (socket missing, connection refused).
    #[error("cannot reach {engine}: {message}")]
    Unreachable {
        /// Which engine, e.g. "the Docker engine at /var/run/docker.sock".
        engine: String,
        /// What failed.
        message: String,
    },
    /// The engine refused or failed the request.
    #[error("{engine} refused to {action}: {message}")]
    Refused {
        /// Which engine.
        engine: String,
        /// What molt asked for, e.g. "create service molt-shop-3".
        action: String,
        /// The engine's message.
        message: String,
        /// The engine's status code, when it speaks HTTP.
        status: u16,
    },
    /// The engine is reachable but not usable as configured (e.g. not a swarm manager).
    #[error("{0}")]
    NotReady(String),
    /// The engine answered something molt cannot read.
    #[error("{engine} answered something unexpected to {action}: {message}")]
    Protocol {
        /// Which engine.
        engine: String,
        /// What molt asked for.
        action: String,
        /// What was wrong with the answer.
        message: String,
    },
}

/// An engine that runs environments of instances on many machines.
pub trait Engine: Send + Sync {
    /// Short name, e.g. `"swarm"`.
    fn name(&self) -> &'static str;

    /// Makes sure the environment runs with `spec.instances` instances (creates it when
    /// missing; an existing one is left as it is but for its instance count). Idempotent: a
    /// deployment resumed after a crash calls it again.
    fn start_environment<'a>(&'a self, spec: &'a EnvironmentSpec) -> EngineFuture<'a, ()>;

    /// Sets how many instances the environment runs.
    fn scale<'a>(&'a self, env: &'a str, instances: u32) -> EngineFuture<'a, ()>;

    /// The environment's instances as the engine sees them now (ended ones included while
    /// the engine still reports them). An environment the engine does not know has none.
    fn instances<'a>(&'a self, env: &'a str) -> EngineFuture<'a, Vec<EngineInstance>>;

    /// Stops the environment and removes it from the engine; one that is already gone is not
    /// an error.
    fn stop_environment<'a>(&'a self, env: &'a str) -> EngineFuture<'a, ()>;

    /// Every environment the engine runs for this molt (by its owner label): what a restart
    /// adopts and what garbage collection looks at.
    fn environments(&self) -> EngineFuture<'_, Vec<EngineEnvironment>>;

    /// The engine's machines.
    fn nodes(&self) -> EngineFuture<'_, Vec<EngineNode>>;
}
