//! A router's side of the fleet: `molt router` follows the control plane's stream, applies
//! each table atomically, keeps it on disk, acknowledges it, runs the health checks it is
//! given and reports its counters.
//!
//! The data plane outlives the control plane: while the stream is down the router keeps
//! serving the last table it applied, and reconnects with backoff; a router restarted alone
//! serves the table it saved before it reconnects.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use molt_router::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client::{ClientError, ControlClient};
use crate::wire::{Ack, EnvCounts, Event, Probe, ProbeReport, RouterReport, TableSpec};

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The table file in the state directory.
const TABLE_FILE: &str = "table.json";
/// How long an environment that left the table is still reported (its last requests, and
/// the drain that follows a swap, are counted).
const REPORT_AFTER_LEAVING: Duration = Duration::from_secs(600);

/// How a router follows its control plane.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// The router's name in the fleet.
    pub name: String,
    /// Where it takes client connections (shown by `molt cluster status`).
    pub listen: String,
    /// Where it keeps the last table it applied.
    pub state_dir: PathBuf,
    /// How often it reports its counters.
    pub report_interval: Duration,
    /// A stream silent this long is dead (the control plane pings every 2 s).
    pub stall_timeout: Duration,
}

impl FollowerConfig {
    /// A configuration with the usual intervals.
    pub fn new(name: impl Into<String>, listen: impl Into<String>, state_dir: PathBuf) -> Self {
        Self {
            name: name.into(),
            listen: listen.into(),
            state_dir,
            report_interval: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(6),
        }
    }
}

/// One router following the control plane.
pub struct Follower {
    router: Arc<Router>,
    client: ControlClient,
    config: FollowerConfig,
    applied: Mutex<Applied>,
    /// Environments the router has routed to, and when a table last named them.
    envs: Mutex<std::collections::BTreeMap<String, Instant>>,
    ready: watch::Sender<bool>,
    fenced: watch::Sender<bool>,
    connected: watch::Sender<bool>,
}

/// The table in force.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    generation: u64,
    version: u64,
    table: TableSpec,
}

/// Why the saved table could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct RestoreError {
    path: PathBuf,
    message: String,
}

impl Follower {
    /// A follower of `client` that applies tables to `router`.
    pub fn new(router: Arc<Router>, client: ControlClient, config: FollowerConfig) -> Arc<Self> {
        Arc::new(Self {
            router,
            client,
            config,
            applied: Mutex::default(),
            envs: Mutex::default(),
            ready: watch::channel(false).0,
            fenced: watch::channel(false).0,
            connected: watch::channel(false).0,
        })
    }

