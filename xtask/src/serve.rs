//! `molt serve` as a child process with its own temp data dir, and the guard that makes sure
//! neither it nor any instance it started outlives the benchmark, whatever happens.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use molt_cli::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

/// How long `molt serve` may take to write `serve.json`.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long `molt serve` may take to stop (drain, stop instances) after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A running `molt serve` child and how to reach it.
pub struct Serve {
    /// An API client holding the admin token.
    pub client: Client,
    /// The router's address.
    pub router: SocketAddr,
    /// The router's TLS listener, when started with `--tls-listen`.
    pub router_tls: Option<SocketAddr>,
    process: Guarded,
}

/// The child process and its temp dir. Dropping it stops the server (SIGTERM, then SIGKILL)
/// and kills any instance process still carrying this data dir's owner marker.
struct Guarded {
    child: Child,
    /// `MOLT_OWNER` of the instances, once the server has written `owner.id`.
    owner: Option<String>,
    log: PathBuf,
    /// Declared last: removed only after `Drop` has stopped every process using it.
    root: TempDir,
}

impl Serve {
    /// Starts `binary serve` on 127.0.0.1:0 (API and router) with a fresh data dir and waits
    /// until it has written `serve.json`.
    pub async fn start(binary: &Path) -> Result<Serve> {
        // Plain processes, as in every earlier run, so figures stay comparable;
        // `bench sandbox` measures containers.
        Serve::start_with(binary, &["--isolation", "none"]).await
    }

    /// Like [`Serve::start`], with `provider_args` (the isolation, or another provider) in
    /// place of `--isolation none`.
    pub async fn start_with(binary: &Path, provider_args: &[&str]) -> Result<Serve> {
        let root = tempfile::Builder::new()
            .prefix("molt-bench-")
            .tempdir()
            .context("creating a temp dir for molt serve")?;
        let data = root.path().join("data");
        let log = root.path().join("serve.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // Its own process group (instances get theirs), so the group's CPU time is the
        // server's alone.
        let child = Command::new(binary)
            .process_group(0)
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--api-listen", "127.0.0.1:0"])
            .args(["--router", "127.0.0.1:0", "--stop-instances-on-exit"])
            .args(provider_args)
            .env("MOLT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log file")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut process = Guarded {
            child,
            owner: None,
            log,
            root,
        };
        let endpoints = process.wait_for_endpoints(&data).await?;
        let address = |key: &str| -> Result<SocketAddr> {
            endpoints[key]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| anyhow!("serve.json has no valid \"{key}\" address: {endpoints}"))
        };
        let (api, router) = (address("api")?, address("router")?);
        let router_tls = match endpoints.get("router_tls") {
            None | Some(Value::Null) => None,
            Some(_) => Some(address("router_tls")?),
        };
        let token = read_trimmed(&data.join("admin.token"))?;
        let owner = read_trimmed(&data.join("owner.id"))?;
        process.owner = Some(owner.get(..16).unwrap_or(&owner).to_string());
        Ok(Serve {
            client: Client::new(&format!("http://{api}"), &token),
            router,
            router_tls,
            process,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Its temp dir (the data dir is `data/` inside), for app folders and the like.
    pub fn scratch_dir(&self) -> &Path {
        self.process.root.path()
    }

    /// Resident set size of the server process (VmRSS), in MiB.
    pub fn rss_mib(&self) -> Result<f64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS line in {path}"))?;
        Ok(kib / 1024.0)
    }

    /// Stops the server the way an operator would (SIGTERM) and checks that it exited cleanly
    /// and took its instances with it; returns the time from SIGTERM to its exit.
    pub async fn stop(self) -> Result<Duration> {
        self.stop_within(STOP_LIMIT).await
    }

    /// [`Serve::stop`], waiting up to `limit` for the server to exit.
    pub async fn stop_within(mut self, limit: Duration) -> Result<Duration> {
        let process = &mut self.process;
        process.signal(Signal::SIGTERM)?;
        let signalled = Instant::now();
        let deadline = signalled + limit;
        let status: ExitStatus = loop {
            if let Some(status) = process.child.try_wait().context("waiting for molt serve")? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("molt serve did not stop within {limit:?} of SIGTERM (it will be killed)");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let took = signalled.elapsed();
        if !status.success() {
            bail!(
                "molt serve exited with {status} on SIGTERM; its log ends with:\n{}",
                process.log_tail()
            );
        }
        let left = process.kill_instances();
        if left > 0 {
            bail!("molt serve exited but left {left} instance process(es) running (killed them)");
        }
        Ok(took)
    }
}

impl Guarded {
    /// Polls for `serve.json` written by this very process.
    async fn wait_for_endpoints(&mut self, data: &Path) -> Result<Value> {
        let path = data.join("serve.json");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for molt serve")? {
                bail!(
                    "molt serve exited ({status}) before it was up; its log ends with:\n{}",
                    self.log_tail()
                );
            }
            // Written atomically, but it may be a previous run's if the pid does not match.
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    if v["pid"].as_u64() == Some(u64::from(self.child.id())) {
                        return Ok(v);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "molt serve did not write {} within {START_LIMIT:?}; its log ends with:\n{}",
                    path.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal} to molt serve"))
    }

    /// The last lines of the server's stderr.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILLs every live process carrying this data dir's owner marker; returns how many.
    fn kill_instances(&self) -> usize {
        let Some(owner) = &self.owner else {
            return 0;
        };
        let pids = processes_with_owner(owner);
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        pids.len()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Graceful first: with --stop-instances-on-exit, SIGTERM also stops the instances.
            let _ = self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        self.kill_instances();
    }
}

fn read_trimmed(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// Live (non-zombie) processes whose environment holds `MOLT_OWNER=<owner>`.
fn processes_with_owner(owner: &str) -> Vec<i32> {
    let marker = format!("MOLT_OWNER={owner}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            continue;
        }
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
        });
        if !zombie {
            pids.push(pid);
        }
    }
    pids
}
