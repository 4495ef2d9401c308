//! Printing the figures of `bench router`: a readable table, or JSON.

use std::time::Duration;

use serde_json::{json, Value};

use crate::bench_router::{
    median, BodySize, Cell, H2Cell, RouterFigures, Run, RunLength, SwapRow, Target, EXTRA_ROUTES,
    ROUTES_CONCURRENCY, ROUTES_LOSS_GOAL, SWAP_CONCURRENCY,
};
use crate::load::LoadResult;
use crate::peers::Peer;
use crate::router_server::{HOST, WORKER_THREADS};

/// Said in both outputs: what the HTTP/2 cells are.
const H2_NOTE: &str = "h2: the HTTP/1.1 cells come first; then h2 over TLS (ALPN, a self-signed \
                       certificate made by the bench), HTTP/1.1 over TLS (h1/TLS, same listener) \
                       and h2c (prior knowledge) to molt, molt serve and each \
                       peer, loaded by h2load with one stream in flight per connection, small \
                       answers, upstreams over HTTP/1.1 (no direct row: the backend speaks \
                       HTTP/1.1 only)";

pub(crate) fn print_table(f: &RouterFigures) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let plan = &f.plan;
    println!();
    println!(
        "molt bench router ({}, {:.0} s per cell): keep-alive HTTP/1.1, Host: {HOST}, GETs \
         answered {} B and 64 KiB, POSTs of 4 KiB and 1 MiB",
        match plan.length {
            RunLength::Full => "full",
            RunLength::Quick => "quick",
        },
        plan.cell.as_secs_f64(),
        f.small_body_len
    );
    println!(
        "{cpus} CPUs shared by the load generator, the proxy under test and the backend (one \
         process each; molt {WORKER_THREADS} threads with a runtime each, nginx/HAProxy/Caddy 2 \
         workers)"
    );
    println!(
        "molt: xtask router-server (the molt-router library alone); molt serve: the release \
         binary with --router-threads {WORKER_THREADS} and a TLS listener, whose one instance of \
         the backend every target proxies to"
    );
    println!("{H2_NOTE}");
    println!(
        "cpu/req: user+system CPU time of the proxy's processes per request (less is better; \
         robust to a busy machine where req/s is not)"
    );
    let (ran, skipped): (Vec<_>, Vec<_>) = f.peers.iter().partition(|p| p.outcome.is_ok());
    println!(
        "peers: {}",
        ran.iter()
            .filter_map(|p| p.outcome.as_ref().ok().cloned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for peer in skipped {
        if let Err(why) = &peer.outcome {
            println!("skipped: {why}");
        }
    }
    println!();
    println!(
        "{:<6}{:>5}  {:<11}{:>9}{:>10}{:>10}{:>10}{:>8}{:>10}{:>10}",
        "body", "conc", "target", "req/s", "p50", "p99", "p99.9", "errors", "vs nginx", "cpu/req"
    );
    for (i, cell) in f.cells.iter().enumerate() {
        if i > 0 {
            println!();
        }
        for run in &cell.runs {
            print_run(
                cell.size.label(),
                cell.concurrency,
                run,
                cell.vs_nginx(&run.load),
            );
        }
    }
    print_h2(f);
    println!();
    print_swap(&f.swap, f);
    let routes = &f.routes;
    let runs = |samples: &[f64]| {
        samples
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "10 000 routes cost (molt, c={ROUTES_CONCURRENCY}, small, medians of {} alternating runs): \
         loss {:.1} % (goal < {ROUTES_LOSS_GOAL:.0} %): {}",
        routes.one_route.len(),
        routes.loss_percent(),
        verdict(routes.loss_percent() < ROUTES_LOSS_GOAL)
    );
    println!(
        "  1 route      {:>6.0} req/s, cpu/req {:.1} us (runs: {})",
        median(&routes.one_route),
        median(&routes.one_route_cpu_us),
        runs(&routes.one_route)
    );
    println!(
        "  {} routes {:>6.0} req/s, cpu/req {:.1} us (runs: {})",
        EXTRA_ROUTES + 1,
        median(&routes.many_routes),
        median(&routes.many_routes_cpu_us),
        runs(&routes.many_routes)
    );
    println!(
        "  cpu/req with {} routes: {:+.1} % (steadier than req/s on a busy machine); publishing \
         the {}-route table: {:.1} ms",
        EXTRA_ROUTES + 1,
        routes.cpu_added_percent(),
        EXTRA_ROUTES + 1,
        routes.publish_big_table.as_secs_f64() * 1000.0
    );
    let protocols = &f.protocols;
    println!(
        "clients over h2c vs HTTP/1.1 (molt, c={ROUTES_CONCURRENCY} connections with one request \
         in flight each, small, medians of {} alternating runs; h2 over TLS: see the h2 cells):",
        protocols.http1.len()
    );
    println!(
        "  HTTP/1.1 {:>6.0} req/s, p99 {} (runs: {})",
        median(&protocols.http1),
        latency(protocols.http1_p99),
        runs(&protocols.http1)
    );
    println!(
        "  h2c      {:>6.0} req/s, p99 {} (runs: {})",
        median(&protocols.h2c),
        latency(protocols.h2c_p99),
        runs(&protocols.h2c)
    );
    println!();
    let ratios = |target: Target| {
        BodySize::ALL
            .iter()
            .map(|&size| {
                f.cells
                    .iter()
                    .find(|c| c.size == size && c.concurrency == 64)
                    .and_then(|c| c.result(target).and_then(|r| c.vs_nginx(r)))
                    .map_or_else(|| "-".to_string(), |x| format!("{x:.2}"))
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "bench router: req/s over nginx's at c=64 (small / 64 KiB / POST 4 KiB / POST 1 MiB): \
         molt {}, molt serve {}; swap under load {} errors in {} swaps; 10 000 routes cost {:.1} %",
        ratios(Target::Molt),
        ratios(Target::MoltServe),
        f.swap.load.errors + f.swap.router_failed,
        f.swap.swaps,
        routes.loss_percent()
    );
}

fn print_h2(f: &RouterFigures) {
    for why in &f.h2.skipped {
        println!();
        println!("h2 skipped: {why}");
    }
    for cell in &f.h2.cells {
        println!();
        for run in &cell.runs {
            print_run(
                cell.protocol.label(),
                cell.concurrency,
                run,
                cell.vs_nginx(&run.load),
            );
        }
    }
}

/// One row of a cell's table: `label` names the body size or the protocol.
fn print_run(label: &str, concurrency: usize, run: &Run, vs_nginx: Option<f64>) {
    let r = &run.load;
    let vs_nginx = vs_nginx.map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
    let cpu = run
        .proxy_cpu_per_request
        .map_or_else(|| "-".to_string(), latency);
    println!(
        "{:<6}{:>5}  {:<11}{:>9.0}{:>10}{:>10}{:>10}{:>8}{vs_nginx:>10}{cpu:>10}",
        label,
        concurrency,
        run.target.name(),
        r.per_second(),
        latency(r.p50),
        latency(r.p99),
        latency(r.p999),
        r.errors,
    );
}

fn print_swap(swap: &SwapRow, f: &RouterFigures) {
    println!(
        "swap under load (molt, c={SWAP_CONCURRENCY}, {} swaps blue<->green {} ms apart, done in \
         {:.0} ms): {}/{} swaps, {} requests, {} errors, {} router failures (must be 0): {}",
        SwapRow::asked(),
        f.plan.swap_interval.as_millis(),
        swap.swap_elapsed.as_secs_f64() * 1000.0,
        swap.swaps,
        SwapRow::asked(),
        swap.load.ok,
        swap.load.errors,
        swap.router_failed,
        verdict(swap.passed(&f.plan))
    );
    let mut publish = swap.publish_us.clone();
    publish.sort_by(f64::total_cmp);
    println!(
        "  publish (returns once no request can see the old table): median {:.2} ms, max {:.2} ms; \
         p99 of requests during the swaps {}",
        median(&publish) / 1000.0,
        publish.last().copied().unwrap_or(0.0) / 1000.0,
        latency(swap.load.p99)
    );
}

pub(crate) fn to_json(f: &RouterFigures) -> Value {
    let load = |r: &LoadResult| {
        json!({
            "requests_per_s": r.per_second(),
            "ok": r.ok,
            "errors": r.errors,
            "elapsed_s": r.elapsed.as_secs_f64(),
            "p50_us": r.p50.as_micros() as u64,
            "p99_us": r.p99.as_micros() as u64,
            "p999_us": r.p999.as_micros() as u64,
        })
    };
    let cell = |c: &Cell| {
        json!({
            "body": c.size.label(),
            "concurrency": c.concurrency,
            "targets": c.runs.iter().map(|run| {
                let mut v = load(&run.load);
                v["target"] = json!(run.target.name());
                v["vs_nginx"] = json!(c.vs_nginx(&run.load));
                v["proxy_cpu_us_per_request"] =
                    json!(run.proxy_cpu_per_request.map(|d| d.as_secs_f64() * 1e6));
                v
            }).collect::<Vec<_>>(),
        })
    };
    let h2_cell = |c: &H2Cell| {
        json!({
            "protocol": c.protocol.label(),
            "body": BodySize::Small.label(),
            "concurrency": c.concurrency,
            "targets": c.runs.iter().map(|run| {
                let mut v = load(&run.load);
                v["target"] = json!(run.target.name());
                v["vs_nginx"] = json!(c.vs_nginx(&run.load));
                v["proxy_cpu_us_per_request"] =
                    json!(run.proxy_cpu_per_request.map(|d| d.as_secs_f64() * 1e6));
                v
            }).collect::<Vec<_>>(),
        })
    };
    let peer_name = |p: Peer| p.name();
    json!({
        "quick": f.plan.length == RunLength::Quick,
        "cell_s": f.plan.cell.as_secs_f64(),
        "small_body_bytes": f.small_body_len,
        "h2_note": H2_NOTE,
        "peers": f.peers.iter().map(|p| match &p.outcome {
            Ok(version) => json!({ "peer": peer_name(p.peer), "version": version }),
            Err(why) => json!({ "peer": peer_name(p.peer), "skipped": why }),
        }).collect::<Vec<_>>(),
        "cells": f.cells.iter().map(cell).collect::<Vec<_>>(),
        "swap_under_load": {
            "concurrency": SWAP_CONCURRENCY,
            "swaps_asked": SwapRow::asked(),
            "swaps_done": f.swap.swaps,
            "swap_interval_ms": f.plan.swap_interval.as_millis() as u64,
            "swap_elapsed_ms": f.swap.swap_elapsed.as_secs_f64() * 1000.0,
            "publish_us": f.swap.publish_us,
            "router_failed": f.swap.router_failed,
            "router_accepted": f.swap.router_accepted,
            "load": load(&f.swap.load),
            "passed": f.swap.passed(&f.plan),
        },
        "routes_cost": {
            "concurrency": ROUTES_CONCURRENCY,
            "extra_routes": EXTRA_ROUTES,
            "one_route_requests_per_s": f.routes.one_route,
            "many_routes_requests_per_s": f.routes.many_routes,
            "one_route_cpu_us_per_request": f.routes.one_route_cpu_us,
            "many_routes_cpu_us_per_request": f.routes.many_routes_cpu_us,
            "cpu_added_percent": f.routes.cpu_added_percent(),
            "publish_big_table_ms": f.routes.publish_big_table.as_secs_f64() * 1000.0,
            "loss_percent": f.routes.loss_percent(),
            "goal_percent": ROUTES_LOSS_GOAL,
        },
        "h2": {
            "skipped": f.h2.skipped,
            "cells": f.h2.cells.iter().map(h2_cell).collect::<Vec<_>>(),
        },
        "client_protocols": {
            "concurrency": ROUTES_CONCURRENCY,
            "http1_requests_per_s": f.protocols.http1,
            "h2c_requests_per_s": f.protocols.h2c,
            "http1_p99_us": f.protocols.http1_p99.as_micros() as u64,
            "h2c_p99_us": f.protocols.h2c_p99.as_micros() as u64,
        },
    })
}

/// Microseconds below 10 ms, milliseconds above.
fn latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10_000.0 {
        format!("{us:.0} us")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_units() {
        assert_eq!(latency(Duration::from_micros(950)), "950 us");
        assert_eq!(latency(Duration::from_micros(12_340)), "12.3 ms");
    }
}
