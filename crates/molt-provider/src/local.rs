//! The local provider: one instance is one child process leading its own process group.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{Gid, Pid, Uid};

use crate::procfs::{self, ProcStat, INSTANCE_VAR, OWNER_VAR};
use crate::secret_files::{self, SecretDirs};
use crate::{InstanceSpec, InstanceStatus, ProcessHandle, Provider, ProviderError, StopSignal};

/// PATH used when neither the spec nor molt's own environment has one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs instances as plain processes on this machine, with no isolation.
///
/// Instances lead their own process group, so `signal` reaches everything they spawned and a
/// signal aimed at molt's group (Ctrl-C, or molt being killed) does not reach them: they keep
/// running across a restart of molt and are found again through `scan` and `adopt`.
///
/// Unlike a container instance (molt-runtime), a process here runs under no init: it is not
/// PID 1 of a PID namespace, so the kernel gives SIGTERM its default action and a program
/// without a handler stops on it; and what its processes orphan is re-parented to the
/// host's init (or a subreaper), which reaps it. `signal` already reaches the whole process
/// group, as an init forwarding to the group would.
#[derive(Debug)]
pub struct LocalProvider {
    owner: String,
    children: Mutex<HashMap<String, Child>>,
    secrets: SecretDirs,
}

impl LocalProvider {
    /// A provider whose processes carry `MOLT_OWNER=<owner>`; use one stable owner per molt data dir.
    pub fn new(owner: impl Into<String>) -> Self {
        let owner = owner.into();
        LocalProvider {
            secrets: SecretDirs::for_owner(&owner),
            owner,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// The owner marker this provider sets and looks for.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn children(&self) -> MutexGuard<'_, HashMap<String, Child>> {
        // A panic while holding the lock leaves the map itself intact.
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The status of a child this provider spawned, if `handle` is one of them.
    fn child_status(&self, id: &str, handle: ProcessHandle) -> Option<InstanceStatus> {
        let mut children = self.children();
        let child = children.get_mut(id)?;
        if child.id() != handle.pid {
            return None;
        }
        // `try_wait` reaps the zombie and keeps the exit status for later calls.
        match child.try_wait() {
            Ok(None) => Some(InstanceStatus::Running),
            Ok(Some(status)) => Some(InstanceStatus::Exited {
                code: status.code(),
                signal: status.signal(),
            }),
            Err(e) => {
                tracing::warn!(id, pid = handle.pid, error = %e, "cannot wait for instance");
                None
            }
        }
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn isolation(&self) -> &'static str {
        "none"
    }

    fn start(&self, spec: &InstanceSpec) -> Result<ProcessHandle, ProviderError> {
        let Some(program) = spec.command.first() else {
            return Err(ProviderError::EmptyCommand {
                id: spec.id.clone(),
            });
        };
        let cwd_meta = fs::metadata(&spec.cwd).map_err(ProviderError::io(&spec.cwd))?;
        if !cwd_meta.is_dir() {
            return Err(ProviderError::Io {
                path: spec.cwd.clone(),
                source: io::Error::other("working directory is not a directory"),
            });
        }
        let resolved = resolve_program(program, &spec.cwd, &spec.env)?;
        let log = open_log(&spec.log_path)?;
        let log_for_stderr = log.try_clone().map_err(ProviderError::io(&spec.log_path))?;
        // Secret files: a directory of the instance's own on a tmpfs, owned by molt's user
        // (the instance runs as it); no mount namespace here, so it is not /run/secrets.
        let secrets_dir = match spec.secret_files.is_empty() {
            true => None,
            false => {
                let (uid, gid) = (Uid::effective().as_raw(), Gid::effective().as_raw());
                let dir = self.secrets.path(&spec.id);
                let written = self
                    .secrets
                    .write(&spec.id, &spec.secret_files, None, uid, gid);
                Some(written.map_err(ProviderError::io(&dir))?.files)
            }
        };

        let mut command = Command::new(&resolved);
        command
            .arg0(program)
            .args(&spec.command[1..])
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .envs(spec.secret_env.iter().map(|v| (&v.name, &v.value)))
            .env(INSTANCE_VAR, &spec.id)
            .env(OWNER_VAR, &self.owner)
            .envs(secrets_dir.iter().map(|dir| (secret_files::DIR_VAR, dir)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            // Own group: `signal` reaches the whole tree, and molt's death does not.
            .process_group(0);
        let open_files = crate::open_files_limit(spec.limits.open_files());
        // SAFETY: setrlimit is a plain system call, safe between fork and exec; nothing is
        // allocated or locked in the closure.
        unsafe {
            command.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, open_files, open_files).map_err(io::Error::from)
            });
        }
        let mut child = command.spawn().map_err(|source| {
            self.secrets.remove(&spec.id);
            ProviderError::Spawn {
                command: program.clone(),
                source,
            }
        })?;
        let pid = child.id();
        // The child cannot be reaped before we wait for it, so its stat file exists.
        let Some(stat) = ProcStat::read(pid) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProviderError::Io {
                path: PathBuf::from(format!("/proc/{pid}/stat")),
                source: io::Error::other("cannot read the start time of the new process"),
            });
        };
        let handle = ProcessHandle {
            pid,
            start_time: stat.start_time,
        };
        tracing::debug!(id = %spec.id, pid, program = %resolved.display(), "instance started");
        let replaced = self.children().insert(spec.id.clone(), child);
        if let Some(mut old) = replaced {
            if let Ok(None) = old.try_wait() {
                tracing::warn!(id = %spec.id, pid = old.id(), "instance id reused while its process still runs");
            }
        }
        Ok(handle)
    }

    fn status(&self, id: &str, handle: ProcessHandle) -> InstanceStatus {
        if let Some(status) = self.child_status(id, handle) {
            return status;
        }
        if procfs::is_alive(handle) {
            InstanceStatus::Running
        } else {
            InstanceStatus::Gone
        }
    }

    fn signal(&self, handle: ProcessHandle, sig: StopSignal) -> Result<(), ProviderError> {
        let pid = checked_pid(handle.pid)?;
        let signal = match sig {
            StopSignal::Graceful => Signal::SIGTERM,
            StopSignal::Force => Signal::SIGKILL,
        };
        let leader = ProcStat::read(handle.pid);
        if leader.is_some_and(|s| s.start_time != handle.start_time) {
            // The pid was reused, so the instance's group (which kept the number reserved) is gone.
            return Ok(());
        }
        // With the leader gone (reaped) the group may live on in its children: its id stays
        // reserved as long as it has members, so signalling it is still safe.
        match killpg(pid, signal) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) if leader.is_some() => match kill(pid, signal) {
                Ok(()) | Err(Errno::ESRCH) => Ok(()),
                Err(source) => Err(ProviderError::Signal {
                    pid: handle.pid,
                    source,
                }),
            },
            Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(ProviderError::Signal {
                pid: handle.pid,
                source,
            }),
        }
    }

    fn adopt(&self, id: &str, handle: ProcessHandle) -> bool {
        if !procfs::is_alive(handle) {
            return false;
        }
        procfs::read_marker(handle.pid).is_some_and(|marker| {
            marker.owner.as_deref() == Some(self.owner.as_str())
                && marker.instance.as_deref() == Some(id)
        })
    }

    fn scan(&self) -> Vec<(String, ProcessHandle)> {
        let mut found = Vec::new();
        for pid in procfs::all_pids() {
            let Some(marker) = procfs::read_marker(pid) else {
                continue;
            };
            if marker.owner.as_deref() != Some(self.owner.as_str()) {
                continue;
            }
            let Some(instance) = marker.instance else {
                continue;
            };
            let Some(stat) = ProcStat::read(pid) else {
                continue;
            };
            if stat.is_dead() || !leads_or_is_orphaned(pid, stat.pgrp) {
                continue;
            }
            let handle = ProcessHandle {
                pid,
                start_time: stat.start_time,
            };
            found.push((instance, handle));
        }
        found.sort_by(|a, b| (&a.0, a.1.pid).cmp(&(&b.0, b.1.pid)));
        found
    }

    fn forget(&self, id: &str) {
        let removed = self.children().remove(id);
        if let Some(mut child) = removed {
            if let Ok(None) = child.try_wait() {
                // Put it back: forgetting a running child would leave its zombie unreaped.
                self.children().insert(id.to_string(), child);
                return;
            }
        }
        self.secrets.remove(id);
    }

    /// The secret files of instances whose processes are gone (ended while molt was down).
    fn sweep(&self) -> Vec<String> {
        let running: HashSet<String> = self.scan().into_iter().map(|(id, _)| id).collect();
        self.secrets.sweep(|id| running.contains(id))
    }
}

