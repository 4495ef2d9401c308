//! Printing the figures of `bench fleet`: a table for people, or one JSON document.

use serde_json::{json, Value};

use super::cutover::CutoverRow;
use super::deploys::{DeployTiming, Outcome, ProviderFigures, STEPS};
use super::throughput::{Case, CONCURRENCY};
use super::traffic::PROBE_INTERVAL;
use super::{Figures, Stats, APP};

const LABEL: usize = 62;

pub(crate) fn print_table(f: &Figures) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "molt bench fleet: molt serve pid {} (release build, instances as plain processes), \
         `molt router --threads 1` processes on 127.0.0.1",
        f.serve_pid
    );
    println!(
        "{cpus} CPUs shared by everything: the benchmark's clients, molt serve, the routers, \
         the app's instances (and dockerd for Swarm)"
    );
    println!(
        "load average before: {}, after: {}",
        f.load_average_before, f.load_average_after
    );
    print_cutover(f);
    print_throughput(f);
    print_deploys(f);
    println!();
    println!("{}", headline(f));
}

fn print_cutover(f: &Figures) {
    let swaps = f.cutover.first().map_or(0, |r| r.api_ms.len());
    println!();
    println!(
        "acknowledged swaps: {swaps} per row, back and forth between two warm environments of \
         {APP} (2 instances each); the API answers a swap once every live router acknowledged it"
    );
    println!(
        "shown by X: when the first request showing the new environment was sent through X \
         (one probe per router, a request every {:.2} ms while a swap is under way)",
        PROBE_INTERVAL.as_secs_f64() * 1000.0
    );
    println!(
        "{:<LABEL$}{:>10}{:>10}{:>10}{:>10}",
        "", "median", "p90", "p99", "max"
    );
    for row in &f.cutover {
        println!("{}", row.label());
        let acknowledged = match row.fleet_routers {
            0 => "API answer (POST /swap round trip)".to_string(),
            1 => "API answer (= the router acknowledged)".to_string(),
            n => format!("API answer (= the last of {n} acknowledged)"),
        };
        line(&acknowledged, &row.api_ms);
        line("inside molt (swap.elapsed_us)", &row.molt_ms);
        for (name, shown) in row.watched.iter().zip(&row.shown_ms) {
            line(&format!("shown by {name}"), shown);
        }
        if row.watched.len() > 1 {
            line("shown by the last of them", &row.shown_last_ms);
        }
        if !row.apply_ms.is_empty() {
            line(
                "a router's apply + save of a table (its log; all routers)",
                &row.apply_ms,
            );
        }
        if let Some(load) = &row.load {
            println!(
                "  requests during the swaps: {} answered in {:.1} s (p50 {} us, p99 {} us, \
                 max {:.1} ms), {} failed (must be 0)",
                load.answered,
                load.elapsed.as_secs_f64(),
                load.p50_us,
                load.p99_us,
                f64::from(load.max_us) / 1000.0,
                load.failed
            );
            for example in &load.examples {
                println!("    failed: {example}");
            }
        }
    }
    let all_swaps: usize = f.cutover.iter().map(|r| r.api_ms.len()).sum();
    let probe_failed: u64 = f.cutover.iter().map(|r| r.probe_failed).sum();
    println!(
        "swaps answered while a router still served the old environment: {} of {all_swaps} \
         (must be 0); probe requests failed: {probe_failed} (must be 0)",
        f.stale_swaps()
    );
    for example in f.cutover.iter().flat_map(|r| &r.probe_examples) {
        println!("    failed: {example}");
    }
    let fsync = Stats::of(&f.fsync_ms);
    println!(
        "disk reference: a 1 KiB file written, fsynced, renamed, its directory fsynced (a \
         router's save of each table): median {:.2} ms, p90 {:.2} ms",
        fsync.median, fsync.p90
    );
}

