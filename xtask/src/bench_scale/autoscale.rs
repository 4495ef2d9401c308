//! The autoscaler's cells of `bench scale`, through a release `molt serve` (plain processes)
//! and the example app answering each request after 100 ms (`DELAY_MS`):
//!
//! - **reaction to a load step**: from 1 instance at rest, 16 keep-alive clients start at once
//!   (about 16 requests in flight, 2 per instance wanted, at most 8 instances): the time from
//!   the step to the first new instance taking traffic (healthy in `molt status`, so in the
//!   route table), and to the full count; after the load, the time back to 1;
//! - **a cold start from zero**: an app at `min = 0` idles to zero instances; one GET is held by
//!   the router while an instance starts, and answered: the time it took, per run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use molt_cli::Client;
use serde_json::{json, Value};

use crate::bench_core::import_image;
use crate::load::Connection;
use crate::serve::Serve;

/// Keep-alive clients of the load step.
const CLIENTS: usize = 16;
/// What each request waits in the app.
const DELAY_MS: u32 = 100;
/// Longest wait for any one thing the autoscaler should do.
const LIMIT: Duration = Duration::from_secs(60);
/// Cold starts measured.
const COLD_STARTS: usize = 3;

/// What the autoscaler did.
#[derive(Default)]
pub(super) struct AutoscaleFigures {
    /// Step → a second instance healthy (ms).
    pub first_new_ms: f64,
    /// Step → the count the load asks for, all healthy (ms).
    pub full_ms: f64,
    /// That count.
    pub full_count: u64,
    /// Load end → back to one instance (ms).
    pub back_ms: f64,
    /// Requests answered and failed during the step.
    pub answered: u64,
    pub failed: u64,
    /// Held request → answered, per cold start (ms).
    pub cold_ms: Vec<f64>,
}

pub(super) async fn measure(binary: &Path) -> Result<AutoscaleFigures> {
    let serve = Serve::start(binary).await?;
    let client = &serve.client;
    let dir = example_app(serve.scratch_dir())?;
    let digest = import_image(client, &dir).await?;

    let step = format!(
        "[scale]\nmin = 1\nmax = 8\nconcurrency = 2\nwindow = \"6s\"\npanic_window = \"2s\"\n\
         scale_down_delay = \"2s\"\n{CHECKS}"
    );
    deploy(client, "step", &digest, &step).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let step = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            let router = serve.router;
            tokio::spawn(async move {
                let Ok(mut conn) = Connection::open(router).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let deadline = Instant::now() + 2 * LIMIT;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match conn.get("step.localhost", "/").await {
                        Ok((200, _)) => answered.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    wait_until(client, "step", |desired, healthy| {
        desired > 1 && healthy > 1
    })
    .await?;
    let first_new_ms = ms(step.elapsed());
    let full = wait_until(client, "step", |desired, healthy| {
        desired >= 4 && healthy == desired as usize
    })
    .await
    .map(|(_, count)| (ms(step.elapsed()), count));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let (full_ms, full_count) = full?;
    let ended = Instant::now();
    wait_until(client, "step", |desired, healthy| {
        desired == 1 && healthy == 1
    })
    .await?;
    let back_ms = ms(ended.elapsed());

    let zero = format!(
        "[scale]\nmin = 0\nmax = 2\nwindow = \"2s\"\npanic_window = \"1s\"\n\
         scale_down_delay = \"1s\"\nidle = \"1s\"\n{CHECKS}"
    );
    deploy(client, "zero", &digest, &zero).await?;
    let mut cold_ms = Vec::new();
    for _ in 0..COLD_STARTS {
        wait_until(client, "zero", |desired, healthy| {
            desired == 0 && healthy == 0
        })
        .await?;
        let mut conn = Connection::open(serve.router).await?;
        let asked = Instant::now();
        let (status, body) = conn.get("zero.localhost", "/").await?;
        if status != 200 {
            bail!(
                "the held request got {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        cold_ms.push(ms(asked.elapsed()));
    }
    serve.stop().await?;
    Ok(AutoscaleFigures {
        first_new_ms,
        full_ms,
        full_count,
        back_ms,
        answered: answered.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        cold_ms,
    })
}

/// Health and deployment settings of both apps.
const CHECKS: &str = "[health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"2s\"\n\
    start_deadline = \"30s\"\n[deploy]\ndrain_timeout = \"5s\"\nwatch = \"1s\"\n\
    rollback_window = \"1m\"\n";

/// The example app, copied into the scratch dir.
fn example_app(scratch: &Path) -> Result<PathBuf> {
    let source = crate::bench_core::workspace_root().join("examples/hello/app.py");
    let dir = scratch.join("autoscale-app");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(&source, dir.join("app.py"))
        .with_context(|| format!("copying {}", source.display()))?;
    Ok(dir)
}

/// Deploys the image as `app` with these manifest lines, until its watch has passed.
async fn deploy(client: &Client, app: &str, digest: &str, lines: &str) -> Result<()> {
    let manifest = format!(
        "name = \"{app}\"\ncommand = [\"python3\", \"app.py\"]\n{lines}[env]\n\
         DELAY_MS = \"{DELAY_MS}\"\nPYTHONDONTWRITEBYTECODE = \"1\"\n"
    );
    let started = client
        .post(
            &format!("/v1/apps/{app}/deployments"),
            &json!({ "image": digest, "manifest": manifest }),
        )
        .await
        .with_context(|| format!("deploying {app}"))?;
    let id = started["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("no deployment id: {started}"))?;
    let deadline = Instant::now() + LIMIT;
    loop {
        let d = client.get(&format!("/v1/deployments/{id}")).await?;
        match d["deployment"]["state"].as_str() {
            Some("succeeded") => return Ok(()),
            Some("failed" | "rolled_back" | "superseded") => bail!("deploying {app}: {d}"),
            _ if Instant::now() > deadline => bail!("deploying {app} took too long: {d}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Polls `molt status` until `done(desired, healthy)` of the app's live environment; the
/// time it took and the desired count then.
async fn wait_until(
    client: &Client,
    app: &str,
    done: impl Fn(u64, usize) -> bool,
) -> Result<(f64, u64)> {
    let started = Instant::now();
    loop {
        let status = client.get(&format!("/v1/status?app={app}")).await?;
        let (desired, healthy) = live(&status);
        if done(desired, healthy) {
            return Ok((ms(started.elapsed()), desired));
        }
        if started.elapsed() > LIMIT {
            bail!("{app}: the autoscaler did not get there within {LIMIT:?}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (desired, healthy) of the live environment in a `molt status` answer.
fn live(status: &Value) -> (u64, usize) {
    let envs = status["apps"][0]["envs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(env) = envs.iter().find(|e| e["routed"] == json!(true)) else {
        return (0, 0);
    };
    let healthy = env["instances"]
        .as_array()
        .map_or(0, |i| i.iter().filter(|i| i["state"] == "healthy").count());
    (env["desired"].as_u64().unwrap_or(0), healthy)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
