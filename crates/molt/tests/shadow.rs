//! Shadow traffic and preview hostnames end to end: a real `molt serve`, real instances.

mod support;

use serde_json::{json, Value};
use support::*;

/// The status and message of a failed API call.
fn refusal(result: anyhow::Result<Value>) -> (u16, String) {
    let error = result.expect_err("the API must refuse this");
    let api = error
        .downcast_ref::<molt_cli::client::ApiError>()
        .unwrap_or_else(|| panic!("not an API error: {error:#}"));
    (api.status.as_u16(), api.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_mirrors_to_a_kept_environment_and_previews_answer_on_the_domain() {
    let h = Harness::start_with(|cfg| {
        cfg.preview_domain = Some("preview.test".parse().expect("valid domain"));
    })
    .await;
    let dir = h.app("shop", &[], FAST);
    let v1 = h.deploy(&dir).await;
    let v2 = h
        .client
        .post(
            "/v1/apps/shop/config",
            &json!({ "set": { "GREETING": "bonjour" } }),
        )
        .await
        .expect("config set");
    let v2 = wait_deployment(&h.client, v2["id"].as_u64().expect("id")).await;
    assert_eq!(v2["state"], "drained", "{v2}");
    let (old, live) = (
        v1["env"].as_str().expect("env").to_owned(),
        v2["env"].as_str().expect("env").to_owned(),
    );

    // Preview hostnames under the domain reach each ready environment directly.
    let (status, body) = h.get(&format!("{old}.shop.preview.test"), "/").await;
    assert_eq!(
        (status, body.starts_with("hello from shop v1")),
        (200, true),
        "{body}"
    );
    let (_, body) = h.get(&format!("{live}.shop.preview.test:8080"), "/").await;
    assert!(body.starts_with("bonjour from shop v2"), "{body}");
    let (status, _) = h.get(&format!("{old}.other.preview.test"), "/").await;
    assert_eq!(status, 404);

    // Bad input is refused and changes nothing.
    let c = &h.client;
    let (status, msg) = refusal(
        c.post("/v1/apps/shop/shadow", &json!({ "env": live }))
            .await,
    );
    assert_eq!(status, 409, "{msg}");
    assert!(msg.contains("already serves"), "{msg}");
    let (status, msg) = refusal(
        c.post("/v1/apps/shop/shadow", &json!({ "env": old, "share": 0 }))
            .await,
    );
    assert_eq!(status, 400, "{msg}");
    let (status, _) = refusal(
        c.post("/v1/apps/shop/shadow", &json!({ "env": "shop-v9-nope" }))
            .await,
    );
    assert_eq!(status, 404);
    let report = c.get("/v1/apps/shop/shadow").await.expect("report");
    assert_eq!(report["mode"], Value::Null, "{report}");

    // Half of the GETs are mirrored to the kept v1 environment; users only see v2.
    let set = c
        .post("/v1/apps/shop/shadow", &json!({ "env": old, "share": 50 }))
        .await
        .expect("shadow on");
    assert_eq!(set["shadow"]["share_percent"], 50, "{set}");
    let mut conn = KeepAlive::connect(h.router).await;
    for _ in 0..40 {
        let (status, body) = conn.get("shop.localhost", "/").await.expect("GET");
        assert_eq!(status, 200);
        assert!(body.starts_with("bonjour from shop v2"), "{body}");
    }
    eventually(
        std::time::Duration::from_secs(10),
        "20 mirrored requests",
        || async {
            let report = c.get("/v1/apps/shop/shadow").await.expect("report");
            report["shadow"]["requests"] == 20
        },
    )
    .await;
    let report = c.get("/v1/apps/shop/shadow").await.expect("report");
    assert_eq!(report["shadow"]["env"], old.as_str(), "{report}");
    assert_eq!(report["shadow"]["classes"]["2xx"], 20, "{report}");
    assert_eq!(report["live"]["env"], live.as_str(), "{report}");
    assert_eq!(report["live"]["classes"]["2xx"], 41, "{report}");
    let metrics = c.get("/metrics").await.expect("metrics");
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains(&format!(
            "molt_router_request_duration_seconds_count{{app=\"shop\",env=\"{old}\",routed=\"false\",traffic=\"shadow\"}} 20"
        )),
        "{metrics}"
    );

    // Off: nothing more is mirrored.
    let off = c
        .post("/v1/apps/shop/shadow", &json!({ "env": null }))
        .await
        .expect("shadow off");
    assert_eq!(off["shadow"], Value::Null, "{off}");
    for _ in 0..10 {
        conn.get("shop.localhost", "/").await.expect("GET");
    }
    let report = c.get("/v1/apps/shop/shadow").await.expect("report");
    assert_eq!(report["shadow"], Value::Null, "{report}");
    h.stop().await;
}

/// Sends a POST with a `len`-byte body through the router on a fresh connection; returns the
/// status code.
async fn post_status(router: std::net::SocketAddr, host: &str, len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(router)
        .await
        .expect("connect");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    // The router may answer (and close) before taking the body: a failed write is fine.
    let _ = stream.write_all(&vec![b'x'; len]).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("the router answers");
    let text = String::from_utf8_lossy(&response);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apps_router_limits_apply_to_its_hostnames_and_previews() {
    let h = Harness::start().await;
    let limited = h.app(
        "shop",
        &[],
        &format!("{FAST}[router]\nmax_body = \"1KiB\"\nrequest_timeout = \"20s\"\n"),
    );
    let d = h.deploy(&limited).await;
    assert_eq!(d["state"], "drained", "{d}");
    let env = d["env"].as_str().expect("env");
    // The example app has no POST handler: a body it gets is answered 501 by it.
    assert_eq!(post_status(h.router, "shop.localhost", 1024).await, 501);
    assert_eq!(post_status(h.router, "shop.localhost", 1025).await, 413);
    assert_eq!(
        post_status(h.router, &format!("{env}.localhost"), 1025).await,
        413
    );
    // Another app without [router] keeps the server's limit.
    let open = h.app("blog", &[], FAST);
    h.deploy(&open).await;
    assert_eq!(post_status(h.router, "blog.localhost", 4096).await, 501);
    // A bad [router] value is refused with its line, and nothing changes.
    let bad = h.app(
        "shop",
        &[],
        &format!("{FAST}[router]\nmax_body = \"lots\"\n"),
    );
    let err = start_deploy(&h.client, &bad)
        .await
        .expect_err("a bad size is refused");
    assert!(format!("{err}").contains("not a size"), "{err}");
    assert_eq!(post_status(h.router, "shop.localhost", 1025).await, 413);
    h.stop().await;
}

/// GETs `n` times on one keep-alive connection; every answer must come from `expect` (the
/// live release): users never see the shadow's answers.
async fn users_see(router: std::net::SocketAddr, host: &str, n: usize, expect: &str) {
    let mut conn = KeepAlive::connect(router).await;
    for _ in 0..n {
        let (status, body) = conn.get(host, "/").await.expect("GET");
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with(expect), "{body}");
    }
}

/// Waits until the app's shadow report counts `n` mirrored requests (mirrors finish in the
/// background), and no more.
async fn mirrored(c: &molt_cli::Client, app: &str, n: u64) {
    let path = format!("/v1/apps/{app}/shadow");
    eventually(
        std::time::Duration::from_secs(10),
        &format!("{n} mirrored requests"),
        || async {
            let report = c.get(&path).await.expect("report");
            report["shadow"]["requests"].as_u64().unwrap_or(0) >= n
        },
    )
    .await;
    let report = c.get(&path).await.expect("report");
    assert_eq!(report["shadow"]["requests"], n, "{report}");
}

/// The states a deployment's journal went through, in order.
async fn journal_states(c: &molt_cli::Client, id: u64) -> Vec<String> {
    let v = c
        .get(&format!("/v1/deployments/{id}"))
        .await
        .expect("deployment");
    v["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .map(|j| j["state"].as_str().expect("state").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_deploy_mirrors_to_its_env_without_moving_the_route_until_promoted() {
    let h = Harness::start().await;
    let c = &h.client;
    let v1 = h.deploy(&h.app("shop", &[], FAST)).await;
    let live = v1["env"].as_str().expect("env").to_owned();
    let next = h.app("shop", &[("GREETING", "bonjour")], FAST);
    let started = start_deploy_with(c, &next, json!({ "shadow": 50 }))
        .await
        .expect("shadow deploy accepted");
    assert_eq!(started["shadow_share"], 50, "{started}");
    let id = started["id"].as_u64().expect("id");
    let d = wait_deployment(c, id).await;
    assert_eq!(d["state"], "shadowing", "{d}");
    let shadow_env = d["env"].as_str().expect("env").to_owned();

    // The route did not move; the new environment is the app's shadow.
    let app = c.get("/v1/apps/shop").await.expect("app");
    assert_eq!(app["app"]["routed_env"], live.as_str(), "{app}");
    assert_eq!(app["app"]["shadow"]["env"], shadow_env.as_str(), "{app}");
    assert_eq!(app["app"]["shadow"]["share_percent"], 50, "{app}");
    users_see(h.router, "shop.localhost", 40, "hello from shop v1").await;
    mirrored(c, "shop", 20).await;
    let report = c.get("/v1/apps/shop/shadow").await.expect("report");
    assert_eq!(report["shadow"]["env"], shadow_env.as_str(), "{report}");
    assert_eq!(report["shadow"]["classes"]["2xx"], 20, "{report}");

    // While it shadows, neither a manual shadow change nor a plain swap to its environment
    // is taken (the swap would supersede it and retire the very environment).
    let (status, msg) = refusal(
        c.post("/v1/apps/shop/shadow", &json!({ "env": null }))
            .await,
    );
    assert_eq!(
        (status, msg.contains("molt promote shop")),
        (409, true),
        "{msg}"
    );
    let (status, msg) = refusal(
        c.post("/v1/apps/shop/swap", &json!({ "env": shadow_env }))
            .await,
    );
    assert_eq!(
        (status, msg.contains("molt promote shop")),
        (409, true),
        "{msg}"
    );
    assert_eq!(
        wait_deployment(c, id).await["state"],
        "shadowing",
        "refusals change nothing"
    );

    // Promote: the comparison of the shadow phase is recorded, then it swaps as usual.
    let promoted = c
        .post("/v1/apps/shop/promote", &json!({}))
        .await
        .expect("promote");
    assert_eq!(promoted["state"], "promoted", "{promoted}");
    let cmp = &promoted["shadow"];
    assert_eq!(cmp["share_percent"], 50, "{cmp}");
    assert_eq!(cmp["live"]["env"], live.as_str(), "{cmp}");
    assert_eq!(cmp["live"]["requests"], 40, "{cmp}");
    assert_eq!(cmp["live"]["classes"]["2xx"], 40, "{cmp}");
    assert_eq!(cmp["shadow"]["env"], shadow_env.as_str(), "{cmp}");
    assert_eq!(cmp["shadow"]["requests"], 20, "{cmp}");
    assert_eq!(cmp["shadow"]["classes"]["2xx"], 20, "{cmp}");
    assert!(cmp["shadow"]["p50_ms"].is_number(), "{cmp}");
    assert!(cmp["live"]["p99_ms"].is_number(), "{cmp}");
    assert!(
        cmp["until_ms"].as_u64() >= cmp["since_ms"].as_u64(),
        "{cmp}"
    );
    let done = wait_deployment(c, id).await;
    assert_eq!(done["state"], "drained", "{done}");
    assert_eq!(done["figures"]["failed"], 0, "{done}");
    assert_eq!(done["shadow"], *cmp, "the record keeps the comparison");
    assert_eq!(
        journal_states(c, id).await,
        [
            "pending",
            "env_created",
            "instances_started",
            "healthy",
            "shadowing",
            "promoted",
            "swapped",
            "drained"
        ]
    );
    users_see(h.router, "shop.localhost", 5, "bonjour from shop v2").await;
    let app = c.get("/v1/apps/shop").await.expect("app");
    assert_eq!(app["app"]["routed_env"], shadow_env.as_str(), "{app}");
    assert_eq!(
        app["app"]["shadow"],
        Value::Null,
        "mirroring stopped: {app}"
    );
    // What shows deployments shows the comparison.
    let listed = c.get("/v1/apps/shop/deployments").await.expect("list");
    assert_eq!(listed[0]["shadow"], *cmp, "{listed}");
    let status = c.get("/v1/status?app=shop").await.expect("status");
    assert_eq!(status["apps"][0]["last_deployment"]["shadow"], *cmp);
    // Nothing is left to promote.
    let (status, msg) = refusal(c.post("/v1/apps/shop/promote", &json!({})).await);
    assert_eq!(
        (status, msg.contains("no deployment")),
        (409, true),
        "{msg}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_or_superseded_shadow_deploy_retires_its_env_and_keeps_its_comparison() {
    let h = Harness::start().await;
    let c = &h.client;
    let v1 = h.deploy(&h.app("shop", &[], FAST)).await;
    let live = v1["env"].as_str().expect("env").to_owned();

    // Bad input is refused and records nothing.
    let next = h.app("shop", &[("GREETING", "bonjour")], FAST);
    let err = start_deploy_with(c, &next, json!({ "shadow": 0 }))
        .await
        .expect_err("0 % is refused");
    assert!(format!("{err}").contains("1 to 100"), "{err}");
    let blog = h.app("blog", &[], FAST);
    let err = start_deploy_with(c, &blog, json!({ "shadow": 10 }))
        .await
        .expect_err("nothing to mirror from");
    assert!(format!("{err}").contains("nothing serves blog"), "{err}");
    let (status, _) = refusal(c.post("/v1/apps/nope/abandon", &json!({})).await);
    assert_eq!(status, 404);
    let listed = c.get("/v1/apps/shop/deployments").await.expect("list");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // Abandon: the new environment is retired, the route never moved.
    let id = start_deploy_with(c, &next, json!({ "shadow": 100 }))
        .await
        .expect("accepted")["id"]
        .as_u64()
        .expect("id");
    let d = wait_deployment(c, id).await;
    assert_eq!(d["state"], "shadowing", "{d}");
    let abandoned_env = d["env"].as_str().expect("env").to_owned();
    users_see(h.router, "shop.localhost", 10, "hello from shop v1").await;
    mirrored(c, "shop", 10).await;
    let abandoned = c
        .post("/v1/apps/shop/abandon", &json!({}))
        .await
        .expect("abandon");
    assert_eq!(abandoned["state"], "abandoned", "{abandoned}");
    assert_eq!(abandoned["shadow"]["shadow"]["requests"], 10, "{abandoned}");
    assert_eq!(abandoned["shadow"]["live"]["requests"], 10, "{abandoned}");
    assert_eq!(abandoned["shadow"]["share_percent"], 100, "{abandoned}");
    // Judged as a canary interval: 10 copies are fewer than the default min_requests (20).
    let verdict = &abandoned["shadow"]["verdict"];
    assert_eq!(verdict["verdict"], "inconclusive", "{abandoned}");
    assert_eq!(verdict["canary"]["requests"], 10, "{abandoned}");
    let envs = c.get("/v1/apps/shop/envs?all=true").await.expect("envs");
    let state_of = |envs: &Value, id: &str| {
        envs.as_array()
            .expect("envs")
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["state"].clone())
    };
    assert_eq!(state_of(&envs, &abandoned_env), Some(json!("retired")));
    let owner = owner_of(&h.data_dir());
    let running: Vec<String> = processes_of(&owner).into_iter().map(|(i, _)| i).collect();
    assert!(
        running.iter().all(|i| i.starts_with(&format!("{live}-"))),
        "only v1's instances run: {running:?}"
    );
    users_see(h.router, "shop.localhost", 5, "hello from shop v1").await;
    let (status, _) = refusal(c.post("/v1/apps/shop/abandon", &json!({})).await);
    assert_eq!(status, 409);

    // A newer deploy supersedes a shadowing one: its environment is retired, the comparison
    // is recorded, and the newer one swaps as usual.
    let id = start_deploy_with(c, &next, json!({ "shadow": 100 }))
        .await
        .expect("accepted")["id"]
        .as_u64()
        .expect("id");
    let d = wait_deployment(c, id).await;
    assert_eq!(d["state"], "shadowing", "{d}");
    let superseded_env = d["env"].as_str().expect("env").to_owned();
    users_see(h.router, "shop.localhost", 3, "hello from shop v1").await;
    mirrored(c, "shop", 3).await;
    let newer = h.deploy(&h.app("shop", &[("GREETING", "hej")], FAST)).await;
    assert_eq!(newer["state"], "drained", "{newer}");
    let old = c
        .get(&format!("/v1/deployments/{id}"))
        .await
        .expect("deployment");
    assert_eq!(old["deployment"]["state"], "superseded", "{old}");
    assert_eq!(
        old["deployment"]["shadow"]["shadow"]["requests"], 3,
        "{old}"
    );
    // Live traffic of v1 before this shadow phase (15 requests) is not counted.
    assert_eq!(old["deployment"]["shadow"]["live"]["requests"], 3, "{old}");
    let envs = c.get("/v1/apps/shop/envs?all=true").await.expect("envs");
    assert_eq!(state_of(&envs, &superseded_env), Some(json!("retired")));
    users_see(h.router, "shop.localhost", 3, "hej from shop v").await;
    let app = c.get("/v1/apps/shop").await.expect("app");
    assert_eq!(app["app"]["shadow"], Value::Null, "{app}");
    h.stop().await;
}
