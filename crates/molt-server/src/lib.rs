//! `molt serve`: one process with the REST API, the router, the controller and the local
//! provider, over one data directory.
//!
//! Data directory layout:
//! - `state.db` — the SQLite store (WAL);
//! - `images/` — the image store; `logs/` — instance output; `uploads/` — image uploads;
//! - `admin.token` (0600) — the API token the CLI reads;
//! - `secrets.key` (0600, refused otherwise) — what secrets are sealed with, unless
//!   `MOLT_SECRETS_KEY` gives it;
//! - `router.token` (0600) — the token of the fleet's routers (`molt router`): it opens only
//!   the fleet's endpoints (the route stream, acknowledgements, reports, probe results);
//! - `serve.json` — where the running server listens, for the CLI;
//! - `owner.id` — marks this data directory's instance processes (orphan detection);
//! - `serve.lock` — held while a server uses the directory;
//! - `runc/` — runc's state directory and `bundles/` — one OCI bundle per container
//!   (isolation `runc` only); in bridge mode each container's network namespace is bound at
//!   `/run/netns/<owner>-<instance>` (outside the data directory).
//! - `tls/acme/` — ACME account and issued certificates (0600), when ACME is on.
//!
//! With `--tls-listen`, a second router listener terminates TLS with the certificates of
//! `--tls-cert-dir` (polled for changes; `POST /v1/tls/reload` reloads at once) and those
//! issued through ACME (`tls/acme/`, see [`AcmeConfig`]).

mod acme;
mod api_tls;
mod build;
mod edge;
mod private;
mod swarm;

pub use acme::AcmeConfig;
pub use api_tls::{cert_path as api_cert_path, ApiTlsConfig};
pub use edge::{Edge, EdgeConfig};
pub use molt_control::Credentials as RegistryCredentials;
pub use molt_control::LogRotation;
pub use molt_runtime::{BridgeNetwork, Subnet};
pub use private::private_umask;
pub use swarm::{SwarmServeConfig, ROUTER_PORT};

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use acme::AcmeManager;
use anyhow::{bail, Context, Result};
use molt_control::{ControlConfig, Controller, HealthChecks, InstanceNetwork};
use molt_core::{Clock, DeployState};
use molt_image::ImageStore;
use molt_provider::{LocalProvider, Provider};
use molt_router::tls::CertDir;
use molt_router::{Router, RouterConfig};
use molt_runtime::{InstanceInit, RuncConfig, RuncProvider};
use molt_store::{Store, SystemClock};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How `molt serve` is configured.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the API listens (port 0 picks a free port).
    pub api_addr: SocketAddr,
    /// Where the router listens (port 0 picks a free port).
    pub router_addr: SocketAddr,
    /// How often GC runs by itself.
    pub gc_interval: Duration,
    /// Test hook: deployments pause when they reach this state.
    pub pause_at: Option<DeployState>,
    /// Time an instance gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Each ready environment also answers on `<env>.<app>.<preview domain>`.
    pub preview_domain: Option<molt_core::Hostname>,
    /// TLS termination (off when `None`).
    pub tls: Option<TlsConfig>,
    /// How instances are isolated.
    pub isolation: Isolation,
    /// Bridge mode (`--network bridge`): a network namespace per instance on this bridge.
    /// `None`: the host's network (`--network host`, the default).
    pub network: Option<BridgeNetwork>,
    /// How often live image trees are re-verified (`None`: before first start and on demand).
    pub verify_interval: Option<Duration>,
    /// Longest time requests wait while drifted instances are replaced (then 503).
    pub drift_hold: Duration,
    /// Threads serving each of the router's listeners (plain and TLS), each with its own
    /// runtime and `SO_REUSEPORT` socket ([`Router::serve_on_threads`]); 0 serves them on the
    /// server's shared runtime instead.
    pub router_threads: usize,
    /// The controller's clock (and the store's): the system clock; tests may hand in a
    /// [`molt_core::ManualClock`] to move windows along instead of sleeping.
    pub clock: Arc<dyn Clock>,
    /// How many failed authentications an address may make before it is answered 429.
    pub auth_failures: molt_api::FailurePolicy,
    /// The key secrets are sealed with, 64 hex digits (`MOLT_SECRETS_KEY`); without it the
    /// key is `<data dir>/secrets.key`, made at first start.
    pub secrets_key: Option<String>,
    /// An Ed25519 public key file (64 hex digits): only images it signed are deployed.
    pub require_signature: Option<PathBuf>,
    /// The API over TLS too, on an address other machines reach (for `molt router`s).
    pub api_tls: Option<ApiTlsConfig>,
    /// Run environments on a Docker swarm instead of this machine.
    pub swarm: Option<SwarmServeConfig>,
    /// molt's own executable, run as PID 1 of every runc instance (`molt instance-init`;
    /// the `molt` binary sets it to itself). `None`: programs are PID 1 themselves, and one
    /// without a SIGTERM handler only stops on SIGKILL, after the stop grace.
    pub init_executable: Option<PathBuf>,
    /// When instance logs (`logs/<instance>.log`) are rotated, and how many rotated files
    /// are kept.
    pub instance_log: LogRotation,
    /// The router logs one event per request on target `molt_router::access` (the binary
    /// decides where the events go: `--access-log`).
    pub access_log: bool,
}

