//! Request bodies end to end, on the direct path and on hyper's (h1 and h2): bodies that
//! break off are answered and counted, and every accepted request ends up answered or
//! failed, which the drain and the acknowledged swap wait for.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2 as client_http2;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use molt_router::{EnvStats, RouterConfig};
use support::{eventually, within, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that reads each request's body to its end before answering
/// `"{method} {path} body={length}"`, and counts the bodies it got whole (`complete`) and
/// the requests that reached it (`seen`).
struct Reader {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    complete: Arc<AtomicUsize>,
}

impl Reader {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let complete = Arc::new(AtomicUsize::new(0));
        let (counted, finished) = (Arc::clone(&seen), Arc::clone(&complete));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (counted, finished) = (Arc::clone(&counted), Arc::clone(&finished));
                let service = service_fn(move |request: Request<Incoming>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let finished = Arc::clone(&finished);
                    async move {
                        let line = format!("{} {}", request.method(), request.uri());
                        let Ok(body) = request.into_body().collect().await else {
                            return Ok::<_, Infallible>(Response::new(Full::from("broken")));
                        };
                        finished.fetch_add(1, Ordering::SeqCst);
                        let text = format!("{line} body={}", body.to_bytes().len());
                        Ok(Response::new(Full::<Bytes>::from(text)))
                    }
                });
                tokio::spawn(
                    server_http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            seen,
            complete,
        }
    }
}

/// The two ways the router can serve an HTTP/1.1 connection.
const PATHS: [(&str, bool); 2] = [("direct", true), ("hyper", false)];

async fn router_for(direct_path: bool, upstream: SocketAddr) -> Harness {
    let config = RouterConfig {
        direct_path,
        ..RouterConfig::default()
    };
    Harness::routing(config, &[("app.test", "app", &[upstream])]).await
}

/// Writes `bytes` on a fresh connection, then closes it (without waiting for an answer).
async fn send_and_close(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = within(TcpStream::connect(addr)).await.expect("connect");
    within(stream.write_all(bytes)).await.expect("write");
    // Give the router the bytes before the close, as a client that gave up would.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
}

/// Waits until the environment has nothing in flight and every accepted request is answered
/// or failed; returns its counters.
async fn settled(harness: &Harness, env: &str) -> EnvStats {
    let balanced = eventually(|| {
        let stats = harness.router.env_stats(env);
        stats.accepted > 0
            && stats.in_flight == 0
            && stats.accepted == stats.answered + stats.failed
    })
    .await;
    let stats = harness.router.env_stats(env);
    assert!(balanced, "counters never balanced: {stats:?}");
    stats
}

#[tokio::test]
async fn a_body_shorter_than_its_length_is_counted_failed_on_every_path() {
    for (path, direct) in PATHS {
        let upstream = Reader::start().await;
        let harness = router_for(direct, upstream.addr).await;
        let mut request =
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4096\r\n\r\n".to_vec();
        request.extend_from_slice(&[b'x'; 100]);
        send_and_close(harness.addr, &request).await;
        let stats = settled(&harness, "app").await;
        assert_eq!((stats.accepted, stats.failed), (1, 1), "{path}: {stats:?}");
        assert_eq!(upstream.complete.load(Ordering::SeqCst), 0, "{path}");
    }
}

#[tokio::test]
async fn a_chunked_body_cut_mid_chunk_is_counted_failed_on_every_path() {
    for (path, direct) in PATHS {
        let upstream = Reader::start().await;
        let harness = router_for(direct, upstream.addr).await;
        let request =
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n400\r\nonly a little of the chunk";
        send_and_close(harness.addr, request).await;
        let stats = settled(&harness, "app").await;
        assert_eq!((stats.accepted, stats.failed), (1, 1), "{path}: {stats:?}");
        assert_eq!(upstream.complete.load(Ordering::SeqCst), 0, "{path}");
    }
}

#[tokio::test]
async fn a_broken_chunk_after_the_body_began_is_a_counted_400() {
    for (path, direct) in PATHS {
        let upstream = Reader::start().await;
        let harness = router_for(direct, upstream.addr).await;
        let request =
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n";
        let mut stream = within(TcpStream::connect(harness.addr))
            .await
            .expect("connect");
        within(stream.write_all(request)).await.expect("write");
        assert!(
            eventually(|| upstream.seen.load(Ordering::SeqCst) == 1).await,
            "{path}: the request reached the upstream"
        );
        within(stream.write_all(b"zz\r\n")).await.expect("write");
        let mut response = Vec::new();
        let _ = within(stream.read_to_end(&mut response)).await;
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 400"),
            "{path}: {response}"
        );
        let stats = settled(&harness, "app").await;
        assert_eq!((stats.accepted, stats.failed), (1, 1), "{path}: {stats:?}");
        assert_eq!(upstream.complete.load(Ordering::SeqCst), 0, "{path}");
    }
}

#[tokio::test]
async fn an_h2_stream_reset_mid_body_is_counted_failed() {
    let upstream = Reader::start().await;
    let harness = router_for(true, upstream.addr).await;
    let stream = within(TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    let (mut sender, connection) = within(client_http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(stream),
    ))
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    // A body of two pieces, then an error: hyper resets the stream.
    let (feed, pieces) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(tokio_stream_of(pieces));
    let request = Request::builder()
        .method("POST")
        .uri("http://app.test/upload")
        .header("content-length", "4096")
        .body(body)
        .expect("request");
    within(sender.ready()).await.expect("ready");
    let response = tokio::spawn(sender.send_request(request));
    feed.send(Ok(Frame::data(Bytes::from_static(&[b'x'; 100]))))
        .await
        .expect("feed");
    assert!(
        eventually(|| upstream.seen.load(Ordering::SeqCst) == 1).await,
        "the request reached the upstream"
    );
    feed.send(Err(std::io::Error::other("the client gave up")))
        .await
        .expect("feed");
    let _ = within(response).await;
    let stats = settled(&harness, "app").await;
    assert_eq!((stats.accepted, stats.failed), (1, 1), "{stats:?}");
    assert_eq!(upstream.complete.load(Ordering::SeqCst), 0);
}

/// The receiving side of a channel as a stream of body frames.
fn tokio_stream_of<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Unpin + 'static {
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        receiver.poll_recv(cx)
    }))
}
