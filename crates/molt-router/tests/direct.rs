//! The direct path (molt's own HTTP/1.1 exchange for bodiless GET and HEAD) against a raw
//! upstream that answers exactly the bytes each test needs: chunked bodies with trailers,
//! bodies delimited by close, informational answers, ambiguous framing, silence. Also a
//! pipeline that moves a connection from the direct path to hyper mid-way, and the fields the
//! upstream sees.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use molt_router::RouterConfig;
use support::{raw, read, within, Client, Harness};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A raw HTTP/1.1 upstream: answers by path with fixed bytes, records every request head,
/// counts connections.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (Arc::clone(&heads), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_scripted(stream, Arc::clone(&seen)));
            }
        });
        Self {
            addr,
            heads,
            connections,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

/// Answers the requests of one connection until it closes (or a script closes it).
async fn serve_scripted(mut stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let Some((head, length)) = support::read_request(&mut stream, &mut buf).await else {
            return;
        };
        seen.lock().expect("heads").push(head.clone());
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let answer = match (method, path) {
            ("HEAD", _) => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_owned(),
            ("POST", path) => {
                let body = format!("posted={length} to {path}");
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            }
            (_, "/chunked") => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
                                5\r\nhello\r\n6;note=x\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"
                .to_owned(),
            (_, "/close") => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = stream.write_all(b"close").await;
                return;
            }
            (_, "/hints") => "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
                              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .to_owned(),
            (_, "/smuggle") => {
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                    .to_owned()
            }
            (_, "/silent") => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            (_, path) => {
                let body = format!("path={path}");
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            }
        };
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn router_for(config: RouterConfig, upstream: SocketAddr) -> Harness {
    Harness::routing(config, &[("app.test", "app", &[upstream])]).await
}

async fn get(client: &mut Client, path: &str) -> (StatusCode, String) {
    within(client.get(Some("app.test"), path)).await
}

#[tokio::test]
async fn chunked_close_delimited_and_informational_answers_are_relayed() {
    let upstream = Scripted::start().await;
    let harness = router_for(RouterConfig::default(), upstream.addr).await;
    let mut client = harness.client().await;
    assert_eq!(
        get(&mut client, "/chunked").await,
        (StatusCode::OK, "hello world".to_owned())
    );
    // The chunked body ended where it ends: the same connections carry the next requests.
    assert_eq!(
        get(&mut client, "/hints").await,
        (StatusCode::OK, "ok".to_owned()),
        "the 103 is skipped, the final answer relayed"
    );
    assert_eq!(
        get(&mut client, "/x").await,
        (StatusCode::OK, "path=/x".to_owned())
    );
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "one upstream connection, kept alive across chunked and informational answers"
    );

    // A body delimited by the upstream's close reaches the client whole, and the client's
    // connection is closed after it (the router says so).
    let response = raw(
        harness.addr,
        b"GET /close HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nuntil close"), "{response}");
}

#[tokio::test]
async fn ambiguous_or_silent_upstream_answers_are_502_and_504() {
    let upstream = Scripted::start().await;
    let config = RouterConfig {
        upstream_timeout: Duration::from_millis(300),
        ..RouterConfig::default()
    };
    let harness = router_for(config, upstream.addr).await;
    let mut client = harness.client().await;
    let (status, body) = get(&mut client, "/smuggle").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // The client's connection is unharmed by the upstream's bad answer.
    assert_eq!(
        get(&mut client, "/after").await,
        (StatusCode::OK, "path=/after".to_owned())
    );
    let (status, _) = get(&mut client, "/silent").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        get(&mut client, "/again").await,
        (StatusCode::OK, "path=/again".to_owned())
    );
    let stats = harness.router.env_stats("app");
    assert_eq!((stats.failed, stats.in_flight), (2, 0));
}

#[tokio::test]
async fn a_pipeline_moves_from_the_direct_path_to_hyper_in_order() {
    let upstream = Scripted::start().await;
    let harness = router_for(RouterConfig::default(), upstream.addr).await;
    let pipeline = "GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n\
                    HEAD /h HTTP/1.1\r\nHost: app.test\r\n\r\n\
                    POST /b HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nbody\
                    GET /c HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let response = raw(harness.addr, pipeline.as_bytes()).await;
    let a = response.find("path=/a").expect("answer to GET /a");
    let head = response[a..]
        .find("content-length: 5\r\n")
        .or_else(|| response[a..].find("Content-Length: 5\r\n"))
        .expect("answer to HEAD, with its length");
    let b = response.find("posted=4 to /b").expect("answer to POST /b");
    let c = response.find("path=/c").expect("answer to GET /c");
    assert!(a < a + head && a + head < b && b < c, "{response}");
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 4, "{response}");
    assert!(
        response.ends_with("path=/c"),
        "no body after HEAD's answer: {response}"
    );
}

