//! Starting, stopping and checking instances.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use molt_provider::{
    InstanceSpec, InstanceStatus, ProcessHandle, RootLayout, SecretVar, StopSignal,
};
use molt_store::{InstanceRecord, InstanceState, ReleaseRecord};

use crate::{ControlError, Controller, InstanceNetwork, Result};

/// How many lines of an instance's log go into an error message.
const LOG_TAIL_LINES: usize = 20;
/// The variables molt sets itself: a secret of the same name does not replace them.
const MOLT_VARS: [&str; 5] = ["HOST", "PORT", "MOLT_APP", "MOLT_RELEASE", "MOLT_ENV"];
/// The port of an instance in a network namespace of its own when `molt.toml` fixes none.
const BRIDGE_PORT: u16 = 8080;

impl Controller {
    /// Starts one new instance of `env` running `release`, recorded before the process starts so
    /// that a crash in between leaves a record to clean up rather than an unknown process.
    pub(crate) async fn start_instance(
        &self,
        env: &str,
        release: &ReleaseRecord,
    ) -> Result<InstanceRecord> {
        let inst = self.create_instance(env, release.config.port).await?;
        let port = inst.port;
        let images = self.inner.images.clone();
        let digest = release.image.clone();
        let rootfs = tokio::task::spawn_blocking(move || images.rootfs(&digest)).await??;
        self.verify_before_start(&release.app, &release.image)
            .await?;
        let mut vars: BTreeMap<String, String> = release
            .config
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        // Secrets: opened only here, handed to the provider apart from the plain variables (so
        // that a container's bundle never holds them, and `$NAME` in the command never
        // expands to one: argv is visible to every user of the host).
        let secrets = match self.open_secrets(release).await {
            Ok(secrets) => secrets,
            Err(e) => {
                self.mark_stopped(&inst.id, &e.to_string()).await?;
                return Err(e);
            }
        };
        vars.insert("HOST".into(), inst.host.clone());
        vars.insert("PORT".into(), port.to_string());
        vars.insert("MOLT_APP".into(), release.app.clone());
        vars.insert("MOLT_RELEASE".into(), format!("v{}", release.number));
        vars.insert("MOLT_ENV".into(), env.to_string());
        vars.entry("PATH".into()).or_insert_with(|| {
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
        });
        for (name, _) in &secrets.vars {
            if !MOLT_VARS.contains(&name.as_str()) {
                vars.remove(name);
            }
        }
        let expanded = match secret_in_command(&release.config.command, &secrets.vars) {
            Some(e) => Err(e),
            None => release.config.expand_command(&vars),
        };
        let command = match expanded {
            Ok(c) => c,
            Err(e) => {
                self.mark_stopped(&inst.id, &e.to_string()).await?;
                return Err(e.into());
            }
        };
        let layout = root_layout(&command, &rootfs);
        let spec = InstanceSpec {
            id: inst.id.clone(),
            command,
            cwd: rootfs,
            env: vars.into_iter().collect(),
            log_path: self.log_path(&inst.id),
            limits: release.config.limits,
            layout,
            address: inst.host.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            secret_files: secrets.files,
            secret_env: secrets
                .vars
                .into_iter()
                .filter(|(name, _)| !MOLT_VARS.contains(&name.as_str()))
                .map(|(name, value)| SecretVar { name, value })
                .collect(),
        };
        let provider = self.inner.provider.clone();
        let started = tokio::task::spawn_blocking(move || provider.start(&spec)).await?;
        match started {
            Ok(handle) => {
                let id = inst.id.clone();
                self.db(move |s| s.set_instance_process(&id, handle.pid, handle.start_time))
                    .await?;
                let id = inst.id.clone();
                self.db(move |s| s.instance(&id)).await
            }
            Err(e) => {
                self.mark_stopped(&inst.id, &e.to_string()).await?;
                Err(e.into())
            }
        }
    }

