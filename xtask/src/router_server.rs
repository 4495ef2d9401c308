//! `xtask router-server`: molt's router (the `molt-router` library) alone in its own process
//! with two serving threads, so that `bench router` measures it the way it measures nginx: a
//! separate server, not a library sharing the load generator's runtime. By default each
//! thread runs its own current-thread runtime on its own `SO_REUSEPORT` socket
//! ([`Router::serve_on_threads`]); `--serve runtime` serves from one multi-thread runtime with
//! two workers instead ([`Router::serve`], as `molt serve` does).
//!
//! It routes `bench.localhost` to the backends (environment "blue"), plus `--extra-routes`
//! dummy hostnames. With `--swaps N`, SIGUSR1 starts N route swaps between environments
//! "blue" and "green" (same backends), `--swap-interval-ms` apart. On SIGTERM or SIGINT it
//! stops and prints one JSON line to stdout: the swaps done, how long each publish took, and
//! the router's counters of both environments.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use molt_router::tls::{CertSource, HostCert};
use molt_router::{Backend, EnvStats, RouteTable, Router, RouterConfig, Upstream};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The hostname every benchmark request carries.
pub const HOST: &str = "bench.localhost";
/// Worker threads of the router's runtime: as many as nginx's and HAProxy's workers.
pub const WORKER_THREADS: usize = 2;
/// The environment `HOST` starts on, and the one swaps alternate it with.
const ENVS: [&str; 2] = ["blue", "green"];

/// What `xtask router-server` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterServerArgs {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The upstreams of `HOST`, round-robin.
    pub backends: Vec<SocketAddr>,
    /// Dummy hostnames added to the table besides `HOST`.
    pub extra_routes: usize,
    /// Route swaps to do once SIGUSR1 arrives.
    pub swaps: usize,
    /// Pause between two swaps.
    pub swap_interval: Duration,
    /// How the router's threads are organised.
    pub serving: Serving,
    /// A second listener terminating TLS (h2 or HTTP/1.1 by ALPN) for `HOST`.
    pub tls: Option<TlsListener>,
}

/// Where `router-server` terminates TLS, and with which certificate for `HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
}

/// How `router-server` runs the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// [`Router::serve_on_threads`]: one current-thread runtime per thread, SO_REUSEPORT.
    Threads,
    /// [`Router::serve`] on a multi-thread runtime with `WORKER_THREADS` workers.
    Runtime,
}

/// What the swaps did, as reported on stdout.
struct SwapRecord {
    publish: Vec<Duration>,
    /// From SIGUSR1 to the end of the last publish.
    elapsed: Duration,
}

