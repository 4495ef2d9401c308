//! Canary deployments end to end: a real `molt serve`, real instances, real traffic through the
//! router. Clients send `molt-bucket` cookies spread over every bucket, so a weight of N % sends
//! about N % of them to the canary.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::*;

/// A canary judged every 300 ms; `steps` and the analysis lines are the test's.
fn canary(steps: &str, analysis: &str) -> String {
    format!(
        r#"instances = 2
[health]
path = "/healthz"
interval = "200ms"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 2
start_deadline = "15s"
[deploy]
strategy = "canary"
steps = {steps}
drain_timeout = "5s"
watch = "1s"
rollback_window = "15m"
[deploy.analysis]
{analysis}
"#
    )
}

/// Keep-alive clients sending GET `/` for `host`, each request with the next sticky bucket
/// (7919 apart, a stride prime to the 10 000 buckets, so any short stretch of requests covers
/// them evenly); bounded to two minutes. Counts answers by status.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(router: std::net::SocketAddr, host: &'static str, clients: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut conn = KeepAlive::connect(router).await;
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut bucket = c * 5_003;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        bucket = (bucket + 7_919) % 10_000;
                        let cookie = format!("molt-bucket={bucket}");
                        match conn.get_with(host, "/", &[("cookie", &cookie)]).await {
                            Ok((200, _)) => ok.fetch_add(1, Ordering::SeqCst),
                            Ok(_) => failed.fetch_add(1, Ordering::SeqCst),
                            Err(_) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                conn = KeepAlive::connect(router).await;
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the clients: (answered 200, other answers or errors).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("client");
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// GETs spread over the buckets: the releases that answered.
async fn answers(h: &Harness, host: &str, n: u64) -> Vec<String> {
    answers_at(h.router, host, n).await
}

async fn answers_at(router: std::net::SocketAddr, host: &str, n: u64) -> Vec<String> {
    let mut conn = KeepAlive::connect(router).await;
    let mut out = Vec::new();
    for i in 0..n {
        let cookie = format!("molt-bucket={}", (i * 997) % 10_000);
        let (status, body) = conn
            .get_with(host, "/", &[("cookie", &cookie)])
            .await
            .expect("request");
        out.push(format!("{status} {}", body.trim()));
    }
    out
}

async fn deployment(h: &Harness, id: u64) -> Value {
    h.client
        .get(&format!("/v1/deployments/{id}"))
        .await
        .expect("deployment")
}

/// Waits (≤ 30 s) until deployment `id` is in `state`.
async fn reach(h: &Harness, id: u64, state: &str) {
    eventually(Duration::from_secs(30), state, || async {
        deployment(h, id).await["deployment"]["state"] == state
    })
    .await;
}

async fn events(h: &Harness, app: &str) -> Vec<String> {
    let events = h
        .client
        .get(&format!("/v1/apps/{app}/events"))
        .await
        .expect("events");
    events
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn verdicts(d: &Value) -> Vec<String> {
    d["canary"]["verdicts"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|i| i["verdict"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_aborted_by_its_analysis_under_load() {
    let h = Harness::start().await;
    let v1 = h.deploy(&h.app("shop", &[], FAST)).await;
    assert_eq!(v1["state"], "drained", "{v1}");
    let bad = h.app(
        "shop",
        &[("FAIL_SHARE", "50")],
        &canary(
            r#"[{ weight = 20, pause = "1s" }, { weight = 60, pause = "1s" }]"#,
            "interval = \"500ms\"\nsuccess_rate = 0.95\nmin_requests = 3\nfailure_limit = 2\n\
             progress_deadline = \"60s\"",
        ),
    );
    let load = Load::start(h.router, "shop.localhost", 4);
    // `molt deploy` follows the canary and exits 3 when it is aborted.
    let data = h.data_dir();
    let dir = bad.clone();
    let out = tokio::task::spawn_blocking(move || {
        molt_command(&data, &["deploy", dir.to_str().expect("utf-8 path")])
            .output()
            .expect("molt runs")
    })
    .await
    .expect("join");
    let (ok, failed) = load.finish().await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("canarying"), "{stdout}");
    assert!(stdout.contains("failed: canary"), "{stdout}");

    let status = h.client.get("/v1/apps/shop").await.expect("status");
    let d = status["last_deployment"].clone();
    assert_eq!(d["state"], "aborted", "{d}");
    let error = d["error"].as_str().unwrap_or("");
    assert!(error.contains("failure limit"), "{error}");
    assert_eq!(d["canary"]["weight"], 0, "{d}");
    assert_eq!(d["canary"]["aborted"], "failure_limit", "{d}");
    let judged = verdicts(&d);
    assert_eq!(
        judged.iter().filter(|v| *v == "failed").count(),
        2,
        "{judged:?}"
    );
    // Never moved past the first step: every interval judged failed before its pause ended
    // or passed none.
    assert!(
        d["canary"]["verdicts"]
            .as_array()
            .expect("verdicts")
            .iter()
            .all(|v| v["weight"] == 20),
        "{d}"
    );

    // The client failure share is bounded by weight × error rate (20 % × 50 %), with room for
    // the stretch of buckets a short run covers unevenly.
    let share = failed as f64 / (ok + failed).max(1) as f64;
    assert!(ok + failed > 0);
    assert!(
        share <= 0.2 * 0.5 + 0.05,
        "{failed} of {} failed",
        ok + failed
    );

    // Traffic is back on v1 for every bucket, and the canary environment is retired.
    let after = answers(&h, "shop.localhost", 40).await;
    assert!(
        after
            .iter()
            .all(|a| a.starts_with("200 hello from shop v1")),
        "{after:?}"
    );
    let env = d["env"].as_str().expect("env").to_owned();
    let status = h.client.get("/v1/apps/shop").await.expect("status");
    assert_ne!(status["app"]["routed_env"], env.as_str(), "{status}");
    // The abort is on the deployment at once; its history line follows the retirement of
    // the canary's environment.
    eventually(
        Duration::from_secs(10),
        "the canary-abort event",
        || async {
            events(&h, "shop")
                .await
                .iter()
                .any(|e| e.starts_with("canary-abort") && e.contains(&env))
        },
    )
    .await;
    let history = events(&h, "shop").await;
    assert!(
        history.iter().any(|e| e.starts_with("canary-verdict")),
        "{history:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_is_promoted_step_by_step() {
    let h = Harness::start().await;
    let v1 = h.deploy(&h.app("shop", &[], FAST)).await;
    let old = v1["env"].as_str().expect("env").to_owned();
    let good = h.app(
        "shop",
        &[("GREETING", "bonjour")],
        &canary(
            r#"[{ weight = 25, pause = "300ms" }, { weight = 60, pause = "300ms" }]"#,
            "interval = \"300ms\"\nmin_requests = 2\nsuccess_rate = 0.99\np99_ratio = 50\n\
             progress_deadline = \"60s\"",
        ),
    );
    let load = Load::start(h.router, "shop.localhost", 4);
    let d = start_deploy(&h.client, &good)
        .await
        .expect("deploy accepted");
    let id = d["id"].as_u64().expect("id");
    let d = wait_deployment(&h.client, id).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(d["state"], "drained", "{d}");
    assert_eq!(failed, 0, "{ok} answered");
    let journal: Vec<String> = deployment(&h, id).await["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .map(|j| {
            format!(
                "{} {}",
                j["state"].as_str().unwrap_or(""),
                j["detail"].as_str().unwrap_or("")
            )
        })
        .collect();
    let at = |needle: &str| {
        journal
            .iter()
            .position(|j| j.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in {journal:#?}"))
    };
    // The steps in order: 25 %, 60 %, promoted, swapped.
    assert!(at("canary: 25 % of clients") < at("step 2/2: 60 % of clients"));
    assert!(at("step 2/2: 60 % of clients") < at("promoted every step passed"));
    assert!(at("promoted every step passed") < at("swapped"));
    assert!(!verdicts(&d).iter().any(|v| v == "failed"), "{d}");
    assert_eq!(d["canary"]["step"], 1, "{d}");
    // All of the traffic on the canary; the old environment stays warm for a rollback.
    let after = answers(&h, "shop.localhost", 40).await;
    assert!(
        after
            .iter()
            .all(|a| a.starts_with("200 bonjour from shop v2")),
        "{after:?}"
    );
    assert_eq!(d["prev_env"], old.as_str(), "{d}");
    let status = h.client.get("/v1/apps/shop").await.expect("status");
    let envs = status["envs"].as_array().cloned().unwrap_or_default();
    let prev = envs
        .iter()
        .find(|e| e["env"]["id"] == old.as_str())
        .unwrap_or_else(|| panic!("{old} is not live: {status}"));
    assert_eq!(prev["env"]["state"], "ready", "{status}");
    assert!(prev["env"]["warm_until_ms"].as_u64().is_some(), "{status}");
    let rollback = h
        .client
        .post("/v1/apps/shop/rollback", &serde_json::json!({}))
        .await
        .expect("rollback");
    assert_eq!(rollback["kind"], "warm", "{rollback}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_and_abort_commands_and_the_progress_deadline() {
    let h = Harness::start().await;
    h.deploy(&h.app("shop", &[], FAST)).await;
    // Held at its first step (a long pause, no traffic): promoted by the user.
    let waiting = canary(
        r#"[{ weight = 10, pause = "1m" }, { weight = 50, pause = "1m" }]"#,
        "interval = \"200ms\"\nprogress_deadline = \"5m\"",
    );
    let v2 = h.app("shop", &[("GREETING", "bonjour")], &waiting);
    let d = start_deploy(&h.client, &v2).await.expect("deploy");
    let id = d["id"].as_u64().expect("id");
    reach(&h, id, "canarying").await;
    let out = tokio::task::spawn_blocking({
        let data = h.data_dir();
        move || {
            molt_command(&data, &["promote", "shop"])
                .output()
                .expect("molt runs")
        }
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("promoted at 10 %"),
        "{}",
        text(&out)
    );
    let d = wait_deployment(&h.client, id).await;
    assert!(
        matches!(d["state"].as_str(), Some("drained" | "succeeded")),
        "{d}"
    );
    let after = answers(&h, "shop.localhost", 20).await;
    assert!(
        after
            .iter()
            .all(|a| a.starts_with("200 bonjour from shop v2")),
        "{after:?}"
    );

    // Aborted by the user: v2 keeps serving; a second abort has nothing to abort.
    let v3 = h.app("shop", &[("GREETING", "hola")], &waiting);
    let d = start_deploy(&h.client, &v3).await.expect("deploy");
    let id = d["id"].as_u64().expect("id");
    reach(&h, id, "canarying").await;
    let mixed = answers(&h, "shop.localhost", 40).await;
    assert!(
        mixed.iter().any(|a| a.contains("hola from shop v3")),
        "{mixed:?}"
    );
    // `molt status` shows the canary's step, weight and each environment's live numbers.
    let out = tokio::task::spawn_blocking({
        let data = h.data_dir();
        move || {
            molt_command(&data, &["status", "shop"])
                .output()
                .expect("molt runs")
        }
    })
    .await
    .expect("join");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("canary step 1 at 10 %"), "{}", text(&out));
    assert!(status.contains("canary (10 %)"), "{}", text(&out));
    assert!(status.contains("NON-5XX / P99"), "{}", text(&out));
    assert!(status.contains("100.0 % / ≤"), "{}", text(&out));
    let aborted = h
        .client
        .post("/v1/apps/shop/abort", &serde_json::json!({}))
        .await
        .expect("abort");
    assert_eq!(aborted["state"], "aborted", "{aborted}");
    assert!(
        aborted["error"]
            .as_str()
            .unwrap_or("")
            .contains("aborted by the user"),
        "{aborted}"
    );
    let after = answers(&h, "shop.localhost", 40).await;
    assert!(
        after
            .iter()
            .all(|a| a.starts_with("200 bonjour from shop v2")),
        "{after:?}"
    );
    let out = tokio::task::spawn_blocking({
        let data = h.data_dir();
        move || {
            molt_command(&data, &["abort", "shop"])
                .output()
                .expect("molt runs")
        }
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no canary of shop"),
        "{}",
        text(&out)
    );

    // No traffic: every interval is inconclusive, and the progress deadline aborts it.
    let quiet = canary(
        r#"[{ weight = 10, pause = "200ms" }]"#,
        "interval = \"200ms\"\nmin_requests = 5\nprogress_deadline = \"1500ms\"",
    );
    let v4 = h.app("shop", &[("GREETING", "ciao")], &quiet);
    let d = start_deploy(&h.client, &v4).await.expect("deploy");
    let d = wait_deployment(&h.client, d["id"].as_u64().expect("id")).await;
    assert_eq!(d["state"], "aborted", "{d}");
    assert_eq!(d["canary"]["aborted"], "progress_deadline", "{d}");
    let judged = verdicts(&d);
    assert!(
        !judged.is_empty() && judged.iter().all(|v| v == "inconclusive"),
        "{judged:?}"
    );
    let after = answers(&h, "shop.localhost", 20).await;
    assert!(
        after
            .iter()
            .all(|a| a.starts_with("200 bonjour from shop v2")),
        "{after:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_killed_at_a_step_resumes_at_that_step() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let mut a = Serve::start(&data, None, false);
    let owner = owner_of(&data);
    let v1 = deploy_dir(&a.client, &make_app(tmp.path(), "shop", &[], FAST)).await;
    assert_eq!(v1["state"], "drained", "{v1}");
    let v2 = make_app(
        tmp.path(),
        "shop",
        &[("GREETING", "bonjour")],
        &canary(
            r#"[{ weight = 20, pause = "200ms" }, { weight = 50, pause = "1m" }]"#,
            "interval = \"300ms\"\nmin_requests = 2\nprogress_deadline = \"5m\"",
        ),
    );
    let load = Load::start(a.router, "shop.localhost", 4);
    let d = start_deploy(&a.client, &v2).await.expect("deploy");
    let id = d["id"].as_u64().expect("id");
    let client = a.client.clone();
    eventually(Duration::from_secs(60), "the second step", || async {
        let d = client
            .get(&format!("/v1/deployments/{id}"))
            .await
            .expect("deployment");
        d["deployment"]["canary"]["step"] == 1
    })
    .await;
    let (_, failed) = load.finish().await;
    assert_eq!(failed, 0);
    let before = a
        .client
        .get(&format!("/v1/deployments/{id}"))
        .await
        .expect("deployment")["deployment"]
        .clone();
    a.signal(Signal::SIGKILL);

    // The restarted molt resumes the canary at its second step, split as before.
    let mut b = Serve::start(&data, None, true);
    let d = b
        .client
        .get(&format!("/v1/deployments/{id}"))
        .await
        .expect("deployment")["deployment"]
        .clone();
    assert_eq!(d["state"], "canarying", "{d}");
    assert_eq!(
        (d["canary"]["step"].clone(), d["canary"]["weight"].clone()),
        (1.into(), 50.into()),
        "{d}"
    );
    let kept = d["canary"]["verdicts"].as_array().map(Vec::len);
    assert!(
        kept >= before["canary"]["verdicts"].as_array().map(Vec::len),
        "{d}"
    );
    let mixed = answers_at(b.router, "shop.localhost", 40).await;
    assert!(mixed.iter().all(|a| a.starts_with("200 ")), "{mixed:?}");
    assert!(
        mixed.iter().any(|a| a.contains("bonjour from shop v2")),
        "{mixed:?}"
    );
    assert!(
        mixed.iter().any(|a| a.contains("hello from shop v1")),
        "{mixed:?}"
    );
    let history = b.client.get("/v1/apps/shop/events").await.expect("events");
    assert!(
        history.to_string().contains("resuming deployment"),
        "{history}"
    );

    // And it goes on from there: promoted, all traffic on v2.
    let promoted = b
        .client
        .post("/v1/apps/shop/promote", &serde_json::json!({}))
        .await
        .expect("promote");
    assert_eq!(promoted["state"], "promoted", "{promoted}");
    let done = wait_deployment(&b.client, id).await;
    assert_eq!(done["state"], "drained", "{done}");
    let after = answers_at(b.router, "shop.localhost", 20).await;
    assert!(
        after
            .iter()
            .all(|a| a.starts_with("200 bonjour from shop v2")),
        "{after:?}"
    );
    assert_eq!(b.signal(Signal::SIGTERM).code(), Some(0));
    let left = processes_of(&owner);
    for (_, pid) in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    assert!(
        left.is_empty(),
        "instances left after --stop-instances-on-exit: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blue_green_release_that_fails_after_the_swap_is_swapped_back_by_the_watch() {
    let h = Harness::start().await;
    h.deploy(&h.app("shop", &[], FAST)).await;
    let judged = FAST.replace("watch = \"2s\"", "watch = \"60s\"")
        + "[deploy.analysis]\ninterval = \"500ms\"\nmin_requests = 3\nfailure_limit = 2\n";
    let bad = h.app("shop", &[("FAIL_SHARE", "50")], &judged);
    let load = Load::start(h.router, "shop.localhost", 4);
    let d = start_deploy(&h.client, &bad).await.expect("deploy");
    let id = d["id"].as_u64().expect("id");
    eventually(Duration::from_secs(60), "rolled back", || async {
        let state = deployment(&h, id).await["deployment"]["state"].clone();
        state == "rolled_back" || state == "succeeded"
    })
    .await;
    load.finish().await;
    let d = deployment(&h, id).await["deployment"].clone();
    assert_eq!(d["state"], "rolled_back", "{d}");
    let error = d["error"].as_str().unwrap_or("");
    assert!(error.contains("failed 2 analysis interval(s)"), "{error}");
    assert!(error.contains("success rate"), "{error}");
    let after = answers(&h, "shop.localhost", 20).await;
    assert!(
        after
            .iter()
            .all(|a| a.starts_with("200 hello from shop v1")),
        "{after:?}"
    );
    let history = events(&h, "shop").await;
    assert!(
        history.iter().any(|e| e.starts_with("watch-verdict")),
        "{history:?}"
    );
    h.stop().await;
}