/// The TLS listener of `molt serve` and where its certificates come from.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Where the TLS listener listens (port 0 picks a free port).
    pub listen: SocketAddr,
    /// PEM certificates (`<host>.pem` or `<host>.crt` + `<host>.key`), watched for changes.
    pub cert_dir: Option<PathBuf>,
    /// Plain requests for hosts with a certificate get a 308 to https.
    pub https_redirect: bool,
    /// With `https_redirect`: answers over TLS for hosts with a certificate carry
    /// `Strict-Transport-Security: max-age=<seconds>`.
    pub hsts_max_age: Option<u64>,
    /// How often the certificate directory is checked for changes.
    pub poll_interval: Duration,
    /// Certificates issued automatically through ACME (http-01 on the plain listener).
    pub acme: Option<AcmeConfig>,
}

impl TlsConfig {
    /// TLS on `listen`, no certificate source yet, no redirect, directory polled every 2 s,
    /// no ACME.
    pub fn new(listen: SocketAddr) -> TlsConfig {
        TlsConfig {
            listen,
            cert_dir: None,
            https_redirect: false,
            hsts_max_age: None,
            poll_interval: Duration::from_secs(2),
            acme: None,
        }
    }
}

/// How `molt serve` isolates instances (`--isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// runc containers when molt runs as root and `runc` is installed, else plain processes.
    Auto,
    /// runc containers; refuse to start without root and `runc`.
    Runc,
    /// Plain processes (`isolation: none`, shown as such everywhere).
    None,
}

impl std::str::FromStr for Isolation {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Isolation::Auto),
            "runc" => Ok(Isolation::Runc),
            "none" => Ok(Isolation::None),
            other => bail!("unknown isolation '{other}': use auto, runc or none"),
        }
    }
}

/// What happens to instances when the server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Leave them running: the next `molt serve` adopts them (the default).
    KeepInstances,
    /// Stop every instance.
    StopInstances,
}

/// Where a running server listens, written to `serve.json` for the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    /// The API address.
    pub api: SocketAddr,
    /// The router address.
    pub router: SocketAddr,
    /// The router's TLS address, when TLS is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_tls: Option<SocketAddr>,
    /// The API's TLS address, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls: Option<SocketAddr>,
    /// The server's process id.
    pub pid: u32,
}

/// The router's plain listener before it serves.
enum RouterListener {
    Runtime(TcpListener),
    Threads(molt_router::ServerThreads),
}

/// The TLS listener's port, taken before the router exists.
enum TlsBind {
    /// Served on the shared runtime (`--router-threads 0`).
    Runtime(TcpListener),
    /// Held (bound with SO_REUSEPORT, not listening) until the router's threads bind it.
    Reserved(tokio::net::TcpSocket, SocketAddr),
}

