//! The `molt` binary: parses the command line and wires the crates together.

use std::process::ExitCode;

use clap::Parser;
use molt_cli::{Cli, Command, RouterArgs, ServeArgs};
use molt_server::{OnExit, ServeConfig};

/// mimalloc rather than glibc's malloc: the router's HTTP/2 path allocates per request (h2's
/// frames and streams, header maps), and there it takes about 9 % fewer instructions per
/// request (callgrind; docs/benchmarks.md). The direct HTTP/1.1 path does not allocate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `molt instance-init -- PROGRAM ARGS…`, the PID 1 of every container instance: decided
    // on the first word alone, before the command line parser or any thread starts (the init
    // blocks signals for the whole process; it adds about 3 ms to a container's start).
    let mut args = std::env::args_os();
    if args
        .nth(1)
        .is_some_and(|first| first == molt_init::SUBCOMMAND)
    {
        return ExitCode::from(molt_init::main(args));
    }
    let cli = Cli::parse();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(molt_server::default_data_dir);
    if matches!(cli.command, Command::Serve(_)) {
        // Before any thread exists: everything molt serve writes is private to its user.
        molt_server::private_umask();
    }
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
    let code = match &cli.command {
        Command::Serve(args) => runtime.block_on(serve((**args).clone(), data_dir)),
        Command::Router(args) => runtime.block_on(router((**args).clone(), data_dir)),
        _ => runtime.block_on(molt_cli::run(cli, data_dir)),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

async fn serve(args: ServeArgs, data_dir: std::path::PathBuf) -> i32 {
    let format = match args.log_format.as_str() {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    };
    if let Err(e) = init_logging(format, args.access_log.as_deref()) {
        eprintln!("error: {e:#}");
        return 2;
    }
    exit_code(run_server(args, data_dir, format).await)
}

/// Tells the operator what `molt serve` does: a line of text, or with `--log-format json` an
/// event like every other line of its log.
fn announce(format: LogFormat, text: &str) {
    match format {
        LogFormat::Text => eprintln!("{text}"),
        LogFormat::Json => tracing::info!(target: "molt", "{text}"),
    }
}

async fn router(args: RouterArgs, data_dir: std::path::PathBuf) -> i32 {
    if let Err(e) = init_logging(LogFormat::Text, None) {
        eprintln!("error: {e:#}");
        return 2;
    }
    exit_code(run_router(args, data_dir).await)
}

/// How molt's own log lines are written on stderr.
#[derive(Clone, Copy)]
enum LogFormat {
    /// For people: one line of text per event.
    Text,
    /// For log collectors: one JSON object per line (`timestamp`, `level`, `target`,
    /// `message`, then the event's fields).
    Json,
}

/// The target of the router's access log events (`molt_router::access`).
const ACCESS_TARGET: &str = "molt_router::access";

/// molt's own log on stderr (filtered by `MOLT_LOG`, default `info`) and, with
/// `access_log` (a file, appended, or `-` for stdout), the router's access log as JSON lines.
/// Access events go only to the access log.
fn init_logging(format: LogFormat, access_log: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{filter, fmt, EnvFilter};

    let levels = EnvFilter::try_from_env("MOLT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let own = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter::filter_fn(|meta| meta.target() != ACCESS_TARGET))
    .with_filter(levels);
    let access = match access_log {
        None => None,
        Some(path) => {
            let writer = if path == "-" {
                BoxMakeWriter::new(std::io::stdout)
            } else {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("--access-log {path}: {e}"))?;
                BoxMakeWriter::new(std::sync::Arc::new(file))
            };
            let layer = fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(writer)
                .with_filter(
                    filter::Targets::new().with_target(ACCESS_TARGET, filter::LevelFilter::INFO),
                );
            Some(layer)
        }
    };
    tracing_subscriber::registry().with(own).with(access).init();
    Ok(())
}

fn exit_code(outcome: anyhow::Result<()>) -> i32 {
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run_router(args: RouterArgs, data_dir: std::path::PathBuf) -> anyhow::Result<()> {
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.trim().to_owned(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", file.display()))?
            .trim()
            .to_owned(),
        (None, None) => anyhow::bail!(
            "molt router needs the router token: set MOLT_ROUTER_TOKEN or pass --token-file \
             (the control plane keeps it in <data dir>/router.token)"
        ),
    };
    let name = match args.name.clone() {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| anyhow::anyhow!("cannot read the hostname ({e}); pass --name"))?
            .trim()
            .to_owned(),
    };
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| data_dir.join(format!("router-{name}")));
    let stop = StopSignals::install()?;
    let edge = molt_server::Edge::start(molt_server::EdgeConfig {
        control: args.control.clone(),
        token,
        control_ca: args.control_ca.clone(),
        name: name.clone(),
        listen: args.listen,
        threads: args
            .threads
            .unwrap_or_else(molt_server::default_router_threads),
        tls_listen: args.tls_listen,
        tls_cert_dir: args.tls_cert_dir.clone(),
        state_dir,
    })
    .await?;
    eprintln!(
        "molt router {name}: serving http://{}{} (table version {}), following {}",
        edge.addr,
        edge.tls_addr
            .map(|addr| format!(" and https://{addr}"))
            .unwrap_or_default(),
        edge.version(),
        args.control
    );
    stop.wait().await;
    eprintln!("molt router {name}: stopping");
    edge.shutdown().await
}

