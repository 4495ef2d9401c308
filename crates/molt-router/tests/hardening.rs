//! Malformed input, limits, request ids, access log and the router's own pages, end to end:
//! raw TCP clients for what a well-behaved client cannot send, real hyper upstreams that
//! count what reaches them.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use molt_router::{Backend, EnvStats, Maintenance, RouteTable, RouterConfig, Upstream};
use support::{eventually, raw, within, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that counts the requests that reach it (`seen`) and the bodies it read to
/// the end (`complete`), and answers with what it saw.
struct Counting {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    complete: Arc<AtomicUsize>,
}

impl Counting {
    async fn start(name: &'static str) -> Self {
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
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let text = format!(
                            "{name} path={} rid={} fwd={}",
                            request.uri(),
                            header("x-request-id"),
                            header("forwarded"),
                        );
                        let body = request.into_body().collect().await;
                        let Ok(body) = body else {
                            return Ok::<_, Infallible>(Response::new(Full::from("broken")));
                        };
                        finished.fetch_add(1, Ordering::SeqCst);
                        let text = format!("{text} body={}", body.to_bytes().len());
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

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

fn backend(env: &str, addr: SocketAddr) -> Backend {
    Backend::new(
        env,
        vec![Upstream {
            instance: format!("{env}-0"),
            addr,
        }],
    )
}

async fn router_for(config: RouterConfig, addr: SocketAddr) -> Harness {
    let harness = Harness::start(config).await;
    let mut table = RouteTable::new();
    table.insert("app.test", backend("app", addr));
    harness.router.publish(table).await;
    harness
}

/// The status code of a raw response, or `None` when the connection closed without one.
fn status_of(response: &str) -> Option<u16> {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

const CHUNKED: &str = "Transfer-Encoding: chunked\r\n";

#[tokio::test]
async fn malformed_requests_are_refused_and_never_reach_the_upstream() {
    let upstream = Counting::start("app").await;
    let harness = router_for(RouterConfig::default(), upstream.addr).await;
    let head = "POST / HTTP/1.1\r\nHost: app.test\r\n";
    // (name, request, the answers that are acceptable: a status, or 0 for a bare close)
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "CL then TE",
            format!("{head}Content-Length: 5\r\n{CHUNKED}\r\n5\r\nhello\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "TE then CL",
            format!("{head}{CHUNKED}Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "CL twice, equal",
            format!("{head}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            &[400],
        ),
        (
            "CL twice, differing",
            format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            &[400],
        ),
        (
            "CL list, equal",
            format!("{head}Content-Length: 5, 5\r\n\r\nhello"),
            &[400],
        ),
        (
            "CL list, differing",
            format!("{head}Content-Length: 5, 6\r\n\r\nhello!"),
            &[400],
        ),
        (
            "CL not a number",
            format!("{head}Content-Length: 0x5\r\n\r\nhello"),
            &[400],
        ),
        (
            "CL negative",
            format!("{head}Content-Length: -1\r\n\r\n"),
            &[400],
        ),
        (
            "TE chunked, identity",
            format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "TE identity, chunked",
            format!("{head}Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "TE xchunked",
            format!("{head}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "TE chunked twice",
            format!("{head}{CHUNKED}{CHUNKED}\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "TE chunked, chunked",
            format!("{head}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "TE in HTTP/1.0",
            format!("POST / HTTP/1.0\r\nHost: app.test\r\n{CHUNKED}\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "obs-fold",
            format!("{head}X-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n"),
            &[400],
        ),
        (
            "obs-fold tab",
            format!("{head}X-A: 1\r\n\tfolded\r\nContent-Length: 0\r\n\r\n"),
            &[400],
        ),
        (
            "NUL in value",
            format!("{head}X-A: a\0b\r\nContent-Length: 0\r\n\r\n"),
            &[400],
        ),
        (
            "bare CR in value",
            format!("{head}X-A: a\rb\r\nContent-Length: 0\r\n\r\n"),
            &[400],
        ),
        (
            "space before colon",
            format!("{head}Content-Length : 5\r\n\r\nhello"),
            &[400],
        ),
        (
            "bad header name",
            format!("{head}X(A): 1\r\nContent-Length: 0\r\n\r\n"),
            &[400],
        ),
        (
            "chunk size not hex",
            format!("{head}{CHUNKED}\r\nzz\r\nhello\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "chunk size 0x",
            format!("{head}{CHUNKED}\r\n0x5\r\nhello\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "chunk size negative",
            format!("{head}{CHUNKED}\r\n-5\r\nhello\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "chunk size overflow",
            format!("{head}{CHUNKED}\r\n1ffffffffffffffff\r\nx\r\n"),
            &[400],
        ),
        (
            "chunk size bare LF",
            format!("{head}{CHUNKED}\r\n5\nhello\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n".into(),
            &[400],
        ),
        (
            "absolute-form, other host",
            "GET http://other.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n".into(),
            &[400],
        ),
        (
            "absolute-form, userinfo",
            "GET http://u@app.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n".into(),
            &[400],
        ),
        (
            "Host with a space",
            "GET / HTTP/1.1\r\nHost: app.test x\r\n\r\n".into(),
            &[400],
        ),
        (
            "Host with a slash",
            "GET / HTTP/1.1\r\nHost: app.test/x\r\n\r\n".into(),
            &[400],
        ),
        ("missing Host", "GET / HTTP/1.1\r\n\r\n".into(), &[400]),
        (
            "CONNECT",
            "CONNECT app.test:80 HTTP/1.1\r\nHost: app.test:80\r\n\r\n".into(),
            &[405],
        ),
        (
            "garbage request line",
            "GET /\x01 HTTP/1.1\r\nHost: app.test\r\n\r\n".into(),
            &[400],
        ),
        (
            "HTTP/2.0 request line",
            "GET / HTTP/2.0\r\nHost: app.test\r\n\r\n".into(),
            &[400, 505, 0],
        ),
    ];
    for (name, request, allowed) in &cases {
        eprintln!("case {name}");
        let response = raw(harness.addr, request.as_bytes()).await;
        let status = status_of(&response).unwrap_or(0);
        assert!(
            allowed.contains(&status),
            "{name}: got {status}, want one of {allowed:?}; response: {response:?}"
        );
        assert_eq!(upstream.seen(), 0, "{name} reached the upstream");
    }
    // The same router and upstream do serve a well-formed request.
    let response = raw(
        harness.addr,
        b"POST /ok HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&response), Some(200), "{response}");
    assert!(response.contains("body=5"), "{response}");
    assert_eq!(upstream.seen(), 1);
    assert_eq!(harness.router.env_stats("app").failed, 0);
}

#[tokio::test]
async fn request_bodies_are_taken_whole_or_refused_on_both_paths() {
    let head = "POST / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n";
    // (name, request, acceptable statuses (0: a bare close), whether the upstream reads a
    // whole body)
    let cases: Vec<(&str, String, &[u16], bool)> = vec![
        (
            "chunk extensions",
            format!("{head}{CHUNKED}\r\n5;a=1;b=\"q\"\r\nhello\r\n0;end\r\n\r\n"),
            &[200],
            true,
        ),
        (
            "trailers",
            format!("{head}{CHUNKED}\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\nX-More: a\r\n\r\n"),
            &[200],
            true,
        ),
        (
            "a body on a GET",
            "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
                .into(),
            &[200],
            true,
        ),
        (
            "longer than announced",
            format!("{head}Content-Length: 3\r\n\r\nabcdef"),
            &[200],
            true,
        ),
        (
            "control byte in a chunk extension",
            format!("{head}{CHUNKED}\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n"),
            &[400],
            false,
        ),
        (
            "chunk longer than its size",
            format!("{head}{CHUNKED}\r\n3\r\nhello\r\n0\r\n\r\n"),
            &[400, 0],
            false,
        ),
        (
            "bare LF in trailers",
            format!("{head}{CHUNKED}\r\n5\r\nhello\r\n0\r\nX-Sum: 5\n\r\n"),
            &[400, 0],
            false,
        ),
    ];
    for direct_path in [true, false] {
        let upstream = Counting::start("app").await;
        let config = RouterConfig {
            direct_path,
            ..RouterConfig::default()
        };
        let harness = router_for(config, upstream.addr).await;
        let mut whole = 0;
        for (name, request, allowed, complete) in &cases {
            let response = raw(harness.addr, request.as_bytes()).await;
            let status = status_of(&response).unwrap_or(0);
            assert!(
                allowed.contains(&status),
                "{name} (direct path {direct_path}): got {status}, want one of {allowed:?}; {response:?}"
            );
            whole += usize::from(*complete);
            let read = upstream.complete.load(Ordering::SeqCst);
            assert_eq!(read, whole, "{name} (direct path {direct_path})");
        }
        assert!(
            eventually(|| harness.router.env_stats("app").in_flight == 0).await,
            "requests left in flight"
        );
        let stats = harness.router.env_stats("app");
        assert_eq!(stats.accepted, stats.answered + stats.failed, "{stats:?}");
    }
    // Shorter than announced: see tests/bodies.rs (the client has to close to end it).
}

#[tokio::test]
async fn pipelined_request_after_a_good_one_is_refused_alone() {
    let upstream = Counting::start("app").await;
    let harness = router_for(RouterConfig::default(), upstream.addr).await;
    let request = format!(
        "GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n\
         POST /smuggled HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n{CHUNKED}\r\n0\r\n\r\n"
    );
    let response = raw(harness.addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("path=/first"), "{response}");
    assert!(response.contains("HTTP/1.1 400"), "{response}");
    assert!(!response.contains("smuggled"), "{response}");
    assert_eq!(upstream.seen(), 1);
}

#[tokio::test]
async fn head_and_body_limits() {
    let upstream = Counting::start("app").await;
    let config = RouterConfig {
        max_header_bytes: 8 * 1024,
        max_headers: 20,
        max_body_bytes: 1000,
        ..RouterConfig::default()
    };
    let harness = router_for(config, upstream.addr).await;

    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
        "v".repeat(9 * 1024)
    );
    assert_eq!(
        status_of(&raw(harness.addr, big.as_bytes()).await),
        Some(431)
    );

    let many: String = (0..21).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: app.test\r\n{many}\r\n");
    assert_eq!(
        status_of(&raw(harness.addr, many.as_bytes()).await),
        Some(431)
    );

    let declared = "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1001\r\n\r\n";
    assert_eq!(
        status_of(&raw(harness.addr, declared.as_bytes()).await),
        Some(413)
    );
    assert_eq!(upstream.seen(), 0);

    // A chunked body is cut off once it passes the limit: the upstream may see the start
    // of the request but never a complete body; the client gets 413 or a closed connection.
    let chunk = format!("258\r\n{}\r\n", "x".repeat(600));
    let chunked =
        format!("POST / HTTP/1.1\r\nHost: app.test\r\n{CHUNKED}\r\n{chunk}{chunk}{chunk}0\r\n\r\n");
    let response = raw(harness.addr, chunked.as_bytes()).await;
    let status = status_of(&response);
    assert!(matches!(status, Some(413) | None), "{response}");
    assert_eq!(upstream.complete.load(Ordering::SeqCst), 0);
    // Accepted and ended by the router: counted failed, so the counters balance.
    let stats = harness.router.env_stats("app");
    assert_eq!((stats.accepted, stats.failed), (1, 1), "{stats:?}");

    // Within the limits all is well.
    let fits = format!(
        "POST / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{CHUNKED}\r\n{chunk}0\r\n\r\n"
    );
    let response = raw(harness.addr, fits.as_bytes()).await;
    assert!(response.contains("body=600"), "{response}");
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_by_the_header_read_timeout() {
    let upstream = Counting::start("app").await;
    let config = RouterConfig {
        header_read_timeout: Duration::from_millis(300),
        ..RouterConfig::default()
    };
    let harness = router_for(config, upstream.addr).await;
    let stream = within(TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let reading = tokio::spawn(async move {
        let mut response = Vec::new();
        let _ = reader.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    });
    let trickle = b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: "
        .iter()
        .chain([b'z'; 200].iter());
    // One byte every 20 ms, at most 240 bytes (< 5 s): the router gives up long before.
    for byte in trickle {
        if reading.is_finished() || writer.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = within(reading).await.expect("reader");
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408"),
        "{response}"
    );
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "408 expected: {response:?}"
    );
    assert_eq!(upstream.seen(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let upstream = Counting::start("app").await;
    let config = RouterConfig {
        idle_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    };
    let harness = router_for(config, upstream.addr).await;
    let mut stream = within(TcpStream::connect(harness.addr))
        .await
        .expect("connect");
    within(stream.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n"))
        .await
        .expect("write");
    let mut response = Vec::new();
    // Keep-alive: the response comes, then the connection stays open until idle.
    within(stream.read_to_end(&mut response))
        .await
        .expect("closed by the router");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(upstream.seen(), 1);
}

#[tokio::test]
async fn request_ids_and_forwarded_reach_the_upstream_and_the_client() {
    let upstream = Counting::start("app").await;
    let harness = router_for(RouterConfig::default(), upstream.addr).await;
    let send = |extra: &'static str| {
        let addr = harness.addr;
        async move {
            let request =
                format!("GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{extra}\r\n");
            raw(addr, request.as_bytes()).await.to_ascii_lowercase()
        }
    };

    let kept = send("X-Request-Id: client-id_1.2\r\nForwarded: for=192.0.2.1\r\n").await;
    assert!(kept.contains("x-request-id: client-id_1.2\r\n"), "{kept}");
    assert!(kept.contains("rid=client-id_1.2 "), "{kept}");
    assert!(
        kept.contains("fwd=for=192.0.2.1, for=127.0.0.1;proto=http;host=app.test body"),
        "{kept}"
    );

    let replaced = send("X-Request-Id: no spaces please\r\n").await;
    let made = replaced
        .lines()
        .find_map(|line| line.strip_prefix("x-request-id: "))
        .expect("an id header");
    assert!(made.len() > 4 && made.contains('-'), "{replaced}");
    assert!(replaced.contains(&format!("rid={made} ")), "{replaced}");

    let fresh = send("").await;
    let other = fresh
        .lines()
        .find_map(|line| line.strip_prefix("x-request-id: "))
        .expect("an id header");
    assert_ne!(made, other);

    // The router's own answers carry one too.
    let mut client = harness.client().await;
    let response = client
        .send("GET", Some("nobody.test"), "/", "")
        .await
        .expect("response");
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn unknown_host_page_is_html_for_browsers_and_text_otherwise() {
    let upstream = Counting::start("app").await;
    let harness = router_for(RouterConfig::default(), upstream.addr).await;
    let text = raw(
        harness.addr,
        b"GET / HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), Some(404));
    assert!(text.contains("text/plain"), "{text}");
    assert!(
        text.ends_with("molt: no app answers to host 'nobody.test' on this server\n"),
        "{text}"
    );
    let html = raw(
        harness.addr,
        b"GET / HTTP/1.1\r\nHost: nobody.test\r\nAccept: text/html,*/*\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&html), Some(404));
    assert!(html.contains("text/html"), "{html}");
    assert!(html.contains("<strong>nobody.test</strong>"), "{html}");
    assert_eq!(harness.router.unrouted(), 2);
}

#[tokio::test]
async fn maintenance_answers_503_with_retry_after_and_counts_nothing() {
    let upstream = Counting::start("app").await;
    let harness = Harness::start(RouterConfig::default()).await;
    let mut table = RouteTable::new();
    table.insert(
        "app.test",
        Backend {
            maintenance: Some(Maintenance {
                retry_after_secs: 120,
                message: "Back at 10:00 <UTC>".to_owned(),
            }),
            ..backend("app", upstream.addr)
        },
    );
    harness.router.publish(table).await;
    let text = raw(
        harness.addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&text), Some(503), "{text}");
    let text = text.to_ascii_lowercase();
    assert!(text.contains("retry-after: 120\r\n"), "{text}");
    assert!(text.ends_with("back at 10:00 <utc>\n"), "{text}");
    let html = raw(
        harness.addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(html.contains("Back at 10:00 &lt;UTC&gt;"), "{html}");
    assert_eq!(upstream.seen(), 0);
    assert_eq!(harness.router.env_stats("app"), EnvStats::default());
}

#[tokio::test]
async fn path_prefixes_route_to_their_own_backend() {
    let app = Counting::start("app").await;
    let api = Counting::start("api").await;
    let harness = Harness::start(RouterConfig::default()).await;
    let mut table = RouteTable::new();
    table.insert("app.test", backend("app", app.addr));
    table.insert_with_prefix("app.test", "/api", backend("api", api.addr));
    harness.router.publish(table).await;
    let mut client = harness.client().await;
    for (path, want) in [
        ("/", "app path=/"),
        ("/api", "api path=/api"),
        ("/api/users?x=1", "api path=/api/users?x=1"),
        ("/apis", "app path=/apis"),
    ] {
        let (status, body) = client.get(Some("app.test"), path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with(want), "{path}: {body}");
    }
    assert_eq!((app.seen(), api.seen()), (2, 2));
    assert_eq!(harness.router.env_stats("api").answered, 2);
}

/// Collects the fields of `molt_router::access` events.
#[derive(Clone, Default)]
struct AccessLines(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for AccessLines {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "molt_router::access"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", field.name(), value));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().expect("lines").push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn access_log_has_one_line_per_request_when_enabled() {
    let lines = AccessLines::default();
    let _subscriber = tracing::subscriber::set_default(lines.clone());
    let upstream = Counting::start("app").await;
    let config = RouterConfig {
        access_log: true,
        ..RouterConfig::default()
    };
    let harness = router_for(config, upstream.addr).await;
    let mut client = harness.client().await;
    assert_eq!(
        client.get(Some("app.test"), "/hello").await.0,
        StatusCode::OK
    );
    assert_eq!(
        client.get(Some("none.test"), "/").await.0,
        StatusCode::NOT_FOUND
    );

    let lines = lines.0.lock().expect("lines").clone();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for field in [
        "request_id=\"",
        "client=127.0.0.1",
        "scheme=\"http\"",
        "host=\"app.test\"",
        "method=GET",
        "path=/hello",
        "status=200",
        "env=\"app\"",
        "instance=\"app-0\"",
        "duration_us=",
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
    assert!(
        lines[1].contains("status=404") && lines[1].contains("env=\"-\""),
        "{}",
        lines[1]
    );
}

#[tokio::test]
async fn access_log_is_off_by_default() {
    let lines = AccessLines::default();
    let _subscriber = tracing::subscriber::set_default(lines.clone());
    let upstream = Counting::start("app").await;
    let harness = router_for(RouterConfig::default(), upstream.addr).await;
    let mut client = harness.client().await;
    assert_eq!(client.get(Some("app.test"), "/").await.0, StatusCode::OK);
    assert!(lines.0.lock().expect("lines").is_empty());
}
