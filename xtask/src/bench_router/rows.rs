//! The rows of `bench router` after its cells, all through molt's router-server: route swaps
//! under load, the cost of 10 000 more hostnames, and clients over h2c against HTTP/1.1.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::{
    free_port, median, progress, spec, start_router, BodySize, Plan, PAUSE, SWAPS, SWAP_LEAD_IN,
};
use crate::child::group_cpu_time;
use crate::load::{self, LoadResult, Protocol};
use crate::router_server::HOST;

pub(crate) const SWAP_CONCURRENCY: usize = 64;
pub(crate) const EXTRA_ROUTES: usize = 10_000;
pub(crate) const ROUTES_CONCURRENCY: usize = 64;
/// Most throughput 10 000 routes may cost, in percent.
pub(crate) const ROUTES_LOSS_GOAL: f64 = 5.0;

/// Route swaps while load runs through molt.
pub(crate) struct SwapRow {
    pub(crate) load: LoadResult,
    /// Swaps the router-server did (asked: `SWAPS`).
    pub(crate) swaps: usize,
    /// From the first swap to the end of the last.
    pub(crate) swap_elapsed: Duration,
    pub(crate) publish_us: Vec<f64>,
    /// Error responses molt made itself (502/503/504), both environments.
    pub(crate) router_failed: u64,
    /// Requests the router assigned to blue and green.
    pub(crate) router_accepted: u64,
}

/// molt's throughput with 1 route and with `EXTRA_ROUTES` more, alternating runs, and the
/// router's CPU time per request in each run (steadier than req/s on a busy machine).
pub(crate) struct RoutesRow {
    pub(crate) one_route: Vec<f64>,
    pub(crate) many_routes: Vec<f64>,
    pub(crate) one_route_cpu_us: Vec<f64>,
    pub(crate) many_routes_cpu_us: Vec<f64>,
    /// How long publishing the big table took when the router started.
    pub(crate) publish_big_table: Duration,
}

/// molt's throughput with HTTP/1.1 clients and with h2c clients, alternating runs.
pub(crate) struct ProtocolRow {
    pub(crate) http1: Vec<f64>,
    pub(crate) h2c: Vec<f64>,
    /// p99 latency of the last run of each.
    pub(crate) http1_p99: Duration,
    pub(crate) h2c_p99: Duration,
}
impl SwapRow {
    /// Every swap done, inside the load window, and no request failed.
    pub(crate) fn passed(&self, plan: &Plan) -> bool {
        self.swaps == SWAPS
            && self.load.errors == 0
            && self.router_failed == 0
            && SWAP_LEAD_IN + self.swap_elapsed < plan.swap_load()
    }

    pub(crate) fn asked() -> usize {
        SWAPS
    }
}

impl RoutesRow {
    /// Throughput lost with `EXTRA_ROUTES` routes, in percent of the 1-route median.
    pub(crate) fn loss_percent(&self) -> f64 {
        let (one, many) = (median(&self.one_route), median(&self.many_routes));
        (one - many) / one.max(1e-9) * 100.0
    }

    /// CPU time per request added by `EXTRA_ROUTES` routes, in percent of the 1-route median.
    pub(crate) fn cpu_added_percent(&self) -> f64 {
        let (one, many) = (
            median(&self.one_route_cpu_us),
            median(&self.many_routes_cpu_us),
        );
        (many - one) / one.max(1e-9) * 100.0
    }
}

/// molt with 1 route (the lineup's) against a second router-server with `EXTRA_ROUTES` more,
/// alternating, small answers.
pub(super) async fn measure_routes(
    plan: &Plan,
    exe: &Path,
    dir: &Path,
    backend: SocketAddr,
    (one_route, one_route_pid): (SocketAddr, u32),
) -> Result<RoutesRow> {
    let addr = free_port()?;
    let mut many = start_router(exe, dir, "molt-10k", addr, backend, EXTRA_ROUTES, None)?;
    many.wait_until_answers(addr, HOST, "/").await?;
    // Both at the measured concurrency, so both pools hold as many upstream connections.
    for target in [one_route, addr] {
        load::run(&spec(
            target,
            BodySize::Small,
            ROUTES_CONCURRENCY,
            plan.warmup,
        ))
        .await?;
    }
    let mut row = RoutesRow {
        one_route: Vec::new(),
        many_routes: Vec::new(),
        one_route_cpu_us: Vec::new(),
        many_routes_cpu_us: Vec::new(),
        publish_big_table: Duration::ZERO,
    };
    for round in 1..=plan.routes_rounds {
        // A B, then B A: drift over the rounds hits both alike.
        let mut order = [(one_route, one_route_pid, false), (addr, many.pid(), true)];
        if round % 2 == 0 {
            order.reverse();
        }
        for (target, pid, many_routes) in order {
            tokio::time::sleep(PAUSE).await;
            let cpu = group_cpu_time(pid);
            let result = load::run(&spec(
                target,
                BodySize::Small,
                ROUTES_CONCURRENCY,
                plan.cell,
            ))
            .await?;
            let cpu_us = group_cpu_time(pid).saturating_sub(cpu).as_secs_f64() * 1e6
                / result.ok.max(1) as f64;
            if result.errors > 0 {
                bail!("{} requests failed in the 10 000 routes run", result.errors);
            }
            let (samples, cpu_samples) = if many_routes {
                (&mut row.many_routes, &mut row.many_routes_cpu_us)
            } else {
                (&mut row.one_route, &mut row.one_route_cpu_us)
            };
            samples.push(result.per_second());
            cpu_samples.push(cpu_us);
        }
        progress(&format!(
            "routes round {round}/{}: 1 route {:.0} req/s, {EXTRA_ROUTES} more {:.0} req/s",
            plan.routes_rounds,
            row.one_route[round - 1],
            row.many_routes[round - 1]
        ));
    }
    many.stop().await?;
    let report: Value = serde_json::from_str(many.stdout().trim())
        .with_context(|| format!("reading the 10k router-server's report {:?}", many.stdout()))?;
    row.publish_big_table =
        Duration::from_micros(report["initial_publish_us"].as_u64().unwrap_or(0));
    Ok(row)
}

