//! molt-provider: where instances run.
//!
//! A [`Provider`] starts instances from an [`InstanceSpec`], reports their status, signals them,
//! and after a restart of molt finds and re-adopts the ones still running. The [`LocalProvider`]
//! runs each instance as a plain child process in its own process group. Engines that run
//! instances across machines (Docker Swarm, Kubernetes) implement [`Engine`] instead: whole
//! environments, placed and restarted by the engine.
//!
//! Everything here blocks; async callers use `spawn_blocking`.

pub mod elf;
mod engine;
mod error;
mod inroot;
mod local;
pub mod procfs;
pub mod secret_files;

use std::net::IpAddr;
use std::path::PathBuf;

pub use crate::engine::{
    Engine, EngineEnvironment, EngineError, EngineFuture, EngineInstance, EngineInstanceState,
    EngineNode, EnvironmentSpec,
};
pub use crate::error::ProviderError;
pub use crate::inroot::lookup_in_root;
pub use crate::local::LocalProvider;
pub use crate::secret_files::{SecretDirs, SecretFile, SecretVar};
pub use molt_core::{Limits, DEFAULT_NOFILE};

/// Everything needed to start one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Unique instance id; exported to the process as `MOLT_INSTANCE`.
    pub id: String,
    /// Program and arguments, already expanded (no shell involved).
    pub command: Vec<String>,
    /// Working directory; a program with a `/` in its name is resolved against it.
    pub cwd: PathBuf,
    /// The complete environment (nothing is inherited from molt).
    pub env: Vec<(String, String)>,
    /// File that receives stdout and stderr, appended to.
    pub log_path: PathBuf,
    /// Resource limits; providers that cannot enforce them (isolation `none`) ignore them.
    pub limits: Limits,
    /// What an isolating provider puts around the image tree (`cwd`).
    pub layout: RootLayout,
    /// The address the instance listens on (`$HOST`): a loopback address of the host, or
    /// its own address on molt's bridge when the provider gives it a network namespace.
    pub address: IpAddr,
    /// Secrets it gets as files (`secret_files`).
    pub secret_files: Vec<SecretFile>,
    /// Secrets it gets as environment variables, kept apart from `env` so that a provider
    /// can keep them off the disk (a container's bundle); they win over `env`.
    pub secret_env: Vec<SecretVar>,
}

/// How an isolating provider builds an instance's root filesystem from the image tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootLayout {
    /// The image carries its own system (e.g. a static binary, or a baked base): the image
    /// tree is the whole root, the program runs in `/`.
    #[default]
    OwnRoot,
    /// The image is an app folder without a system: the host's system directories are
    /// mounted read-only and the image tree at [`APP_DIR`], where the program runs.
    HostSystem,
}

/// Where the app tree of a [`RootLayout::HostSystem`] instance is mounted.
pub const APP_DIR: &str = "/app";

/// Identity of a running process that survives a restart of molt (pid + kernel start time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessHandle {
    /// Process id, also the id of the instance's process group.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22): tells a reused pid
    /// apart from the process that first had it.
    pub start_time: u64,
}

/// What became of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Still running.
    Running,
    /// Exited with a code, or was killed by a signal.
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal number, when a signal ended it.
        signal: Option<i32>,
    },
    /// Not our child and no longer alive: the exit status is unknown.
    Gone,
}

/// How hard to ask an instance to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: finish what you are doing and exit.
    Graceful,
    /// SIGKILL: stop now.
    Force,
}

/// A place where instances run.
pub trait Provider: Send + Sync {
    /// Short name of the provider, e.g. `"local"`.
    fn name(&self) -> &'static str;

    /// How instances are isolated from each other and from the host (`"none"` for plain processes).
    fn isolation(&self) -> &'static str;

    /// Starts an instance and returns the handle to record for it.
    fn start(&self, spec: &InstanceSpec) -> Result<ProcessHandle, ProviderError>;

    /// The current status of instance `id` started (or adopted) as `handle`.
    fn status(&self, id: &str, handle: ProcessHandle) -> InstanceStatus;

    /// Signals the instance's whole process group; an instance that is already gone is not an error.
    fn signal(&self, handle: ProcessHandle, sig: StopSignal) -> Result<(), ProviderError>;

    /// True when `handle` is still alive, is the same process (start time matches) and carries
    /// this provider's owner marker and instance `id`.
    fn adopt(&self, id: &str, handle: ProcessHandle) -> bool;

    /// Every live instance process carrying this provider's owner marker, with its instance id:
    /// used to find orphans after a restart.
    fn scan(&self) -> Vec<(String, ProcessHandle)>;

    /// Why instance `id` (started or adopted as `handle`) ended, beyond its exit status, when
    /// the provider knows (e.g. "killed by the out-of-memory killer"). Asked before `forget`.
    fn exit_reason(&self, id: &str, handle: ProcessHandle) -> Option<String> {
        let _ = (id, handle);
        None
    }

    /// Forgets what the provider keeps about instance `id` once its exit has been recorded.
    fn forget(&self, id: &str) {
        let _ = id;
    }

    /// Removes what the provider set up for instances of this owner that no longer run and
    /// that `forget` never got to (e.g. the network namespace of a container that ended while
    /// molt was down); returns what it removed, for the log.
    fn sweep(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The open-files limit an instance can get for `wanted`: `wanted` when molt's own hard limit
/// allows it or molt may raise limits (`CAP_SYS_RESOURCE`), else molt's own hard limit (a
/// process without that capability, root in a container included, cannot give more).
pub fn open_files_limit(wanted: u64) -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    let Ok((_, own_hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    if wanted <= own_hard || may_raise_limits() {
        wanted
    } else {
        own_hard
    }
}

/// Whether this process holds `CAP_SYS_RESOURCE` in its effective set.
fn may_raise_limits() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps >> CAP_SYS_RESOURCE & 1 == 1)
}
