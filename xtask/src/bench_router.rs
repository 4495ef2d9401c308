//! `xtask bench router`: molt's router side by side with nginx, HAProxy and Caddy, in one run
//! on one machine, against one backend process, with one load generator and the same
//! keep-alive settings (HTTP/1.1 both ways):
//!
//! 1. requests/s and p50/p99/p99.9 latency for each target — the backend direct, molt's router
//!    (`xtask router-server`, its own process), `molt serve` itself, nginx, HAProxy, Caddy — at
//!    each concurrency and response size, the targets interleaved within each cell so drift
//!    hits them alike;
//! 2. swap under load: 100 route swaps blue <-> green while load runs through molt; every
//!    request must succeed;
//! 3. the cost of 10 000 hostnames in molt's table against 1 (goal: < 5 % throughput loss);
//! 4. molt's router with clients speaking h2c (prior knowledge) against HTTP/1.1, alternating
//!    runs;
//! 5. h2 over TLS, HTTP/1.1 over TLS and h2c cells for molt, `molt serve` and the peers,
//!    loaded by h2load (installed from Debian's nghttp2-client when missing), with a
//!    self-signed certificate the bench makes.
//!
//! The backend of every target is one process: the bench backend deployed by `molt serve` as
//! an app of one instance.
//!
//! The HTTP/1.1 cells are GETs of a small and a 64 KiB answer, and POSTs of a 4 KiB and a
//! 1 MiB body (answered small; the backend reads every body to its end). nginx and HAProxy
//! get as many workers/threads as molt's router has threads (two).

mod h2;
mod rows;
mod serve;

pub(crate) use rows::{
    ProtocolRow, RoutesRow, SwapRow, EXTRA_ROUTES, ROUTES_CONCURRENCY, ROUTES_LOSS_GOAL,
    SWAP_CONCURRENCY,
};

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::backend::{BIG_BODY_LEN, BIG_PATH};
use crate::child::{group_cpu_time, ChildProcess};
use crate::h2load::H2;
use crate::load::{self, LoadResult, LoadSpec, Protocol};
use crate::peers::{Availability, Peer};
use crate::router_report::{print_table, to_json};
use crate::router_server::{RouterServerArgs, Serving, HOST};
use crate::Output;
use h2::measure_h2;

/// The backend's small answer is `hello from {APP} {RELEASE}\n`: 32 bytes.
const APP: &str = "molt-router-bench";
const RELEASE: &str = "v1";
const SWAPS: usize = 100;
/// Load runs this long before the first swap.
const SWAP_LEAD_IN: Duration = Duration::from_millis(300);
/// Bounds memory and time of a load run even on a machine far faster than expected.
const MAX_REQUESTS_PER_CONNECTION: usize = 2_000_000;
/// Between two load runs, so the previous one's connections are gone.
const PAUSE: Duration = Duration::from_millis(200);

/// How much to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunLength {
    /// Every concurrency, 3 s per cell.
    Full,
    /// A smoke run: c=16 and c=64, 1 s per cell.
    Quick,
}

/// Durations and sweeps of a run, derived from its [`RunLength`].
pub(crate) struct Plan {
    pub(crate) length: RunLength,
    pub(crate) cell: Duration,
    warmup: Duration,
    pub(crate) concurrencies: &'static [usize],
    pub(crate) swap_interval: Duration,
    pub(crate) routes_rounds: usize,
}

/// What the requests of a cell carry and get: a GET of a small or a large answer, or a POST
/// of a body (streamed through the proxy) answered small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodySize {
    /// `hello from ...`, 32 bytes.
    Small,
    /// 64 KiB.
    Big,
    /// A 4 KiB request body.
    Post4KiB,
    /// A 1 MiB request body.
    Post1MiB,
}

/// Where a load run sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The backend itself: the ceiling for every proxy.
    Direct,
    /// molt's router (`xtask router-server`).
    Molt,
    /// `molt serve`, as users run it: its router and its TLS listener.
    MoltServe,
    /// A peer proxy.
    Peer(Peer),
}

/// A peer and whether it took part.
pub(crate) struct PeerInfo {
    pub(crate) peer: Peer,
    /// Its version, or why it was skipped.
    pub(crate) outcome: Result<String, String>,
}

/// One target's load run.
pub(crate) struct Run {
    pub(crate) target: Target,
    pub(crate) load: LoadResult,
    /// CPU time the proxy's processes used per successful request (none for direct).
    pub(crate) proxy_cpu_per_request: Option<Duration>,
}

/// Every target at one response size and concurrency.
pub(crate) struct Cell {
    pub(crate) size: BodySize,
    pub(crate) concurrency: usize,
    pub(crate) runs: Vec<Run>,
}

