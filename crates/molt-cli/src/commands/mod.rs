//! The client commands.

mod access;
mod bake;
mod deploy;
mod images;
mod login;
mod scale;
mod signing;
mod views;

use deploy::*;
use images::*;
use views::*;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use molt_core::{AppName, Manifest};
use molt_wire::{
    AppRecord, AuditEntry, EventRecord, ShadowReport, SwapOutcome, TlsCertificates, TlsReload,
};
use serde_json::{json, Value};

use crate::client::{ApiError, Client, Unreachable};
use crate::output::{age, print_json, print_traffic};
use crate::{Cli, ClusterAction, Command, ImageAction, TlsAction};

/// Exit code for a deployment that did not end serving the new release.
pub const EXIT_DEPLOY_FAILED: i32 = 3;
/// Exit code when molt serve cannot be reached.
pub const EXIT_UNREACHABLE: i32 = 4;

/// Runs a client command; returns the process exit code (errors are printed here).
pub async fn run(cli: Cli, data_dir: PathBuf) -> i32 {
    let json = cli.json;
    match dispatch(cli, &data_dir).await {
        Ok(code) => code,
        Err(e) => {
            let code = if e.downcast_ref::<Unreachable>().is_some() {
                EXIT_UNREACHABLE
            } else {
                1
            };
            if json {
                let kind = e
                    .downcast_ref::<ApiError>()
                    .map(|a| a.status.as_u16())
                    .unwrap_or(0);
                println!("{}", json!({ "error": format!("{e:#}"), "status": kind }));
            } else {
                eprintln!("error: {e:#}");
            }
            code
        }
    }
}

async fn dispatch(cli: Cli, data_dir: &Path) -> Result<i32> {
    let json = cli.json;
    let client = || Client::discover(cli.api.clone(), data_dir);
    match cli.command {
        Command::Serve(_) => bail!("`molt serve` is handled by the binary"),
        Command::Router(_) => bail!("`molt router` is handled by the binary"),
        Command::Init { dir, name } => init(&dir, name, json),
        Command::Deploy {
            dir,
            image,
            from,
            no_wait,
            shadow,
        } => deploy(&client()?, &dir, image, from, shadow, no_wait, json).await,
        Command::Promote { app } => promote(&client()?, app, json).await,
        Command::Abandon { app } => abandon(&client()?, app, json).await,
        Command::Abort { app } => abort(&client()?, app, json).await,
        Command::Status { app } => status(&client()?, app, json).await,
        Command::Apps => apps(&client()?, json).await,
        Command::Releases { app, pin, unpin } => releases(&client()?, &app, pin, unpin, json).await,
        Command::Envs { app, all } => envs(&client()?, &app, all, json).await,
        Command::Swap { app, env } => swap(&client()?, &app, &env, json).await,
        Command::Rollback { app, to } => rollback(&client()?, app, to, json).await,
        Command::Config { action } => config(&client()?, action, json).await,
        Command::Gc { dry_run } => gc(&client()?, dry_run, json).await,
        Command::Verify { app } => views::verify(&client()?, app, json).await,
        Command::Logs {
            app,
            instance,
            lines,
            follow,
        } => logs(&client()?, &app, instance, lines, follow, json).await,
        Command::History { app, limit } => history(&client()?, &app, limit, json).await,
        Command::Login { url, token_file } => login::login(&url, token_file, json).await,
        Command::Logout { url } => login::logout(&url, json),
        Command::Secrets { action } => access::secrets(&client()?, action, json).await,
        Command::Tokens { action } => access::tokens(&client()?, action, json).await,
        Command::Audit { app, limit } => access::audit(&client()?, app, limit, json).await,
        Command::Bake { dir, tag } => bake::bake(&client()?, &dir, tag, json).await,
        Command::Images {
            action: ImageAction::Keygen { name },
        } => signing::keygen(&name, json),
        Command::Images { action } => images(&client()?, action, json).await,
        Command::Tls { action } => tls(&client()?, action, json).await,
        Command::Cluster {
            action: ClusterAction::Status,
        } => views::cluster_status(&client()?, json).await,
        Command::Shadow {
            app,
            env,
            share,
            off,
        } => shadow(&client()?, &app, env, share, off, json).await,
        Command::Scale {
            app,
            instances,
            min,
            max,
            reset,
        } => {
            let request = molt_wire::ScaleRequest {
                instances,
                min,
                max,
                reset,
                actor: None,
            };
            scale::scale(&client()?, &app, request, json).await
        }
        Command::Maintenance {
            app,
            state,
            message,
            retry_after,
        } => maintenance(&client()?, &app, state == "on", message, retry_after, json).await,
    }
}

/// `molt swap`: one route change to a kept environment.
async fn swap(client: &Client, app: &str, env: &str, json: bool) -> Result<i32> {
    let answer = client
        .post_answer(&format!("/v1/apps/{app}/swap"), &json!({ "env": env }))
        .await?;
    let swap: SwapOutcome = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        println!(
            "{app}: route moved to {} (v{}) in {:.2} ms",
            swap.to,
            swap.release,
            swap.elapsed_us as f64 / 1000.0
        );
    }
    Ok(0)
}

