//! `molt images …`: list, import, inspect, tag, history, remove, export and GC of images.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use molt_core::Digest;
use molt_wire::{
    ImageInspect, ImageRecord, ImportOutcome, PushReport, RemoveOutcome, TagEvent, TagOutcome,
};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::views::{bytes, print_gc, urlencode};
use crate::client::{Client, UploadChunks};
use crate::output::{age, print_json, print_list, short_digest, table, text};
use crate::ImageAction;

/// Bytes per chunk of a streamed upload.
const CHUNK: usize = 256 * 1024;

/// `molt images …`: one function per action.
pub(crate) async fn images(client: &Client, action: ImageAction, json: bool) -> Result<i32> {
    match action {
        ImageAction::Ls => list(client, json).await?,
        ImageAction::Import {
            path,
            tag,
            force,
            format,
            reference,
        } => {
            let options = ImportArgs {
                tag,
                force,
                format,
                reference,
            };
            import(client, &path, options, json).await?
        }
        ImageAction::Inspect { image } => inspect(client, &image, json).await?,
        ImageAction::History { image } => history(client, image.as_deref(), json).await?,
        ImageAction::Tag { image, tag, force } => {
            tag_image(client, &image, &tag, force, json).await?
        }
        ImageAction::Rm { image } => remove(client, &image, json).await?,
        ImageAction::Export {
            image,
            output,
            format,
            name,
        } => export(client, &image, &output, &format, name.as_deref(), json).await?,
        ImageAction::Push {
            image,
            target,
            mount_from,
        } => push(client, &image, &target, mount_from, json).await?,
        ImageAction::Pull { source, tag, force } => pull(client, source, tag, force, json).await?,
        ImageAction::Gc { dry_run } => gc(client, dry_run, json).await?,
        ImageAction::Diff { a, b } => return super::bake::image_diff(client, &a, &b, json).await,
        ImageAction::Keygen { name } => return super::signing::keygen(&name, json),
        ImageAction::Sign { image, key } => {
            return super::signing::sign(client, &image, &key, json).await
        }
        ImageAction::Signatures { image } => {
            return super::signing::signatures(client, &image, json).await
        }
    }
    Ok(0)
}

/// What `molt images import` was asked besides the path.
struct ImportArgs {
    tag: Option<String>,
    force: bool,
    format: String,
    reference: Option<String>,
}

/// `molt images ls`.
async fn list(client: &Client, json: bool) -> Result<()> {
    let answer = client.get_answer("/v1/images").await?;
    let images: Vec<ImageRecord> = answer.read()?;
    let header = ["DIGEST", "SIZE", "CREATED", "TAGS"];
    print_list(answer.json(), &images, json, &header, |i| {
        vec![
            i.digest.to_string(),
            bytes(i.size),
            age(i.created_ms),
            i.tags.join(","),
        ]
    });
    Ok(())
}

/// `molt images import`: a folder goes up as its canonical tar, a file as it is, both
/// streamed.
async fn import(client: &Client, path: &Path, args: ImportArgs, json: bool) -> Result<()> {
    // A folder is always a tree, whatever files its root holds.
    let sent = if path.is_dir() {
        "tree"
    } else {
        args.format.as_str()
    };
    let mut query = vec![
        format!("format={sent}"),
        format!("actor={}", urlencode(&actor())),
    ];
    if let Some(t) = &args.tag {
        query.push(format!("tag={}", urlencode(t)));
    }
    if args.force {
        query.push("force=true".into());
    }
    if let Some(r) = &args.reference {
        query.push(format!("reference={}", urlencode(r)));
    }
    let chunks = if path.is_dir() {
        if args.format != "auto" && args.format != "tree" {
            bail!(
                "{} is a directory: import it with --format tree",
                path.display()
            );
        }
        tree_chunks(path)
    } else {
        file_chunks(path).await?
    };
    let answer = client
        .post_stream_answer(&format!("/v1/images?{}", query.join("&")), chunks)
        .await?;
    let imported: ImportOutcome = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        println!("{}", imported.image.digest);
        print_signatures_kept(imported.signatures);
        if let Some(old) = &imported.moved_from {
            eprintln!(
                "moved tag {} from {} (recorded in `molt images history`)",
                args.tag.unwrap_or_default(),
                short_digest(old.as_str())
            );
        }
    }
    Ok(())
}

