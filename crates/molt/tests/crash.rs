//! Crash safety with the real `molt` binary: `molt serve` is SIGKILLed at each step of a
//! deployment (held there by the MOLT_TEST_PAUSE_AT test hook) and restarted. Afterwards the
//! route points at a healthy environment, the deployment completed or was rolled back, and no
//! instance process is orphaned. Also: SIGTERM exits 0 and a restart keeps routes, releases and
//! history, re-adopting the running instances.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use molt_cli::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use support::*;

/// Instance ids the store counts as live.
async fn live_instances(client: &Client) -> BTreeSet<String> {
    let status = client.get("/v1/status").await.unwrap();
    let mut ids = BTreeSet::new();
    for app in status["apps"].as_array().unwrap() {
        for env in app["envs"].as_array().unwrap() {
            for i in env["instances"].as_array().unwrap() {
                ids.insert(i["id"].as_str().unwrap().to_string());
            }
        }
    }
    ids
}

fn kill_all(owner: &str) {
    for (_, pid) in processes_of(owner) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

async fn crash_at(step: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data: PathBuf = tmp.path().join("data");
    let overrides = FAST.replace("watch = \"2s\"", "watch = \"1s\"");
    let app = make_app(tmp.path(), "crash", &[], &overrides);

    // v1, then a clean restart: SIGTERM exits 0, the next serve keeps everything.
    let mut a = Serve::start(&data, None, false);
    let owner = owner_of(&data);
    let d1 = deploy_dir(&a.client, &app).await;
    assert_eq!(d1["state"], "drained", "{d1}");
    let pids_before: BTreeSet<u32> = processes_of(&owner).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        a.signal(Signal::SIGTERM).code(),
        Some(0),
        "SIGTERM must exit 0"
    );

    let mut b = Serve::start(&data, Some(step), false);
    let (status, body) = b.get("crash.localhost").await;
    assert_eq!(
        status, 200,
        "after a clean restart the route still serves: {body}"
    );
    assert!(body.contains("crash v1"), "{body}");
    let pids_after: BTreeSet<u32> = processes_of(&owner).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        pids_before, pids_after,
        "instances were re-adopted, not replaced"
    );
    assert_eq!(
        b.client
            .get("/v1/apps/crash/releases")
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // v2, held at `step`, then SIGKILL.
    let d2 = b
        .client
        .post(
            "/v1/apps/crash/config",
            &json!({ "set": { "GREETING": "two" } }),
        )
        .await
        .unwrap();
    let id = d2["id"].as_u64().unwrap();
    // Held at the hook: the work of the step before has finished.
    held_at(&b.client, "crash", id, step).await;
    b.signal(Signal::SIGKILL);

    // Restart: the deployment is resumed to its end (or rolled back) and nothing is orphaned.
    let mut c = Serve::start(&data, None, true);
    let done = wait_deployment(&c.client, id).await;
    let state = done["state"].as_str().unwrap().to_string();
    assert!(
        ["drained", "succeeded", "rolled_back", "failed"].contains(&state.as_str()),
        "{done}"
    );
    let (status, body) = c.get("crash.localhost").await;
    assert_eq!(status, 200, "{body}");
    if state == "drained" || state == "succeeded" {
        assert!(body.starts_with("two from crash v2"), "{state}: {body}");
    } else {
        assert!(body.contains("crash v1"), "{state}: {body}");
    }
    eventually(Duration::from_secs(10), "no orphaned instance", || async {
        let live = live_instances(&c.client).await;
        let running: BTreeSet<String> =
            processes_of(&owner).into_iter().map(|(id, _)| id).collect();
        running == live
    })
    .await;
    let journal = c
        .client
        .get(&format!("/v1/deployments/{id}"))
        .await
        .unwrap();
    assert!(
        journal["journal"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["state"] == step),
        "{journal}"
    );
    let history = c.client.get("/v1/apps/crash/events").await.unwrap();
    assert!(
        history.to_string().contains("resuming deployment"),
        "{history}"
    );
    assert_eq!(c.signal(Signal::SIGTERM).code(), Some(0));
    let left = processes_of(&owner);
    kill_all(&owner);
    assert!(
        left.is_empty(),
        "instances left after --stop-instances-on-exit: {left:?}"
    );
}

