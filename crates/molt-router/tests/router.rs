//! The router end to end: real upstream servers, a real router, real client connections.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use molt_router::{EnvStats, RouterConfig};
use support::{
    alternate_tables, closing_upstream, dead_addr, eventually, raw, read, silent_upstream, table,
    upstream, within, Client, Harness, Reply,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn routes_by_exact_and_wildcard_host() {
    let blue = upstream(Reply::Name("blue")).await;
    let green = upstream(Reply::Name("green")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[
            ("app.test", "blue", &[blue]),
            ("*.green.test", "green", &[green]),
        ]))
        .await;

    let mut client = harness.client().await;
    let cases = [
        ("app.test", StatusCode::OK, "blue"),
        ("APP.Test:8080", StatusCode::OK, "blue"),
        ("x.green.test", StatusCode::OK, "green"),
        ("a.b.green.test", StatusCode::OK, "green"),
        (
            "green.test",
            StatusCode::NOT_FOUND,
            "molt: no app answers to host 'green.test' on this server\n",
        ),
        (
            "nope.test:81",
            StatusCode::NOT_FOUND,
            "molt: no app answers to host 'nope.test:81' on this server\n",
        ),
    ];
    for (host, status, body) in cases {
        assert_eq!(
            client.get(Some(host), "/").await,
            (status, body.to_owned()),
            "host {host}"
        );
    }
    assert_eq!(harness.router.unrouted(), 2);

    let (status, _) = client.get(None, "/").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(harness.router.env_stats("blue").answered, 2);
    assert_eq!(harness.router.env_stats("green").answered, 2);
}