/// molt's router with HTTP/1.1 clients against h2c clients (one stream in flight per
/// connection), alternating, small answers, at the routes row's concurrency.
pub(super) async fn measure_protocols(plan: &Plan, molt: SocketAddr) -> Result<ProtocolRow> {
    let run = |protocol, duration| {
        let mut spec = spec(molt, BodySize::Small, ROUTES_CONCURRENCY, duration);
        spec.protocol = protocol;
        spec
    };
    load::run(&run(Protocol::H2c, plan.warmup)).await?;
    let mut row = ProtocolRow {
        http1: Vec::new(),
        h2c: Vec::new(),
        http1_p99: Duration::ZERO,
        h2c_p99: Duration::ZERO,
    };
    for round in 1..=plan.routes_rounds {
        let mut order = [Protocol::Http1, Protocol::H2c];
        if round % 2 == 0 {
            order.reverse();
        }
        for protocol in order {
            tokio::time::sleep(PAUSE).await;
            let result = load::run(&run(protocol, plan.cell)).await?;
            if result.errors > 0 {
                bail!("{} requests failed in the {protocol:?} run", result.errors);
            }
            match protocol {
                Protocol::Http1 => {
                    row.http1.push(result.per_second());
                    row.http1_p99 = result.p99;
                }
                Protocol::H2c => {
                    row.h2c.push(result.per_second());
                    row.h2c_p99 = result.p99;
                }
            }
        }
        progress(&format!(
            "protocols round {round}/{}: HTTP/1.1 {:.0} req/s, h2c {:.0} req/s",
            plan.routes_rounds,
            row.http1[round - 1],
            row.h2c[round - 1]
        ));
    }
    Ok(row)
}

/// A router-server that swaps `SWAPS` times on SIGUSR1, sent once load is flowing.
pub(super) async fn measure_swaps(
    plan: &Plan,
    exe: &Path,
    dir: &Path,
    backend: SocketAddr,
) -> Result<SwapRow> {
    let addr = free_port()?;
    let mut server = start_router(
        exe,
        dir,
        "molt-swaps",
        addr,
        backend,
        0,
        Some(plan.swap_interval),
    )?;
    server.wait_until_answers(addr, HOST, "/").await?;
    load::run(&spec(addr, BodySize::Small, SWAP_CONCURRENCY, plan.warmup)).await?;
    tokio::time::sleep(PAUSE).await;
    let load_spec = spec(addr, BodySize::Small, SWAP_CONCURRENCY, plan.swap_load());
    let (load, signalled) = tokio::join!(load::run(&load_spec), async {
        tokio::time::sleep(SWAP_LEAD_IN).await;
        server.signal(Signal::SIGUSR1)
    });
    let load = load?;
    signalled.context("starting the swaps (SIGUSR1)")?;
    let status = server.stop().await?;
    if !status.success() {
        bail!("the swapping router-server exited with {status}");
    }
    let stdout = server.stdout();
    let report: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("reading the router-server's report {stdout:?}"))?;
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    let env_sum = |field: &str| {
        ["blue", "green"]
            .iter()
            .map(|env| report["envs"][env][field].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let row = SwapRow {
        load,
        swaps: usize::try_from(count("swaps")).unwrap_or(0),
        swap_elapsed: Duration::from_micros(count("swap_elapsed_us")),
        publish_us: report["publish_us"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect(),
        router_failed: env_sum("failed"),
        router_accepted: env_sum("accepted"),
    };
    progress(&format!(
        "swap under load: {} swaps in {:.0} ms, {} requests, {} errors",
        row.swaps,
        row.swap_elapsed.as_secs_f64() * 1000.0,
        row.load.ok,
        row.load.errors
    ));
    Ok(row)
}