    /// Applies the table the last run saved, if there is one; its version.
    pub async fn restore(&self) -> Result<Option<u64>, RestoreError> {
        let path = self.config.state_dir.join(TABLE_FILE);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RestoreError {
                    path,
                    message: e.to_string(),
                })
            }
        };
        let saved: Applied = serde_json::from_slice(&bytes).map_err(|e| RestoreError {
            path: path.clone(),
            message: format!("not a saved table ({e}); remove it to start empty"),
        })?;
        self.router
            .publish(saved.table.to_table(Instant::now()))
            .await;
        let version = saved.version;
        info!(version, path = %path.display(), "serving the saved table");
        self.note_envs(&saved.table);
        *self.lock() = saved;
        self.ready.send_replace(true);
        Ok(Some(version))
    }

    /// True once a table is in force (saved or received): the router may take connections.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// True while the control plane has fenced this router (it missed a deadline): the router
    /// takes no new connections until it has caught up.
    pub fn fenced(&self) -> watch::Receiver<bool> {
        self.fenced.subscribe()
    }

    /// True while the stream to the control plane is open.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// The version in force.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Follows the control plane until `shutdown`: connects, applies, acknowledges, reports;
    /// reconnects with backoff whenever the stream ends.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let reports = tokio::spawn(Arc::clone(&self).report_loop(shutdown.clone()));
        let mut backoff = MIN_BACKOFF;
        loop {
            let session = tokio::select! {
                () = shutdown.cancelled() => break,
                session = self.follow_once() => session,
            };
            self.connected.send_replace(false);
            match session {
                Ok(true) => backoff = MIN_BACKOFF,
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, control = %self.client, "stream to the control plane failed")
                }
            }
            let jitter = Duration::from_millis(u64::from(std::process::id() % 97));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        reports.abort();
    }

    /// One stream: returns `Ok(true)` when it had got going (so backoff starts over).
    async fn follow_once(self: &Arc<Self>) -> Result<bool, ClientError> {
        let query = {
            let applied = self.lock();
            format!(
                "router={}&listen={}&version={}",
                escape(&self.config.name),
                escape(&self.config.listen),
                applied.version
            )
        };
        let mut lines = self.client.stream(&query).await?;
        self.connected.send_replace(true);
        info!(control = %self.client, "following the control plane");
        let mut got_going = false;
        loop {
            let line =
                match tokio::time::timeout(self.config.stall_timeout, lines.next_line()).await {
                    Err(_) => {
                        warn!("the control plane's stream went silent; reconnecting");
                        return Ok(got_going);
                    }
                    Ok(Ok(None)) => {
                        info!("the control plane closed the stream; reconnecting");
                        return Ok(got_going);
                    }
                    Ok(Err(error)) => return Err(error),
                    Ok(Ok(Some(line))) => line,
                };
            got_going = true;
            let event: Event = match serde_json::from_slice(&line) {
                Ok(event) => event,
                Err(error) => {
                    warn!(%error, "ignoring an event molt cannot read");
                    continue;
                }
            };
            match event {
                Event::Table {
                    generation,
                    version,
                    table,
                } => self.apply(generation, version, table).await,
                Event::Probe(probe) => {
                    let me = Arc::clone(self);
                    tokio::spawn(async move { me.run_probe(probe).await });
                }
                Event::Fenced { version } => {
                    warn!(
                        version,
                        "fenced by the control plane until version {version} is applied"
                    );
                    self.fenced.send_replace(true);
                    // Caught up already if that version is here: say so, and take connections.
                    if self.lock().version >= version {
                        self.fenced.send_replace(false);
                        self.router.refuse_new_connections(false);
                        info!(version, "caught up; taking new connections again");
                        self.acknowledge().await;
                    }
                }
                Event::Ping => {}
            }
        }
    }

    async fn apply(&self, generation: u64, version: u64, table: TableSpec) {
        let fresh = {
            let applied = self.lock();
            applied.generation != generation || applied.version < version
        };
        if fresh {
            let started = Instant::now();
            self.router.publish(table.to_table(Instant::now())).await;
            let applied = Applied {
                generation,
                version,
                table,
            };
            if let Err(error) = save(&self.config.state_dir, &applied).await {
                warn!(%error, "could not save the table; a restart would start without it");
            }
            self.note_envs(&applied.table);
            *self.lock() = applied;
            debug!(
                version,
                took_us = started.elapsed().as_micros() as u64,
                "table applied"
            );
        }
        self.ready.send_replace(true);
        if self.fenced.send_replace(false) {
            info!(version, "caught up; taking new connections again");
        }
        self.router.refuse_new_connections(false);
        self.acknowledge().await;
        self.send_report().await;
    }

    async fn acknowledge(&self) {
        let ack = {
            let applied = self.lock();
            Ack {
                router: self.config.name.clone(),
                generation: applied.generation,
                version: applied.version,
            }
        };
        if let Err(error) = self.client.post("/acks", &ack).await {
            warn!(%error, version = ack.version, "could not acknowledge");
        }
    }

    async fn report_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if *self.connected.borrow() {
                self.send_report().await;
            }
        }
    }

    async fn send_report(&self) {
        let (generation, version) = {
            let applied = self.lock();
            (applied.generation, applied.version)
        };
        let envs: Vec<String> = {
            let mut envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
            envs.retain(|_, seen| seen.elapsed() < REPORT_AFTER_LEAVING);
            envs.keys().cloned().collect()
        };
        let report = RouterReport {
            router: self.config.name.clone(),
            generation,
            version,
            envs: envs
                .into_iter()
                .map(|env| {
                    let counts = EnvCounts::of(
                        self.router.env_stats(&env),
                        &self.router.env_traffic(&env).live,
                    );
                    (env, counts)
                })
                .collect(),
        };
        if let Err(error) = self.client.post("/reports", &report).await {
            debug!(%error, "could not report");
        }
    }

    async fn run_probe(&self, probe: Probe) {
        let outcome = http_status(
            probe.addr,
            &probe.path,
            Duration::from_millis(probe.timeout_ms),
        )
        .await;
        let report = ProbeReport {
            router: self.config.name.clone(),
            status: outcome.as_ref().ok().copied(),
            error: outcome.err(),
        };
        if let Err(error) = self
            .client
            .post(&format!("/probes/{}", probe.id), &report)
            .await
        {
            debug!(%error, "could not report a probe");
        }
    }

    /// Notes the environments `table` routes to as seen now.
    fn note_envs(&self, table: &TableSpec) {
        let now = Instant::now();
        let mut envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
        for env in table.envs() {
            envs.insert(env.to_owned(), now);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// GET `path` from `addr` within `timeout`: the status, or why there is none.
pub async fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", addr.to_string())
            .header("user-agent", "molt-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("health check path {path:?}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(response.status().as_u16())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{addr} did not answer within {} ms", timeout.as_millis()))?
}

/// Writes `applied` to the state directory: temp file, fsync, rename.
async fn save(dir: &Path, applied: &Applied) -> std::io::Result<()> {
    let json = serde_json::to_vec(applied).map_err(std::io::Error::other)?;
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{TABLE_FILE}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(TABLE_FILE))?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}

/// `value` percent-encoded for a query string.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