macro_rules! crash_tests {
    ($($name:ident => $step:literal),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_at($step).await;
        }
    )*};
}

crash_tests! {
    killed_while_pending => "pending",
    killed_after_env_created => "env_created",
    killed_after_instances_started => "instances_started",
    killed_when_healthy => "healthy",
    killed_after_swap => "swapped",
    killed_after_drain => "drained",
}

/// Waits until deployment `id` is in `state`.
async fn reach(client: &Client, id: u64, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = client.get(&format!("/v1/deployments/{id}")).await.unwrap();
        if d["deployment"]["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "never reached {state}: {d}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until deployment `id` is held at `state` by the MOLT_TEST_PAUSE_AT hook (its history
/// says so once the step before has finished).
/// GETs through the router until the shadow report counts `n` mirrored requests; every
/// answer users get is v1's.
async fn mirror(serve: &Serve, n: u64) {
    for _ in 0..n {
        let (status, body) = serve.get("crash.localhost").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("crash v1"),
            "users see only live answers: {body}"
        );
    }
    eventually(Duration::from_secs(10), "mirrored requests", || async {
        let r = serve.client.get("/v1/apps/crash/shadow").await.unwrap();
        r["shadow"]["requests"] == n
    })
    .await;
}

/// Killed while shadowing, a restart keeps mirroring (the route table is rebuilt from the
/// store) and the deployment waits for its decision; killed right after the promotion was
/// journaled, a restart carries on with the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_shadowing_and_after_promotion() {
    let tmp = tempfile::tempdir().unwrap();
    let data: PathBuf = tmp.path().join("data");
    let v1 = make_app(tmp.path(), "crash", &[], FAST);
    let v2 = make_app(tmp.path(), "crash", &[("GREETING", "two")], FAST);

    let mut a = Serve::start(&data, None, false);
    let owner = owner_of(&data);
    assert_eq!(deploy_dir(&a.client, &v1).await["state"], "drained");
    let d = start_deploy_with(&a.client, &v2, json!({ "shadow": 100 }))
        .await
        .unwrap();
    let id = d["id"].as_u64().unwrap();
    reach(&a.client, id, "shadowing").await;
    mirror(&a, 4).await;
    a.signal(Signal::SIGKILL);

    // Restart: still shadowing, mirroring resumed; the next one pauses once promoted.
    let mut b = Serve::start(&data, Some("promoted"), false);
    reach(&b.client, id, "shadowing").await;
    let history = b.client.get("/v1/apps/crash/events").await.unwrap();
    assert!(
        history.to_string().contains("resuming deployment"),
        "{history}"
    );
    mirror(&b, 3).await;
    let promoted = b
        .client
        .post("/v1/apps/crash/promote", &json!({}))
        .await
        .unwrap();
    assert_eq!(promoted["state"], "promoted", "{promoted}");
    // The router's counters restarted with molt: the comparison covers what this one saw.
    assert_eq!(promoted["shadow"]["shadow"]["requests"], 3, "{promoted}");
    assert_eq!(promoted["shadow"]["live"]["requests"], 3, "{promoted}");
    let (_, body) = b.get("crash.localhost").await;
    assert!(body.contains("crash v1"), "held before the swap: {body}");
    held_at(&b.client, "crash", id, "promoted").await;
    b.signal(Signal::SIGKILL);

    // Restart: the promoted deployment swaps, drains and keeps its comparison.
    let mut c = Serve::start(&data, None, true);
    let done = wait_deployment(&c.client, id).await;
    assert_eq!(done["state"], "drained", "{done}");
    assert_eq!(done["shadow"], promoted["shadow"], "{done}");
    let (status, body) = c.get("crash.localhost").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("two from crash v2"), "{body}");
    let app = c.client.get("/v1/apps/crash").await.unwrap();
    assert_eq!(app["app"]["shadow"], serde_json::Value::Null, "{app}");
    eventually(Duration::from_secs(10), "no orphaned instance", || async {
        let live = live_instances(&c.client).await;
        let running: BTreeSet<String> =
            processes_of(&owner).into_iter().map(|(id, _)| id).collect();
        running == live
    })
    .await;
    assert_eq!(c.signal(Signal::SIGTERM).code(), Some(0));
    let left = processes_of(&owner);
    kill_all(&owner);
    assert!(left.is_empty(), "instances left: {left:?}");
}
