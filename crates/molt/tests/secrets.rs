//! Secrets against a real `molt serve`: a value set from stdin or a file reaches the
//! instances as an environment variable and appears nowhere else — not in any API answer, any
//! CLI output, nor any file of the data directory (state.db and its WAL included); rotating
//! makes a new release whose instances see the new value; a loose key file is refused.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use support::*;

/// A value no test file or binary holds by chance.
fn unique_value(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("pw-{tag}-{}-{nanos:x}", std::process::id())
}

/// `molt ARGS` with `stdin` piped in; its output (stdout + stderr).
fn molt_with_stdin(data: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = molt_command(data, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out))
}

fn molt_out(data: &Path, args: &[&str]) -> String {
    let out = molt_command(data, args).output().unwrap();
    assert!(out.status.success(), "molt {args:?}: {}", text(&out));
    text(&out)
}

/// The environment of the process `pid`, as `NAME=value` entries.
fn environ(pid: u64) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|b| *b == 0)
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

/// Pids of the app's instances in its routed environment.
async fn routed_pids(h: &Harness, app: &str) -> Vec<u64> {
    let status = h.client.get(&format!("/v1/apps/{app}")).await.unwrap();
    status["envs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|env| env["routed"] == true)
        .flat_map(|env| env["instances"].as_array().unwrap().clone())
        .filter(|i| i["state"] == "running" || i["state"] == "healthy")
        .filter_map(|i| i["pid"].as_u64())
        .collect()
}

/// Every file under `dir`, bounded.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        assert!(out.len() < 200_000, "too many files");
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_reaches_its_instances_and_nothing_else() {
    let h = Harness::start().await;
    let data = h.data_dir();
    let dir = h.app("shop", &[], FAST);
    let first = h.deploy(&dir).await;
    assert_eq!(first["state"], "drained", "{first}");
    let (v1, v2) = (unique_value("one"), unique_value("two"));
    let mut outputs: Vec<(String, String)> = Vec::new();

    // Set from stdin (with the newline `echo` adds): a new release, deployed.
    let (ok, out) = molt_with_stdin(
        &data,
        &["secrets", "set", "shop", "GREETING"],
        &format!("{v1}\n"),
    );
    assert!(ok, "{out}");
    outputs.push(("secrets set".into(), out));
    let (status, body) = h.get("shop.localhost", "/").await;
    assert_eq!(
        (status, body.starts_with(&format!("{v1} from shop v2"))),
        (200, true),
        "{body}"
    );
    let pids = routed_pids(&h, "shop").await;
    assert!(!pids.is_empty());
    for pid in &pids {
        assert!(
            environ(*pid).contains(&format!("GREETING={v1}")),
            "instance {pid}"
        );
    }

    // Rotate from a file: another release; its instances see the new value only.
    let file = h.tmp.path().join("greeting.txt");
    std::fs::write(&file, &v2).unwrap();
    let out = molt_out(
        &data,
        &[
            "secrets",
            "set",
            "shop",
            "GREETING",
            "--from-file",
            file.to_str().unwrap(),
        ],
    );
    outputs.push(("secrets set --from-file".into(), out));
    std::fs::remove_file(&file).unwrap();
    let (_, body) = h.get("shop.localhost", "/").await;
    assert!(body.starts_with(&format!("{v2} from shop v3")), "{body}");
    for pid in routed_pids(&h, "shop").await {
        let env = environ(pid);
        assert!(env.contains(&format!("GREETING={v2}")), "instance {pid}");
        assert!(
            !env.iter().any(|e| e.contains(&v1)),
            "instance {pid} has the old value"
        );
    }
    let releases = h.client.get("/v1/apps/shop/releases").await.unwrap();
    assert_eq!(
        releases[0]["config"]["secrets"]["GREETING"], 2,
        "{releases}"
    );
    assert_eq!(
        releases[1]["config"]["secrets"]["GREETING"], 1,
        "{releases}"
    );
    assert!(releases[0]["note"]
        .as_str()
        .unwrap()
        .contains("secret set GREETING (v2)"));

    // A redeploy of the folder keeps the secret (the release names its newest version).
    let again = h.deploy(&dir).await;
    assert_eq!(again["state"], "drained", "{again}");
    let (_, body) = h.get("shop.localhost", "/").await;
    assert!(body.starts_with(&v2), "{body}");

    // Bad input: a clear error, nothing changed, the value never echoed.
    let (ok, out) = molt_with_stdin(&data, &["secrets", "set", "shop", "1BAD"], &v1);
    assert!(!ok && out.contains("invalid"), "{out}");
    outputs.push(("bad name".into(), out));
    let (ok, out) = molt_with_stdin(&data, &["secrets", "set", "shop", "EMPTY"], "");
    assert!(!ok && out.contains("empty"), "{out}");

    // Every CLI view and every API answer a client can get.
    for args in [
        &["secrets", "list", "shop"][..],
        &["secrets", "list", "shop", "--json"],
        &["config", "show", "shop"],
        &["config", "show", "shop", "--json"],
        &["status", "--json"],
        &["status"],
        &["releases", "shop", "--json"],
        &["history", "shop"],
        &["audit", "--json"],
        &["logs", "shop"],
        &["envs", "shop", "--json"],
    ] {
        outputs.push((format!("molt {}", args.join(" ")), molt_out(&data, args)));
    }
    let history = molt_out(&data, &["history", "shop"]);
    assert!(
        history.contains("call setSecret") && history.contains("admin (admin, 127.0.0.1)"),
        "molt history shows who: {history}"
    );
    let config = molt_out(&data, &["config", "show", "shop"]);
    assert!(config.contains("GREETING=(secret v2)"), "{config}");
    let listed: Value = serde_json::from_str(
        &String::from_utf8(
            molt_command(&data, &["secrets", "list", "shop", "--json"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(listed[0]["name"], "GREETING");
    assert_eq!(listed[0]["version"], 2);
    assert_eq!(listed[0]["created_by"], "admin");
    let doc = h.client.get("/openapi.json").await.unwrap();
    let deployment = again["id"].as_u64().unwrap().to_string();
    let digest = releases[0]["image"].as_str().unwrap().to_owned();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_none() || path.contains("fleet") || path.contains("export") {
            continue;
        }
        let p = path
            .replace("{app}", "shop")
            .replace("{id}", &deployment)
            .replace("{reference}", &digest);
        let answer = match h.client.get_answer(&p).await {
            Ok(answer) => answer.json().to_string(),
            Err(e) => format!("{e:#}"),
        };
        outputs.push((format!("GET {p}"), answer));
    }
    for (what, output) in &outputs {
        for value in [&v1, &v2] {
            assert!(
                !output.contains(value.as_str()),
                "{what} shows the secret: {output}"
            );
        }
    }

    // Every file of the data directory, the database and its WAL included.
    let files = files_under(&data);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "state.db-wal"), "{names:?}");
    let mut bytes = 0;
    for file in &files {
        let content = std::fs::read(file).unwrap_or_default();
        bytes += content.len();
        for value in [&v1, &v2] {
            assert!(
                !contains(&content, value),
                "{} holds the secret",
                file.display()
            );
        }
    }
    println!(
        "leak grep: {} CLI outputs and API answers, {} files ({bytes} bytes) of the data \
         directory: no value found",
        outputs.len(),
        files.len()
    );

    // Removed: a release without it; the list is empty.
    let out = molt_out(&data, &["secrets", "rm", "shop", "GREETING"]);
    assert!(out.contains("removed"), "{out}");
    let (_, body) = h.get("shop.localhost", "/").await;
    assert!(body.starts_with("hello from shop"), "{body}");
    assert_eq!(
        h.client.get("/v1/apps/shop/secrets").await.unwrap(),
        serde_json::json!([])
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let h = Harness::start_at(data.clone(), |_| {}).await;
    h.stop().await;
    let key = data.join("secrets.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = molt_server::ServeConfig::new(data.clone());
    cfg.api_addr = "127.0.0.1:0".parse().unwrap();
    cfg.router_addr = "127.0.0.1:0".parse().unwrap();
    let error = match molt_server::start(cfg).await {
        Ok(_) => panic!("molt serve started with a readable key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("chmod 600"), "{error}");
    let hex = std::fs::read_to_string(&key).unwrap();
    assert!(!error.contains(hex.trim()), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_file_is_private_on_a_tmpfs_and_goes_with_its_instance() {
    use std::os::unix::fs::MetadataExt;

    let h = Harness::start().await;
    let data = h.data_dir();
    // Any bytes: a NUL, bytes that are not UTF-8, and a marker to grep for.
    let marker = unique_value("file");
    let mut value = b"\0\xff\xfe key ".to_vec();
    value.extend_from_slice(marker.as_bytes());
    value.push(b'\n');
    let file = h.tmp.path().join("tls.key");
    std::fs::write(&file, &value).unwrap();
    let path = file.to_str().unwrap();
    // Set before the app's first deployment, which gets it.
    let out = molt_out(
        &data,
        &[
            "secrets",
            "set",
            "shop",
            "TLS_KEY",
            "--as-file",
            "--from-file",
            path,
        ],
    );
    assert!(out.contains("TLS_KEY"), "{out}");
    // Not as an environment variable: such bytes are refused there, with the way out.
    let (ok, out) = molt_with_stdin(&data, &["secrets", "set", "shop", "RAW"], "\u{0}x");
    assert!(!ok, "{out}");
    std::fs::remove_file(&file).unwrap();
    let listed = molt_out(&data, &["secrets", "list", "shop"]);
    assert!(
        listed.contains("TLS_KEY") && listed.contains("file"),
        "{listed}"
    );

    let dir = h.app("shop", &[], FAST);
    let first = h.deploy(&dir).await;
    assert_eq!(first["state"], "drained", "{first}");
    let pids = routed_pids(&h, "shop").await;
    assert_eq!(pids.len(), 2);
    let mut dirs = Vec::new();
    for pid in pids {
        let env = environ(pid);
        assert!(!env.iter().any(|e| e.starts_with("TLS_KEY=")), "{env:?}");
        let secrets_dir = env
            .iter()
            .find_map(|e| e.strip_prefix("MOLT_SECRETS_DIR="))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no MOLT_SECRETS_DIR in {env:?}"));
        let read = std::fs::read(secrets_dir.join("TLS_KEY")).unwrap();
        assert!(read == value, "the file holds the value byte for byte");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&secrets_dir), 0o500);
        assert_eq!(mode(&secrets_dir.join("TLS_KEY")), 0o400);
        assert_eq!(mode(secrets_dir.parent().unwrap()), 0o500);
        assert_eq!(mode(secrets_dir.parent().unwrap().parent().unwrap()), 0o700);
        assert!(secrets_dir.starts_with("/dev/shm"), "{secrets_dir:?}");
        dirs.push(secrets_dir);
    }
    assert_ne!(dirs[0], dirs[1], "each instance has its own directory");

    // Nowhere in the data directory (the bundle of a runc instance neither: see sandbox.rs).
    for file in files_under(&data) {
        let content = std::fs::read(&file).unwrap_or_default();
        assert!(!contains(&content, &marker), "{} holds it", file.display());
    }
    // The instances end, their files go.
    h.stop().await;
    for dir in &dirs {
        let instance_dir = dir.parent().unwrap();
        assert!(
            !instance_dir.exists(),
            "{instance_dir:?} outlived its instance"
        );
    }
}
