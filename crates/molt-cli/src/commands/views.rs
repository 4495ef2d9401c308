//! Commands that show state: status, apps, releases, envs, logs, images, gc.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Result};
use molt_core::DeployState;
use molt_wire::{
    AppStatus, ClusterStatus, EngineStatus, EnvRecord, GcReport, InstanceLog, InstanceState,
    PinOutcome, ReleaseRecord, Status, VerifyReport,
};
use serde_json::json;

use crate::client::{Answer, Client};
use crate::output::{age, print_json, print_list, short_digest, table, wire_name};

pub(crate) async fn status(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let path = match &app {
        Some(a) => format!("/v1/status?app={a}"),
        None => "/v1/status".to_string(),
    };
    let answer = client.get_answer(&path).await?;
    let status: Status = answer.read()?;
    if json {
        print_json(answer.json());
        return Ok(0);
    }
    if let Some(a) = &app {
        if status.apps.is_empty() {
            bail!("no app named '{a}': see `molt apps`");
        }
    }
    println!("isolation: {}", status.isolation);
    if status.apps.is_empty() {
        println!("no apps yet: run `molt deploy` in an app folder");
    }
    for a in &status.apps {
        print_app_status(a);
    }
    Ok(0)
}

/// One app of `molt status`: what it serves, its last deployment, its environments.
fn print_app_status(a: &AppStatus) {
    let name = &a.app.name;
    match &a.serving {
        Some(r) => println!(
            "\n{name}: serving v{} on {} — hosts: {}",
            r.number,
            a.app.routed_env.as_deref().unwrap_or("?"),
            a.hostnames.join(", ")
        ),
        None => println!("\n{name}: not serving"),
    }
    if let Some(d) = &a.last_deployment {
        let figures = d
            .figures
            .map(|f| format!(", cutover served {} failed {}", f.served, f.failed))
            .unwrap_or_default();
        let shadowing = match d.state {
            DeployState::Shadowing => format!(
                ", mirroring {} % to {} (molt promote {name} | molt abandon {name})",
                d.shadow_share.unwrap_or_default(),
                d.env.as_deref().unwrap_or("?")
            ),
            DeployState::Canarying => match &d.canary {
                Some(c) => format!(
                    ", canary step {} at {} % on {} ({} interval(s), {} failed; molt promote \
                     {name} | molt abort {name})",
                    c.step + 1,
                    c.weight,
                    d.env.as_deref().unwrap_or("?"),
                    c.verdicts.len(),
                    c.failed
                ),
                None => String::new(),
            },
            _ => String::new(),
        };
        println!(
            "  last deployment {}: v{} {}{figures}{shadowing}",
            d.id, d.release, d.state
        );
        super::deploy::print_comparison(d);
        if let Some(last) = d.canary.as_ref().and_then(|c| c.verdicts.last()) {
            println!(
                "  canary's last interval (step {}, {} %): {}",
                last.step + 1,
                last.weight,
                last.judgement
            );
        }
    }
    if let Some(s) = &a.scaling {
        let spec = &s.spec;
        println!(
            "  autoscaling {}..{} instances at {} in flight each (bounds from {})",
            spec.min, spec.max, spec.concurrency, s.bounds_from
        );
        if let Some(d) = &s.last {
            println!(
                "  last decision {} on {}: {} -> {}: {}",
                crate::output::age(d.at_ms),
                d.env,
                d.from,
                d.to,
                d.reason
            );
        }
    }
    let mut rows = Vec::new();
    for e in &a.envs {
        let healthy = e
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Healthy)
            .count();
        let canary = a
            .last_deployment
            .as_ref()
            .filter(|d| d.state == DeployState::Canarying && d.env.as_deref() == Some(&e.env.id))
            .and_then(|d| d.canary.as_ref());
        let role = match &a.app.shadow {
            _ if canary.is_some() => format!("canary ({} %)", canary.map_or(0, |c| c.weight)),
            _ if e.routed => "live".to_string(),
            Some(shadow) if shadow.env == e.env.id => {
                format!("shadow ({} %)", shadow.share_percent)
            }
            _ => match e.env.warm_until_ms {
                Some(w) => format!("warm ({} left)", remaining(w)),
                None => wire_name(&e.env.state),
            },
        };
        let rootfs = match &e.attestation {
            Some(att) => match &att.rootfs_digest {
                Some(d) => format!("{} {}", short_digest(d.as_str()), att.state),
                None => att.state.clone(),
            },
            None => "-".to_string(),
        };
        rows.push(vec![
            e.env.id.clone(),
            format!("v{}", e.env.release),
            role,
            format!("{healthy}/{}", e.desired),
            e.requests.to_string(),
            e.failed.to_string(),
            success_and_p99(e.traffic.as_ref()),
            rootfs,
        ]);
    }
    table(
        &[
            "ENV",
            "RELEASE",
            "ROLE",
            "HEALTHY",
            "REQUESTS",
            "FAILED",
            "NON-5XX / P99",
            "ROOTFS",
        ],
        rows,
    );
}

