//! `git push` deploys: the real `git` binary pushes a temporary repository to the remote a real
//! in-process `molt serve` offers at `/git/<app>.git`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};

use support::*;

/// Runs `git ARGS` in `dir` with a clean configuration (no prompts, no helpers, no user files).
fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs")
}

/// `git ARGS` that must succeed; returns its stdout.
fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Makes `dir` a repository with one commit of what it holds.
fn commit_all(dir: &Path, message: &str) -> String {
    if !dir.join(".git").exists() {
        git_ok(dir, &["init", "--quiet", "--initial-branch=main"]);
    }
    git_ok(dir, &["add", "--all"]);
    git_ok(dir, &["commit", "--quiet", "--allow-empty", "-m", message]);
    git_ok(dir, &["rev-parse", "HEAD"])
}

/// The remote of `app` on the harness's API, with `token` as the password.
fn remote(h: &Harness, app: &str, token: &str) -> String {
    let api = h.running.as_ref().expect("running").api_addr;
    format!("http://git:{token}@{api}/git/{app}.git")
}

fn token(h: &Harness) -> String {
    h.running.as_ref().expect("running").token.clone()
}

/// Replaces `from` with `to` in the app's molt.toml.
fn edit_manifest(dir: &Path, from: &str, to: &str) {
    let path = dir.join("molt.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} in {text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

/// The `remote:` lines of a push, for the failure messages and the figures.
fn remote_lines(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("remote:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_deploys_the_commit_and_bad_pushes_deploy_nothing() {
    let h = Harness::start().await;
    let app = h.app("pushed", &[("GREETING", "first")], FAST);
    h.deploy(&app).await;
    let url = remote(&h, "pushed", &token(&h));

    // A push of a new commit: bake (here: import), release, blue/green, as `remote:` lines.
    commit_all(&app, "as deployed");
    edit_manifest(&app, "GREETING = \"first\"", "GREETING = \"pushed\"");
    let commit = commit_all(&app, "greet differently");
    let started = std::time::Instant::now();
    let out = git(&app, &["push", &url, "HEAD:main"]);
    let push_ms = started.elapsed().as_millis();
    assert!(out.status.success(), "the push deploys: {}", text(&out));
    let lines = remote_lines(&out);
    eprintln!("{lines}\n`git push` to the new release serving: {push_ms} ms");
    assert!(lines.contains("(transfer)"), "{lines}");
    assert!(lines.contains("swapped"), "{lines}");
    let (status, body) = h.get("pushed.localhost", "/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("pushed from pushed v2"), "{body}");
    let releases = h.client.get("/v1/apps/pushed/releases").await.unwrap();
    let note = releases[0]["note"].as_str().unwrap_or("");
    assert!(
        note.contains(&commit),
        "the release records the commit: {note}"
    );

    // A rewritten branch: refused before anything is made.
    git_ok(&app, &["reset", "--quiet", "--hard", "HEAD~1"]);
    edit_manifest(&app, "GREETING = \"first\"", "GREETING = \"rewritten\"");
    commit_all(&app, "rewrite");
    let out = git(&app, &["push", "--force", &url, "HEAD:main"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        remote_lines(&out).contains("non-fast-forward push"),
        "{}",
        text(&out)
    );

    // Back on the pushed branch: a commit without molt.toml, one with a broken one, and a
    // push to another branch are refused with the reason; nothing is released.
    git_ok(&app, &["fetch", "--quiet", &url, "main"]);
    git_ok(&app, &["reset", "--quiet", "--hard", "FETCH_HEAD"]);
    git_ok(&app, &["rm", "--quiet", "molt.toml"]);
    commit_all(&app, "no manifest");
    let out = git(&app, &["push", &url, "HEAD:main"]);
    assert!(!out.status.success());
    assert!(
        remote_lines(&out).contains("has no molt.toml"),
        "{}",
        text(&out)
    );
    std::fs::write(app.join("molt.toml"), "name = \"pushed\"\nbogus = 1\n").unwrap();
    commit_all(&app, "broken manifest");
    let out = git(&app, &["push", &url, "HEAD:main"]);
    assert!(!out.status.success());
    let lines = remote_lines(&out);
    assert!(
        lines.contains("molt.toml") && lines.contains("bogus"),
        "{lines}"
    );
    let out = git(&app, &["push", &url, "HEAD:feature"]);
    assert!(!out.status.success());
    assert!(
        remote_lines(&out).contains("only pushes to 'main' deploy"),
        "{}",
        text(&out)
    );
    // The refused pushes stored nothing: the remote's main is the deployed commit, and no
    // release was made after v2.
    let remote_main = git_ok(&app, &["ls-remote", &url, "refs/heads/main"]);
    assert!(remote_main.starts_with(&commit), "{remote_main}");
    assert!(git_ok(&app, &["ls-remote", &url, "refs/heads/feature"]).is_empty());
    let releases = h.client.get("/v1/apps/pushed/releases").await.unwrap();
    assert_eq!(releases[0]["number"], 2, "{releases}");
    let (_, body) = h.get("pushed.localhost", "/").await;
    assert!(body.starts_with("pushed from pushed v2"), "{body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_deployment_fails_fails_with_the_reason() {
    let h = Harness::start().await;
    let fast_failing = FAST
        .replace("healthy_threshold = 1", "healthy_threshold = 2")
        .replace("start_deadline = \"15s\"", "start_deadline = \"3s\"");
    let app = h.app("failing", &[("FAIL_AFTER", "0")], &fast_failing);
    h.deploy(&app).await;
    let url = remote(&h, "failing", &token(&h));
    let first = commit_all(&app, "works");
    let out = git(&app, &["push", &url, "HEAD:main"]);
    assert!(out.status.success(), "{}", text(&out));

    // Health answers 500 after the first check: the new environment never becomes healthy.
    edit_manifest(&app, "FAIL_AFTER = \"0\"", "FAIL_AFTER = \"1\"");
    commit_all(&app, "breaks its health check");
    let out = git(&app, &["push", &url, "HEAD:main"]);
    let lines = remote_lines(&out);
    assert!(
        !out.status.success(),
        "a failed deployment fails the push: {lines}"
    );
    assert!(lines.contains("push refused: deployment"), "{lines}");
    assert!(lines.contains("failed"), "{lines}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pre-receive hook declined"),
        "{}",
        text(&out)
    );
    // Nothing moved: the route serves the last good release, the branch is where it was.
    let (_, body) = h.get("failing.localhost", "/").await;
    assert!(body.starts_with("hello from failing v2"), "{body}");
    let remote_main = git_ok(&app, &["ls-remote", &url, "refs/heads/main"]);
    assert!(remote_main.starts_with(&first), "{remote_main}");
    h.stop().await;
}

/// One raw HTTP/1.1 GET to the API; returns the answer's head and body.
fn raw_get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the API");
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_an_unknown_app_is_refused() {
    let h = Harness::start().await;
    let app = h.app("guarded", &[], FAST);
    h.deploy(&app).await;
    commit_all(&app, "first");

    let out = git(
        &app,
        &["push", &remote(&h, "guarded", "wrong"), "HEAD:main"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Authentication failed"),
        "{}",
        text(&out)
    );
    let api = h.running.as_ref().unwrap().api_addr;
    let answer = raw_get(
        api,
        "/git/guarded.git/info/refs?service=git-receive-pack",
        None,
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"molt\""),
        "{answer}"
    );

    let out = git(
        &app,
        &["push", &remote(&h, "nosuchapp", &token(&h)), "HEAD:main"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        text(&out)
    );
    // A read token, and a deploy token of another app, may not push: 403, naming why.
    for (name, role, apps) in [
        ("viewer", "read", serde_json::Value::Null),
        ("other", "deploy", serde_json::json!(["elsewhere"])),
    ] {
        let made = h
            .client
            .post(
                "/v1/tokens",
                &serde_json::json!({ "name": name, "role": role, "apps": apps }),
            )
            .await
            .expect("token made");
        let secret = made["secret"].as_str().expect("secret").to_owned();
        let out = git(
            &app,
            &["push", &remote(&h, "guarded", &secret), "HEAD:main"],
        );
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("403"),
            "{name}: {}",
            text(&out)
        );
        let answer = raw_get(
            api,
            "/git/guarded.git/info/refs?service=git-receive-pack",
            Some(&format!("Basic {}", basic(&secret))),
        );
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(answer.contains("cannot push to guarded"), "{answer}");
    }
    // Nothing was pushed, nothing was released.
    let releases = h.client.get("/v1/apps/guarded/releases").await.unwrap();
    assert_eq!(releases.as_array().map(Vec::len), Some(1), "{releases}");
    h.stop().await;
}

/// `git:<secret>` in base64, as git sends HTTP Basic credentials.
fn basic(secret: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("git:{secret}"))
}
