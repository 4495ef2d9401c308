//! Build commands (`run` steps of a bake) in runc containers.
//!
//! The bundle is an instance's (private mount, pid, uts and ipc namespaces, `no_new_privileges`,
//! the seccomp deny list, masked and read-only kernel paths, device cgroup deny-all) with four
//! changes: the root is writable (it is a scratch copy of the image so far, whose changes become
//! a layer); the process runs as the image's user (root by default); root gets Docker's default
//! capability set ([`BUILD_CAPABILITIES`]: what `apt-get`, `dpkg` and `chown` need to install
//! packages as the image's root, without `NET_RAW`, `SYS_ADMIN` or anything else), while another
//! user gets them only in the bounding set, as Docker does; and it gets a private network
//! namespace holding only `lo` unless the step says `network = true`, which shares the host's
//! network (for package mirrors). `no_new_privileges` stays on: apt drops to its `_apt` user
//! with `setresuid` (CAP_SETUID), which it allows; only gaining privileges through a setuid
//! binary (`su`, `sudo`) is refused. The command runs in the foreground (`runc run`) under a
//! deadline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    RootBuilder,
};

use crate::bundle::BundleSpec;
use crate::ContainerUser;

/// Memory limit of a build command.
const BUILD_MEMORY: u64 = 2 << 30;
/// Task limit of a build command.
const BUILD_PIDS: u64 = 4096;
/// Default `PATH` when the image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities of a build command run as root: Docker's default set, without `NET_RAW`.
pub const BUILD_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Mknod,
    Capability::AuditWrite,
    Capability::Setfcap,
];

/// Runs build commands in containers; made by [`BuildRunner::detect`].
#[derive(Debug, Clone)]
pub struct BuildRunner {
    runc: PathBuf,
    /// runc's state directory and the bundles' parent.
    dir: PathBuf,
    /// Longest a command may run.
    timeout: Duration,
}

/// One build command.
#[derive(Debug, Clone)]
pub struct BuildCommand<'a> {
    /// Program and arguments.
    pub argv: &'a [String],
    /// `NAME=value` environment (a default `PATH` is added when missing).
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// Who runs it.
    pub user: ContainerUser,
    /// Whether it shares the host's network (else only a private loopback).
    pub network: bool,
}

