//! `bench scale`: many runc instances through a release `molt serve --isolation runc
//! --stop-instances-on-exit`, the app busybox httpd (no SIGTERM handler of its own) in an image
//! that is its own root, every instance under molt's init:
//!
//! - **deploy → swap** for 50 and 100 instances, from molt's deployment record
//!   (`figures.to_swap_ms`) with the time of each journaled step (the deploys of `bench fleet`:
//!   after each, the environment left is retired and collected);
//! - **containers at once**: the most instance cgroups that existed at the same time (sampled
//!   every 100 ms through the series: a deploy of 100 next to the 100 it replaces);
//! - **memory per instance** with 100 running: its cgroup's memory (`memory.usage_in_bytes`, v2
//!   `memory.current`), the resident memory (VmRSS) of its processes, and of the init alone
//!   (VmRSS, and PSS: its shared pages divided among the processes mapping them);
//! - **stop**: SIGTERM to `molt serve` with the 100 instances, until it has exited with every
//!   instance stopped (504 s before the init: each httpd as PID 1 ignored SIGTERM and was
//!   killed after the 5 s grace).
//!
//! Then the autoscaler's cells ([`autoscale`]): its reaction to a load step, and cold starts
//! from zero.
//!
//! Needs root, runc and `/bin/busybox` (Debian's `busybox-static`).

mod autoscale;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use molt_runtime::RuncProvider;
use serde_json::{json, Value};

use crate::bench_core::import_image;
use crate::bench_core::{build_molt, ms};
use crate::bench_fleet::deploys::{busybox_app, deploy, DeployTiming, STEPS};
use crate::bench_fleet::Stats;
use crate::serve::Serve;
use crate::Output;

const BUSYBOX: &str = "/bin/busybox";
/// The sizes deployed, in instances.
const SIZES: [usize; 2] = [50, 100];
/// The stop of `molt serve` measured before molt's init, 100 instances (seconds).
const STOP_BEFORE_INIT_S: f64 = 504.0;
/// Longest wait for `molt serve` to stop (100 instances × 5 s grace, and some).
const STOP_LIMIT: Duration = Duration::from_secs(600);
/// Where cgroup hierarchies are mounted, and molt's parent cgroup in each.
const CGROUP_ROOTS: [&str; 2] = ["/sys/fs/cgroup/memory/molt", "/sys/fs/cgroup/molt"];

/// How long the benchmark runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// Two deploys of each size.
    Full,
    /// One deploy of each size.
    Quick,
}

/// Everything one run measured.
struct Figures {
    load_average: String,
    /// Per size, its deploys.
    deploys: Vec<(usize, Vec<DeployTiming>)>,
    peak_containers: usize,
    memory: Memory,
    /// Instances running when `molt serve` got SIGTERM.
    stopped_instances: usize,
    stop_ms: f64,
    autoscale: autoscale::AutoscaleFigures,
}

/// Memory of the running instances, one sample per instance (MiB).
struct Memory {
    cgroup: Vec<f64>,
    rss: Vec<f64>,
    init_rss: Vec<f64>,
    /// The init's proportional set size: its shared pages (molt's executable, libc) divided
    /// among the processes that map them.
    init_pss: Vec<f64>,
}

