//! deploy → swap on Docker Swarm next to runc, for 2 and 20 instances: a fresh `molt serve`
//! per provider (`--isolation runc`; `--provider swarm` with a `docker-registry` on loopback,
//! the API over TLS on `docker_gwbridge`'s gateway and the fleet's router published on a free
//! port), the same busybox-static app whose image carries its own root, and molt's own record
//! of each deployment: created → swapped (`figures.to_swap_ms`, as `bench core` reads it) and
//! the journal's step times. Between deploys the environment left is collected (`POST /v1/gc`
//! once its one-second rollback window has passed), so each deploy starts from one running
//! environment.
//!
//! A row the machine cannot run (no root, no runc, no dockerd in swarm mode, …) is skipped with
//! the reason; whatever a row started is removed however it ends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use molt_cli::Client;
use molt_runtime::RuncProvider;
use serde_json::{json, Value};

use super::docker::{free_port, Docker, Registry, SwarmLeftovers, SOCKET};
use super::{progress, Length};
use crate::bench_core::import_image;
use crate::load::Connection;
use crate::serve::Serve;

const BUSYBOX: &str = "/bin/busybox";
const APP: &str = "web";
const HOST: &str = "web.localhost";
const BODY: &[u8] = b"hello from web\n";
/// The sizes deployed, in instances.
pub(crate) const SIZES: [usize; 2] = [2, 20];
/// The journaled steps from created to swapped, in order.
pub(crate) const STEPS: [&str; 4] = ["env_created", "instances_started", "healthy", "swapped"];
/// How long one deployment may take, and its watch plus collection.
const DEPLOY_LIMIT: Duration = Duration::from_secs(300);
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// How long the fleet's router on the swarm may take to follow (its image is built from molt's
/// executable, pushed and pulled first).
const FLEET_LIMIT: Duration = Duration::from_secs(180);
/// The name molt serve gives its fleet's service (molt-swarm's `ROUTER_SERVICE`; no flag of
/// `molt serve` changes it).
const ROUTER_SERVICE: &str = "molt-router";

/// One provider's row: measured, skipped or failed.
pub(crate) struct ProviderRun {
    pub(crate) provider: &'static str,
    pub(crate) outcome: Outcome,
}

/// What became of a provider's row.
pub(crate) enum Outcome {
    Measured(ProviderFigures),
    /// The machine cannot run it: what it needs.
    Skipped(String),
    /// It could run and did not.
    Failed(String),
}

/// A provider's deploys.
pub(crate) struct ProviderFigures {
    /// The first deploy of the app (the image is new to the provider).
    pub(crate) first: DeployTiming,
    /// Per size in [`SIZES`], its deploys.
    pub(crate) sizes: Vec<(usize, Vec<DeployTiming>)>,
}

/// One deployment as molt recorded it.
pub(crate) struct DeployTiming {
    /// `figures.to_swap_ms`: created → swapped.
    pub(crate) to_swap_ms: f64,
    /// The time of each of [`STEPS`] since the one before (the first since created), ms.
    pub(crate) steps_ms: [f64; 4],
}

/// Measures runc, then Swarm.
pub(crate) async fn measure(binary: &Path, length: Length) -> Vec<ProviderRun> {
    let runs = length.deploys_per_size();
    let runc = match runc_missing() {
        Some(why) => Outcome::Skipped(why),
        None => outcome(measure_runc(binary, runs).await),
    };
    report("runc", &runc);
    let swarm = match swarm_missing().await {
        Some(why) => Outcome::Skipped(why),
        None => outcome(measure_swarm(binary, runs).await),
    };
    report("swarm", &swarm);
    vec![
        ProviderRun {
            provider: "runc",
            outcome: runc,
        },
        ProviderRun {
            provider: "swarm",
            outcome: swarm,
        },
    ]
}

