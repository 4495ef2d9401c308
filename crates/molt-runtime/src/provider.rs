//! `RuncProvider`: one instance is one runc container with its own bundle directory.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use molt_provider::secret_files::{self, SecretDirs};
use molt_provider::{
    InstanceSpec, InstanceStatus, ProcessHandle, Provider, ProviderError, RootLayout, StopSignal,
};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::abandoned;
use crate::bundle::BundleSpec;
use crate::bundle::ENV_FILE;
use crate::ids::{self, INSTANCE_ANNOTATION, OWNER_ANNOTATION};
use crate::init::InstanceInit;
use crate::net::{self, BridgeNetwork, InstanceNet};
use crate::procfs;
use crate::rootfs::{self, PreparedRoot, HOST_SECRETS};
use crate::runc::{ContainerState, Runc};

/// Environment variable naming the instance, as the local provider sets it.
const INSTANCE_VAR: &str = "MOLT_INSTANCE";
/// Environment variable carrying the owner marker, as the local provider sets it (tools that
/// look for a data directory's instance processes find containers the same way).
const OWNER_VAR: &str = "MOLT_OWNER";
/// Parent of every instance's cgroup, in every hierarchy (never the hierarchy's root).
const CGROUP_PARENT: &str = "/molt";
/// File in the bundle where `runc run` writes the container's init pid.
pub(crate) const PID_FILE: &str = "init.pid";
/// Where cgroup hierarchies are mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Who the container's process runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerUser {
    /// User id inside the container (no user namespace: also the host uid).
    pub uid: u32,
    /// Group id inside the container.
    pub gid: u32,
}

/// Where a [`RuncProvider`] keeps things and how it confines instances.
#[derive(Debug, Clone)]
pub struct RuncConfig {
    /// Marks this molt's containers: their ids start with `<owner>-`; one stable owner per data dir.
    pub owner: String,
    /// The `runc` binary (`runc` is looked up in `PATH`).
    pub runc: PathBuf,
    /// runc's state directory (`runc --root`), so molt's containers are apart from others.
    pub state_root: PathBuf,
    /// Directory holding one bundle directory per container.
    pub bundle_root: PathBuf,
    /// The user instances run as.
    pub user: ContainerUser,
    /// Memory limit of each instance in bytes (none when `None`).
    pub memory_limit: Option<u64>,
    /// Largest number of tasks in each instance (none when `None`).
    pub pids_limit: Option<u64>,
    /// Host paths masked in every instance (e.g. molt's data directory, which holds the admin
    /// token), besides the OCI defaults and the host's secrets under `/etc`.
    pub hidden: Vec<PathBuf>,
    /// Bridge mode: each instance gets a network namespace on this bridge, with the address
    /// of its spec. `None`: instances share the host's network.
    pub network: Option<BridgeNetwork>,
    /// The init every instance runs under as PID 1 (molt's executable, `init.rs`), so that
    /// the program gets SIGTERM and its orphans are reaped. `None`: the program itself is PID
    /// 1, and a program without a SIGTERM handler only stops on SIGKILL.
    pub init: Option<InstanceInit>,
}

/// Runs instances as OCI containers through `runc`, each with a read-only root filesystem.
///
/// Containers outlive molt (`runc run --detach`); after a restart they are found again by
/// `scan` (their ids start with the owner prefix) and re-adopted by `adopt`.
#[derive(Debug)]
pub struct RuncProvider {
    config: RuncConfig,
    runc: Runc,
    /// Container id of every handle started or adopted here, for `signal` (which gets no id).
    containers: Mutex<HashMap<ProcessHandle, String>>,
    /// Exit statuses of container processes reaped here (molt is their subreaper).
    exits: Mutex<HashMap<ProcessHandle, InstanceStatus>>,
    /// Containers being started: `sweep` leaves their network namespaces alone.
    starting: Mutex<HashSet<String>>,
    /// Where instances' secret files are (bound at `/run/secrets` in each container).
    secrets: SecretDirs,
}

/// Removes a container id from the provider's `starting` set when the start ends.
struct Starting<'a> {
    set: &'a Mutex<HashSet<String>>,
    cid: String,
}

impl ContainerUser {
    /// `nobody:nogroup` (65534), the default.
    pub const NOBODY: ContainerUser = ContainerUser {
        uid: 65534,
        gid: 65534,
    };
}

