//! Printing the figures of `bench core`: a readable table, or JSON.

use serde_json::{json, Value};

use crate::bench_core::{Figures, Summary, APP, DEPLOY_GOAL_MS, LOAD_DURATION, ROLLBACK_GOAL_MS};
use crate::load::LoadResult;

pub(crate) fn print_table(f: &Figures) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "molt bench core: molt serve pid {}, {cpus} CPUs; load generator, molt and app share them",
        f.serve_pid
    );
    println!();
    println!("{:<58}{:>10}{:>10}{:>10}", "", "median", "p90", "max");
    let line = |label: &str, samples: &[f64], unit: &str, decimals: usize| {
        let s = Summary::of(samples);
        println!(
            "{label:<58}{:>7.decimals$} {unit}{:>7.decimals$} {unit}{:>7.decimals$} {unit}",
            s.median, s.p90, s.max
        );
    };
    println!(
        "deploy -> swap ({} config deploys, 2 instances; first deploy {:.0} ms)",
        f.deploy_molt_ms.len(),
        f.first_deploy_ms
    );
    line(
        "  molt record (figures.to_swap_ms)",
        &f.deploy_molt_ms,
        "ms",
        0,
    );
    line(
        "  client (POST until the router answers the new release)",
        &f.deploy_client_ms,
        "ms",
        0,
    );
    println!(
        "rollback ({} alternating warm rollbacks)",
        f.rollback_molt_ms.len()
    );
    line("  molt (swap.elapsed_us)", &f.rollback_molt_ms, "ms", 2);
    line(
        "  client (POST until the router answers it)",
        &f.rollback_client_ms,
        "ms",
        2,
    );
    println!();
    println!(
        "throughput, keep-alive HTTP/1.1 GET /, {:.0} s each; direct = the {} routed instance(s)",
        LOAD_DURATION.as_secs_f64(),
        f.instances.len()
    );
    println!(
        "{:>5}  {:<7}{:>11}{:>10}{:>10}{:>8}{:>14}",
        "conc", "target", "req/s", "p50", "p99", "errors", "molt/direct"
    );
    for row in &f.throughput {
        for (name, r) in [("direct", &row.direct), ("molt", &row.molt)] {
            let ratio = if name == "molt" {
                format!("{:.2}", row.ratio())
            } else {
                String::new()
            };
            let line = format!(
                "{:>5}  {name:<7}{:>11.0}{:>7.0} us{:>7.0} us{:>8}{ratio:>14}",
                row.concurrency,
                r.per_second(),
                r.p50.as_secs_f64() * 1e6,
                r.p99.as_secs_f64() * 1e6,
                r.errors
            );
            println!("{}", line.trim_end());
        }
    }
    println!();
    println!(
        "idle RSS of molt serve: {:.1} MiB with no apps, {:.1} MiB with {APP} deployed (after the load)",
        f.rss_empty_mib, f.rss_deployed_mib
    );
    let deploy = Summary::of(&f.deploy_client_ms).median;
    let rollback = Summary::of(&f.rollback_client_ms).median;
    println!(
        "goals: deploy->swap {} (client median {deploy:.0} ms), rollback {} (client median {rollback:.2} ms)",
        verdict(deploy, DEPLOY_GOAL_MS),
        verdict(rollback, ROLLBACK_GOAL_MS)
    );
    println!();
    println!(
        "bench core: deploy->swap median {deploy:.0} ms (goal <= {DEPLOY_GOAL_MS:.0}), rollback \
         median {rollback:.2} ms (goal <= {ROLLBACK_GOAL_MS:.0}), router/direct throughput {:.2} \
         (c=16), idle RSS {:.1} MiB",
        f.ratio_at(16),
        f.rss_deployed_mib
    );
}

pub(crate) fn to_json(f: &Figures) -> Value {
    let summary = |samples: &[f64]| Summary::of(samples).to_json(samples);
    let load = |r: &LoadResult| {
        json!({
            "requests_per_s": r.per_second(),
            "ok": r.ok,
            "errors": r.errors,
            "elapsed_s": r.elapsed.as_secs_f64(),
            "p50_us": r.p50.as_micros() as u64,
            "p99_us": r.p99.as_micros() as u64,
        })
    };
    json!({
        "serve_pid": f.serve_pid,
        "first_deploy_ms": f.first_deploy_ms,
        "deploy_to_swap_ms": {
            "molt": summary(&f.deploy_molt_ms),
            "client": summary(&f.deploy_client_ms),
            "goal": DEPLOY_GOAL_MS,
        },
        "rollback_ms": {
            "molt": summary(&f.rollback_molt_ms),
            "client": summary(&f.rollback_client_ms),
            "goal": ROLLBACK_GOAL_MS,
        },
        "throughput": f.throughput.iter().map(|row| json!({
            "concurrency": row.concurrency,
            "direct": load(&row.direct),
            "molt": load(&row.molt),
            "molt_over_direct": row.ratio(),
        })).collect::<Vec<_>>(),
        "direct_instances": f.instances.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "idle_rss_mib": { "no_apps": f.rss_empty_mib, "app_deployed": f.rss_deployed_mib },
    })
}

fn verdict(value: f64, goal: f64) -> &'static str {
    if value <= goal {
        "met"
    } else {
        "MISSED"
    }
}
