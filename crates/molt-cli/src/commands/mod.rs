//! The client commands.

mod deploy;
mod views;

use deploy::*;
use views::*;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use molt_core::{AppName, Manifest};
use serde_json::{json, Value};

use crate::client::{ApiError, Client, Unreachable};
use crate::output::{age, print_json, print_list, text};
use crate::{Cli, Command};

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
        Command::Init { dir, name } => init(&dir, name, json),
        Command::Deploy {
            dir,
            image,
            no_wait,
        } => deploy(&client()?, &dir, image, no_wait, json).await,
        Command::Status { app } => status(&client()?, app, json).await,
        Command::Apps => apps(&client()?, json).await,
        Command::Releases { app, pin, unpin } => releases(&client()?, &app, pin, unpin, json).await,
        Command::Envs { app, all } => envs(&client()?, &app, all, json).await,
        Command::Swap { app, env } => {
            let v = client()?
                .post(&format!("/v1/apps/{app}/swap"), &json!({ "env": env }))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{app}: route moved to {} (v{}) in {:.2} ms",
                    v["to"].as_str().unwrap_or("?"),
                    v["release"],
                    v["elapsed_us"].as_f64().unwrap_or(0.0) / 1000.0
                );
            }
            Ok(0)
        }
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
        Command::History { app, limit } => {
            let v = client()?
                .get(&format!("/v1/apps/{app}/events?limit={limit}"))
                .await?;
            let oldest_first = Value::Array(
                v.as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .rev()
                    .collect(),
            );
            print_list(&oldest_first, json, &["WHEN", "WHAT", "DETAIL"], |e| {
                vec![
                    age(e["at_ms"].as_u64().unwrap_or(0)),
                    text(&e["kind"]),
                    text(&e["message"]),
                ]
            });
            Ok(0)
        }
        Command::Images { action } => images(&client()?, action, json).await,
        Command::Maintenance {
            app,
            state,
            message,
            retry_after,
        } => {
            let body =
                json!({ "enabled": state == "on", "message": message, "retry_after": retry_after });
            let v = client()?
                .post(&format!("/v1/apps/{app}/maintenance"), &body)
                .await?;
            if json {
                print_json(&v);
            } else if state == "on" {
                println!("{app} is in maintenance: its hostnames answer 503 (Retry-After {retry_after}s); previews still work");
            } else {
                println!("{app} serves again");
            }
            Ok(0)
        }
    }
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
