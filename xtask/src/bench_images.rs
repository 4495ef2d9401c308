//! `bench images`: throughput of the image store's import and export next to `skopeo copy`
//! doing the same conversion on the same image in the same run, and the storage that 20
//! releases each changing one file take: as folder imports (one layer each) and as bakes of a
//! `[build]` over a sizeable base (the base layer is shared, each release adds its app layer).
//!
//! molt is measured as a library (`molt_image::ImageStore`, release build, one thread), skopeo
//! as the process it is; both read and write the same temp filesystem. MB/s is the size of the
//! archive moved (for folder imports: of the tree) divided by wall time, best of three.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use molt_image::ImageStore;
use serde_json::json;

use crate::Output;

/// How big the benchmark image is.
#[derive(Clone, Copy)]
pub enum Size {
    /// 64 MiB over 256 files.
    Full,
    /// 16 MiB over 64 files.
    Quick,
}

/// One row: an operation by molt and, where skopeo does the same, by skopeo.
struct Row {
    what: &'static str,
    bytes: u64,
    molt: Duration,
    skopeo: Option<Duration>,
}

pub async fn run(size: Size, output: Output) -> Result<()> {
    tokio::task::spawn_blocking(move || run_blocking(size, output)).await?
}

fn run_blocking(size: Size, output: Output) -> Result<()> {
    let files = match size {
        Size::Full => 256,
        Size::Quick => 64,
    };
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    let tree_bytes = make_tree(&tree, files, 0)?;
    let skopeo = which("skopeo");
    if !skopeo {
        eprintln!("skopeo not found: its column stays empty (apt-get install skopeo)");
    }
    let mut rows = Vec::new();

    let store_dir = tmp.path().join("store");
    let (molt, image) = best_of(3, || {
        let _ = fs::remove_dir_all(&store_dir);
        let store = ImageStore::open(&store_dir)?;
        Ok(store.import_dir(&tree)?)
    })?;
    rows.push(Row {
        what: "import folder",
        bytes: tree_bytes,
        molt,
        skopeo: None,
    });
    let store = ImageStore::open(&store_dir)?;

    let oci = tmp.path().join("image.oci.tar");
    let (molt, ()) = best_of(3, || {
        let out = fs::File::create(&oci)?;
        Ok(store.export_oci_archive(&image.digest, "bench", &[], std::io::BufWriter::new(out))?)
    })?;
    let oci_bytes = fs::metadata(&oci)?.len();
    let peer = skopeo_time(skopeo, tmp.path(), |dir| {
        vec![
            format!("oci-archive:{}", oci.display()),
            format!("oci-archive:{}:bench", dir.join("out.tar").display()),
        ]
    })?;
    rows.push(Row {
        what: "export OCI archive",
        bytes: oci_bytes,
        molt,
        skopeo: peer,
    });

    let other_dir = tmp.path().join("other");
    let (molt, _) = best_of(3, || {
        let _ = fs::remove_dir_all(&other_dir);
        let other = ImageStore::open(&other_dir)?;
        let file = std::io::BufReader::new(fs::File::open(&oci)?);
        Ok(other.import_archive(file, None)?)
    })?;
    let peer = skopeo_time(skopeo, tmp.path(), |dir| {
        vec![
            format!("oci-archive:{}", oci.display()),
            format!("oci:{}:bench", dir.join("layout").display()),
        ]
    })?;
    rows.push(Row {
        what: "import OCI archive",
        bytes: oci_bytes,
        molt,
        skopeo: peer,
    });

    let docker = tmp.path().join("image.docker.tar");
    let (molt, ()) = best_of(3, || {
        let out = fs::File::create(&docker)?;
        Ok(store.export_docker_archive(
            &image.digest,
            Some("bench:1"),
            std::io::BufWriter::new(out),
        )?)
    })?;
    let docker_bytes = fs::metadata(&docker)?.len();
    let peer = skopeo_time(skopeo, tmp.path(), |dir| {
        vec![
            format!("oci-archive:{}", oci.display()),
            format!("docker-archive:{}:bench:1", dir.join("out.tar").display()),
        ]
    })?;
    rows.push(Row {
        what: "export Docker archive",
        bytes: docker_bytes,
        molt,
        skopeo: peer,
    });
    let (molt, _) = best_of(3, || {
        let _ = fs::remove_dir_all(&other_dir);
        let other = ImageStore::open(&other_dir)?;
        let file = std::io::BufReader::new(fs::File::open(&docker)?);
        Ok(other.import_archive(file, None)?)
    })?;
    let peer = skopeo_time(skopeo, tmp.path(), |dir| {
        vec![
            format!("docker-archive:{}", docker.display()),
            format!("oci:{}:bench", dir.join("layout").display()),
        ]
    })?;
    rows.push(Row {
        what: "import Docker archive",
        bytes: docker_bytes,
        molt,
        skopeo: peer,
    });

    let dedup = releases_dedup(tmp.path(), files)?;
    let baked = baked_releases_dedup(tmp.path(), files)?;

    match output {
        Output::Json => {
            let rows: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({ "operation": r.what, "bytes": r.bytes,
                            "molt_mb_s": mb_s(r.bytes, r.molt),
                            "skopeo_mb_s": r.skopeo.map(|d| mb_s(r.bytes, d)) })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "tree_bytes": tree_bytes,
                    "throughput": rows, "releases": dedup.to_json(),
                    "baked_releases": baked.to_json() }))?
            );
        }
        Output::Table => {
            println!(
                "image: {} files, {:.1} MiB tree, OCI archive {:.1} MiB, Docker archive {:.1} MiB",
                files,
                mib(tree_bytes),
                mib(oci_bytes),
                mib(docker_bytes)
            );
            println!();
            println!(
                "{:<24} {:>10} {:>12} {:>8}",
                "operation", "molt MB/s", "skopeo MB/s", "ratio"
            );
            for r in &rows {
                let molt = mb_s(r.bytes, r.molt);
                let (peer, ratio) = match r.skopeo {
                    Some(d) => {
                        let p = mb_s(r.bytes, d);
                        (format!("{p:.1}"), format!("{:.2}x", molt / p))
                    }
                    None => ("-".into(), "-".into()),
                };
                println!("{:<24} {:>10.1} {:>12} {:>8}", r.what, molt, peer, ratio);
            }
            println!();
            dedup.print();
            println!();
            baked.print();
        }
    }
    Ok(())
}

