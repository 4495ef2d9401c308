//! Traffic shaping through a real router: a weighted (canary) split that keeps each client on
//! one environment, sticky cookies, and pinning an environment with `X-Molt-Env`.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use molt_router::{Backend, RouteTable, RouterConfig, Upstream};
use support::*;
use tokio::net::TcpStream;

/// One request on a fresh connection: (body, Set-Cookie header).
async fn get(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> (String, Option<String>) {
    let stream = within(TcpStream::connect(addr)).await.expect("connect");
    let (mut sender, connection) = within(
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)),
    )
    .await
    .expect("handshake");
    tokio::spawn(connection);
    let mut request = Request::get("/").header("host", "shop.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = within(sender.send_request(request.body(Empty::new()).unwrap()))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    let body = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (String::from_utf8_lossy(&body).into_owned(), cookie)
}

async fn canary_router(weights: (u32, u32)) -> Harness {
    let stable = upstream(Reply::Name("stable")).await;
    let canary = upstream(Reply::Name("canary")).await;
    let h = Harness::start(RouterConfig::default()).await;
    let backend = |env: &str, addr| {
        Backend::new(
            env,
            vec![Upstream {
                instance: format!("{env}-1"),
                addr,
            }],
        )
    };
    let mut table = RouteTable::new();
    table.insert_split(
        "shop.test",
        vec![
            (backend("stable", stable), weights.0),
            (backend("canary", canary), weights.1),
        ],
    );
    h.router.publish(table).await;
    h
}

#[tokio::test]
async fn a_ten_percent_canary_gets_about_ten_percent_of_clients_and_keeps_them() {
    let h = canary_router((90, 10)).await;
    let clients = 1_000;
    let mut on_canary = 0;
    let mut cookies = HashMap::new();
    for i in 0..clients {
        let agent = format!("client-{i}");
        let (body, cookie) = get(h.addr, &[("user-agent", &agent)]).await;
        let cookie = cookie.expect("a split hands out its sticky cookie");
        assert!(cookie.starts_with("molt-bucket="), "{cookie}");
        if body == "canary" {
            on_canary += 1;
        }
        cookies.insert(i, (body, cookie.split(';').next().unwrap().to_string()));
    }
    // Binomial(1000, 0.1): sd ≈ 9.5; allow 5 sd.
    assert!(
        (53..=147).contains(&on_canary),
        "{on_canary} of {clients} on the canary"
    );
    // Each client stays where it was: by its identity, and by its cookie alone (another
    // agent, same cookie).
    for i in (0..clients).step_by(50) {
        let (first, cookie) = &cookies[&i];
        let agent = format!("client-{i}");
        let (again, set) = get(h.addr, &[("user-agent", &agent)]).await;
        assert_eq!(&again, first);
        assert!(set.is_some());
        let (by_cookie, set) = get(h.addr, &[("user-agent", "other"), ("cookie", cookie)]).await;
        assert_eq!(&by_cookie, first, "cookie {cookie}");
        assert!(
            set.is_none(),
            "a client with a valid cookie is not given another"
        );
    }
    let stats = h.router.env_stats("canary");
    assert_eq!(stats.failed, 0);
    assert!(stats.accepted > 0);
}

#[tokio::test]
async fn x_molt_env_pins_an_environment_of_the_host() {
    let h = canary_router((100, 0)).await;
    for _ in 0..5 {
        assert_eq!(get(h.addr, &[]).await.0, "stable");
        let (body, cookie) = get(h.addr, &[("x-molt-env", "canary")]).await;
        assert_eq!(body, "canary");
        assert!(cookie.is_none(), "a pinned request is not bucketed");
    }
    // An environment the host does not route to cannot be pinned.
    assert_eq!(
        get(h.addr, &[("x-molt-env", "elsewhere")]).await.0,
        "stable"
    );
}

#[tokio::test]
async fn a_plain_route_sets_no_cookie() {
    let a = upstream(Reply::Name("only")).await;
    let h = Harness::start(RouterConfig::default()).await;
    h.router
        .publish(table(&[("shop.test", "only", &[a])]))
        .await;
    let (body, cookie) = get(h.addr, &[]).await;
    assert_eq!((body.as_str(), cookie), ("only", None));
}
