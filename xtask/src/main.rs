//! Dev tooling for molt, run from the workspace root:
//!
//! ```text
//! cargo run --release -p xtask -- bench core          # deploy→swap, rollback, router vs direct, idle RSS
//! cargo run --release -p xtask -- bench core --json   # the same figures as JSON on stdout
//! cargo run --release -p xtask -- bench router        # molt's router vs nginx, HAProxy, Caddy
//! cargo run --release -p xtask -- bench bake          # molt bake: unchanged, one file changed, cold
//! cargo run --release -p xtask -- bench router --quick # the same, 1 s per cell, c=16 and 64
//! cargo run --release -p xtask -- bench sandbox       # container start -> first 200, density
//! cargo run --release -p xtask -- bench images        # image import/export MB/s vs skopeo copy, dedup
//! cargo run --release -p xtask -- bench fleet         # swaps acknowledged by 1 and 3 routers, Swarm vs runc
//! cargo run --release -p xtask -- bench scale         # 50 and 100 runc instances: deploy, memory, stop
//! cargo run --release -p xtask -- bench canary        # a bad canary's abort, SIGKILLed instances under load
//! cargo run --release -p xtask -- backend             # the fast test app `bench core` deploys
//! cargo run -p xtask -- layers                        # the crates' dependencies vs the layering
//! ```
//!
//! `bench core` builds `molt` in release mode, starts `molt serve` as a child process on
//! port 0 with a temp data dir, deploys a copy of this very executable (its `backend`
//! subcommand) as the app, measures, and stops everything it started.
//!
//! `bench router` starts this executable's `backend`, its `router-server` (molt's router in
//! its own process) and nginx, HAProxy and Caddy (installed from Debian when missing and run
//! as root), loads each in turn, and stops everything it started.
//!
//! `bench fleet` starts a release `molt serve` and `molt router` processes following it, swaps
//! under their eyes, loads them, then deploys on runc and on Docker Swarm where the machine has
//! them, and removes everything it started (processes, services, network, registry).

mod backend;
mod bench_bake;
mod bench_canary;
mod bench_core;
mod bench_fleet;
mod bench_images;
mod bench_router;
mod bench_sandbox;
mod bench_scale;
mod child;
mod h2load;
mod layers;
mod load;
mod peers;
mod report;
mod router_report;
mod router_server;
mod serve;

use std::process::ExitCode;

use bench_router::RunLength;
use router_server::RouterServerArgs;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  bench core [--json]   measure deploy->swap, rollback, router vs direct throughput, idle RSS
  bench router [--quick] [--json]
                        molt's router vs direct, nginx, HAProxy and Caddy; swaps under load;
                        the cost of 10 000 routes
  bench bake [--json]   molt bake with nothing changed, after a one-file change and cold,
                        next to importing the folder as one layer
  bench sandbox [--json]
                        runc instance start -> first successful GET (vs a plain process),
                        and how many instances fit (needs root, runc, busybox-static)
  bench fleet [--quick] [--json]
                        swaps acknowledged by no, one and three `molt router`s (API answer,
                        when each router shows it), failed requests across swaps under load,
                        one router vs three, deploy->swap of 2 and 20 instances on Swarm and
                        runc (skipped with the reason where the machine lacks them)
  bench scale [--quick] [--json]
                        deploy->swap of 50 and 100 runc instances (busybox httpd under molt's
                        init), containers at once, memory per instance, and the stop of
                        molt serve with 100 instances (needs root, runc, busybox-static)
  bench canary [--json] a bad canary (30 % 500s at 5 %) under load: failed interval -> abort,
                        the share of client requests failed; instances SIGKILLed under load
  bench images [--quick] [--json]
                        image import/export MB/s next to `skopeo copy` of the same image;
                        storage of 20 releases each changing one file
  layers                check every crate's dependencies against the layering (the table in
                        xtask/src/layers.rs, drawn in ARCHITECTURE.md); also a test
  backend               serve `hello from $MOLT_APP $MOLT_RELEASE` on 127.0.0.1:$PORT
                        (and 64 KiB on /big)
  router-server --listen ADDR --backend ADDR... [--extra-routes N] [--swaps N]
                [--swap-interval-ms MS] [--serve threads|runtime]
                [--tls-listen ADDR --tls-cert PEM --tls-key PEM]
                        molt's router alone in this process (2 serving threads); SIGUSR1
                        starts the swaps, SIGTERM stops it and prints a JSON report";