/// What 20 releases that each change one file cost in storage.
struct Dedup {
    releases: usize,
    /// What the releases are made of, for the heading.
    shape: String,
    tree_bytes: u64,
    logical_bytes: u64,
    stored_bytes: u64,
    blobs: usize,
    note: &'static str,
}

impl Dedup {
    fn print(&self) {
        println!(
            "{} releases, each changing one file of {}:",
            self.releases, self.shape
        );
        println!(
            "  images' blobs counted per image {:.1} MiB, stored {:.1} MiB in {} blobs: dedup ratio {:.2}",
            mib(self.logical_bytes),
            mib(self.stored_bytes),
            self.blobs,
            self.logical_bytes as f64 / self.stored_bytes.max(1) as f64
        );
        println!("  ({})", self.note);
    }

    fn to_json(&self) -> serde_json::Value {
        json!({ "releases": self.releases, "shape": self.shape, "tree_bytes": self.tree_bytes,
                "logical_bytes": self.logical_bytes, "stored_bytes": self.stored_bytes,
                "blobs": self.blobs,
                "dedup_ratio": self.logical_bytes as f64 / self.stored_bytes.max(1) as f64 })
    }
}

fn releases_dedup(tmp: &Path, files: usize) -> Result<Dedup> {
    const RELEASES: usize = 20;
    let tree = tmp.join("app");
    let tree_bytes = make_tree(&tree, files, 1)?;
    let store_dir = tmp.join("releases");
    let store = ImageStore::open(&store_dir)?;
    let mut logical = 0;
    let mut digests = HashSet::new();
    for n in 0..RELEASES {
        fs::write(tree.join("version.txt"), format!("release {n}\n"))?;
        let image = store.import_dir(&tree)?;
        logical += image.size;
        digests.insert(image.digest);
    }
    if digests.len() != RELEASES {
        bail!("expected {RELEASES} distinct images, got {}", digests.len());
    }
    let mut stored = 0;
    let mut blobs = 0;
    for entry in fs::read_dir(store_dir.join("blobs/sha256"))? {
        let entry = entry?;
        stored += entry.metadata()?.len();
        blobs += 1;
    }
    Ok(Dedup {
        releases: RELEASES,
        shape: format!("a {:.1} MiB folder, imported", mib(tree_bytes)),
        tree_bytes,
        logical_bytes: logical,
        stored_bytes: stored,
        blobs,
        note: "a folder import is one layer, so a one-file change stores a new layer; only \
               identical layers and configs are shared",
    })
}

