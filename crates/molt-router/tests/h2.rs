//! HTTP/2 with prior knowledge (h2c) from clients, and to upstreams when configured.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2 as client_http2;
use hyper::server::conn::{http1 as server_http1, http2 as server_http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use molt_router::{EnvStats, RouterConfig, UpstreamProtocol};
use support::{
    alternate_tables, eventually, read, table, upstream, within, Client, Harness, Reply,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The client connection preface of HTTP/2 followed by an empty SETTINGS frame.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// One h2c connection to the router; clones share it (one stream per request).
#[derive(Clone)]
struct H2Client {
    sender: client_http2::SendRequest<Empty<Bytes>>,
}

impl H2Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        let (sender, connection) = within(client_http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(stream),
        ))
        .await
        .expect("h2 handshake");
        tokio::spawn(connection);
        Self { sender }
    }

    /// Opens a stream for GET `http://{authority}{path}` (no Host header: HTTP/2 clients
    /// name the host in `:authority`); returns the response with its body still streaming.
    async fn send(&mut self, authority: &str, path: &str) -> Response<Incoming> {
        let request = Request::builder()
            .uri(format!("http://{authority}{path}"))
            .body(Empty::new())
            .expect("test request is valid");
        within(self.sender.ready()).await.expect("h2 ready");
        let response = within(self.sender.send_request(request))
            .await
            .expect("h2 response");
        assert_eq!(response.version(), Version::HTTP_2);
        response
    }

    async fn get(&mut self, authority: &str, path: &str) -> (StatusCode, String) {
        read(self.send(authority, path).await).await
    }
}