/// `molt images inspect`.
async fn inspect(client: &Client, image: &str, json: bool) -> Result<()> {
    let answer = client
        .get_answer(&format!("/v1/images/{}", urlencode(image)))
        .await?;
    let inspected: ImageInspect = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        print_inspect(&inspected);
    }
    Ok(())
}

/// `molt images history`: of an image, of a tag, or of every tag.
async fn history(client: &Client, image: Option<&str>, json: bool) -> Result<()> {
    let path = match image {
        Some(i) => format!("/v1/images/{}/history", urlencode(i)),
        None => "/v1/tags/history".to_string(),
    };
    let answer = client.get_answer(&path).await?;
    let events: Vec<TagEvent> = answer.read()?;
    let header = ["WHEN", "TAG", "CHANGE", "FROM", "TO", "BY"];
    print_list(answer.json(), &events, json, &header, |e| {
        vec![
            age(e.at_ms),
            e.tag.clone(),
            e.change.clone(),
            short_or_dash(e.old_digest.as_ref()),
            short_or_dash(e.new_digest.as_ref()),
            e.actor.clone(),
        ]
    });
    Ok(())
}

/// `molt images tag`.
async fn tag_image(client: &Client, image: &str, tag: &str, force: bool, json: bool) -> Result<()> {
    let answer = client
        .post_answer(
            &format!("/v1/images/{}/tags", urlencode(image)),
            &json!({ "tag": tag, "force": force, "actor": actor() }),
        )
        .await?;
    let tagged: TagOutcome = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        match &tagged.moved_from {
            Some(old) => println!(
                "{tag} moved from {} to {}",
                short_digest(old.as_str()),
                short_digest(tagged.digest.as_str())
            ),
            None => println!("{tag} names {}", tagged.digest),
        }
    }
    Ok(())
}

/// `molt images rm`.
async fn remove(client: &Client, image: &str, json: bool) -> Result<()> {
    let answer = client
        .delete_answer(&format!("/v1/images/{}", urlencode(image)))
        .await?;
    let removed: RemoveOutcome = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        println!("removed {}", removed.digest);
        for t in &removed.tags {
            println!("  tag {t} removed");
        }
        for r in &removed.orphaned_releases {
            println!(
                "  release {} v{} can no longer be redeployed",
                r.app, r.release
            );
        }
    }
    Ok(())
}

/// `molt images push`.
async fn push(
    client: &Client,
    image: &str,
    target: &str,
    mount_from: Option<String>,
    json: bool,
) -> Result<()> {
    let (username, password) = registry_credentials();
    let answer = client
        .post_answer(
            &format!("/v1/images/{}/push", urlencode(image)),
            &json!({ "target": target, "mount_from": mount_from,
                     "username": username, "password": password }),
        )
        .await?;
    let pushed: PushReport = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        println!(
            "pushed {} to {target}: {} blob(s) uploaded ({}), {} mounted, {} signature(s)",
            pushed.digest,
            pushed.uploaded,
            bytes(pushed.bytes),
            pushed.mounted,
            pushed.signatures
        );
    }
    Ok(())
}

/// `molt images pull`.
async fn pull(
    client: &Client,
    source: String,
    tag: Option<String>,
    force: bool,
    json: bool,
) -> Result<()> {
    let (username, password) = registry_credentials();
    let answer = client
        .post_answer(
            "/v1/images/pull",
            &json!({ "source": source, "tag": tag, "force": force, "actor": actor(),
                     "username": username, "password": password }),
        )
        .await?;
    let pulled: ImportOutcome = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        println!("{}", pulled.image.digest);
        print_signatures_kept(pulled.signatures);
    }
    Ok(())
}

/// Says on stderr how many signatures came with an imported or pulled image (stdout is the
/// digest alone, for scripts).
fn print_signatures_kept(count: u64) {
    if count > 0 {
        eprintln!("kept {count} signature(s) that came with it (`molt images signatures`)");
    }
}

