//! The controller: turns requests (deploy, swap, rollback, config, gc) into journaled steps over
//! the store, the image store, the provider and the router, and keeps what runs matching what the
//! store says (health, replacement, recovery after a restart, garbage collection).
//!
//! Architecture invariants:
//! - the store is the truth; the router table and the running instances are derived from it and
//!   rebuilt from it after a restart;
//! - a route changes only through [`Controller`] methods holding the app's lock, store first, then
//!   router (so a crash in between is repaired by the rebuild);
//! - an instance is never repaired: a dead or unhealthy one is replaced by a new one;
//! - time comes from the injected clock (`ControlConfig::clock`), never read directly.
//!
//! Layout, by concern: `deployment/` (a deployment's life: start, takeover, the task's loop,
//! its steps, the shadow phase), `route.rs` (every move of a route, and maintenance and
//! mirroring), `queries.rs` (read-only views), `images/` (image operations and baking),
//! `instances.rs`/`health.rs`/`reconcile.rs` (what runs), `gc.rs`, `table.rs` (the route
//! table), `verify.rs` (image trees). Decisions that need no I/O live in `molt-core`.

mod access;
mod deployment;
mod engine;
mod error;
mod gc;
mod health;
mod images;
mod instances;
mod logs;
mod metrics;
mod queries;
mod reconcile;
mod route;
mod scale;
mod secrets;
mod signing;
mod table;
mod tls;
mod traffic;
mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use molt_core::{AppName, Clock, DeployState};
use molt_fleet::{Fleet, FleetConfig};
use molt_image::ImageStore;
use molt_provider::Provider;
use molt_router::Router;
use molt_store::{Store, SystemClock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::{Authenticate, Caller};
pub use deployment::shadow::ShadowOutcome;
pub use deployment::start::DeployRequest;
pub use engine::EngineSetup;
pub use error::{ControlError, ErrorKind, Result};
pub use images::{
    credentials, BakeRequest, BuildIsolation, ImageExport, ImportOptions, PullRequest,
};
pub use logs::LogRotation;
pub use metrics::{EnvMetrics, MetricsSnapshot, RouterCounters};
pub use molt_image::{ArchiveFormat, BuildSandbox, RunRequest, SourceInfo};
pub use molt_registry::{Credentials, PullReport, PushReport};
pub use molt_router::{EnvTraffic, LatencyHistogram, TrafficStats, LATENCY_BUCKETS};
/// The records the controller takes and returns are the API's (`molt-wire`).
pub use molt_store::StoredToken;
pub use molt_wire::{
    AppRecord, AppStatus, Attestation, BakeReport, ClusterStatus, DeploymentRecord, EngineStatus,
    EnvRecord, EnvStatus, EventRecord, GcReport, ImageDiff, ImageInspect, ImageRecord, ImageUse,
    ImportFormat, ImportOutcome, JournalEntry, MaintenanceMode, ReleaseRecord, RemoveOutcome,
    RollbackOutcome, ShadowComparison, ShadowReport, Status, SwapOutcome, TagEvent, TagOutcome,
    TrafficSummary, VerifyReport,
};
pub use secrets::SecretKey;
pub use signing::SigningKey;

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where instance logs are written.
    pub logs_dir: PathBuf,
    /// When instance logs are rotated and how many rotated files are kept.
    pub instance_log: LogRotation,
    /// How often garbage collection runs by itself.
    pub gc_interval: Duration,
    /// Time an instance gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Newest releases per app whose images are kept.
    pub keep_releases: usize,
    /// Images imported more recently than this are never collected.
    pub image_grace: Duration,
    /// Test hook: deployments stop (and wait to be killed) when they reach this state; a
    /// `paused` event in the app's history says when one is held there.
    pub pause_at: Option<DeployState>,
    /// When set, each ready environment also answers on `<env>.<app>.<preview domain>`
    /// (e.g. with a wildcard DNS record `*.preview.example.com`).
    pub preview_domain: Option<molt_core::Hostname>,
    /// Where bake `run` steps run (no `run` steps without it): the seam to a container
    /// runtime, filled by whoever assembles molt (`molt serve` hands in runc's).
    pub build_isolation: Option<Arc<dyn BuildIsolation>>,
    /// How often every live image tree is re-verified (`None`: only before first start and
    /// on demand).
    pub verify_interval: Option<Duration>,
    /// Longest time requests for an environment wait while its drifted instances are being
    /// replaced (also bounded by the release's `start_deadline` and request timeout); then
    /// they get a 503.
    pub drift_hold: Duration,
    /// Where instances listen: see [`InstanceNetwork`].
    pub network: InstanceNetwork,
    /// The routers beyond this process's own: every route change is published to them too and
    /// is in force once each live one has acknowledged it (see [`molt_fleet::Fleet`]).
    pub fleet: Arc<Fleet>,
    /// How health checks reach instances: straight from this process, or through a router of
    /// the fleet when instances live on a network only the routers reach.
    pub health_checks: HealthChecks,
    /// An engine that runs environments across machines (Docker Swarm), instead of the
    /// provider on this machine.
    pub engine: Option<EngineSetup>,
    /// What "now" is for every window the controller decides (the watch, rollback windows,
    /// GC's grace periods, start deadlines of instances) and for the store's timestamps: the
    /// system clock, or a [`molt_core::ManualClock`] a test moves instead of sleeping.
    pub clock: Arc<dyn Clock>,
    /// What secrets are sealed with (none: `molt secrets set` is refused).
    pub secrets_key: Option<SecretKey>,
    /// When set, only images this key signed are deployed.
    pub require_signature: Option<SigningKey>,
}