impl BuildRunner {
    /// A runner keeping its runc state and bundles under `dir`, if this process can isolate:
    /// it must be root and find `runc`. The error says what is missing.
    pub fn detect(dir: &Path, timeout: Duration) -> Result<BuildRunner, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "run steps need isolation: root and runc (molt serve is not running as root)"
                    .to_string(),
            );
        }
        let runc = PathBuf::from("runc");
        let found = Command::new(&runc)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(
                "run steps need isolation: root and runc (runc is not installed: apt-get \
                 install runc)"
                    .to_string(),
            );
        }
        Ok(BuildRunner {
            runc,
            dir: dir.to_path_buf(),
            timeout,
        })
    }

    /// Runs `command` with `rootfs` as its writable root; Err has the exit status and the
    /// output's tail. The container and its bundle are removed whatever happens.
    pub fn run(&self, rootfs: &Path, command: &BuildCommand<'_>) -> Result<(), String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "molt-build-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let state = self.dir.join("runc-state");
        let bundle = self.dir.join("bundles").join(&id);
        fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        fs::create_dir_all(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
        let result = self.run_in(&state, &bundle, &id, rootfs, command);
        // Whatever happened, leave no container and no bundle behind.
        let _ = Command::new(&self.runc)
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&bundle);
        result
    }

    fn run_in(
        &self,
        state: &Path,
        bundle: &Path,
        id: &str,
        rootfs: &Path,
        command: &BuildCommand<'_>,
    ) -> Result<(), String> {
        let mut env = command.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.to_string());
        }
        let cgroups_path = PathBuf::from(format!("/molt/{id}"));
        let spec = BundleSpec {
            rootfs,
            binds: &[],
            cwd: &command.cwd,
            masked: Vec::new(),
            args: command.argv,
            env,
            hostname: "molt-build".to_string(),
            cgroups_path,
            user: command.user,
            memory_limit: Some(BUILD_MEMORY),
            pids_limit: Some(BUILD_PIDS),
            cpu_millis: None,
            open_files: molt_provider::open_files_limit(molt_provider::DEFAULT_NOFILE),
            owner: "molt-build",
            instance: id,
            netns: None,
            secrets: None,
        };
        let mut spec = spec.to_spec().map_err(|e| e.to_string())?;
        let root = RootBuilder::default()
            .path(rootfs)
            .readonly(false)
            .build()
            .map_err(|e| e.to_string())?;
        spec.set_root(Some(root));
        if let Some(process) = spec.process_mut() {
            process.set_cwd(PathBuf::from(&command.cwd));
            process.set_capabilities(Some(build_capabilities(command.user)?));
        }
        if let Some(linux) = spec.linux_mut() {
            let mut namespaces = linux.namespaces().clone().unwrap_or_default();
            namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
            if !command.network {
                namespaces.push(
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Network)
                        .build()
                        .map_err(|e| e.to_string())?,
                );
            }
            linux.set_namespaces(Some(namespaces));
        }
        let config = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
        fs::write(bundle.join("config.json"), config).map_err(|e| e.to_string())?;

        let log_path = bundle.join("output.log");
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.runc)
            .arg("--root")
            .arg(state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("starting runc: {e}"))?;
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = Command::new(&self.runc)
                        .arg("--root")
                        .arg(state)
                        .args(["kill", id, "KILL"])
                        .status();
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "still running after {} s and was killed; output: {}",
                        self.timeout.as_secs(),
                        tail(&log_path)
                    ));
                }
                Err(e) => return Err(format!("waiting for runc: {e}")),
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!("{status}; output: {}", tail(&log_path)))
        }
    }
}

/// The capability sets of a build command: [`BUILD_CAPABILITIES`] for root; for another
/// user only as the bounding set (it holds none, as after a plain `setuid`).
fn build_capabilities(user: ContainerUser) -> Result<oci_spec::runtime::LinuxCapabilities, String> {
    let granted: Capabilities = BUILD_CAPABILITIES.iter().copied().collect();
    let held = if user.uid == 0 {
        granted.clone()
    } else {
        Capabilities::new()
    };
    LinuxCapabilitiesBuilder::default()
        .bounding(granted)
        .effective(held.clone())
        .permitted(held)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(|e| e.to_string())
}

/// The last 2 KiB of a log, on one line.
fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(2048);
    String::from_utf8_lossy(&text[start..])
        .trim()
        .replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_gets_the_default_set_and_others_only_a_bound() {
        let root =
            serde_json::to_value(build_capabilities(ContainerUser { uid: 0, gid: 0 }).unwrap())
                .unwrap();
        let effective = root["effective"].as_array().unwrap();
        for cap in [
            "CAP_CHOWN",
            "CAP_SETUID",
            "CAP_DAC_OVERRIDE",
            "CAP_SYS_CHROOT",
        ] {
            assert!(effective.contains(&cap.into()), "{cap}: {effective:?}");
        }
        for cap in ["CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"] {
            assert!(!effective.contains(&cap.into()), "{cap}");
        }
        assert_eq!(effective.len(), BUILD_CAPABILITIES.len());
        assert_eq!(root["ambient"], serde_json::json!([]));
        let user = serde_json::to_value(
            build_capabilities(ContainerUser {
                uid: 1000,
                gid: 1000,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(user["effective"], serde_json::json!([]));
        assert_eq!(user["permitted"], serde_json::json!([]));
        assert_eq!(
            user["bounding"].as_array().unwrap().len(),
            BUILD_CAPABILITIES.len()
        );
    }
}
