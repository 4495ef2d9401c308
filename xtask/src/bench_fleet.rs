//! `xtask bench fleet`: what a fleet of routers costs and what it keeps, measured against real
//! processes — a release `molt serve`, `molt router` processes following it over its API, and,
//! where the machine has them, a Docker swarm and runc:
//!
//! 1. **acknowledged cutover** (`cutover.rs`): swaps back and forth between two warm
//!    environments with no fleet router, with one and with three: the API's answer (a swap
//!    returns once every live router has acknowledged it), molt's own `swap.elapsed_us`, when
//!    each router's next request shows the new environment (one probe per router, independent
//!    of the API), and each router's apply + save time from its own log;
//! 2. **requests across swaps**: the same swaps again while keep-alive clients spread over the
//!    three routers send requests: answered and failed (must be 0);
//! 3. **one router against three** (`throughput.rs`): the same load against one router, then
//!    spread over three, on one machine;
//! 4. **deploy → swap on Docker Swarm and on runc** (`deploys.rs`) for 2 and 20 instances, from
//!    molt's deployment record, with the time of each journaled step.
//!
//! Nothing is asserted about time: the figures are printed, and the run fails (after printing
//! them) only when a request failed, a router still served the old environment after the API
//! said a swap was in force, or a provider row that could run did not.

pub(crate) mod cutover;
pub(crate) mod deploys;
mod docker;
mod report;
mod routers;
mod throughput;
mod traffic;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench_core::{build_molt, interpolated_percentile, ms};
use crate::serve::Serve;
use crate::Output;

/// The app whose two environments the swaps move between (its hostname is `fleet.localhost`).
pub(crate) const APP: &str = "fleet";
pub(crate) const HOST: &str = "fleet.localhost";
/// Rounds of the disk reference (a router's save of its table).
const FSYNC_ROUNDS: usize = 50;

/// How long the benchmark runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// 200 swaps per row, 3 s load runs in 3 rounds, 3 deploys per provider and size.
    Full,
    /// 30 swaps per row, 1 s load runs in 1 round, 1 deploy per provider and size.
    Quick,
}

/// Everything one run measured.
pub(crate) struct Figures {
    pub(crate) serve_pid: u32,
    pub(crate) load_average_before: String,
    pub(crate) load_average_after: String,
    pub(crate) cutover: Vec<cutover::CutoverRow>,
    /// One small file written, fsynced, renamed and its directory fsynced, as a router saves
    /// each table before acknowledging it: the disk's share of an acknowledged swap.
    pub(crate) fsync_ms: Vec<f64>,
    pub(crate) throughput: throughput::Throughput,
    pub(crate) deploys: Vec<deploys::ProviderRun>,
}

/// Median, 90th and 99th percentiles and maximum of samples.
pub(crate) struct Stats {
    pub(crate) median: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Length {
    fn swaps(self) -> usize {
        match self {
            Length::Full => 200,
            Length::Quick => 30,
        }
    }

    fn throughput_rounds(self) -> usize {
        match self {
            Length::Full => 3,
            Length::Quick => 1,
        }
    }

    fn load_duration(self) -> Duration {
        match self {
            Length::Full => Duration::from_secs(3),
            Length::Quick => Duration::from_secs(1),
        }
    }

    fn deploys_per_size(self) -> usize {
        match self {
            Length::Full => 3,
            Length::Quick => 1,
        }
    }
}

impl Figures {
    /// Requests through the routers that failed during the swaps (probes and load).
    pub(crate) fn failed_requests(&self) -> u64 {
        self.cutover.iter().map(cutover::CutoverRow::failed).sum()
    }

    /// Swaps after whose answer a router still served the old environment.
    pub(crate) fn stale_swaps(&self) -> usize {
        self.cutover.iter().map(|row| row.stale).sum()
    }

    /// Provider rows that could run and did not.
    pub(crate) fn failed_providers(&self) -> Vec<String> {
        self.deploys
            .iter()
            .filter_map(|run| match &run.outcome {
                deploys::Outcome::Failed(why) => Some(format!("{}: {why}", run.provider)),
                _ => None,
            })
            .collect()
    }
}

impl Stats {
    pub(crate) fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Stats {
            median: interpolated_percentile(&sorted, 0.5),
            p90: interpolated_percentile(&sorted, 0.9),
            p99: interpolated_percentile(&sorted, 0.99),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }

    pub(crate) fn to_json(&self, samples: &[f64]) -> Value {
        json!({
            "median": self.median,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.max,
            "samples": samples,
        })
    }
}

/// Builds molt, measures, prints the figures; fails afterwards if a request failed.
pub async fn run(length: Length, output: Output) -> Result<()> {
    let binary = build_molt()?;
    let figures = tokio::select! {
        figures = measure(&binary, length) => figures?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    match output {
        Output::Table => report::print_table(&figures),
        Output::Json => println!("{:#}", report::to_json(&figures)),
    }
    let (failed, stale) = (figures.failed_requests(), figures.stale_swaps());
    if failed > 0 || stale > 0 {
        bail!(
            "{failed} requests failed across the swaps and {stale} swaps were answered while a \
             router still served the old environment (both must be 0)"
        );
    }
    let providers = figures.failed_providers();
    if !providers.is_empty() {
        bail!("deploy rows failed: {}", providers.join("; "));
    }
    Ok(())
}

async fn measure(binary: &Path, length: Length) -> Result<Figures> {
    let load_average_before = load_average();
    let serve = Serve::start(binary).await?;
    progress(&format!(
        "molt serve pid {} up, its router on {}; load average {load_average_before}",
        serve.pid(),
        serve.router
    ));
    let envs = cutover::two_warm_environments(&serve).await?;
    let fsync_ms = fsync_reference(serve.scratch_dir())?;
    let mut fleet = routers::Fleet::new(binary, &serve)?;
    let swaps = length.swaps();
    let client = &serve.client;

    let mut rows = Vec::new();
    let own = [routers::Watched::new("serve", serve.router)];
    rows.push(cutover::measure(client, &envs, &fleet, &own, swaps, cutover::Load::None).await?);
    fleet.start("r1", 1).await?;
    fleet.wait_in_step(client).await?;
    let one = fleet.watched(&["r1"])?;
    rows.push(cutover::measure(client, &envs, &fleet, &one, swaps, cutover::Load::None).await?);
    fleet.start("r2", 1).await?;
    fleet.start("r3", 1).await?;
    fleet.wait_in_step(client).await?;
    let three = fleet.watched(&["r1", "r2", "r3"])?;
    rows.push(cutover::measure(client, &envs, &fleet, &three, swaps, cutover::Load::None).await?);
    let load = cutover::Load::Spread {
        connections_per_router: 2,
    };
    rows.push(cutover::measure(client, &envs, &fleet, &three, swaps, load).await?);

    let throughput = throughput::measure(&mut fleet, client, length).await?;
    progress("stopping the routers and molt serve (SIGTERM)");
    fleet.stop().await?;
    let serve_pid = serve.pid();
    serve.stop().await?;

    let deploys = deploys::measure(binary, length).await;
    Ok(Figures {
        serve_pid,
        load_average_after: load_average(),
        load_average_before,
        cutover: rows,
        fsync_ms,
        throughput,
        deploys,
    })
}

/// Times what a router does to save a table before it acknowledges it — a small file written,
/// fsynced and renamed, then its directory fsynced — on the filesystem the routers keep their
/// state on.
fn fsync_reference(scratch: &Path) -> Result<Vec<f64>> {
    let dir: PathBuf = scratch.join("fsync-reference");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let content = vec![b'x'; 1024];
    let mut samples = Vec::with_capacity(FSYNC_ROUNDS);
    for _ in 0..FSYNC_ROUNDS {
        let started = Instant::now();
        let tmp = dir.join("table.json.tmp");
        let mut file = std::fs::File::create(&tmp).context("creating the reference file")?;
        file.write_all(&content)
            .context("writing the reference file")?;
        file.sync_all().context("fsyncing the reference file")?;
        std::fs::rename(&tmp, dir.join("table.json")).context("renaming the reference file")?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .context("fsyncing the reference directory")?;
        samples.push(ms(started.elapsed()));
    }
    Ok(samples)
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Progress goes to stderr so that `--json` leaves stdout to the document.
pub(crate) fn progress(message: &str) {
    eprintln!("bench fleet: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_hundred_samples() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Stats::of(&samples);
        assert!((s.median - 50.5).abs() < 1e-9);
        assert!((s.p99 - 99.01).abs() < 1e-9);
        assert_eq!(s.max, 100.0);
        assert_eq!(Stats::of(&[]).max, 0.0);
    }
}