fn print_throughput(f: &Figures) {
    let t = &f.throughput;
    let rounds = t.cases.first().map_or(0, |c| c.runs.len());
    println!();
    println!(
        "throughput: keep-alive HTTP/1.1 GET / from {CONCURRENCY} connections (spread evenly \
         over the routers loaded), {:.0} s per run, medians of {rounds} alternating round(s)",
        t.duration.as_secs_f64()
    );
    println!(
        "one machine: its CPUs are shared by the load generator, every router and the app's 2 \
         instances, so three routers cannot add capacity here; this shows what spreading one \
         load costs, not how a fleet on separate machines scales"
    );
    println!(
        "{:<28}{:>10}{:>10}{:>10}{:>8}{:>10}{:>13}",
        "case", "req/s", "p50", "p99", "errors", "cpu/req", "vs 1 router"
    );
    for case in &t.cases {
        println!(
            "{:<28}{:>10.0}{:>7.0} us{:>7.0} us{:>8}{:>7.1} us{:>13.2}",
            case.label,
            case.median_per_second(),
            case.median_p50_us(),
            case.median_p99_us(),
            case.errors(),
            case.median_cpu_per_request_us(),
            t.ratio(case.label)
        );
    }
}

fn print_deploys(f: &Figures) {
    println!();
    println!(
        "deploy -> swap of busybox httpd (its image is its own root): molt's record, created -> \
         swapped (figures.to_swap_ms); then the median time of each journaled step"
    );
    println!(
        "{:<10}{:<22}{:>6}{:>10}{:>10}  {:>12}{:>11}{:>10}{:>10}",
        "provider",
        "instances",
        "runs",
        "median",
        "max",
        "env created",
        "started",
        "healthy",
        "swapped"
    );
    for run in &f.deploys {
        match &run.outcome {
            Outcome::Measured(figures) => deploy_rows(run.provider, figures),
            Outcome::Skipped(why) => println!("{:<10}skipped: needs {why}", run.provider),
            Outcome::Failed(why) => println!("{:<10}failed: {why}", run.provider),
        }
    }
}

fn deploy_rows(provider: &str, figures: &ProviderFigures) {
    let first = match provider {
        "swarm" => "2 (first: image pushed)",
        _ => "2 (first deploy)",
    };
    deploy_row(provider, first, std::slice::from_ref(&figures.first));
    for (instances, timings) in &figures.sizes {
        deploy_row(provider, &instances.to_string(), timings);
    }
}

fn deploy_row(provider: &str, instances: &str, timings: &[DeployTiming]) {
    let total: Vec<f64> = timings.iter().map(|t| t.to_swap_ms).collect();
    let total = Stats::of(&total);
    let step = |k: usize| {
        let samples: Vec<f64> = timings.iter().map(|t| t.steps_ms[k]).collect();
        Stats::of(&samples).median
    };
    println!(
        "{provider:<10}{instances:<22}{:>6}{:>7.0} ms{:>7.0} ms  {:>9.0} ms{:>8.0} ms{:>7.0} ms{:>7.0} ms",
        timings.len(),
        total.median,
        total.max,
        step(0),
        step(1),
        step(2),
        step(3)
    );
}

/// The one-line summary.
fn headline(f: &Figures) -> String {
    let median_api = |routers: usize| {
        f.cutover
            .iter()
            .find(|r| r.fleet_routers == routers && r.load.is_none())
            .map_or(0.0, |r| Stats::of(&r.api_ms).median)
    };
    let (answered, failed) = f
        .cutover
        .iter()
        .filter_map(|r| r.load.as_ref())
        .fold((0, 0), |(a, b), l| (a + l.answered, b + l.failed));
    let twenty = |provider: &str| {
        f.deploys
            .iter()
            .find(|run| run.provider == provider)
            .map_or("not run".to_string(), |run| match &run.outcome {
                Outcome::Measured(figures) => figures.sizes.iter().find(|(n, _)| *n == 20).map_or(
                    "not run".to_string(),
                    |(_, timings)| {
                        let total: Vec<f64> = timings.iter().map(|t| t.to_swap_ms).collect();
                        format!("{:.0} ms", Stats::of(&total).median)
                    },
                ),
                Outcome::Skipped(_) => "skipped".to_string(),
                Outcome::Failed(_) => "failed".to_string(),
            })
    };
    format!(
        "bench fleet: swap acknowledged by 3 routers {:.2} ms (API median; 1 router {:.2}, none \
         {:.2}); {failed} of {} requests failed across the swaps under load; 3 routers / 1 router \
         req/s {:.2} on one 2-CPU machine; deploy -> swap of 20 instances: runc {}, swarm {}",
        median_api(3),
        median_api(1),
        median_api(0),
        answered + failed,
        f.throughput.ratio("3 routers (1 thread each)"),
        twenty("runc"),
        twenty("swarm")
    )
}