impl RouterServerArgs {
    /// Parses `--listen ADDR --backend ADDR... [--extra-routes N] [--swaps N]
    /// [--swap-interval-ms MS]`.
    pub fn parse(args: &[&str]) -> Result<Self> {
        let mut listen = None;
        let mut backends = Vec::new();
        let (mut extra_routes, mut swaps, mut swap_interval_ms) = (0, 0, 20);
        let mut serving = Serving::Threads;
        let (mut tls_listen, mut tls_cert, mut tls_key) = (None, None, None);
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let value = rest.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
            let bad = || format!("invalid value {value:?} for {flag}");
            match *flag {
                "--listen" => listen = Some(value.parse().with_context(bad)?),
                "--backend" => backends.push(value.parse().with_context(bad)?),
                "--extra-routes" => extra_routes = value.parse().with_context(bad)?,
                "--swaps" => swaps = value.parse().with_context(bad)?,
                "--swap-interval-ms" => swap_interval_ms = value.parse().with_context(bad)?,
                "--tls-listen" => tls_listen = Some(value.parse().with_context(bad)?),
                "--tls-cert" => tls_cert = Some(std::path::PathBuf::from(value)),
                "--tls-key" => tls_key = Some(std::path::PathBuf::from(value)),
                "--serve" => {
                    serving = match *value {
                        "threads" => Serving::Threads,
                        "runtime" => Serving::Runtime,
                        _ => bail!("{}", bad()),
                    }
                }
                other => bail!("unknown router-server option {other:?}"),
            }
        }
        let listen = listen.ok_or_else(|| anyhow!("router-server needs --listen ADDR"))?;
        if backends.is_empty() {
            bail!("router-server needs at least one --backend ADDR");
        }
        let tls = match (tls_listen, tls_cert, tls_key) {
            (None, None, None) => None,
            (Some(listen), Some(cert), Some(key)) => Some(TlsListener { listen, cert, key }),
            _ => bail!("--tls-listen, --tls-cert and --tls-key go together"),
        };
        Ok(Self {
            listen,
            backends,
            extra_routes,
            swaps,
            swap_interval: Duration::from_millis(swap_interval_ms),
            serving,
            tls,
        })
    }

    /// The command line that [`RouterServerArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "router-server".into(),
            "--listen".into(),
            self.listen.to_string(),
        ];
        for backend in &self.backends {
            args.extend(["--backend".into(), backend.to_string()]);
        }
        args.extend([
            "--extra-routes".into(),
            self.extra_routes.to_string(),
            "--swaps".into(),
            self.swaps.to_string(),
            "--swap-interval-ms".into(),
            self.swap_interval.as_millis().to_string(),
            "--serve".into(),
            match self.serving {
                Serving::Threads => "threads",
                Serving::Runtime => "runtime",
            }
            .into(),
        ]);
        if let Some(tls) = &self.tls {
            args.extend([
                "--tls-listen".into(),
                tls.listen.to_string(),
                "--tls-cert".into(),
                tls.cert.display().to_string(),
                "--tls-key".into(),
                tls.key.display().to_string(),
            ]);
        }
        args
    }

    /// The table with `HOST` on `env` and every dummy hostname on its own environment.
    fn table(&self, env: &str) -> RouteTable {
        let upstreams = |prefix: &str| -> Vec<Upstream> {
            self.backends
                .iter()
                .enumerate()
                .map(|(i, &addr)| Upstream {
                    instance: format!("{prefix}-{i}"),
                    addr,
                })
                .collect()
        };
        let mut table = RouteTable::new();
        table.insert(HOST, Backend::new(env, upstreams(env)));
        for i in 0..self.extra_routes {
            let env = format!("extra-{i}");
            let upstreams = upstreams(&env);
            table.insert(
                &format!("app-{i}.extra.localhost"),
                Backend::new(env, upstreams),
            );
        }
        table
    }
}

/// Serves until SIGTERM or SIGINT, then prints its report on stdout.
pub async fn run(args: RouterServerArgs) -> Result<()> {
    // Installed before the port answers, so the bench's SIGUSR1 never hits the default action.
    let mut start_swaps =
        signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let router = Router::new(RouterConfig {
        shutdown_grace: Duration::from_secs(1),
        ..RouterConfig::default()
    });
    let tables = ENVS.map(|env| args.table(env));
    let published = Instant::now();
    router.publish(tables[0].clone()).await;
    let initial_publish = published.elapsed();
    let shutdown = CancellationToken::new();
    let tls_server = match &args.tls {
        None => None,
        Some(tls) => {
            let read = |path: &std::path::Path| {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))
            };
            let cert = HostCert::from_pem(HOST, &read(&tls.cert)?, &read(&tls.key)?)
                .map_err(|e| anyhow!("the TLS certificate for {HOST}: {e}"))?;
            router
                .certificates()
                .replace_source(CertSource::Directory, vec![cert]);
            Some(match args.serving {
                Serving::Threads => {
                    let threads = Arc::clone(&router)
                        .serve_tls_on_threads(tls.listen, WORKER_THREADS, shutdown.clone())
                        .with_context(|| format!("binding {}", tls.listen))?;
                    tokio::task::spawn_blocking(move || threads.join())
                }
                Serving::Runtime => {
                    let listener = TcpListener::bind(tls.listen)
                        .await
                        .with_context(|| format!("binding {}", tls.listen))?;
                    tokio::spawn(Arc::clone(&router).serve_tls(listener, shutdown.clone()))
                }
            })
        }
    };
    let server = match args.serving {
        Serving::Threads => {
            let threads = Arc::clone(&router)
                .serve_on_threads(args.listen, WORKER_THREADS, shutdown.clone())
                .with_context(|| format!("binding {}", args.listen))?;
            tokio::task::spawn_blocking(move || threads.join())
        }
        Serving::Runtime => {
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            tokio::spawn(Arc::clone(&router).serve(listener, shutdown.clone()))
        }
    };
    eprintln!(
        "router-server: molt-router on {} ({:?}) -> {:?}, {} routes",
        args.listen,
        args.serving,
        args.backends,
        tables[0].len()
    );

    let swapper = {
        let (router, shutdown) = (Arc::clone(&router), shutdown.clone());
        let (swaps, interval) = (args.swaps, args.swap_interval);
        tokio::spawn(async move {
            if swaps == 0 {
                return None;
            }
            tokio::select! {
                _ = start_swaps.recv() => {}
                () = shutdown.cancelled() => return None,
            }
            Some(swap_routes(&router, &tables, swaps, interval, &shutdown).await)
        })
    };

    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    shutdown.cancel();
    let swaps = swapper.await.context("the swap task panicked")?;
    server
        .await
        .context("the router task panicked")?
        .context("the router failed")?;
    if let Some(tls_server) = tls_server {
        tls_server
            .await
            .context("the TLS router task panicked")?
            .context("the TLS router failed")?;
    }
    println!("{}", report(&router, swaps.as_ref(), initial_publish));
    Ok(())
}

