//! `molt images …`: list, import, inspect, tag, history, remove, export and GC of images.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::views::{bytes, print_gc, urlencode};
use crate::client::{Client, UploadChunks};
use crate::output::{age, print_json, print_list, short_digest, table, text};
use crate::ImageAction;

/// Bytes per chunk of a streamed upload.
const CHUNK: usize = 256 * 1024;

pub(crate) async fn images(client: &Client, action: ImageAction, json: bool) -> Result<i32> {
    match action {
        ImageAction::Ls => {
            let v = client.get("/v1/images").await?;
            print_list(&v, json, &["DIGEST", "SIZE", "CREATED", "TAGS"], |i| {
                vec![
                    text(&i["digest"]),
                    bytes(i["size"].as_u64().unwrap_or(0)),
                    age(i["created_ms"].as_u64().unwrap_or(0)),
                    tags(i).join(","),
                ]
            });
        }
        ImageAction::Import {
            path,
            tag,
            force,
            format,
            reference,
        } => {
            // A folder is always a tree, whatever files its root holds.
            let sent = if path.is_dir() {
                "tree"
            } else {
                format.as_str()
            };
            let mut query = vec![
                format!("format={sent}"),
                format!("actor={}", urlencode(&actor())),
            ];
            if let Some(t) = &tag {
                query.push(format!("tag={}", urlencode(t)));
            }
            if force {
                query.push("force=true".into());
            }
            if let Some(r) = &reference {
                query.push(format!("reference={}", urlencode(r)));
            }
            let chunks = if path.is_dir() {
                if format != "auto" && format != "tree" {
                    bail!(
                        "{} is a directory: import it with --format tree",
                        path.display()
                    );
                }
                tree_chunks(&path)
            } else {
                file_chunks(&path).await?
            };
            let v = client
                .post_stream(&format!("/v1/images?{}", query.join("&")), chunks)
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", text(&v["digest"]));
                if let Some(old) = v["moved_from"].as_str() {
                    eprintln!(
                        "moved tag {} from {} (recorded in `molt images history`)",
                        tag.unwrap_or_default(),
                        short_digest(old)
                    );
                }
            }
        }
        ImageAction::Inspect { image } => {
            let v = client
                .get(&format!("/v1/images/{}", urlencode(&image)))
                .await?;
            if json {
                print_json(&v);
            } else {
                print_inspect(&v);
            }
        }
        ImageAction::History { image } => {
            let path = match &image {
                Some(i) => format!("/v1/images/{}/history", urlencode(i)),
                None => "/v1/tags/history".to_string(),
            };
            let v = client.get(&path).await?;
            print_list(
                &v,
                json,
                &["WHEN", "TAG", "CHANGE", "FROM", "TO", "BY"],
                |e| {
                    vec![
                        age(e["at_ms"].as_u64().unwrap_or(0)),
                        text(&e["tag"]),
                        text(&e["change"]),
                        short_or_dash(&e["old_digest"]),
                        short_or_dash(&e["new_digest"]),
                        text(&e["actor"]),
                    ]
                },
            );
        }
        ImageAction::Tag { image, tag, force } => {
            let v = client
                .post(
                    &format!("/v1/images/{}/tags", urlencode(&image)),
                    &json!({ "tag": tag, "force": force, "actor": actor() }),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                match v["moved_from"].as_str() {
                    Some(old) => println!(
                        "{tag} moved from {} to {}",
                        short_digest(old),
                        short_digest(&text(&v["digest"]))
                    ),
                    None => println!("{tag} names {}", text(&v["digest"])),
                }
            }
        }
        ImageAction::Rm { image } => {
            let v = client
                .delete(&format!("/v1/images/{}", urlencode(&image)))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("removed {}", text(&v["digest"]));
                for t in tags(&v) {
                    println!("  tag {t} removed");
                }
                for r in v["orphaned_releases"].as_array().into_iter().flatten() {
                    println!(
                        "  release {} v{} can no longer be redeployed",
                        text(&r["app"]),
                        r["release"]
                    );
                }
            }
        }
        ImageAction::Export {
            image,
            output,
            format,
            name,
        } => {
            export(client, &image, &output, &format, name.as_deref(), json).await?;
        }
        ImageAction::Push {
            image,
            target,
            mount_from,
        } => {
            let (username, password) = registry_credentials();
            let v = client
                .post(
                    &format!("/v1/images/{}/push", urlencode(&image)),
                    &json!({ "target": target, "mount_from": mount_from,
                             "username": username, "password": password }),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "pushed {} to {target}: {} blob(s) uploaded ({}), {} mounted",
                    text(&v["digest"]),
                    v["uploaded"],
                    bytes(v["bytes"].as_u64().unwrap_or(0)),
                    v["mounted"]
                );
            }
        }
        ImageAction::Pull { source, tag, force } => {
            let (username, password) = registry_credentials();
            let v = client
                .post(
                    "/v1/images/pull",
                    &json!({ "source": source, "tag": tag, "force": force, "actor": actor(),
                             "username": username, "password": password }),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("{}", text(&v["digest"]));
            }
        }
        ImageAction::Gc { dry_run } => {
            let v = client
                .post("/v1/images/gc", &json!({ "dry_run": dry_run }))
                .await?;
            print_gc(&v, dry_run, json);
        }
        ImageAction::Diff { a, b } => return super::bake::image_diff(client, &a, &b, json).await,
    }
    Ok(0)
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

fn print_inspect(v: &Value) {
    println!("image    {}", text(&v["digest"]));
    println!("size     {}", bytes(v["size"].as_u64().unwrap_or(0)));
    println!("imported {}", age(v["created_ms"].as_u64().unwrap_or(0)));
    let tags = tags(v);
    println!(
        "tags     {}",
        if tags.is_empty() {
            "-".into()
        } else {
            tags.join(", ")
        }
    );
    let d = &v["details"];
    let config = &d["config"];
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
    println!("config   {}", text(&d["config_digest"]));
    for (k, val) in d["annotations"].as_object().into_iter().flatten() {
        println!("annotation {k}={}", text(val));
    }
    println!();
    let rows = d["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            vec![
                short_digest(&text(&l["digest"])),
                bytes(l["size"].as_u64().unwrap_or(0)),
                text(&l["media_type"]),
            ]
        })
        .collect();
    table(&["LAYER", "SIZE", "MEDIA TYPE"], rows);
    let uses: Vec<String> = v["releases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} v{}{}",
                text(&r["app"]),
                r["release"],
                if r["kept"].as_bool() == Some(true) {
                    " (kept)"
                } else {
                    ""
                }
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

fn tags(v: &Value) -> Vec<String> {
    v["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect()
}

fn short_or_dash(v: &Value) -> String {
    match v.as_str() {
        Some(d) => short_digest(d),
        None => "-".into(),
    }
}

/// Registry credentials from the environment (never from arguments, which other users see).
fn registry_credentials() -> (Option<String>, Option<String>) {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    (get("MOLT_REGISTRY_USERNAME"), get("MOLT_REGISTRY_PASSWORD"))
}

/// Who runs the CLI, for the tag history: `$USER@host`, as far as the environment says.
fn actor() -> String {
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
        let packed = molt_image::ImageStore::write_canonical_tar(&dir, &mut out)
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