impl TlsBind {
    fn addr(&self) -> SocketAddr {
        match self {
            TlsBind::Runtime(listener) => listener
                .local_addr()
                .expect("a bound listener has an address"),
            TlsBind::Reserved(_, addr) => *addr,
        }
    }
}

/// Takes the TLS port: a listener when the router serves on the shared runtime (`threads`
/// 0), else a reservation for its threads.
async fn bind_tls(addr: SocketAddr, threads: usize) -> std::io::Result<TlsBind> {
    if threads == 0 {
        return Ok(TlsBind::Runtime(TcpListener::bind(addr).await?));
    }
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let bound = socket.local_addr()?;
    Ok(TlsBind::Reserved(socket, bound))
}

/// A running server.
pub struct Running {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the router listens.
    pub router_addr: SocketAddr,
    /// Where the router's TLS listener listens, when TLS is on.
    pub router_tls_addr: Option<SocketAddr>,
    /// Where the API's TLS listener listens, when it is on.
    pub api_tls_addr: Option<SocketAddr>,
    /// The SHA-256 of its certificate (`sha256:<hex>`): what `molt login` pins.
    pub api_tls_fingerprint: Option<String>,
    /// The admin API token.
    pub token: String,
    /// The data directory.
    pub data_dir: PathBuf,
    controller: Controller,
    stop: CancellationToken,
    /// The router serving: a task on the shared runtime, or the join of its threads (on a
    /// blocking thread, so shutting down never blocks the runtime).
    router_task: JoinHandle<std::io::Result<()>>,
    tls_task: Option<JoinHandle<std::io::Result<()>>>,
    background: Vec<JoinHandle<()>>,
    api_task: JoinHandle<std::io::Result<()>>,
    _lock: Flock<File>,
    /// Stops the listeners when a `Running` is dropped without [`Running::shutdown`] (a test
    /// that panics): the router threads' join, on a blocking thread, would otherwise keep the
    /// runtime from ever shutting down.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl ServeConfig {
    /// Defaults: API on 127.0.0.1:7070, router on 127.0.0.1:8080.
    pub fn new(data_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            data_dir,
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            router_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            gc_interval: Duration::from_secs(60),
            pause_at: None,
            stop_grace: Duration::from_secs(5),
            tls: None,
            preview_domain: None,
            isolation: Isolation::Auto,
            network: None,
            verify_interval: Some(Duration::from_secs(300)),
            drift_hold: Duration::from_secs(10),
            router_threads: default_router_threads(),
            clock: Arc::new(SystemClock),
            auth_failures: molt_api::FailurePolicy::default(),
            secrets_key: None,
            require_signature: None,
            api_tls: None,
            swarm: None,
            init_executable: None,
            instance_log: LogRotation::default(),
            access_log: false,
        }
    }
}

/// One router thread per CPU (at most 16).
pub fn default_router_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
}

/// The default data directory: `$MOLT_DATA_DIR`, else `$XDG_DATA_HOME/molt`, else
/// `~/.local/share/molt`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MOLT_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("molt");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/molt")
}

