//! End-to-end tests against an in-process `molt serve` with real instance processes.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_config_and_rollback() {
    // The router serves from its own threads (one per CPU), as `molt serve` does by default.
    deploy_config_and_rollback_on(Harness::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_config_and_rollback_with_the_router_on_the_shared_runtime() {
    let h = Harness::start_with(|cfg| cfg.router_threads = 0).await;
    deploy_config_and_rollback_on(h).await;
}

/// Deploys, changes config (a second release, blue/green), rolls back, reaches a preview
/// host, and reads the metrics and history, on the server `h`.
async fn deploy_config_and_rollback_on(h: Harness) {
    let dir = h.app("shop", &[], FAST);
    let d1 = h.deploy(&dir).await;
    assert_eq!(d1["state"], "drained", "{d1}");
    let (status, body) = h.get("shop.localhost", "/").await;
    assert_eq!((status, body.contains("shop v1")), (200, true), "{body}");

    // A config change is a new release, deployed blue/green.
    let d2 = h
        .client
        .post(
            "/v1/apps/shop/config",
            &json!({ "set": { "GREETING": "bonjour" } }),
        )
        .await
        .unwrap();
    let d2 = wait_deployment(&h.client, d2["id"].as_u64().unwrap()).await;
    assert_eq!(d2["state"], "drained", "{d2}");
    assert_eq!(d2["prev_env"], d1["env"]);
    let (_, body) = h.get("shop.localhost", "/").await;
    assert!(body.starts_with("bonjour from shop v2"), "{body}");

    // The old environment is warm: rollback is one route change.
    let rb = h
        .client
        .post("/v1/apps/shop/rollback", &json!({}))
        .await
        .unwrap();
    assert_eq!(rb["kind"], "warm", "{rb}");
    assert_eq!(rb["release"], 1);
    let (_, body) = h.get("shop.localhost", "/").await;
    assert!(body.starts_with("hello from shop v1"), "{body}");

    // Preview hostnames reach a kept environment directly.
    let env2 = d2["env"].as_str().unwrap();
    let (_, body) = h.get(&format!("{env2}.localhost"), "/").await;
    assert!(body.contains("shop v2"), "{body}");

    // Prometheus metrics carry the traffic per app and environment.
    let metrics = h.client.get("/metrics").await.unwrap();
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(&format!(
            "molt_router_requests_total{{app=\"shop\",env=\"{env2}\",routed=\"false\"}} 2"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("molt_instances{app=\"shop\""), "{metrics}");
    let releases = h.client.get("/v1/apps/shop/releases").await.unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 2);
    assert_eq!(releases[0]["note"], "config set GREETING");
    let history = h.client.get("/v1/apps/shop/events").await.unwrap();
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "rollback"));
    h.stop().await;
}

