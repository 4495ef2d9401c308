//! The OCI runtime bundle of one instance: `config.json` built with `oci-spec`'s runtime types.
//!
//! The settings follow `runc spec`'s defaults (masked and read-only paths, `/dev` as a tmpfs
//! with the default devices, every device denied in the device cgroup) and tighten them: no
//! capabilities at all, an unprivileged user, `no_new_privileges`, a read-only root with
//! per-instance tmpfs on `/tmp` and `/run`, the default seccomp profile (`seccomp.rs`). The
//! network is the host's (each instance listens on its own loopback address), or in bridge
//! mode the network namespace molt prepared for the instance (`net/`), joined by path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, Capabilities, LinuxBuilder,
    LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;

use crate::ids::{INSTANCE_ANNOTATION, OWNER_ANNOTATION};
use crate::rootfs::Bind;
use crate::seccomp;
use crate::ContainerUser;
use molt_provider::secret_files::{SecretPaths, CONTAINER_DIR};

/// Size of the `/dev`, `/tmp` and `/run` tmpfs mounts (they count against the memory limit).
const DEV_SIZE: &str = "size=65536k";
const SCRATCH_SIZE: &str = "size=65536k";
/// CFS period for CPU limits, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Everything that goes into one instance's `config.json`.
#[derive(Debug)]
pub(crate) struct BundleSpec<'a> {
    /// Absolute path of the root directory (the skeleton), mounted read-only.
    pub(crate) rootfs: &'a Path,
    /// Read-only binds into the root (the image tree, host system directories).
    pub(crate) binds: &'a [Bind],
    /// Working directory of the program inside the container.
    pub(crate) cwd: &'a str,
    /// Paths masked besides the OCI defaults (secrets of the host, molt's data directory).
    pub(crate) masked: Vec<String>,
    /// Program and arguments, resolved inside the container.
    pub(crate) args: &'a [String],
    /// The complete environment, `NAME=value`.
    pub(crate) env: Vec<String>,
    /// The UTS hostname.
    pub(crate) hostname: String,
    /// Cgroup path relative to every hierarchy's root, e.g. `/molt/<container id>`.
    pub(crate) cgroups_path: PathBuf,
    /// Who the process runs as.
    pub(crate) user: ContainerUser,
    /// Memory limit in bytes.
    pub(crate) memory_limit: Option<u64>,
    /// Largest number of tasks (processes and threads).
    pub(crate) pids_limit: Option<u64>,
    /// CPU time in thousandths of a CPU.
    pub(crate) cpu_millis: Option<u32>,
    /// Open files (RLIMIT_NOFILE, soft and hard).
    pub(crate) open_files: u64,
    /// Owner annotation value.
    pub(crate) owner: &'a str,
    /// Instance annotation value.
    pub(crate) instance: &'a str,
    /// The network namespace to join (bridge mode); the host's network when `None`.
    pub(crate) netns: Option<&'a Path>,
    /// The instance's secrets on a tmpfs: its files, bound read-only at `/run/secrets`, and
    /// its environment file for the init, at [`ENV_FILE`].
    pub(crate) secrets: Option<&'a SecretPaths>,
}

/// Where a container's init finds the secrets it passes on as environment variables.
pub(crate) const ENV_FILE: &str = "/run/molt-secret-env";

