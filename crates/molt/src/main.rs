//! The `molt` binary: parses the command line and wires the crates together.

use std::process::ExitCode;

use clap::Parser;
use molt_cli::{Cli, Command, ServeArgs};
use molt_server::{OnExit, ServeConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(molt_server::default_data_dir);
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
        Command::Serve(args) => runtime.block_on(serve(args.clone(), data_dir)),
        _ => runtime.block_on(molt_cli::run(cli, data_dir)),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

async fn serve(args: ServeArgs, data_dir: std::path::PathBuf) -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOLT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run_server(args, data_dir).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run_server(args: ServeArgs, data_dir: std::path::PathBuf) -> anyhow::Result<()> {
    molt_server::check_data_dir(&data_dir)?;
    let mut cfg = ServeConfig::new(data_dir);
    cfg.api_addr = args.api_listen;
    cfg.router_addr = args.router_listen;
    cfg.gc_interval = molt_core::parse_duration(&args.gc_interval)?;
    cfg.isolation = args.isolation.parse()?;
    cfg.verify_interval = match args.verify_interval.trim() {
        "0" | "off" => None,
        text => Some(molt_core::parse_duration(text)?),
    };
    if let Ok(step) = std::env::var("MOLT_TEST_PAUSE_AT") {
        cfg.pause_at = Some(step.parse()?);
    }
    let running = molt_server::start(cfg).await?;
    eprintln!(
        "molt serve: API on http://{} (token in {}), router on http://{}, isolation: {}",
        running.api_addr,
        running.data_dir.join("admin.token").display(),
        running.router_addr,
        running.controller().isolation()
    );
    wait_for_signal().await?;
    eprintln!("molt serve: stopping (draining the router)");
    let on_exit = if args.stop_instances_on_exit {
        OnExit::StopInstances
    } else {
        OnExit::KeepInstances
    };
    running.shutdown(on_exit).await
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