/// ≥ 8 keep-alive clients hammer the route while the app is deployed, swapped and rolled back
/// 20+ times: every response is 200, each route change is seen by the very next request, and
/// the deployments' cutover figures match what the clients saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_dropped_requests_across_swaps_and_rollbacks() {
    let h = Harness::start().await;
    let dir = h.app("zd", &[], FAST);
    let d1 = h.deploy(&dir).await;
    assert_eq!(d1["state"], "drained");
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let versions = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, total, failures, versions) = (
            stop.clone(),
            total.clone(),
            failures.clone(),
            versions.clone(),
        );
        let router = h.router;
        clients.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(router).await;
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < 200_000 {
                n += 1;
                match conn.get("zd.localhost", "/").await {
                    Ok((200, body)) => {
                        let v = body.split_whitespace().nth(3).unwrap_or("").to_string();
                        versions.lock().unwrap().insert(v);
                    }
                    Ok((s, body)) => failures.lock().unwrap().push(format!("{s}: {body}")),
                    Err(e) => failures.lock().unwrap().push(format!("error: {e}")),
                }
                total.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // A probe connection (keep-alive too) checks that each change is in force for its very
    // next request.
    let mut probe = KeepAlive::connect(h.router).await;
    let mut deployment_ids = vec![d1["id"].as_u64().unwrap()];
    let d2 = h
        .client
        .post(
            "/v1/apps/zd/config",
            &json!({ "set": { "GREETING": "v2" } }),
        )
        .await
        .unwrap();
    let d2 = wait_deployment(&h.client, d2["id"].as_u64().unwrap()).await;
    assert_eq!(d2["state"], "drained", "{d2}");
    deployment_ids.push(d2["id"].as_u64().unwrap());
    let envs = [
        d1["env"].as_str().unwrap().to_string(),
        d2["env"].as_str().unwrap().to_string(),
    ];
    let mut changes = 1;
    for i in 0..24 {
        let expect = if i % 2 == 0 { "v1" } else { "v2" };
        if i % 3 == 0 {
            let rb = h
                .client
                .post(
                    "/v1/apps/zd/rollback",
                    &json!({ "to": if expect == "v1" { 1 } else { 2 } }),
                )
                .await
                .unwrap();
            assert_eq!(rb["kind"], "warm", "{rb}");
        } else {
            let env = &envs[i % 2];
            h.client
                .post("/v1/apps/zd/swap", &json!({ "env": env }))
                .await
                .unwrap();
        }
        changes += 1;
        let (status, body) = probe.get("zd.localhost", "/").await.unwrap();
        assert_eq!(status, 200);
        assert!(
            body.contains(&format!("zd {expect} ")),
            "after change {i} expected {expect}: {body}"
        );
        // The clients get requests in between every two changes, however slow the machine.
        let before = total.load(Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(20);
        while total.load(Ordering::SeqCst) < before + 32 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // One more real deployment under load.
    let d3 = h
        .client
        .post(
            "/v1/apps/zd/config",
            &json!({ "set": { "GREETING": "v3" } }),
        )
        .await
        .unwrap();
    let d3 = wait_deployment(&h.client, d3["id"].as_u64().unwrap()).await;
    assert_eq!(d3["state"], "drained", "{d3}");
    deployment_ids.push(d3["id"].as_u64().unwrap());
    changes += 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let total = total.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        total > 24 * 32,
        "the clients stalled between changes: {total} requests"
    );
    assert!(changes >= 20);
    let seen = versions.lock().unwrap().clone();
    for v in ["v1", "v2", "v3"] {
        assert!(seen.contains(v), "clients never saw {v}: {seen:?}");
    }
    // The router's own count agrees with the clients, and the cutover figures add up.
    let status = h.client.get("/v1/status?app=zd").await.unwrap();
    let envs = status["apps"][0]["envs"].as_array().unwrap().clone();
    let router_failed: u64 = envs.iter().map(|e| e["failed"].as_u64().unwrap()).sum();
    let router_total: u64 = envs.iter().map(|e| e["requests"].as_u64().unwrap()).sum();
    assert_eq!(router_failed, 0);
    // The probe and health-free requests: clients + probe (+ a few preview requests, none here).
    assert_eq!(
        router_total,
        total + 24,
        "router counted {router_total}, clients sent {total} (+24 probes)"
    );
    let mut served = 0;
    let first_id = deployment_ids[0];
    for id in deployment_ids {
        let d = h
            .client
            .get(&format!("/v1/deployments/{id}"))
            .await
            .unwrap();
        let f: &Value = &d["deployment"]["figures"];
        assert_eq!(f["failed"], 0, "{d}");
        assert_eq!(f["deploy_failed"], 0, "{d}");
        if id != first_id {
            // Deployed under load: the clients' requests during it are on the record.
            assert!(f["deploy_served"].as_u64().unwrap() > 0, "{d}");
        }
        served += f["served"].as_u64().unwrap();
    }
    assert!(
        served <= router_total,
        "cutover figures ({served}) exceed requests ({router_total})"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unhealthy_release_leaves_traffic_on_the_old_environment() {
    let h = Harness::start().await;
    let dir = h.app("sick", &[], FAST);
    let d1 = h.deploy(&dir).await;
    assert_eq!(d1["state"], "drained");

    // Health answers 500 from the start: never healthy before the start deadline.
    let overrides = FAST.replace("start_deadline = \"15s\"", "start_deadline = \"1s\"");
    let dir2 = h.app("sick", &[("FAIL_AFTER", "-1")], &overrides);
    let d2 = h.deploy(&dir2).await;
    assert_eq!(d2["state"], "failed", "{d2}");
    let err = d2["error"].as_str().unwrap();
    assert!(
        err.contains("not healthy within the start deadline"),
        "{err}"
    );
    assert!(err.contains("answered 500"), "{err}");
    assert!(
        err.contains("listening on 127.0.0.1"),
        "log tail missing: {err}"
    );
    let (_, body) = h.get("sick.localhost", "/").await;
    assert!(body.contains("sick v1"), "{body}");

    // A process that exits at once: the error says how and shows its output.
    let dir3 = h.app("sick", &[], FAST);
    let manifest = std::fs::read_to_string(dir3.join("molt.toml"))
        .unwrap()
        .replace(
        "command = [\"python3\", \"app.py\"]",
        "command = [\"python3\", \"-c\", \"import sys; print('boom: no database'); sys.exit(3)\"]",
    );
    std::fs::write(dir3.join("molt.toml"), manifest).unwrap();
    let d3 = h.deploy(&dir3).await;
    assert_eq!(d3["state"], "failed");
    let err = d3["error"].as_str().unwrap();
    assert!(
        err.contains("exited with code 3") && err.contains("boom: no database"),
        "{err}"
    );

    // A command that does not exist.
    let dir4 = h.app("sick", &[], FAST);
    let manifest = std::fs::read_to_string(dir4.join("molt.toml"))
        .unwrap()
        .replace("\"python3\", \"app.py\"", "\"./no-such-server\"");
    std::fs::write(dir4.join("molt.toml"), manifest).unwrap();
    let d4 = h.deploy(&dir4).await;
    assert_eq!(d4["state"], "failed");
    assert!(
        d4["error"].as_str().unwrap().contains("no-such-server"),
        "{d4}"
    );

    // Through all of it the route never moved and no failed environment is left running.
    let (_, body) = h.get("sick.localhost", "/").await;
    assert!(body.contains("sick v1"), "{body}");
    let envs = h.client.get("/v1/apps/sick/envs").await.unwrap();
    assert_eq!(envs.as_array().unwrap().len(), 1, "{envs}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unhealthy_after_swap_swaps_back_by_itself() {
    let h = Harness::start().await;
    let overrides = FAST.replace("watch = \"2s\"", "watch = \"30s\"");
    let d1 = h.deploy(&h.app("watch", &[], &overrides)).await;
    assert_eq!(d1["state"], "drained");
    // Healthy for its first few requests (the start checks), then 500 on /healthz.
    let d2 = h
        .deploy(&h.app("watch", &[("FAIL_AFTER", "3")], &overrides))
        .await;
    assert_eq!(d2["state"], "drained", "{d2}");
    let id = d2["id"].as_u64().unwrap();
    eventually(Duration::from_secs(20), "automatic swap back", || async {
        let d = h
            .client
            .get(&format!("/v1/deployments/{id}"))
            .await
            .unwrap();
        d["deployment"]["state"] == "rolled_back"
    })
    .await;
    // The store records the swap back first, then the router publishes it.
    eventually(Duration::from_secs(5), "v1 to serve again", || async {
        let (_, body) = h.get("watch.localhost", "/").await;
        body.contains("watch v1")
    })
    .await;
    let history = h.client.get("/v1/apps/watch/events").await.unwrap();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "auto-rollback"),
        "{history}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let h = Harness::start().await;
    let c = &h.client;
    let err = |r: anyhow::Result<Value>| -> String {
        let e = r.expect_err("must fail");
        format!("{e}")
    };
    // Malformed manifest: line and column.
    let msg = err(c
        .post(
            "/v1/apps/shop/deployments",
            &json!({ "image": "sha256:00", "manifest": "name = \"shop\"\ncommand = [\"x\"]\nprot = 80\n" }),
        )
        .await);
    assert!(msg.contains("line 3") && msg.contains("prot"), "{msg}");
    // Invalid app name.
    let msg = err(c
        .post("/v1/apps/Bad_Name/deployments", &json!({ "release": 1 }))
        .await);
    assert!(msg.contains("invalid app name"), "{msg}");
    // Unknown image.
    let manifest = "name = \"shop\"\ncommand = [\"x\"]\n";
    let msg = err(c
        .post(
            "/v1/apps/shop/deployments",
            &json!({ "image": "shop:404", "manifest": manifest }),
        )
        .await);
    assert!(msg.contains("image 'shop:404' not found"), "{msg}");
    // Unknown release, unknown app, unknown environment.
    assert!(err(c
        .post("/v1/apps/shop/deployments", &json!({ "release": 9 }))
        .await)
    .contains("not found"));
    assert!(err(c.post("/v1/apps/nope/rollback", &json!({})).await).contains("not found"));
    assert!(err(c.post("/v1/apps/nope/swap", &json!({ "env": "x" })).await).contains("not found"));
    // A tar with a path escaping the root is refused.
    let mut evil = Vec::new();
    {
        let mut b = tar_header("../escape", 4);
        evil.extend_from_slice(&b);
        evil.extend_from_slice(&[b'x'; 4]);
        evil.extend_from_slice(&[0u8; 508]);
        b.fill(0);
        evil.extend_from_slice(&[0u8; 1024]);
    }
    let msg = err(c.post_bytes("/v1/images", evil).await);
    assert!(msg.contains("escape"), "{msg}");
    // Tags never move.
    let dir = h.app("shop", &[], FAST);
    let mut tar = Vec::new();
    molt_image::ImageStore::write_canonical_tar(&dir, &mut tar).unwrap();
    c.post_bytes("/v1/images?tag=shop%3A1", tar).await.unwrap();
    std::fs::write(dir.join("extra.txt"), "changed").unwrap();
    let mut tar2 = Vec::new();
    molt_image::ImageStore::write_canonical_tar(&dir, &mut tar2).unwrap();
    let msg = err(c.post_bytes("/v1/images?tag=shop%3A1", tar2).await);
    assert!(msg.contains("tags never move"), "{msg}");
    // Nothing above created an app.
    assert_eq!(c.get("/v1/apps").await.unwrap(), json!([]));
    // No token, wrong token: 401 on every protected route; the OpenAPI document is public.
    let anon = molt_cli::Client::new(
        &format!("http://{}", h.running.as_ref().unwrap().api_addr),
        "wrong",
    );
    for op in molt_api::operations() {
        let (method, path) = (op.method, op.path);
        if path == "/v1/health" || path == "/openapi.json" {
            continue;
        }
        let p = path
            .replace("{app}", "shop")
            .replace("{number}", "1")
            .replace("{id}", "1")
            .replace("{reference}", "shop%3A1");
        let r = match method {
            "get" => anon.get(&p).await,
            "delete" => anon.delete(&p).await,
            _ => anon.post(&p, &json!({})).await,
        };
        let msg = err(r);
        assert!(msg.contains("API token"), "{method} {p}: {msg}");
    }
    let doc = anon.get("/openapi.json").await.unwrap();
    for op in molt_api::operations() {
        let (method, path) = (op.method, op.path);
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    h.stop().await;
}

/// A minimal ustar header for hand-made (hostile) archives.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_collects_what_nothing_reaches_and_stops_orphans() {
    let clock = manual_clock();
    let h = Harness::start_with(|cfg| cfg.clock = clock.clone()).await;
    let overrides = FAST.replace("rollback_window = \"15m\"", "rollback_window = \"1s\"");
    let d1 = h.deploy(&h.app("gc", &[], &overrides)).await;
    let d2 = h
        .deploy(&h.app("gc", &[("GREETING", "two")], &overrides))
        .await;
    assert_eq!(d2["state"], "drained");
    let old_env = d1["env"].as_str().unwrap().to_string();
    // A process carrying this molt's marker that the store does not know: an orphan.
    let owner = owner_of(&h.data_dir());
    use std::os::unix::process::CommandExt;
    let mut orphan = std::process::Command::new("sleep")
        .arg("60")
        .process_group(0)
        .env("MOLT_OWNER", &owner)
        .env("MOLT_INSTANCE", "gc-v9-dead-1")
        .spawn()
        .unwrap();
    // Inside the rollback window the old environment is kept.
    let plan = h
        .client
        .post("/v1/gc", &json!({ "dry_run": true }))
        .await
        .unwrap();
    assert!(
        plan["kept"][&old_env]
            .as_str()
            .unwrap()
            .starts_with("rollback window"),
        "{plan}"
    );
    // The rollback window (1 s) passes.
    clock.advance(Duration::from_millis(1300));
    let plan = h
        .client
        .post("/v1/gc", &json!({ "dry_run": true }))
        .await
        .unwrap();
    assert_eq!(plan["envs"], json!([old_env]), "{plan}");
    assert_eq!(plan["orphans"], json!(["gc-v9-dead-1"]), "{plan}");
    // The dry run changed nothing.
    let envs = h.client.get("/v1/apps/gc/envs").await.unwrap();
    assert_eq!(envs.as_array().unwrap().len(), 2);
    let done = h.client.post("/v1/gc", &json!({})).await.unwrap();
    assert_eq!(done["envs"], json!([old_env]), "{done}");
    let envs = h.client.get("/v1/apps/gc/envs").await.unwrap();
    assert_eq!(envs.as_array().unwrap().len(), 1, "{envs}");
    let status = tokio::task::spawn_blocking(move || orphan.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the orphan was stopped by a signal");
    // Only the live environment's two instances remain.
    let running: Vec<_> = processes_of(&owner);
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running
        .iter()
        .all(|(id, _)| id.starts_with(d2["env"].as_str().unwrap())));
    let (_, body) = h.get("gc.localhost", "/").await;
    assert!(body.starts_with("two from gc v2"), "{body}");
    // v1 is no longer warm: rolling back to it is a cold redeploy, and says so.
    let rb = h
        .client
        .post("/v1/apps/gc/rollback", &json!({ "to": 1 }))
        .await
        .unwrap();
    assert_eq!(rb["kind"], "cold", "{rb}");
    let d = wait_deployment(&h.client, rb["deployment"]["id"].as_u64().unwrap()).await;
    assert_eq!(
        (d["state"].as_str(), d["release"].as_u64()),
        (Some("drained"), Some(1)),
        "{d}"
    );
    let (_, body) = h.get("gc.localhost", "/").await;
    assert!(body.starts_with("hello from gc v1"), "{body}");
    h.stop().await;
    assert!(processes_of(&owner).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_instance_is_replaced_not_restarted() {
    let h = Harness::start().await;
    let d = h.deploy(&h.app("phoenix", &[], FAST)).await;
    let env = d["env"].as_str().unwrap().to_string();
    let owner = owner_of(&h.data_dir());
    let before = processes_of(&owner);
    assert_eq!(before.len(), 2);
    let (victim_id, victim_pid) = before[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "a replacement instance",
        || async {
            let now = processes_of(&owner);
            now.len() == 2 && !now.iter().any(|(id, _)| *id == victim_id)
        },
    )
    .await;
    let status = h.client.get("/v1/status?app=phoenix").await.unwrap();
    let instances = status["apps"][0]["envs"][0]["instances"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i["env"] == env.as_str()));
    let history = h.client.get("/v1/apps/phoenix/events").await.unwrap();
    assert!(
        history
            .to_string()
            .contains(&format!("{victim_id} killed by signal 9")),
        "{history}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_deploy_supersedes_an_unfinished_one() {
    let h = Harness::start().await;
    let d1 = h.deploy(&h.app("sup", &[], FAST)).await;
    assert_eq!(d1["state"], "drained");
    // v2 never becomes healthy within its (long) deadline: it is still starting when v3 comes.
    let slow = FAST.replace("start_deadline = \"15s\"", "start_deadline = \"60s\"");
    let d2 = start_deploy(&h.client, &h.app("sup", &[("FAIL_AFTER", "-1")], &slow))
        .await
        .unwrap();
    let id2 = d2["id"].as_u64().unwrap();
    eventually(
        Duration::from_secs(20),
        "v2 to be waiting for health",
        || async {
            let d = h
                .client
                .get(&format!("/v1/deployments/{id2}"))
                .await
                .unwrap();
            d["deployment"]["state"] == "instances_started"
        },
    )
    .await;
    let d3 = h
        .deploy(&h.app("sup", &[("GREETING", "three")], FAST))
        .await;
    assert_eq!(d3["state"], "drained", "{d3}");
    let d2 = h
        .client
        .get(&format!("/v1/deployments/{id2}"))
        .await
        .unwrap();
    assert_eq!(d2["deployment"]["state"], "superseded", "{d2}");
    // Its environment was torn down; v1 stays warm, v3 serves.
    let env2 = d2["deployment"]["env"].as_str().unwrap();
    let envs = h.client.get("/v1/apps/sup/envs").await.unwrap();
    assert!(!envs.to_string().contains(env2), "{envs}");
    assert_eq!(envs.as_array().unwrap().len(), 2, "{envs}");
    let (_, body) = h.get("sup.localhost", "/").await;
    assert!(body.starts_with("three from sup v3"), "{body}");
    h.stop().await;
}

/// A full disk: the upload fails with a clear error (507), nothing is half-stored, and molt keeps
/// working once space is back. Needs root to mount a small tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_gets_a_clear_error_and_loses_nothing() {
    // Root, to mount a small tmpfs.
    if !molt_testkit::needs_root() {
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt.path().to_path_buf());
    let mut cfg = molt_server::ServeConfig::new(mnt.path().join("data"));
    cfg.api_addr = "127.0.0.1:0".parse().unwrap();
    cfg.router_addr = "127.0.0.1:0".parse().unwrap();
    let running = molt_server::start(cfg).await.unwrap();
    let client = molt_cli::Client::new(&format!("http://{}", running.api_addr), &running.token);
    let work = tempfile::tempdir().unwrap();
    let big = make_app(work.path(), "full", &[], FAST);
    let noise: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(big.join("blob.bin"), noise).unwrap();
    let err = start_deploy(&client, &big)
        .await
        .expect_err("no space for the image");
    let msg = format!("{err}");
    assert!(
        msg.contains("No space left") || msg.contains("disk is full"),
        "{msg}"
    );
    assert_eq!(client.get("/v1/images").await.unwrap(), json!([]));
    assert_eq!(client.get("/v1/apps").await.unwrap(), json!([]));
    // Space is back (the failed upload left nothing behind): a small app deploys fine.
    let small = make_app(work.path(), "full", &[], FAST);
    let d = deploy_dir(&client, &small).await;
    assert_eq!(d["state"], "drained", "{d}");
    running
        .shutdown(molt_server::OnExit::StopInstances)
        .await
        .unwrap();
}

/// A fixed `port`: every instance gets its own loopback address, so the blue and green
/// environments of the same app both listen on that port, side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fixed_port_serves_blue_and_green_side_by_side() {
    let h = Harness::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let overrides = format!("port = {port}\n{FAST}");
    let d1 = h.deploy(&h.app("fixed", &[], &overrides)).await;
    assert_eq!(d1["state"], "drained", "{d1}");
    let d2 = h
        .deploy(&h.app("fixed", &[("GREETING", "two")], &overrides))
        .await;
    assert_eq!(d2["state"], "drained", "{d2}");
    let status = h.client.get("/v1/status?app=fixed").await.unwrap();
    let mut hosts = BTreeSet::new();
    for env in status["apps"][0]["envs"].as_array().unwrap() {
        for i in env["instances"].as_array().unwrap() {
            assert_eq!(i["port"], port, "{i}");
            assert_eq!(i["state"], "healthy", "{i}");
            hosts.insert(i["host"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        hosts.len(),
        4,
        "one loopback address per instance: {hosts:?}"
    );
    let (_, body) = h.get("fixed.localhost", "/").await;
    assert!(body.starts_with("two from fixed v2"), "{body}");
    let logs = h.client.get("/v1/apps/fixed/logs").await.unwrap();
    assert!(logs.to_string().contains(&format!(":{port}")), "{logs}");
    let rb = h
        .client
        .post("/v1/apps/fixed/rollback", &json!({}))
        .await
        .unwrap();
    assert_eq!(rb["kind"], "warm");
    let (_, body) = h.get("fixed.localhost", "/").await;
    assert!(body.starts_with("hello from fixed v1"), "{body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_runs_by_itself() {
    let h = Harness::start_with(|cfg| cfg.gc_interval = Duration::from_millis(300)).await;
    let overrides = FAST.replace("rollback_window = \"15m\"", "rollback_window = \"1s\"");
    let d1 = h.deploy(&h.app("auto", &[], &overrides)).await;
    let d2 = h
        .deploy(&h.app("auto", &[("GREETING", "two")], &overrides))
        .await;
    assert_eq!(d2["state"], "drained", "{d2}");
    let old_env = d1["env"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(15),
        "the periodic GC to retire v1",
        || async {
            let envs = h.client.get("/v1/apps/auto/envs").await.unwrap();
            let history = h.client.get("/v1/apps/auto/events").await.unwrap();
            let retired = format!("{old_env} retired: garbage-collected");
            !envs.to_string().contains(&old_env) && history.to_string().contains(&retired)
        },
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_mode_answers_503_and_keeps_previews() {
    let h = Harness::start().await;
    let d = h.deploy(&h.app("maint", &[], FAST)).await;
    let env = d["env"].as_str().unwrap().to_string();
    let on = json!({ "enabled": true, "message": "back at noon", "retry_after": 30 });
    let app = h
        .client
        .post("/v1/apps/maint/maintenance", &on)
        .await
        .unwrap();
    assert_eq!(app["maintenance"]["retry_after_secs"], 30, "{app}");
    let (status, body) = h.get("maint.localhost", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("back at noon"), "{body}");
    let (status, body) = h.get(&format!("{env}.localhost"), "/").await;
    assert_eq!(status, 200, "previews keep working: {body}");
    let off = json!({ "enabled": false });
    h.client
        .post("/v1/apps/maint/maintenance", &off)
        .await
        .unwrap();
    let (status, _) = h.get("maint.localhost", "/").await;
    assert_eq!(status, 200);
    h.stop().await;
}

/// An instance whose port another program took before it listened (molt cannot reserve a
/// port for a process that does not exist yet) is replaced on another port, and the
/// deployment goes on; here the app's first start fails exactly as Python's would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_lost_its_port_is_replaced_on_another() {
    let h = Harness::start().await;
    let dir = h.app("portrace", &[], "instances = 1\n[health]\npath = \"/healthz\"\ninterval = \"100ms\"\nhealthy_threshold = 1\nstart_deadline = \"15s\"\n");
    let marker = h.tmp.path().join("first-start-done");
    std::fs::write(
        dir.join("wrap.py"),
        format!(
            "import os, sys\n\
             if not os.path.exists({marker:?}):\n    \
                 open({marker:?}, 'w').close()\n    \
                 sys.stderr.write('OSError: [Errno 98] Address already in use\\n')\n    \
                 sys.exit(1)\n\
             os.execvp('python3', ['python3', 'app.py'])\n",
            marker = marker.to_str().unwrap()
        ),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(dir.join("molt.toml")).unwrap();
    std::fs::write(
        dir.join("molt.toml"),
        manifest.replace(
            r#"command = ["python3", "app.py"]"#,
            r#"command = ["python3", "wrap.py"]"#,
        ),
    )
    .unwrap();
    let d = h.deploy(&dir).await;
    assert_eq!(d["state"], "drained", "{d}");
    assert!(marker.exists(), "the first start did fail");
    let (status, body) = h.get("portrace.localhost", "/").await;
    assert_eq!(
        (status, body.starts_with("hello from portrace")),
        (200, true),
        "{body}"
    );
    let app = h.client.get("/v1/apps/portrace").await.unwrap();
    let stopped: Vec<&serde_json::Value> = app["envs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["instances"].as_array().unwrap())
        .filter(|i| i["state"] == "stopped")
        .collect();
    assert!(stopped.len() <= 1, "{app}");

    // A failure that is not about the port still fails the deployment, with the log.
    let broken = h.app(
        "broken",
        &[],
        "instances = 1\n[health]\npath = \"/healthz\"\nstart_deadline = \"15s\"\n",
    );
    std::fs::write(
        broken.join("app.py"),
        "import sys\nsys.stderr.write('no such module\\n')\nsys.exit(1)\n",
    )
    .unwrap();
    let d = h.deploy(&broken).await;
    assert_eq!(d["state"], "failed", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("no such module"),
        "{d}"
    );
    h.stop().await;
}