/// `molt images gc`.
async fn gc(client: &Client, dry_run: bool, json: bool) -> Result<()> {
    let answer = client
        .post_answer("/v1/images/gc", &json!({ "dry_run": dry_run }))
        .await?;
    print_gc(&answer, dry_run, json)
}

/// Streams an export into `output` through a temp file renamed at the end, so a failed
/// export never leaves a file that looks whole.
async fn export(
    client: &Client,
    image: &str,
    output: &Path,
    format: &str,
    name: Option<&str>,
    json: bool,
) -> Result<()> {
    let mut path = format!("/v1/images/{}/export?format={format}", urlencode(image));
    if let Some(n) = name {
        path.push_str(&format!("&name={}", urlencode(n)));
    }
    let file_name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.tar".into());
    let partial = output.with_file_name(format!(".{file_name}.partial"));
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let written = client.get_to_file(&path, &mut file).await;
    drop(file);
    let headers = match written {
        Ok(h) => h,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&partial, output)
        .await
        .with_context(|| format!("writing {}", output.display()))?;
    let digest = headers
        .get("x-molt-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    if json {
        print_json(&json!({ "digest": digest, "format": format, "path": output, "bytes": size }));
    } else {
        println!(
            "wrote {} ({format} archive, {}) of {digest}",
            output.display(),
            bytes(size)
        );
    }
    Ok(())
}

fn print_inspect(v: &ImageInspect) {
    println!("image    {}", v.image.digest);
    println!("size     {}", bytes(v.image.size));
    println!("imported {}", age(v.image.created_ms));
    println!(
        "tags     {}",
        if v.image.tags.is_empty() {
            "-".into()
        } else {
            v.image.tags.join(", ")
        }
    );
    let d = &v.details;
    // The image config is the OCI document as stored: read, not required.
    let config = &d.config;
    println!(
        "platform {}/{}",
        text(&config["os"]),
        text(&config["architecture"])
    );
    println!("created  {}", text(&config["created"]));
    if let Some(cmd) = config["config"]["Cmd"].as_array() {
        let argv: Vec<String> = cmd.iter().map(text).collect();
        println!("command  {}", argv.join(" "));
    }
    println!("config   {}", d.config_digest);
    for (k, val) in &d.annotations {
        println!("annotation {k}={val}");
    }
    println!();
    let rows = d
        .layers
        .iter()
        .map(|l| {
            vec![
                short_digest(l.digest.as_str()),
                bytes(l.size),
                l.media_type.clone(),
            ]
        })
        .collect();
    table(&["LAYER", "SIZE", "MEDIA TYPE"], rows);
    let uses: Vec<String> = v
        .releases
        .iter()
        .map(|r| {
            format!(
                "{} v{}{}",
                r.app,
                r.release,
                if r.kept { " (kept)" } else { "" }
            )
        })
        .collect();
    println!();
    println!(
        "used by  {}",
        if uses.is_empty() {
            "no release".into()
        } else {
            uses.join(", ")
        }
    );
}

fn short_or_dash(digest: Option<&Digest>) -> String {
    match digest {
        Some(d) => short_digest(d.as_str()),
        None => "-".into(),
    }
}

/// Registry credentials from the environment (never from arguments, which other users see).
fn registry_credentials() -> (Option<String>, Option<String>) {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    (get("MOLT_REGISTRY_USERNAME"), get("MOLT_REGISTRY_PASSWORD"))
}

/// Who runs the CLI, for the tag history and the app's: `$USER@host`, as far as the environment says.
pub(crate) fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// A file's bytes, read in chunks as the upload goes.
async fn file_chunks(path: &Path) -> Result<UploadChunks> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// The canonical tar of a directory, written by a blocking thread as the upload goes.
fn tree_chunks(dir: &Path) -> UploadChunks {
    let (tx, rx) = mpsc::channel(4);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let packed = molt_pack::write_canonical_tar(&dir, &mut out)
            .map_err(|e| io::Error::other(format!("packing {}: {e}", dir.display())))
            .and_then(|_| out.flush());
        if let Err(e) = packed {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// Hands written bytes to the upload in chunks.
struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}