/// `molt history`: the app's events, oldest first, with who made each change: the audit
/// trail's calls on the app are shown among them when the token may read it (admin).
async fn history(client: &Client, app: &str, limit: usize, json: bool) -> Result<i32> {
    let answer = client
        .get_answer(&format!("/v1/apps/{app}/events?limit={limit}"))
        .await?;
    let mut events: Vec<EventRecord> = answer.read()?;
    events.reverse();
    let oldest_first = Value::Array(
        answer
            .json()
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .cloned()
            .collect(),
    );
    if json {
        print_json(&oldest_first);
        return Ok(0);
    }
    let calls: Vec<AuditEntry> = match client
        .get_answer(&format!("/v1/audit?app={app}&limit={limit}"))
        .await
    {
        Ok(answer) => answer.read()?,
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 403) =>
        {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let mut rows: Vec<(u64, Vec<String>)> = events
        .iter()
        .map(|e| {
            (
                e.at_ms,
                vec![
                    age(e.at_ms),
                    e.kind.clone(),
                    e.message.clone(),
                    String::new(),
                ],
            )
        })
        .collect();
    rows.extend(calls.iter().map(|c| {
        (
            c.at_ms,
            vec![
                age(c.at_ms),
                format!("call {}", c.action),
                format!("{} → {}", c.target, c.status),
                format!("{} ({}, {})", c.actor, c.role, c.source),
            ],
        )
    }));
    rows.sort_by_key(|(at, _)| *at);
    crate::output::table(
        &["WHEN", "WHAT", "DETAIL", "WHO"],
        rows.into_iter().map(|(_, row)| row).collect(),
    );
    Ok(0)
}

/// `molt maintenance on|off`.
async fn maintenance(
    client: &Client,
    app: &str,
    on: bool,
    message: Option<String>,
    retry_after: u32,
    json: bool,
) -> Result<i32> {
    let body = json!({ "enabled": on, "message": message, "retry_after": retry_after });
    let answer = client
        .post_answer(&format!("/v1/apps/{app}/maintenance"), &body)
        .await?;
    answer.read::<AppRecord>()?;
    if json {
        print_json(answer.json());
    } else if on {
        println!("{app} is in maintenance: its hostnames answer 503 (Retry-After {retry_after}s); previews still work");
    } else {
        println!("{app} serves again");
    }
    Ok(0)
}

/// `molt shadow`: start or stop mirroring, or print live and shadow traffic side by side.
async fn shadow(
    client: &Client,
    app: &str,
    env: Option<String>,
    share: u32,
    off: bool,
    json: bool,
) -> Result<i32> {
    let path = format!("/v1/apps/{app}/shadow");
    if env.is_some() || off {
        let answer = client
            .post_answer(&path, &json!({ "env": env, "share": share }))
            .await?;
        answer.read::<AppRecord>()?;
        if json {
            print_json(answer.json());
        } else if let Some(env) = env {
            println!("{share}% of {app}'s GET/HEAD/OPTIONS requests are now mirrored to {env}; users still get the live answers");
            println!("compare with: molt shadow {app}");
        } else {
            println!("shadow traffic of {app} stopped");
        }
        return Ok(0);
    }
    let answer = client.get_answer(&path).await?;
    let report: ShadowReport = answer.read()?;
    if json {
        print_json(answer.json());
        return Ok(0);
    }
    match &report.mode {
        Some(mode) => println!("{app}: {}% mirrored to {}", mode.share_percent, mode.env),
        None => {
            println!("{app}: no shadow traffic (start it with: molt shadow {app} <env> --share 10)")
        }
    }
    print_traffic(&[
        ("live", report.live.as_ref()),
        ("shadow", report.shadow.as_ref()),
    ]);
    Ok(0)
}

fn init(dir: &Path, name: Option<String>, json: bool) -> Result<i32> {
    let path = dir.join("molt.toml");
    if path.exists() {
        bail!(
            "{} already exists; edit it, or remove it to start over",
            path.display()
        );
    }
    let name = match name {
        Some(n) => n,
        None => {
            let abs = std::fs::canonicalize(dir)
                .with_context(|| format!("{} is not a folder", dir.display()))?;
            abs.file_name()
                .map(|n| {
                    n.to_string_lossy()
                        .to_lowercase()
                        .replace(['_', ' ', '.'], "-")
                })
                .unwrap_or_else(|| "app".into())
        }
    };
    let name: AppName = name
        .parse()
        .map_err(|e| anyhow!("{e}; pass a valid one with --name"))?;
    std::fs::write(&path, Manifest::template(&name))
        .with_context(|| format!("writing {}", path.display()))?;
    if json {
        print_json(&json!({ "app": name.as_str(), "manifest": path }));
    } else {
        println!(
            "wrote {} for app '{name}': set `command`, then run `molt deploy`",
            path.display()
        );
    }
    Ok(0)
}

/// `molt tls ls|reload`: exit 1 when a reload left files unusable.
async fn tls(client: &Client, action: TlsAction, json: bool) -> Result<i32> {
    let (answer, hostnames, errors) = match action {
        TlsAction::Ls => {
            let answer = client.get_answer("/v1/tls").await?;
            let certs: TlsCertificates = answer.read()?;
            (answer, certs.hostnames, Vec::new())
        }
        TlsAction::Reload => {
            let answer = client.post_answer("/v1/tls/reload", &json!({})).await?;
            let reload: TlsReload = answer.read()?;
            (answer, reload.hostnames, reload.errors)
        }
    };
    if json {
        print_json(answer.json());
    } else {
        if hostnames.is_empty() {
            println!("no certificates");
        }
        for name in &hostnames {
            println!("{name}");
        }
        for error in &errors {
            eprintln!("error: {error}");
        }
    }
    Ok(i32::from(!errors.is_empty()))
}
