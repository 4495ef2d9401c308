//! The client commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use molt_core::{AppName, Manifest};
use serde_json::{json, Value};

use crate::client::{ApiError, Client, Unreachable};
use crate::output::{age, print_json, short_digest, table};
use crate::{Cli, Command, ConfigAction, ImageAction};

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
            if json {
                print_json(&v);
            } else {
                let mut rows = Vec::new();
                for e in v.as_array().into_iter().flatten().rev() {
                    rows.push(vec![
                        age(e["at_ms"].as_u64().unwrap_or(0)),
                        e["kind"].as_str().unwrap_or("").to_string(),
                        e["message"].as_str().unwrap_or("").to_string(),
                    ]);
                }
                table(&["WHEN", "WHAT", "DETAIL"], rows);
            }
            Ok(0)
        }
        Command::Images { action } => images(&client()?, action, json).await,
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

/// Reads and checks `molt.toml` in `dir`.
fn read_manifest(dir: &Path) -> Result<(Manifest, String)> {
    let path = dir.join("molt.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow!(
            "cannot read {}: {e}; run `molt init` there to create one",
            path.display()
        )
    })?;
    let manifest = Manifest::parse(&text, &path.display().to_string())?;
    Ok((manifest, text))
}

async fn deploy(
    client: &Client,
    dir: &Path,
    image: Option<String>,
    no_wait: bool,
    json: bool,
) -> Result<i32> {
    let (manifest, text) = read_manifest(dir)?;
    let app = manifest.name.to_string();
    let image = match image {
        Some(i) => i,
        None => {
            let started = Instant::now();
            let mut tar = Vec::new();
            let (_, files) = molt_image::ImageStore::write_canonical_tar(dir, &mut tar)
                .with_context(|| format!("packing {}", dir.display()))?;
            let v = client.post_bytes("/v1/images", tar).await?;
            let digest = v["digest"].as_str().unwrap_or_default().to_string();
            progress(
                json,
                &format!(
                    "image {} ({files} files) imported in {} ms",
                    short_digest(&digest),
                    started.elapsed().as_millis()
                ),
            );
            digest
        }
    };
    let d = client
        .post(
            &format!("/v1/apps/{app}/deployments"),
            &json!({ "image": image, "manifest": text }),
        )
        .await?;
    follow_deployment(client, &d, no_wait, json).await
}

