//! molt's upstream connection pool and thread-per-core serving, against real sockets: kept-alive
//! connections are reused (empty bodies included), a connection the upstream closed while idle
//! is replaced without an error, connections to unrouted addresses are closed, and
//! `serve_on_threads` serves and stops, and `listen_on_threads` queues connections until started.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use molt_router::{Router, RouterConfig};
use support::{eventually, read, table, upstream, within, Client, Harness, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Connections an upstream accepted, and how many of them have ended.
#[derive(Default)]
struct Tally {
    opened: AtomicUsize,
    closed: AtomicUsize,
}

/// An upstream answering `ok`, an empty 204 on `/empty` and no body to HEAD, that counts its
/// connections.
async fn counting_upstream() -> (SocketAddr, Arc<Tally>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tally = Arc::new(Tally::default());
    let counts = Arc::clone(&tally);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counts.opened.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let service = service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let response = if request.uri().path() == "/empty" {
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = StatusCode::NO_CONTENT;
                            response
                        } else {
                            Response::new(Full::new(Bytes::from_static(b"ok")))
                        };
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = server_http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                counts.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, tally)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    // hyper serves everything: one pool, one connection.
    let config = RouterConfig {
        direct_path: false,
        ..RouterConfig::default()
    };
    assert_eq!(requests_in_a_row(config, 5, true).await, 1);
    // The direct path alone (GET, HEAD, a 204): one connection too.
    assert_eq!(
        requests_in_a_row(RouterConfig::default(), 5, false).await,
        1
    );
    // POSTs stay on the direct path too, over the same pooled socket: still one.
    assert_eq!(requests_in_a_row(RouterConfig::default(), 5, true).await, 1);
}

/// Sends `rounds` × GET, HEAD, GET of a 204 (and a POST, with `post`) on one client
/// connection; returns how many upstream connections that took.
async fn requests_in_a_row(config: RouterConfig, rounds: usize, post: bool) -> usize {
    let (addr, tally) = counting_upstream().await;
    let harness = Harness::routing(config, &[("app.test", "blue", &[addr])]).await;
    let mut client = harness.client().await;
    for round in 0..rounds {
        assert_eq!(
            client.get(Some("app.test"), "/").await,
            (StatusCode::OK, "ok".to_owned()),
            "GET, round {round}"
        );
        let head = client
            .send("HEAD", Some("app.test"), "/", "")
            .await
            .expect("HEAD");
        assert_eq!(read(head).await.0, StatusCode::OK, "HEAD, round {round}");
        let empty = client.get(Some("app.test"), "/empty").await;
        assert_eq!(empty.0, StatusCode::NO_CONTENT, "204, round {round}");
        if post {
            let post = client
                .send("POST", Some("app.test"), "/", "a body")
                .await
                .expect("POST");
            assert_eq!(read(post).await.0, StatusCode::OK, "POST, round {round}");
        }
    }
    tally.opened.load(Ordering::SeqCst)
}

/// An upstream that answers one request per connection with a keep-alive response, then
/// closes the connection and reports it.
async fn one_shot_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed, closes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            drop(stream);
            let _ = closed.send(());
        }
    });
    (addr, closes)
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced_without_an_error() {
    let (addr, mut closes) = one_shot_upstream().await;
    let harness = Harness::routing(RouterConfig::default(), &[("app.test", "blue", &[addr])]).await;
    let mut client = harness.client().await;
    for round in 0..3 {
        // POST: never retried by the router, so only a fresh connection can answer it.
        let response = client
            .send("POST", Some("app.test"), "/", "payload")
            .await
            .expect("response");
        assert_eq!(
            read(response).await,
            (StatusCode::OK, "ok".to_owned()),
            "round {round}"
        );
        within(closes.recv()).await.expect("the upstream closed");
    }
    assert_eq!(harness.router.env_stats("blue").failed, 0);
}

#[tokio::test]
async fn idle_connections_to_an_unrouted_address_are_closed() {
    let (old, tally) = counting_upstream().await;
    let new = upstream(Reply::Name("new")).await;
    let harness = Harness::routing(RouterConfig::default(), &[("app.test", "blue", &[old])]).await;
    let mut client = harness.client().await;
    assert_eq!(client.get(Some("app.test"), "/").await.0, StatusCode::OK);
    assert_eq!(tally.closed.load(Ordering::SeqCst), 0, "kept alive");

    within(
        harness
            .router
            .publish(table(&[("app.test", "green", &[new])])),
    )
    .await;
    assert!(
        eventually(|| tally.closed.load(Ordering::SeqCst) == 1).await,
        "the pooled connection to the unrouted instance is closed"
    );
    assert_eq!(
        client.get(Some("app.test"), "/").await,
        (StatusCode::OK, "new".to_owned())
    );
}

#[tokio::test]
async fn serve_on_threads_serves_every_connection_and_stops() {
    let addr = upstream(Reply::Name("threads")).await;
    let router = Router::new(RouterConfig::default());
    within(router.publish(table(&[("app.test", "blue", &[addr])]))).await;
    let shutdown = CancellationToken::new();
    let threads = Arc::clone(&router)
        .serve_on_threads("127.0.0.1:0".parse().expect("addr"), 2, shutdown.clone())
        .expect("serving threads");
    let listening = threads.local_addr();
    assert_ne!(listening.port(), 0);

    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Client::connect(listening).await);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in 0..3 {
            let response = client
                .send(Method::GET.as_str(), Some("app.test"), "/", "")
                .await
                .expect("response");
            assert_eq!(
                read(response).await,
                (StatusCode::OK, "threads".to_owned()),
                "client {i}"
            );
        }
    }
    assert_eq!(router.env_stats("blue").accepted, 24);

    shutdown.cancel();
    drop(clients);
    within(tokio::task::spawn_blocking(move || threads.join()))
        .await
        .expect("join")
        .expect("every thread stopped cleanly");
}

#[tokio::test]
async fn threads_that_only_listen_queue_connections_until_started() {
    let addr = upstream(Reply::Name("late")).await;
    let router = Router::new(RouterConfig::default());
    let shutdown = CancellationToken::new();
    let threads = Arc::clone(&router)
        .listen_on_threads("127.0.0.1:0".parse().expect("addr"), 2, shutdown.clone())
        .expect("listening threads");
    // The port takes connections at once; nobody answers yet (the table is not even there).
    let mut stream = within(tokio::net::TcpStream::connect(threads.local_addr()))
        .await
        .expect("connect while only listening");
    within(stream.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"))
        .await
        .expect("request while only listening");
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        stream.read(&mut first),
    )
    .await;
    assert!(early.is_err(), "answered before start: {early:?}");

    within(router.publish(table(&[("app.test", "blue", &[addr])]))).await;
    threads.start();
    let mut response = Vec::new();
    within(stream.read_to_end(&mut response))
        .await
        .expect("answer after start");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("late"), "{response}");

    shutdown.cancel();
    within(tokio::task::spawn_blocking(move || threads.join()))
        .await
        .expect("join")
        .expect("every thread stopped cleanly");

    // Never started: joining stops the threads all the same.
    let threads = Arc::clone(&router)
        .listen_on_threads(
            "127.0.0.1:0".parse().expect("addr"),
            2,
            CancellationToken::new(),
        )
        .expect("listening threads");
    within(tokio::task::spawn_blocking(move || threads.join()))
        .await
        .expect("join")
        .expect("threads never started stop when joined");
}
