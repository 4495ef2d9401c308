//! The controller's decisions, carried out against real parts: a SQLite store and an image
//! store in a temp dir, a router (not listening) and the local provider, with a manual clock
//! so windows pass when a test moves it. No process runs: the instances are store records in
//! the state each test needs (the reconcile loop is not started, so nothing changes them).
//! What needs running instances is tested end to end in `crates/molt/tests`.

mod deployments;
mod gc;
mod rollback;

use std::sync::Arc;
use std::time::{Duration, Instant};

use molt_core::{DeployEvent, DeployState, Digest, Manifest, ManualClock};
use molt_image::ImageStore;
use molt_provider::LocalProvider;
use molt_router::{Router, RouterConfig};
use molt_store::{DeploymentRecord, EnvRecord, EnvState, InstanceState, Store};
use tempfile::TempDir;

use crate::{ControlConfig, Controller, DeployRequest};

/// The rollback window of the fixture's releases.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The watch of the fixture's releases.
const WATCH: Duration = Duration::from_secs(5 * 60);

/// A controller over a temp data dir, with app `shop` and a manual clock.
struct Fixture {
    controller: Controller,
    clock: Arc<ManualClock>,
    images: ImageStore,
    _tmp: TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with(|_| {}).await
    }

    /// A fixture whose controller settings are adjusted by `adjust`.
    async fn with(adjust: impl FnOnce(&mut ControlConfig)) -> Fixture {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&tmp.path().join("state.db")).expect("store");
        let images = ImageStore::open(&tmp.path().join("images")).expect("image store");
        let owner = format!("ctltest{}", tmp.path().display()).replace('/', "");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let mut config = ControlConfig {
            logs_dir: tmp.path().join("logs"),
            clock: clock.clone(),
            ..ControlConfig::default()
        };
        adjust(&mut config);
        let controller = Controller::new(
            store,
            images.clone(),
            Arc::new(LocalProvider::new(owner)),
            Router::new(RouterConfig::default()),
            config,
        );
        Fixture {
            controller,
            clock,
            images,
            _tmp: tmp,
        }
    }

    /// Imports a one-file image whose content is `text`, and records it.
    async fn image(&self, text: &str) -> Digest {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("server"), text).expect("write");
        let mut tar = Vec::new();
        ImageStore::write_canonical_tar(dir.path(), &mut tar).expect("tar");
        let imported = self.images.import_tar(&tar[..]).expect("import");
        let (digest, size) = (imported.digest.clone(), imported.size);
        self.db(move |s| s.put_image(&digest, size)).await;
        imported.digest
    }

    /// Release vN of `shop` running `image`; returns N.
    async fn release(&self, image: &Digest) -> u64 {
        let manifest = format!(
            "name = \"shop\"\ncommand = [\"./server\"]\n[health]\ninterval = \"20ms\"\n\
             [deploy]\nwatch = \"{}s\"\nrollback_window = \"{}s\"\n",
            WATCH.as_secs(),
            WINDOW.as_secs()
        );
        let config = Manifest::parse(&manifest, "molt.toml")
            .expect("manifest")
            .config;
        let image = image.clone();
        self.db(move |s| s.create_release("shop", &image, &config, "test"))
            .await
            .number
    }

    /// A ready environment of release `n` with one instance in `state`.
    async fn env(&self, n: u64, state: InstanceState) -> String {
        self.db(move |s| {
            let env = s.create_env("shop", n, None)?;
            s.set_env_state(&env.id, EnvState::Ready)?;
            let inst = s.create_instance(&env.id, "127.0.0.1", 1)?;
            s.set_instance_state(&inst.id, state, None)?;
            Ok(env.id)
        })
        .await
    }

    /// Points the route at `env`; the environment it leaves stays warm for the window.
    async fn route(&self, env: &str) {
        let env = env.to_string();
        self.db(move |s| s.swap_route("shop", &env, None, Some(WINDOW.as_millis() as u64)))
            .await;
    }

    /// A deployment of release `n` that swapped from `prev` to `env` and drained: its task,
    /// once launched, watches.
    async fn drained(&self, n: u64, prev: &str, env: &str) -> DeploymentRecord {
        let (prev, env) = (prev.to_string(), env.to_string());
        self.db(move |s| {
            let d = s.create_deployment("shop", n, Some(&prev), None)?;
            s.attach_env(d.id, &env)?;
            s.advance(d.id, DeployEvent::InstancesStarted, "started")?;
            s.advance(d.id, DeployEvent::BecameHealthy, "healthy")?;
            let window = Some(WINDOW.as_millis() as u64);
            s.swap_route(
                "shop",
                &env,
                Some((d.id, DeployEvent::Swapped, "swap")),
                window,
            )?;
            s.advance(d.id, DeployEvent::DrainFinished, "drained")?;
            s.deployment(d.id)
        })
        .await
    }

    /// Runs deployment `d`'s task, as a restart resumes it.
    async fn launch(&self, d: DeploymentRecord) {
        let takeover = self.controller.take_over(&d.app).await;
        self.controller.launch_deployment(&takeover, d);
    }

    /// Waits (≤ 10 s) until deployment `id` is in `state`.
    async fn reach(&self, id: u64, state: DeployState) -> DeploymentRecord {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.db(move |s| s.deployment(id)).await;
            if d.state == state {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} stuck in {}",
                d.state
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Deploys release `n` again.
    async fn deploy(&self, n: u64) -> DeploymentRecord {
        let request = DeployRequest {
            image: None,
            manifest: None,
            release: Some(n),
            shadow: None,
            from: None,
            note: None,
        };
        self.controller
            .deploy("shop", request)
            .await
            .expect("deploy")
    }

    /// Waits (≤ 10 s) until the app's history has an event starting with `prefix`.
    async fn event(&self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.events().await.iter().any(|e| e.starts_with(prefix)) {
            assert!(Instant::now() < deadline, "no {prefix} event");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn env_record(&self, id: &str) -> EnvRecord {
        let id = id.to_string();
        self.db(move |s| s.env(&id)).await
    }

    async fn routed(&self) -> Option<String> {
        self.db(|s| Ok(s.app("shop")?.routed_env)).await
    }

    async fn events(&self) -> Vec<String> {
        let events = self.controller.events(Some("shop".into()), 100).await;
        let events = events.expect("events");
        events
            .into_iter()
            .map(|e| format!("{}: {}", e.kind, e.message))
            .collect()
    }

    async fn db<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, molt_store::StoreError> + Send + 'static,
    {
        self.controller.db(f).await.expect("store")
    }

    async fn stop(self) {
        self.controller.shutdown().await;
    }
}
