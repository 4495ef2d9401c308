//! Per-backend limits (an app's `[router]` table): body size and response-head timeout,
//! tighter than the router's own.

mod support;

use std::time::Duration;

use hyper::StatusCode;
use molt_router::{Backend, RouteLimits, RouteTable, RouterConfig, Upstream};
use support::{read, silent_upstream, upstream, Harness, Reply};

fn backend(env: &str, addr: std::net::SocketAddr, limits: RouteLimits) -> Backend {
    Backend {
        limits,
        ..Backend::new(
            env,
            vec![Upstream {
                instance: format!("{env}-0"),
                addr,
            }],
        )
    }
}

#[tokio::test]
async fn a_backend_limits_its_own_bodies_and_waits() {
    let small = upstream(Reply::Name("small")).await;
    let big = upstream(Reply::Name("big")).await;
    let hanging = silent_upstream().await;
    let harness = Harness::start(RouterConfig::default()).await;
    let mut table = RouteTable::new();
    let tight = RouteLimits {
        max_body_bytes: Some(10),
        upstream_timeout: None,
    };
    table.insert("small.test", backend("small", small, tight));
    table.insert("big.test", backend("big", big, RouteLimits::default()));
    let impatient = RouteLimits {
        max_body_bytes: None,
        upstream_timeout: Some(Duration::from_millis(100)),
    };
    table.insert("slow.test", backend("slow", hanging, impatient));
    harness.router.publish(table).await;

    let post = |host: &'static str, body: &'static str| {
        let addr = harness.addr;
        async move {
            let mut client = support::Client::connect(addr).await;
            let response = client
                .send("POST", Some(host), "/", body)
                .await
                .expect("response");
            read(response).await
        }
    };
    assert_eq!(
        post("small.test", "0123456789").await,
        (StatusCode::OK, "small".to_owned())
    );
    let (status, body) = post("small.test", "0123456789a").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(
        post("big.test", "0123456789a").await,
        (StatusCode::OK, "big".to_owned())
    );
    // The router's default wait is 60 s; this backend's is 100 ms (the client's step bound
    // is 5 s).
    let (status, _) = support::Client::connect(harness.addr)
        .await
        .get(Some("slow.test"), "/")
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    let small = harness.router.env_traffic("small").live;
    assert_eq!(small.classes, [0, 1, 0, 1, 0]);
    // The 413 is the router's own answer: counted failed, so the counters balance.
    let stats = harness.router.env_stats("small");
    assert_eq!((stats.accepted, stats.answered, stats.failed), (2, 1, 1));
    assert_eq!(harness.router.env_stats("slow").failed, 1);
}
