//! `bench sandbox`: how fast a container instance answers, and how many fit.
//!
//! Runs molt's `RuncProvider` directly (no control plane) with a scratch image holding only a
//! static busybox, so the figures are the provider's own cost:
//!
//! - **start → first 200**: from the provider call to the first successful HTTP GET of busybox
//!   `httpd` (what a health check would see), 20 starts, next to the same program started by the
//!   plain-process `LocalProvider` (`isolation: none`) in the same run; runc in bridge mode
//!   (`--network bridge`: a network namespace, veth and address per instance, on a bridge of
//!   the benchmark's own, `moltbench0` with 10.231.250.0/24, removed at the end) is measured in
//!   the same rounds; Firecracker's 125 ms to guest init is the reference bar;
//! - **density**: instances started one after another until 200, or until a start takes 10× the
//!   first ones, or less than 2 GiB of memory is left; the memory each one costs (drop of
//!   `MemAvailable`, and its cgroup's `memory.usage_in_bytes`) and the start latency as the
//!   host fills up.
//!
//! Needs root, `runc` and `/bin/busybox` (Debian's `busybox-static`).

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use molt_provider::{
    InstanceSpec, InstanceStatus, LocalProvider, ProcessHandle, Provider, RootLayout, StopSignal,
};
use molt_runtime::{BridgeNetwork, RuncConfig, RuncProvider};

use crate::Output;

const BUSYBOX: &str = "/bin/busybox";
const STARTS: usize = 20;
const MAX_DENSITY: usize = 200;
const MIN_AVAILABLE: u64 = 2 << 30;
const BENCH_BRIDGE: &str = "moltbench0";
const BENCH_SUBNET: &str = "10.231.250.0/24";

/// Removes the benchmark's bridge when dropped (also after an error).
struct BridgeGuard(BridgeNetwork);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove() {
            eprintln!("cannot remove bridge {}: {e}", self.0.bridge());
        }
    }
}

