//! Commands that show state: status, apps, releases, envs, logs, images, gc.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;

use crate::client::Client;
use crate::output::{age, print_json, print_list, short_digest, table, text};

pub(crate) async fn status(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
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
            let shadowing = match d.get("state").and_then(|s| s.as_str()) {
                Some("shadowing") => format!(
                    ", mirroring {} % to {} (molt promote {name} | molt abandon {name})",
                    d["shadow_share"],
                    d["env"].as_str().unwrap_or("?")
                ),
                _ => String::new(),
            };
            println!(
                "  last deployment {}: v{} {}{figures}{shadowing}",
                d["id"],
                d["release"],
                d["state"].as_str().unwrap_or("")
            );
            super::deploy::print_comparison(&a["last_deployment"]);
        }
        let shadow = &a["app"]["shadow"];
        let mut rows = Vec::new();
        for e in a["envs"].as_array().into_iter().flatten() {
            let instances = e["instances"].as_array().cloned().unwrap_or_default();
            let healthy = instances.iter().filter(|i| i["state"] == "healthy").count();
            let role = if e["routed"] == true {
                "live".to_string()
            } else if shadow["env"] == e["env"]["id"] {
                format!("shadow ({} %)", shadow["share_percent"])
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
                match e["attestation"]["rootfs_digest"].as_str() {
                    Some(d) => format!(
                        "{} {}",
                        short_digest(d),
                        e["attestation"]["state"].as_str().unwrap_or("")
                    ),
                    None => e["attestation"]["state"]
                        .as_str()
                        .unwrap_or("-")
                        .to_string(),
                },
            ]);
        }
        table(
            &[
                "ENV", "RELEASE", "ROLE", "HEALTHY", "REQUESTS", "FAILED", "ROOTFS",
            ],
            rows,
        );
    }
    Ok(0)
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
    let v = client.get("/v1/apps").await?;
    print_list(&v, json, &["APP", "SERVING", "ENV"], |a| {
        vec![
            text(&a["app"]["name"]),
            a["serving"]["number"]
                .as_u64()
                .map(|n| format!("v{n}"))
                .unwrap_or_else(|| "-".into()),
            a["app"]["routed_env"].as_str().unwrap_or("-").to_string(),
        ]
    });
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
                .post(
                    &format!("/v1/apps/{app}/releases/{n}/pin"),
                    &json!({ "pinned": pinned }),
                )
                .await?;
        }
    }
    let v = client.get(&format!("/v1/apps/{app}/releases")).await?;
    let header = ["RELEASE", "IMAGE", "CREATED", "PIN", "NOTE"];
    print_list(&v, json, &header, |r| {
        vec![
            format!("v{}", r["number"]),
            short_digest(&text(&r["image"])),
            age(r["created_ms"].as_u64().unwrap_or(0)),
            if r["pinned"] == true { "pinned" } else { "" }.to_string(),
            text(&r["note"]),
        ]
    });
    Ok(0)
}

pub(crate) async fn envs(client: &Client, app: &str, all: bool, json: bool) -> Result<i32> {
    let v = client
        .get(&format!("/v1/apps/{app}/envs?all={all}"))
        .await?;
    let routed = client.get(&format!("/v1/apps/{app}")).await?["app"]["routed_env"].clone();
    if !json {
        let status = client.get(&format!("/v1/status?app={app}")).await?;
        println!("isolation: {}", status["isolation"].as_str().unwrap_or("?"));
    }
    print_list(&v, json, &["ENV", "RELEASE", "ROLE", "CREATED"], |e| {
        let id = text(&e["id"]);
        let role = if routed.as_str() == Some(id.as_str()) {
            "live".to_string()
        } else if let Some(w) = e["warm_until_ms"].as_u64() {
            format!("warm ({} left)", remaining(w))
        } else {
            text(&e["state"])
        };
        let created = age(e["created_ms"].as_u64().unwrap_or(0));
        vec![id, format!("v{}", e["release"]), role, created]
    });
    Ok(0)
}

