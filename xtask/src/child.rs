//! Child processes `bench router` starts (the backend, molt's router, nginx, HAProxy, Caddy):
//! each in its own process group with its output in files, and stopped — SIGTERM to the whole
//! group, then SIGKILL — when dropped, so no worker process outlives the benchmark.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use molt_provider::procfs::ProcStat;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::load::Connection;

/// How long a child may take to answer its first request.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long a child may take to exit after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A running child process, leader of its own process group.
pub struct ChildProcess {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ChildProcess {
    /// Starts `command` in a new process group, stdout and stderr going to
    /// `<log_dir>/<name>.out` and `<log_dir>/<name>.err`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &std::path::Path) -> Result<Self> {
        let stdout = log_dir.join(format!("{name}.out"));
        let stderr = log_dir.join(format!("{name}.err"));
        let out =
            File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        })
    }

    /// The child's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `GET path` with `Host: host` on `addr` answers 200.
    pub async fn wait_until_answers(
        &mut self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling a child")? {
                bail!(
                    "{} exited ({status}) before it answered on {addr}; its output ends with:\n{}",
                    self.name,
                    self.output_tail()
                );
            }
            let last = match Connection::open(addr).await {
                Ok(mut connection) => match connection.get(host, path).await {
                    Ok((200, _)) => return Ok(()),
                    Ok((status, body)) => {
                        format!("answered {status}: {}", String::from_utf8_lossy(&body))
                    }
                    Err(e) => format!("{e:#}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer GET {path} on {addr} within {START_LIMIT:?} (last: {last}); \
                     its output ends with:\n{}",
                    self.name,
                    self.output_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last lines the child wrote to stderr, for an error message.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }

    /// Sends `signal` to the child itself.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to {} (pid {pid})", self.name))
    }

    /// Stops the child (SIGTERM to its group) and returns how it exited; one that is still
    /// there after 10 s is left to `Drop`, which kills it.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        self.signal_group(Signal::SIGTERM);
        let deadline = Instant::now() + STOP_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waiting for a child")? {
                break status;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not stop within {STOP_LIMIT:?} of SIGTERM (it will be killed)",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Workers whose leader is gone (should not happen, but nothing may be left behind).
        self.signal_group(Signal::SIGKILL);
        Ok(status)
    }

    /// Sends `signal` to the child's process group; a group already gone is fine.
    fn signal_group(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }

    /// The last lines the child wrote to stderr and stdout.
    fn output_tail(&self) -> String {
        let mut text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        text.push_str(&self.stdout());
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// CPU time (user + system) used so far by the live processes of process group `pgid`, read
/// from `/proc/*/stat`: nginx's workers are in the master's group. Clock ticks are 1/100 s
/// (Linux's USER_HZ), so a run of a few seconds measures to about 1 %.
pub fn group_cpu_time(pgid: u32) -> Duration {
    const TICKS_PER_SECOND: u64 = 100;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let ticks: u64 = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(ProcStat::read)
        .filter(|stat| stat.pgrp == i64::from(pgid))
        .map(|stat| stat.utime + stat.stime)
        .sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_group(Signal::SIGTERM);
            let deadline = Instant::now() + STOP_LIMIT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = self.child.try_wait() {
                if let Ok(pid) = i32::try_from(self.child.id()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = self.child.wait();
            }
        }
        self.signal_group(Signal::SIGKILL);
    }
}
