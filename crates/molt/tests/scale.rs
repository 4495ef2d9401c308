//! Scaling end to end against a real molt serve and real instances: `molt scale` up and down
//! under load with no failed request and no new release, the autoscaler following a
//! concurrency load up and back down, and scale to zero with the first request held and
//! answered.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Health and deployment settings of the fast tests, without `instances` (for `[scale]`).
const FAST_CHECKS: &str = r#"[health]
path = "/healthz"
interval = "200ms"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 2
start_deadline = "15s"
[deploy]
drain_timeout = "5s"
watch = "1s"
rollback_window = "15m"
"#;

/// The live environment of `app` in `molt status`: (desired, healthy, live instances).
async fn live_counts(h: &Harness, app: &str) -> (u64, usize, usize) {
    let status = h
        .client
        .get(&format!("/v1/status?app={app}"))
        .await
        .expect("status");
    let envs = status["apps"][0]["envs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let live = envs
        .iter()
        .find(|e| e["routed"] == json!(true))
        .expect("a live environment");
    let instances = live["instances"].as_array().cloned().unwrap_or_default();
    let healthy = instances
        .iter()
        .filter(|i| i["state"] == json!("healthy"))
        .count();
    (
        live["desired"].as_u64().unwrap_or_default(),
        healthy,
        instances.len(),
    )
}

async fn history(h: &Harness, app: &str) -> Vec<String> {
    let events = h
        .client
        .get(&format!("/v1/apps/{app}/events?limit=200"))
        .await
        .expect("events");
    events
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}: {}", e["kind"].as_str().unwrap_or(""), e["message"]))
        .collect()
}