/// Publishes the tables alternately, `swaps` times, starting with the second.
async fn swap_routes(
    router: &Router,
    tables: &[RouteTable; 2],
    swaps: usize,
    interval: Duration,
    shutdown: &CancellationToken,
) -> SwapRecord {
    let started = Instant::now();
    let mut publish = Vec::with_capacity(swaps);
    // Ticks on a fixed schedule (a late tick is caught up, not skipped), so a busy machine
    // that wakes this task late does not stretch the swaps past the load window.
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    for i in 1..=swaps {
        let published = Instant::now();
        router.publish(tables[i % 2].clone()).await;
        publish.push(published.elapsed());
        if i == swaps {
            break;
        }
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => break,
        }
    }
    SwapRecord {
        publish,
        elapsed: started.elapsed(),
    }
}

fn report(router: &Router, swaps: Option<&SwapRecord>, initial_publish: Duration) -> Value {
    let stats = |s: EnvStats| {
        json!({
            "accepted": s.accepted,
            "in_flight": s.in_flight,
            "answered": s.answered,
            "failed": s.failed,
        })
    };
    json!({
        "swaps": swaps.map_or(0, |s| s.publish.len()),
        "swap_elapsed_us": swaps.map_or(0, |s| s.elapsed.as_micros() as u64),
        "publish_us": swaps.map_or_else(Vec::new, |s| {
            s.publish.iter().map(|d| d.as_micros() as u64).collect()
        }),
        "unrouted": router.unrouted(),
        "initial_publish_us": initial_publish.as_micros() as u64,
        "envs": {
            "blue": stats(router.env_stats(ENVS[0])),
            "green": stats(router.env_stats(ENVS[1])),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = RouterServerArgs {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backends: vec![
                SocketAddr::from(([127, 0, 0, 1], 9000)),
                SocketAddr::from(([127, 0, 0, 1], 9001)),
            ],
            extra_routes: 10_000,
            swaps: 100,
            swap_interval: Duration::from_millis(20),
            serving: Serving::Runtime,
            tls: Some(TlsListener {
                listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
                cert: "/tmp/cert.pem".into(),
                key: "/tmp/key.pem".into(),
            }),
        };
        let line = args.to_args();
        let words: Vec<&str> = line[1..].iter().map(String::as_str).collect();
        assert_eq!(RouterServerArgs::parse(&words).expect("parses"), args);
        assert!(RouterServerArgs::parse(&["--listen", "127.0.0.1:1"]).is_err());
        assert!(RouterServerArgs::parse(&["--listen"]).is_err());
    }

    #[test]
    fn extra_routes_are_in_the_table() {
        let args = RouterServerArgs::parse(&[
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "127.0.0.1:9000",
            "--extra-routes",
            "3",
        ])
        .expect("parses");
        let table = args.table("green");
        assert_eq!(table.len(), 4);
        assert_eq!(table.lookup(HOST).map(|r| r.env()), Some("green"));
        assert_eq!(
            table.lookup("app-2.extra.localhost").map(|r| r.env()),
            Some("extra-2")
        );
    }
}
