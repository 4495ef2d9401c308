//! What the Swarm row needs around `molt serve --provider swarm`: the Docker Engine API on its
//! unix socket (one HTTP/1.1 exchange per connection), a `docker-registry` on loopback, and
//! the removal of everything the row made on the swarm — the fleet's service, the
//! environments' services, molt's overlay network and the images the node pulled — however
//! the row ends.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;

use crate::child::ChildProcess;

/// The Docker Engine's socket.
pub(crate) const SOCKET: &str = "/var/run/docker.sock";
/// The Engine API version molt-swarm speaks.
const API_VERSION: &str = "/v1.41";
/// How long removing the network and the images may retry while tasks wind down.
const REMOVE_LIMIT: Duration = Duration::from_secs(60);

/// A client of the Docker Engine API.
#[derive(Clone)]
pub(crate) struct Docker {
    socket: PathBuf,
}

/// A `docker-registry` on a free loopback port, stopped when dropped.
pub(crate) struct Registry {
    pub(crate) addr: SocketAddr,
    _process: ChildProcess,
}

/// What the Swarm row made on the swarm. [`SwarmLeftovers::remove`] removes it; if the row
/// ends before that (an error, a panic, Ctrl-C), dropping it does.
pub(crate) struct SwarmLeftovers {
    docker: Docker,
    pub(crate) network: String,
    pub(crate) router_service: String,
    /// The owner label of molt's services (`molt.owner`), once molt serve has one.
    pub(crate) owner: Option<String>,
    /// Images the node pulled from the benchmark's registry start with this.
    pub(crate) image_prefix: String,
    removed: bool,
}

impl Docker {
    pub(crate) fn new(socket: impl Into<PathBuf>) -> Docker {
        Docker {
            socket: socket.into(),
        }
    }

    /// GET `path`: the JSON answer of a 2xx.
    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        let (status, body) = self.send(Method::GET, path).await?;
        if !status.is_success() {
            bail!(
                "docker GET {path} answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("docker GET {path}: not JSON"))
    }

    /// Whether GET `path` finds something (404: no).
    pub(crate) async fn exists(&self, path: &str) -> Result<bool> {
        let (status, body) = self.send(Method::GET, path).await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => bail!(
                "docker GET {path} answered {s}: {}",
                String::from_utf8_lossy(&body).trim()
            ),
        }
    }

    /// DELETE `path`; something already gone is fine.
    pub(crate) async fn delete(&self, path: &str) -> Result<()> {
        let (status, body) = self.send(Method::DELETE, path).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        bail!(
            "docker DELETE {path} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )
    }

    async fn send(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes)> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake with dockerd")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(format!("{API_VERSION}{path}"))
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .context("building a docker request")?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("docker {path}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

impl Registry {
    /// Starts `docker-registry` storing under `dir`, and waits until it takes connections.
    pub(crate) async fn start(dir: &Path) -> Result<Registry> {
        let addr = free_port("127.0.0.1:0")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        )
        .context("writing the registry's configuration")?;
        let mut command = Command::new("docker-registry");
        command.arg("serve").arg(&config);
        let process = ChildProcess::spawn("docker-registry", command, dir)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {addr} within 20 s: {}",
                    process.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Registry {
            addr,
            _process: process,
        })
    }
}

impl SwarmLeftovers {
    pub(crate) fn new(
        docker: &Docker,
        network: &str,
        router_service: &str,
        image_prefix: &str,
    ) -> Self {
        SwarmLeftovers {
            docker: docker.clone(),
            network: network.to_string(),
            router_service: router_service.to_string(),
            owner: None,
            image_prefix: image_prefix.to_string(),
            removed: false,
        }
    }

    /// Removes the services, then the network and the images once their tasks are gone.
    pub(crate) async fn remove(&mut self) -> Result<()> {
        self.removed = true;
        let docker = &self.docker;
        let mut services = vec![self.router_service.clone()];
        if let Some(owner) = &self.owner {
            let filters = json!({ "label": [format!("molt.owner={owner}")] }).to_string();
            let listed = docker
                .get(&format!("/services?filters={}", escape(&filters)))
                .await?;
            services.extend(
                listed
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["Spec"]["Name"].as_str().map(str::to_string)),
            );
        }
        for service in &services {
            docker.delete(&format!("/services/{service}")).await?;
        }
        let deadline = Instant::now() + REMOVE_LIMIT;
        // The network goes once no task is attached any more.
        loop {
            match docker.delete(&format!("/networks/{}", self.network)).await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("network {} is still there", self.network)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        // The images the node pulled from the benchmark's registry (app and router), once no
        // container uses them.
        loop {
            let left = self.pulled_images().await?;
            let mut failed = Vec::new();
            for id in &left {
                if let Err(e) = docker.delete(&format!("/images/{id}?force=1")).await {
                    failed.push(format!("{e:#}"));
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "images of {} left: {}",
                    self.image_prefix,
                    failed.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Ids of the node's images named after the benchmark's registry.
    async fn pulled_images(&self) -> Result<Vec<String>> {
        let images = self.docker.get("/images/json").await?;
        Ok(images
            .as_array()
            .into_iter()
            .flatten()
            .filter(|image| {
                ["RepoDigests", "RepoTags"].iter().any(|key| {
                    image[*key].as_array().into_iter().flatten().any(|name| {
                        name.as_str()
                            .is_some_and(|n| n.starts_with(self.image_prefix.as_str()))
                    })
                })
            })
            .filter_map(|image| image["Id"].as_str().map(str::to_string))
            .collect())
    }
}

impl Drop for SwarmLeftovers {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        eprintln!("bench fleet: removing what the swarm row left on the swarm");
        let mut leftovers = SwarmLeftovers {
            docker: self.docker.clone(),
            network: self.network.clone(),
            router_service: self.router_service.clone(),
            owner: self.owner.clone(),
            image_prefix: self.image_prefix.clone(),
            removed: false,
        };
        self.removed = true;
        // A runtime of its own on a thread of its own: this may run inside the benchmark's.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow!("cannot start a runtime: {e}"))?;
            runtime.block_on(leftovers.remove())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("bench fleet: could not remove everything: {e:#}"),
            Err(_) => eprintln!("bench fleet: the removal of the swarm's leftovers panicked"),
        }
    }
}

/// A port the kernel says is free on `ip:0` (closed again before it is used).
pub(crate) fn free_port(bind: &str) -> Result<SocketAddr> {
    TcpListener::bind(bind)
        .and_then(|listener| listener.local_addr())
        .with_context(|| format!("finding a free port on {bind}"))
}

/// `value` percent-encoded for a query string (Docker's `filters` are JSON).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte))
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_a_filter() {
        assert_eq!(
            escape(r#"{"label":["molt.owner=ab12"]}"#),
            "%7B%22label%22%3A%5B%22molt.owner%3Dab12%22%5D%7D"
        );
    }
}