/// An h2c-only upstream answering `"{name} {version} host={host}"`.
async fn h2_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(move |request: Request<Incoming>| async move {
                let host = request
                    .headers()
                    .get("host")
                    .and_then(|host| host.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                let text = format!("{name} {:?} host={host}", request.version());
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(text)))
            });
            tokio::spawn(
                server_http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// An HTTP/1.1 upstream that sends response headers at once and its body, `"opened"`, only
/// once `gate` turns true.
async fn gated_upstream(gate: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gate = gate.clone();
            let service = service_fn(move |_request: Request<Incoming>| {
                let mut gate = gate.clone();
                async move {
                    let (sender, receiver) = mpsc::channel::<Bytes>(1);
                    tokio::spawn(async move {
                        if gate.wait_for(|open| *open).await.is_ok() {
                            sender.send(Bytes::from("opened")).await.ok();
                        }
                    });
                    let body = StreamBody::new(
                        ReceiverStream(receiver).map(|data| Ok::<_, Infallible>(Frame::data(data))),
                    );
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            tokio::spawn(
                server_http1::Builder::new().serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A stream over an mpsc receiver.
struct ReceiverStream(mpsc::Receiver<Bytes>);

impl futures_util::Stream for ReceiverStream {
    type Item = Bytes;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Bytes>> {
        self.get_mut().0.poll_recv(cx)
    }
}

#[tokio::test]
async fn h2c_request_is_routed_by_authority() {
    let blue = upstream(Reply::Name("blue")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let mut client = H2Client::connect(harness.addr).await;
    assert_eq!(
        client.get("app.test", "/").await,
        (StatusCode::OK, "blue".to_owned())
    );
    let (status, body) = client.get("App.test:8080", "/echo?q=1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.starts_with("blue GET /echo?q=1 host=App.test:8080 xff=127.0.0.1"),
        "{body}"
    );
    assert_eq!(client.get("nope.test", "/").await.0, StatusCode::NOT_FOUND);
    assert_eq!(harness.router.unrouted(), 1);
    assert!(eventually(|| harness.router.env_stats("blue").in_flight == 0).await);
    assert_eq!(
        harness.router.env_stats("blue"),
        EnvStats {
            accepted: 2,
            in_flight: 0,
            answered: 2,
            failed: 0
        }
    );
}

#[tokio::test]
async fn curl_speaks_h2c_with_prior_knowledge() {
    // hyper's HTTP/2 client covers the same ground in the other tests; this one is curl's.
    if !molt_testkit::needs_command("curl") {
        return;
    }
    let version = tokio::process::Command::new("curl")
        .arg("-V")
        .output()
        .await;
    let supports_h2 = version
        .as_ref()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("HTTP2"));
    if !molt_testkit::needs(supports_h2, "curl built with HTTP/2 (nghttp2)") {
        return;
    }
    let blue = upstream(Reply::Name("blue")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let url = format!("http://{}/echo", harness.addr);
    // One request per run: curl 7.88 fails reusing an h2c prior-knowledge connection (with
    // any server); several streams on one connection are tested with hyper's client.
    let output = within(
        tokio::process::Command::new("curl")
            .args(["--silent", "--show-error", "--http2-prior-knowledge"])
            .args(["--max-time", "5", "--header", "Host: app.test"])
            .args(["--write-out", " http=%{http_version} status=%{http_code}"])
            .arg(&url)
            .output(),
    )
    .await
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("blue GET /echo host=app.test xff=127.0.0.1 "),
        "{stdout}"
    );
    assert!(stdout.ends_with(" http=2 status=200"), "{stdout}");
    assert_eq!(harness.router.env_stats("blue").answered, 1);
}

#[tokio::test]
async fn concurrent_streams_on_one_connection_are_counted() {
    const STREAMS: usize = 4;
    let (open, gate) = watch::channel(false);
    let gated = gated_upstream(gate).await;
    let harness = Harness::start(RouterConfig::default()).await;
    let router = &harness.router;
    router
        .publish(table(&[("app.test", "gated", &[gated])]))
        .await;

    let client = H2Client::connect(harness.addr).await;
    let mut responses = Vec::new();
    for _ in 0..STREAMS {
        responses.push(client.clone().send("app.test", "/").await);
    }
    // Every stream has its headers; no body can end before the gate opens.
    assert_eq!(router.env_stats("gated").in_flight, STREAMS as u64);
    open.send(true).expect("upstream is listening");
    let reads: Vec<_> = responses
        .into_iter()
        .map(|response| tokio::spawn(read(response)))
        .collect();
    for body in reads {
        assert_eq!(
            within(body).await.expect("read task"),
            (StatusCode::OK, "opened".to_owned())
        );
    }
    assert!(eventually(|| router.env_stats("gated").in_flight == 0).await);
    assert_eq!(
        router.env_stats("gated"),
        EnvStats {
            accepted: STREAMS as u64,
            in_flight: 0,
            answered: STREAMS as u64,
            failed: 0
        }
    );
}

#[tokio::test]
async fn publish_moves_the_next_stream_on_an_h2_connection() {
    let blue = upstream(Reply::Name("blue")).await;
    let green = upstream(Reply::Name("green")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let mut client = H2Client::connect(harness.addr).await;
    assert_eq!(client.get("app.test", "/").await.1, "blue");
    harness
        .router
        .publish(table(&[("app.test", "green", &[green])]))
        .await;
    assert_eq!(client.get("app.test", "/").await.1, "green");
    assert!(eventually(|| harness.router.is_drained("blue")).await);
    assert!(!harness.router.is_drained("green"));
    assert_eq!(harness.router.env_stats("blue").answered, 1);
    assert_eq!(harness.router.env_stats("green").answered, 1);
}

#[tokio::test]
async fn http1_and_h2_share_the_port() {
    let blue = upstream(Reply::Name("blue")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;
    let mut h1 = harness.client().await;
    let mut h2 = H2Client::connect(harness.addr).await;
    for _ in 0..3 {
        assert_eq!(h1.get(Some("app.test"), "/").await.1, "blue");
        assert_eq!(h2.get("app.test", "/").await.1, "blue");
    }
    assert_eq!(harness.router.env_stats("blue").answered, 6);
}

#[tokio::test]
async fn shutdown_lets_open_h2_streams_finish() {
    let slow = upstream(Reply::Slow).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "slow", &[slow])]))
        .await;

    let mut client = H2Client::connect(harness.addr).await;
    let response = client.send("app.test", "/").await;
    harness.shutdown.cancel();
    assert_eq!(
        read(response).await,
        (StatusCode::OK, "chunk0chunk1chunk2".to_owned())
    );
    within(harness.serving)
        .await
        .expect("serve task")
        .expect("serve result");
    assert_eq!(harness.router.env_stats("slow").in_flight, 0);
}

#[tokio::test]
async fn connections_without_a_request_are_closed_after_header_read_timeout() {
    let harness = Harness::start(RouterConfig {
        header_read_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    })
    .await;
    // Nothing at all (the router cannot even tell the protocol), and an h2 preface with no
    // request after it.
    for opening in [&b""[..], H2_PREFACE_AND_SETTINGS] {
        let mut stream = within(TcpStream::connect(harness.addr))
            .await
            .expect("connect");
        within(stream.write_all(opening)).await.expect("write");
        let mut buf = Vec::new();
        // Ends when the router closes the connection (a GOAWAY may come first).
        within(stream.read_to_end(&mut buf)).await.ok();
    }
}

#[tokio::test]
async fn h2c_upstreams_get_http2_when_configured() {
    let blue = h2_upstream("blue").await;
    let harness = Harness::start(RouterConfig {
        upstream_protocol: UpstreamProtocol::Http2PriorKnowledge,
        ..RouterConfig::default()
    })
    .await;
    harness
        .router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;

    let mut h1 = harness.client().await;
    let mut h2 = H2Client::connect(harness.addr).await;
    for _ in 0..2 {
        assert_eq!(
            h1.get(Some("app.test"), "/").await,
            (StatusCode::OK, "blue HTTP/2.0 host=app.test".to_owned())
        );
        assert_eq!(
            h2.get("app.test", "/").await,
            (StatusCode::OK, "blue HTTP/2.0 host=app.test".to_owned())
        );
    }
    assert_eq!(harness.router.env_stats("blue").answered, 4);
    assert_eq!(harness.router.env_stats("blue").failed, 0);
}

/// The HTTP/1.1 client of the shared support module still works against an h2-capable port.
#[tokio::test]
async fn http1_keep_alive_still_reuses_one_connection() {
    let blue = upstream(Reply::Name("blue")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    harness
        .router
        .publish(table(&[("app.test", "blue", &[blue])]))
        .await;
    let mut client = Client::connect(harness.addr).await;
    for _ in 0..3 {
        let response = client
            .send("GET", Some("app.test"), "/", "")
            .await
            .expect("response");
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes(),
            "blue"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stream_is_dropped_while_publishing_under_load() {
    const STREAMS: usize = 8;
    const MAX_REQUESTS: usize = 1000;
    let blue = upstream(Reply::Name("blue")).await;
    let green = upstream(Reply::Name("green")).await;
    let harness = Harness::start(RouterConfig::default()).await;
    let blue_table = table(&[("app.test", "blue", &[blue])]);
    let green_table = table(&[("app.test", "green", &[green])]);
    harness.router.publish(blue_table.clone()).await;

    // One connection, several streams at a time.
    let connection = H2Client::connect(harness.addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (mut client, stop) = (connection.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                let mut answered = 0u64;
                while (answered as usize) < MAX_REQUESTS
                    && !stop.load(Ordering::Relaxed)
                    && tokio::time::Instant::now() < deadline
                {
                    let (status, body) = client.get("app.test", "/").await;
                    assert_eq!(status, StatusCode::OK, "body: {body}");
                    assert!(body == "blue" || body == "green", "body: {body}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();

    alternate_tables(&harness.router, &blue_table, &green_table, 10).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for sender in senders {
        total += within(sender).await.expect("stream task");
    }

    // The last publish (round 9) installed blue.
    let router = &harness.router;
    assert!(
        eventually(|| {
            router.env_stats("blue").in_flight == 0 && router.env_stats("green").in_flight == 0
        })
        .await
    );
    let (blue_stats, green_stats) = (router.env_stats("blue"), router.env_stats("green"));
    assert!(total >= STREAMS as u64);
    assert_eq!(blue_stats.accepted + green_stats.accepted, total);
    assert_eq!(blue_stats.answered + green_stats.answered, total);
    assert_eq!(blue_stats.failed + green_stats.failed, 0);
    assert!(
        green_stats.answered > 0,
        "green never served: {green_stats:?}"
    );
    assert!(router.is_drained("green"));
}