/// Runs the benchmark and prints its figures.
pub fn run(output: Output) -> Result<()> {
    if !nix::unistd::geteuid().is_root() || !RuncProvider::runc_available(Path::new("runc")) {
        bail!("bench sandbox needs root and runc (apt-get install runc busybox-static)");
    }
    if !Path::new(BUSYBOX).exists() {
        bail!("bench sandbox needs {BUSYBOX} (apt-get install busybox-static)");
    }
    RuncProvider::become_subreaper()?;
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("image");
    fs::create_dir_all(image.join("bin"))?;
    fs::create_dir_all(image.join("www"))?;
    fs::copy(BUSYBOX, image.join("bin/busybox"))?;
    fs::write(image.join("www/index.html"), "ok\n")?;
    let runc = RuncProvider::new(RuncConfig::new(
        "bench",
        tmp.path().join("runc"),
        tmp.path().join("bundles"),
    ));
    let network = BridgeNetwork::new(
        BENCH_BRIDGE,
        BENCH_SUBNET.parse().map_err(anyhow::Error::msg)?,
    )
    .map_err(anyhow::Error::msg)?;
    network.ensure()?;
    let _bridge = BridgeGuard(network.clone());
    let mut bridged_config = RuncConfig::new(
        "benchbr",
        tmp.path().join("runc-bridge"),
        tmp.path().join("bundles-bridge"),
    );
    bridged_config.network = Some(network.clone());
    let bridged = RuncProvider::new(bridged_config);
    let local = LocalProvider::new("benchlocal".to_string());
    let logs = tmp.path().join("logs");

    // Host network: 127.0.0.1 and a free port; bridge mode: the address given, port 8080.
    let spec = |id: &str, bridge_address: Option<Ipv4Addr>| -> Result<(InstanceSpec, SocketAddr)> {
        let addr = match bridge_address {
            Some(ip) => SocketAddr::from((ip, 8080)),
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
        };
        let command = [
            BUSYBOX,
            "httpd",
            "-f",
            "-p",
            &addr.to_string(),
            "-h",
            "/www",
        ];
        Ok((
            InstanceSpec {
                id: id.to_string(),
                command: command.iter().map(|s| s.to_string()).collect(),
                cwd: image.clone(),
                env: vec![("PATH".into(), "/bin".into())],
                log_path: logs.join(format!("{id}.log")),
                limits: Default::default(),
                layout: RootLayout::OwnRoot,
                address: addr.ip(),
                secret_files: Vec::new(),
                secret_env: Vec::new(),
            },
            addr,
        ))
    };
    let bridge_ip = |i: usize| -> Ipv4Addr {
        let gateway = u32::from(network.subnet().gateway());
        Ipv4Addr::from(gateway + 1 + (i % 200) as u32)
    };

    // Start latency, runc (host network and bridge) and plain processes interleaved so all
    // see the same machine.
    let (mut runc_ms, mut call_ms, mut local_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bridge_ms, mut bridge_call_ms) = (Vec::new(), Vec::new());
    for i in 0..STARTS {
        let (s, addr) = spec(&format!("lat-{i}"), None)?;
        let started = Instant::now();
        let handle = runc.start(&s)?;
        call_ms.push(ms(started.elapsed()));
        wait_ok(addr)?;
        runc_ms.push(ms(started.elapsed()));
        stop(&runc, &s.id, handle)?;

        let (s, addr) = spec(&format!("br-{i}"), Some(bridge_ip(i)))?;
        let started = Instant::now();
        let handle = bridged.start(&s)?;
        bridge_call_ms.push(ms(started.elapsed()));
        wait_ok(addr)?;
        bridge_ms.push(ms(started.elapsed()));
        stop(&bridged, &s.id, handle)?;

        let (mut s, addr) = spec(&format!("plain-{i}"), None)?;
        // The same program on the host: the page directory is the image's.
        let www = image.join("www").to_string_lossy().into_owned();
        s.command[6] = www;
        let started = Instant::now();
        let handle = local.start(&s)?;
        wait_ok(addr)?;
        local_ms.push(ms(started.elapsed()));
        stop(&local, &s.id, handle)?;
    }

    // Density.
    let baseline = median(&runc_ms);
    let available_before = mem_available()?;
    let mut running: Vec<(String, ProcessHandle)> = Vec::new();
    let mut latencies = Vec::new();
    let mut stopped_because = format!("reached {MAX_DENSITY}");
    let mut cgroup_bytes = 0u64;
    for i in 0..MAX_DENSITY {
        let (s, addr) = spec(&format!("dense-{i}"), None)?;
        let started = Instant::now();
        let handle = runc.start(&s)?;
        running.push((s.id.clone(), handle));
        wait_ok(addr)?;
        let took = ms(started.elapsed());
        latencies.push(took);
        cgroup_bytes += cgroup_usage(&runc, &s.id);
        if took > 10.0 * baseline {
            stopped_because = format!("start took {took:.0} ms, 10x the first ones");
            break;
        }
        if mem_available()? < MIN_AVAILABLE {
            stopped_because = "less than 2 GiB of memory left".to_string();
            break;
        }
    }
    let count = running.len();
    let available_after = mem_available()?;
    // Signed: the kernel may reclaim page cache meanwhile, so this is a rough host-wide view;
    // the cgroup figure is the instance's own charge.
    let per_instance_kib = (available_before as i64 - available_after as i64) / count as i64 / 1024;
    let cgroup_kib = cgroup_bytes / count as u64 / 1024;
    for (id, handle) in &running {
        runc.signal(*handle, StopSignal::Force)?;
        let _ = id;
    }
    for (id, handle) in &running {
        wait_gone(&runc, id, *handle)?;
        runc.forget(id);
    }
    let left = fs::read_dir(tmp.path().join("bundles"))
        .map(|d| d.count())
        .unwrap_or(0);

    let first: Vec<f64> = latencies.iter().take(10).copied().collect();
    let last: Vec<f64> = latencies.iter().rev().take(10).copied().collect();
    let report = serde_json::json!({
        "start_to_first_ok_ms": {
            "runc": summary(&runc_ms),
            "runc_provider_call": summary(&call_ms),
            "runc_bridge": summary(&bridge_ms),
            "runc_bridge_provider_call": summary(&bridge_call_ms),
            "plain_process": summary(&local_ms),
        },
        "density": {
            "instances": count,
            "stopped_because": stopped_because,
            "mem_available_drop_per_instance_kib": per_instance_kib,
            "cgroup_usage_per_instance_kib": cgroup_kib,
            "first_10_start_median_ms": median(&first),
            "last_10_start_median_ms": median(&last),
            "bundles_left_after_stop": left,
        },
    });
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            println!("start -> first successful GET of busybox httpd ({STARTS} starts)");
            println!("                                   median       p90       max");
            for (name, values) in [
                ("runc container (isolation runc)", &runc_ms),
                ("  of which the provider call", &call_ms),
                ("runc, --network bridge", &bridge_ms),
                ("  of which the provider call", &bridge_call_ms),
                ("plain process (isolation none)", &local_ms),
            ] {
                let s = summary(values);
                println!(
                    "  {name:<32} {:>6.1} ms {:>6.1} ms {:>6.1} ms",
                    s["median"].as_f64().unwrap_or(0.0),
                    s["p90"].as_f64().unwrap_or(0.0),
                    s["max"].as_f64().unwrap_or(0.0)
                );
            }
            println!(
                "  runc / plain: {:.1}x; Firecracker's bar (to guest init): 125 ms",
                median(&runc_ms) / median(&local_ms).max(0.001)
            );
            println!("density ({stopped_because})");
            println!("  instances running at once          {count}");
            println!("  MemAvailable drop per instance     {per_instance_kib} KiB");
            println!("  cgroup memory usage per instance   {cgroup_kib} KiB");
            println!(
                "  start median, first 10 / last 10   {:.1} ms / {:.1} ms",
                median(&first),
                median(&last)
            );
            println!("  bundles left after stopping all    {left}");
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn summary(values: &[f64]) -> serde_json::Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    serde_json::json!({ "median": at(0.5), "p90": at(0.9), "max": v.last() })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// GETs `/` from `addr` until it answers 200 (polling every 0.5 ms, at most 10 s).
fn wait_ok(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            if stream
                .write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
                .is_ok()
            {
                let mut head = [0u8; 12];
                if stream.read_exact(&mut head).is_ok() && head.ends_with(b"200") {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    bail!("nothing answered on {addr} within 10 s")
}

/// KILL (busybox httpd as pid 1 ignores TERM), wait, forget.
fn stop(provider: &dyn Provider, id: &str, handle: ProcessHandle) -> Result<()> {
    provider.signal(handle, StopSignal::Force)?;
    wait_gone(provider, id, handle)?;
    provider.forget(id);
    Ok(())
}

fn wait_gone(provider: &dyn Provider, id: &str, handle: ProcessHandle) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while provider.status(id, handle) == InstanceStatus::Running {
        if Instant::now() > deadline {
            bail!("{id} still runs 10 s after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available() -> Result<u64> {
    let text = fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("no MemAvailable in /proc/meminfo")
}

/// Memory charged to an instance's cgroup (v1 memory controller), 0 when unknown.
fn cgroup_usage(provider: &RuncProvider, id: &str) -> u64 {
    let leaf = provider.cgroup_path(id);
    let leaf = leaf.strip_prefix("/").unwrap_or(&leaf);
    fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(leaf)
            .join("memory.usage_in_bytes"),
    )
    .ok()
    .and_then(|t| t.trim().parse().ok())
    .unwrap_or(0)
}