#[tokio::test]
async fn rewrites_proxy_headers_and_keeps_host() {
    let blue = upstream(Reply::Name("blue")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let mut stream = within(tokio::net::TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    let request = "GET /echo?q=1 HTTP/1.1\r\nHost: App.test:8080\r\n\
                   X-Forwarded-For: 10.9.9.9\r\nConnection: keep-alive, X-Private\r\n\
                   X-Private: secret\r\nContent-Length: 0\r\n\r\n";
    within(stream.write_all(request.as_bytes()))
        .await
        .expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100 {
        let n = within(stream.read(&mut buf)).await.expect("read");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if n == 0 || text.contains("8080\"") {
            break;
        }
    }
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200 ok\r\n"), "{response}");
    assert!(!response.contains("x-hop: gone"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(
        body,
        "blue get /echo?q=1 host=app.test:8080 xff=10.9.9.9, 127.0.0.1 \
         xfh=app.test:8080 xfp=http conn= x-private= \
         fwd=for=127.0.0.1;proto=http;host=\"app.test:8080\""
    );
}

#[tokio::test]
async fn publish_moves_the_next_request_on_a_keep_alive_connection() {
    let blue = upstream(Reply::Name("blue")).await;
    let green = upstream(Reply::Name("green")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let mut client = harness.client().await;
    assert_eq!(
        client.get(Some("app.test"), "/").await,
        (StatusCode::OK, "blue".to_owned())
    );
    harness
        .router
        .publish(table(&[("app.test", "green", &[green])]))
        .await;
    assert_eq!(
        client.get(Some("app.test"), "/").await,
        (StatusCode::OK, "green".to_owned())
    );
    assert!(harness.router.is_drained("blue"));
    assert!(!harness.router.is_drained("green"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_dropped_while_publishing_under_load() {
    const CLIENTS: usize = 8;
    const MAX_REQUESTS: usize = 2000;
    let blue = upstream(Reply::Name("blue")).await;
    let green = upstream(Reply::Name("green")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    let blue_table = table(&[("app.test", "blue", &[blue])]);
    let green_table = table(&[("app.test", "green", &[green])]);
    harness.router.publish(blue_table.clone()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let addr = harness.addr;
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                let mut answered = 0usize;
                while answered < MAX_REQUESTS
                    && !stop.load(Ordering::Relaxed)
                    && tokio::time::Instant::now() < deadline
                {
                    let (status, body) = client.get(Some("app.test"), "/").await;
                    assert_eq!(status, StatusCode::OK, "body: {body}");
                    assert!(body == "blue" || body == "green", "body: {body}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();

    alternate_tables(&harness.router, &blue_table, &green_table, 20).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0u64;
    for client in clients {
        total += within(client).await.expect("client task") as u64;
    }

    // The last publish (round 19) installed blue.
    let router = &harness.router;
    assert!(
        eventually(|| {
            router.env_stats("blue").in_flight == 0 && router.env_stats("green").in_flight == 0
        })
        .await
    );
    let (blue_stats, green_stats) = (router.env_stats("blue"), router.env_stats("green"));
    eprintln!("{total} responses across {CLIENTS} connections");
    assert!(total >= CLIENTS as u64);
    assert_eq!(blue_stats.answered + green_stats.answered, total);
    assert_eq!(blue_stats.accepted + green_stats.accepted, total);
    assert_eq!(blue_stats.failed + green_stats.failed, 0);
    assert!(
        green_stats.answered > 0,
        "green never served: {green_stats:?}"
    );
    assert!(router.is_drained("green"));
    assert!(!router.is_drained("blue"));
}

#[tokio::test]
async fn in_flight_covers_a_slowly_streamed_body() {
    let slow = upstream(Reply::Slow).await;
    let blue = upstream(Reply::Name("blue")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "slow", &[slow])]))
        .await;

    let mut client = harness.client().await;
    let response = client
        .send("GET", Some("app.test"), "/", "")
        .await
        .expect("response headers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(router.env_stats("slow").in_flight, 1);

    router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;
    assert_eq!(router.env_stats("slow").in_flight, 1);
    assert!(!router.is_drained("slow"));

    assert_eq!(
        read(response).await,
        (StatusCode::OK, "chunk0chunk1chunk2".to_owned())
    );
    assert!(eventually(|| router.is_drained("slow")).await);
    assert_eq!(
        router.env_stats("slow"),
        EnvStats {
            accepted: 1,
            in_flight: 0,
            answered: 1,
            failed: 0
        }
    );
}

#[tokio::test]
async fn in_flight_is_released_when_the_client_goes_away() {
    let slow = upstream(Reply::Slow).await;
    let harness = Harness::start(RouterConfig::default()).await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "slow", &[slow])]))
        .await;

    let mut client = harness.client().await;
    let response = client
        .send("GET", Some("app.test"), "/", "")
        .await
        .expect("response headers");
    assert_eq!(router.env_stats("slow").in_flight, 1);
    drop(response);
    drop(client);
    assert!(eventually(|| router.env_stats("slow").in_flight == 0).await);
}

#[tokio::test]
async fn unreachable_upstream_is_a_counted_502() {
    let dead = dead_addr().await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "gone", &[dead])]))
        .await;

    let mut client = harness.client().await;
    let (status, _) = client.get(Some("app.test"), "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        harness.router.env_stats("gone"),
        EnvStats {
            accepted: 1,
            in_flight: 0,
            answered: 0,
            failed: 1
        }
    );
}

#[tokio::test]
async fn replayable_requests_retry_the_next_upstream() {
    let dead = dead_addr().await;
    let alive = upstream(Reply::Name("alive")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "app", &[dead, alive])]))
        .await;

    let mut client = harness.client().await;
    for _ in 0..4 {
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "alive".to_owned())
        );
    }
    assert_eq!(harness.router.env_stats("app").answered, 4);
    assert_eq!(harness.router.env_stats("app").failed, 0);

    // A request with a body is never sent twice: the POSTs that start at the dead instance
    // fail (a retry would have made them all succeed).
    let mut bad_gateways = 0;
    for _ in 0..10 {
        let response = client
            .send("POST", Some("app.test"), "/", "payload")
            .await
            .expect("response");
        match response.status() {
            StatusCode::BAD_GATEWAY => bad_gateways += 1,
            status => assert_eq!(status, StatusCode::OK),
        }
        let _ = read(response).await;
    }
    assert!(bad_gateways > 0, "no POST started at the dead instance");
    assert_eq!(harness.router.env_stats("app").failed, bad_gateways);
}

