//! `molt bake` and `molt deploy` of a folder with `[build]`, against a real `molt serve`, with a
//! real git repository for the provenance.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use molt_core::Digest;
use serde_json::Value;
use support::*;

fn molt(data: &Path, args: &[&str]) -> Output {
    molt_command(data, args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("molt runs")
}

fn json_of(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn outcomes(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap().to_string())
        .collect()
}

fn git(dir: &Path, args: &[&str]) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bake_caches_layers_and_deploy_bakes_first() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, true);
    let d = data.as_path();

    // The hello app, baked: app.py goes to /srv/app.py and runs from there.
    let app = make_app(tmp.path(), "baked", &[], FAST);
    std::fs::create_dir_all(app.join("srv")).unwrap();
    std::fs::rename(app.join("app.py"), app.join("srv/app.py")).unwrap();
    std::fs::write(app.join("README"), "not in the image").unwrap();
    let manifest = std::fs::read_to_string(app.join("molt.toml")).unwrap();
    let manifest = manifest.replace("[\"python3\", \"app.py\"]", "[\"python3\", \"srv/app.py\"]");
    let manifest = format!(
        "{manifest}\n[build]\nbase = \"scratch\"\nsteps = [\n  {{ copy = \"srv\", to = \"/srv\" }},\n  {{ env = {{ MODE = \"baked\" }} }},\n  {{ cmd = [\"python3\", \"/srv/app.py\"] }},\n]\n"
    );
    std::fs::write(app.join("molt.toml"), manifest).unwrap();
    // Without git the provenance check below is skipped (a failure in CI).
    let has_git = molt_testkit::needs_command("git");
    if has_git {
        assert!(
            git(&app, &["init", "-q"])
                && git(&app, &["add", "."])
                && git(&app, &["commit", "-q", "-m", "first"]),
            "git could not make a repository of the app"
        );
    }

    let first = json_of(&molt(d, &["--json", "bake", app.to_str().unwrap()]));
    assert_eq!(outcomes(&first), ["base", "built", "config", "config"]);
    let second = json_of(&molt(
        d,
        &["--json", "bake", app.to_str().unwrap(), "--tag", "baked:1"],
    ));
    assert_eq!(outcomes(&second), ["base", "cached", "config", "config"]);
    assert_eq!(first["digest"], second["digest"]);

    // The human output names the digest and each step.
    let o = molt(d, &["bake", app.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains(first["digest"].as_str().unwrap()), "{out}");
    assert!(
        out.contains("cached") && out.contains("copy \"srv\""),
        "{out}"
    );

    // Deploy bakes (from the cache) and serves the baked image.
    let o = molt(d, &["deploy", app.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("baked v1 is live"), "{}", text(&o));
    let (status, body) = serve.get("baked.localhost").await;
    assert_eq!(status, 200, "{body}");

    // A change to one file: the copy layer is rebuilt, and diff shows just that file.
    std::fs::write(app.join("srv/extra.txt"), "new").unwrap();
    let third = json_of(&molt(d, &["--json", "bake", app.to_str().unwrap()]));
    assert_eq!(outcomes(&third), ["base", "built", "config", "config"]);
    let diff = json_of(&molt(
        d,
        &[
            "--json",
            "images",
            "diff",
            "baked:1",
            third["digest"].as_str().unwrap(),
        ],
    ));
    assert_eq!(diff["added"], serde_json::json!(["srv/extra.txt"]));
    assert_eq!(diff["changed"], serde_json::json!([]));

    // Provenance records the real git commit, and that the folder is now dirty.
    if has_git {
        let digest: Digest = third["digest"].as_str().unwrap().parse().unwrap();
        let store = molt_image::ImageStore::open(&data.join("images")).unwrap();
        let provenance = store
            .attachment(&digest, molt_image::PROVENANCE_ANNOTATION)
            .unwrap()
            .unwrap();
        let head = Command::new("git")
            .arg("-C")
            .arg(&app)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        assert_eq!(provenance["source"]["commit"], head);
        assert_eq!(provenance["source"]["dirty"], true);
    }

    // A folder without [build] is refused by `molt bake` with a next step.
    let plain = make_app(tmp.path(), "plain", &[], FAST);
    let o = molt(d, &["bake", plain.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("has no [build]"), "{}", text(&o));
    serve.signal(nix::sys::signal::Signal::SIGTERM);
}

/// Whether `run` steps can execute here: root, runc and a static busybox for the image (skipped
/// without them, a failure in CI).
fn can_run_containers() -> bool {
    molt_testkit::needs_root()
        && molt_testkit::needs_command("runc")
        && molt_testkit::needs_file("/bin/busybox", "busybox-static")
}

/// A busybox root filesystem (relative symlinks, as the store requires) in `dir`.
fn busybox_rootfs(dir: &Path) {
    for sub in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "rm", "mkdir", "wc"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/gone"), "deleted by a run step").unwrap();
    std::fs::write(dir.join("etc/kept"), "kept").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_steps_execute_in_a_container_and_their_changes_become_a_layer() {
    if !can_run_containers() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, true);
    let d = data.as_path();
    let app = tmp.path().join("app");
    busybox_rootfs(&app.join("rootfs"));
    std::fs::write(app.join("hello.txt"), "hello").unwrap();
    std::fs::write(
        app.join("molt.toml"),
        r#"name = "runner"
command = ["/bin/sh", "-c", "sleep 1000"]
[build]
base = { rootfs = "rootfs" }
steps = [
  { copy = "hello.txt", to = "/srv/hello.txt" },
  { workdir = "/srv" },
  { env = { GREETING = "hi" } },
  { run = ["/bin/sh", "-c", "echo $GREETING > made.txt && cat /proc/net/dev | wc -l > /etc/netdev-lines && rm /etc/gone && mkdir -p /var/data"] },
]
"#,
    )
    .unwrap();
    let first = json_of(&molt(d, &["--json", "bake", app.to_str().unwrap()]));
    assert_eq!(
        outcomes(&first),
        ["built", "built", "config", "config", "built"]
    );
    let digest: Digest = first["digest"].as_str().unwrap().parse().unwrap();
    let store = molt_image::ImageStore::open(&data.join("images")).unwrap();
    let rootfs = store.rootfs(&digest).unwrap();
    // The command ran in the image's workdir with its env, and its changes are in the image.
    assert_eq!(
        std::fs::read_to_string(rootfs.join("srv/made.txt")).unwrap(),
        "hi\n"
    );
    assert!(rootfs.join("var/data").is_dir());
    // The deletion is a whiteout in the run layer: gone from the image, the rest kept.
    assert!(!rootfs.join("etc/gone").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/kept")).unwrap(),
        "kept"
    );
    let files = store.files(&digest).unwrap();
    assert!(!files.contains_key("etc/gone") && files.contains_key("srv/made.txt"));
    // No network: a private namespace with only the loopback (2 header lines + lo).
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/netdev-lines"))
            .unwrap()
            .trim(),
        "3"
    );
    // Nothing is left behind by the container.
    let bundles = data.join("build/bundles");
    assert_eq!(std::fs::read_dir(&bundles).unwrap().count(), 0);

    // Unchanged: the run step comes from the cache (it is not run again), same digest.
    let second = json_of(&molt(d, &["--json", "bake", app.to_str().unwrap()]));
    assert_eq!(
        outcomes(&second),
        ["cached", "cached", "config", "config", "cached"]
    );
    assert_eq!(first["digest"], second["digest"]);

    // A failing command fails the bake with its output, and stores no image.
    let before = store.list().unwrap().len();
    let manifest = std::fs::read_to_string(app.join("molt.toml")).unwrap();
    std::fs::write(
        app.join("molt.toml"),
        manifest.replace("mkdir -p /var/data", "echo boom >&2; exit 7"),
    )
    .unwrap();
    let o = molt(d, &["bake", app.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("boom") && text(&o).contains("7"),
        "{}",
        text(&o)
    );
    assert_eq!(store.list().unwrap().len(), before);
    serve.signal(nix::sys::signal::Signal::SIGTERM);
}

/// Answers `GET` requests on a loopback port with "mirror" until `stop` is set (bounded: at
/// most 20 connections), like a package mirror the build reaches.
fn loopback_http_server() -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u32>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while !stopped.load(Ordering::Relaxed)
            && served < 20
            && std::time::Instant::now() < deadline
        {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf);
                    let _ = conn.write_all(
                        b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nmirror\n",
                    );
                    served += 1;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        served
    });
    (port, stop, handle)
}

