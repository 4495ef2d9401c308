//! Upstream connections under sustained load: every path (plain HTTP/1.1 on the direct path
//! and on hyper's, h2c, HTTP/1.1 and h2 over TLS) reuses its pooled connections instead of
//! opening new ones, whether the router serves from one multi-thread runtime (as `molt
//! serve`'s shared runtime does) or from its own threads; with a cap on connections per
//! instance, the instance never has more open than the cap and every request is answered; a
//! request that finds the instance holding every connection gets a 503 after the queue
//! timeout.
//!
//! The upstream counts the connections it accepts, and at each accept those of its
//! connections the router has not closed (a peek finds no end of stream on them). With a pool keyed
//! by OS thread, work stealing on a multi-thread runtime moved connections into shards no
//! later request looked at, and 64 clients ended up holding over a thousand sockets to one
//! instance.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1 as client_http1, http2 as client_http2};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use molt_router::tls::{CertSource, HostCert};
use molt_router::{Backend, RouteLimits, RouteTable, Router, RouterConfig, Upstream};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{eventually, read, silent_upstream, table, within, Client, Harness};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

const HOST: &str = "app.test";

/// The sustained load: keep-alive HTTP/1.1 clients (or h2 connections times the streams each
/// keeps in flight), each sending its requests one after another, through a router without a
/// cap.
const SUSTAINED: Load = Load {
    clients: 16,
    requests: 150,
    h2_connections: 4,
    h2_streams: 4,
    cap: 0,
};

/// 32 clients (or h2 streams) through a router capped at 4 connections per instance.
const CAPPED: Load = Load {
    clients: 32,
    requests: 40,
    h2_connections: 4,
    h2_streams: 8,
    cap: 4,
};

/// How much load a run sends, and the router's cap on connections per instance.
#[derive(Debug, Clone, Copy)]
struct Load {
    clients: usize,
    requests: usize,
    h2_connections: usize,
    h2_streams: usize,
    /// `RouterConfig::max_connections_per_upstream`.
    cap: usize,
}

/// What one run measured.
struct Measured {
    requests: usize,
    /// Connections the upstream accepted.
    opened: usize,
    /// Most connections established to the upstream at once, in the kernel's view.
    peak: usize,
}

/// How the router serves its listeners.
#[derive(Debug, Clone, Copy)]
enum Serving {
    /// `Router::serve` / `serve_tls` on the test's multi-thread runtime.
    SharedRuntime,
    /// `Router::serve_on_threads` / `serve_tls_on_threads`, two threads.
    OwnThreads,
}