async fn run_server(
    args: ServeArgs,
    data_dir: std::path::PathBuf,
    format: LogFormat,
) -> anyhow::Result<()> {
    molt_server::check_data_dir(&data_dir)?;
    let mut cfg = ServeConfig::new(data_dir);
    cfg.api_addr = args.api_listen;
    cfg.router_addr = args.router_listen;
    // The secrets key by environment only (never argv, where `ps` shows it).
    cfg.secrets_key = std::env::var("MOLT_SECRETS_KEY").ok();
    cfg.require_signature = args.require_signature.clone();
    cfg.gc_interval = molt_core::parse_duration(&args.gc_interval)?;
    match args.tls_listen {
        Some(listen) => {
            let mut tls = molt_server::TlsConfig::new(listen);
            tls.cert_dir = args.tls_cert_dir.clone();
            tls.https_redirect = args.https_redirect;
            tls.hsts_max_age = match &args.hsts {
                Some(_) if !args.https_redirect => anyhow::bail!(
                    "--hsts needs --https-redirect: Strict-Transport-Security only makes sense \
                     when plain HTTP sends clients to https"
                ),
                Some(text) => Some(
                    molt_core::parse_duration(text)
                        .map_err(|e| anyhow::anyhow!("--hsts: {e}"))?
                        .as_secs(),
                ),
                None => None,
            };
            tls.acme = acme_config(&args)?;
            cfg.tls = Some(tls);
        }
        None if args.tls_cert_dir.is_some()
            || args.https_redirect
            || args.hsts.is_some()
            || args.acme_directory.is_some()
            || !args.acme_domains.is_empty() =>
        {
            anyhow::bail!(
                "--tls-cert-dir, --https-redirect, --hsts and --acme-* need a TLS listener: \
                 add --tls-listen ADDR"
            );
        }
        None => {}
    }
    cfg.preview_domain = match &args.preview_domain {
        Some(domain) if domain.starts_with("*.") => anyhow::bail!(
            "--preview-domain takes a plain domain (preview.example.com), not a wildcard"
        ),
        Some(domain) => Some(
            domain
                .trim_end_matches('.')
                .parse::<molt_core::Hostname>()
                .map_err(|e| anyhow::anyhow!("--preview-domain: {e}"))?,
        ),
        None => None,
    };
    cfg.isolation = args.isolation.parse()?;
    cfg.network = match args.network.as_str() {
        "bridge" => {
            let subnet = args
                .bridge_subnet
                .parse()
                .map_err(|e| anyhow::anyhow!("--bridge-subnet: {e}"))?;
            Some(
                molt_server::BridgeNetwork::new(&args.bridge, subnet)
                    .map_err(|e| anyhow::anyhow!("--bridge: {e}"))?,
            )
        }
        _ => None,
    };
    cfg.verify_interval = match args.verify_interval.trim() {
        "0" | "off" => None,
        text => Some(molt_core::parse_duration(text)?),
    };
    cfg.drift_hold = match args.drift_hold.trim() {
        "0" => std::time::Duration::ZERO,
        text => {
            molt_core::parse_duration(text).map_err(|e| anyhow::anyhow!("--drift-hold: {e}"))?
        }
    };
    cfg.instance_log = molt_server::LogRotation {
        max_bytes: molt_core::parse_size(&args.instance_log_size)
            .map_err(|e| anyhow::anyhow!("--instance-log-size: {e}"))?,
        files: args.instance_log_files,
    };
    if cfg.instance_log.max_bytes == 0 {
        anyhow::bail!("--instance-log-size must be larger than 0 (e.g. 10MiB)");
    }
    cfg.access_log = args.access_log.is_some();
    if let Some(threads) = args.router_threads {
        cfg.router_threads = threads;
    }
    cfg.api_tls = args.api_tls_listen.map(|listen| molt_server::ApiTlsConfig {
        listen,
        names: args.api_tls_names.clone(),
    });
    cfg.swarm = match args.provider.as_str() {
        "swarm" => {
            let registry = args.registry.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--provider swarm needs --registry HOST[:PORT]: the registry every node pulls \
                     release images from"
                )
            })?;
            let mut swarm = molt_server::SwarmServeConfig::new(registry);
            swarm.socket = args.docker_socket.clone();
            swarm.network = args.swarm_network.clone();
            swarm.control_url = args.swarm_control_url.clone();
            swarm.router_service = args.swarm_router_service.clone();
            swarm.registry_credentials = molt_control_credentials();
            if !args.swarm_router_ports.is_empty() {
                swarm.router_ports = args
                    .swarm_router_ports
                    .iter()
                    .filter(|port| **port != 0)
                    .map(|port| (*port, molt_server::ROUTER_PORT))
                    .collect();
            }
            Some(swarm)
        }
        _ => None,
    };
    // This very executable is every runc instance's init (`molt instance-init`).
    cfg.init_executable = match std::env::current_exe() {
        Ok(executable) => Some(executable),
        Err(e) => {
            eprintln!("warning: cannot find molt's own executable to serve as the init: {e}");
            None
        }
    };
    if let Ok(step) = std::env::var("MOLT_TEST_PAUSE_AT") {
        cfg.pause_at = Some(step.parse()?);
    }
    let stop = StopSignals::install()?;
    let running = molt_server::start(cfg).await?;
    let banner = format!(
        "molt serve: API on http://{}{} (token in {}), router on http://{}{}, isolation: {}",
        running.api_addr,
        running
            .api_tls_addr
            .map(|addr| format!(" and https://{addr}"))
            .unwrap_or_default(),
        running.data_dir.join("admin.token").display(),
        running.router_addr,
        running
            .router_tls_addr
            .map(|addr| format!(" and https://{addr}"))
            .unwrap_or_default(),
        running.controller().isolation()
    );
    announce(format, &banner);
    stop.wait().await;
    announce(format, "molt serve: stopping (draining the router)");
    let on_exit = if args.stop_instances_on_exit {
        OnExit::StopInstances
    } else {
        OnExit::KeepInstances
    };
    running.shutdown(on_exit).await
}