/// A run step runs as the image's root with Docker's default capabilities (it can chown, and
/// the layer records the owner it set) and, with `network = true`, in the host's network,
/// where it reaches a server on loopback that a step without network cannot reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_steps_can_chown_and_reach_the_network_when_asked() {
    if !can_run_containers() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, true);
    let d = data.as_path();
    let app = tmp.path().join("app");
    busybox_rootfs(&app.join("rootfs"));
    let (port, stop, server) = loopback_http_server();
    let url = format!("http://127.0.0.1:{port}/");
    std::fs::write(
        app.join("molt.toml"),
        format!(
            r#"name = "installer"
command = ["/bin/sh", "-c", "sleep 1000"]
[build]
base = {{ rootfs = "rootfs" }}
steps = [
  {{ run = ["/bin/sh", "-c", "mkdir -p /srv && echo data > /srv/owned && /bin/busybox chown 1000:1000 /srv/owned && /bin/busybox chmod 640 /srv/owned"] }},
  {{ run = ["/bin/sh", "-c", "if /bin/busybox wget -q -O /srv/offline {url}; then echo reached > /srv/offline-result; else echo unreachable > /srv/offline-result; fi; rm -f /srv/offline"] }},
  {{ run = ["/bin/busybox", "wget", "-q", "-O", "/srv/online", "{url}"], network = true }},
]
"#
        ),
    )
    .unwrap();
    let report = json_of(&molt(d, &["--json", "bake", app.to_str().unwrap()]));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = server.join().unwrap();
    assert_eq!(outcomes(&report), ["built", "built", "built", "built"]);
    let digest: Digest = report["digest"].as_str().unwrap().parse().unwrap();
    let store = molt_image::ImageStore::open(&data.join("images")).unwrap();
    let rootfs = store.rootfs(&digest).unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("srv/offline-result")).unwrap(),
        "unreachable\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("srv/online")).unwrap(),
        "mirror\n"
    );
    assert_eq!(served, 1, "only the step with network reached the server");

    // The chown step's layer holds the file owned by 1000:1000 with the mode it set.
    let layer: Digest = report["steps"][1]["layer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let blob = data.join("images/blobs/sha256").join(layer.hex());
    let listing = Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&blob)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let owned = listing
        .lines()
        .find(|l| l.ends_with("srv/owned"))
        .unwrap_or_else(|| panic!("no srv/owned in {listing}"));
    assert!(
        owned.starts_with("-rw-r----- 1000/1000 "),
        "{owned} (layer: {listing})"
    );
    serve.signal(nix::sys::signal::Signal::SIGTERM);
}