async fn scale(h: &Harness, app: &str, body: Value) -> anyhow::Result<Value> {
    h.client.post(&format!("/v1/apps/{app}/scale"), &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_up_and_down_under_load_fails_no_request_and_makes_no_release() {
    let h = Harness::start().await;
    let dir = h.app("scl", &[], FAST);
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    let releases = h.client.get("/v1/apps/scl/releases").await.unwrap();
    let routed = h.client.get("/v1/apps/scl").await.unwrap()["app"]["routed_env"].clone();

    let load = ClientLoad::start("scl.localhost", &[h.router; 4]);
    let up = scale(&h, "scl", json!({ "instances": 5, "actor": "test" }))
        .await
        .expect("scale up");
    assert_eq!((up["from"].as_u64(), up["to"].as_u64()), (Some(2), Some(5)));
    eventually(
        Duration::from_secs(20),
        "five healthy instances",
        || async { live_counts(&h, "scl").await == (5, 5, 5) },
    )
    .await;
    let down = scale(&h, "scl", json!({ "instances": 1 }))
        .await
        .expect("scale down");
    assert_eq!(
        (down["from"].as_u64(), down["to"].as_u64()),
        (Some(5), Some(1))
    );
    eventually(Duration::from_secs(20), "one instance left", || async {
        live_counts(&h, "scl").await == (1, 1, 1)
    })
    .await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 0, "no request answered");

    // No release was made and the route did not move; the history says who scaled what.
    assert_eq!(
        h.client.get("/v1/apps/scl/releases").await.unwrap(),
        releases
    );
    assert_eq!(
        h.client.get("/v1/apps/scl").await.unwrap()["app"]["routed_env"],
        routed
    );
    let lines = history(&h, "scl").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("from 2 to 5 instance(s) by admin")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("from 5 to 1")),
        "{lines:#?}"
    );

    // Bad input: a clear error, nothing changed.
    for (body, words) in [
        (json!({ "instances": 1001 }), "between 0 and 1000"),
        (
            json!({ "min": 5, "max": 2 }),
            "min (5) is more than max (2)",
        ),
        (json!({}), "nothing to change"),
        (json!({ "instances": -1 }), ""),
        (json!({ "instances": 2, "bogus": 1 }), "bogus"),
    ] {
        let e = scale(&h, "scl", body.clone()).await.expect_err("refused");
        assert!(e.to_string().contains(words), "{body}: {e}");
    }
    let e = scale(&h, "nope", json!({ "instances": 2 }))
        .await
        .expect_err("unknown app");
    assert!(e.to_string().contains("nope"), "{e}");
    assert_eq!(live_counts(&h, "scl").await, (1, 1, 1));

    // The CLI says what it did.
    let out = molt_command(&h.data_dir(), &["scale", "scl", "2"])
        .env(
            "MOLT_API",
            format!("http://{}", h.running.as_ref().unwrap().api_addr),
        )
        .output()
        .expect("molt scale");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("scaled from 1 to 2 instance(s)"), "{said}");
    let out = molt_command(&h.data_dir(), &["scale", "scl", "--min", "3", "--max", "2"])
        .env(
            "MOLT_API",
            format!("http://{}", h.running.as_ref().unwrap().api_addr),
        )
        .output()
        .expect("molt scale");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("min (3) is more than max (2)"),
        "{}",
        text(&out)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autoscaler_follows_a_concurrency_load_up_and_back_down() {
    let h = Harness::start().await;
    let scale_section = r#"[scale]
min = 1
max = 4
concurrency = 2
window = "2s"
panic_window = "1s"
scale_down_delay = "1s"
"#;
    let dir = h.app(
        "auto",
        &[("DELAY_MS", "100")],
        &format!("{scale_section}{FAST_CHECKS}"),
    );
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    assert_eq!(live_counts(&h, "auto").await.0, 1);

    // Eight clients, each always waiting on a 100 ms answer: about 8 in flight, 2 per
    // instance wanted, so 4 instances.
    let load = ClientLoad::start("auto.localhost", &[h.router; 8]);
    let step = Instant::now();
    eventually(
        Duration::from_secs(30),
        "four healthy instances",
        || async {
            let (desired, healthy, _) = live_counts(&h, "auto").await;
            desired == 4 && healthy == 4
        },
    )
    .await;
    eprintln!("load step -> 4 healthy instances in {:?}", step.elapsed());
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 0);
    let status = h.client.get("/v1/status?app=auto").await.unwrap();
    let scaling = &status["apps"][0]["scaling"];
    assert_eq!(scaling["spec"]["max"], 4, "{status}");
    assert_eq!(scaling["bounds_from"], "molt.toml", "{status}");

    // Quiet again: back to the minimum once the window and the delay have passed.
    eventually(Duration::from_secs(30), "back to one instance", || async {
        live_counts(&h, "auto").await == (1, 1, 1)
    })
    .await;
    let lines = history(&h, "auto").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("by the autoscaler") && l.contains("in flight")),
        "{lines:#?}"
    );
    // Bounds set with molt scale win over molt.toml's, and outlive the next deployment.
    let set = scale(&h, "auto", json!({ "min": 2, "max": 3 }))
        .await
        .unwrap();
    assert_eq!(set["to"], 2, "{set}");
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    let status = h.client.get("/v1/status?app=auto").await.unwrap();
    assert_eq!(
        status["apps"][0]["scaling"]["bounds_from"], "molt scale",
        "{status}"
    );
    assert_eq!(live_counts(&h, "auto").await.0, 2, "{status}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaled_to_zero_the_first_request_is_held_and_answered() {
    let h = Harness::start().await;
    let scale_section = r#"[scale]
min = 0
max = 2
window = "2s"
panic_window = "1s"
scale_down_delay = "1s"
idle = "1s"
"#;
    let dir = h.app("zero", &[], &format!("{scale_section}{FAST_CHECKS}"));
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    eventually(Duration::from_secs(30), "zero instances", || async {
        live_counts(&h, "zero").await == (0, 0, 0)
    })
    .await;
    let owner = owner_of(&h.data_dir());
    assert!(processes_of(&owner).is_empty(), "an instance still runs");

    let asked = Instant::now();
    let (status, body) = h.get("zero.localhost", "/").await;
    let cold = asked.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("zero"), "{body}");
    eprintln!("cold start from zero: held request answered in {cold:?}");
    assert_eq!(live_counts(&h, "zero").await.0, 1);
    let lines = history(&h, "zero").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("held while the environment has no instance")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("scaled to zero")),
        "{lines:#?}"
    );
    h.stop().await;
}
