//! Commands that change what serves: deploy, rollback, config.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use molt_core::{DeployState, Manifest};
use molt_wire::{
    AppStatus, BakeReport, DeploymentJournal, DeploymentRecord, ImportOutcome, ReleaseConfig,
    RollbackOutcome,
};
use serde_json::{json, Value};

use super::EXIT_DEPLOY_FAILED;
use crate::client::{Answer, Client};
use crate::output::{print_json, print_traffic, short_digest};
use crate::ConfigAction;

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
    from: Option<String>,
    shadow: Option<u32>,
    no_wait: bool,
    json: bool,
) -> Result<i32> {
    let (manifest, text) = read_manifest(dir)?;
    let app = manifest.name.to_string();
    if let Some(from) = from {
        // The image of another app's release, never rebuilt: the server resolves it.
        progress(json, &format!("promoting {from}'s image to {app}"));
        let answer = client
            .post_answer(
                &format!("/v1/apps/{app}/deployments"),
                &json!({ "manifest": text, "from": from, "shadow": shadow }),
            )
            .await?;
        return follow_deployment(client, &answer, no_wait, json).await;
    }
    let image = match image {
        Some(i) => i,
        None if manifest.build.is_some() => {
            let started = Instant::now();
            let report: BakeReport = super::bake::bake_dir(client, dir, None).await?.read()?;
            for line in super::bake::step_lines(&report) {
                progress(json, &line);
            }
            progress(
                json,
                &format!(
                    "image {} baked in {} ms",
                    short_digest(report.digest.as_str()),
                    started.elapsed().as_millis()
                ),
            );
            report.digest.to_string()
        }
        None => {
            let started = Instant::now();
            let mut tar = Vec::new();
            let (_, files) = molt_pack::write_canonical_tar(dir, &mut tar)
                .with_context(|| format!("packing {}", dir.display()))?;
            let imported: ImportOutcome =
                client.post_bytes_answer("/v1/images", tar).await?.read()?;
            let digest = imported.image.digest;
            progress(
                json,
                &format!(
                    "image {} ({files} files) imported in {} ms",
                    short_digest(digest.as_str()),
                    started.elapsed().as_millis()
                ),
            );
            digest.to_string()
        }
    };
    let answer = client
        .post_answer(
            &format!("/v1/apps/{app}/deployments"),
            &json!({ "image": image, "manifest": text, "shadow": shadow }),
        )
        .await?;
    follow_deployment(client, &answer, no_wait, json).await
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

/// `molt promote`: ends the shadow (or canary) phase, then follows the swap, drain and watch.
pub(crate) async fn promote(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let app = app_or_here(app, "promote")?;
    let d: DeploymentRecord = client
        .post_answer(&format!("/v1/apps/{app}/promote"), &json!({}))
        .await?
        .read()?;
    progress(
        json,
        &format!(
            "{app}: deployment {} (v{}) promoted{}",
            d.id,
            d.release,
            match &d.canary {
                Some(c) => format!(" at {} % of its canary steps", c.weight),
                None => " after shadowing".into(),
            }
        ),
    );
    if !json {
        print_comparison(&d);
    }
    // Follow from the promotion on: the earlier steps were shown by `molt deploy --shadow`.
    let v: DeploymentJournal = client
        .get_answer(&format!("/v1/deployments/{}", d.id))
        .await?
        .read()?;
    let seen = v
        .journal
        .iter()
        .rposition(|j| j.state == DeployState::Promoted)
        .unwrap_or(0);
    follow_journal(client, d.id, &app, seen, json).await
}

/// `molt abandon`: ends the shadow phase and retires the shadowed environment.
pub(crate) async fn abandon(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let app = app_or_here(app, "abandon")?;
    let answer = client
        .post_answer(&format!("/v1/apps/{app}/abandon"), &json!({}))
        .await?;
    let d: DeploymentRecord = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        println!(
            "{app}: deployment {} (v{}) abandoned; {} retired, the route never moved",
            d.id,
            d.release,
            d.env.as_deref().unwrap_or("its environment")
        );
        print_comparison(&d);
    }
    Ok(0)
}

