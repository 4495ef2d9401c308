//! One router against three: the same closed-loop keep-alive load (the xtask load generator)
//! against one `molt router`, then spread over three, then against one router with two
//! threads (as many serving threads as the three together can use on two CPUs), alternating
//! so drift hits every case alike. Every process shares this machine's CPUs, so three routers
//! cannot add capacity here; the figures say what spreading costs or saves, not how a fleet
//! scales on separate machines.

use std::time::Duration;

use anyhow::Result;
use molt_cli::Client;

use super::routers::Fleet;
use super::{progress, Length, HOST};
use crate::child::group_cpu_time;
use crate::load::{self, LoadResult, LoadSpec, Protocol};

/// Connections of every load run (16 per router when spread over three).
pub(crate) const CONCURRENCY: usize = 48;
const WARMUP: Duration = Duration::from_secs(1);
const MAX_REQUESTS_PER_CONNECTION: usize = 2_000_000;

/// The figures of every case.
pub(crate) struct Throughput {
    pub(crate) duration: Duration,
    pub(crate) cases: Vec<Case>,
}

/// One way of serving the load.
pub(crate) struct Case {
    pub(crate) label: &'static str,
    /// The routers loaded, by name.
    pub(crate) routers: Vec<&'static str>,
    pub(crate) runs: Vec<Run>,
}

/// One load run of a case.
pub(crate) struct Run {
    pub(crate) result: LoadResult,
    /// User + system CPU time of the loaded routers per successful request, µs.
    pub(crate) cpu_per_request_us: f64,
}

impl Case {
    /// The median run's requests per second.
    pub(crate) fn median_per_second(&self) -> f64 {
        median(self.runs.iter().map(|r| r.result.per_second()).collect())
    }

    pub(crate) fn median_p50_us(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|r| r.result.p50.as_secs_f64() * 1e6)
                .collect(),
        )
    }

    pub(crate) fn median_p99_us(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|r| r.result.p99.as_secs_f64() * 1e6)
                .collect(),
        )
    }

    pub(crate) fn median_cpu_per_request_us(&self) -> f64 {
        median(self.runs.iter().map(|r| r.cpu_per_request_us).collect())
    }

    pub(crate) fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.result.errors).sum()
    }
}

impl Throughput {
    /// Median req/s of case `label` over the first case's.
    pub(crate) fn ratio(&self, label: &str) -> f64 {
        let base = self.cases.first().map_or(0.0, Case::median_per_second);
        let case = self
            .cases
            .iter()
            .find(|c| c.label == label)
            .map_or(0.0, Case::median_per_second);
        case / base.max(1e-9)
    }
}

/// Starts a two-thread router (`wide`), then loads the cases in turn, `rounds` times.
pub(crate) async fn measure(
    fleet: &mut Fleet,
    client: &Client,
    length: Length,
) -> Result<Throughput> {
    fleet.start("wide", 2).await?;
    fleet.wait_in_step(client).await?;
    let mut cases = vec![
        Case {
            label: "1 router (1 thread)",
            routers: vec!["r1"],
            runs: Vec::new(),
        },
        Case {
            label: "3 routers (1 thread each)",
            routers: vec!["r1", "r2", "r3"],
            runs: Vec::new(),
        },
        Case {
            label: "1 router (2 threads)",
            routers: vec!["wide"],
            runs: Vec::new(),
        },
    ];
    let duration = length.load_duration();
    progress("warming up the load paths");
    for case in &cases {
        load::run(&spec(fleet, &case.routers, WARMUP)?).await?;
    }
    for round in 1..=length.throughput_rounds() {
        for case in &mut cases {
            let pgids: Vec<u32> = case
                .routers
                .iter()
                .map(|name| fleet.router(name).map(|r| r.process.pid()))
                .collect::<Result<_>>()?;
            let cpu_before: Duration = pgids.iter().map(|p| group_cpu_time(*p)).sum();
            let result = load::run(&spec(fleet, &case.routers, duration)?).await?;
            let cpu_after: Duration = pgids.iter().map(|p| group_cpu_time(*p)).sum();
            let cpu = cpu_after.saturating_sub(cpu_before);
            let cpu_per_request_us = cpu.as_secs_f64() * 1e6 / (result.ok.max(1) as f64);
            progress(&format!(
                "round {round}: {} {:.0} req/s, {} errors, {cpu_per_request_us:.1} us CPU per request",
                case.label,
                result.per_second(),
                result.errors
            ));
            case.runs.push(Run {
                result,
                cpu_per_request_us,
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(Throughput { duration, cases })
}

fn spec(fleet: &Fleet, routers: &[&str], duration: Duration) -> Result<LoadSpec> {
    let targets = routers
        .iter()
        .map(|name| fleet.router(name).map(|r| r.addr))
        .collect::<Result<_>>()?;
    Ok(LoadSpec {
        targets,
        host: HOST.to_string(),
        path: "/".to_string(),
        expected_body_len: None,
        concurrency: CONCURRENCY,
        duration,
        max_requests_per_connection: MAX_REQUESTS_PER_CONNECTION,
        protocol: Protocol::Http1,
        upload: None,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    crate::bench_core::interpolated_percentile(&values, 0.5)
}
