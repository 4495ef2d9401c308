//! Upstream connections under sustained load: every path (plain HTTP/1.1 on the direct path
//! and on hyper's, h2c, HTTP/1.1 and h2 over TLS) reuses its pooled connections instead of
//! opening new ones, whether the router serves from one multi-thread runtime (as `molt
//! serve`'s shared runtime does) or from its own threads.
//!
//! The upstream counts the connections it accepts. With a pool keyed by OS thread, work
//! stealing on a multi-thread runtime moved connections into shards no later request looked
//! at, and 64 clients ended up holding over a thousand sockets to one instance.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1 as client_http1, http2 as client_http2};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use molt_router::tls::{CertSource, HostCert};
use molt_router::{Router, RouterConfig};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{table, within};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

const HOST: &str = "app.test";
/// Keep-alive client connections, each sending its requests one after another.
const CLIENTS: usize = 16;
/// Requests each HTTP/1.1 client sends.
const REQUESTS_PER_CLIENT: usize = 150;
/// h2 connections, and the streams each keeps in flight.
const H2_CONNECTIONS: usize = 4;
const H2_STREAMS: usize = 4;

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
            let (requests, opened) = load(serving, path).await;
            report.push(format!(
                "{serving:?}/{path:?}: {requests} requests, {opened} upstream connections"
            ));
            // Each request holds one upstream connection at a time; a connection free again
            // serves the next one. At most one per request in flight, then.
            let in_flight = match path {
                Path::H2c | Path::TlsH2 => H2_CONNECTIONS * H2_STREAMS,
                _ => CLIENTS,
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

/// Runs the load of `path` against a fresh router and upstream; returns the requests answered
/// and the upstream connections the router opened for them.
async fn load(serving: Serving, path: Path) -> (usize, usize) {
    let (upstream, opened) = counting_upstream().await;
    let config = RouterConfig {
        direct_path: !matches!(path, Path::PlainHyper),
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
            for _ in 0..H2_CONNECTIONS {
                let stream = connect(addr, tls.as_ref()).await;
                let (sender, connection) =
                    within(client_http2::handshake(TokioExecutor::new(), stream))
                        .await
                        .expect("h2 handshake");
                tokio::spawn(connection);
                for _ in 0..H2_STREAMS {
                    let mut sender = sender.clone();
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    clients.spawn(async move {
                        for _ in 0..REQUESTS_PER_CLIENT {
                            let request = Request::get(format!("{scheme}://{HOST}/"))
                                .body(Full::new(Bytes::new()))
                                .expect("request");
                            within(sender.ready()).await.expect("ready");
                            let response = within(sender.send_request(request))
                                .await
                                .expect("h2 response");
                            expect_ok(response).await;
                        }
                        REQUESTS_PER_CLIENT
                    });
                }
            }
        }
        _ => {
            for _ in 0..CLIENTS {
                let stream = connect(addr, tls.as_ref()).await;
                let (mut sender, connection) = within(client_http1::handshake(stream))
                    .await
                    .expect("handshake");
                tokio::spawn(connection);
                clients.spawn(async move {
                    for _ in 0..REQUESTS_PER_CLIENT {
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
                    REQUESTS_PER_CLIENT
                });
            }
        }
    }
    let mut requests = 0;
    while let Some(done) = clients.join_next().await {
        requests += done.expect("client task");
    }
    assert_eq!(router.env_stats("blue").failed, 0, "{serving:?}/{path:?}");
    shutdown.cancel();
    listening.stop().await;
    (requests, opened.load(Ordering::SeqCst))
}

async fn expect_ok(response: Response<hyper::body::Incoming>) {
    assert_eq!(response.status(), StatusCode::OK);
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"ok");
}

/// An HTTP/1.1 upstream answering `ok` that counts the connections it accepts.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let opened = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&opened);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
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
    (addr, opened)
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