/// Whether a marked process should be reported by `scan`: it leads its group, or the leader
/// of its group is gone (the instance's main process died and left children behind).
fn leads_or_is_orphaned(pid: u32, pgrp: i64) -> bool {
    if i64::from(pid) == pgrp {
        return true;
    }
    let Ok(leader) = u32::try_from(pgrp) else {
        return true;
    };
    match ProcStat::read(leader) {
        Some(stat) => stat.is_dead() || stat.pgrp != pgrp,
        None => true,
    }
}

/// Turns a handle's pid into one that is safe to signal: never 0, 1 or molt itself.
fn checked_pid(pid: u32) -> Result<Pid, ProviderError> {
    match i32::try_from(pid) {
        Ok(raw) if raw > 1 && pid != std::process::id() => Ok(Pid::from_raw(raw)),
        _ => Err(ProviderError::InvalidPid { pid }),
    }
}

/// Opens the instance log for appending, creating its directory.
fn open_log(path: &Path) -> Result<fs::File, ProviderError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(ProviderError::io(parent))?;
    }
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(ProviderError::io(path))
}

/// Finds the program to run: a name with a `/` is relative to `cwd`, any other name is looked
/// up in the spec's PATH (else molt's PATH, else a default).
fn resolve_program(
    program: &str,
    cwd: &Path,
    env: &[(String, String)],
) -> Result<PathBuf, ProviderError> {
    if program.is_empty() {
        return Err(ProviderError::CommandNotFound {
            command: String::new(),
            searched: "nowhere: the program name is empty".to_string(),
        });
    }
    if program.contains('/') {
        let path = cwd.join(program);
        return match check_executable(&path) {
            Candidate::Executable => Ok(path),
            Candidate::NotExecutable | Candidate::Directory => {
                Err(ProviderError::NotExecutable { path })
            }
            Candidate::Missing => Err(ProviderError::CommandNotFound {
                command: program.to_string(),
                searched: path.display().to_string(),
            }),
        };
    }
    let search_path: OsString = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsString::from(v))
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    let mut not_executable = None;
    for dir in std::env::split_paths(&search_path) {
        // POSIX: an empty entry means the current directory; relative entries are too.
        let candidate = cwd.join(dir).join(program);
        match check_executable(&candidate) {
            Candidate::Executable => return Ok(candidate),
            Candidate::NotExecutable => {
                not_executable.get_or_insert(candidate);
            }
            Candidate::Missing | Candidate::Directory => {}
        }
    }
    match not_executable {
        Some(path) => Err(ProviderError::NotExecutable { path }),
        None => Err(ProviderError::CommandNotFound {
            command: program.to_string(),
            searched: format!("PATH={}", search_path.to_string_lossy()),
        }),
    }
}

/// What a possible program path turned out to be.
enum Candidate {
    Executable,
    NotExecutable,
    Directory,
    Missing,
}

/// Classifies a possible program path (following symlinks).
fn check_executable(path: &Path) -> Candidate {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
            Candidate::Executable
        }
        Ok(meta) if meta.is_dir() => Candidate::Directory,
        Ok(_) => Candidate::NotExecutable,
        Err(_) => Candidate::Missing,
    }
}
