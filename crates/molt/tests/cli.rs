//! The `molt` command line against a real `molt serve`: outputs, `--json`, and exit codes that
//! scripts can trust.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

fn molt(data: &Path, args: &[&str]) -> Output {
    molt_command(data, args).output().expect("molt runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_whole_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, true);
    let d = data.as_path();

    // init writes a manifest that parses.
    let fresh = tmp.path().join("my_new app");
    std::fs::create_dir_all(&fresh).unwrap();
    let o = molt(d, &["init", fresh.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let manifest = std::fs::read_to_string(fresh.join("molt.toml")).unwrap();
    assert!(manifest.contains("name = \"my-new-app\""), "{manifest}");
    let o = molt(d, &["init", fresh.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "init refuses to overwrite: {}",
        text(&o)
    );

    // deploy, config set, rollback.
    let app = make_app(tmp.path(), "cli", &[], FAST);
    let o = molt(d, &["deploy", app.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("cli v1 is live"), "{}", text(&o));
    let o = molt(d, &["config", "set", "cli", "GREETING=hey"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("roll back instantly with `molt rollback cli`"),
        "{}",
        text(&o)
    );
    let o = molt(d, &["--json", "status", "cli"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["apps"][0]["serving"]["number"], 2);
    assert_eq!(v["isolation"], isolation_label());
    let o = molt(d, &["rollback", "cli"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("rolled back to v1") && text(&o).contains("warm"),
        "{}",
        text(&o)
    );
    let (_, body) = serve.get("cli.localhost").await;
    assert!(body.contains("cli v1"), "{body}");
    let o = molt(d, &["rollback", "cli", "--to", "v2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for args in [
        &["releases", "cli"][..],
        &["envs", "cli"],
        &["history", "cli"],
        &["apps"],
        &["images", "ls"],
        &["gc", "--dry-run"],
        &["config", "show", "cli"],
    ] {
        let o = molt(d, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }
    let o = molt(d, &["maintenance", "cli", "on", "--message", "brb"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (status, body) = serve.get("cli.localhost").await;
    assert_eq!((status, body.contains("brb")), (503, true), "{body}");
    let o = molt(d, &["maintenance", "cli", "off"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = molt(d, &["logs", "cli", "-n", "5"]);
    assert!(text(&o).contains("listening on 127.0.0.1"), "{}", text(&o));

    // A deployment that fails: exit 3, and the route stays.
    let bad = make_app(tmp.path(), "cli", &[], FAST);
    let m = std::fs::read_to_string(bad.join("molt.toml"))
        .unwrap()
        .replace("app.py", "missing.py");
    std::fs::write(bad.join("molt.toml"), m).unwrap();
    let o = molt(d, &["deploy", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("missing.py"), "{}", text(&o));

    // A malformed manifest: exit 1 with line and column, nothing sent.
    std::fs::write(
        bad.join("molt.toml"),
        "name = \"cli\"\ncommand = [\"x\"]\ninstances = \"two\"\n",
    )
    .unwrap();
    let o = molt(d, &["deploy", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("line 3"), "{}", text(&o));

    // Usage errors exit 2; an unreachable server exits 4 with what to do.
    assert_eq!(molt(d, &["swap"]).status.code(), Some(2));
    let o = molt(d, &["--api", "http://127.0.0.1:1", "status"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains("is `molt serve` running?"),
        "{}",
        text(&o)
    );

    // A router port already taken: molt serve says so and exits 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = tmp.path().join("other");
    let o = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(["serve", "--api-listen", "127.0.0.1:0", "--router"])
        .arg(taken.local_addr().unwrap().to_string())
        .arg("--data-dir")
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot listen on"), "{}", text(&o));
    // A second server on the same data directory is refused.
    let o = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args([
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--router",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("already using"), "{}", text(&o));

    assert_eq!(serve.signal(Signal::SIGTERM).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_a_shadow_deploy_to_promotion() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut serve = Serve::start(&data, None, true);
    let d = data.as_path();
    let v1 = make_app(tmp.path(), "cli", &[], FAST);
    let v2 = make_app(tmp.path(), "cli", &[("GREETING", "hey")], FAST);

    // --shadow before anything serves is refused with what to do.
    let o = molt(d, &["deploy", v1.to_str().unwrap(), "--shadow", "10"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("deploy without --shadow"), "{}", text(&o));
    assert_eq!(
        molt(d, &["deploy", v2.to_str().unwrap(), "--shadow", "0"])
            .status
            .code(),
        Some(2)
    );
    let o = molt(d, &["deploy", v1.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The shadow deploy stops at shadowing and says what comes next.
    let o = molt(d, &["deploy", v2.to_str().unwrap(), "--shadow", "100"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("100 % of GET/HEAD/OPTIONS requests are mirrored")
            && text(&o).contains("molt promote cli"),
        "{}",
        text(&o)
    );
    for _ in 0..4 {
        let (_, body) = serve.get("cli.localhost").await;
        assert!(body.starts_with("hello from cli v1"), "{body}");
    }
    eventually(std::time::Duration::from_secs(10), "4 mirrors", || async {
        let r = serve.client.get("/v1/apps/cli/shadow").await.unwrap();
        r["shadow"]["requests"] == 4
    })
    .await;
    let o = molt(d, &["status", "cli"]);
    assert!(
        text(&o).contains("shadow (100 %)") && text(&o).contains("shadowing, mirroring 100 %"),
        "{}",
        text(&o)
    );

    // Promote (from the app's folder): the comparison, then the usual cutover.
    let o = molt_command(d, &["promote"])
        .current_dir(&v2)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("promoted after shadowing"), "{out}");
    assert!(out.contains("TRAFFIC") && out.contains("shadow"), "{out}");
    assert!(out.contains("cli v2 is live"), "{out}");
    let (_, body) = serve.get("cli.localhost").await;
    assert!(body.starts_with("hey from cli v2"), "{body}");
    let o = molt(d, &["--json", "releases", "cli"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = molt(d, &["--json", "status", "cli"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let last = &v["apps"][0]["last_deployment"];
    assert_eq!(last["shadow"]["shadow"]["requests"], 4, "{last}");
    assert_eq!(last["shadow"]["live"]["requests"], 4, "{last}");
    // Nothing left to promote or abandon: exit 1 with the next step.
    let o = molt(d, &["abandon", "cli"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("molt deploy --shadow"), "{}", text(&o));
    assert_eq!(serve.signal(Signal::SIGTERM).code(), Some(0));
}