    /// Records a new instance of `env` with the address it will listen on. In bridge mode the
    /// address is the first one of the subnet no live instance holds, chosen under the store's
    /// lock so two starts never get the same one; a stopped instance's address is free again.
    async fn create_instance(&self, env: &str, fixed_port: Option<u16>) -> Result<InstanceRecord> {
        let env_id = env.to_string();
        match self.inner.config.network {
            InstanceNetwork::Host => {
                self.db(move |s| {
                    let taken: HashSet<(String, u16)> = s
                        .instances(None, false)?
                        .into_iter()
                        .map(|i| (i.host, i.port))
                        .collect();
                    match free_address(fixed_port, &taken) {
                        Ok((host, port)) => {
                            s.create_instance(&env_id, &host.to_string(), port).map(Ok)
                        }
                        Err(e) => Ok(Err(e)),
                    }
                })
                .await?
            }
            InstanceNetwork::Bridge(subnet) => {
                let port = fixed_port.unwrap_or(BRIDGE_PORT);
                let created = self
                    .db(move |s| {
                        let used: HashSet<String> = s
                            .instances(None, false)?
                            .into_iter()
                            .map(|i| i.host)
                            .collect();
                        let free = subnet.first_free(|ip| used.contains(&ip.to_string()));
                        free.map(|ip| s.create_instance(&env_id, &ip.to_string(), port))
                            .transpose()
                    })
                    .await?;
                created.ok_or_else(|| {
                    ControlError::Conflict(format!(
                        "every address of the bridge subnet {subnet} is taken by a live \
                         instance; give molt serve a larger --bridge-subnet"
                    ))
                })
            }
        }
    }

    pub(crate) async fn mark_stopped(&self, id: &str, why: &str) -> Result<()> {
        let (id, why) = (id.to_string(), why.to_string());
        let provider = self.inner.provider.clone();
        self.db(move |s| {
            s.set_instance_state(&id, InstanceState::Stopped, Some(&why))?;
            provider.forget(&id);
            Ok(())
        })
        .await
    }

    /// How an instance ended, with the provider's reason when it knows one (e.g. out of memory).
    pub(crate) fn describe_end(&self, inst: &InstanceRecord, status: &InstanceStatus) -> String {
        let exit = describe_exit(status);
        match handle_of(inst).and_then(|h| self.inner.provider.exit_reason(&inst.id, h)) {
            Some(reason) => format!("{exit}: {reason}"),
            None => exit,
        }
    }

    /// The process status of an instance record.
    pub(crate) fn process_status(&self, inst: &InstanceRecord) -> InstanceStatus {
        match handle_of(inst) {
            Some(h) => self.inner.provider.status(&inst.id, h),
            None => InstanceStatus::Gone,
        }
    }

    /// Stops an instance: SIGTERM, then SIGKILL after the grace period; records it as stopped.
    pub(crate) async fn stop_instance(&self, inst: &InstanceRecord, why: &str) -> Result<()> {
        if let Some(handle) = handle_of(inst) {
            let id = inst.id.clone();
            self.db(move |s| s.set_instance_state(&id, InstanceState::Stopping, None))
                .await?;
            self.terminate(&inst.id, handle).await;
        }
        self.mark_stopped(&inst.id, why).await
    }

