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
