//! Acknowledged swaps: N route changes back and forth between two warm environments of one
//! app, each timed three ways — the API's answer (`POST /v1/apps/{app}/swap` returns once
//! every live router has acknowledged the change), molt's own `swap.elapsed_us`, and, through
//! one probe per router (`traffic.rs`), when that router's next request shows the new
//! environment. Optionally under a load spread over the routers, whose every request must
//! succeed.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use molt_cli::Client;
use serde_json::{json, Value};

use super::routers::{Fleet, Watched};
use super::traffic::{note, Clients, LoadTally, Probe};
use super::{progress, APP};
use crate::bench_core::{backend_manifest, import_image, ms, write_backend_app};
use crate::serve::Serve;

/// Pause between two swaps, so each starts from a quiet fleet (reports sent, streams idle).
const BETWEEN_SWAPS: Duration = Duration::from_millis(20);
/// How long a deployment of the backend may take.
const DEPLOY_LIMIT: Duration = Duration::from_secs(60);

/// One of the two environments the swaps move between.
pub(crate) struct Target {
    pub(crate) env: String,
    /// What the backend answers there (`hello from fleet vN`).
    body: Bytes,
}

/// Whether and how requests run during the swaps.
#[derive(Clone, Copy)]
pub(crate) enum Load {
    None,
    /// Closed-loop keep-alive clients, this many connections per watched router.
    Spread {
        connections_per_router: usize,
    },
}

/// One row of swaps.
pub(crate) struct CutoverRow {
    /// The routers beyond molt serve's own (0, 1, 3).
    pub(crate) fleet_routers: usize,
    /// The routers the probes watched, by name.
    pub(crate) watched: Vec<String>,
    /// `POST /swap` round trips, ms.
    pub(crate) api_ms: Vec<f64>,
    /// molt's `swap.elapsed_us` (store, own router, fleet), ms.
    pub(crate) molt_ms: Vec<f64>,
    /// Per watched router and swap: when the first request showing the new environment was
    /// sent, ms after the swap was issued.
    pub(crate) shown_ms: Vec<Vec<f64>>,
    /// Per swap, the last of the watched routers.
    pub(crate) shown_last_ms: Vec<f64>,
    /// Every router's apply + save of each table, ms (from their logs).
    pub(crate) apply_ms: Vec<f64>,
    /// Swaps after whose answer a probe's request still saw the old environment.
    pub(crate) stale: usize,
    /// Probe requests that failed, with examples.
    pub(crate) probe_failed: u64,
    pub(crate) probe_examples: Vec<String>,
    /// The load during the swaps, if any.
    pub(crate) load: Option<LoadTally>,
}

impl CutoverRow {
    /// Failed requests through the routers: the probes' and the load's.
    pub(crate) fn failed(&self) -> u64 {
        self.probe_failed + self.load.as_ref().map_or(0, |l| l.failed)
    }

    /// How the row is named in the table.
    pub(crate) fn label(&self) -> String {
        let routers = match self.fleet_routers {
            0 => "no fleet router (molt serve's own router only)".to_string(),
            1 => "1 router".to_string(),
            n => format!("{n} routers"),
        };
        match &self.load {
            None => routers,
            Some(load) => format!(
                "{routers}, under load ({} keep-alive connections spread over them)",
                load.connections
            ),
        }
    }
}

/// Deploys the backend twice (v1, then a config change to v2) and returns both environments;
/// the route ends on v2's, v1's stays warm.
pub(crate) async fn two_warm_environments(serve: &Serve) -> Result<[Target; 2]> {
    let client = &serve.client;
    let app_dir = write_backend_app(serve.scratch_dir(), "fleet-app", &backend_manifest(APP))?;
    let digest = import_image(client, &app_dir).await?;
    let first = client
        .post(
            &format!("/v1/apps/{APP}/deployments"),
            &json!({ "image": digest, "manifest": backend_manifest(APP) }),
        )
        .await
        .context("deploying the backend")?;
    let first = wait_finished(client, &first).await?;
    let second = client
        .post(
            &format!("/v1/apps/{APP}/config"),
            &json!({ "set": { "BENCH": "v2" } }),
        )
        .await
        .context("changing the config (a second release)")?;
    let second = wait_finished(client, &second).await?;
    let target = |deployment: &Value| -> Result<Target> {
        let env = deployment["env"]
            .as_str()
            .ok_or_else(|| anyhow!("the deployment names no environment: {deployment}"))?;
        let release = deployment["release"]
            .as_u64()
            .ok_or_else(|| anyhow!("the deployment names no release: {deployment}"))?;
        Ok(Target {
            env: env.to_string(),
            body: Bytes::from(format!("hello from {APP} v{release}\n")),
        })
    };
    let targets = [target(&first)?, target(&second)?];
    progress(&format!(
        "{APP} has two warm environments, {} (v1) and {} (v2, routed)",
        targets[0].env, targets[1].env
    ));
    Ok(targets)
}