/// An environment's share of answers that were not 5xx and its p99, since molt started.
fn success_and_p99(traffic: Option<&molt_wire::TrafficSummary>) -> String {
    match traffic {
        Some(t) if t.requests > 0 => {
            let errors = t.classes.get("5xx").copied().unwrap_or(0);
            let success = 100.0 * (1.0 - errors as f64 / t.requests as f64);
            let p99 = t
                .p99_ms
                .map(|ms| format!("≤{ms} ms"))
                .unwrap_or_else(|| "past 10 s".into());
            format!("{success:.1} % / {p99}")
        }
        _ => "-".to_string(),
    }
}

pub(crate) fn remaining(until_ms: u64) -> String {
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

pub(crate) async fn apps(client: &Client, json: bool) -> Result<i32> {
    let answer = client.get_answer("/v1/apps").await?;
    let apps: Vec<AppStatus> = answer.read()?;
    print_list(
        answer.json(),
        &apps,
        json,
        &["APP", "SERVING", "ENV"],
        |a| {
            vec![
                a.app.name.clone(),
                a.serving
                    .as_ref()
                    .map(|r| format!("v{}", r.number))
                    .unwrap_or_else(|| "-".into()),
                a.app.routed_env.clone().unwrap_or_else(|| "-".into()),
            ]
        },
    );
    Ok(0)
}

pub(crate) async fn releases(
    client: &Client,
    app: &str,
    pin: Option<u64>,
    unpin: Option<u64>,
    json: bool,
) -> Result<i32> {
    for (n, pinned) in [(pin, true), (unpin, false)] {
        if let Some(n) = n {
            client
                .post_answer(
                    &format!("/v1/apps/{app}/releases/{n}/pin"),
                    &json!({ "pinned": pinned }),
                )
                .await?
                .read::<PinOutcome>()?;
        }
    }
    let answer = client
        .get_answer(&format!("/v1/apps/{app}/releases"))
        .await?;
    let releases: Vec<ReleaseRecord> = answer.read()?;
    let header = ["RELEASE", "IMAGE", "CREATED", "PIN", "NOTE"];
    print_list(answer.json(), &releases, json, &header, |r| {
        vec![
            format!("v{}", r.number),
            short_digest(r.image.as_str()),
            age(r.created_ms),
            if r.pinned { "pinned" } else { "" }.to_string(),
            r.note.clone(),
        ]
    });
    Ok(0)
}

pub(crate) async fn envs(client: &Client, app: &str, all: bool, json: bool) -> Result<i32> {
    let answer = client
        .get_answer(&format!("/v1/apps/{app}/envs?all={all}"))
        .await?;
    let envs: Vec<EnvRecord> = answer.read()?;
    let routed = client
        .get_answer(&format!("/v1/apps/{app}"))
        .await?
        .read::<Option<AppStatus>>()?
        .and_then(|a| a.app.routed_env);
    if !json {
        let status: Status = client
            .get_answer(&format!("/v1/status?app={app}"))
            .await?
            .read()?;
        println!("isolation: {}", status.isolation);
    }
    let header = ["ENV", "RELEASE", "ROLE", "CREATED"];
    print_list(answer.json(), &envs, json, &header, |e| {
        let role = if routed.as_deref() == Some(e.id.as_str()) {
            "live".to_string()
        } else if let Some(w) = e.warm_until_ms {
            format!("warm ({} left)", remaining(w))
        } else {
            wire_name(&e.state)
        };
        vec![
            e.id.clone(),
            format!("v{}", e.release),
            role,
            age(e.created_ms),
        ]
    });
    Ok(0)
}

pub(crate) async fn verify(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let answer = client
        .post_answer("/v1/verify", &json!({ "app": app }))
        .await?;
    let reports: Vec<VerifyReport> = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        let rows = reports
            .iter()
            .map(|r| {
                let state = match &r.drift {
                    Some(d) => format!("DRIFTED ({d}); replaced {}", r.replaced.len()),
                    None => "intact".to_string(),
                };
                vec![
                    short_digest(r.image.as_str()),
                    short_digest(r.rootfs_digest.as_str()),
                    r.envs.join(", "),
                    state,
                ]
            })
            .collect();
        table(&["IMAGE", "ROOTFS", "ENVS", "STATE"], rows);
    }
    let drifted = reports.iter().any(|r| r.drift.is_some());
    Ok(if drifted { 3 } else { 0 })
}

pub(crate) async fn gc(client: &Client, dry_run: bool, json: bool) -> Result<i32> {
    let answer = client
        .post_answer("/v1/gc", &json!({ "dry_run": dry_run }))
        .await?;
    print_gc(&answer, dry_run, json)?;
    Ok(0)
}