fn progress(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Waits for a deployment to reach its cutover (or its end), printing each journaled step.
async fn follow_deployment(client: &Client, d: &Value, no_wait: bool, json: bool) -> Result<i32> {
    let id = d["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("the server returned no deployment id"))?;
    let app = d["app"].as_str().unwrap_or("?").to_string();
    if no_wait {
        if json {
            print_json(d);
        } else {
            println!(
                "deployment {id} of {app} v{} started; follow it with `molt status {app}`",
                d["release"]
            );
        }
        return Ok(0);
    }
    progress(
        json,
        &format!("deploying {app} v{} (deployment {id})", d["release"]),
    );
    let mut seen = 0;
    let started = Instant::now();
    let mut last_wait_note = Instant::now();
    loop {
        let v = client.get(&format!("/v1/deployments/{id}")).await?;
        let journal = v["journal"].as_array().cloned().unwrap_or_default();
        for entry in journal.iter().skip(seen) {
            progress(
                json,
                &format!(
                    "  {:>6} ms  {:<18} {}",
                    started.elapsed().as_millis(),
                    entry["state"].as_str().unwrap_or(""),
                    entry["detail"].as_str().unwrap_or("")
                ),
            );
        }
        seen = journal.len();
        let dep = &v["deployment"];
        let state = dep["state"].as_str().unwrap_or("");
        match state {
            "drained" | "succeeded" => {
                if json {
                    print_json(&v);
                } else {
                    print_cutover(client, dep).await;
                }
                return Ok(0);
            }
            "failed" | "rolled_back" | "superseded" => {
                if json {
                    print_json(&v);
                } else {
                    eprintln!(
                        "deployment {id} {}: {}",
                        state.replace('_', " "),
                        dep["error"].as_str().unwrap_or("no detail recorded")
                    );
                    eprintln!("traffic stays where it was; see `molt logs {app}` and `molt history {app}`");
                }
                return Ok(EXIT_DEPLOY_FAILED);
            }
            "instances_started" if last_wait_note.elapsed() > Duration::from_secs(5) => {
                progress(
                    json,
                    &format!(
                        "  waiting for health checks ({} s)…",
                        started.elapsed().as_secs()
                    ),
                );
                last_wait_note = Instant::now();
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn print_cutover(client: &Client, dep: &Value) {
    let app = dep["app"].as_str().unwrap_or("?");
    let f = &dep["figures"];
    let router = client
        .get(&format!("/v1/apps/{app}"))
        .await
        .ok()
        .and_then(|v| v["hostnames"].as_array().cloned())
        .unwrap_or_default();
    println!(
        "{app} v{} is live on {}",
        dep["release"],
        dep["env"].as_str().unwrap_or("?")
    );
    println!(
        "  cutover: served {}, failed {} from swap to end of drain ({} ms); served {}, failed {} \
         during the whole deployment; deploy to swap {} ms",
        f["served"],
        f["failed"],
        f["drain_ms"],
        f["deploy_served"],
        f["deploy_failed"],
        f["to_swap_ms"]
    );
    if let Some(h) = router.first().and_then(|h| h.as_str()) {
        println!("  reach it through the router with Host: {h}");
    }
    if let Some(prev) = dep["prev_env"].as_str() {
        println!("  {prev} stays warm: roll back instantly with `molt rollback {app}`");
    }
}

async fn status(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let path = match &app {
        Some(a) => format!("/v1/status?app={a}"),
        None => "/v1/status".to_string(),
    };
    let v = client.get(&path).await?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    let apps = v["apps"].as_array().cloned().unwrap_or_default();
    if let Some(a) = &app {
        if apps.is_empty() {
            bail!("no app named '{a}': see `molt apps`");
        }
    }
    println!("isolation: {}", v["isolation"].as_str().unwrap_or("?"));
    if apps.is_empty() {
        println!("no apps yet: run `molt deploy` in an app folder");
    }
    for a in apps {
        let name = a["app"]["name"].as_str().unwrap_or("?");
        match a["serving"].as_object() {
            Some(r) => println!(
                "\n{name}: serving v{} on {} — hosts: {}",
                r["number"],
                a["app"]["routed_env"].as_str().unwrap_or("?"),
                a["hostnames"]
                    .as_array()
                    .map(|h| h
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ),
            None => println!("\n{name}: not serving"),
        }
        if let Some(d) = a["last_deployment"].as_object() {
            let figures = d
                .get("figures")
                .filter(|f| !f.is_null())
                .map(|f| format!(", cutover served {} failed {}", f["served"], f["failed"]))
                .unwrap_or_default();
            println!(
                "  last deployment {}: v{} {}{figures}",
                d["id"],
                d["release"],
                d["state"].as_str().unwrap_or("")
            );
        }
        let mut rows = Vec::new();
        for e in a["envs"].as_array().into_iter().flatten() {
            let instances = e["instances"].as_array().cloned().unwrap_or_default();
            let healthy = instances.iter().filter(|i| i["state"] == "healthy").count();
            let role = if e["routed"] == true {
                "live".to_string()
            } else if let Some(w) = e["env"]["warm_until_ms"].as_u64() {
                format!("warm ({} left)", remaining(w))
            } else {
                e["env"]["state"].as_str().unwrap_or("").to_string()
            };
            rows.push(vec![
                e["env"]["id"].as_str().unwrap_or("").to_string(),
                format!("v{}", e["env"]["release"]),
                role,
                format!("{healthy}/{}", instances.len()),
                e["requests"].to_string(),
                e["failed"].to_string(),
            ]);
        }
        table(
            &["ENV", "RELEASE", "ROLE", "HEALTHY", "REQUESTS", "FAILED"],
            rows,
        );
    }
    Ok(0)
}

fn remaining(until_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = until_ms.saturating_sub(now) / 1000;
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

async fn apps(client: &Client, json: bool) -> Result<i32> {
    let v = client.get("/v1/apps").await?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                a["app"]["name"].as_str().unwrap_or("").to_string(),
                a["serving"]["number"]
                    .as_u64()
                    .map(|n| format!("v{n}"))
                    .unwrap_or_else(|| "-".into()),
                a["app"]["routed_env"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    table(&["APP", "SERVING", "ENV"], rows);
    Ok(0)
}

async fn releases(
    client: &Client,
    app: &str,
    pin: Option<u64>,
    unpin: Option<u64>,
    json: bool,
) -> Result<i32> {
    for (n, pinned) in [(pin, true), (unpin, false)] {
        if let Some(n) = n {
            client
                .post(
                    &format!("/v1/apps/{app}/releases/{n}/pin"),
                    &json!({ "pinned": pinned }),
                )
                .await?;
        }
    }
    let v = client.get(&format!("/v1/apps/{app}/releases")).await?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                format!("v{}", r["number"]),
                short_digest(r["image"].as_str().unwrap_or("")),
                age(r["created_ms"].as_u64().unwrap_or(0)),
                if r["pinned"] == true { "pinned" } else { "" }.to_string(),
                r["note"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    table(&["RELEASE", "IMAGE", "CREATED", "PIN", "NOTE"], rows);
    Ok(0)
}

async fn envs(client: &Client, app: &str, all: bool, json: bool) -> Result<i32> {
    let v = client
        .get(&format!("/v1/apps/{app}/envs?all={all}"))
        .await?;
    let routed = client.get(&format!("/v1/apps/{app}")).await?["app"]["routed_env"].clone();
    if json {
        print_json(&v);
        return Ok(0);
    }
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let id = e["id"].as_str().unwrap_or("").to_string();
            let role = if routed.as_str() == Some(id.as_str()) {
                "live".to_string()
            } else if let Some(w) = e["warm_until_ms"].as_u64() {
                format!("warm ({} left)", remaining(w))
            } else {
                e["state"].as_str().unwrap_or("").to_string()
            };
            vec![
                id,
                format!("v{}", e["release"]),
                role,
                age(e["created_ms"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    table(&["ENV", "RELEASE", "ROLE", "CREATED"], rows);
    Ok(0)
}

async fn rollback(
    client: &Client,
    app: Option<String>,
    to: Option<String>,
    json: bool,
) -> Result<i32> {
    let app = match app {
        Some(a) => a,
        None => read_manifest(Path::new("."))
            .map_err(|e| {
                anyhow!("name the app (`molt rollback <app>`), or run this in its folder: {e}")
            })?
            .0
            .name
            .to_string(),
    };
    let to = match to {
        Some(t) => Some(
            t.trim_start_matches('v')
                .parse::<u64>()
                .map_err(|_| anyhow!("--to takes a release such as v3 or 3, not '{t}'"))?,
        ),
        None => None,
    };
    let v = client
        .post(&format!("/v1/apps/{app}/rollback"), &json!({ "to": to }))
        .await?;
    if v["kind"] == "cold" {
        progress(
            json,
            &format!(
                "v{} is no longer warm: cold rollback, redeploying it",
                v["release"]
            ),
        );
        return follow_deployment(client, &v["deployment"], false, json).await;
    }
    if json {
        print_json(&v);
    } else {
        println!(
            "{app}: rolled back to v{} on {} (warm, one route change, {:.2} ms)",
            v["release"],
            v["swap"]["to"].as_str().unwrap_or("?"),
            v["swap"]["elapsed_us"].as_f64().unwrap_or(0.0) / 1000.0
        );
    }
    Ok(0)
}

async fn config(client: &Client, action: ConfigAction, json: bool) -> Result<i32> {
    let (app, body, no_wait) = match action {
        ConfigAction::Show { app } => {
            let v = client.get(&format!("/v1/apps/{app}/config")).await?;
            if json {
                print_json(&v);
            } else {
                for (k, val) in v["env"].as_object().into_iter().flatten() {
                    println!("{k}={}", val.as_str().unwrap_or(""));
                }
            }
            return Ok(0);
        }
        ConfigAction::Set {
            app,
            pairs,
            no_wait,
        } => {
            let mut set = BTreeMap::new();
            for p in pairs {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| anyhow!("'{p}' is not KEY=VALUE"))?;
                set.insert(k.to_string(), v.to_string());
            }
            (app, json!({ "set": set }), no_wait)
        }
        ConfigAction::Unset { app, keys, no_wait } => (app, json!({ "unset": keys }), no_wait),
    };
    let d = client
        .post(&format!("/v1/apps/{app}/config"), &body)
        .await?;
    follow_deployment(client, &d, no_wait, json).await
}

async fn gc(client: &Client, dry_run: bool, json: bool) -> Result<i32> {
    let v = client
        .post("/v1/gc", &json!({ "dry_run": dry_run }))
        .await?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    let verb = if dry_run {
        "would collect"
    } else {
        "collected"
    };
    let list = |k: &str| {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(short_digest)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let (envs, images, orphans) = (list("envs"), list("images"), list("orphans"));
    println!(
        "{verb}: {} environment(s), {} image(s), {} orphan process(es)",
        envs.len(),
        images.len(),
        orphans.len()
    );
    for e in envs {
        println!("  environment {e}");
    }
    for i in images {
        println!("  image {i}");
    }
    for o in orphans {
        println!("  orphan {o}");
    }
    for (env, why) in v["kept"].as_object().into_iter().flatten() {
        println!("  kept {env}: {}", why.as_str().unwrap_or(""));
    }
    Ok(0)
}

async fn logs(
    client: &Client,
    app: &str,
    instance: Option<String>,
    lines: usize,
    follow: bool,
    json: bool,
) -> Result<i32> {
    let query = |n: usize| match &instance {
        Some(i) => format!("/v1/apps/{app}/logs?lines={n}&instance={i}"),
        None => format!("/v1/apps/{app}/logs?lines={n}"),
    };
    let v = client.get(&query(lines)).await?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for entry in v.as_array().into_iter().flatten() {
        let id = entry["instance"].as_str().unwrap_or("?").to_string();
        let log = entry["log"].as_str().unwrap_or("").to_string();
        for line in log.lines() {
            println!("{id} | {line}");
        }
        last.insert(id, log);
    }
    if !follow {
        return Ok(0);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v = client.get(&query(200)).await?;
        for entry in v.as_array().into_iter().flatten() {
            let id = entry["instance"].as_str().unwrap_or("?").to_string();
            let log = entry["log"].as_str().unwrap_or("").to_string();
            let prev = last.get(&id).cloned().unwrap_or_default();
            let new_part = new_lines(&prev, &log);
            for line in new_part.lines() {
                println!("{id} | {line}");
            }
            std::io::stdout().flush().ok();
            last.insert(id, log);
        }
    }
}

/// The lines of `now` that follow the last line of `before` (log tails overlap).
fn new_lines<'a>(before: &str, now: &'a str) -> &'a str {
    if before.is_empty() {
        return now;
    }
    let last = before.lines().last().unwrap_or("");
    match now.rfind(last) {
        Some(i) => now[i + last.len()..].trim_start_matches('\n'),
        None => now,
    }
}

async fn images(client: &Client, action: ImageAction, json: bool) -> Result<i32> {
    match action {
        ImageAction::Ls => {
            let v = client.get("/v1/images").await?;
            if json {
                print_json(&v);
                return Ok(0);
            }
            let rows = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    vec![
                        i["digest"].as_str().unwrap_or("").to_string(),
                        format!("{} KiB", i["size"].as_u64().unwrap_or(0).div_ceil(1024)),
                        age(i["created_ms"].as_u64().unwrap_or(0)),
                        i["tags"]
                            .as_array()
                            .map(|t| {
                                t.iter()
                                    .filter_map(|x| x.as_str())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            table(&["DIGEST", "SIZE", "CREATED", "TAGS"], rows);
        }
        ImageAction::Import { path, tag } => {
            let bytes = if path.is_dir() {
                let mut tar = Vec::new();
                molt_image::ImageStore::write_canonical_tar(&path, &mut tar)
                    .with_context(|| format!("packing {}", path.display()))?;
                tar
            } else {
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
            };
            let q = match &tag {
                Some(t) => format!("/v1/images?tag={}", urlencode(t)),
                None => "/v1/images".to_string(),
            };
            let v = client.post_bytes(&q, bytes).await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", v["digest"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(0)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_overlapping_tails() {
        assert_eq!(new_lines("a\nb", "a\nb\nc\nd"), "c\nd");
        assert_eq!(new_lines("", "x"), "x");
        assert_eq!(new_lines("zzz", "a\nb"), "a\nb");
    }

    #[test]
    fn encodes_tags() {
        assert_eq!(urlencode("shop:42"), "shop%3A42");
    }
}
