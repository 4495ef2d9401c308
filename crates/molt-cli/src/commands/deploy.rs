//! Commands that change what serves: deploy, rollback, config.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

use super::EXIT_DEPLOY_FAILED;
use crate::client::Client;
use crate::output::{print_json, print_traffic, short_digest};
use crate::ConfigAction;
use molt_core::Manifest;

/// Reads and checks `molt.toml` in `dir`.
pub(crate) fn read_manifest(dir: &Path) -> Result<(Manifest, String)> {
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

pub(crate) async fn deploy(
    client: &Client,
    dir: &Path,
    image: Option<String>,
    shadow: Option<u32>,
    no_wait: bool,
    json: bool,
) -> Result<i32> {
    let (manifest, text) = read_manifest(dir)?;
    let app = manifest.name.to_string();
    let image = match image {
        Some(i) => i,
        None if manifest.build.is_some() => {
            let started = Instant::now();
            let report = super::bake::bake_dir(client, dir, None).await?;
            let digest = report["digest"].as_str().unwrap_or_default().to_string();
            for line in super::bake::step_lines(&report) {
                progress(json, &line);
            }
            progress(
                json,
                &format!(
                    "image {} baked in {} ms",
                    short_digest(&digest),
                    started.elapsed().as_millis()
                ),
            );
            digest
        }
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
            &json!({ "image": image, "manifest": text, "shadow": shadow }),
        )
        .await?;
    follow_deployment(client, &d, no_wait, json).await
}

/// The app named on the command line, else the one of `./molt.toml`.
fn app_or_here(app: Option<String>, command: &str) -> Result<String> {
    match app {
        Some(a) => Ok(a),
        None => Ok(read_manifest(Path::new("."))
            .map_err(|e| {
                anyhow!("name the app (`molt {command} <app>`), or run this in its folder: {e}")
            })?
            .0
            .name
            .to_string()),
    }
}

/// `molt promote`: ends the shadow phase, then follows the swap, drain and watch.
pub(crate) async fn promote(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let app = app_or_here(app, "promote")?;
    let d = client
        .post(&format!("/v1/apps/{app}/promote"), &json!({}))
        .await?;
    let id = d["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("the server returned no deployment id"))?;
    progress(
        json,
        &format!(
            "{app}: deployment {id} (v{}) promoted after shadowing",
            d["release"]
        ),
    );
    if !json {
        print_comparison(&d);
    }
    // Follow from the promotion on: the earlier steps were shown by `molt deploy --shadow`.
    let v = client.get(&format!("/v1/deployments/{id}")).await?;
    let journal = v["journal"].as_array().cloned().unwrap_or_default();
    let seen = journal
        .iter()
        .rposition(|j| j["state"] == "promoted")
        .unwrap_or(0);
    follow_journal(client, id, &app, seen, json).await
}

/// `molt abandon`: ends the shadow phase and retires the shadowed environment.
pub(crate) async fn abandon(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let app = app_or_here(app, "abandon")?;
    let d = client
        .post(&format!("/v1/apps/{app}/abandon"), &json!({}))
        .await?;
    if json {
        print_json(&d);
    } else {
        println!(
            "{app}: deployment {} (v{}) abandoned; {} retired, the route never moved",
            d["id"],
            d["release"],
            d["env"].as_str().unwrap_or("its environment")
        );
        print_comparison(&d);
    }
    Ok(0)
}

/// Prints a deployment's recorded live/shadow comparison, if it has one.
pub(crate) fn print_comparison(d: &Value) {
    let c = &d["shadow"];
    if !c.is_object() {
        return;
    }
    println!(
        "  shadow phase: {} % of GET/HEAD/OPTIONS mirrored for {:.1} s (shadow answers were discarded)",
        c["share_percent"],
        c["until_ms"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(c["since_ms"].as_u64().unwrap_or(0)) as f64
            / 1000.0
    );
    print_traffic(&[("live", &c["live"]), ("shadow", &c["shadow"])]);
}

pub(crate) fn progress(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Waits for a deployment to reach its cutover (or its end), printing each journaled step.
pub(crate) async fn follow_deployment(
    client: &Client,
    d: &Value,
    no_wait: bool,
    json: bool,
) -> Result<i32> {
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
    follow_journal(client, id, &app, 0, json).await
}

/// Prints deployment `id`'s journal from entry `seen` on, until its cutover (or its shadow
/// phase, or its end).
async fn follow_journal(
    client: &Client,
    id: u64,
    app: &str,
    mut seen: usize,
    json: bool,
) -> Result<i32> {
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
            "shadowing" => {
                if json {
                    print_json(&v);
                } else {
                    print_shadowing(client, dep).await;
                }
                return Ok(0);
            }
            "drained" | "succeeded" => {
                if json {
                    print_json(&v);
                } else {
                    print_cutover(client, dep).await;
                }
                return Ok(0);
            }
            "failed" | "rolled_back" | "superseded" | "abandoned" => {
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

/// What a shadow deployment that reached `shadowing` does, and what comes next.
async fn print_shadowing(client: &Client, dep: &Value) {
    let app = dep["app"].as_str().unwrap_or("?");
    let live = client
        .get(&format!("/v1/apps/{app}"))
        .await
        .ok()
        .and_then(|v| v["app"]["routed_env"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "the live environment".into());
    println!(
        "{app} v{} is healthy on {}: {} % of GET/HEAD/OPTIONS requests are mirrored to it; \
         users still get {live}'s answers",
        dep["release"],
        dep["env"].as_str().unwrap_or("?"),
        dep["shadow_share"]
    );
    println!("  compare live and shadow: molt shadow {app}");
    println!("  promote (swap, drain, watch): molt promote {app}");
    println!("  or abandon (retire it, nothing moves): molt abandon {app}");
}

pub(crate) async fn print_cutover(client: &Client, dep: &Value) {
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

pub(crate) async fn rollback(
    client: &Client,
    app: Option<String>,
    to: Option<String>,
    json: bool,
) -> Result<i32> {
    let app = app_or_here(app, "rollback")?;
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

pub(crate) async fn config(client: &Client, action: ConfigAction, json: bool) -> Result<i32> {
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