    /// Ends a process: SIGTERM, wait up to the grace period, then SIGKILL and wait for it.
    pub(crate) async fn terminate(&self, id: &str, handle: ProcessHandle) {
        let provider = &self.inner.provider;
        let alive = |p: &dyn molt_provider::Provider| {
            matches!(p.status(id, handle), InstanceStatus::Running)
        };
        if !alive(provider.as_ref()) {
            return;
        }
        let _ = provider.signal(handle, StopSignal::Graceful);
        let deadline = Instant::now() + self.inner.config.stop_grace;
        while Instant::now() < deadline {
            if !alive(provider.as_ref()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(instance = id, "did not stop after SIGTERM; sending SIGKILL");
        let _ = provider.signal(handle, StopSignal::Force);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(provider.as_ref()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A failure message with the tail of the instance's log appended.
    /// Whether `inst` ended because its port was taken between molt's choice and its own
    /// `listen`: a port molt picked (not one `molt.toml` fixes) on the host's network, and
    /// the end of its log names the error (`EADDRINUSE`, "Address already in use").
    pub(crate) async fn lost_its_port(
        &self,
        inst: &InstanceRecord,
        release: &ReleaseRecord,
    ) -> bool {
        if release.config.port.is_some() || self.inner.config.network != InstanceNetwork::Host {
            return false;
        }
        let tail = self.log_tail(&inst.id, LOG_TAIL_LINES).await;
        names_a_taken_port(&tail)
    }

    pub(crate) async fn with_log_tail(&self, instance: &str, message: String) -> String {
        let tail = self.log_tail(instance, LOG_TAIL_LINES).await;
        if tail.trim().is_empty() {
            format!("{message} (instance {instance} logged nothing)")
        } else {
            format!("{message}\n--- last lines of {instance}'s log ---\n{tail}")
        }
    }
}

/// Whether a log names the error of a `bind`/`listen` on a port already taken (as the C
/// library, Python, Go, Node and Rust word it).
fn names_a_taken_port(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("eaddrinuse")
}

/// The address the router and health checks use for an instance.
pub(crate) fn instance_addr(inst: &InstanceRecord) -> SocketAddr {
    let ip = inst.host.parse().unwrap_or(Ipv4Addr::LOCALHOST);
    SocketAddr::from((ip, inst.port))
}

/// The process identity of an instance, once it has one.
pub(crate) fn handle_of(inst: &InstanceRecord) -> Option<ProcessHandle> {
    Some(ProcessHandle {
        pid: inst.pid?,
        start_time: inst.start_time?,
    })
}

/// How an isolating provider lays out the root of an instance of image tree `image`: an
/// image whose program is an absolute path inside the image carries its own system (e.g. a
/// static binary, or a baked base) and is the whole root; any other image is an app folder
/// and runs on the host's read-only system directories, mounted at `/app`.
pub(crate) fn root_layout(command: &[String], image: &std::path::Path) -> RootLayout {
    // Looked up the container's way: an absolute symlink in the image (`bin -> /usr/bin`)
    // points inside the image, not at the host.
    let own = command
        .first()
        .filter(|program| program.starts_with('/'))
        .is_some_and(|program| molt_provider::lookup_in_root(image, program).is_some());
    if own {
        RootLayout::OwnRoot
    } else {
        RootLayout::HostSystem
    }
}

/// Describes how a process ended.
pub(crate) fn describe_exit(status: &InstanceStatus) -> String {
    match status {
        InstanceStatus::Running => "running".into(),
        InstanceStatus::Exited {
            code: Some(c),
            signal: _,
        } => format!("exited with code {c}"),
        InstanceStatus::Exited {
            code: None,
            signal: Some(s),
        } => format!("killed by signal {s}"),
        InstanceStatus::Exited { .. } => "exited".into(),
        InstanceStatus::Gone => "process is gone".into(),
    }
}

/// Refuses a command that names a secret (`$NAME` or `${NAME}`): a command line is visible to
/// every user of the host, so a secret is never expanded into one.
fn secret_in_command(
    command: &[String],
    secrets: &[(String, String)],
) -> Option<molt_core::InputError> {
    let names = |arg: &str| -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = arg;
        while let Some(i) = rest.find('$') {
            let after = &rest[i + 1..];
            let name = match after.strip_prefix('{') {
                Some(inner) => inner.split('}').next().unwrap_or_default(),
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    &after[..end]
                }
            };
            found.push(name.to_owned());
            rest = after.strip_prefix('$').unwrap_or(after);
        }
        found
    };
    let used: Vec<String> = command.iter().flat_map(|arg| names(arg)).collect();
    let secret = secrets
        .iter()
        .map(|(name, _)| name)
        .find(|name| used.contains(name) && !MOLT_VARS.contains(&name.as_str()))?;
    Some(molt_core::InputError::Invalid(format!(
        "the command uses ${secret}, a secret: a secret never goes on a command line (every \
         user of the host can read it there); let the program read it from its environment"
    )))
}

/// Picks the address of a new instance; `taken` holds the addresses of live instances, some of
/// which may not listen yet. Without a fixed port: a free port on 127.0.0.1 outside the kernel's
/// ephemeral range, so that no outgoing connection (the router's own, or any other program's)
/// can be handed the port between this check and the instance's `listen`. With one: a loopback
/// address of its own (127.64.0.0/10 is all routed to `lo` on Linux) where that port is free, so
/// blue and green instances of the same app never collide.
fn free_address(
    fixed_port: Option<u16>,
    taken: &HashSet<(String, u16)>,
) -> Result<(Ipv4Addr, u16)> {
    let is_free = |ip: Ipv4Addr, port: u16| {
        !taken.contains(&(ip.to_string(), port)) && std::net::TcpListener::bind((ip, port)).is_ok()
    };
    let Some(port) = fixed_port else {
        let ports = instance_ports();
        for _ in 0..256 {
            let port = ports.start + (rand::random::<u32>() % ports.len() as u32) as u16;
            if is_free(Ipv4Addr::LOCALHOST, port) {
                return Ok((Ipv4Addr::LOCALHOST, port));
            }
        }
        return Err(ControlError::Conflict(format!(
            "no free port on 127.0.0.1 between {} and {} after 256 tries",
            ports.start,
            ports.end - 1
        )));
    };
    for _ in 0..64 {
        let r: u32 = rand::random();
        let ip = Ipv4Addr::new(
            127,
            64 + (r >> 24) as u8 % 64,
            (r >> 16) as u8,
            1 + (r as u8 % 254),
        );
        if is_free(ip, port) {
            return Ok((ip, port));
        }
    }
    Err(ControlError::Conflict(format!(
        "port {port} is taken on every loopback address tried; pick another `port` in \
         molt.toml or leave it out"
    )))
}

/// The ports instances on the host network listen on: the widest stretch of 10000–65535 the
/// kernel never hands out as an ephemeral port (`net.ipv4.ip_local_port_range`, 32768–60999 by
/// default, which leaves 10000–32767).
fn instance_ports() -> std::ops::Range<u16> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    ports_outside(ephemeral)
}

fn ports_outside((low, high): (u16, u16)) -> std::ops::Range<u16> {
    const FLOOR: u16 = 10000;
    let below = FLOOR..low.max(FLOOR);
    let above = high.saturating_add(1).max(FLOOR)..u16::MAX;
    let widest = if below.len() >= above.len() {
        below
    } else {
        above
    };
    if widest.len() >= 1024 {
        widest
    } else {
        // The ephemeral range covers (nearly) everything: share it rather than fail.
        FLOOR..u16::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_recognised_in_a_log() {
        for log in [
            "OSError: [Errno 98] Address already in use",
            "listen tcp 127.0.0.1:20001: bind: address already in use",
            "Error: listen EADDRINUSE: address already in use 127.0.0.1:20001",
        ] {
            assert!(names_a_taken_port(log), "{log}");
        }
        assert!(!names_a_taken_port("ImportError: No module named flask"));
    }

    #[test]
    fn a_secret_never_goes_on_a_command_line() {
        let secrets = [("DB_PASSWORD".to_string(), "hunter2".to_string())];
        let command = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        for bad in [
            &["app", "--pw=$DB_PASSWORD"][..],
            &["app", "${DB_PASSWORD}x"],
        ] {
            let error = secret_in_command(&command(bad), &secrets)
                .unwrap()
                .to_string();
            assert!(
                error.contains("$DB_PASSWORD") && !error.contains("hunter2"),
                "{error}"
            );
        }
        for fine in [
            &["app", "$PORT", "$$DB_PASSWORD"][..],
            &["app", "$DB_PASSWORD_FILE"],
            &["app", "${DB}"],
        ] {
            assert!(
                secret_in_command(&command(fine), &secrets).is_none(),
                "{fine:?}"
            );
        }
    }

    #[test]
    fn instance_ports_stay_out_of_the_ephemeral_range() {
        assert_eq!(ports_outside((32768, 60999)), 10000..32768);
        assert_eq!(ports_outside((1024, 40000)), 40001..u16::MAX);
        assert_eq!(ports_outside((1024, 65535)), 10000..u16::MAX);
        let ports = instance_ports();
        let taken = HashSet::new();
        for _ in 0..20 {
            let (ip, port) = free_address(None, &taken).unwrap();
            assert_eq!(ip, Ipv4Addr::LOCALHOST);
            assert!(ports.contains(&port), "{port} not in {ports:?}");
        }
    }

    #[test]
    fn a_live_instances_port_is_never_handed_out_again() {
        let ports = instance_ports();
        // Every port but one is held by a live instance (not necessarily listening yet).
        let free = ports.start + 7;
        let taken: HashSet<(String, u16)> = ports
            .clone()
            .filter(|p| *p != free)
            .map(|p| ("127.0.0.1".to_string(), p))
            .collect();
        match free_address(None, &taken) {
            Ok((_, port)) => assert_eq!(port, free),
            Err(e) => assert!(e.to_string().contains("no free port"), "{e}"),
        }
    }
}
