//! The TLS and HTTP/2 cells of `bench router`: h2 over TLS, HTTP/1.1 over TLS and h2c, for
//! molt's router, `molt serve` and every peer that starts with both listeners, loaded by
//! h2load.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::serve::Served;
use super::{free_port, progress, BodySize, H2Cell, H2Figures, Plan, Run, Target, PAUSE};
use crate::child::{group_cpu_time, ChildProcess};
use crate::h2load::{self, H2Spec, H2};
use crate::peers::{Peer, TlsFiles};
use crate::router_server::{RouterServerArgs, Serving, TlsListener, HOST};

/// One target of the HTTP/2 cells.
struct H2Target {
    target: Target,
    tls: SocketAddr,
    /// Where it takes h2c (prior knowledge).
    h2c: SocketAddr,
    /// The process group whose CPU time it uses.
    group: u32,
    /// The process started for these cells (`molt serve` runs for the whole bench).
    child: Option<ChildProcess>,
}

/// The cells' protocols, in the order they are measured.
const PROTOCOLS: [H2; 3] = [H2::Tls, H2::Http1Tls, H2::Cleartext];

impl H2Target {
    /// Where it takes `protocol`: both TLS protocols share one listener.
    fn address(&self, protocol: H2) -> SocketAddr {
        match protocol {
            H2::Tls | H2::Http1Tls => self.tls,
            H2::Cleartext => self.h2c,
        }
    }
}

/// h2 over TLS and h2c through molt, `molt serve` and every peer that starts with both
/// listeners, loaded by h2load (small answers, one stream in flight per connection), targets
/// interleaved within each cell. Nothing here fails the bench: a missing h2load or a peer that
/// does not start is reported as skipped.
pub(super) async fn measure_h2(
    plan: &Plan,
    exe: &Path,
    dir: &Path,
    files: &TlsFiles,
    served: &Served,
    ready: &[(Peer, std::path::PathBuf)],
) -> Result<H2Figures> {
    let backend = served.instance;
    let mut figures = H2Figures {
        cells: Vec::new(),
        skipped: Vec::new(),
    };
    let h2load = match h2load::ensure_installed().await {
        Ok(path) => path,
        Err(why) => {
            progress(&format!("skipped: {why}"));
            figures.skipped.push(why);
            return Ok(figures);
        }
    };
    let mut targets = Vec::new();
    let (tls, h2c) = (free_port()?, free_port()?);
    let args = RouterServerArgs {
        listen: h2c,
        backends: vec![backend],
        extra_routes: 0,
        swaps: 0,
        swap_interval: Duration::ZERO,
        serving: Serving::Threads,
        tls: Some(TlsListener {
            listen: tls,
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
    };
    let mut command = Command::new(exe);
    command.args(args.to_args());
    let child = ChildProcess::spawn("molt-h2", command, dir)?;
    targets.push(H2Target {
        target: Target::Molt,
        tls,
        h2c,
        group: child.pid(),
        child: Some(child),
    });
    // Its plain listener takes h2c like the router-server's.
    targets.push(H2Target {
        target: Target::MoltServe,
        tls: served.tls,
        h2c: served.serve.router,
        group: served.serve.pid(),
        child: None,
    });
    for (peer, path) in ready {
        let (tls, h2c) = (free_port()?, free_port()?);
        match peer.start_h2(path, dir, tls, h2c, backend, files) {
            Ok(child) => targets.push(H2Target {
                target: Target::Peer(*peer),
                tls,
                h2c,
                group: child.pid(),
                child: Some(child),
            }),
            Err(e) => figures.skipped.push(format!("{} (h2): {e:#}", peer.name())),
        }
    }
    let mut up = Vec::new();
    for mut target in targets {
        let mut answers = Ok(());
        for protocol in PROTOCOLS {
            if answers.is_ok() {
                let addr = target.address(protocol);
                answers = h2load::wait_until_answers(&h2load, protocol, addr, HOST).await;
            }
        }
        match answers {
            Ok(()) => up.push(target),
            Err(e) => {
                let log = target.child.as_ref().map_or_else(
                    || "molt serve's log is in its temp dir".to_string(),
                    ChildProcess::stderr_tail,
                );
                let why = format!("{} (h2): {e:#}; its log: {log}", target.target.name());
                progress(&format!("skipped: {why}"));
                figures.skipped.push(why);
                if let Some(mut child) = target.child.take() {
                    let _ = child.stop().await;
                }
            }
        }
    }
    let log = dir.join("h2load.log");
    let measured = async {
        for target in &up {
            for protocol in PROTOCOLS {
                let addr = target.address(protocol);
                h2load::run(&h2_spec(&h2load, protocol, addr, 16, plan.warmup, &log)).await?;
            }
        }
        for protocol in PROTOCOLS {
            for &concurrency in plan.concurrencies {
                let mut runs = Vec::new();
                for target in &up {
                    tokio::time::sleep(PAUSE).await;
                    let addr = target.address(protocol);
                    let before = group_cpu_time(target.group);
                    let spec = h2_spec(&h2load, protocol, addr, concurrency, plan.cell, &log);
                    let load = h2load::run(&spec).await?;
                    let cpu = group_cpu_time(target.group).saturating_sub(before);
                    runs.push(Run {
                        target: target.target,
                        proxy_cpu_per_request: Some(cpu / (load.ok.max(1) as u32)),
                        load,
                    });
                }
                progress(&format!(
                    "{} small c={concurrency}: {}",
                    protocol.label(),
                    runs.iter()
                        .map(|run| format!("{} {:.0}", run.target.name(), run.load.per_second()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                figures.cells.push(H2Cell {
                    protocol,
                    concurrency,
                    runs,
                });
            }
        }
        anyhow::Ok(())
    }
    .await;
    for mut child in up.into_iter().filter_map(|target| target.child) {
        let pid = child.pid();
        if let Err(e) = child.stop().await {
            progress(&format!("pid {pid}: {e:#}"));
        }
    }
    measured?;
    Ok(figures)
}

fn h2_spec<'a>(
    h2load: &'a Path,
    protocol: H2,
    connect: SocketAddr,
    concurrency: usize,
    duration: Duration,
    log: &'a Path,
) -> H2Spec<'a> {
    H2Spec {
        h2load,
        protocol,
        connect,
        host: HOST,
        path: BodySize::Small.path(),
        concurrency,
        duration,
        log,
    }
}

/// A self-signed certificate for `HOST`, written as PEM files into `dir`.
pub(super) fn self_signed_certificate(dir: &Path) -> Result<TlsFiles> {
    let certified = rcgen::generate_simple_self_signed(vec![HOST.to_string()])
        .context("making a self-signed certificate")?;
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let files = TlsFiles {
        cert: dir.join("bench-cert.pem"),
        key: dir.join("bench-key.pem"),
        combined: dir.join("bench-combined.pem"),
    };
    for (path, text) in [
        (&files.cert, cert.clone()),
        (&files.key, key.clone()),
        (&files.combined, format!("{cert}{key}")),
    ] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files)
}