/// Starts a server: opens the data directory, recovers state, binds both listeners.
pub async fn start(cfg: ServeConfig) -> Result<Running> {
    if let Some(tls) = &cfg.tls {
        if tls.cert_dir.is_none() && tls.acme.is_none() {
            bail!(
                "TLS has no certificates to serve: pass --tls-cert-dir or --acme-domain with \
                 --tls-listen"
            );
        }
        if let Some(path) = tls.cert_dir.as_ref().filter(|path| !path.is_dir()) {
            bail!(
                "the certificate directory {} does not exist or is not a directory; pass an \
                 existing directory to --tls-cert-dir",
                path.display()
            );
        }
    }
    if !cfg.api_addr.ip().is_loopback() {
        bail!(
            "--api-listen {} is not a loopback address: the plain API would carry tokens in \
             clear. Keep it on 127.0.0.1 and reach molt from other machines with \
             --api-tls-listen ADDR (then `molt login https://ADDR`)",
            cfg.api_addr
        );
    }
    let dir = cfg.data_dir.clone();
    private::secure(&dir)?;
    let lock_file = File::create(dir.join("serve.lock"))
        .with_context(|| format!("creating {}", dir.join("serve.lock").display()))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!(
            "another molt serve is already using {}: stop it, or pass a different --data-dir",
            dir.display()
        )
    })?;
    let token = read_or_create_secret(&dir.join("admin.token"))?;
    let router_token = read_or_create_secret(&dir.join("router.token"))?;
    let owner = read_or_create_secret(&dir.join("owner.id"))?;
    let secrets_key = private::secrets_key(&dir, cfg.secrets_key.as_deref())?;
    let require_signature = cfg
        .require_signature
        .as_deref()
        .map(private::signing_key)
        .transpose()?;
    let store = Store::open(&dir.join("state.db"))
        .with_context(|| format!("opening {}", dir.join("state.db").display()))?;
    // SQLite made its WAL and SHM files with the database's mode (0600 by now).
    private::tighten_files(&dir)?;
    let images = ImageStore::open(&dir.join("images")).context("opening the image store")?;
    let engine = match &cfg.swarm {
        Some(swarm_cfg) => {
            if cfg.api_tls.is_none() {
                bail!(
                    "--provider swarm runs routers on every node, which reach the control plane \
                     over TLS: pass --api-tls-listen ADDR (an address the nodes reach)"
                );
            }
            if !swarm::socket_exists(&swarm_cfg.socket) {
                bail!(
                    "--provider swarm: no Docker engine socket at {}; start dockerd (and `docker \
                     swarm init`), or pass --docker-socket",
                    swarm_cfg.socket.display()
                );
            }
            Some(swarm::connect(swarm_cfg, &owner[..16]).await?)
        }
        None => None,
    };
    let provider = make_provider(
        cfg.isolation,
        cfg.network.as_ref(),
        cfg.init_executable.as_deref(),
        &dir,
        &owner[..16],
    )?;
    tracing::info!(isolation = provider.isolation(), "instances are isolated");
    // The TLS port is taken now (its number goes into the router's https redirect): a listener
    // for the shared runtime, or a reservation the router's threads join with SO_REUSEPORT.
    let tls_bind = match &cfg.tls {
        Some(tls) => Some(
            bind_tls(tls.listen, cfg.router_threads)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {} for TLS: {e}; pick another address with --tls-listen",
                        tls.listen
                    )
                })?,
        ),
        None => None,
    };
    let router_tls_addr = tls_bind.as_ref().map(TlsBind::addr);
    let router = Router::new(RouterConfig {
        https_redirect: match (&cfg.tls, router_tls_addr) {
            (Some(tls), Some(addr)) if tls.https_redirect => Some(addr.port()),
            _ => None,
        },
        hsts_max_age: match (&cfg.tls, router_tls_addr) {
            (Some(tls), Some(_)) if tls.https_redirect => tls.hsts_max_age,
            _ => None,
        },
        access_log: cfg.access_log,
        ..RouterConfig::default()
    });
    let stop = CancellationToken::new();
    let cert_dir = match cfg.tls.as_ref().and_then(|tls| tls.cert_dir.as_ref()) {
        Some(path) => {
            let (cert_dir, report) = CertDir::open(path, Arc::clone(router.certificates()))
                .map_err(|e| {
                    anyhow::anyhow!("{e}; pass an existing directory to --tls-cert-dir")
                })?;
            for error in &report.errors {
                tracing::warn!("TLS certificate not loaded: {error}");
            }
            Some(cert_dir)
        }
        None => None,
    };
    let acme = match cfg.tls.as_ref().and_then(|tls| tls.acme.clone()) {
        Some(acme) => Some(AcmeManager::open(
            acme,
            &dir,
            Arc::clone(router.certificates()),
            Arc::clone(router.acme_challenges()),
        )?),
        None => None,
    };
    let cannot_listen = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot listen on {} for the router: {e}; pick another address with --router",
            cfg.router_addr
        )
    };
    // Listening from here on: connections wait in the queue until the state is recovered.
    let router_listener = if cfg.router_threads == 0 {
        RouterListener::Runtime(
            TcpListener::bind(cfg.router_addr)
                .await
                .map_err(cannot_listen)?,
        )
    } else {
        RouterListener::Threads(
            router
                .clone()
                .listen_on_threads(cfg.router_addr, cfg.router_threads, stop.clone())
                .map_err(cannot_listen)?,
        )
    };
    let tls_listener = match tls_bind {
        None => None,
        Some(TlsBind::Runtime(listener)) => Some(RouterListener::Runtime(listener)),
        Some(TlsBind::Reserved(reservation, addr)) => {
            let threads = router
                .clone()
                .listen_tls_on_threads(addr, cfg.router_threads, stop.clone())
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for TLS: {e}"))?;
            drop(reservation);
            Some(RouterListener::Threads(threads))
        }
    };
    let api_listener = TcpListener::bind(cfg.api_addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} for the API: {e}; pick another address with --api",
            cfg.api_addr
        )
    })?;
    let router_addr = match &router_listener {
        RouterListener::Runtime(listener) => listener.local_addr()?,
        RouterListener::Threads(threads) => threads.local_addr(),
    };
    let api_addr = api_listener.local_addr()?;
    let api_tls_listener = match &cfg.api_tls {
        Some(api_tls) => Some(TcpListener::bind(api_tls.listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} for the API over TLS: {e}; pick another address with \
                 --api-tls-listen",
                api_tls.listen
            )
        })?),
        None => None,
    };
    let api_tls_addr = match &api_tls_listener {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let router_images = images.clone();
    let controller = Controller::new(
        store,
        images,
        provider,
        router.clone(),
        ControlConfig {
            logs_dir: dir.join("logs"),
            instance_log: cfg.instance_log,
            gc_interval: cfg.gc_interval,
            stop_grace: cfg.stop_grace,
            pause_at: cfg.pause_at,
            preview_domain: cfg.preview_domain.clone(),
            build_isolation: Some(Arc::new(build::RuncBuilds {
                dir: dir.join("build"),
            })),
            verify_interval: cfg.verify_interval,
            drift_hold: cfg.drift_hold,
            network: match &cfg.network {
                Some(network) => InstanceNetwork::Bridge(network.subnet()),
                None => InstanceNetwork::Host,
            },
            clock: cfg.clock.clone(),
            health_checks: if engine.is_some() {
                HealthChecks::ThroughRouters
            } else {
                HealthChecks::Direct
            },
            engine,
            secrets_key: Some(secrets_key),
            require_signature,
            ..ControlConfig::default()
        },
    );
    if let Err(error) = controller.start().await {
        stop.cancel();
        for listener in [Some(router_listener), tls_listener].into_iter().flatten() {
            if let RouterListener::Threads(threads) = listener {
                let _ = tokio::task::spawn_blocking(move || threads.join()).await;
            }
        }
        return Err(error).context("recovering state");
    }
    let router_task = match router_listener {
        RouterListener::Runtime(listener) => {
            tokio::spawn(router.clone().serve(listener, stop.clone()))
        }
        RouterListener::Threads(threads) => {
            threads.start();
            tokio::task::spawn_blocking(move || threads.join())
        }
    };
    let tls_task = tls_listener.map(|listener| match listener {
        RouterListener::Runtime(listener) => {
            tokio::spawn(router.clone().serve_tls(listener, stop.clone()))
        }
        RouterListener::Threads(threads) => {
            threads.start();
            tokio::task::spawn_blocking(move || threads.join())
        }
    });
    let mut background = Vec::new();
    if let (Some(cert_dir), Some(tls)) = (cert_dir, &cfg.tls) {
        background.push(tokio::spawn(
            cert_dir.watch(tls.poll_interval, stop.clone()),
        ));
    }
    if let Some(acme) = acme {
        background.push(tokio::spawn(acme.run(stop.clone())));
    }
    let auth = molt_api::Auth::with_policy(
        controller.clone(),
        molt_api::Tokens {
            admin: token.clone(),
            router: router_token.clone(),
        },
        cfg.auth_failures,
    );
    // The API, and beside it the git remote and the dashboard: each asks the same `Auth` who
    // a token is (through the one `Authenticate` function) and checks that role.
    let authenticate = molt_api::authenticator(&auth);
    let app = molt_api::router_with(controller.clone(), auth, dir.join("uploads"))
        .merge(molt_git::router(
            controller.clone(),
            authenticate.clone(),
            dir.join("git"),
        ))
        .merge(molt_dashboard::router(
            controller.clone(),
            authenticate,
            stop.clone(),
        ));
    let mut api_tls_fingerprint = None;
    if let (Some(listener), Some(api_tls)) = (api_tls_listener, &cfg.api_tls) {
        let bound = listener.local_addr()?;
        let (certs, key) = api_tls::certificate(&dir, api_tls, bound)?;
        let fingerprint = certs
            .first()
            .map(|cert| api_tls::fingerprint(cert.as_ref()));
        tracing::info!(
            fingerprint = fingerprint.as_deref().unwrap_or("none"),
            "the API's TLS certificate (`molt login` pins it: compare)"
        );
        api_tls_fingerprint = fingerprint;
        let (app, stop) = (app.clone(), stop.clone());
        background.push(tokio::spawn(async move {
            if let Err(error) = api_tls::serve(listener, certs, key, app, stop).await {
                tracing::error!(%error, "the API's TLS listener failed");
            }
        }));
    }
    if let (Some(swarm_cfg), Some(api_tls_addr)) = (&cfg.swarm, api_tls_addr) {
        if !swarm_cfg.router_ports.is_empty() {
            let control_url = swarm_cfg
                .control_url
                .clone()
                .unwrap_or_else(|| format!("https://{api_tls_addr}"));
            let control_ca = fs::read_to_string(api_tls::cert_path(&dir))
                .context("reading the API's certificate")?;
            let fleet = swarm::run_router_fleet(
                swarm_cfg.clone(),
                owner[..16].to_owned(),
                router_images,
                dir.clone(),
                control_url,
                router_token.clone(),
                control_ca,
            );
            background.push(tokio::spawn(async move {
                if let Err(error) = fleet.await {
                    tracing::error!("could not run the router fleet on the swarm: {error:#}");
                }
            }));
        }
    }
    let api_stop = stop.clone();
    let api_task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(api_listener, app)
            .with_graceful_shutdown(async move { api_stop.cancelled().await })
            .await
    });
    let endpoints = Endpoints {
        api: api_addr,
        router: router_addr,
        router_tls: router_tls_addr,
        api_tls: api_tls_addr,
        pid: std::process::id(),
    };
    let json = serde_json::to_string_pretty(&endpoints)?;
    write_atomically(&dir.join("serve.json"), json.as_bytes(), 0o600)?;
    tracing::info!(%api_addr, %router_addr, router_tls_addr = ?router_tls_addr, data_dir = %dir.display(), "molt serve is up");
    Ok(Running {
        api_addr,
        router_addr,
        router_tls_addr,
        api_tls_addr,
        api_tls_fingerprint,
        token,
        data_dir: dir,
        controller,
        _stop_on_drop: stop.clone().drop_guard(),
        stop,
        router_task,
        tls_task,
        background,
        api_task,
        _lock: lock,
    })
}

