//! `xtask bench core`: the figures the core issue asks for, measured against a real
//! `molt serve` child process and a fast native app:
//!
//! 1. deploy → swap: a config change deploys a new release blue/green; molt's own record
//!    (`figures.to_swap_ms`) and what a client sees (POST until the router answers the new
//!    release);
//! 2. warm rollback: molt's `swap.elapsed_us` and the client's POST-to-new-answer round trip;
//! 3. router throughput against the app's instances hit directly, in the same run;
//! 4. idle RSS of `molt serve`, empty and with the app deployed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use molt_cli::Client;
use serde_json::{json, Value};

use crate::load::{self, Connection, LoadResult, LoadSpec, Protocol};
use crate::report::{print_table, to_json};
use crate::serve::Serve;
use crate::Output;

pub(crate) const APP: &str = "bench";
const HOST: &str = "bench.localhost";
const DEPLOYS: usize = 10;
const ROLLBACKS: usize = 20;
const CONCURRENCIES: [usize; 3] = [1, 16, 64];
pub(crate) const LOAD_DURATION: Duration = Duration::from_secs(3);
const WARMUP_DURATION: Duration = Duration::from_secs(1);
/// Bounds memory and time of a load run even on a machine far faster than expected.
const MAX_REQUESTS_PER_CONNECTION: usize = 2_000_000;
/// How long a deployment may take to reach its cutover before the benchmark gives up.
const DEPLOY_LIMIT: Duration = Duration::from_secs(60);
pub(crate) const DEPLOY_GOAL_MS: f64 = 1000.0;
pub(crate) const ROLLBACK_GOAL_MS: f64 = 10.0;

/// The manifest of the backend the benchmarks deploy (a copy of this executable), 2
/// instances; environments stay warm for 15 minutes, longer than a benchmark.
pub(crate) fn backend_manifest(app: &str) -> String {
    format!(
        r#"name = "{app}"
command = ["./backend", "backend"]
instances = 2
[health]
path = "/healthz"
interval = "1s"
healthy_threshold = 1
start_deadline = "10s"
[deploy]
watch = "1s"
rollback_window = "15m"
"#
    )
}

/// Everything one run measured.
pub(crate) struct Figures {
    pub(crate) serve_pid: u32,
    pub(crate) first_deploy_ms: f64,
    pub(crate) deploy_molt_ms: Vec<f64>,
    pub(crate) deploy_client_ms: Vec<f64>,
    pub(crate) rollback_molt_ms: Vec<f64>,
    pub(crate) rollback_client_ms: Vec<f64>,
    pub(crate) instances: Vec<SocketAddr>,
    pub(crate) throughput: Vec<ThroughputRow>,
    pub(crate) rss_empty_mib: f64,
    pub(crate) rss_deployed_mib: f64,
}

/// Router and direct load at one concurrency.
pub(crate) struct ThroughputRow {
    pub(crate) concurrency: usize,
    pub(crate) direct: LoadResult,
    pub(crate) molt: LoadResult,
}

/// Median, 90th percentile and maximum of a handful of samples.
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) p90: f64,
    pub(crate) max: f64,
}

impl Figures {
    pub(crate) fn load_errors(&self) -> u64 {
        self.throughput
            .iter()
            .map(|r| r.direct.errors + r.molt.errors)
            .sum()
    }

    pub(crate) fn ratio_at(&self, concurrency: usize) -> f64 {
        self.throughput
            .iter()
            .find(|r| r.concurrency == concurrency)
            .map_or(0.0, ThroughputRow::ratio)
    }
}

impl ThroughputRow {
    /// Requests per second through molt over requests per second direct.
    pub(crate) fn ratio(&self) -> f64 {
        self.molt.per_second() / self.direct.per_second().max(1e-9)
    }
}

impl Summary {
    pub(crate) fn of(samples: &[f64]) -> Summary {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            median: interpolated_percentile(&sorted, 0.5),
            p90: interpolated_percentile(&sorted, 0.9),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }

