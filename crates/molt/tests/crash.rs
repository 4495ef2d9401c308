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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = b
            .client
            .get(&format!("/v1/deployments/{id}"))
            .await
            .unwrap();
        if d["deployment"]["state"] == step {
            break;
        }
        assert!(Instant::now() < deadline, "never reached {step}: {d}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the paused step a moment so any in-flight work has settled at the hook.
    tokio::time::sleep(Duration::from_millis(100)).await;
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
