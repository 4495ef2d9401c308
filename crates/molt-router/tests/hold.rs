//! Held backends: while the controller replaces every instance of an environment at once,
//! requests wait for the table that brings the new instances instead of failing — bounded
//! by the hold's end, the request timeout and the number of waiting requests. And draining
//! one upstream: the router tells when nothing is sent to an address any more.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use molt_router::{Backend, RouteLimits, RouteTable, RouterConfig, Upstream};
use support::{eventually, read, table, upstream, within, Harness, Reply};
use tokio::io::AsyncWriteExt;

/// `app.test` -> env `app` with `addrs`, held until `held_until`.
fn held(addrs: &[SocketAddr], held_until: Option<Instant>) -> RouteTable {
    let mut table = RouteTable::new();
    let upstreams = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| Upstream {
            instance: format!("app-{i}"),
            addr: *addr,
        })
        .collect();
    table.insert(
        "app.test",
        Backend {
            held_until,
            ..Backend::new("app", upstreams)
        },
    );
    table
}

fn in_an_hour() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(3600))
}

/// GETs `app.test` on a connection of its own, in the background.
fn get_in_background(harness: &Harness) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let addr = harness.addr;
    tokio::spawn(async move {
        let mut client = support::Client::connect(addr).await;
        client.get(Some("app.test"), "/").await
    })
}

#[tokio::test]
async fn a_held_route_answers_once_a_publish_adds_an_upstream() {
    let harness = Harness::start(RouterConfig::default()).await;
    harness.router.publish(held(&[], in_an_hour())).await;
    let waiting = get_in_background(&harness);
    assert!(eventually(|| harness.router.held_requests() == 1).await);
    // Not counted for the environment while it waits: it holds up no drain.
    let stats = harness.router.env_stats("app");
    assert_eq!((stats.accepted, stats.in_flight), (0, 0));

    // A publish that leaves the backend held (another host changed): it keeps waiting.
    let mut still_held = held(&[], in_an_hour());
    let other = upstream(Reply::Name("other")).await;
    still_held.insert(
        "other.test",
        Backend::new(
            "other",
            vec![Upstream {
                instance: "other-0".into(),
                addr: other,
            }],
        ),
    );
    harness.router.publish(still_held).await;
    tokio::task::yield_now().await;
    assert_eq!(harness.router.held_requests(), 1);
    assert!(!waiting.is_finished());

    let addr = upstream(Reply::Name("fresh")).await;
    harness.router.publish(held(&[addr], None)).await;
    let (status, body) = within(waiting).await.expect("client task");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "fresh"));
    assert_eq!(harness.router.held_requests(), 0);
    let stats = harness.router.env_stats("app");
    assert_eq!((stats.accepted, stats.answered, stats.failed), (1, 1, 0));
}