/// 20 bakes of `base = { rootfs = "base" }` (the benchmark tree, plus busybox when the host
/// has it) and a `copy` of a 1 MiB app whose `version.txt` changes every release.
fn baked_releases_dedup(tmp: &Path, files: usize) -> Result<Dedup> {
    const RELEASES: usize = 20;
    let context = tmp.join("baked");
    let base_bytes = make_tree(&context.join("base"), files, 2)?;
    let busybox = Path::new("/bin/busybox");
    if busybox.is_file() {
        fs::create_dir_all(context.join("base/bin"))?;
        fs::copy(busybox, context.join("base/bin/busybox"))?;
    }
    let app_bytes = make_tree(&context.join("app"), 4, 3)?;
    let text = "name = \"bench\"\ncommand = [\"/bin/busybox\", \"httpd\", \"-f\"]\n\
                [build]\nbase = { rootfs = \"base\" }\nsteps = [\n  \
                { copy = \"app\", to = \"/srv/app\" },\n  { workdir = \"/srv/app\" },\n]\n";
    let spec = molt_core::Manifest::parse(text, "molt.toml")
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .build
        .context("the recipe has a [build]")?;
    let resolve = |r: &molt_core::ImageRef| -> std::result::Result<molt_core::Digest, String> {
        Err(format!("no stored images in this benchmark ({r:?})"))
    };
    let options = molt_image::BakeOptions {
        resolve: &resolve,
        source: molt_image::SourceInfo::default(),
        source_date_epoch: 0,
        name: "bench".into(),
        molt_version: env!("CARGO_PKG_VERSION").into(),
        sandbox: None,
    };
    let store_dir = tmp.join("baked-releases");
    let store = ImageStore::open(&store_dir)?;
    let mut logical = 0;
    let mut digests = HashSet::new();
    for n in 0..RELEASES {
        fs::write(context.join("app/version.txt"), format!("release {n}\n"))?;
        let report = store.bake(&context, &spec, &options)?;
        logical += report.size;
        digests.insert(report.digest);
    }
    if digests.len() != RELEASES {
        bail!("expected {RELEASES} distinct images, got {}", digests.len());
    }
    let mut stored = 0;
    let mut blobs = 0;
    for entry in fs::read_dir(store_dir.join("blobs/sha256"))? {
        let entry = entry?;
        stored += entry.metadata()?.len();
        blobs += 1;
    }
    let tree_bytes = base_bytes + app_bytes;
    Ok(Dedup {
        releases: RELEASES,
        shape: format!(
            "a bake: {:.1} MiB rootfs base + copy of a {:.1} MiB app",
            mib(base_bytes),
            mib(app_bytes)
        ),
        tree_bytes,
        logical_bytes: logical,
        stored_bytes: stored,
        blobs,
        note: "the base layer comes from the bake cache and is stored once; each release stores \
               its app layer, config, SBOM, provenance and manifest",
    })
}

/// Writes `files` files of 256 KiB: half text (compresses), half pseudo-random (does not).
fn make_tree(dir: &Path, files: usize, seed: u64) -> Result<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    let mut total = 0;
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 16));
        fs::create_dir_all(&sub)?;
        let mut bytes = vec![0u8; 256 * 1024];
        if i % 2 == 0 {
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        } else {
            let line = format!("line of file {i}: the quick brown fox jumps over the lazy dog\n");
            for (j, b) in bytes.iter_mut().enumerate() {
                *b = line.as_bytes()[j % line.len()];
            }
        }
        fs::write(sub.join(format!("f{i}.bin")), &bytes)?;
        total += bytes.len() as u64;
    }
    Ok(total)
}

/// Best wall time of `n` runs of `f`, with the last run's result.
fn best_of<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Duration, T)> {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..n {
        let start = Instant::now();
        let out = f()?;
        best = best.min(start.elapsed());
        last = Some(out);
    }
    Ok((best, last.context("no run")?))
}

/// Best of three `skopeo copy` runs, each into a fresh directory.
fn skopeo_time(
    have: bool,
    tmp: &Path,
    args: impl Fn(&Path) -> Vec<String>,
) -> Result<Option<Duration>> {
    if !have {
        return Ok(None);
    }
    let mut best = Duration::MAX;
    for n in 0..3 {
        let dir: PathBuf = tmp.join(format!("skopeo-{n}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let start = Instant::now();
        let out = Command::new("skopeo")
            .args(["copy", "--quiet"])
            .args(args(&dir))
            .output()
            .context("running skopeo")?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!(
                "skopeo copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        best = best.min(took);
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(Some(best))
}

fn which(tool: &str) -> bool {
    Command::new("which")
        .arg(tool)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn mb_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