impl RuncConfig {
    /// Defaults: `runc` from `PATH`, user nobody, no resource limits, no init.
    pub fn new(
        owner: impl Into<String>,
        state_root: impl Into<PathBuf>,
        bundle_root: impl Into<PathBuf>,
    ) -> Self {
        RuncConfig {
            owner: owner.into(),
            runc: PathBuf::from("runc"),
            state_root: state_root.into(),
            bundle_root: bundle_root.into(),
            user: ContainerUser::NOBODY,
            memory_limit: None,
            pids_limit: None,
            hidden: Vec::new(),
            network: None,
            init: None,
        }
    }
}

impl RuncProvider {
    /// A provider with `config`; nothing is touched until the first call.
    pub fn new(config: RuncConfig) -> Self {
        let runc = Runc::new(config.runc.clone(), config.state_root.clone());
        RuncProvider {
            secrets: SecretDirs::for_owner(&config.owner),
            config,
            runc,
            containers: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashSet::new()),
        }
    }

    /// True when `binary --version` runs: runc is installed and usable.
    pub fn runc_available(binary: &Path) -> bool {
        std::process::Command::new(binary)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`):
    /// runc detaches each container's init process, which is then re-parented here rather
    /// than to the host's init, so molt reaps it and learns its exit status.
    pub fn become_subreaper() -> Result<(), ProviderError> {
        nix::sys::prctl::set_child_subreaper(true).map_err(|source| ProviderError::Signal {
            pid: std::process::id(),
            source,
        })
    }

    /// The runc container id of instance `id`.
    pub fn container_id(&self, id: &str) -> String {
        ids::container_id(&self.config.owner, id)
    }

    /// The bundle directory of instance `id`.
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.config.bundle_root.join(self.container_id(id))
    }

    /// The cgroup path of instance `id`, relative to each hierarchy's root.
    pub fn cgroup_path(&self, id: &str) -> PathBuf {
        Path::new(CGROUP_PARENT).join(self.container_id(id))
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<ProcessHandle, String>> {
        // A panic while holding the lock leaves the map itself intact.
        self.containers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn exits(&self) -> MutexGuard<'_, HashMap<ProcessHandle, InstanceStatus>> {
        self.exits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn starting(&self) -> MutexGuard<'_, HashSet<String>> {
        self.starting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The network namespace and veth names of container `cid` (bridge mode).
    fn instance_net(&self, cid: &str) -> InstanceNet {
        InstanceNet::of(&self.config.owner, cid)
    }

    /// The path of instance `id`'s network namespace (`/run/netns/<container id>`), whether or
    /// not it exists.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.instance_net(&self.container_id(id))
            .netns()
            .to_path_buf()
    }

    /// The prefix of the names of every host-side veth of this provider's owner.
    pub fn veth_prefix(&self) -> String {
        net::veth_prefix(&self.config.owner)
    }

    /// The host-side veth of instance `id` (bridge mode), whether or not it exists.
    pub fn veth_name(&self, id: &str) -> String {
        self.instance_net(&self.container_id(id)).veth().to_string()
    }

    /// Bridge mode: creates the network namespace of `spec` with its address. `None` in host
    /// network mode.
    fn prepare_network(
        &self,
        spec: &InstanceSpec,
        cid: &str,
    ) -> Result<Option<InstanceNet>, ProviderError> {
        let Some(network) = &self.config.network else {
            return Ok(None);
        };
        let address = match spec.address {
            IpAddr::V4(a) if network.subnet().contains(a) && a != network.subnet().gateway() => a,
            other => {
                return Err(ProviderError::Network {
                    what: format!("give instance {} the address {other}", spec.id),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "bridge {} serves {}: the address must be a host address in it \
                             other than the gateway",
                            network.bridge(),
                            network.subnet()
                        ),
                    ),
                })
            }
        };
        network.forbid_forwarding()?;
        let net = self.instance_net(cid);
        net.create(network, address)?;
        Ok(Some(net))
    }

    /// Removes the network namespace and veth of container `cid`, if there are any.
    fn remove_network(&self, cid: &str) {
        let net = self.instance_net(cid);
        if self.config.network.is_none() && !net.exists() {
            return;
        }
        if let Err(e) = net.remove() {
            tracing::warn!(cid, error = %e, "cannot remove the instance's network namespace");
        }
    }

    /// The kernel start time of the init process `pid` of container `cid`: what runc recorded
    /// when it created the process (right even when the program has already exited and been
    /// reaped), else `/proc/<pid>/stat` (a zombie counts).
    fn init_start_time(&self, cid: &str, pid: u32) -> Option<u64> {
        let recorded = fs::read(self.config.state_root.join(cid).join("state.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<RuncInitState>(&bytes).ok())
            .filter(|state| state.init_process_pid == pid)
            .map(|state| state.init_process_start);
        recorded.or_else(|| procfs::start_time(pid))
    }

    /// The exit status of `handle` if it has ended and was (or now is) reaped here.
    ///
    /// Only a zombie with the handle's start time is waited for, so a reused pid (say, a
    /// `runc` command molt is running) is never reaped by mistake.
    fn reap(&self, handle: ProcessHandle) -> Option<InstanceStatus> {
        if let Some(status) = self.exits().get(&handle) {
            return Some(status.clone());
        }
        if !procfs::is_zombie_of(handle.pid, handle.start_time) {
            return None;
        }
        let pid = Pid::from_raw(i32::try_from(handle.pid).ok()?);
        let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => self.exited(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => InstanceStatus::Exited {
                code: None,
                signal: Some(signal as i32),
            },
            // Not our child (adopted after a restart): its parent reaps it.
            _ => return None,
        };
        self.exits().insert(handle, status.clone());
        Some(status)
    }

    /// How an instance whose init process exited with `code` ended. molt's init exits with
    /// 128 + N when signal N ended the program (the shell's convention): that is the signal
    /// again, as it would be without the init.
    fn exited(&self, code: i32) -> InstanceStatus {
        const SIGNALLED: std::ops::RangeInclusive<i32> = 129..=128 + 64;
        if self.config.init.is_some() && SIGNALLED.contains(&code) {
            return InstanceStatus::Exited {
                code: None,
                signal: Some(code - 128),
            };
        }
        InstanceStatus::Exited {
            code: Some(code),
            signal: None,
        }
    }

    /// A value of the instance's cgroup: `file` in the `controller` hierarchy (cgroup v1), or in
    /// the unified hierarchy (v2, also `unified/` in hybrid mode).
    fn cgroup_file(&self, id: &str, controller: &str, file: &str) -> Option<String> {
        let leaf = self.cgroup_path(id);
        let leaf = leaf.strip_prefix("/").unwrap_or(&leaf);
        [
            Path::new(CGROUP_MOUNT).join(controller).join(leaf),
            Path::new(CGROUP_MOUNT).join(leaf),
            Path::new(CGROUP_MOUNT).join("unified").join(leaf),
        ]
        .iter()
        .find_map(|dir| fs::read_to_string(dir.join(file)).ok())
    }

    /// How many times the kernel's OOM killer killed a process of instance `id` (cgroup v1
    /// `memory.oom_control`, v2 `memory.events`), while its cgroup exists.
    pub fn oom_kills(&self, id: &str) -> Option<u64> {
        let text = self
            .cgroup_file(id, "memory", "memory.oom_control")
            .or_else(|| self.cgroup_file(id, "memory", "memory.events"))?;
        keyed_value(&text, "oom_kill")
    }

    /// Builds the skeleton root of `spec` in `dir` (see `rootfs.rs`).
    fn prepare_root(
        &self,
        spec: &InstanceSpec,
        image: &Path,
        dir: &Path,
    ) -> Result<PreparedRoot, ProviderError> {
        let skeleton = dir.join("rootfs");
        rootfs::prepare(&skeleton, image, spec.layout, Path::new("/"))
            .map_err(|e| io_error(&skeleton, e))
    }

    /// Paths masked in the instance besides the OCI defaults.
    fn masked_paths(&self, layout: RootLayout) -> Vec<String> {
        let mut masked: Vec<String> = self
            .config
            .hidden
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if layout == RootLayout::HostSystem {
            masked.extend(HOST_SECRETS.iter().map(|s| s.to_string()));
        }
        masked
    }

    /// Whether `state` is one of ours, carries instance `id` and is the process `handle`.
    fn is_same(&self, state: &ContainerState, id: &str, handle: ProcessHandle) -> bool {
        state.is_live()
            && state.pid == handle.pid
            && state.annotation(OWNER_ANNOTATION) == Some(self.config.owner.as_str())
            && state.annotation(INSTANCE_ANNOTATION) == Some(id)
            && procfs::live_start_time(handle.pid) == Some(handle.start_time)
    }

    /// The container id of `handle`: remembered, else looked up among our live containers.
    fn container_of(&self, handle: ProcessHandle) -> Option<String> {
        if let Some(cid) = self.containers().get(&handle) {
            return Some(cid.clone());
        }
        let prefix = ids::owner_prefix(&self.config.owner);
        let list = self.runc.list().ok()?;
        list.into_iter()
            .find(|c| c.id.starts_with(&prefix) && c.is_live() && c.pid == handle.pid)
            .map(|c| c.id)
    }

    /// Removes a container runc still knows under `cid` before a new start reuses the id.
    fn clear_stale(&self, spec_id: &str, cid: &str) -> Result<(), ProviderError> {
        // runc keeps one directory per container in its state root: without it there is
        // nothing to clear, and one `runc state` call (~10 ms) is saved on every start.
        if !self.config.state_root.join(cid).exists() {
            return Ok(());
        }
        match self.runc.state(cid)? {
            Some(state) if state.is_live() => Err(ProviderError::Spawn {
                command: format!("runc run {cid}"),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("instance {spec_id} already runs as pid {}", state.pid),
                ),
            }),
            Some(_) => self.runc.delete_force(cid),
            None => Ok(()),
        }
    }

    /// Writes the bundle of `spec` (image tree `image`) into `dir` (emptied first): the
    /// skeleton root and `config.json`.
    fn write_bundle(
        &self,
        spec: &InstanceSpec,
        image: &Path,
        dir: &Path,
        netns: Option<&Path>,
    ) -> Result<(), ProviderError> {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_error(dir, source)),
        }
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut root = self.prepare_root(spec, image, dir)?;
        // Secrets given as variables go to molt's init in a file on a tmpfs, so that they are
        // not in `config.json`; without an init, the bundle is the only way in.
        let env_file = (self.config.init.is_some() && !spec.secret_env.is_empty()).then(|| {
            molt_init::env_file_bytes(
                spec.secret_env
                    .iter()
                    .map(|v| (v.name.as_str(), v.value.as_str())),
            )
        });
        let args = match &self.config.init {
            Some(init) => {
                init.mount_into(&mut root)
                    .map_err(|e| io_error(&root.skeleton, e))?;
                init.command(&spec.command, env_file.is_some().then_some(ENV_FILE))
            }
            None => spec.command.clone(),
        };
        let limit = |own: Option<u64>, default: Option<u64>| own.or(default);
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| k != INSTANCE_VAR && k != OWNER_VAR)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("{INSTANCE_VAR}={}", spec.id));
        env.push(format!("{OWNER_VAR}={}", self.config.owner));
        if env_file.is_none() {
            env.retain(|entry| {
                let name = entry.split('=').next().unwrap_or_default();
                !spec.secret_env.iter().any(|v| v.name == name)
            });
            env.extend(
                spec.secret_env
                    .iter()
                    .map(|v| format!("{}={}", v.name, v.value)),
            );
        }
        if !spec.secret_files.is_empty() {
            env.push(format!(
                "{}={}",
                secret_files::DIR_VAR,
                secret_files::CONTAINER_DIR
            ));
        }
        let secrets = match spec.secret_files.is_empty() && env_file.is_none() {
            true => None,
            false => {
                let user = self.config.user;
                let written = self.secrets.write(
                    &spec.id,
                    &spec.secret_files,
                    env_file.as_deref(),
                    user.uid,
                    user.gid,
                );
                Some(written.map_err(|e| io_error(&self.secrets.path(&spec.id), e))?)
            }
        };
        let bundle = BundleSpec {
            rootfs: &root.skeleton,
            binds: &root.binds,
            cwd: root.cwd,
            masked: self.masked_paths(spec.layout),
            args: &args,
            env,
            hostname: ids::hostname(&spec.id),
            cgroups_path: self.cgroup_path(&spec.id),
            user: self.config.user,
            memory_limit: limit(spec.limits.memory, self.config.memory_limit),
            pids_limit: limit(spec.limits.pids.map(u64::from), self.config.pids_limit),
            cpu_millis: spec.limits.cpu_millis,
            open_files: molt_provider::open_files_limit(spec.limits.open_files()),
            owner: &self.config.owner,
            instance: &spec.id,
            netns,
            secrets: secrets.as_ref(),
        };
        let config_path = dir.join("config.json");
        let oci = bundle
            .to_spec()
            .map_err(|e| io_error(&config_path, io::Error::other(e)))?;
        let json = serde_json::to_vec_pretty(&oci)
            .map_err(|e| io_error(&config_path, io::Error::other(e)))?;
        fs::write(&config_path, json).map_err(|e| io_error(&config_path, e))
    }

    /// After a failed start: removes whatever the attempt left behind.
    fn undo_start(&self, id: &str, cid: &str, dir: &Path) {
        if let Err(e) = self.runc.delete_force(cid) {
            tracing::warn!(cid, error = %e, "cannot delete the container of a failed start");
        }
        let _ = fs::remove_dir_all(dir);
        self.remove_network(cid);
        self.secrets.remove(id);
    }
}

impl Provider for RuncProvider {
    fn name(&self) -> &'static str {
        "runc"
    }

    fn isolation(&self) -> &'static str {
        "container (runc)"
    }

    fn start(&self, spec: &InstanceSpec) -> Result<ProcessHandle, ProviderError> {
        let Some(program) = spec.command.first() else {
            return Err(ProviderError::EmptyCommand {
                id: spec.id.clone(),
            });
        };
        let image = fs::canonicalize(&spec.cwd).map_err(|e| io_error(&spec.cwd, e))?;
        if !image.is_dir() {
            return Err(io_error(
                &spec.cwd,
                io::Error::other("the image tree is not a directory"),
            ));
        }
        check_program(program, &image, spec.layout)?;
        let cid = self.container_id(&spec.id);
        let dir = self.bundle_dir(&spec.id);
        self.clear_stale(&spec.id, &cid)?;
        let _starting = Starting::new(&self.starting, &cid);
        let net = self.prepare_network(spec, &cid)?;
        let netns = net.as_ref().map(InstanceNet::netns);
        let prepared = self
            .write_bundle(spec, &image, &dir, netns)
            .and_then(|()| open_log(&spec.log_path));
        let log = match prepared {
            Ok(log) => log,
            Err(e) => {
                self.undo_start(&spec.id, &cid, &dir);
                return Err(e);
            }
        };

        // One `runc run --detach` (create + start in one runc process, about half the cost of
        // `runc create` then `runc start`); it writes the pid file once the program runs.
        let runc_log = dir.join("runc.log");
        if let Err(e) = self.runc.run_detached(&dir, &cid, log, &runc_log) {
            self.undo_start(&spec.id, &cid, &dir);
            return Err(e);
        }
        let pid = fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|p| *p > 0);
        // The identity holds even for a program that has already exited: runc recorded its
        // start time, and as the subreaper molt keeps its zombie until `status` reaps it.
        let identity = pid.and_then(|pid| Some((pid, self.init_start_time(&cid, pid)?)));
        let Some((pid, start_time)) = identity else {
            self.undo_start(&spec.id, &cid, &dir);
            return Err(ProviderError::Spawn {
                command: program.clone(),
                source: io::Error::other("runc started the container but left no init pid"),
            });
        };
        let handle = ProcessHandle { pid, start_time };
        tracing::debug!(id = %spec.id, cid, pid = handle.pid, "container started");
        self.containers().insert(handle, cid);
        Ok(handle)
    }

    fn status(&self, id: &str, handle: ProcessHandle) -> InstanceStatus {
        if let Some(ended) = self.reap(handle) {
            return ended;
        }
        match self.runc.state(&self.container_id(id)) {
            Ok(None) => InstanceStatus::Gone,
            // Another container now has the id: ours is gone.
            Ok(Some(state)) if state.is_live() && state.pid != handle.pid => InstanceStatus::Gone,
            Ok(Some(state)) => match procfs::live_start_time(handle.pid) {
                Some(t) if state.is_live() && t == handle.start_time => InstanceStatus::Running,
                // It may have become a zombie since the first look: reap it now. Otherwise
                // (not our child) the status is unknown: runc keeps none for detached
                // containers.
                _ => self.reap(handle).unwrap_or(InstanceStatus::Exited {
                    code: None,
                    signal: None,
                }),
            },
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot ask runc for the state of the instance");
                if procfs::live_start_time(handle.pid) == Some(handle.start_time) {
                    InstanceStatus::Running
                } else {
                    InstanceStatus::Gone
                }
            }
        }
    }

    fn signal(&self, handle: ProcessHandle, sig: StopSignal) -> Result<(), ProviderError> {
        if procfs::live_start_time(handle.pid) != Some(handle.start_time) {
            // Gone, or the pid now belongs to another process.
            return Ok(());
        }
        let (name, signal) = match sig {
            StopSignal::Graceful => ("TERM", Signal::SIGTERM),
            StopSignal::Force => ("KILL", Signal::SIGKILL),
        };
        if let Some(cid) = self.container_of(handle) {
            match self.runc.kill(&cid, name) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(cid, error = %e, "runc kill failed; signalling the pid"),
            }
        }
        let pid = match i32::try_from(handle.pid) {
            Ok(raw) if raw > 1 && handle.pid != std::process::id() => Pid::from_raw(raw),
            _ => return Err(ProviderError::InvalidPid { pid: handle.pid }),
        };
        match kill(pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(ProviderError::Signal {
                pid: handle.pid,
                source,
            }),
        }
    }

    fn adopt(&self, id: &str, handle: ProcessHandle) -> bool {
        let cid = self.container_id(id);
        match self.runc.state(&cid) {
            Ok(Some(state)) if self.is_same(&state, id, handle) => {
                self.containers().insert(handle, cid);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot ask runc about an instance to adopt");
                false
            }
        }
    }

    fn scan(&self) -> Vec<(String, ProcessHandle)> {
        let list = match self.runc.list() {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list runc containers");
                return Vec::new();
            }
        };
        let prefix = ids::owner_prefix(&self.config.owner);
        let mut found = Vec::new();
        for state in list {
            if !state.id.starts_with(&prefix) || !state.is_live() {
                continue;
            }
            if state.annotation(OWNER_ANNOTATION) != Some(self.config.owner.as_str()) {
                continue;
            }
            let Some(instance) = state.annotation(INSTANCE_ANNOTATION) else {
                continue;
            };
            let Some(start_time) = procfs::live_start_time(state.pid) else {
                continue;
            };
            let handle = ProcessHandle {
                pid: state.pid,
                start_time,
            };
            found.push((instance.to_string(), handle));
            self.containers().insert(handle, state.id);
        }
        found.sort_by(|a, b| (&a.0, a.1.pid).cmp(&(&b.0, b.1.pid)));
        found
    }

    fn exit_reason(&self, id: &str, handle: ProcessHandle) -> Option<String> {
        let kills = self.oom_kills(id).filter(|n| *n > 0)?;
        let limit = self
            .cgroup_file(id, "memory", "memory.limit_in_bytes")
            .or_else(|| self.cgroup_file(id, "memory", "memory.max"))
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map(|bytes| format!(" of {} MiB", bytes >> 20))
            .unwrap_or_default();
        let _ = handle;
        Some(format!(
            "out of memory: the kernel's OOM killer ended it at its memory limit{limit} \
             (oom_kill {kills}); raise [limits] memory in molt.toml"
        ))
    }

    fn forget(&self, id: &str) {
        let cid = self.container_id(id);
        match self.runc.state(&cid) {
            Ok(Some(state)) if state.is_live() => {
                // Forgetting a running container would leak it: keep it until it has stopped.
                tracing::warn!(
                    id,
                    cid,
                    pid = state.pid,
                    "not forgetting a running instance"
                );
                return;
            }
            Ok(Some(_)) => {
                if let Err(e) = self.runc.delete_force(&cid) {
                    tracing::warn!(id, cid, error = %e, "cannot delete the container");
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(id, cid, error = %e, "cannot ask runc about an instance to forget");
                return;
            }
        }
        remove_leftover_cgroups(&self.cgroup_path(id), id);
        self.remove_network(&cid);
        self.secrets.remove(id);
        let dir = self.bundle_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(id, dir = %dir.display(), error = %e, "cannot remove the bundle")
            }
        }
        let handles: Vec<ProcessHandle> = self
            .containers()
            .iter()
            .filter(|(_, known)| **known == cid)
            .map(|(h, _)| *h)
            .collect();
        let mut exits = self.exits();
        for handle in &handles {
            exits.remove(handle);
        }
        drop(exits);
        self.containers().retain(|_, known| *known != cid);
    }

    /// Also stops containers of any owner whose data directory was deleted under them
    /// (`abandoned.rs`): no molt could ever stop them otherwise.
    fn sweep(&self) -> Vec<String> {
        let mut removed = abandoned::sweep();
        let live: HashSet<String> = match self.runc.list() {
            Ok(list) => list
                .into_iter()
                .filter(ContainerState::is_live)
                .map(|c| c.id)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list runc containers; sweeping nothing");
                return removed;
            }
        };
        removed.extend(
            self.secrets
                .sweep(|id| live.contains(&self.container_id(id))),
        );
        let names = net::namespaces_with_prefix(&ids::owner_prefix(&self.config.owner));
        for name in names.into_iter().filter(|n| !live.contains(n)) {
            // Held while removing, so a start of the same container waits for it.
            let starting = self.starting();
            if starting.contains(&name) {
                continue;
            }
            // A start may have ended after the list above: ask again (kept when unsure).
            if self.config.state_root.join(&name).exists() {
                match self.runc.state(&name) {
                    Ok(None) => {}
                    Ok(Some(state)) if !state.is_live() => {}
                    _ => continue,
                }
            }
            match self.instance_net(&name).remove() {
                Ok(()) => removed.push(format!("network namespace {name}")),
                Err(e) => tracing::warn!(netns = name, error = %e, "cannot remove"),
            }
            drop(starting);
        }
        removed
    }
}

/// The fields of runc's own `state.json` that name the container's init process.
#[derive(serde::Deserialize)]
struct RuncInitState {
    init_process_pid: u32,
    init_process_start: u64,
}

impl<'a> Starting<'a> {
    fn new(set: &'a Mutex<HashSet<String>>, cid: &str) -> Starting<'a> {
        set.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(cid.to_string());
        Starting {
            set,
            cid: cid.to_string(),
        }
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.cid);
    }
}

/// Refuses a start whose program cannot exist in the container, with a clear error: an
/// absolute path must be in the image (own root) or on the host (host system); a path with a
/// slash is relative to the image tree. A bare name is looked up in `PATH` by runc.
fn check_program(program: &str, image: &Path, layout: RootLayout) -> Result<(), ProviderError> {
    let (candidate, searched) = match (program.strip_prefix('/'), layout) {
        // Resolved the container's way: a symlink in the image points inside the image (an
        // absolute one too), never at the host.
        (Some(_), RootLayout::OwnRoot) => {
            if molt_provider::lookup_in_root(image, program).is_some() {
                return Ok(());
            }
            return Err(ProviderError::CommandNotFound {
                command: program.to_string(),
                searched: format!("the image tree {}", image.display()),
            });
        }
        (Some(_), RootLayout::HostSystem) => (
            PathBuf::from(program),
            "the host's system directories".into(),
        ),
        (None, _) if program.contains('/') => (
            image.join(program),
            format!("the image tree {}", image.display()),
        ),
        (None, _) => return Ok(()),
    };
    if fs::symlink_metadata(&candidate).is_err() {
        return Err(ProviderError::CommandNotFound {
            command: program.to_string(),
            searched,
        });
    }
    Ok(())
}

/// The number after `key` in a `key value` per line file (`memory.oom_control`, `memory.events`).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// An I/O error on `path`.
fn io_error(path: &Path, source: io::Error) -> ProviderError {
    ProviderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the instance log for appending, creating its directory.
fn open_log(path: &Path) -> Result<fs::File, ProviderError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_error(path, e))
}

/// `runc delete` removes the container's cgroups, but on a hybrid hierarchy its `rmdir`
/// of the `unified` one can lose the race with the last process leaving it (EBUSY) and
/// leave the empty directory behind (seen under load). What is left is removed here,
/// retried for up to a second while busy.
fn remove_leftover_cgroups(leaf: &Path, id: &str) {
    let Ok(relative) = leaf.strip_prefix("/") else {
        return;
    };
    let root = Path::new(CGROUP_MOUNT);
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|hierarchy| hierarchy.path().join(relative))
        .collect();
    dirs.push(root.join(relative));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    for dir in dirs {
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(Errno::EBUSY as i32)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    tracing::warn!(id, cgroup = %dir.display(), error = %e, "cannot remove");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counters_parse() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(1));
        assert_eq!(keyed_value("oom_kill_disable 0\n", "oom_kill"), None);
    }
}
