//! Request bodies on the direct path, against a raw upstream that records exactly what
//! reached it (heads as written, chunk-size lines, trailers): bodies framed by length or in
//! chunks streamed through, `Expect: 100-continue`, the body limit, bodies shorter or longer
//! than announced, a body on a GET, an upstream that answers before the body is all there,
//! and a request with a body that is never sent twice.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use molt_router::{Backend, RouteLimits, RouteTable, RouterConfig, Upstream};
use support::{closing_upstream, eventually, raw, within, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What reached the upstream for one request: its head as written, the chunk-size lines of
/// a chunked body and its trailer lines, and how many body bytes it carried.
#[derive(Debug, Clone, Default)]
struct Seen {
    head: String,
    size_lines: Vec<String>,
    trailers: Vec<String>,
    body: usize,
}

/// A raw HTTP/1.1 upstream that reads every body to its end (by length or by chunks) and
/// answers `"{method} {path} body={n}"`; `/early` is answered 403 as soon as its head
/// arrives, and the connection closed; `/interim` gets an unasked `100 Continue` first.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests whose head arrived.
    heads: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (record, count, opened) = (
            Arc::clone(&seen),
            Arc::clone(&heads),
            Arc::clone(&connections),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                opened.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(record_requests(
                    stream,
                    Arc::clone(&record),
                    Arc::clone(&count),
                ));
            }
        });
        Self {
            addr,
            seen,
            heads,
            connections,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

/// Reads from `stream` into `buf` until it holds `n` bytes; false when the stream ended.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    while buf.len() < n {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
        }
    }
    true
}

/// The next CRLF-terminated line of `buf` (read on as needed), without its CRLF.
async fn line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..at]).into_owned();
            buf.drain(..at + 2);
            return Some(line);
        }
        let have = buf.len();
        if !fill(stream, buf, have + 1).await {
            return None;
        }
    }
}

async fn record_requests(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    heads: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        let mut request = Seen::default();
        loop {
            let Some(line) = line(&mut stream, &mut buf).await else {
                return;
            };
            let end = line.is_empty();
            request.head.push_str(&line);
            request.head.push_str("\r\n");
            if end {
                break;
            }
        }
        heads.fetch_add(1, Ordering::SeqCst);
        let lower = request.head.to_ascii_lowercase();
        let mut words = request.head.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or("").to_owned(),
            words.next().unwrap_or("").to_owned(),
        );
        if path == "/early" {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
                )
                .await;
            return;
        }
        if path == "/interim"
            && stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        if lower.contains("\r\ntransfer-encoding: chunked\r\n") {
            loop {
                let Some(size_line) = line(&mut stream, &mut buf).await else {
                    return;
                };
                let digits = size_line.split([';', ' ', '\t']).next().unwrap_or("");
                let Ok(size) = usize::from_str_radix(digits, 16) else {
                    return;
                };
                request.size_lines.push(size_line);
                if size == 0 {
                    break;
                }
                if !fill(&mut stream, &mut buf, size + 2).await || &buf[size..size + 2] != b"\r\n" {
                    return;
                }
                buf.drain(..size + 2);
                request.body += size;
            }
            loop {
                let Some(trailer) = line(&mut stream, &mut buf).await else {
                    return;
                };
                if trailer.is_empty() {
                    break;
                }
                request.trailers.push(trailer);
            }
        } else {
            let length = lower
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if !fill(&mut stream, &mut buf, length).await {
                return;
            }
            buf.drain(..length);
            request.body = length;
        }
        let answer = format!("{method} {path} body={}", request.body);
        seen.lock().expect("seen").push(request);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A router routing `app.test` to `upstreams`, with `limits` for the app.
async fn router_for(upstreams: &[SocketAddr], limits: RouteLimits) -> Harness {
    let harness = Harness::start(RouterConfig::default()).await;
    let upstreams = upstreams
        .iter()
        .enumerate()
        .map(|(i, addr)| Upstream {
            instance: format!("app-{i}"),
            addr: *addr,
        })
        .collect();
    let mut table = RouteTable::new();
    table.insert(
        "app.test",
        Backend {
            limits,
            ..Backend::new("app", upstreams)
        },
    );
    within(harness.router.publish(table)).await;
    harness
}

const POST: &str = "POST /up HTTP/1.1\r\nHost: app.test\r\n";

