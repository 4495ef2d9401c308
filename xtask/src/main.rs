//! Dev tooling for molt, run from the workspace root:
//!
//! ```text
//! cargo run --release -p xtask -- bench core          # deploy→swap, rollback, router vs direct, idle RSS
//! cargo run --release -p xtask -- bench core --json   # the same figures as JSON on stdout
//! cargo run --release -p xtask -- backend             # the fast test app `bench core` deploys
//! ```
//!
//! `bench core` builds `molt` in release mode, starts `molt serve` as a child process on
//! port 0 with a temp data dir, deploys a copy of this very executable (its `backend`
//! subcommand) as the app, measures, and stops everything it started.

mod backend;
mod bench_core;
mod load;
mod report;
mod serve;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  bench core [--json]   measure deploy->swap, rollback, router vs direct throughput, idle RSS
  backend               serve `hello from $MOLT_APP $MOLT_RELEASE` on 127.0.0.1:$PORT";

/// What the command line asked for.
enum Task {
    Backend,
    BenchCore(Output),
}

/// How `bench core` reports its figures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A table for people, and one summary line.
    Table,
    /// One JSON document on stdout.
    Json,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = parse(&args) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match task {
        Task::Backend => runtime.block_on(backend::run()),
        Task::BenchCore(output) => runtime.block_on(bench_core::run(output)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Option<Task> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["backend"] => Some(Task::Backend),
        ["bench", "core"] => Some(Task::BenchCore(Output::Table)),
        ["bench", "core", "--json"] => Some(Task::BenchCore(Output::Json)),
        _ => None,
    }
}