pub(crate) async fn verify(client: &Client, app: Option<String>, json: bool) -> Result<i32> {
    let v = client.post("/v1/verify", &json!({ "app": app })).await?;
    if json {
        print_json(&v);
    } else {
        let rows = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let state = match r["drift"].as_str() {
                    Some(d) => format!(
                        "DRIFTED ({d}); replaced {}",
                        r["replaced"].as_array().map(|a| a.len()).unwrap_or(0)
                    ),
                    None => "intact".to_string(),
                };
                vec![
                    short_digest(&text(&r["image"])),
                    short_digest(&text(&r["rootfs_digest"])),
                    r["envs"]
                        .as_array()
                        .map(|e| {
                            e.iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default(),
                    state,
                ]
            })
            .collect();
        table(&["IMAGE", "ROOTFS", "ENVS", "STATE"], rows);
    }
    let drifted = v
        .as_array()
        .is_some_and(|a| a.iter().any(|r| !r["drift"].is_null()));
    Ok(if drifted { 3 } else { 0 })
}

pub(crate) async fn gc(client: &Client, dry_run: bool, json: bool) -> Result<i32> {
    let v = client
        .post("/v1/gc", &json!({ "dry_run": dry_run }))
        .await?;
    print_gc(&v, dry_run, json);
    Ok(0)
}

/// Prints a GC report (of `molt gc` or `molt images gc`).
pub(crate) fn print_gc(v: &serde_json::Value, dry_run: bool, json: bool) {
    if json {
        print_json(v);
        return;
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
    let store = &v["store"];
    let n = |k: &str| store[k].as_u64().unwrap_or(0);
    println!(
        "  image store: {} blob(s) ({}), {} unpacked tree(s) ({}), {} leftover(s) ({}), {} \
         bake cache entr(ies)",
        n("blobs"),
        bytes(n("blob_bytes")),
        n("rootfs"),
        bytes(n("rootfs_bytes")),
        n("temps"),
        bytes(n("temp_bytes")),
        n("cache_entries")
    );
    for (env, why) in v["kept"].as_object().into_iter().flatten() {
        println!("  kept {env}: {}", why.as_str().unwrap_or(""));
    }
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
fn print_engine(engine: &serde_json::Value) {
    println!(
        "{:<28} {:<16} {:<8} {:<8} {:<7} ADDRESS",
        "NODE", "HOSTNAME", "ROLE", "STATE", "AVAIL"
    );
    for node in engine["nodes"].as_array().into_iter().flatten() {
        let leader = if node["leader"].as_bool() == Some(true) {
            " (leader)"
        } else {
            ""
        };
        println!(
            "{:<28} {:<16} {:<8} {:<8} {:<7} {}{leader}",
            node["id"].as_str().unwrap_or("?"),
            node["hostname"].as_str().unwrap_or("?"),
            node["role"].as_str().unwrap_or("?"),
            node["state"].as_str().unwrap_or("?"),
            node["availability"].as_str().unwrap_or("?"),
            node["addr"].as_str().unwrap_or(""),
        );
    }
    for env in engine["environments"].as_array().into_iter().flatten() {
        println!(
            "service molt-{}: {} v{}, {} instance(s), {}",
            env["env"].as_str().unwrap_or("?"),
            env["app"].as_str().unwrap_or("?"),
            env["release"].as_u64().unwrap_or(0),
            env["instances"].as_u64().unwrap_or(0),
            env["image"].as_str().unwrap_or("?"),
        );
    }
}

/// `molt cluster status`: the routers of the fleet and the provider.
pub(crate) async fn cluster_status(client: &Client, json: bool) -> Result<i32> {
    let v = client.get("/v1/cluster").await?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    let version = v["routers"]["version"].as_u64().unwrap_or(0);
    println!(
        "provider: {}    route table: version {version}",
        v["provider"].as_str().unwrap_or("?")
    );
    if let Some(engine) = v.get("engine").filter(|e| !e.is_null()) {
        print_engine(engine);
    }
    let routers = v["routers"]["routers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if routers.is_empty() {
        println!("no router of the fleet has connected (molt serve's own router serves alone)");
        return Ok(0);
    }
    println!(
        "{:<20} {:<22} {:>8} {:>5} {:<12} {:>10}",
        "ROUTER", "LISTEN", "VERSION", "LAG", "STATE", "LAST SEEN"
    );
    for router in &routers {
        let state = match (router["connected"].as_bool(), router["fenced"].as_bool()) {
            (_, Some(true)) => "fenced",
            (Some(true), _) => "in fleet",
            _ => "disconnected",
        };
        println!(
            "{:<20} {:<22} {:>8} {:>5} {:<12} {:>9}s",
            router["name"].as_str().unwrap_or("?"),
            router["listen"].as_str().unwrap_or(""),
            router["acknowledged"].as_u64().unwrap_or(0),
            router["lag"].as_u64().unwrap_or(0),
            state,
            router["last_seen_ms"].as_u64().unwrap_or(0) / 1000,
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