impl BundleSpec<'_> {
    /// The OCI runtime spec of the bundle.
    pub(crate) fn to_spec(&self) -> Result<Spec, OciSpecError> {
        let no_caps = Capabilities::new();
        let capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(no_caps.clone())
            .effective(no_caps.clone())
            .inheritable(no_caps.clone())
            .permitted(no_caps.clone())
            .ambient(no_caps)
            .build()?;
        let user = UserBuilder::default()
            .uid(self.user.uid)
            .gid(self.user.gid)
            .build()?;
        let process = ProcessBuilder::default()
            .terminal(false)
            .user(user)
            .args(self.args.to_vec())
            .env(self.env.clone())
            .cwd(self.cwd)
            .capabilities(capabilities)
            .no_new_privileges(true)
            .rlimits(vec![PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(self.open_files)
                .soft(self.open_files)
                .build()?])
            .build()?;
        let root = RootBuilder::default()
            .path(self.rootfs)
            .readonly(true)
            .build()?;

        let namespaces = [
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Ipc,
        ]
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .chain(self.netns.map(|path| {
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()
        }))
        .collect::<Result<Vec<_>, _>>()?;

        let mut resources = LinuxResourcesBuilder::default().devices(vec![
            // Deny every device; runc then allows only its default ones (null, zero, tty, …).
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?,
        ]);
        if let Some(limit) = self.memory_limit {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
        }
        if let Some(millis) = self.cpu_millis {
            let quota = i64::from(millis) * CPU_PERIOD_US as i64 / 1000;
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(CPU_PERIOD_US)
                    .build()?,
            );
        }
        if let Some(limit) = self.pids_limit {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
        }
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .resources(resources.build()?)
            .cgroups_path(self.cgroups_path.clone())
            .masked_paths(
                get_default_maskedpaths()
                    .into_iter()
                    .chain(self.masked.iter().cloned())
                    .collect::<Vec<_>>(),
            )
            .seccomp(seccomp::default_profile()?)
            .readonly_paths(get_default_readonly_paths())
            .build()?;

        let annotations = HashMap::from([
            (OWNER_ANNOTATION.to_string(), self.owner.to_string()),
            (INSTANCE_ANNOTATION.to_string(), self.instance.to_string()),
        ]);
        SpecBuilder::default()
            .version("1.0.2")
            .root(root)
            .mounts(self.mounts()?)
            .process(process)
            .hostname(self.hostname.clone())
            .annotations(annotations)
            .linux(linux)
            .build()
    }

    /// The read-only binds, then `runc spec`'s mounts minus `/sys` (nothing the instances
    /// need), plus `/tmp` and `/run`.
    ///
    /// `/tmp` and `/run` belong to the instance's user: runc gives a tmpfs the mode of the
    /// directory it covers (often 0755 in an image, or a directory runc had to create), so
    /// `mode=1777` alone would not make them writable.
    fn mounts(&self) -> Result<Vec<Mount>, OciSpecError> {
        let owned_by_user = format!("uid={},gid={}", self.user.uid, self.user.gid);
        let table: [(&str, &str, &str, Vec<&str>); 7] = [
            ("/proc", "proc", "proc", vec!["nosuid", "noexec", "nodev"]),
            (
                "/dev",
                "tmpfs",
                "tmpfs",
                vec!["nosuid", "strictatime", "mode=755", DEV_SIZE],
            ),
            (
                "/dev/pts",
                "devpts",
                "devpts",
                vec![
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            ),
            (
                "/dev/shm",
                "tmpfs",
                "shm",
                vec!["nosuid", "noexec", "nodev", "mode=1777", DEV_SIZE],
            ),
            (
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                vec!["nosuid", "noexec", "nodev"],
            ),
            (
                "/tmp",
                "tmpfs",
                "tmpfs",
                vec!["nosuid", "nodev", "mode=1777", &owned_by_user, SCRATCH_SIZE],
            ),
            (
                "/run",
                "tmpfs",
                "tmpfs",
                vec!["nosuid", "nodev", "mode=755", &owned_by_user, SCRATCH_SIZE],
            ),
        ];
        let binds = self.binds.iter().map(|bind| {
            MountBuilder::default()
                .destination(bind.destination.as_str())
                .typ("bind")
                .source(bind.source.as_path())
                .options(["bind", "ro", "nosuid", "nodev"].map(String::from).to_vec())
                .build()
        });
        let own = table
            .into_iter()
            .map(|(destination, typ, source, options)| {
                MountBuilder::default()
                    .destination(destination)
                    .typ(typ)
                    .source(source)
                    .options(options.into_iter().map(String::from).collect::<Vec<_>>())
                    .build()
            });
        // After `/run`: the mount point is made in the instance's own tmpfs, never in the
        // (shared, read-only) image tree.
        let secrets = self.secrets.into_iter().flat_map(|paths| {
            let files = (CONTAINER_DIR, paths.files.as_path());
            let env = paths.env.as_deref().map(|env| (ENV_FILE, env));
            [Some(files), env]
                .into_iter()
                .flatten()
                .map(|(destination, source)| {
                    MountBuilder::default()
                        .destination(destination)
                        .typ("bind")
                        .source(source)
                        .options(
                            ["bind", "ro", "nosuid", "nodev", "noexec"]
                                .map(String::from)
                                .to_vec(),
                        )
                        .build()
                })
        });
        binds.chain(own).chain(secrets).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BundleSpec<'static> {
        static BINDS: std::sync::OnceLock<Vec<Bind>> = std::sync::OnceLock::new();
        let binds = BINDS.get_or_init(|| {
            vec![Bind {
                source: PathBuf::from("/images/abc/rootfs"),
                destination: "/app".to_string(),
            }]
        });
        BundleSpec {
            rootfs: Path::new("/bundles/m-web-1/rootfs"),
            binds,
            cwd: "/app",
            masked: vec!["/etc/shadow".to_string()],
            args: &[],
            env: vec!["A=1".to_string()],
            hostname: "web-1".to_string(),
            cgroups_path: PathBuf::from("/molt/m-web-1"),
            user: ContainerUser::NOBODY,
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
            cpu_millis: Some(250),
            open_files: 4096,
            owner: "m",
            instance: "web-1",
            netns: None,
            secrets: None,
        }
    }

    #[test]
    fn config_is_locked_down() {
        let spec = sample().to_spec().unwrap();
        let json: serde_json::Value = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["root"]["path"], "/bundles/m-web-1/rootfs");
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["cwd"], "/app");
        assert_eq!(json["mounts"][0]["source"], "/images/abc/rootfs");
        assert_eq!(json["mounts"][0]["destination"], "/app");
        assert!(json["mounts"][0]["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 25_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let denied = &json["linux"]["seccomp"]["syscalls"][0];
        assert_eq!(denied["action"], "SCMP_ACT_ERRNO");
        for call in ["mount", "unshare", "ptrace", "bpf", "init_module"] {
            assert!(denied["names"].as_array().unwrap().contains(&call.into()));
        }
        assert_eq!(json["process"]["user"]["uid"], 65534);
        assert_eq!(
            json["process"]["rlimits"],
            serde_json::json!([{ "type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096 }])
        );
        assert_eq!(
            json["process"]["capabilities"]["bounding"],
            serde_json::json!([])
        );
        assert_eq!(
            json["process"]["capabilities"]["ambient"],
            serde_json::json!([])
        );
        assert_eq!(json["hostname"], "web-1");
        assert_eq!(json["linux"]["cgroupsPath"], "/molt/m-web-1");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 100);
        let namespaces: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ns| ns["type"].as_str().unwrap())
            .collect();
        assert_eq!(namespaces, ["mount", "pid", "uts", "ipc"]);
        assert!(json["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/kcore".into()));
        assert!(json["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&"/etc/shadow".into()));
        let destinations: Vec<&str> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for wanted in ["/proc", "/dev", "/tmp", "/run"] {
            assert!(destinations.contains(&wanted), "{destinations:?}");
        }
        assert_eq!(json["annotations"][INSTANCE_ANNOTATION], "web-1");
    }

    #[test]
    fn secret_files_are_bound_read_only_after_run() {
        let mut bundle = sample();
        assert!(!serde_json::to_string(&bundle.to_spec().unwrap())
            .unwrap()
            .contains("/run/secrets"));
        let paths = SecretPaths {
            files: PathBuf::from("/dev/shm/molt-secrets-m/web-1/files"),
            env: Some(PathBuf::from("/dev/shm/molt-secrets-m/web-1/env")),
        };
        bundle.secrets = Some(&paths);
        let json = serde_json::to_value(bundle.to_spec().unwrap()).unwrap();
        let mounts = json["mounts"].as_array().unwrap();
        let at = |dest: &str| {
            mounts
                .iter()
                .position(|m| m["destination"] == dest)
                .unwrap()
        };
        assert!(at("/run/secrets") > at("/run"), "{mounts:?}");
        assert!(at(ENV_FILE) > at("/run"), "{mounts:?}");
        assert_eq!(
            mounts[at(ENV_FILE)]["source"],
            "/dev/shm/molt-secrets-m/web-1/env"
        );
        let secrets = &mounts[at("/run/secrets")];
        assert_eq!(secrets["source"], "/dev/shm/molt-secrets-m/web-1/files");
        assert!(secrets["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
    }

    #[test]
    fn limits_are_optional() {
        let mut bundle = sample();
        bundle.memory_limit = None;
        bundle.pids_limit = None;
        bundle.cpu_millis = None;
        let json = serde_json::to_value(bundle.to_spec().unwrap()).unwrap();
        assert!(json["linux"]["resources"].get("memory").is_none());
        assert!(json["linux"]["resources"].get("pids").is_none());
        assert!(json["linux"]["resources"].get("cpu").is_none());
    }

    #[test]
    fn bridge_mode_joins_the_prepared_network_namespace() {
        let mut bundle = sample();
        bundle.netns = Some(Path::new("/run/netns/m-web-1"));
        let json = serde_json::to_value(bundle.to_spec().unwrap()).unwrap();
        let network = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|ns| ns["type"] == "network")
            .expect("a network namespace");
        assert_eq!(network["path"], "/run/netns/m-web-1");
    }
}