fn line(label: &str, samples: &[f64]) {
    let s = Stats::of(samples);
    println!(
        "  {label:<width$}{:>7.2} ms{:>7.2} ms{:>7.2} ms{:>7.2} ms",
        s.median,
        s.p90,
        s.p99,
        s.max,
        width = LABEL - 2
    );
}

pub(crate) fn to_json(f: &Figures) -> Value {
    let stats = |samples: &[f64]| Stats::of(samples).to_json(samples);
    let cutover = |row: &CutoverRow| {
        json!({
            "label": row.label(),
            "fleet_routers": row.fleet_routers,
            "swaps": row.api_ms.len(),
            "api_answer_ms": stats(&row.api_ms),
            "inside_molt_ms": stats(&row.molt_ms),
            "shown_ms": row.watched.iter().zip(&row.shown_ms)
                .map(|(name, shown)| (name.clone(), stats(shown)))
                .collect::<serde_json::Map<_, _>>(),
            "shown_by_last_ms": stats(&row.shown_last_ms),
            "router_apply_and_save_ms": stats(&row.apply_ms),
            "stale_swaps": row.stale,
            "probe_requests_failed": row.probe_failed,
            "probe_failures": row.probe_examples,
            "load": row.load.as_ref().map(|l| json!({
                "connections": l.connections,
                "answered": l.answered,
                "failed": l.failed,
                "failures": l.examples,
                "elapsed_s": l.elapsed.as_secs_f64(),
                "p50_us": l.p50_us,
                "p99_us": l.p99_us,
                "max_us": l.max_us,
            })),
        })
    };
    let case = |c: &Case| {
        json!({
            "label": c.label,
            "routers": c.routers,
            "requests_per_s": c.median_per_second(),
            "p50_us": c.median_p50_us(),
            "p99_us": c.median_p99_us(),
            "errors": c.errors(),
            "cpu_per_request_us": c.median_cpu_per_request_us(),
            "vs_one_router": f.throughput.ratio(c.label),
            "runs_requests_per_s": c.runs.iter().map(|r| r.result.per_second()).collect::<Vec<_>>(),
        })
    };
    let timing = |t: &DeployTiming| {
        let mut steps = serde_json::Map::new();
        for (name, ms) in STEPS.iter().zip(t.steps_ms) {
            steps.insert((*name).to_string(), json!(ms));
        }
        json!({ "to_swap_ms": t.to_swap_ms, "steps_ms": steps })
    };
    let deploys: Vec<Value> = f
        .deploys
        .iter()
        .map(|run| match &run.outcome {
            Outcome::Measured(figures) => json!({
                "provider": run.provider,
                "first_deploy": timing(&figures.first),
                "sizes": figures.sizes.iter().map(|(instances, timings)| {
                    let total: Vec<f64> = timings.iter().map(|t| t.to_swap_ms).collect();
                    json!({
                        "instances": instances,
                        "to_swap_ms": stats(&total),
                        "deploys": timings.iter().map(timing).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
            }),
            Outcome::Skipped(why) => {
                json!({ "provider": run.provider, "skipped": format!("needs {why}") })
            }
            Outcome::Failed(why) => json!({ "provider": run.provider, "failed": why }),
        })
        .collect();
    json!({
        "serve_pid": f.serve_pid,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "load_average": { "before": f.load_average_before, "after": f.load_average_after },
        "probe_interval_ms": PROBE_INTERVAL.as_secs_f64() * 1000.0,
        "cutover": f.cutover.iter().map(cutover).collect::<Vec<_>>(),
        "stale_swaps": f.stale_swaps(),
        "failed_requests": f.failed_requests(),
        "fsync_reference_ms": stats(&f.fsync_ms),
        "throughput": {
            "concurrency": CONCURRENCY,
            "duration_s": f.throughput.duration.as_secs_f64(),
            "note": "one machine: three routers share its CPUs with the load and the app",
            "cases": f.throughput.cases.iter().map(case).collect::<Vec<_>>(),
        },
        "deploy_to_swap": deploys,
    })
}