#[tokio::test]
async fn the_upstream_sees_forwarding_fields_and_the_client_its_request_id() {
    let upstream = Scripted::start().await;
    let harness = router_for(RouterConfig::default(), upstream.addr).await;
    let request = "GET /fields?q=1 HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: trace-42\r\n\
                   Connection: close, X-Hop\r\nX-Hop: secret\r\nX-Forwarded-For: 192.0.2.1\r\n\
                   Keep-Alive: timeout=5\r\nAccept: text/plain\r\n\r\n";
    let response = raw(harness.addr, request.as_bytes()).await;
    assert!(
        response.contains("\r\nx-request-id: trace-42\r\n"),
        "{response}"
    );
    assert!(response.ends_with("path=/fields?q=1"), "{response}");

    let heads = upstream.heads();
    let head = heads.last().expect("a request reached the upstream");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("GET /fields?q=1 HTTP/1.1\r\n"), "{head}");
    for field in [
        "host: app.test\r\n",
        "accept: text/plain\r\n",
        "x-request-id: trace-42\r\n",
        "x-forwarded-for: 192.0.2.1, 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
        "x-forwarded-host: app.test\r\n",
        "forwarded: for=127.0.0.1;proto=http;host=app.test\r\n",
    ] {
        assert!(lower.contains(field), "{field:?} missing from {head}");
    }
    for hop in ["x-hop", "keep-alive", "connection"] {
        assert!(
            !lower.contains(&format!("\r\n{hop}:")),
            "{hop} passed on: {head}"
        );
    }
}

#[tokio::test]
async fn hyper_serves_everything_when_the_direct_path_is_off() {
    let upstream = Scripted::start().await;
    let config = RouterConfig {
        direct_path: false,
        ..RouterConfig::default()
    };
    let harness = router_for(config, upstream.addr).await;
    let mut client = harness.client().await;
    for path in ["/chunked", "/hints", "/x"] {
        let response = within(client.send("GET", Some("app.test"), path, ""))
            .await
            .expect("response");
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // hyper reads both framings by the chunks and drops the length (the direct path refuses
    // the answer instead); either way the client gets a whole response and its connection
    // goes on.
    let (status, body) = get(&mut client, "/smuggle").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(
        get(&mut client, "/after").await,
        (StatusCode::OK, "path=/after".to_owned())
    );
}

/// Streams of one h2c connection: hyper serves them, and their bodiless requests go to the
/// instance over the same plain sockets as the direct path's.
#[tokio::test]
async fn h2_streams_get_answers_read_from_plain_upstream_sockets() {
    use http_body_util::Empty;
    use hyper::client::conn::http2 as client_http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let upstream = Scripted::start().await;
    let config = RouterConfig {
        upstream_timeout: Duration::from_millis(300),
        ..RouterConfig::default()
    };
    let harness = router_for(config, upstream.addr).await;
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
    let mut ask = |method: &'static str, path: &'static str| {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://app.test{path}"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let sent = sender.send_request(request);
        async move {
            let response = within(sent).await.expect("h2 response");
            let id = response.headers().get("x-request-id").cloned();
            assert!(id.is_some(), "{path}: no request id");
            read(response).await
        }
    };
    assert_eq!(
        ask("GET", "/chunked").await,
        (StatusCode::OK, "hello world".to_owned())
    );
    assert_eq!(
        ask("GET", "/hints").await,
        (StatusCode::OK, "ok".to_owned())
    );
    assert_eq!(
        ask("GET", "/close").await,
        (StatusCode::OK, "until close".to_owned())
    );
    assert_eq!(ask("HEAD", "/h").await, (StatusCode::OK, String::new()));
    assert_eq!(ask("GET", "/smuggle").await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(ask("GET", "/silent").await.0, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        ask("GET", "/x").await,
        (StatusCode::OK, "path=/x".to_owned())
    );
    // The upstream saw one Cookie field (h2 splits them; HTTP/1.1 wants one) and Host.
    let heads = upstream.heads();
    let head = heads.last().expect("heads").to_ascii_lowercase();
    assert!(head.contains("\r\ncookie: a=1; b=2\r\n"), "{head}");
    assert!(head.contains("\r\nhost: app.test\r\n"), "{head}");
    // Kept alive across chunked, informational and HEAD answers; the close-delimited body,
    // the refused answer and the silent upstream cost their connections.
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 4);
    let stats = harness.router.env_stats("app");
    assert_eq!((stats.failed, stats.in_flight), (2, 0));
}