#[tokio::test]
async fn bodies_reach_the_upstream_as_the_client_framed_them_on_one_connection() {
    let upstream = Recorder::start().await;
    let harness = router_for(&[upstream.addr], RouteLimits::default()).await;
    let mut pipeline = format!("{POST}Content-Length: 4096\r\n\r\n").into_bytes();
    pipeline.extend_from_slice(&[b'x'; 4096]);
    pipeline.extend_from_slice(
        b"PUT /chunks HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n\
          GET /with-body HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc\
          GET /last HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    let response = raw(harness.addr, &pipeline).await;
    for answer in [
        "POST /up body=4096",
        "PUT /chunks body=11",
        "GET /with-body body=3",
        "GET /last body=0",
    ] {
        assert!(response.contains(answer), "{answer} in {response}");
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 4);
    // Written from the client's bytes (hyper's client would have written `content-length`).
    assert!(
        seen[0].head.contains("\r\nContent-Length: 4096\r\n"),
        "{}",
        seen[0].head
    );
    // Chunks and trailers passed on as they came (hyper would have re-chunked them).
    assert_eq!(seen[1].size_lines, ["5;name=value", "6", "0"]);
    assert_eq!(seen[1].trailers, ["X-Sum: 11"]);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    let stats = harness.router.env_stats("app");
    assert_eq!((stats.accepted, stats.answered, stats.failed), (4, 4, 0));
}

#[tokio::test]
async fn expect_100_continue_is_answered_once_the_head_is_upstream() {
    let upstream = Recorder::start().await;
    let harness = router_for(&[upstream.addr], RouteLimits::default()).await;
    let mut client = within(TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    let head = format!("{POST}Content-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    within(client.write_all(head.as_bytes()))
        .await
        .expect("head");
    let mut interim = [0u8; 25];
    within(client.read_exact(&mut interim))
        .await
        .expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(
        eventually(|| upstream.heads.load(Ordering::SeqCst) == 1).await,
        "the head went upstream before the body"
    );
    within(client.write_all(b"hello")).await.expect("body");
    let mut response = vec![0u8; 512];
    let n = within(client.read(&mut response)).await.expect("response");
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("POST /up body=5"), "{response}");
    let seen = upstream.seen();
    assert!(
        !seen[0].head.to_ascii_lowercase().contains("expect"),
        "{}",
        seen[0].head
    );
}

#[tokio::test]
async fn bodies_over_the_app_limit_are_refused_up_front_or_cut_off() {
    let upstream = Recorder::start().await;
    let limits = RouteLimits {
        max_body_bytes: Some(1000),
        upstream_timeout: None,
    };
    let harness = router_for(&[upstream.addr], limits).await;
    // Declared too large: 413 at once, no 100 Continue, and the connection closes.
    let declared = format!("{POST}Content-Length: 1001\r\nExpect: 100-continue\r\n\r\n");
    let response = raw(harness.addr, declared.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(!response.contains("100 Continue"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    assert_eq!(upstream.heads.load(Ordering::SeqCst), 0);
    // Chunks past the limit: the upstream never gets the whole body.
    let chunk = format!("258\r\n{}\r\n", "x".repeat(600));
    let chunked = format!("{POST}Transfer-Encoding: chunked\r\n\r\n{chunk}{chunk}{chunk}0\r\n\r\n");
    let response = raw(harness.addr, chunked.as_bytes()).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 413"),
        "{response}"
    );
    assert!(upstream.seen().is_empty());
    let stats = harness.router.env_stats("app");
    assert_eq!((stats.accepted, stats.failed, stats.in_flight), (2, 2, 0));
    // Within the limit all is well.
    let fits =
        format!("{POST}Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n");
    assert!(raw(harness.addr, fits.as_bytes())
        .await
        .contains("body=600"));
}

#[tokio::test]
async fn a_body_longer_than_announced_is_not_taken_for_the_body() {
    let upstream = Recorder::start().await;
    let harness = router_for(&[upstream.addr], RouteLimits::default()).await;
    // What follows the 5 announced bytes is read as the next request: not one, so 400.
    let request = format!("{POST}Content-Length: 5\r\n\r\nhello world\r\n\r\n");
    let response = raw(harness.addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("POST /up body=5"), "{response}");
    assert!(response.contains("HTTP/1.1 400"), "{response}");
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test]
async fn an_early_answer_ends_the_upload_and_the_connection() {
    let upstream = Recorder::start().await;
    let harness = router_for(&[upstream.addr], RouteLimits::default()).await;
    let mut client = within(TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    let head = "POST /early HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1048576\r\n\r\n";
    within(client.write_all(head.as_bytes()))
        .await
        .expect("head");
    let _ = within(client.write_all(&[b'x'; 16 * 1024])).await;
    let mut response = Vec::new();
    let _ = within(client.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    let stats = harness.router.env_stats("app");
    assert_eq!((stats.accepted, stats.answered, stats.in_flight), (1, 1, 0));
}

#[tokio::test]
async fn a_request_with_a_body_goes_to_one_instance_only() {
    let upstream = Recorder::start().await;
    let closing = closing_upstream().await;
    let harness = router_for(&[closing, upstream.addr], RouteLimits::default()).await;
    let (mut ok, mut bad_gateway) = (0, 0);
    for _ in 0..8 {
        let request = format!("{POST}Connection: close\r\nContent-Length: 2\r\n\r\nhi");
        let response = raw(harness.addr, request.as_bytes()).await;
        if response.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else {
            assert!(response.starts_with("HTTP/1.1 502"), "{response}");
            bad_gateway += 1;
        }
    }
    // Each POST that met the closing instance failed there and was not sent again.
    assert!(
        ok > 0 && bad_gateway > 0,
        "{ok} answered, {bad_gateway} failed"
    );
    assert_eq!(upstream.seen().len(), ok);
    let stats = harness.router.env_stats("app");
    assert_eq!(
        (stats.answered, stats.failed),
        (ok as u64, bad_gateway as u64)
    );
}

#[tokio::test]
async fn an_unasked_interim_answer_does_not_stop_the_upload() {
    let upstream = Recorder::start().await;
    let harness = router_for(&[upstream.addr], RouteLimits::default()).await;
    let mut client = within(TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    let head = "POST /interim HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: 8192\r\n\r\n";
    within(client.write_all(head.as_bytes()))
        .await
        .expect("head");
    within(client.write_all(&[b'x'; 4096])).await.expect("body");
    assert!(
        eventually(|| upstream.heads.load(Ordering::SeqCst) == 1).await,
        "the head went upstream"
    );
    // The upstream's 100 Continue is on its way back while the rest of the body follows.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    within(client.write_all(&[b'x'; 4096])).await.expect("body");
    let mut response = Vec::new();
    let _ = within(client.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("POST /interim body=8192"), "{response}");
}