/// Every HTTP/2 target at one protocol and concurrency (small answers, h2load).
pub(crate) struct H2Cell {
    pub(crate) protocol: H2,
    pub(crate) concurrency: usize,
    pub(crate) runs: Vec<Run>,
}

/// The HTTP/2 cells, or why they were not measured.
pub(crate) struct H2Figures {
    pub(crate) cells: Vec<H2Cell>,
    /// Why h2load, or a target, did not run.
    pub(crate) skipped: Vec<String>,
}

/// Everything one run measured.
pub(crate) struct RouterFigures {
    pub(crate) plan: Plan,
    pub(crate) small_body_len: usize,
    pub(crate) peers: Vec<PeerInfo>,
    pub(crate) cells: Vec<Cell>,
    pub(crate) swap: SwapRow,
    pub(crate) routes: RoutesRow,
    /// h2 over TLS and h2c cells.
    pub(crate) h2: H2Figures,
    pub(crate) protocols: ProtocolRow,
}

/// The processes and addresses of one run; dropping it stops every process.
struct Lineup {
    backend: SocketAddr,
    targets: Vec<Endpoint>,
    children: Vec<ChildProcess>,
}

/// A target, its address and the process group of the proxy serving it.
struct Endpoint {
    target: Target,
    addr: SocketAddr,
    proxy_group: Option<u32>,
}

impl Plan {
    fn of(length: RunLength) -> Plan {
        match length {
            RunLength::Full => Plan {
                length,
                cell: Duration::from_secs(3),
                warmup: Duration::from_secs(1),
                concurrencies: &[1, 16, 64, 256],
                swap_interval: Duration::from_millis(20),
                routes_rounds: 6,
            },
            RunLength::Quick => Plan {
                length,
                cell: Duration::from_secs(1),
                warmup: Duration::from_millis(300),
                concurrencies: &[16, 64],
                swap_interval: Duration::from_millis(5),
                routes_rounds: 4,
            },
        }
    }

    /// Long enough for the lead-in and every swap, with room for slow publishes.
    fn swap_load(&self) -> Duration {
        SWAP_LEAD_IN + self.swap_interval * (SWAPS as u32) * 3 / 2 + Duration::from_millis(300)
    }
}

impl BodySize {
    pub(crate) const ALL: [BodySize; 4] = [
        BodySize::Small,
        BodySize::Big,
        BodySize::Post4KiB,
        BodySize::Post1MiB,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            BodySize::Small => "small",
            BodySize::Big => "64KiB",
            BodySize::Post4KiB => "POST4K",
            BodySize::Post1MiB => "POST1M",
        }
    }

    fn path(self) -> &'static str {
        match self {
            BodySize::Big => BIG_PATH,
            BodySize::Small | BodySize::Post4KiB | BodySize::Post1MiB => "/",
        }
    }

    /// The length of the answer.
    fn len(self) -> usize {
        match self {
            BodySize::Big => BIG_BODY_LEN,
            BodySize::Small | BodySize::Post4KiB | BodySize::Post1MiB => small_body().len(),
        }
    }

    /// The request body, for the POST cells.
    fn upload(self) -> Option<bytes::Bytes> {
        let len = match self {
            BodySize::Small | BodySize::Big => return None,
            BodySize::Post4KiB => 4 * 1024,
            BodySize::Post1MiB => 1024 * 1024,
        };
        Some(bytes::Bytes::from(vec![b'x'; len]))
    }
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Molt => "molt",
            Target::MoltServe => "molt serve",
            Target::Peer(peer) => peer.name(),
        }
    }
}

impl Cell {
    /// `target`'s requests/s over nginx's, when nginx ran.
    pub(crate) fn vs_nginx(&self, result: &LoadResult) -> Option<f64> {
        self.result(Target::Peer(Peer::Nginx))
            .map(|nginx| result.per_second() / nginx.per_second().max(1e-9))
    }

    pub(crate) fn result(&self, target: Target) -> Option<&LoadResult> {
        self.runs
            .iter()
            .find(|run| run.target == target)
            .map(|run| &run.load)
    }
}

impl H2Cell {
    /// `target`'s requests/s over nginx's, when nginx ran.
    pub(crate) fn vs_nginx(&self, result: &LoadResult) -> Option<f64> {
        self.runs
            .iter()
            .find(|run| run.target == Target::Peer(Peer::Nginx))
            .map(|nginx| result.per_second() / nginx.load.per_second().max(1e-9))
    }
}

impl RouterFigures {
    /// Failed requests anywhere in the run.
    pub(crate) fn load_errors(&self) -> u64 {
        let cells: u64 = self
            .cells
            .iter()
            .flat_map(|c| &c.runs)
            .map(|run| run.load.errors)
            .sum();
        let h2: u64 = self
            .h2
            .cells
            .iter()
            .flat_map(|c| &c.runs)
            .filter(|run| matches!(run.target, Target::Molt | Target::MoltServe))
            .map(|run| run.load.errors)
            .sum();
        cells + h2 + self.swap.load.errors
    }
}