#[tokio::test]
async fn replayable_requests_retry_after_a_connection_closed_before_a_response() {
    let closing = closing_upstream().await;
    let alive = upstream(Reply::Name("alive")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "app", &[closing, alive])]))
        .await;

    let mut client = harness.client().await;
    for _ in 0..4 {
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "alive".to_owned())
        );
    }
    assert_eq!(harness.router.env_stats("app").failed, 0);
}

#[tokio::test]
async fn backend_without_upstreams_is_a_503() {
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "empty", &[])]))
        .await;
    let (status, _) = harness.client().await.get(Some("app.test"), "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(harness.router.env_stats("empty").failed, 1);
}

#[tokio::test]
async fn silent_upstream_is_a_504_after_upstream_timeout() {
    let silent = silent_upstream().await;
    let harness = Harness::start(RouterConfig {
        upstream_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    })
    .await;
    harness
        .router
        .publish(table(&[("app.test", "mute", &[silent])]))
        .await;
    let (status, _) = harness.client().await.get(Some("app.test"), "/").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(harness.router.env_stats("mute").failed, 1);
    assert_eq!(harness.router.env_stats("mute").in_flight, 0);
}

#[tokio::test]
async fn idle_client_is_closed_after_header_read_timeout() {
    let harness = Harness::start(RouterConfig {
        header_read_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    })
    .await;
    let mut stream = within(tokio::net::TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    within(stream.write_all(b"GET / HTTP/1.1\r\n"))
        .await
        .expect("write");
    let mut buf = Vec::new();
    // Closed by the router: the read ends (possibly after an error status line).
    within(stream.read_to_end(&mut buf)).await.ok();
}

#[tokio::test]
async fn shutdown_lets_the_in_flight_response_finish() {
    let slow = upstream(Reply::Slow).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "slow", &[slow])]))
        .await;

    let mut client = harness.client().await;
    let response = client
        .send("GET", Some("app.test"), "/", "")
        .await
        .expect("response headers");
    harness.shutdown.cancel();
    assert_eq!(
        read(response).await,
        (StatusCode::OK, "chunk0chunk1chunk2".to_owned())
    );
    within(harness.serving)
        .await
        .expect("serve task")
        .expect("serve result");
    assert!(
        tokio::net::TcpStream::connect(harness.addr).await.is_err(),
        "listener closed"
    );
    assert_eq!(harness.router.env_stats("slow").in_flight, 0);
}

#[tokio::test]
async fn shutdown_closes_connections_left_after_the_grace_period() {
    let silent = silent_upstream().await;
    let harness = Harness::start(RouterConfig {
        shutdown_grace: Duration::from_millis(200),
        ..RouterConfig::default()
    })
    .await;
    harness
        .router
        .publish(table(&[("app.test", "mute", &[silent])]))
        .await;

    let mut client = harness.client().await;
    let pending = tokio::spawn(async move { client.send("GET", Some("app.test"), "/", "").await });
    assert!(eventually(|| harness.router.env_stats("mute").in_flight == 1).await);
    harness.shutdown.cancel();
    within(harness.serving)
        .await
        .expect("serve task")
        .expect("serve result");
    assert!(within(pending).await.expect("client task").is_err());
    assert!(eventually(|| harness.router.env_stats("mute").in_flight == 0).await);
}

#[tokio::test]
async fn a_router_refusing_new_connections_still_serves_open_ones() {
    let addr = upstream(Reply::Name("blue")).await;
    let harness = Harness::routing(RouterConfig::default(), &[("app.test", "blue", &[addr])]).await;
    let mut open = harness.client().await;
    assert_eq!(open.get(Some("app.test"), "/").await.1, "blue");

    harness.router.refuse_new_connections(true);
    assert!(harness.router.refuses_new_connections());
    // A new connection is closed without an answer.
    let answer = raw(
        harness.addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer, "", "a refused connection gets no answer");
    // The connection that was open keeps working.
    assert_eq!(open.get(Some("app.test"), "/").await.1, "blue");

    harness.router.refuse_new_connections(false);
    let answer = raw(
        harness.addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
