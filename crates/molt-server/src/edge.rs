//! `molt router`: one router of the fleet as a process of its own, on any machine.
//!
//! It listens at once but accepts connections only when a table is in force (the one it saved
//! last time, or the control plane's first snapshot), follows the control plane's stream,
//! and keeps serving the last table whenever the control plane is away.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use molt_fleet::{ControlClient, Follower, FollowerConfig};
use molt_router::tls::CertDir;
use molt_router::{Router, RouterConfig, ServerThreads};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How `molt router` runs.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The control plane's API, `http://127.0.0.1:7070` or `https://host:7070`.
    pub control: String,
    /// The router token (`<data dir>/router.token` of the control plane).
    pub token: String,
    /// PEM certificate(s) to trust for an https control plane: a file, or the PEM text itself.
    pub control_ca: Option<String>,
    /// This router's name in the fleet.
    pub name: String,
    /// Where clients connect (plain HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Threads serving `listen` (each with its own event loop and socket).
    pub threads: usize,
    /// Where TLS clients connect, with certificates from `tls_cert_dir`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificates by hostname (as `molt serve --tls-cert-dir`).
    pub tls_cert_dir: Option<PathBuf>,
    /// Where the last applied table is kept.
    pub state_dir: PathBuf,
}

/// A running `molt router`.
pub struct Edge {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where TLS clients connect.
    pub tls_addr: Option<SocketAddr>,
    follower: Arc<Follower>,
    stop: CancellationToken,
    threads: ServerThreads,
    background: Vec<tokio::task::JoinHandle<()>>,
    tls_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Edge {
    /// Starts the router: listening at once, serving once a table is in force.
    pub async fn start(config: EdgeConfig) -> Result<Edge> {
        molt_fleet::check_name(&config.name).map_err(anyhow::Error::msg)?;
        let ca = match config.control_ca.as_deref() {
            None => None,
            Some(pem) if pem.trim_start().starts_with("-----BEGIN") => {
                Some(pem.as_bytes().to_vec())
            }
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("reading --control-ca {path}"))?)
            }
        };
        let client = ControlClient::new(&config.control, &config.token, ca.as_deref())
            .context("--control")?;
        std::fs::create_dir_all(&config.state_dir).with_context(|| {
            format!(
                "creating the state directory {}",
                config.state_dir.display()
            )
        })?;
        let router = Router::new(RouterConfig::default());
        let stop = CancellationToken::new();
        let threads = Arc::clone(&router)
            .listen_on_threads(config.listen, config.threads.max(1), stop.clone())
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} for clients: {e}; pick another address with --listen",
                    config.listen
                )
            })?;
        let addr = threads.local_addr();
        let mut background = Vec::new();
        let (tls_task, tls_addr) = match (config.tls_listen, &config.tls_cert_dir) {
            (Some(listen), Some(dir)) => {
                let (certs, report) = CertDir::open(dir, Arc::clone(router.certificates()))
                    .map_err(|e| {
                        anyhow::anyhow!("{e}; pass an existing directory to --tls-cert-dir")
                    })?;
                for error in &report.errors {
                    tracing::warn!("TLS certificate not loaded: {error}");
                }
                background.push(tokio::spawn(
                    certs.watch(std::time::Duration::from_secs(2), stop.clone()),
                ));
                let listener = TcpListener::bind(listen).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen on {listen} for TLS: {e}; pick another address with --tls-listen")
                })?;
                let tls_addr = listener.local_addr()?;
                (Some(listener), Some(tls_addr))
            }
            (None, None) => (None, None),
            _ => anyhow::bail!("--tls-listen and --tls-cert-dir go together"),
        };
        let follower = Follower::new(
            Arc::clone(&router),
            client,
            FollowerConfig::new(&config.name, addr.to_string(), config.state_dir.clone()),
        );
        if let Some(version) = follower.restore().await? {
            tracing::info!(
                version,
                "serving the table saved by the last run until the control plane answers"
            );
        }
        background.push(tokio::spawn(Arc::clone(&follower).run(stop.clone())));
        let mut ready = follower.ready();
        if !*ready.borrow() {
            tracing::info!(control = %config.control, "waiting for the control plane's table");
            tokio::select! {
                ready = ready.wait_for(|ready| *ready) => { ready.context("the follower stopped")?; }
                () = stop.cancelled() => anyhow::bail!("stopped before the first table"),
            }
        }
        threads.start();
        let tls_task = tls_task
            .map(|listener| tokio::spawn(Arc::clone(&router).serve_tls(listener, stop.clone())));
        Ok(Edge {
            addr,
            tls_addr,
            follower,
            stop,
            threads,
            background,
            tls_task,
        })
    }

    /// The version of the table in force.
    pub fn version(&self) -> u64 {
        self.follower.version()
    }

    /// Stops accepting, lets open requests finish (bounded), and returns.
    pub async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        let threads = self.threads;
        tokio::task::spawn_blocking(move || threads.join())
            .await
            .context("router threads")??;
        if let Some(task) = self.tls_task {
            task.await.context("TLS listener")??;
        }
        for task in self.background {
            let _ = task.await;
        }
        Ok(())
    }
}