/// `swaps` swaps between `targets` with probes on `watched`, and the load `load` spread over
/// them.
pub(crate) async fn measure(
    client: &Client,
    targets: &[Target; 2],
    fleet: &Fleet,
    watched: &[Watched],
    swaps: usize,
    load: Load,
) -> Result<CutoverRow> {
    let fleet_routers = fleet.started();
    let probes: Vec<Probe> = watched.iter().map(Probe::start).collect::<Result<_>>()?;
    let mut routed = routed_target(client, targets).await?;
    let marks = fleet.log_marks();
    let clients = match load {
        Load::None => None,
        Load::Spread {
            connections_per_router,
        } => {
            let bodies = [targets[0].body.clone(), targets[1].body.clone()];
            let clients = Clients::start(watched, connections_per_router, bodies);
            // Let them get going before the first swap.
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some(clients)
        }
    };
    let mut row = CutoverRow {
        fleet_routers,
        watched: watched.iter().map(|w| w.name.clone()).collect(),
        api_ms: Vec::with_capacity(swaps),
        molt_ms: Vec::with_capacity(swaps),
        shown_ms: vec![Vec::with_capacity(swaps); watched.len()],
        shown_last_ms: Vec::with_capacity(swaps),
        apply_ms: Vec::new(),
        stale: 0,
        probe_failed: 0,
        probe_examples: Vec::new(),
        load: None,
    };
    let swapped = swap_many(client, targets, &probes, &mut routed, swaps, &mut row).await;
    if let Some(clients) = clients {
        row.load = Some(clients.finish().await?);
    }
    swapped?;
    // The routers log each table once applied and saved; give the last line a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    row.apply_ms = fleet.apply_ms_since(&marks);
    progress(&summary(&row));
    Ok(row)
}

/// The swaps themselves, recorded into `row`.
async fn swap_many(
    client: &Client,
    targets: &[Target; 2],
    probes: &[Probe],
    routed: &mut usize,
    swaps: usize,
    row: &mut CutoverRow,
) -> Result<()> {
    for i in 0..swaps {
        let (from, to) = (&targets[*routed], &targets[1 - *routed]);
        let started = Instant::now();
        let seen: Vec<_> = probes
            .iter()
            .map(|p| p.watch(started, &to.body, &from.body))
            .collect::<Result<_>>()?;
        let answer = client
            .post(&format!("/v1/apps/{APP}/swap"), &json!({ "env": to.env }))
            .await
            .with_context(|| format!("swap {} of {swaps} to {}", i + 1, to.env))?;
        let api = started.elapsed();
        if answer["to"] != to.env.as_str() {
            bail!("swap {} went elsewhere: {answer}", i + 1);
        }
        let elapsed_us = answer["elapsed_us"]
            .as_f64()
            .ok_or_else(|| anyhow!("the swap answered no elapsed_us: {answer}"))?;
        row.api_ms.push(ms(api));
        row.molt_ms.push(elapsed_us / 1000.0);
        let mut last = 0.0_f64;
        let mut stale = false;
        for (k, receiver) in seen.into_iter().enumerate() {
            let seen = receiver
                .await
                .map_err(|_| anyhow!("the probe of {} stopped", probes[k].name()))??;
            let shown = ms(seen.first_new);
            row.shown_ms[k].push(shown);
            last = last.max(shown);
            stale |= seen.last_old.is_some_and(|old| old > api);
            row.probe_failed += seen.failed;
            for example in seen.examples {
                note(
                    &mut row.probe_examples,
                    format!("{}: {example}", probes[k].name()),
                );
            }
        }
        row.shown_last_ms.push(last);
        row.stale += usize::from(stale);
        *routed = 1 - *routed;
        tokio::time::sleep(BETWEEN_SWAPS).await;
    }
    Ok(())
}

/// Which of `targets` the app's route points at now.
async fn routed_target(client: &Client, targets: &[Target; 2]) -> Result<usize> {
    let status = client.get(&format!("/v1/status?app={APP}")).await?;
    let envs = status["apps"][0]["envs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let routed = envs
        .iter()
        .find(|e| e["routed"] == true)
        .and_then(|e| e["env"]["id"].as_str())
        .ok_or_else(|| anyhow!("{APP} has no routed environment: {status}"))?;
    targets
        .iter()
        .position(|t| t.env == routed)
        .ok_or_else(|| anyhow!("{APP} is routed to {routed}, neither of the benchmark's"))
}

/// Waits until a deployment has swapped and finished its watch; returns its record.
async fn wait_finished(client: &Client, deployment: &Value) -> Result<Value> {
    let id = deployment["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("the API answered no deployment id: {deployment}"))?;
    let deadline = Instant::now() + DEPLOY_LIMIT;
    loop {
        let v = client.get(&format!("/v1/deployments/{id}")).await?;
        let record = &v["deployment"];
        match record["state"].as_str().unwrap_or("") {
            "succeeded" => return Ok(record.clone()),
            state @ ("failed" | "rolled_back" | "superseded") => bail!(
                "deployment {id} ended {state}: {}",
                record["error"].as_str().unwrap_or("(no error recorded)")
            ),
            state if Instant::now() > deadline => {
                bail!("deployment {id} still {state} after {DEPLOY_LIMIT:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// One progress line for a row.
fn summary(row: &CutoverRow) -> String {
    let median = |samples: &[f64]| super::Stats::of(samples).median;
    let load = row.load.as_ref().map_or(String::new(), |l| {
        format!(", load {} answered / {} failed", l.answered, l.failed)
    });
    format!(
        "{}: {} swaps, API median {:.2} ms, inside molt {:.2} ms, shown on the last router {:.2} ms{load}",
        row.label(),
        row.api_ms.len(),
        median(&row.api_ms),
        median(&row.molt_ms),
        median(&row.shown_last_ms),
    )
}