/// How the controller's health checks reach instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HealthChecks {
    /// From this process (instances on this machine).
    #[default]
    Direct,
    /// Through a router of the fleet (instances on an engine's overlay network).
    ThroughRouters,
}

/// The network instances get, which decides the address molt allocates for each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InstanceNetwork {
    /// The host's network: each instance listens on a loopback address of its own (or
    /// 127.0.0.1 with a free port).
    #[default]
    Host,
    /// A network namespace per instance on molt's bridge: each instance gets a free address
    /// of this subnet (never the gateway), freed when it stops.
    Bridge(molt_core::Subnet),
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            logs_dir: PathBuf::from("logs"),
            instance_log: LogRotation::default(),
            gc_interval: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
            keep_releases: 5,
            image_grace: Duration::from_secs(3600),
            pause_at: None,
            preview_domain: None,
            build_isolation: None,
            verify_interval: None,
            drift_hold: Duration::from_secs(10),
            network: InstanceNetwork::Host,
            fleet: Fleet::new(FleetConfig::default()),
            health_checks: HealthChecks::Direct,
            engine: None,
            clock: Arc::new(SystemClock),
            secrets_key: None,
            require_signature: None,
        }
    }
}

/// The control plane. Cheap to clone; every clone drives the same state.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    images: ImageStore,
    provider: Arc<dyn Provider>,
    router: Arc<Router>,
    config: ControlConfig,
    /// One lock per app: route changes of an app are serialised.
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The running deployment task of each app.
    active: deployment::active::ActiveDeployments,
    /// Serialises router table rebuilds so an older table never overwrites a newer one.
    publish_lock: tokio::sync::Mutex<()>,
    /// Held by a reconcile pass and by retirements, so they never act on the same instances.
    reconcile_lock: tokio::sync::Mutex<()>,
    health: health::Checker,
    /// The autoscaler's samples and decisions, and environments being woken from zero.
    scaling: Mutex<scale::Scaling>,
    /// Which image trees were verified, and which drifted.
    verified: Mutex<verify::Verified>,
    /// One verification pass at a time.
    verify_lock: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// When this controller was built (ms since the epoch): the router's counters start here.
    started_ms: u64,
}

/// Proof that the holder has an app's lock (see [`Controller::lock_app`]).
type AppGuard = tokio::sync::OwnedMutexGuard<()>;

impl Controller {
    /// Builds a controller over its parts; the store stamps its records with the config's
    /// clock from now on. Call [`Controller::start`] to recover and begin the background loops.
    pub fn new(
        mut store: Store,
        images: ImageStore,
        provider: Arc<dyn Provider>,
        router: Arc<Router>,
        config: ControlConfig,
    ) -> Controller {
        store.set_clock(config.clock.clone());
        let started_ms = config.clock.now_ms();
        Controller {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                images,
                provider,
                router,
                config,
                app_locks: Mutex::new(HashMap::new()),
                active: Default::default(),
                publish_lock: tokio::sync::Mutex::new(()),
                reconcile_lock: tokio::sync::Mutex::new(()),
                health: health::Checker::new(),
                scaling: Mutex::new(scale::Scaling::default()),
                verified: Mutex::new(verify::Verified::default()),
                verify_lock: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                started_ms,
            }),
        }
    }

    /// The router this controller feeds.
    pub fn router(&self) -> &Arc<Router> {
        &self.inner.router
    }

    /// The fleet of routers this controller also feeds.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.inner.config.fleet
    }

    /// The provider's isolation level, shown in status output (on an engine, its name: the
    /// engine's containers isolate instances).
    pub fn isolation(&self) -> &'static str {
        match self.engine() {
            Some(setup) => setup.engine.name(),
            None => self.inner.provider.isolation(),
        }
    }

    /// Stops the background loops and deployment tasks (instances keep running: a restarted
    /// molt adopts them).
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Runs `f` against the store on a blocking thread.
    async fn db<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> std::result::Result<T, molt_store::StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut store = inner
                .store
                .lock()
                .map_err(|_| ControlError::Internal("store lock poisoned".into()))?;
            f(&mut store).map_err(ControlError::from)
        })
        .await??;
        Ok(out)
    }

    /// Takes the app's lock: route changes of one app never interleave.
    async fn lock_app(&self, app: &str) -> AppGuard {
        let lock = {
            let mut locks = self
                .inner
                .app_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            locks.entry(app.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Now, in ms since the epoch, by the controller's clock (what windows are decided on, and
    /// what the dashboard shows them against).
    pub fn now_ms(&self) -> u64 {
        self.inner.config.clock.now_ms()
    }

    /// Records a line of the app's history; failures to record are logged, not fatal.
    async fn event(&self, app: &str, kind: &str, message: &str) {
        tracing::info!(app, kind, "{message}");
        let (a, k, m) = (app.to_string(), kind.to_string(), message.to_string());
        if let Err(e) = self.db(move |s| s.record_event(&a, &k, &m)).await {
            tracing::warn!("could not record event: {e}");
        }
    }

    /// Spawns a task owned by the controller (stopped and awaited on shutdown).
    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(fut);
    }
}

/// An app name from a request, checked.
fn parse_app(app: &str) -> Result<AppName> {
    Ok(app.parse::<AppName>()?)
}

#[cfg(test)]
mod tests;