/// Prints a GC report (of `molt gc` or `molt images gc`).
pub(crate) fn print_gc(answer: &Answer, dry_run: bool, json: bool) -> Result<()> {
    let report: GcReport = answer.read()?;
    if json {
        print_json(answer.json());
        return Ok(());
    }
    let verb = if dry_run {
        "would collect"
    } else {
        "collected"
    };
    println!(
        "{verb}: {} environment(s), {} image(s), {} orphan process(es)",
        report.envs.len(),
        report.images.len(),
        report.orphans.len()
    );
    for e in &report.envs {
        println!("  environment {}", short_digest(e));
    }
    for i in &report.images {
        println!("  image {}", short_digest(i.as_str()));
    }
    for o in &report.orphans {
        println!("  orphan {}", short_digest(o));
    }
    let store = &report.store;
    println!(
        "  image store: {} blob(s) ({}), {} unpacked tree(s) ({}), {} leftover(s) ({}), {} \
         bake cache entr(ies)",
        store.blobs,
        bytes(store.blob_bytes),
        store.rootfs,
        bytes(store.rootfs_bytes),
        store.temps,
        bytes(store.temp_bytes),
        store.cache_entries
    );
    for (env, why) in &report.kept {
        println!("  kept {env}: {why}");
    }
    Ok(())
}

/// A byte count for people: B, KiB, MiB or GiB.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(crate) async fn logs(
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
    let answer = client.get_answer(&query(lines)).await?;
    let tails: Vec<InstanceLog> = answer.read()?;
    if json {
        print_json(answer.json());
        return Ok(0);
    }
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for tail in tails {
        for line in tail.log.lines() {
            println!("{} | {line}", tail.instance);
        }
        last.insert(tail.instance, tail.log);
    }
    if !follow {
        return Ok(0);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tails: Vec<InstanceLog> = client.get_answer(&query(200)).await?.read()?;
        for tail in tails {
            let prev = last.get(&tail.instance).cloned().unwrap_or_default();
            for line in new_lines(&prev, &tail.log).lines() {
                println!("{} | {line}", tail.instance);
            }
            std::io::stdout().flush().ok();
            last.insert(tail.instance, tail.log);
        }
    }
}

/// The lines of `now` that follow the last line of `before` (log tails overlap).
pub(crate) fn new_lines<'a>(before: &str, now: &'a str) -> &'a str {
    if before.is_empty() {
        return now;
    }
    let last = before.lines().last().unwrap_or("");
    match now.rfind(last) {
        Some(i) => now[i + last.len()..].trim_start_matches('\n'),
        None => now,
    }
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The engine part of `molt cluster status`: its nodes and molt's services on it.
fn print_engine(engine: &EngineStatus) {
    println!(
        "{:<28} {:<16} {:<8} {:<8} {:<7} ADDRESS",
        "NODE", "HOSTNAME", "ROLE", "STATE", "AVAIL"
    );
    for node in &engine.nodes {
        let leader = if node.leader { " (leader)" } else { "" };
        println!(
            "{:<28} {:<16} {:<8} {:<8} {:<7} {}{leader}",
            node.id, node.hostname, node.role, node.state, node.availability, node.addr,
        );
    }
    for env in &engine.environments {
        println!(
            "service molt-{}: {} v{}, {} instance(s), {}",
            env.env, env.app, env.release, env.instances, env.image,
        );
    }
}

/// `molt cluster status`: the routers of the fleet and the provider.
pub(crate) async fn cluster_status(client: &Client, json: bool) -> Result<i32> {
    let answer = client.get_answer("/v1/cluster").await?;
    let cluster: ClusterStatus = answer.read()?;
    if json {
        print_json(answer.json());
        return Ok(0);
    }
    println!(
        "provider: {}    route table: version {}",
        cluster.provider, cluster.routers.version
    );
    if let Some(engine) = &cluster.engine {
        print_engine(engine);
    }
    let routers = &cluster.routers.routers;
    if routers.is_empty() {
        println!("no router of the fleet has connected (molt serve's own router serves alone)");
        return Ok(0);
    }
    println!(
        "{:<20} {:<22} {:>8} {:>5} {:<12} {:>10}",
        "ROUTER", "LISTEN", "VERSION", "LAG", "STATE", "LAST SEEN"
    );
    for router in routers {
        let state = if router.fenced {
            "fenced"
        } else if router.connected {
            "in fleet"
        } else {
            "disconnected"
        };
        println!(
            "{:<20} {:<22} {:>8} {:>5} {:<12} {:>9}s",
            router.name,
            router.listen,
            router.acknowledged,
            router.lag,
            state,
            router.last_seen_ms / 1000,
        );
    }
    Ok(0)
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