/// Measures, prints the figures.
pub async fn run(length: Length, output: Output) -> Result<()> {
    if !nix::unistd::geteuid().is_root() || !RuncProvider::runc_available(Path::new("runc")) {
        bail!("bench scale needs root and runc (apt-get install runc busybox-static)");
    }
    if !Path::new(BUSYBOX).is_file() {
        bail!("bench scale needs {BUSYBOX} (apt-get install busybox-static)");
    }
    let binary = build_molt()?;
    let figures = tokio::select! {
        figures = measure(&binary, length) => figures?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    progress("the autoscaler: a load step, then cold starts from zero (plain processes)");
    let autoscale = tokio::select! {
        figures = autoscale::measure(&binary) => figures?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    let figures = Figures {
        autoscale,
        ..figures
    };
    match output {
        Output::Table => print_table(&figures),
        Output::Json => println!("{:#}", to_json(&figures)),
    }
    Ok(())
}

async fn measure(binary: &Path, length: Length) -> Result<Figures> {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    progress("starting molt serve --isolation runc --stop-instances-on-exit");
    let serve = Serve::start_with(binary, &["--isolation", "runc"]).await?;
    let data = serve.scratch_dir().join("data");
    let owner = std::fs::read_to_string(data.join("owner.id")).context("reading owner.id")?;
    let prefix = format!("{}-", owner.trim().chars().take(16).collect::<String>());

    let peak = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, prefix) = (peak.clone(), sampling.clone(), prefix.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(instance_cgroups(&prefix).len(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let series = deploy_series(&serve, length).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let deploys = series?;

    let memory = memory_of(&instance_cgroups(&prefix));
    let status = serve.client.get("/v1/status").await?;
    let stopped_instances = running_instances(&status);
    progress(&format!(
        "{stopped_instances} instances running; stopping molt serve (SIGTERM)"
    ));
    let stop = serve.stop_within(STOP_LIMIT).await?;
    progress(&format!(
        "molt serve exited {:.2} s after SIGTERM",
        stop.as_secs_f64()
    ));
    if !instance_cgroups(&prefix).is_empty() {
        bail!("instance cgroups are left after molt serve stopped");
    }
    Ok(Figures {
        load_average,
        deploys,
        peak_containers: peak.load(Ordering::Relaxed),
        memory,
        stopped_instances,
        stop_ms: ms(stop),
        autoscale: autoscale::AutoscaleFigures::default(),
    })
}

/// A first deploy of the smallest size, then the deploys of each size.
async fn deploy_series(serve: &Serve, length: Length) -> Result<Vec<(usize, Vec<DeployTiming>)>> {
    let client = &serve.client;
    let dir = busybox_app(serve.scratch_dir())?;
    let digest = import_image(client, &dir).await?;
    let mut nonce = 0;
    let first = deploy(client, &digest, SIZES[0], nonce).await?;
    progress(&format!(
        "first deploy ({} instances) swapped after {:.0} ms",
        SIZES[0], first.to_swap_ms
    ));
    let runs = match length {
        Length::Full => 2,
        Length::Quick => 1,
    };
    let mut sizes = Vec::new();
    for instances in SIZES {
        let mut timings = Vec::with_capacity(runs);
        for run in 1..=runs {
            nonce += 1;
            let timing = deploy(client, &digest, instances, nonce).await?;
            progress(&format!(
                "{instances} instances, deploy {run}/{runs}: swapped after {:.0} ms",
                timing.to_swap_ms
            ));
            timings.push(timing);
        }
        sizes.push((instances, timings));
    }
    Ok(sizes)
}

/// The cgroup directories of this server's instances (in the first hierarchy that has any).
fn instance_cgroups(prefix: &str) -> Vec<PathBuf> {
    for root in CGROUP_ROOTS {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let found: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// Memory of each instance whose cgroup is in `cgroups`.
fn memory_of(cgroups: &[PathBuf]) -> Memory {
    let mut memory = Memory {
        cgroup: Vec::new(),
        rss: Vec::new(),
        init_rss: Vec::new(),
        init_pss: Vec::new(),
    };
    for dir in cgroups {
        let usage = ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .and_then(|t| t.trim().parse::<f64>().ok());
        if let Some(bytes) = usage {
            memory.cgroup.push(bytes / (1 << 20) as f64);
        }
        let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let mut total = 0.0;
        for pid in pids.lines() {
            let Some(kib) = status_kib(&format!("/proc/{pid}/status"), "VmRSS:") else {
                continue;
            };
            total += kib / 1024.0;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline
                .split(|b| *b == 0)
                .any(|word| word == molt_init::SUBCOMMAND.as_bytes())
            {
                memory.init_rss.push(kib / 1024.0);
                let pss = status_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
                memory.init_pss.extend(pss.map(|kib| kib / 1024.0));
            }
        }
        memory.rss.push(total);
    }
    memory
}

/// The value in KiB of the `key` line (`VmRSS:`, `Pss:`) of a `/proc` file.
fn status_kib(path: &str, key: &str) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Instances `molt status` reports not stopped, over every environment.
fn running_instances(status: &Value) -> usize {
    let envs = status["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|app| app["envs"].as_array().into_iter().flatten());
    envs.flat_map(|env| env["instances"].as_array().into_iter().flatten())
        .filter(|instance| instance["state"] != "stopped" && instance["state"] != "stopping")
        .count()
}

fn print_table(f: &Figures) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "molt bench scale: runc, busybox httpd under molt's init, {cpus} CPUs, load average {}",
        f.load_average
    );
    println!();
    println!(
        "{:<44}{:>10}{:>10}{:>10}  steps (median ms): {}",
        "deploy -> swap (figures.to_swap_ms)",
        "median",
        "max",
        "deploys",
        STEPS.join(" / ")
    );
    for (instances, timings) in &f.deploys {
        let swaps: Vec<f64> = timings.iter().map(|t| t.to_swap_ms).collect();
        let s = Stats::of(&swaps);
        let steps: Vec<String> = (0..STEPS.len())
            .map(|k| {
                let samples: Vec<f64> = timings.iter().map(|t| t.steps_ms[k]).collect();
                format!("{:.0}", Stats::of(&samples).median)
            })
            .collect();
        println!(
            "{:<44}{:>7.0} ms{:>7.0} ms{:>10}  {}",
            format!("  {instances} instances"),
            s.median,
            s.max,
            timings.len(),
            steps.join(" / ")
        );
    }
    println!(
        "containers at once (peak, sampled every 100 ms): {}",
        f.peak_containers
    );
    let m = &f.memory;
    let mib = |samples: &[f64]| {
        let s = Stats::of(samples);
        format!("median {:.2} MiB, max {:.2} MiB", s.median, s.max)
    };
    println!("memory per instance ({} running):", m.rss.len());
    println!(
        "  its cgroup (memory charged to it)          {}",
        mib(&m.cgroup)
    );
    println!(
        "  RSS of its processes (init + httpd)        {}",
        mib(&m.rss)
    );
    println!(
        "  RSS of the init                            {}",
        mib(&m.init_rss)
    );
    println!(
        "  PSS of the init (shared pages divided)     {}",
        mib(&m.init_pss)
    );
    println!(
        "stop: SIGTERM to molt serve -> exit, {} instances stopped: {:.2} s (before the init: \
         {STOP_BEFORE_INIT_S:.0} s for 100, {:.0}x)",
        f.stopped_instances,
        f.stop_ms / 1000.0,
        STOP_BEFORE_INIT_S * 1000.0 / f.stop_ms.max(1.0)
    );
    let a = &f.autoscale;
    println!(
        "autoscaler, load step 0 -> 16 clients (100 ms answers, 2 in flight per instance wanted):"
    );
    println!(
        "  step -> first new instance taking traffic  {:.0} ms",
        a.first_new_ms
    );
    println!(
        "  step -> {} instances taking traffic         {:.0} ms ({} answered, {} failed)",
        a.full_count, a.full_ms, a.answered, a.failed
    );
    println!(
        "  load end -> back to 1 instance            {:.0} ms",
        a.back_ms
    );
    let cold = Stats::of(&a.cold_ms);
    println!(
        "cold start from zero: held request answered in median {:.0} ms, max {:.0} ms ({} runs)",
        cold.median,
        cold.max,
        a.cold_ms.len()
    );
}

fn to_json(f: &Figures) -> Value {
    let deploys: Vec<Value> = f
        .deploys
        .iter()
        .map(|(instances, timings)| {
            let swaps: Vec<f64> = timings.iter().map(|t| t.to_swap_ms).collect();
            let steps: serde_json::Map<String, Value> = STEPS
                .iter()
                .enumerate()
                .map(|(k, step)| {
                    let samples: Vec<f64> = timings.iter().map(|t| t.steps_ms[k]).collect();
                    (step.to_string(), Stats::of(&samples).to_json(&samples))
                })
                .collect();
            json!({
                "instances": instances,
                "to_swap_ms": Stats::of(&swaps).to_json(&swaps),
                "steps_ms": steps,
            })
        })
        .collect();
    let m = &f.memory;
    json!({
        "load_average": f.load_average,
        "deploys": deploys,
        "peak_containers": f.peak_containers,
        "memory_mib": {
            "cgroup": Stats::of(&m.cgroup).to_json(&m.cgroup),
            "rss": Stats::of(&m.rss).to_json(&m.rss),
            "init_rss": Stats::of(&m.init_rss).to_json(&m.init_rss),
            "init_pss": Stats::of(&m.init_pss).to_json(&m.init_pss),
        },
        "stop": {
            "instances": f.stopped_instances,
            "ms": f.stop_ms,
            "before_init_ms": STOP_BEFORE_INIT_S * 1000.0,
        },
        "autoscaler": {
            "first_new_instance_ms": f.autoscale.first_new_ms,
            "full_count": f.autoscale.full_count,
            "full_count_ms": f.autoscale.full_ms,
            "back_to_one_ms": f.autoscale.back_ms,
            "answered": f.autoscale.answered,
            "failed": f.autoscale.failed,
            "cold_start_ms": Stats::of(&f.autoscale.cold_ms).to_json(&f.autoscale.cold_ms),
        },
    })
}

/// Progress goes to stderr so that `--json` leaves stdout to the document.
fn progress(message: &str) {
    eprintln!("bench scale: {message}");
}
