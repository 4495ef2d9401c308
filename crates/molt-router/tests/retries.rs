//! Retries before the response head, on both of the router's paths (molt's direct path and
//! hyper's, reached by HTTP/1.1 with the direct path off and by h2c): a bodiless GET, HEAD or
//! OPTIONS whose upstream reads it and closes (or resets) the connection before a whole
//! response head goes to another instance and is answered; a request with a body, or with
//! a method that is not a read, gets one attempt and a 502; an upstream that closes after
//! part of an answer's body is never retried (the client has the head already) and the
//! client sees the answer break off.
//!
//! The upstreams are scripted on raw sockets: each counts the requests it read, so a test
//! knows every request reached the failing instance before it was answered elsewhere.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2 as client_http2;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use molt_router::{EjectionPolicy, RouterConfig};
use support::{within, Harness};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "app.test";

/// What a scripted upstream does with each request it reads.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Answers `200 good` and keeps the connection.
    Answer,
    /// Closes the connection without a byte of answer.
    Close,
    /// Resets the connection (SO_LINGER 0) without a byte of answer.
    Reset,
    /// Sends the start of a response head, then closes.
    HalfHead,
    /// Sends a whole head announcing 100 bytes and 10 of them, then closes.
    PartBody,
}

/// A scripted upstream and the requests it has read (head and body).
struct Scripted {
    addr: SocketAddr,
    read: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let read = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&read);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, script, Arc::clone(&counted)));
            }
        });
        Self { addr, read }
    }

    fn requests(&self) -> usize {
        self.read.load(Ordering::SeqCst)
    }
}

/// Reads the requests of one connection (head, then a Content-Length body) and follows the
/// script for each.
async fn serve(mut stream: TcpStream, script: Script, read: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        let Some((head, _)) = support::read_request(&mut stream, &mut buf).await else {
            return;
        };
        let head = head.to_ascii_lowercase();
        read.fetch_add(1, Ordering::SeqCst);
        let head_request = head.starts_with("head ");
        match script {
            Script::Answer => {
                let body = if head_request { "" } else { "good" };
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n{body}");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
            Script::Close => return,
            Script::Reset => {
                // A zero linger makes the close a reset; it never blocks (the deprecation
                // is about lingering closes).
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(std::time::Duration::ZERO));
                return;
            }
            Script::HalfHead => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
                return;
            }
            Script::PartBody => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                let _ = stream.flush().await;
                return;
            }
        }
    }
}

/// How the requests reach the router.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// HTTP/1.1 on molt's direct path.
    Direct,
    /// HTTP/1.1 with the direct path off: hyper serves the client.
    Hyper,
    /// h2c with prior knowledge: hyper serves the client.
    H2c,
}

const PATHS: [Path; 3] = [Path::Direct, Path::Hyper, Path::H2c];

/// A router in front of `failing` and a good upstream, ejection off (so every round of the
/// rotation keeps trying the failing one) and a retry budget that never runs out here.
async fn router(path: Path, failing: &Scripted, good: &Scripted) -> Harness {
    let config = RouterConfig {
        direct_path: matches!(path, Path::Direct),
        ejection: EjectionPolicy {
            consecutive_failures: 0,
            ..EjectionPolicy::default()
        },
        retry_budget: molt_router::RetryBudget {
            ratio_percent: 100,
            min_per_second: 1000,
        },
        ..RouterConfig::default()
    };
    Harness::routing(config, &[(HOST, "app", &[failing.addr, good.addr])]).await
}

/// What the client got for one request: the status and the whole body, or why the answer
/// broke off.
type Got = Result<(StatusCode, String), String>;