impl Running {
    /// Stops accepting, drains the router and the API, stops background work; instances are
    /// kept or stopped as `on_exit` says.
    pub async fn shutdown(self, on_exit: OnExit) -> Result<()> {
        self.stop.cancel();
        // The routers' streams end (they keep serving and reconnect to the next molt serve);
        // the API's graceful shutdown would wait for them forever otherwise.
        self.controller.fleet().close();
        let router_result = self.router_task.await;
        let tls_result = match self.tls_task {
            Some(task) => Some(task.await),
            None => None,
        };
        for task in self.background {
            let _ = task.await;
        }
        let api_result = self.api_task.await;
        self.controller.shutdown().await;
        if on_exit == OnExit::StopInstances {
            self.controller.stop_all_instances().await?;
        }
        let _ = fs::remove_file(self.data_dir.join("serve.json"));
        router_result.context("router task")?.context("router")?;
        if let Some(tls_result) = tls_result {
            tls_result
                .context("TLS router task")?
                .context("TLS router")?;
        }
        api_result.context("API task")?.context("API")?;
        Ok(())
    }

    /// The controller (tests use it to look inside).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }
}

/// The provider for `isolation`. With runc, molt becomes the subreaper of the containers'
/// processes, and its data directory (admin token, state) is masked in every instance. Bridge
/// mode (`network`) needs runc; its bridge is created (or kept) here. With runc, instances run
/// under `init_executable` as their init; the local provider needs none (`LocalProvider`).
fn make_provider(
    isolation: Isolation,
    network: Option<&BridgeNetwork>,
    init_executable: Option<&Path>,
    dir: &Path,
    owner: &str,
) -> Result<Arc<dyn Provider>> {
    let runc = PathBuf::from("runc");
    let root = nix::unistd::geteuid().is_root();
    let use_runc = match isolation {
        Isolation::None => false,
        Isolation::Runc if !root => {
            bail!("--isolation runc needs root (runc creates namespaces and cgroups): run molt serve as root, or use --isolation none")
        }
        Isolation::Runc if !RuncProvider::runc_available(&runc) => {
            bail!("--isolation runc needs the runc binary in PATH: `apt-get install runc`, or use --isolation none")
        }
        Isolation::Runc => true,
        Isolation::Auto => {
            let available = root && RuncProvider::runc_available(&runc);
            if !available {
                tracing::warn!(
                    "isolation: none (auto needs root and runc; instances run as plain processes)"
                );
            }
            available
        }
    };
    if !use_runc {
        if network.is_some() {
            bail!(
                "--network bridge needs the runc isolation (root and the runc binary), since a \
                 plain process cannot be put in a network namespace: run molt serve as root with \
                 runc installed (--isolation runc), or use --network host"
            );
        }
        return Ok(Arc::new(LocalProvider::new(owner.to_string())));
    }
    if let Some(network) = network {
        network.ensure().with_context(|| {
            format!(
                "setting up bridge {} with subnet {}",
                network.bridge(),
                network.subnet()
            )
        })?;
        tracing::info!(
            bridge = network.bridge(),
            subnet = %network.subnet(),
            gateway = %network.subnet().gateway(),
            "bridge mode: each instance in a network namespace of its own"
        );
    }
    RuncProvider::become_subreaper().context("becoming the subreaper of instances")?;
    let mut config = RuncConfig::new(owner, dir.join("runc"), dir.join("bundles"));
    config.runc = runc;
    let data_dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    config.hidden = vec![data_dir];
    config.network = network.cloned();
    config.init = init_executable.and_then(|executable| {
        InstanceInit::resolve(executable)
            .inspect_err(|e| {
                tracing::warn!(
                    executable = %executable.display(),
                    error = %e,
                    "instances run without molt's init: their programs are PID 1, and one \
                     without a SIGTERM handler stops only on SIGKILL"
                )
            })
            .ok()
    });
    Ok(Arc::new(RuncProvider::new(config)))
}

/// Reads a secret file, or creates it (0600) with 32 random bytes in hex.
fn read_or_create_secret(path: &Path) -> Result<String> {
    if let Ok(text) = fs::read_to_string(path) {
        let t = text.trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_atomically(path, secret.as_bytes(), 0o600)?;
    Ok(secret)
}

pub(crate) fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    if mode == 0o600 {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Checks that a data directory is usable before anything else (clear error early).
pub fn check_data_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a directory", dir.display());
    }
    Ok(())
}
