//! Access against a real `molt serve`: every route × every role, table-driven from the
//! OpenAPI document; revoked, expired and app-scoped tokens; the audit trail; failed
//! authentications limited per address; the `molt tokens` and `molt audit` commands.

mod support;

use std::time::Duration;

use molt_cli::client::ApiError;
use molt_cli::Client;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status of a call's answer (200 for any success).
async fn status_of(result: anyhow::Result<Value>) -> (u16, String) {
    match result {
        Ok(_) => (200, String::new()),
        Err(e) => match e.downcast_ref::<ApiError>() {
            Some(api) => (api.status.as_u16(), api.message.clone()),
            None => (0, format!("{e:#}")),
        },
    }
}

/// Calls `method path` with a harmless body: a route's answer beyond access does not matter.
async fn call(client: &Client, method: &str, path: &str) -> (u16, String) {
    let p = path
        .replace("{app}", "shop")
        .replace("{number}", "1")
        .replace("{id}", "1")
        .replace("{reference}", "shop%3A1")
        .replace("{name}", "nobody");
    status_of(match method {
        "get" => client.get(&p).await,
        "delete" => client.delete(&p).await,
        _ => client.post(&p, &json!({})).await,
    })
    .await
}

async fn make_token(h: &Harness, name: &str, role: &str, extra: Value) -> Client {
    let mut body = json!({ "name": name, "role": role });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let created = h.client.post("/v1/tokens", &body).await.unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 64, "{created}");
    Client::new(h.client.base(), secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_every_role() {
    let h = Harness::start().await;
    let doc = h.client.get("/openapi.json").await.unwrap();
    let mut clients = vec![("admin", h.client.clone())];
    for role in ["read", "deploy", "router"] {
        clients.push((
            role,
            make_token(&h, &format!("t-{role}"), role, json!({})).await,
        ));
    }
    let anonymous = Client::new(h.client.base(), "");
    let mut probes = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            let Some(least) = op["x-molt-role"].as_str() else {
                assert_eq!(
                    op["security"],
                    json!([]),
                    "{id} has neither a role nor is public"
                );
                continue;
            };
            let (status, message) = call(&anonymous, method, path).await;
            assert_eq!(status, 401, "{id} without a token: {message}");
            for (role, client) in &clients {
                let allowed = match least {
                    "read" => *role != "router",
                    "deploy" => matches!(*role, "deploy" | "admin"),
                    "admin" => *role == "admin",
                    "router" => matches!(*role, "router" | "admin"),
                    other => panic!("{id}: unknown role {other}"),
                };
                let (status, message) = call(client, method, path).await;
                probes += 1;
                if allowed {
                    assert!(
                        status != 401 && status != 403,
                        "{id} as {role}: {status} {message}"
                    );
                } else {
                    assert_eq!(status, 403, "{id} as {role}: {message}");
                    assert!(
                        message.contains(&format!("role {least}")),
                        "{id}: {message}"
                    );
                }
            }
        }
    }
    assert!(probes > 150, "{probes} probes");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_and_scoped_tokens_and_the_audit_trail() {
    let clock = manual_clock();
    let h = Harness::start_with(|cfg| cfg.clock = clock.clone()).await;
    let ci = make_token(&h, "ci", "deploy", json!({ "apps": ["shop"] })).await;
    // Its own app: past access (the app does not exist); another app, or the whole server: 403.
    let (status, _) = status_of(ci.post("/v1/apps/shop/swap", &json!({ "env": "x" })).await).await;
    assert_eq!(status, 404);
    let (status, message) =
        status_of(ci.post("/v1/apps/blog/swap", &json!({ "env": "x" })).await).await;
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("limited to apps shop"), "{message}");
    let (status, _) = status_of(ci.get("/v1/status").await).await;
    assert_eq!(status, 403);
    // A live name is not made twice; the list never shows a secret or a hash.
    let (status, _) = status_of(
        h.client
            .post("/v1/tokens", &json!({ "name": "ci", "role": "read" }))
            .await,
    )
    .await;
    assert_eq!(status, 409);
    let list = h.client.get("/v1/tokens").await.unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "ci", "router"]);
    assert!(!list
        .to_string()
        .contains(&h.running.as_ref().unwrap().token));
    assert!(!list.to_string().contains("hash"));
    // Revoked: 401 at once, naming the token, never its secret.
    h.client.delete("/v1/tokens/ci").await.unwrap();
    let (status, message) = status_of(ci.get("/v1/apps").await).await;
    assert_eq!(status, 401);
    assert!(message.contains("'ci' was revoked"), "{message}");
    // An admin token cannot revoke itself.
    let (status, _) = status_of(h.client.delete("/v1/tokens/admin").await).await;
    assert_eq!(status, 409);
    // Expired: by the controller's clock.
    let short = make_token(&h, "short", "read", json!({ "expires_in_secs": 60 })).await;
    short.get("/v1/apps").await.unwrap();
    clock.advance(Duration::from_secs(61));
    let (status, message) = status_of(short.get("/v1/apps").await).await;
    assert_eq!(status, 401);
    assert!(message.contains("'short' has expired"), "{message}");
    // Malformed or unknown: 401, the secret never repeated.
    let wrong = Client::new(h.client.base(), "not-a-token-7f3a9");
    let (status, message) = status_of(wrong.get("/v1/apps").await).await;
    assert_eq!(status, 401);
    assert!(!message.contains("7f3a9"), "{message}");
    // The audit trail: every mutating call with actor, role, source, action, target, result.
    let audit = h.client.get("/v1/audit").await.unwrap();
    let rows: Vec<(String, String, String, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["source"], "127.0.0.1", "{e}");
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expect = |actor: &str, action: &str, target: &str, status: u64| {
        (
            actor.to_owned(),
            action.to_owned(),
            target.to_owned(),
            status,
        )
    };
    assert_eq!(
        rows,
        [
            expect("admin", "createToken", "/v1/tokens", 201),
            expect("ci", "swap", "/v1/apps/shop/swap", 404),
            expect("ci", "swap", "/v1/apps/blog/swap", 403),
            expect("admin", "createToken", "/v1/tokens", 409),
            expect("admin", "revokeToken", "/v1/tokens/ci", 200),
            expect("admin", "revokeToken", "/v1/tokens/admin", 409),
            expect("admin", "createToken", "/v1/tokens", 201),
        ]
    );
    let shop = h.client.get("/v1/audit?app=shop").await.unwrap();
    assert_eq!(shop.as_array().unwrap().len(), 1, "{shop}");
    // The CLI: a secret printed once, then names only.
    let data = h.data_dir();
    let o = molt_command(
        &data,
        &[
            "tokens",
            "create",
            "ops",
            "--role",
            "admin",
            "--expires",
            "30d",
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let secret = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert_eq!(secret.len(), 64, "{}", text(&o));
    Client::new(h.client.base(), &secret)
        .get("/v1/tokens")
        .await
        .unwrap();
    let o = molt_command(&data, &["tokens", "list"]).output().unwrap();
    let listed = text(&o);
    assert!(
        o.status.success() && listed.contains("ops") && listed.contains("in 30d"),
        "{listed}"
    );
    assert!(!listed.contains(&secret));
    let o = molt_command(&data, &["tokens", "revoke", "ops"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = molt_command(&data, &["audit", "--json"]).output().unwrap();
    let audit: Value = serde_json::from_slice(&o.stdout).unwrap();
    let last = &audit.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["action"], &last["actor"]),
        (&json!("revokeToken"), &json!("admin"))
    );
    let o = molt_command(&data, &["tokens", "create", "x", "--role", "root"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("unknown role 'root'"), "{}", text(&o));
    h.stop().await;
}

/// One raw request: its status line's code and its `Retry-After`.
async fn raw_get(addr: std::net::SocketAddr, auth: &str) -> (u16, Option<String>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/apps HTTP/1.1\r\nHost: molt\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let retry = answer.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after: ")
            .map(str::to_owned)
    });
    (status, retry, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address() {
    let h = Harness::start().await;
    let addr = h.running.as_ref().unwrap().api_addr;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let (status, retry, answer) = raw_get(addr, "Bearer wrong-guess-91c2").await;
        assert!(!answer.contains("91c2"), "{answer}");
        seen.push(status);
        if status == 429 {
            let secs: u64 = retry.expect("Retry-After").trim().parse().unwrap();
            assert!(secs >= 1, "{secs}");
            break;
        }
        assert_eq!(status, 401, "{answer}");
    }
    assert_eq!(seen.last(), Some(&429), "{seen:?}");
    assert!(seen.len() > 10, "a burst is allowed first: {seen:?}");
    // While limited, even a right token from this address waits; malformed headers too.
    let token = h.running.as_ref().unwrap().token.clone();
    assert_eq!(raw_get(addr, &format!("Bearer {token}")).await.0, 429);
    assert_eq!(raw_get(addr, "Basic abc").await.0, 429);
    h.stop().await;
}