/// Registry credentials from `MOLT_REGISTRY_USERNAME` and `MOLT_REGISTRY_PASSWORD`.
fn molt_control_credentials() -> Option<molt_server::RegistryCredentials> {
    match (
        std::env::var("MOLT_REGISTRY_USERNAME"),
        std::env::var("MOLT_REGISTRY_PASSWORD"),
    ) {
        (Ok(username), Ok(password)) => {
            Some(molt_server::RegistryCredentials { username, password })
        }
        _ => None,
    }
}

/// The ACME settings of `molt serve`, when `--acme-directory` or `--acme-domain` is given.
fn acme_config(args: &ServeArgs) -> anyhow::Result<Option<molt_server::AcmeConfig>> {
    let mut domains = Vec::new();
    for domain in &args.acme_domains {
        let name: molt_core::Hostname = domain
            .parse()
            .map_err(|e| anyhow::anyhow!("--acme-domain {domain}: {e}"))?;
        if name.as_str().starts_with("*.") {
            anyhow::bail!(
                "--acme-domain {domain}: wildcard certificates need dns-01, which molt does not \
                 do; put a wildcard certificate in --tls-cert-dir instead"
            );
        }
        domains.push(name.as_str().to_owned());
    }
    let directory = match (&args.acme_directory, domains.is_empty()) {
        (None, true) => return Ok(None),
        (Some(directory), false) => directory.clone(),
        (None, false) => anyhow::bail!("--acme-domain needs --acme-directory URL"),
        (Some(_), true) => anyhow::bail!("--acme-directory needs at least one --acme-domain HOST"),
    };
    let mut acme = molt_server::AcmeConfig::new(directory, domains);
    acme.contact = args.acme_email.clone();
    acme.ca_cert = args.acme_ca_cert.clone();
    Ok(Some(acme))
}

/// SIGTERM and SIGINT, taken over from the moment this is made: one that arrives while the
/// server is still starting waits for [`StopSignals::wait`] instead of killing the process
/// (the kernel's default), so a stop is always graceful.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Until SIGTERM or SIGINT (at once, if one came already).
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