/// Which client protocol and listener the load uses.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// HTTP/1.1 GETs on the plain listener: molt's direct path.
    PlainDirect,
    /// HTTP/1.1 GETs on the plain listener with the direct path off: hyper serves them.
    PlainHyper,
    /// HTTP/1.1 POSTs on the plain listener: hyper serves requests with bodies.
    PlainPost,
    /// h2c with prior knowledge on the plain listener.
    H2c,
    /// HTTP/1.1 over TLS (direct path).
    TlsHttp1,
    /// h2 over TLS.
    TlsH2,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_reuses_upstream_connections_on_every_path() {
    let paths = [
        Path::PlainDirect,
        Path::PlainHyper,
        Path::PlainPost,
        Path::H2c,
        Path::TlsHttp1,
        Path::TlsH2,
    ];
    let mut report = Vec::new();
    for serving in [Serving::SharedRuntime, Serving::OwnThreads] {
        for path in paths {
            let Measured {
                requests, opened, ..
            } = load(serving, path, SUSTAINED).await;
            report.push(format!(
                "{serving:?}/{path:?}: {requests} requests, {opened} upstream connections"
            ));
            // Each request holds one upstream connection at a time; a connection free again
            // serves the next one. At most one per request in flight, then.
            let in_flight = match path {
                Path::H2c | Path::TlsH2 => SUSTAINED.h2_connections * SUSTAINED.h2_streams,
                _ => SUSTAINED.clients,
            };
            assert!(
                opened <= in_flight,
                "{serving:?}/{path:?}: {opened} upstream connections for {in_flight} requests \
                 in flight ({requests} requests)\n{}",
                report.join("\n")
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_instance_never_has_more_connections_open_and_every_request_is_answered() {
    let paths = [
        Path::PlainDirect,
        Path::PlainHyper,
        Path::PlainPost,
        Path::H2c,
        Path::TlsHttp1,
        Path::TlsH2,
    ];
    let mut report = Vec::new();
    for serving in [Serving::SharedRuntime, Serving::OwnThreads] {
        for path in paths {
            let Measured {
                requests,
                opened,
                peak,
            } = load(serving, path, CAPPED).await;
            report.push(format!(
                "{serving:?}/{path:?}: {requests} requests, {opened} upstream connections \
                 opened, at most {peak} at once"
            ));
            assert!(
                (1..=CAPPED.cap).contains(&peak),
                "{serving:?}/{path:?}: {peak} upstream connections at once, cap {}\n{}",
                CAPPED.cap,
                report.join("\n")
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// Runs `load` on `path` against a fresh router and upstream; returns the requests answered
/// (every one a 200, none counted as failed), the upstream connections the router opened for
/// them and the most that were open at once.
async fn load(serving: Serving, path: Path, load: Load) -> Measured {
    let (upstream, tally) = counting_upstream(load.cap).await;
    let config = RouterConfig {
        direct_path: !matches!(path, Path::PlainHyper),
        max_connections_per_upstream: load.cap,
        ..RouterConfig::default()
    };
    let router = Router::new(config);
    within(router.publish(table(&[(HOST, "blue", &[upstream])]))).await;
    let (cert, key) = certificate();
    router.certificates().replace_source(
        CertSource::Directory,
        vec![
            HostCert::from_pem(HOST, cert.pem().as_bytes(), key.serialize_pem().as_bytes())
                .expect("test certificate"),
        ],
    );
    let shutdown = CancellationToken::new();
    let listening = Listening::start(&router, serving, &shutdown).await;
    let tls = match path {
        Path::TlsHttp1 | Path::TlsH2 => Some(connector(cert.der().clone(), path)),
        _ => None,
    };
    let addr = if tls.is_some() {
        listening.tls
    } else {
        listening.plain
    };

    let mut clients = JoinSet::new();
    match path {
        Path::H2c | Path::TlsH2 => {
            for _ in 0..load.h2_connections {
                let stream = connect(addr, tls.as_ref()).await;
                let (sender, connection) =
                    within(client_http2::handshake(TokioExecutor::new(), stream))
                        .await
                        .expect("h2 handshake");
                tokio::spawn(connection);
                for _ in 0..load.h2_streams {
                    let mut sender = sender.clone();
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    clients.spawn(async move {
                        for _ in 0..load.requests {
                            let request = Request::get(format!("{scheme}://{HOST}/"))
                                .body(Full::new(Bytes::new()))
                                .expect("request");
                            within(sender.ready()).await.expect("ready");
                            let response = within(sender.send_request(request))
                                .await
                                .expect("h2 response");
                            expect_ok(response).await;
                        }
                        load.requests
                    });
                }
            }
        }
        _ => {
            for _ in 0..load.clients {
                let stream = connect(addr, tls.as_ref()).await;
                let (mut sender, connection) = within(client_http1::handshake(stream))
                    .await
                    .expect("handshake");
                tokio::spawn(connection);
                clients.spawn(async move {
                    for _ in 0..load.requests {
                        let (method, body) = match path {
                            Path::PlainPost => ("POST", Bytes::from_static(b"a body")),
                            _ => ("GET", Bytes::new()),
                        };
                        let request = Request::builder()
                            .method(method)
                            .uri("/")
                            .header("host", HOST)
                            .body(Full::new(body))
                            .expect("request");
                        within(sender.ready()).await.expect("ready");
                        let response = within(sender.send_request(request))
                            .await
                            .expect("response");
                        expect_ok(response).await;
                    }
                    load.requests
                });
            }
        }
    }
    let mut requests = 0;
    while let Some(done) = clients.join_next().await {
        requests += done.expect("client task");
    }
    assert_eq!(router.env_stats("blue").failed, 0, "{serving:?}/{path:?}");
    if load.cap > 0 {
        assert!(router.upstream_connections(upstream) <= load.cap);
    }
    shutdown.cancel();
    listening.stop().await;
    Measured {
        requests,
        opened: tally.opened.load(Ordering::SeqCst),
        peak: tally.peak.load(Ordering::SeqCst),
    }
}

async fn expect_ok(response: Response<hyper::body::Incoming>) {
    assert_eq!(response.status(), StatusCode::OK);
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"ok");
}

/// Connections an upstream accepted, and the most it had open at once.
#[derive(Default)]
struct Tally {
    opened: AtomicUsize,
    peak: AtomicUsize,
}

/// An HTTP/1.1 upstream answering `ok` that counts the connections it accepts and, at each
/// accept, those it has open: of the connections accepted before (a second descriptor of
/// each is kept to look at them), those the router has not closed, and the new one. A count
/// over `cap` is looked at again 5 ms later: the router closes a connection before it opens
/// the next, but on a busy machine the kernel may deliver the close's FIN after the next
/// connection is established.
async fn counting_upstream(cap: usize) -> (SocketAddr, Arc<Tally>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tally = Arc::new(Tally::default());
    let count = Arc::clone(&tally);
    tokio::spawn(async move {
        let mut open: Vec<std::net::TcpStream> = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.opened.fetch_add(1, Ordering::SeqCst);
            let fd = std::os::fd::AsFd::as_fd(&stream)
                .try_clone_to_owned()
                .expect("a second descriptor");
            open.push(std::net::TcpStream::from(fd));
            open.retain(still_open);
            if cap > 0 && open.len() > cap {
                tokio::time::sleep(Duration::from_millis(5)).await;
                open.retain(still_open);
            }
            count.peak.fetch_max(open.len(), Ordering::SeqCst);
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                // Read the request body whole before answering, as an application would.
                let _ = request.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            tokio::spawn(
                server_http1::Builder::new().serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, tally)
}

/// Whether the router still holds `stream` open: a peek finds no end of stream (an idle
/// connection has nothing to read; one with a request waiting is open too).
fn still_open(stream: &std::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(error) => error.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// A self-signed certificate for [`HOST`].
fn certificate() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![HOST.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    (cert, key)
}

/// A TLS client trusting `cert`, offering the ALPN protocol of `path`.
fn connector(cert: CertificateDer<'static>, path: Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("trust the test certificate");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = match path {
        Path::TlsH2 => vec![b"h2".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    TlsConnector::from(Arc::new(config))
}

/// A client connection to `addr`, through TLS when a connector is given.
async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>) -> TokioIo<Box<dyn Stream>> {
    let tcp = within(TcpStream::connect(addr)).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let stream: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some(connector) => {
            let name = ServerName::try_from(HOST).expect("server name");
            Box::new(
                within(connector.connect(name, tcp))
                    .await
                    .expect("TLS handshake"),
            )
        }
    };
    TokioIo::new(stream)
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A router's plain and TLS listeners, served as `serving` says.
struct Listening {
    plain: SocketAddr,
    tls: SocketAddr,
    stopped: JoinSet<std::io::Result<()>>,
}

impl Listening {
    async fn start(router: &Arc<Router>, serving: Serving, shutdown: &CancellationToken) -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut stopped = JoinSet::new();
        match serving {
            Serving::SharedRuntime => {
                let plain = TcpListener::bind(any).await.expect("bind");
                let tls = TcpListener::bind(any).await.expect("bind");
                let addrs = (
                    plain.local_addr().expect("addr"),
                    tls.local_addr().expect("addr"),
                );
                stopped.spawn(Arc::clone(router).serve(plain, shutdown.clone()));
                stopped.spawn(Arc::clone(router).serve_tls(tls, shutdown.clone()));
                Self {
                    plain: addrs.0,
                    tls: addrs.1,
                    stopped,
                }
            }
            Serving::OwnThreads => {
                let plain = Arc::clone(router)
                    .serve_on_threads(any, 2, shutdown.clone())
                    .expect("plain threads");
                let tls = Arc::clone(router)
                    .serve_tls_on_threads(any, 2, shutdown.clone())
                    .expect("TLS threads");
                let addrs = (plain.local_addr(), tls.local_addr());
                stopped.spawn_blocking(move || plain.join());
                stopped.spawn_blocking(move || tls.join());
                Self {
                    plain: addrs.0,
                    tls: addrs.1,
                    stopped,
                }
            }
        }
    }

    async fn stop(mut self) {
        while let Some(result) = within(self.stopped.join_next()).await {
            result
                .expect("router task")
                .expect("router stopped cleanly");
        }
    }
}

/// An instance at its cap that never frees a connection: a request waits the queue timeout,
/// then gets a 503 that says why (counted as failed), on the direct path, hyper's (a POST)
/// and h2c; and the wait never outlasts the request's own timeout (an app's
/// `request_timeout` shorter than the queue timeout gives the 503 at its end, not a 504).
#[tokio::test]
async fn a_request_finding_the_instance_at_its_cap_gets_503_after_the_queue_timeout() {
    let hanging = silent_upstream().await;
    let config = RouterConfig {
        max_connections_per_upstream: 2,
        upstream_queue_timeout: Duration::from_millis(300),
        upstream_timeout: Duration::from_secs(30),
        ..RouterConfig::default()
    };
    let harness = Harness::start(config).await;
    let upstream = |env: &str| Upstream {
        instance: format!("{env}-0"),
        addr: hanging,
    };
    let mut routes = RouteTable::new();
    routes.insert("hold.test", Backend::new("hold", vec![upstream("hold")]));
    routes.insert(
        "short.test",
        Backend {
            limits: RouteLimits {
                max_body_bytes: None,
                upstream_timeout: Some(Duration::from_millis(400)),
            },
            ..Backend::new("short", vec![upstream("short")])
        },
    );
    within(harness.router.publish(routes)).await;
    // Two requests that the instance never answers hold both of its connections.
    for _ in 0..2 {
        let mut client = harness.client().await;
        tokio::spawn(async move { client.send("GET", Some("hold.test"), "/", "").await });
    }
    assert!(eventually(|| harness.router.upstream_connections(hanging) == 2).await);

    for (kind, host, wait) in [
        ("direct GET", "hold.test", Duration::from_millis(300)),
        ("POST (hyper)", "hold.test", Duration::from_millis(300)),
        ("h2c GET", "hold.test", Duration::from_millis(300)),
        (
            "direct GET, 400 ms app timeout",
            "short.test",
            Duration::from_millis(300),
        ),
    ] {
        let started = Instant::now();
        let response = match kind {
            "POST (hyper)" => harness
                .client()
                .await
                .send("POST", Some(host), "/", "a body")
                .await
                .expect("response"),
            "h2c GET" => {
                let stream = within(TcpStream::connect(harness.addr))
                    .await
                    .expect("connect");
                let (mut sender, connection) =
                    client_http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                        .await
                        .expect("h2 handshake");
                tokio::spawn(connection);
                let request = Request::get(format!("http://{host}/"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                within(sender.send_request(request))
                    .await
                    .expect("h2 response")
            }
            _ => harness
                .client()
                .await
                .send("GET", Some(host), "/", "")
                .await
                .expect("response"),
        };
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body) = read(response).await;
        let waited = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{kind}: {body}");
        assert!(
            body.contains("instance at its connection limit"),
            "{kind}: {body}"
        );
        assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert!(
            waited >= wait && waited < Duration::from_secs(3),
            "{kind}: answered after {waited:?}"
        );
    }
    assert_eq!(harness.router.env_stats("hold").failed, 3);
    let short = harness.router.env_stats("short");
    assert_eq!((short.accepted, short.failed, short.in_flight), (1, 1, 0));
    // Still only the two connections of the hanging requests.
    assert_eq!(harness.router.upstream_connections(hanging), 2);
}

/// Under the cap, a request takes a connection another serving thread holds idle rather
/// than wait: with one connection allowed, requests arriving on both threads of
/// `serve_on_threads` in turn are all answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_of_another_thread_makes_room_under_the_cap() {
    let (upstream, tally) = counting_upstream(1).await;
    let router = Router::new(RouterConfig {
        max_connections_per_upstream: 1,
        upstream_queue_timeout: Duration::from_secs(10),
        ..RouterConfig::default()
    });
    within(router.publish(table(&[(HOST, "blue", &[upstream])]))).await;
    let shutdown = CancellationToken::new();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let threads = Arc::clone(&router)
        .serve_on_threads(any, 2, shutdown.clone())
        .expect("threads");
    let addr = threads.local_addr();
    // Fresh connections land on either thread; each request waits only for a connect.
    for post in [false, true, false, true, false, true] {
        let mut client = Client::connect(addr).await;
        let started = Instant::now();
        let (method, body) = if post { ("POST", "x") } else { ("GET", "") };
        let response = client
            .send(method, Some(HOST), "/", body)
            .await
            .expect("response");
        assert_eq!(read(response).await, (StatusCode::OK, "ok".to_owned()));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(router.upstream_connections(upstream) <= 1);
    }
    assert!(tally.peak.load(Ordering::SeqCst) <= 1);
    shutdown.cancel();
    within(tokio::task::spawn_blocking(move || threads.join()))
        .await
        .expect("join")
        .expect("threads stopped");
}
