//! `bench bake`: how long `molt bake` takes when nothing changed, after a one-file change, and
//! from cold, next to importing the same folder as one layer (what a folder without `[build]`
//! costs), against a real `molt serve`.
//!
//! The app: a copy of this executable as `bin/backend` (a few MiB) and 300 static files of
//! 4 KiB. Each bake goes the way `molt bake` goes: canonical tar of the folder, upload, the
//! server unpacks the context and bakes with its layer cache.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use molt_cli::Client;
use serde_json::{json, Value};

use crate::bench_core::{build_molt, interpolated_percentile, ms};
use crate::serve::Serve;
use crate::Output;

/// Samples per measured case.
const SAMPLES: usize = 10;
/// Goal for a bake with nothing changed.
const UNCHANGED_GOAL_MS: f64 = 100.0;

const MANIFEST: &str = r#"name = "bench"
command = ["bin/backend", "backend"]
[build]
base = "scratch"
steps = [
  { copy = "bin/backend", to = "/bin/backend" },
  { env = { MODE = "bench" } },
  { copy = "static", to = "/srv/static" },
  { cmd = ["/bin/backend", "backend"] },
  { port = 8080 },
]
"#;

/// One measured case: client wall times and the server's own bake times.
struct Case {
    name: &'static str,
    client: Vec<f64>,
    server: Vec<f64>,
    built: usize,
}

pub async fn run(output: Output) -> Result<()> {
    let binary = build_molt()?;
    let serve = Serve::start(&binary).await?;
    let result = measure(&serve).await;
    serve.stop().await?;
    let (cases, files, bytes) = result?;
    match output {
        Output::Json => {
            let doc: Vec<Value> = cases
                .iter()
                .map(|c| {
                    json!({
                        "case": c.name,
                        "client_ms_median": median(&c.client),
                        "client_ms_p90": p90(&c.client),
                        "server_ms_median": median(&c.server),
                        "layers_built": c.built,
                    })
                })
                .collect();
            println!(
                "{}",
                json!({ "files": files, "bytes": bytes, "cases": doc, "unchanged_goal_ms": UNCHANGED_GOAL_MS })
            );
        }
        Output::Table => print_table(&cases, files, bytes),
    }
    Ok(())
}

async fn measure(serve: &Serve) -> Result<(Vec<Case>, usize, u64)> {
    let app = write_app(serve.scratch_dir())?;
    let (files, bytes) = size_of(&app)?;
    let client = &serve.client;
    let mut cases = Vec::new();

    let started = Instant::now();
    let cold = bake(client, &app).await?;
    cases.push(Case {
        name: "cold (empty cache)",
        client: vec![ms(started.elapsed())],
        server: vec![cold["millis"].as_f64().unwrap_or(0.0)],
        built: built(&cold),
    });
    let digest = cold["digest"].clone();

    let mut unchanged = Case {
        name: "nothing changed",
        client: Vec::new(),
        server: Vec::new(),
        built: 0,
    };
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let report = bake(client, &app).await?;
        unchanged.client.push(ms(started.elapsed()));
        unchanged
            .server
            .push(report["millis"].as_f64().unwrap_or(0.0));
        unchanged.built += built(&report);
        if report["digest"] != digest {
            return Err(anyhow!("an unchanged bake changed the digest: {report}"));
        }
    }
    cases.push(unchanged);

    let mut one_file = Case {
        name: "one static file changed",
        client: Vec::new(),
        server: Vec::new(),
        built: 0,
    };
    for i in 0..SAMPLES {
        std::fs::write(
            app.join("static/file-007.txt"),
            format!("edit {i}\n").repeat(100),
        )
        .context("editing a static file")?;
        let started = Instant::now();
        let report = bake(client, &app).await?;
        one_file.client.push(ms(started.elapsed()));
        one_file
            .server
            .push(report["millis"].as_f64().unwrap_or(0.0));
        one_file.built = built(&report);
    }
    cases.push(one_file);

    let mut import = Case {
        name: "reference: import as one layer",
        client: Vec::new(),
        server: Vec::new(),
        built: 1,
    };
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let mut tar = Vec::new();
        molt_image::ImageStore::write_canonical_tar(&app, &mut tar)
            .with_context(|| format!("packing {}", app.display()))?;
        client
            .post_bytes("/v1/images", tar)
            .await
            .context("importing")?;
        import.client.push(ms(started.elapsed()));
    }
    cases.push(import);
    Ok((cases, files, bytes))
}

/// What `molt bake` does: pack the folder, upload it, let the server bake.
async fn bake(client: &Client, app: &Path) -> Result<Value> {
    let mut tar = Vec::new();
    molt_image::ImageStore::write_canonical_tar(app, &mut tar)
        .with_context(|| format!("packing {}", app.display()))?;
    client
        .post_bytes("/v1/bake?dirty=false&source_date_epoch=0", tar)
        .await
        .context("baking")
}

fn built(report: &Value) -> usize {
    report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["outcome"] == "built")
        .count()
}

/// The app folder: this executable as `bin/backend`, 300 static files, the manifest.
fn write_app(scratch: &Path) -> Result<PathBuf> {
    let dir = scratch.join("bake-app");
    std::fs::create_dir_all(dir.join("bin")).context("creating the app folder")?;
    std::fs::create_dir_all(dir.join("static")).context("creating the app folder")?;
    let exe = std::env::current_exe().context("locating the xtask executable")?;
    std::fs::copy(&exe, dir.join("bin/backend")).context("copying the backend")?;
    for i in 0..300 {
        let line = format!("static file {i}\n");
        std::fs::write(
            dir.join(format!("static/file-{i:03}.txt")),
            line.repeat(4096 / line.len()),
        )
        .context("writing static files")?;
    }
    std::fs::write(dir.join("molt.toml"), MANIFEST).context("writing molt.toml")?;
    Ok(dir)
}

fn size_of(dir: &Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for item in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let item = item?;
            let meta = item.metadata()?;
            if meta.is_dir() {
                pending.push(item.path());
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    Ok((files, bytes))
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn median(samples: &[f64]) -> f64 {
    interpolated_percentile(&sorted(samples), 0.5)
}

fn p90(samples: &[f64]) -> f64 {
    interpolated_percentile(&sorted(samples), 0.9)
}

fn print_table(cases: &[Case], files: usize, bytes: u64) {
    println!(
        "molt bake of a {files}-file, {:.1} MiB app (copy binary, env, copy 300 static files, cmd, port); {SAMPLES} runs per row",
        bytes as f64 / 1048576.0
    );
    println!(
        "{:<32} {:>12} {:>10} {:>14} {:>14}",
        "case", "client p50", "p90", "server p50", "layers built"
    );
    for c in cases {
        let server = if c.server.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1} ms", median(&c.server))
        };
        println!(
            "{:<32} {:>9.1} ms {:>7.1} ms {:>14} {:>14}",
            c.name,
            median(&c.client),
            p90(&c.client),
            server,
            c.built
        );
    }
    if let (Some(unchanged), Some(import)) = (cases.get(1), cases.get(3)) {
        let m = median(&unchanged.client);
        println!(
            "nothing changed: {m:.1} ms (goal <= {UNCHANGED_GOAL_MS} ms: {}); {:.2}x the one-layer import",
            if m <= UNCHANGED_GOAL_MS { "met" } else { "missed" },
            m / median(&import.client).max(0.001)
        );
    }
}