fn outcome(measured: Result<ProviderFigures>) -> Outcome {
    match measured {
        Ok(figures) => Outcome::Measured(figures),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

fn report(provider: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Measured(_) => {}
        Outcome::Skipped(why) => progress(&format!("{provider}: skipped: needs {why}")),
        Outcome::Failed(why) => progress(&format!("{provider}: failed: {why}")),
    }
}

/// What the runc row needs that the machine lacks.
fn runc_missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("root (runc creates namespaces and cgroups)".into());
    }
    if !RuncProvider::runc_available(Path::new("runc")) {
        return Some("runc (apt-get install runc)".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!("{BUSYBOX} (apt-get install busybox-static)"));
    }
    None
}

/// What the Swarm row needs that the machine lacks.
async fn swarm_missing() -> Option<String> {
    if !Path::new(SOCKET).exists() {
        return Some(format!(
            "a running dockerd ({SOCKET}; apt-get install docker.io)"
        ));
    }
    if !in_path("docker-registry") {
        return Some("docker-registry (apt-get install docker-registry)".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!("{BUSYBOX} (apt-get install busybox-static)"));
    }
    let docker = Docker::new(SOCKET);
    let info = match docker.get("/info").await {
        Ok(info) => info,
        Err(e) => return Some(format!("a dockerd answering on {SOCKET} ({e:#})")),
    };
    if info["Swarm"]["LocalNodeState"] != "active" || info["Swarm"]["ControlAvailable"] != true {
        return Some("a swarm manager (`docker swarm init`)".into());
    }
    match docker.exists(&format!("/services/{ROUTER_SERVICE}")).await {
        Ok(false) => None,
        Ok(true) => Some(format!(
            "a swarm without a service named {ROUTER_SERVICE} (one runs: another molt's fleet; \
             molt serve names its fleet's service so)"
        )),
        Err(e) => Some(format!("a dockerd that lists services ({e:#})")),
    }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

async fn measure_runc(binary: &Path, runs: usize) -> Result<ProviderFigures> {
    progress("runc: starting molt serve --isolation runc");
    let serve = Serve::start_with(binary, &["--isolation", "runc"]).await?;
    let figures = deploy_series(
        &serve.client,
        serve.scratch_dir(),
        runs,
        serve.router,
        "runc",
    )
    .await;
    // SIGTERM stops every container (--stop-instances-on-exit), also when the series failed.
    let stopped = serve.stop().await;
    let figures = figures?;
    stopped?;
    Ok(figures)
}

async fn measure_swarm(binary: &Path, runs: usize) -> Result<ProviderFigures> {
    let docker = Docker::new(SOCKET);
    let gateway = docker_gateway(&docker).await?;
    // Dropped the other way round on an early return: molt serve first (SIGTERM: its
    // environments' services go with --stop-instances-on-exit), then what is left on the
    // swarm, then the registry, then its temp dir.
    let tmp = tempfile::Builder::new()
        .prefix("molt-bench-swarm-")
        .tempdir()
        .context("creating a temp dir for the registry")?;
    let registry = Registry::start(&tmp.path().join("registry")).await?;
    let network = format!("molt-bench-{}", std::process::id());
    let mut leftovers = SwarmLeftovers::new(
        &docker,
        &network,
        ROUTER_SERVICE,
        &format!("{}/", registry.addr),
    );
    let api_tls = free_port(&format!("{gateway}:0"))?;
    let router_port = free_port("0.0.0.0:0")?.port();
    progress(&format!(
        "swarm: starting molt serve --provider swarm (registry {}, API over TLS on {api_tls}, \
         the fleet's router on port {router_port}, network {network})",
        registry.addr
    ));
    let (registry_arg, tls_arg, port_arg) = (
        registry.addr.to_string(),
        api_tls.to_string(),
        router_port.to_string(),
    );
    let serve = Serve::start_with(
        binary,
        &[
            "--provider",
            "swarm",
            "--isolation",
            "none",
            "--registry",
            &registry_arg,
            "--api-tls-listen",
            &tls_arg,
            "--swarm-router-port",
            &port_arg,
            "--swarm-network",
            &network,
        ],
    )
    .await?;
    let owner = std::fs::read_to_string(serve.scratch_dir().join("data").join("owner.id"))
        .context("reading molt serve's owner.id")?;
    leftovers.owner = Some(owner.trim().chars().take(16).collect());
    let fleet_router = SocketAddr::from(([127, 0, 0, 1], router_port));
    let figures = async {
        wait_for_fleet(&serve.client).await?;
        deploy_series(
            &serve.client,
            serve.scratch_dir(),
            runs,
            fleet_router,
            "swarm",
        )
        .await
    }
    .await;
    let stopped = serve.stop().await;
    let removed = leftovers.remove().await;
    drop(registry);
    let figures = figures?;
    stopped?;
    removed?;
    Ok(figures)
}

/// The first deploy, then `runs` deploys of each size; the app must answer through `router`
/// at the end.
async fn deploy_series(
    client: &Client,
    scratch: &Path,
    runs: usize,
    router: SocketAddr,
    provider: &str,
) -> Result<ProviderFigures> {
    let dir = busybox_app(scratch)?;
    let digest = import_image(client, &dir).await?;
    let mut nonce = 0;
    let first = deploy(client, &digest, SIZES[0], nonce).await?;
    progress(&format!(
        "{provider}: first deploy ({} instances) swapped after {:.0} ms",
        SIZES[0], first.to_swap_ms
    ));
    let mut sizes = Vec::new();
    for instances in SIZES {
        let mut timings = Vec::with_capacity(runs);
        for run in 1..=runs {
            nonce += 1;
            let timing = deploy(client, &digest, instances, nonce).await?;
            progress(&format!(
                "{provider}: {instances} instances, deploy {run}/{runs}: swapped after {:.0} ms",
                timing.to_swap_ms
            ));
            timings.push(timing);
        }
        sizes.push((instances, timings));
    }
    let mut connection = Connection::open(router).await?;
    let (status, body) = connection.get(HOST, "/").await?;
    if status != 200 || body != BODY {
        bail!(
            "{provider}: the app answers {status} {:?} through {router} after the deploys",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(ProviderFigures { first, sizes })
}

/// Deploys `instances` instances of the app (a new release: `nonce` is in its `[env]`), waits
/// for its swap, then for its watch and the collection of the environment it left.
pub(crate) async fn deploy(
    client: &Client,
    digest: &str,
    instances: usize,
    nonce: u32,
) -> Result<DeployTiming> {
    let started = client
        .post(
            &format!("/v1/apps/{APP}/deployments"),
            &json!({ "image": digest, "manifest": manifest(instances, nonce) }),
        )
        .await
        .context("deploying the busybox app")?;
    let id = started["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("the API answered no deployment id: {started}"))?;
    let swapped = wait_for_state(client, id, &["drained", "succeeded"], DEPLOY_LIMIT).await?;
    let timing = timing_of(&swapped)?;
    wait_for_state(client, id, &["succeeded"], SETTLE_LIMIT).await?;
    // Its one-second rollback window is over once the watch has ended.
    let gc = client
        .post("/v1/gc", &json!({}))
        .await
        .context("collecting the environment left")?;
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let status = client.get(&format!("/v1/status?app={APP}")).await?;
        let envs = status["apps"][0]["envs"].as_array().map_or(0, Vec::len);
        if envs <= 1 {
            return Ok(timing);
        }
        if Instant::now() > deadline {
            bail!("{envs} environments of {APP} still live after GC ({gc}): {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls deployment `id` until it is in one of `states`; returns the deployment with its
/// journal (`GET /v1/deployments/{id}`).
async fn wait_for_state(
    client: &Client,
    id: u64,
    states: &[&str],
    limit: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let v = client.get(&format!("/v1/deployments/{id}")).await?;
        let state = v["deployment"]["state"].as_str().unwrap_or("").to_string();
        if states.contains(&state.as_str()) {
            return Ok(v);
        }
        if matches!(state.as_str(), "failed" | "rolled_back" | "superseded") {
            bail!(
                "deployment {id} ended {state}: {}",
                v["deployment"]["error"]
                    .as_str()
                    .unwrap_or("(no error recorded)")
            );
        }
        if Instant::now() > deadline {
            bail!("deployment {id} still {state} after {limit:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// created → swapped and the step times of a deployment with its journal.
fn timing_of(v: &Value) -> Result<DeployTiming> {
    let record = &v["deployment"];
    let to_swap_ms = record["figures"]["to_swap_ms"]
        .as_f64()
        .ok_or_else(|| anyhow!("the deployment has no figures.to_swap_ms: {record}"))?;
    let created = record["created_ms"]
        .as_f64()
        .ok_or_else(|| anyhow!("the deployment has no created_ms: {record}"))?;
    let journal = v["journal"].as_array().cloned().unwrap_or_default();
    let mut steps_ms = [0.0; 4];
    let mut before = created;
    for (k, step) in STEPS.iter().enumerate() {
        let at = journal
            .iter()
            .find(|entry| entry["state"] == *step)
            .and_then(|entry| entry["at_ms"].as_f64())
            .ok_or_else(|| anyhow!("the journal has no {step} step: {v}"))?;
        steps_ms[k] = at - before;
        before = at;
    }
    Ok(DeployTiming {
        to_swap_ms,
        steps_ms,
    })
}

/// Waits until the fleet's router on the swarm follows (connected and in step).
async fn wait_for_fleet(client: &Client) -> Result<()> {
    let started = Instant::now();
    loop {
        let cluster = client.get("/v1/cluster").await?;
        let following = cluster["routers"]["routers"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["connected"] == true && r["lag"] == 0));
        if following {
            progress(&format!(
                "swarm: the fleet's router follows after {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > FLEET_LIMIT {
            bail!("no router of the swarm's fleet follows after {FLEET_LIMIT:?}: {cluster}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The gateway of `docker_gwbridge`: how the swarm's tasks on this node reach the host.
async fn docker_gateway(docker: &Docker) -> Result<String> {
    let network = docker
        .get("/networks/docker_gwbridge")
        .await
        .context("describing docker_gwbridge (made by `docker swarm init`)")?;
    network["IPAM"]["Config"][0]["Gateway"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("docker_gwbridge has no gateway: {network}"))
}

/// The app: busybox's httpd serving one page, in an image that is its own root.
pub(crate) fn busybox_app(scratch: &Path) -> Result<PathBuf> {
    let dir = scratch.join("busybox-app");
    std::fs::create_dir_all(dir.join("bin")).context("creating the app folder")?;
    std::fs::create_dir_all(dir.join("www")).context("creating the app folder")?;
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).context("copying busybox")?;
    std::fs::write(dir.join("www/index.html"), BODY).context("writing the page")?;
    std::fs::write(dir.join("molt.toml"), manifest(SIZES[0], 0)).context("writing molt.toml")?;
    Ok(dir)
}

/// The manifest of a deploy: `instances` instances, health checked every 200 ms, a
/// one-second rollback window, `nonce` making each deploy a release of its own. busybox httpd
/// installs no SIGTERM handler: it stops on SIGTERM because an init is PID 1 in front of it
/// (molt's own on runc, Docker's on Swarm).
fn manifest(instances: usize, nonce: u32) -> String {
    format!(
        r#"name = "{APP}"
command = ["/bin/busybox", "httpd", "-f", "-p", "$PORT", "-h", "/www"]
instances = {instances}
[health]
path = "/"
interval = "200ms"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 3
start_deadline = "120s"
[deploy]
drain_timeout = "2s"
watch = "1s"
rollback_window = "1s"
[env]
BENCH_DEPLOY = "{nonce}"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_steps_of_a_journal() {
        let v = json!({
            "deployment": { "created_ms": 1000, "figures": { "to_swap_ms": 250 } },
            "journal": [
                { "at_ms": 1000, "state": "pending" },
                { "at_ms": 1010, "state": "env_created" },
                { "at_ms": 1050, "state": "instances_started" },
                { "at_ms": 1240, "state": "healthy" },
                { "at_ms": 1250, "state": "swapped" },
                { "at_ms": 1400, "state": "drained" },
            ],
        });
        let timing = timing_of(&v).expect("a complete journal");
        assert_eq!(timing.to_swap_ms, 250.0);
        assert_eq!(timing.steps_ms, [10.0, 40.0, 190.0, 10.0]);
        assert!(timing_of(&json!({ "deployment": {}, "journal": [] })).is_err());
    }
}