/// What the command line asked for.
enum Task {
    Backend,
    BenchBake(Output),
    BenchCanary(Output),
    BenchCore(Output),
    BenchFleet(bench_fleet::Length, Output),
    BenchImages(bench_images::Size, Output),
    BenchRouter(RunLength, Output),
    BenchSandbox(Output),
    BenchScale(bench_scale::Length, Output),
    Layers,
    RouterServer(RouterServerArgs),
}

/// How a benchmark reports its figures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A table for people, and one summary line.
    Table,
    /// One JSON document on stdout.
    Json,
}

/// The molt binary's allocator, so `router-server` measures the router as `molt serve` runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = match parse(&args) {
        Ok(task) => task,
        Err(e) => {
            eprintln!("error: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Task::RouterServer(args) = &task {
        // With `--serve threads` the router has threads of its own; this runtime only
        // handles signals and swaps.
        builder.worker_threads(match args.serving {
            router_server::Serving::Threads => 1,
            router_server::Serving::Runtime => router_server::WORKER_THREADS,
        });
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match task {
        Task::Backend => runtime.block_on(backend::run()),
        Task::BenchBake(output) => runtime.block_on(bench_bake::run(output)),
        Task::BenchCanary(output) => runtime.block_on(bench_canary::run(output)),
        Task::BenchCore(output) => runtime.block_on(bench_core::run(output)),
        Task::BenchFleet(length, output) => runtime.block_on(bench_fleet::run(length, output)),
        Task::BenchImages(size, output) => runtime.block_on(bench_images::run(size, output)),
        Task::BenchRouter(length, output) => runtime.block_on(bench_router::run(length, output)),
        Task::RouterServer(args) => runtime.block_on(router_server::run(args)),
        Task::BenchSandbox(output) => bench_sandbox::run(output),
        Task::BenchScale(length, output) => runtime.block_on(bench_scale::run(length, output)),
        Task::Layers => layers::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> anyhow::Result<Task> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["backend"] => Ok(Task::Backend),
        ["layers"] => Ok(Task::Layers),
        ["bench", "bake"] => Ok(Task::BenchBake(Output::Table)),
        ["bench", "bake", "--json"] => Ok(Task::BenchBake(Output::Json)),
        ["bench", "canary"] => Ok(Task::BenchCanary(Output::Table)),
        ["bench", "canary", "--json"] => Ok(Task::BenchCanary(Output::Json)),
        ["bench", "core"] => Ok(Task::BenchCore(Output::Table)),
        ["bench", "core", "--json"] => Ok(Task::BenchCore(Output::Json)),
        ["bench", "sandbox"] => Ok(Task::BenchSandbox(Output::Table)),
        ["bench", "sandbox", "--json"] => Ok(Task::BenchSandbox(Output::Json)),
        ["bench", "router", flags @ ..] => {
            let (mut length, mut output) = (RunLength::Full, Output::Table);
            for flag in flags {
                match *flag {
                    "--quick" => length = RunLength::Quick,
                    "--json" => output = Output::Json,
                    other => anyhow::bail!("unknown bench router option {other:?}"),
                }
            }
            Ok(Task::BenchRouter(length, output))
        }
        ["bench", "fleet", flags @ ..] => {
            let (mut length, mut output) = (bench_fleet::Length::Full, Output::Table);
            for flag in flags {
                match *flag {
                    "--quick" => length = bench_fleet::Length::Quick,
                    "--json" => output = Output::Json,
                    other => anyhow::bail!("unknown bench fleet option {other:?}"),
                }
            }
            Ok(Task::BenchFleet(length, output))
        }
        ["bench", "scale", flags @ ..] => {
            let (mut length, mut output) = (bench_scale::Length::Full, Output::Table);
            for flag in flags {
                match *flag {
                    "--quick" => length = bench_scale::Length::Quick,
                    "--json" => output = Output::Json,
                    other => anyhow::bail!("unknown bench scale option {other:?}"),
                }
            }
            Ok(Task::BenchScale(length, output))
        }
        ["bench", "images", flags @ ..] => {
            let (mut size, mut output) = (bench_images::Size::Full, Output::Table);
            for flag in flags {
                match *flag {
                    "--quick" => size = bench_images::Size::Quick,
                    "--json" => output = Output::Json,
                    other => anyhow::bail!("unknown bench images option {other:?}"),
                }
            }
            Ok(Task::BenchImages(size, output))
        }
        ["router-server", rest @ ..] => Ok(Task::RouterServer(RouterServerArgs::parse(rest)?)),
        _ => anyhow::bail!("unknown task"),
    }
}
