//! `molt images …` against a real `molt serve`: immutable tags and their history, inspect,
//! export/import of OCI and Docker archives (checked with the real skopeo when installed),
//! removal guarded by releases, image GC, and bad uploads that change nothing.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use molt_testkit::needs_command;
use nix::sys::signal::Signal;
use serde_json::Value;
use support::registry::start_registry;
use support::*;

fn molt(data: &Path, args: &[&str]) -> Output {
    molt_command(data, args)
        .env("USER", "tester")
        .output()
        .expect("molt runs")
}

/// Runs `molt --json …`, expects exit 0 and returns the JSON it printed.
fn molt_json(data: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = molt(data, &all);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)))
}

fn image_count(data: &Path) -> usize {
    molt_json(data, &["images", "ls"])
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_cli_tags_inspects_exports_imports_and_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, true);
    let d = data.as_path();
    let app = make_app(tmp.path(), "shop", &[], FAST);
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("index.html"), "v2\n").unwrap();

    // Import a folder with a tag; the same tag on another image is refused, naming both.
    let one = molt_json(
        d,
        &["images", "import", app.to_str().unwrap(), "--tag", "shop:1"],
    );
    assert_eq!(one["format"], "tree");
    let a = one["digest"].as_str().unwrap().to_string();
    let o = molt(
        d,
        &[
            "images",
            "import",
            other.to_str().unwrap(),
            "--tag",
            "shop:1",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let refusal = text(&o);
    assert!(
        refusal.contains(&a) && refusal.contains("refusing to point it at sha256:"),
        "{refusal}"
    );
    assert_eq!(image_count(d), 1, "a refused tag imports nothing");

    // --force moves it, and the history says who moved it from what to what.
    let two = molt_json(
        d,
        &[
            "images",
            "import",
            other.to_str().unwrap(),
            "--tag",
            "shop:1",
            "--force",
        ],
    );
    let b = two["digest"].as_str().unwrap().to_string();
    assert_eq!(two["moved_from"], a.as_str());
    let history = molt_json(d, &["images", "history", "shop:1"]);
    let changes: Vec<(&str, &str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["change"].as_str().unwrap(),
                e["old_digest"].as_str().unwrap_or("-"),
                e["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(changes[0].0, "created");
    assert_eq!(changes[1].0, "moved");
    assert_eq!(changes[1].1, a);
    // The authenticated token's name, not what the client says (MOLT_ACTOR).
    assert_eq!(changes[1].2, "admin", "{history}");
    let o = molt(d, &["images", "history"]);
    assert!(text(&o).contains("moved"), "{}", text(&o));
    // `molt images tag` moves it back only with --force, too.
    let o = molt(d, &["images", "tag", &a, "shop:1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let tagged = molt_json(d, &["images", "tag", &a, "shop:stable"]);
    assert_eq!(tagged["digest"], a.as_str());
    let o = molt(d, &["images", "tag", &a, "Not A Tag"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("image tag"), "{}", text(&o));

    // Inspect by tag: config, layers, sizes, tags.
    let inspected = molt_json(d, &["images", "inspect", "shop:1"]);
    assert_eq!(inspected["digest"], b.as_str());
    assert_eq!(inspected["tags"], serde_json::json!(["shop:1"]));
    assert_eq!(inspected["details"]["config"]["os"], "linux");
    let layers = inspected["details"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert!(layers[0]["size"].as_u64().unwrap() > 0);
    let o = molt(d, &["images", "inspect", "shop:1"]);
    assert!(text(&o).contains("tar+gzip"), "{}", text(&o));
    let o = molt(d, &["images", "inspect", "nope:1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // Export in both formats; each imports back as the same image.
    for format in ["oci", "docker"] {
        let file = tmp.path().join(format!("shop.{format}.tar"));
        let out = molt_json(
            d,
            &[
                "images",
                "export",
                "shop:stable",
                "-o",
                file.to_str().unwrap(),
                "--format",
                format,
            ],
        );
        assert_eq!(out["digest"], a.as_str());
        if needs_command("skopeo") {
            let transport = if format == "oci" {
                "oci-archive"
            } else {
                "docker-archive"
            };
            let o = Command::new("skopeo")
                .arg("inspect")
                .arg(format!("{transport}:{}", file.display()))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", text(&o));
        }
        let back = molt_json(d, &["images", "import", file.to_str().unwrap()]);
        assert_eq!(back["format"], format);
        assert_eq!(back["digest"], a.as_str());
    }
    let o = molt(
        d,
        &["images", "export", "nope:1", "-o", "/tmp/never-written.tar"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!Path::new("/tmp/never-written.tar").exists());

    // A broken archive: a clear error, and nothing changes.
    let broken = tmp.path().join("broken.tar");
    let mut bytes = std::fs::read(tmp.path().join("shop.docker.tar")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&broken, &bytes).unwrap();
    let before = image_count(d);
    let o = molt(
        d,
        &[
            "--json",
            "images",
            "import",
            broken.to_str().unwrap(),
            "--format",
            "docker",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(err["status"], 400, "{err}");
    assert_eq!(image_count(d), before);

    // An image a kept release runs cannot be removed; an unused one can.
    let o = molt(
        d,
        &["deploy", app.to_str().unwrap(), "--image", "shop:stable"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = molt(d, &["images", "rm", "shop:stable"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("shop v1"), "{}", text(&o));
    let used = molt_json(d, &["images", "inspect", &a]);
    assert_eq!(used["releases"][0]["app"], "shop");
    assert_eq!(used["releases"][0]["kept"], true);
    let removed = molt_json(d, &["images", "rm", "shop:1"]);
    assert_eq!(removed["digest"], b.as_str());
    assert_eq!(removed["tags"], serde_json::json!(["shop:1"]));
    let last = molt_json(d, &["images", "history", "shop:1"]);
    assert_eq!(
        last.as_array().unwrap().last().unwrap()["change"],
        "removed"
    );
    let o = molt(d, &["images", "inspect", &b]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // Image GC reports the store sweep with counts and bytes.
    let gc = molt_json(d, &["images", "gc", "--dry-run"]);
    assert_eq!(gc["dry_run"], true);
    assert!(gc["store"]["blobs"].is_u64(), "{gc}");
    let o = molt(d, &["gc", "--dry-run"]);
    assert!(text(&o).contains("image store:"), "{}", text(&o));
    let (status, body) = serve.get("shop.localhost").await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(serve.signal(Signal::SIGTERM).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_push_and_pull_through_a_registry_from_the_cli() {
    if !(needs_command("docker-registry") && needs_command("htpasswd")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = start_registry(tmp.path());
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, true);
    let d = data.as_path();
    let app = tmp.path().join("site");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("index.html"), "pushed\n").unwrap();
    let image = molt_json(
        d,
        &["images", "import", app.to_str().unwrap(), "--tag", "site:1"],
    );
    let target = format!("{}/team/site:1", registry.addr);

    // Without credentials the registry refuses: a clear error (502, the registry's word).
    let o = molt(d, &["--json", "images", "push", "site:1", &target]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(err["status"], 502, "{err}");

    let with_creds = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_molt"))
            .arg("--data-dir")
            .arg(d)
            .arg("--json")
            .args(args)
            .env("MOLT_REGISTRY_USERNAME", "molt")
            .env("MOLT_REGISTRY_PASSWORD", "s3cret")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(!text(&o).contains("s3cret"));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let pushed = with_creds(&["images", "push", "site:1", &target]);
    assert_eq!(pushed["digest"], image["digest"]);
    assert_eq!(pushed["uploaded"], 2);

    // Remove it locally, pull it back under a new tag: same digest.
    molt_json(d, &["images", "rm", "site:1"]);
    let pulled = with_creds(&["images", "pull", &target, "--tag", "site:pulled"]);
    assert_eq!(pulled["digest"], image["digest"]);
    let inspected = molt_json(d, &["images", "inspect", "site:pulled"]);
    assert_eq!(inspected["digest"], image["digest"]);
    assert!(
        !serve_log(d).contains("s3cret"),
        "password in the server log"
    );

    assert_eq!(serve.signal(Signal::SIGTERM).code(), Some(0));
    drop(registry);
}
