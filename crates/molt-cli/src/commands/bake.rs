//! `molt bake` and `molt images diff`: the folder goes up as the build context, the server bakes.

use std::path::Path;
use std::process::Command as Process;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use molt_wire::{BakeReport, ImageDiff, StepOutcome};

use super::deploy::read_manifest;
use super::views::urlencode;
use crate::client::{Answer, Client};
use crate::output::{print_json, short_digest, wire_name};

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

/// Uploads `dir` as a build context and returns the server's answer, a [`BakeReport`].
pub(crate) async fn bake_dir(client: &Client, dir: &Path, tag: Option<&str>) -> Result<Answer> {
    let epoch = source_date_epoch()?;
    let mut tar = Vec::new();
    molt_pack::write_canonical_tar(dir, &mut tar)
        .with_context(|| format!("packing {}", dir.display()))?;
    let (commit, dirty) = git_source(dir);
    let mut query = format!("/v1/bake?dirty={dirty}&source_date_epoch={epoch}");
    if let Some(c) = commit {
        query.push_str(&format!("&commit={c}"));
    }
    if let Some(t) = tag {
        query.push_str(&format!("&tag={}", urlencode(t)));
    }
    client.post_bytes_answer(&query, tar).await
}

/// One line per step: outcome, time, step. (The time is not padded: these lines have always
/// been printed so, and scripts may read them.)
pub(crate) fn step_lines(report: &BakeReport) -> Vec<String> {
    report
        .steps
        .iter()
        .map(|s| format!("  {:<7} {} ms  {}", wire_name(&s.outcome), s.millis, s.step))
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
    let answer = bake_dir(client, dir, tag.as_deref()).await?;
    let report: BakeReport = answer.read()?;
    if json {
        print_json(answer.json());
        return Ok(0);
    }
    let built = report
        .steps
        .iter()
        .filter(|s| s.outcome == StepOutcome::Built)
        .count();
    println!("{}", report.digest);
    for line in step_lines(&report) {
        println!("{line}");
    }
    println!(
        "baked in {} ms ({} on the server; {built} layer(s) built, {} files, {} KiB)",
        started.elapsed().as_millis(),
        report.millis,
        report.files,
        report.size.div_ceil(1024)
    );
    if let Some(t) = &tag {
        println!("tagged {t} → {}", short_digest(report.digest.as_str()));
    }
    Ok(0)
}

pub(crate) async fn image_diff(client: &Client, a: &str, b: &str, json: bool) -> Result<i32> {
    let answer = client
        .get_answer(&format!(
            "/v1/images/diff?a={}&b={}",
            urlencode(a),
            urlencode(b)
        ))
        .await?;
    let diff: ImageDiff = answer.read()?;
    if json {
        print_json(answer.json());
        return Ok(0);
    }
    for (mark, paths) in [
        ("+", &diff.added),
        ("-", &diff.removed),
        ("~", &diff.changed),
    ] {
        for path in paths {
            println!("{mark} /{path}");
        }
    }
    Ok(0)
}