#[tokio::test]
async fn a_hold_that_runs_out_is_a_503_with_retry_after() {
    let harness = Harness::start(RouterConfig::default()).await;
    let soon = Some(Instant::now() + Duration::from_millis(200));
    harness.router.publish(held(&[], soon)).await;
    let mut client = harness.client().await;
    let response = client
        .send("GET", Some("app.test"), "/", "")
        .await
        .expect("response");
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, _) = read(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(harness.router.held_requests(), 0);
    assert_eq!(harness.router.env_stats("app").failed, 1);
    // Once the hold's end has passed, requests do not wait at all.
    let (status, _) = client.get(Some("app.test"), "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(harness.router.env_stats("app").failed, 2);
}

#[tokio::test]
async fn a_hold_never_outlasts_the_request_timeout() {
    let harness = Harness::start(RouterConfig::default()).await;
    let mut table = RouteTable::new();
    table.insert(
        "app.test",
        Backend {
            held_until: in_an_hour(),
            limits: RouteLimits {
                upstream_timeout: Some(Duration::from_millis(200)),
                ..RouteLimits::default()
            },
            ..Backend::new("app", vec![])
        },
    );
    harness.router.publish(table).await;
    let (status, _) = harness.client().await.get(Some("app.test"), "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(harness.router.held_requests(), 0);
}

#[tokio::test]
async fn releasing_a_hold_without_upstreams_answers_503_at_once() {
    let harness = Harness::start(RouterConfig::default()).await;
    harness.router.publish(held(&[], in_an_hour())).await;
    let waiting = get_in_background(&harness);
    assert!(eventually(|| harness.router.held_requests() == 1).await);
    harness.router.publish(held(&[], None)).await;
    let (status, _) = within(waiting).await.expect("client task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(harness.router.held_requests(), 0);
}

#[tokio::test]
async fn waiting_requests_are_bounded() {
    let config = RouterConfig {
        max_held_requests: 2,
        ..RouterConfig::default()
    };
    let harness = Harness::start(config).await;
    harness.router.publish(held(&[], in_an_hour())).await;
    let waiting = [get_in_background(&harness), get_in_background(&harness)];
    assert!(eventually(|| harness.router.held_requests() == 2).await);
    // A third does not wait: 503 at once, the two others still waiting.
    let (status, _) = harness.client().await.get(Some("app.test"), "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(harness.router.held_requests(), 2);

    let addr = upstream(Reply::Name("fresh")).await;
    harness.router.publish(held(&[addr], None)).await;
    for task in waiting {
        let (status, body) = within(task).await.expect("client task");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fresh"));
    }
    assert_eq!(harness.router.held_requests(), 0);
}

#[tokio::test]
async fn an_unheld_route_without_upstreams_is_a_503_at_once() {
    let harness = Harness::start(RouterConfig::default()).await;
    harness.router.publish(held(&[], None)).await;
    let mut client = harness.client().await;
    let response = client
        .send("GET", Some("app.test"), "/", "")
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(harness.router.held_requests(), 0);
    // A hold is only for a backend without upstreams: with one, nothing waits.
    let addr = upstream(Reply::Name("a")).await;
    harness.router.publish(held(&[addr], in_an_hour())).await;
    let (status, body) = client.get(Some("app.test"), "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
}

#[tokio::test]
async fn an_upstream_drains_once_its_last_request_ends() {
    let harness = Harness::start(RouterConfig::default()).await;
    let slow = upstream(Reply::Slow).await;
    let fresh = upstream(Reply::Name("fresh")).await;
    assert!(harness.router.is_upstream_drained(slow), "never routed");
    harness
        .router
        .publish(table(&[("app.test", "app", &[slow])]))
        .await;
    assert!(!harness.router.is_upstream_drained(slow), "routed");

    // A response streaming from `slow` while the table moves on to `fresh`.
    let mut client = harness.client().await;
    let response = client
        .send("GET", Some("app.test"), "/", "")
        .await
        .expect("response");
    harness
        .router
        .publish(table(&[("app.test", "app", &[fresh])]))
        .await;
    assert!(
        !harness.router.is_upstream_drained(slow),
        "a body in flight"
    );
    assert!(!harness.router.is_upstream_drained(fresh));
    let (status, body) = read(response).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "chunk0chunk1chunk2")
    );
    assert!(eventually(|| harness.router.is_upstream_drained(slow)).await);
    assert!(!harness.router.is_upstream_drained(fresh));
}

/// hyper does not read from a connection while its request is being answered, so a client
/// that closes its connection while it waits is not noticed: its place is freed when the hold
/// ends (or the request timeout passes), like any waiting request's.
#[tokio::test]
async fn a_client_that_goes_away_keeps_its_place_only_until_the_hold_ends() {
    let harness = Harness::start(RouterConfig::default()).await;
    let soon = Some(Instant::now() + Duration::from_millis(300));
    harness.router.publish(held(&[], soon)).await;
    let mut socket = within(tokio::net::TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    within(socket.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"))
        .await
        .expect("request sent");
    assert!(eventually(|| harness.router.held_requests() == 1).await);
    drop(socket);
    assert!(eventually(|| harness.router.held_requests() == 0).await);
}