/// Sends `count` requests with `method` (and `body` when not empty) one after another, each
/// on a fresh connection (an answer that breaks off may take its connection with it).
async fn send(
    path: Path,
    router: SocketAddr,
    method: &str,
    body: &'static str,
    count: usize,
) -> Vec<Got> {
    let mut got = Vec::new();
    for _ in 0..count {
        let stream = within(TcpStream::connect(router)).await.expect("connect");
        let request = Request::builder()
            .method(method)
            .uri(match path {
                Path::H2c => format!("http://{HOST}/"),
                _ => "/".to_owned(),
            })
            .header("host", HOST)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request");
        let response = match path {
            Path::H2c => {
                let (mut sender, connection) = within(client_http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                ))
                .await
                .expect("h2 handshake");
                tokio::spawn(connection);
                within(sender.send_request(request)).await
            }
            Path::Direct | Path::Hyper => {
                let (mut sender, connection) =
                    within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                        .await
                        .expect("handshake");
                tokio::spawn(connection);
                within(sender.send_request(request)).await
            }
        };
        let answer = match response {
            Ok(response) => {
                let status = response.status();
                match within(response.into_body().collect()).await {
                    Ok(body) => Ok((
                        status,
                        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                    )),
                    Err(error) => Err(format!("{status}, then the body broke off: {error}")),
                }
            }
            Err(error) => Err(format!("no answer: {error}")),
        };
        got.push(answer);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_upstream_fails_before_the_head_is_answered_by_another() {
    const REQUESTS: usize = 24;
    for script in [Script::Close, Script::Reset, Script::HalfHead] {
        for path in PATHS {
            let failing = Scripted::start(script).await;
            let good = Scripted::start(Script::Answer).await;
            let harness = router(path, &failing, &good).await;
            for method in ["GET", "HEAD", "OPTIONS"] {
                let got = send(path, harness.addr, method, "", REQUESTS).await;
                let expected_body = if method == "HEAD" { "" } else { "good" };
                for answer in &got {
                    assert_eq!(
                        answer,
                        &Ok((StatusCode::OK, expected_body.to_owned())),
                        "{script:?}/{path:?}/{method}: {got:?}"
                    );
                }
            }
            // The failing instance read requests (they were sent, then retried), and the
            // good one answered all of them.
            let tried = failing.requests();
            assert!(
                tried > 0,
                "{script:?}/{path:?}: the failing instance read nothing"
            );
            assert_eq!(good.requests(), 3 * REQUESTS, "{script:?}/{path:?}");
            let traffic = harness.router.env_traffic("app");
            assert_eq!(
                traffic.retries as usize, tried,
                "{script:?}/{path:?}: {traffic:?}"
            );
            let stats = harness.router.env_stats("app");
            assert_eq!(stats.failed, 0, "{script:?}/{path:?}");
            harness.shutdown.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_or_a_method_that_is_not_a_read_gets_one_attempt() {
    const REQUESTS: usize = 16;
    for path in PATHS {
        let failing = Scripted::start(Script::Close).await;
        let good = Scripted::start(Script::Answer).await;
        let harness = router(path, &failing, &good).await;
        let mut refused = 0;
        for (method, body) in [("POST", "a body"), ("DELETE", ""), ("PUT", "x")] {
            let got = send(path, harness.addr, method, body, REQUESTS).await;
            for answer in &got {
                match answer {
                    Ok((StatusCode::OK, text)) => assert_eq!(text, "good"),
                    Ok((StatusCode::BAD_GATEWAY, _)) => refused += 1,
                    other => panic!("{path:?}/{method}: {other:?}"),
                }
            }
        }
        // Every request the failing instance read is a 502 the client got: none went on.
        assert!(
            refused > 0,
            "{path:?}: no request reached the failing instance"
        );
        assert_eq!(failing.requests(), refused, "{path:?}");
        assert_eq!(good.requests(), 3 * REQUESTS - refused, "{path:?}");
        assert_eq!(harness.router.env_traffic("app").retries, 0, "{path:?}");
        harness.shutdown.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_breaks_off_after_its_head_is_not_retried() {
    const REQUESTS: usize = 16;
    for path in PATHS {
        let failing = Scripted::start(Script::PartBody).await;
        let good = Scripted::start(Script::Answer).await;
        let harness = router(path, &failing, &good).await;
        let got = send(path, harness.addr, "GET", "", REQUESTS).await;
        let mut broken = 0;
        for answer in &got {
            match answer {
                Ok((StatusCode::OK, text)) => assert_eq!(text, "good", "{path:?}"),
                Err(_) => broken += 1,
                other => panic!("{path:?}: {other:?}"),
            }
        }
        assert!(
            broken > 0,
            "{path:?}: no request reached the failing instance"
        );
        assert_eq!(failing.requests(), broken, "{path:?}: {got:?}");
        assert_eq!(good.requests(), REQUESTS - broken, "{path:?}");
        assert_eq!(harness.router.env_traffic("app").retries, 0, "{path:?}");
        harness.shutdown.cancel();
    }
}