/// `molt abort`: the canary's weight back to 0, its environment retired.
pub(crate) async fn abort(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let app = app_or_here(app, "abort")?;
    let answer = client
        .post_answer(&format!("/v1/apps/{app}/abort"), &json!({}))
        .await?;
    let d: DeploymentRecord = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        println!(
            "{app}: deployment {} (v{}) aborted: {}",
            d.id,
            d.release,
            d.error.as_deref().unwrap_or("weight back to 0")
        );
    }
    Ok(0)
}

/// Prints a deployment's recorded live/shadow comparison, if it has one.
pub(crate) fn print_comparison(d: &DeploymentRecord) {
    let Some(c) = &d.shadow else {
        return;
    };
    println!(
        "  shadow phase: {} % of GET/HEAD/OPTIONS mirrored for {:.1} s (shadow answers were discarded)",
        c.share_percent,
        c.until_ms.saturating_sub(c.since_ms) as f64 / 1000.0
    );
    print_traffic(&[("live", c.live.as_ref()), ("shadow", Some(&c.shadow))]);
    if let Some(verdict) = &c.verdict {
        println!("  judged as a canary interval would be: {verdict}");
    }
}

pub(crate) fn progress(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Waits for the deployment an answer names to reach its cutover (or its end), printing each
/// journaled step.
pub(crate) async fn follow_deployment(
    client: &Client,
    answer: &Answer,
    no_wait: bool,
    json: bool,
) -> Result<i32> {
    let d: DeploymentRecord = answer.read()?;
    follow(client, &d, answer.json(), no_wait, json).await
}

/// [`follow_deployment`] of a deployment already read (`d`, sent as `sent`).
pub(crate) async fn follow(
    client: &Client,
    d: &DeploymentRecord,
    sent: &Value,
    no_wait: bool,
    json: bool,
) -> Result<i32> {
    let (id, app) = (d.id, &d.app);
    if no_wait {
        if json {
            print_json(sent);
        } else {
            println!(
                "deployment {id} of {app} v{} started; follow it with `molt status {app}`",
                d.release
            );
        }
        return Ok(0);
    }
    progress(
        json,
        &format!("deploying {app} v{} (deployment {id})", d.release),
    );
    follow_journal(client, id, app, 0, json).await
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
        let answer = client.get_answer(&format!("/v1/deployments/{id}")).await?;
        let v: DeploymentJournal = answer.read()?;
        for entry in v.journal.iter().skip(seen) {
            progress(
                json,
                &format!(
                    "  {:>6} ms  {:<18} {}",
                    started.elapsed().as_millis(),
                    entry.state.as_str(),
                    entry.detail
                ),
            );
        }
        seen = v.journal.len();
        let dep = &v.deployment;
        match dep.state {
            DeployState::Shadowing => {
                if json {
                    print_json(answer.json());
                } else {
                    print_shadowing(client, dep).await;
                }
                return Ok(0);
            }
            DeployState::Drained | DeployState::Succeeded => {
                if json {
                    print_json(answer.json());
                } else {
                    print_cutover(client, dep).await;
                }
                return Ok(0);
            }
            DeployState::Failed
            | DeployState::RolledBack
            | DeployState::Superseded
            | DeployState::Abandoned
            | DeployState::Aborted => {
                if json {
                    print_json(answer.json());
                } else {
                    eprintln!(
                        "deployment {id} {}: {}",
                        dep.state.as_str().replace('_', " "),
                        dep.error.as_deref().unwrap_or("no detail recorded")
                    );
                    eprintln!("traffic stays where it was; see `molt logs {app}` and `molt history {app}`");
                }
                return Ok(EXIT_DEPLOY_FAILED);
            }
            DeployState::InstancesStarted if last_wait_note.elapsed() > Duration::from_secs(5) => {
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

/// The app's status, for the hostnames and the live environment a summary mentions; a
/// summary without them is still right, so a failure here only leaves them out.
async fn app_status(client: &Client, app: &str) -> Option<AppStatus> {
    let answer = client.get_answer(&format!("/v1/apps/{app}")).await.ok()?;
    answer.read::<Option<AppStatus>>().ok().flatten()
}

/// What a shadow deployment that reached `shadowing` does, and what comes next.
async fn print_shadowing(client: &Client, dep: &DeploymentRecord) {
    let app = &dep.app;
    let live = app_status(client, app)
        .await
        .and_then(|a| a.app.routed_env)
        .unwrap_or_else(|| "the live environment".into());
    println!(
        "{app} v{} is healthy on {}: {} % of GET/HEAD/OPTIONS requests are mirrored to it; \
         users still get {live}'s answers",
        dep.release,
        dep.env.as_deref().unwrap_or("?"),
        dep.shadow_share.unwrap_or_default()
    );
    println!("  compare live and shadow: molt shadow {app}");
    println!("  promote (swap, drain, watch): molt promote {app}");
    println!("  or abandon (retire it, nothing moves): molt abandon {app}");
}

pub(crate) async fn print_cutover(client: &Client, dep: &DeploymentRecord) {
    let app = &dep.app;
    let hostnames = app_status(client, app)
        .await
        .map(|a| a.hostnames)
        .unwrap_or_default();
    println!(
        "{app} v{} is live on {}",
        dep.release,
        dep.env.as_deref().unwrap_or("?")
    );
    match &dep.figures {
        Some(f) => println!(
            "  cutover: served {}, failed {} from swap to end of drain ({} ms); served {}, failed \
             {} during the whole deployment; deploy to swap {} ms",
            f.served, f.failed, f.drain_ms, f.deploy_served, f.deploy_failed, f.to_swap_ms
        ),
        None => println!("  cutover: no figures recorded"),
    }
    if let Some(h) = hostnames.first() {
        println!("  reach it through the router with Host: {h}");
    }
    if let Some(prev) = &dep.prev_env {
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
    let answer = client
        .post_answer(&format!("/v1/apps/{app}/rollback"), &json!({ "to": to }))
        .await?;
    let outcome: RollbackOutcome = answer.read()?;
    if outcome.kind == "cold" {
        progress(
            json,
            &format!(
                "v{} is no longer warm: cold rollback, redeploying it",
                outcome.release
            ),
        );
        let d = outcome
            .deployment
            .as_ref()
            .ok_or_else(|| missing(&answer, "deployment", "a cold rollback"))?;
        return follow(client, d, &answer.json()["deployment"], false, json).await;
    }
    let swap = outcome
        .swap
        .as_ref()
        .ok_or_else(|| missing(&answer, "swap", "a warm rollback"))?;
    if json {
        print_json(answer.json());
    } else {
        println!(
            "{app}: rolled back to v{} on {} (warm, one route change, {:.2} ms)",
            outcome.release,
            swap.to,
            swap.elapsed_us as f64 / 1000.0
        );
    }
    Ok(0)
}

/// An answer without the optional field `field` that `case` always has.
fn missing(answer: &Answer, field: &str, case: &str) -> anyhow::Error {
    anyhow!(
        "molt serve's answer to {} names no `{field}`, which {case} has; is molt serve the same \
         version as this molt?",
        answer.request()
    )
}

pub(crate) async fn config(client: &Client, action: ConfigAction, json: bool) -> Result<i32> {
    let (app, body, no_wait) = match action {
        ConfigAction::Show { app } => {
            let answer = client.get_answer(&format!("/v1/apps/{app}/config")).await?;
            let config: Option<ReleaseConfig> = answer.read()?;
            if json {
                print_json(answer.json());
            } else {
                for (k, val) in config.iter().flat_map(|c| &c.env) {
                    println!("{k}={val}");
                }
                for (k, version) in config.iter().flat_map(|c| &c.secrets) {
                    println!("{k}=(secret v{version})");
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
    let answer = client
        .post_answer(&format!("/v1/apps/{app}/config"), &body)
        .await?;
    follow_deployment(client, &answer, no_wait, json).await
}
