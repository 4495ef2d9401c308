//! `molt bake` and `molt images diff`: the folder goes up as the build context, the server bakes.

use std::path::Path;
use std::process::Command as Process;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::deploy::read_manifest;
use super::views::urlencode;
use crate::client::Client;
use crate::output::{print_json, short_digest};

/// `git` facts of the app folder: the commit and whether the folder has uncommitted changes.
fn git_source(dir: &Path) -> (Option<String>, bool) {
    let git = |args: &[&str]| {
        Process::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()));
    let dirty = commit.is_some()
        && git(&["status", "--porcelain", "--", "."]).is_some_and(|s| !s.is_empty());
    (commit, dirty)
}

/// `SOURCE_DATE_EPOCH` from the environment (0 when unset); a malformed value is an error.
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")),
    }
}

/// Uploads `dir` as a build context and returns the server's bake report.
pub(crate) async fn bake_dir(client: &Client, dir: &Path, tag: Option<&str>) -> Result<Value> {
    let epoch = source_date_epoch()?;
    let mut tar = Vec::new();
    molt_image::ImageStore::write_canonical_tar(dir, &mut tar)
        .with_context(|| format!("packing {}", dir.display()))?;
    let (commit, dirty) = git_source(dir);
    let mut query = format!("/v1/bake?dirty={dirty}&source_date_epoch={epoch}");
    if let Some(c) = commit {
        query.push_str(&format!("&commit={c}"));
    }
    if let Some(t) = tag {
        query.push_str(&format!("&tag={}", urlencode(t)));
    }
    client.post_bytes(&query, tar).await
}

/// One line per step: outcome, time, step.
pub(crate) fn step_lines(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "  {:<7} {:>6} ms  {}",
                s["outcome"].as_str().unwrap_or("?"),
                s["millis"],
                s["step"].as_str().unwrap_or("")
            )
        })
        .collect()
}

pub(crate) async fn bake(
    client: &Client,
    dir: &Path,
    tag: Option<String>,
    json: bool,
) -> Result<i32> {
    let (manifest, _) = read_manifest(dir)?;
    if manifest.build.is_none() {
        bail!(
            "{} has no [build]: `molt deploy` uses the folder itself as the image; add a [build] \
             table to bake one (see docs/manifest.md)",
            dir.join("molt.toml").display()
        );
    }
    let started = Instant::now();
    let report = bake_dir(client, dir, tag.as_deref()).await?;
    if json {
        print_json(&report);
        return Ok(0);
    }
    let built = report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["outcome"] == "built")
        .count();
    println!("{}", report["digest"].as_str().unwrap_or_default());
    for line in step_lines(&report) {
        println!("{line}");
    }
    println!(
        "baked in {} ms ({} on the server; {built} layer(s) built, {} files, {} KiB)",
        started.elapsed().as_millis(),
        report["millis"],
        report["files"],
        report["size"].as_u64().unwrap_or(0).div_ceil(1024)
    );
    if let Some(t) = &tag {
        println!(
            "tagged {t} → {}",
            short_digest(report["digest"].as_str().unwrap_or(""))
        );
    }
    Ok(0)
}

pub(crate) async fn image_diff(client: &Client, a: &str, b: &str, json: bool) -> Result<i32> {
    let v = client
        .get(&format!(
            "/v1/images/diff?a={}&b={}",
            urlencode(a),
            urlencode(b)
        ))
        .await?;
    if json {
        print_json(&v);
        return Ok(0);
    }
    for (mark, key) in [("+", "added"), ("-", "removed"), ("~", "changed")] {
        for path in v[key].as_array().into_iter().flatten() {
            println!("{mark} /{}", path.as_str().unwrap_or(""));
        }
    }
    Ok(0)
}
