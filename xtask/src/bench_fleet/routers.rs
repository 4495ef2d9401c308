//! `molt router` processes following the benchmark's `molt serve`, each in its own process
//! group with its log and saved table in a temp dir, stopped when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use molt_cli::Client;
use tempfile::TempDir;

use crate::child::ChildProcess;
use crate::serve::Serve;

/// How long a router may take to say where it serves, and the fleet to get in step.
const START_LIMIT: Duration = Duration::from_secs(20);
/// What a router prints on stderr once it serves (`molt router N: serving http://ADDR …`).
const SERVING: &str = "serving http://";
/// The debug line a router logs for each table it applied and saved, and its duration field.
const APPLIED: &str = "table applied";
const TOOK_US: &str = "took_us=";

/// The routers of the benchmark.
pub(crate) struct Fleet {
    binary: PathBuf,
    control: String,
    token_file: PathBuf,
    routers: Vec<FleetRouter>,
    /// Declared last: removed only once every router has stopped.
    dir: TempDir,
}

/// One `molt router` process.
pub(crate) struct FleetRouter {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) process: ChildProcess,
}

/// A router a probe or a client sends requests to.
#[derive(Clone)]
pub(crate) struct Watched {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
}

/// Where each router's log stood, to read only what a phase added.
pub(crate) struct LogMarks(Vec<(String, usize)>);

impl Fleet {
    /// A fleet of no router yet, following `serve` with its router token.
    pub(crate) fn new(binary: &Path, serve: &Serve) -> Result<Fleet> {
        let dir = tempfile::Builder::new()
            .prefix("molt-bench-fleet-")
            .tempdir()
            .context("creating a temp dir for the routers")?;
        Ok(Fleet {
            binary: binary.to_path_buf(),
            control: serve.client.base().to_string(),
            token_file: serve.scratch_dir().join("data").join("router.token"),
            routers: Vec::new(),
            dir,
        })
    }

    /// Starts `molt router --name name --threads threads` on 127.0.0.1:0 and waits until it
    /// says where it serves.
    pub(crate) async fn start(&mut self, name: &str, threads: usize) -> Result<&FleetRouter> {
        let mut command = Command::new(&self.binary);
        command
            .args(["router", "--control", &self.control])
            .arg("--token-file")
            .arg(&self.token_file)
            .args(["--name", name, "--listen", "127.0.0.1:0"])
            .args(["--threads", &threads.to_string()])
            .arg("--state-dir")
            .arg(self.dir.path().join(name))
            // `table applied` with its duration is a debug line of molt-fleet's follower.
            .env("MOLT_LOG", "info,molt_fleet=debug")
            .env_remove("MOLT_ROUTER_TOKEN");
        let process = ChildProcess::spawn(name, command, self.dir.path())?;
        let deadline = Instant::now() + START_LIMIT;
        let addr = loop {
            if let Some(addr) = serving_addr(&process.stderr()) {
                break addr;
            }
            if Instant::now() > deadline {
                bail!(
                    "molt router {name} did not say where it serves within {START_LIMIT:?}: {}",
                    process.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        super::progress(&format!(
            "molt router {name} ({threads} thread(s)) serves on {addr}"
        ));
        self.routers.push(FleetRouter {
            name: name.to_string(),
            addr,
            process,
        });
        Ok(self.routers.last().expect("just pushed"))
    }

    /// How many routers have been started.
    pub(crate) fn started(&self) -> usize {
        self.routers.len()
    }

    /// The routers named `names`, in that order.
    pub(crate) fn watched(&self, names: &[&str]) -> Result<Vec<Watched>> {
        names
            .iter()
            .map(|name| {
                self.routers
                    .iter()
                    .find(|r| r.name == *name)
                    .map(|r| Watched::new(&r.name, r.addr))
                    .ok_or_else(|| anyhow!("no router named {name} was started"))
            })
            .collect()
    }

    /// The router named `name`.
    pub(crate) fn router(&self, name: &str) -> Result<&FleetRouter> {
        self.routers
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| anyhow!("no router named {name} was started"))
    }

    /// Waits until `GET /v1/cluster` shows every started router connected, not fenced and
    /// at the current version.
    pub(crate) async fn wait_in_step(&self, client: &Client) -> Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let cluster = client.get("/v1/cluster").await?;
            let listed = cluster["routers"]["routers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let in_step = self.routers.iter().all(|router| {
                listed.iter().any(|r| {
                    r["name"] == router.name.as_str()
                        && r["connected"] == true
                        && r["fenced"] == false
                        && r["lag"] == 0
                })
            });
            if in_step {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the routers are not all in step after {START_LIMIT:?}: {cluster}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where each router's log stands now.
    pub(crate) fn log_marks(&self) -> LogMarks {
        LogMarks(
            self.routers
                .iter()
                .map(|r| (r.name.clone(), r.process.stderr().len()))
                .collect(),
        )
    }

    /// How long each table took the routers to apply and save (their `table applied … took_us`
    /// lines) since `marks`, in milliseconds, all routers together.
    pub(crate) fn apply_ms_since(&self, marks: &LogMarks) -> Vec<f64> {
        let mut samples = Vec::new();
        for router in &self.routers {
            let text = router.process.stderr();
            let from = marks
                .0
                .iter()
                .find(|(name, _)| *name == router.name)
                .map_or(0, |(_, at)| *at);
            let added = text.get(from..).unwrap_or_default();
            samples.extend(added.lines().filter_map(applied_us).map(|us| us / 1000.0));
        }
        samples
    }

    /// Stops every router (SIGTERM to its group) and checks each exited cleanly.
    pub(crate) async fn stop(mut self) -> Result<()> {
        for router in &mut self.routers {
            let status = router.process.stop().await?;
            if !status.success() {
                bail!(
                    "molt router {} exited with {status} on SIGTERM: {}",
                    router.name,
                    router.process.stderr_tail()
                );
            }
        }
        Ok(())
    }
}

impl Watched {
    pub(crate) fn new(name: &str, addr: SocketAddr) -> Watched {
        Watched {
            name: name.to_string(),
            addr,
        }
    }
}

/// The address in a router's `serving http://ADDR` line, once it is there.
fn serving_addr(stderr: &str) -> Option<SocketAddr> {
    stderr
        .lines()
        .find_map(|line| line.split(SERVING).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.trim_end_matches(',').parse().ok())
}

/// The `took_us` of a `table applied` log line.
fn applied_us(line: &str) -> Option<f64> {
    if !line.contains(APPLIED) {
        return None;
    }
    let value = line.split(TOOK_US).nth(1)?;
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_serving_address_and_apply_times() {
        let log = "INFO molt: something\n\
                   molt router r1: serving http://127.0.0.1:40123 (table version 0), following http://127.0.0.1:7070\n";
        assert_eq!(
            serving_addr(log),
            Some("127.0.0.1:40123".parse().expect("addr"))
        );
        assert_eq!(serving_addr("INFO starting\n"), None);
        let line =
            "2026-12-05T20:00:00Z DEBUG molt_fleet::follower: table applied version=7 took_us=1834";
        assert_eq!(applied_us(line), Some(1834.0));
        assert_eq!(
            applied_us("DEBUG molt_fleet: took_us=5 something else"),
            None
        );
    }
}