    pub(crate) fn to_json(&self, samples: &[f64]) -> Value {
        json!({ "median": self.median, "p90": self.p90, "max": self.max, "samples": samples })
    }
}

/// Builds molt, runs the benchmark against a fresh `molt serve`, prints the figures.
pub async fn run(output: Output) -> Result<()> {
    let binary = build_molt()?;
    let serve = Serve::start(&binary).await?;
    let figures = tokio::select! {
        figures = measure(&serve) => figures?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    match output {
        Output::Table => print_table(&figures),
        Output::Json => println!("{:#}", to_json(&figures)),
    }
    progress("stopping molt serve (SIGTERM)");
    serve.stop().await?;
    if figures.load_errors() > 0 {
        bail!(
            "{} requests failed during the load runs (must be 0)",
            figures.load_errors()
        );
    }
    Ok(())
}

async fn measure(serve: &Serve) -> Result<Figures> {
    let client = &serve.client;
    // Let start-up allocations settle before calling it idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty_mib = serve.rss_mib()?;
    progress(&format!(
        "molt serve pid {} up, router on {}, idle RSS {rss_empty_mib:.1} MiB",
        serve.pid(),
        serve.router
    ));

    let app_dir = write_backend_app(serve.scratch_dir(), "app", &backend_manifest(APP))?;
    let digest = import_image(client, &app_dir).await?;
    let started = Instant::now();
    let first = client
        .post(
            &format!("/v1/apps/{APP}/deployments"),
            &json!({ "image": digest, "manifest": backend_manifest(APP) }),
        )
        .await
        .context("deploying the bench app")?;
    let first = wait_cutover(client, id_of(&first)?).await?;
    let first_deploy_ms = started.elapsed().as_secs_f64() * 1000.0;
    progress(&format!(
        "first deploy (v{}) swapped after {first_deploy_ms:.0} ms",
        first["release"]
    ));

    let mut probe = Connection::open(serve.router).await?;
    let (deploy_molt_ms, deploy_client_ms) = measure_deploys(client, &mut probe).await?;
    let (rollback_molt_ms, rollback_client_ms) = measure_rollbacks(client, &mut probe).await?;
    drop(probe);

    let instances = routed_instances(client, APP).await?;
    let throughput = measure_throughput(serve.router, &instances).await?;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_deployed_mib = serve.rss_mib()?;
    Ok(Figures {
        serve_pid: serve.pid(),
        first_deploy_ms,
        deploy_molt_ms,
        deploy_client_ms,
        rollback_molt_ms,
        rollback_client_ms,
        instances,
        throughput,
        rss_empty_mib,
        rss_deployed_mib,
    })
}

/// `DEPLOYS` config changes, each a new release deployed blue/green: (molt ms, client ms).
async fn measure_deploys(client: &Client, probe: &mut Connection) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut molt_ms, mut client_ms) = (Vec::new(), Vec::new());
    for i in 1..=DEPLOYS {
        let started = Instant::now();
        let deployment = client
            .post(
                &format!("/v1/apps/{APP}/config"),
                &json!({ "set": { "N": i.to_string() } }),
            )
            .await
            .context("changing the config (a new release)")?;
        let release = deployment["release"]
            .as_u64()
            .ok_or_else(|| anyhow!("the deployment names no release: {deployment}"))?;
        let (seen, record) = tokio::try_join!(
            wait_for_release(probe, release, started, DEPLOY_LIMIT),
            wait_cutover(client, id_of(&deployment)?),
        )?;
        let recorded = record["figures"]["to_swap_ms"]
            .as_f64()
            .ok_or_else(|| anyhow!("the deployment has no figures.to_swap_ms: {record}"))?;
        molt_ms.push(recorded);
        client_ms.push(ms(seen));
        progress(&format!(
            "deploy {i}/{DEPLOYS} (v{release}): molt {recorded:.0} ms, client {:.0} ms",
            ms(seen)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((molt_ms, client_ms))
}

/// `ROLLBACKS` warm rollbacks, each undoing the previous: (molt ms, client ms).
async fn measure_rollbacks(
    client: &Client,
    probe: &mut Connection,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut molt_ms, mut client_ms) = (Vec::new(), Vec::new());
    let mut serving = serving_release(client).await?;
    for i in 1..=ROLLBACKS {
        let started = Instant::now();
        let outcome = client
            .post(&format!("/v1/apps/{APP}/rollback"), &json!({}))
            .await
            .context("rolling back")?;
        if outcome["kind"] != "warm" {
            bail!("rollback {i} was not warm (so not one route change): {outcome}");
        }
        let release = outcome["release"]
            .as_u64()
            .ok_or_else(|| anyhow!("the rollback names no release: {outcome}"))?;
        if release == serving {
            bail!("rollback {i} stayed on v{release}: nothing to measure");
        }
        let seen = wait_for_release(probe, release, started, Duration::from_secs(10)).await?;
        let elapsed_us = outcome["swap"]["elapsed_us"]
            .as_f64()
            .ok_or_else(|| anyhow!("the rollback has no swap.elapsed_us: {outcome}"))?;
        molt_ms.push(elapsed_us / 1000.0);
        client_ms.push(ms(seen));
        progress(&format!(
            "rollback {i}/{ROLLBACKS} (v{serving} -> v{release}): molt {:.2} ms, client {:.2} ms",
            elapsed_us / 1000.0,
            ms(seen)
        ));
        serving = release;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((molt_ms, client_ms))
}

/// Direct and through-molt load at each concurrency, interleaved so drift hits both alike.
async fn measure_throughput(
    router: SocketAddr,
    instances: &[SocketAddr],
) -> Result<Vec<ThroughputRow>> {
    let spec = |targets: Vec<SocketAddr>, concurrency, duration| LoadSpec {
        targets,
        host: HOST.to_string(),
        path: "/".to_string(),
        expected_body_len: None,
        concurrency,
        duration,
        max_requests_per_connection: MAX_REQUESTS_PER_CONNECTION,
        protocol: Protocol::Http1,
        upload: None,
    };
    progress("warming up the load paths");
    load::run(&spec(instances.to_vec(), 16, WARMUP_DURATION)).await?;
    load::run(&spec(vec![router], 16, WARMUP_DURATION)).await?;
    let mut rows = Vec::new();
    for concurrency in CONCURRENCIES {
        let direct = load::run(&spec(instances.to_vec(), concurrency, LOAD_DURATION)).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let molt = load::run(&spec(vec![router], concurrency, LOAD_DURATION)).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let row = ThroughputRow {
            concurrency,
            direct,
            molt,
        };
        progress(&format!(
            "load c={concurrency}: direct {:.0} req/s, molt {:.0} req/s",
            row.direct.per_second(),
            row.molt.per_second()
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// Polls through the router until it answers `release`; returns the time since `started`.
async fn wait_for_release(
    probe: &mut Connection,
    release: u64,
    started: Instant,
    limit: Duration,
) -> Result<Duration> {
    let expected = format!("hello from {APP} v{release}\n");
    loop {
        let (status, body) = probe
            .get(HOST, "/")
            .await
            .context("probing through the router")?;
        if status == 200 && body == expected.as_bytes() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!(
                "the router still answers {status} {:?} {limit:?} after the change to v{release}",
                String::from_utf8_lossy(&body)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Polls a deployment until the route has moved and the old environment drained.
pub(crate) async fn wait_cutover(client: &Client, id: u64) -> Result<Value> {
    let deadline = Instant::now() + DEPLOY_LIMIT;
    loop {
        let v = client.get(&format!("/v1/deployments/{id}")).await?;
        let deployment = &v["deployment"];
        match deployment["state"].as_str().unwrap_or("") {
            "drained" | "succeeded" => return Ok(deployment.clone()),
            state @ ("failed" | "rolled_back" | "superseded") => bail!(
                "deployment {id} ended {state}: {}",
                deployment["error"]
                    .as_str()
                    .unwrap_or("(no error recorded)")
            ),
            state if Instant::now() > deadline => {
                bail!("deployment {id} still {state} after {DEPLOY_LIMIT:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn serving_release(client: &Client) -> Result<u64> {
    let status = client.get(&format!("/v1/status?app={APP}")).await?;
    status["apps"][0]["serving"]["number"]
        .as_u64()
        .ok_or_else(|| anyhow!("{APP} serves no release: {status}"))
}

/// The instances of the routed environment, where direct load goes.
pub(crate) async fn routed_instances(client: &Client, app: &str) -> Result<Vec<SocketAddr>> {
    let status = client.get(&format!("/v1/status?app={app}")).await?;
    let envs = status["apps"][0]["envs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let routed = envs
        .iter()
        .find(|e| e["routed"] == true)
        .ok_or_else(|| anyhow!("no routed environment for {app}: {status}"))?;
    let ports: Vec<SocketAddr> = routed["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] == "healthy")
        .filter_map(|i| i["port"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    if ports.is_empty() {
        bail!("the routed environment has no healthy instance: {routed}");
    }
    Ok(ports)
}

/// An app folder `scratch/folder`: a copy of this executable as `backend`, and the manifest
/// of `app`.
pub(crate) fn write_backend_app(scratch: &Path, folder: &str, manifest: &str) -> Result<PathBuf> {
    let dir = scratch.join(folder);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("locating the xtask executable")?;
    std::fs::copy(&exe, dir.join("backend"))
        .with_context(|| format!("copying {} into the app folder", exe.display()))?;
    std::fs::write(dir.join("molt.toml"), manifest).context("writing molt.toml")?;
    Ok(dir)
}

/// Imports a folder as an image (its canonical tar); returns the digest.
pub(crate) async fn import_image(client: &Client, dir: &Path) -> Result<String> {
    let dir_owned = dir.to_path_buf();
    let tar = tokio::task::spawn_blocking(move || {
        let mut tar = Vec::new();
        molt_image::ImageStore::write_canonical_tar(&dir_owned, &mut tar).map(|_| tar)
    })
    .await
    .context("the tar task panicked")?
    .with_context(|| format!("packing {}", dir.display()))?;
    let image = client
        .post_bytes("/v1/images", tar)
        .await
        .context("importing the image")?;
    image["digest"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the import answered no digest: {image}"))
}

/// Builds `molt` (release) with the cargo that runs us; returns the binary's path.
pub(crate) fn build_molt() -> Result<PathBuf> {
    let workspace = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    progress("building molt (cargo build --release -p molt)");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "molt"])
        .current_dir(&workspace)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build --release -p molt failed ({status})");
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    let binary = target.join("release").join("molt");
    if !binary.is_file() {
        bail!("cargo built molt but {} is not there", binary.display());
    }
    Ok(binary)
}

pub(crate) fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

pub(crate) fn id_of(deployment: &Value) -> Result<u64> {
    deployment["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("the API answered no deployment id: {deployment}"))
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Progress goes to stderr so that `--json` leaves stdout to the document.
fn progress(message: &str) {
    eprintln!("bench core: {message}");
}

/// Percentile of sorted samples with linear interpolation between closest ranks.
pub(crate) fn interpolated_percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => {
            let position = p * (n - 1) as f64;
            let (low, high) = (position.floor() as usize, position.ceil() as usize);
            sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_ten_samples() {
        let samples: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = Summary::of(&samples);
        assert_eq!((s.median, s.max), (5.5, 10.0));
        assert!((s.p90 - 9.1).abs() < 1e-9);
        assert_eq!(Summary::of(&[]).max, 0.0);
    }
}