impl Lineup {
    fn address(&self, target: Target) -> Option<SocketAddr> {
        self.targets
            .iter()
            .find(|e| e.target == target)
            .map(|e| e.addr)
    }

    /// Stops every process, reporting those that do not stop cleanly.
    async fn stop(mut self) {
        for mut child in self.children.drain(..).rev() {
            let pid = child.pid();
            if let Err(e) = child.stop().await {
                progress(&format!("pid {pid}: {e:#}"));
            }
        }
    }
}

/// Installs missing peers, runs the benchmark, prints the figures; fails if any request
/// failed or the swaps did not all happen under load.
pub async fn run(length: RunLength, output: Output) -> Result<()> {
    let plan = Plan::of(length);
    // Declared first: removed only after every process using it has stopped.
    let scratch = tempfile::Builder::new()
        .prefix("molt-bench-router-")
        .tempdir()
        .context("creating a temp dir")?;
    let figures = tokio::select! {
        figures = measure(plan, scratch.path()) => figures?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    match output {
        Output::Table => print_table(&figures),
        Output::Json => println!("{:#}", to_json(&figures)),
    }
    if figures.load_errors() > 0 {
        bail!(
            "{} requests failed during the load runs (must be 0)",
            figures.load_errors()
        );
    }
    if !figures.swap.passed(&figures.plan) {
        bail!("the swap-under-load row failed (see above)");
    }
    Ok(())
}

async fn measure(plan: Plan, dir: &Path) -> Result<RouterFigures> {
    let mut peers = Vec::new();
    let mut ready = Vec::new();
    for peer in Peer::ALL {
        match peer.ensure_installed().await {
            Availability::Ready(path) => {
                let version = peer.version(&path);
                ready.push((peer, path));
                peers.push(PeerInfo {
                    peer,
                    outcome: Ok(version),
                });
            }
            Availability::Skipped(why) => {
                progress(&format!("skipped: {why}"));
                peers.push(PeerInfo {
                    peer,
                    outcome: Err(why),
                });
            }
        }
    }

    let exe = std::env::current_exe().context("locating the xtask executable")?;
    let files = h2::self_signed_certificate(dir)?;
    let served = serve::start(dir, &files).await?;
    let lineup = start_lineup(&exe, dir, &ready, &mut peers, &served).await?;
    let measured = match measure_with(&plan, &exe, dir, &lineup).await {
        Ok(measured) => Ok((
            measured,
            measure_h2(&plan, &exe, dir, &files, &served, &ready).await,
        )),
        Err(e) => Err(e),
    };
    // Stopped before the figures (or the error) are printed.
    lineup.stop().await;
    if let Err(e) = served.serve.stop().await {
        progress(&format!("molt serve: {e:#}"));
    }
    let ((cells, swap, routes, protocols), h2) = measured?;
    Ok(RouterFigures {
        plan,
        small_body_len: small_body().len(),
        peers,
        cells,
        swap,
        routes,
        protocols,
        h2: h2?,
    })
}

async fn measure_with(
    plan: &Plan,
    exe: &Path,
    dir: &Path,
    lineup: &Lineup,
) -> Result<(Vec<Cell>, SwapRow, RoutesRow, ProtocolRow)> {
    progress("warming up every target");
    for endpoint in &lineup.targets {
        for size in BodySize::ALL {
            load::run(&spec(endpoint.addr, size, 16, plan.warmup)).await?;
        }
    }
    let mut cells = Vec::new();
    for size in BodySize::ALL {
        for &concurrency in plan.concurrencies {
            let mut runs = Vec::new();
            for endpoint in &lineup.targets {
                tokio::time::sleep(PAUSE).await;
                let cpu = endpoint.proxy_group.map(group_cpu_time);
                let load = load::run(&spec(endpoint.addr, size, concurrency, plan.cell)).await?;
                let proxy_cpu_per_request = endpoint.proxy_group.zip(cpu).map(|(group, before)| {
                    (group_cpu_time(group).saturating_sub(before)) / (load.ok.max(1) as u32)
                });
                runs.push(Run {
                    target: endpoint.target,
                    load,
                    proxy_cpu_per_request,
                });
            }
            let cell = Cell {
                size,
                concurrency,
                runs,
            };
            progress(&format!(
                "{} c={concurrency}: {}",
                size.label(),
                cell.runs
                    .iter()
                    .map(|run| format!("{} {:.0}", run.target.name(), run.load.per_second()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            cells.push(cell);
        }
    }
    let molt = lineup
        .address(Target::Molt)
        .ok_or_else(|| anyhow!("molt's router is not in the lineup"))?;
    let molt_pid = lineup
        .targets
        .iter()
        .find(|e| e.target == Target::Molt)
        .and_then(|e| e.proxy_group)
        .ok_or_else(|| anyhow!("molt's router has no process"))?;
    let routes = rows::measure_routes(plan, exe, dir, lineup.backend, (molt, molt_pid)).await?;
    let protocols = rows::measure_protocols(plan, molt).await?;
    let swap = rows::measure_swaps(plan, exe, dir, lineup.backend).await?;
    Ok((cells, swap, routes, protocols))
}

/// Starts molt's router and every ready peer in front of `served`'s instance, and waits until
/// each answers. A peer that does not start is skipped, with its reason in `peers`.
async fn start_lineup(
    exe: &Path,
    dir: &Path,
    ready: &[(Peer, std::path::PathBuf)],
    peers: &mut [PeerInfo],
    served: &serve::Served,
) -> Result<Lineup> {
    let backend = served.instance;
    let mut lineup = Lineup {
        backend,
        targets: vec![Endpoint {
            target: Target::Direct,
            addr: backend,
            proxy_group: None,
        }],
        children: Vec::new(),
    };

    let molt = free_port()?;
    let mut child = start_router(exe, dir, "molt", molt, backend, 0, None)?;
    child.wait_until_answers(molt, HOST, "/").await?;
    lineup.targets.push(Endpoint {
        target: Target::Molt,
        addr: molt,
        proxy_group: Some(child.pid()),
    });
    lineup.children.push(child);
    lineup.targets.push(Endpoint {
        target: Target::MoltServe,
        addr: served.serve.router,
        proxy_group: Some(served.serve.pid()),
    });

    for (peer, path) in ready {
        let addr = free_port()?;
        let started = match peer.start(path, dir, addr, backend) {
            Ok(mut child) => child
                .wait_until_answers(addr, HOST, "/")
                .await
                .map(|()| child),
            Err(e) => Err(e),
        };
        match started {
            Ok(child) => {
                lineup.targets.push(Endpoint {
                    target: Target::Peer(*peer),
                    addr,
                    proxy_group: Some(child.pid()),
                });
                lineup.children.push(child);
            }
            Err(e) => {
                progress(&format!("skipped: {e:#}"));
                if let Some(info) = peers.iter_mut().find(|i| i.peer == *peer) {
                    info.outcome = Err(format!("{} did not start (see above)", peer.name()));
                }
            }
        }
    }
    progress(&format!(
        "up: {}",
        lineup
            .targets
            .iter()
            .map(|e| format!("{} {}", e.target.name(), e.addr))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(lineup)
}

/// Starts `xtask router-server` on `listen`, swapping on SIGUSR1 when `swap_interval` is set.
fn start_router(
    exe: &Path,
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    backend: SocketAddr,
    extra_routes: usize,
    swap_interval: Option<Duration>,
) -> Result<ChildProcess> {
    let args = RouterServerArgs {
        listen,
        backends: vec![backend],
        extra_routes,
        swaps: if swap_interval.is_some() { SWAPS } else { 0 },
        swap_interval: swap_interval.unwrap_or_default(),
        serving: Serving::Threads,
        tls: None,
    };
    let mut command = Command::new(exe);
    command.args(args.to_args());
    ChildProcess::spawn(name, command, dir)
}

fn spec(addr: SocketAddr, size: BodySize, concurrency: usize, duration: Duration) -> LoadSpec {
    LoadSpec {
        targets: vec![addr],
        host: HOST.to_string(),
        path: size.path().to_string(),
        expected_body_len: Some(size.len()),
        concurrency,
        duration,
        max_requests_per_connection: MAX_REQUESTS_PER_CONNECTION,
        protocol: Protocol::Http1,
        upload: size.upload(),
    }
}

/// What the backend answers on `/`: its app is `APP` and `molt serve` deploys it as release 1.
fn small_body() -> String {
    format!("hello from {APP} {RELEASE}\n")
}

/// A loopback port nobody listens on right now (the kernel's pick; the child binds it next).
fn free_port() -> Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free loopback port")?;
    listener.local_addr().context("reading the port")
}

pub(crate) fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Progress goes to stderr so that `--json` leaves stdout to the document.
fn progress(message: &str) {
    eprintln!("bench router: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_answer_is_about_32_bytes() {
        assert_eq!(BodySize::Small.len(), 32);
        assert_eq!(BodySize::Big.len(), 65_536);
    }

    #[test]
    fn swaps_fit_in_the_swap_load() {
        for length in [RunLength::Full, RunLength::Quick] {
            let plan = Plan::of(length);
            assert!(SWAP_LEAD_IN + plan.swap_interval * SWAPS as u32 <= plan.swap_load());
        }
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
