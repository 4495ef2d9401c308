//! Real sockets on 127.0.0.1: upstream HTTP servers, a router under test, and a keep-alive
//! client connection.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use molt_router::{Backend, RouteTable, Router, RouterConfig, Upstream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single step of a test.
pub const STEP: Duration = Duration::from_secs(5);

/// Awaits `future`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .expect("test step timed out")
}

/// Polls `condition` every 10 ms for up to [`STEP`]; returns whether it became true.
pub async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// How a test upstream answers.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// Its name as the body; on `/echo`, what it received instead.
    Name(&'static str),
    /// Headers at once, then `chunk0`, `chunk1`, `chunk2` 100 ms apart.
    Slow,
}

/// Starts an HTTP/1.1 upstream on a fresh port. It lives until the test's runtime stops.
pub async fn upstream(reply: Reply) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service =
                service_fn(
                    move |request| async move { Ok::<_, Infallible>(answer(reply, request)) },
                );
            tokio::spawn(
                server_http1::Builder::new().serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// An upstream that accepts connections and never answers.
pub async fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// An upstream that accepts connections and closes them without reading or answering.
pub async fn closing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    addr
}

/// Reads one request from `stream` on a raw upstream: its head, then a `Content-Length` body
/// (`buf` keeps what was read past it, for the next request of the connection). Returns the
/// head as text and the body's length; `None` once the connection closes or fails.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    use tokio::io::AsyncReadExt;
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..length);
    Some((head, length))
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

fn answer(reply: Reply, request: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    match reply {
        Reply::Name(name) if request.uri().path() == "/echo" => {
            let header = |name: &str| {
                request
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|value| value.to_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join("|")
            };
            let text = format!(
                "{name} {} {} host={} xff={} xfh={} xfp={} conn={} x-private={} fwd={}",
                request.method(),
                request.uri(),
                header("host"),
                header("x-forwarded-for"),
                header("x-forwarded-host"),
                header("x-forwarded-proto"),
                header("connection"),
                header("x-private"),
                header("forwarded"),
            );
            let mut response = Response::new(Full::from(text).boxed());
            response
                .headers_mut()
                .insert("x-hop", "gone".parse().expect("header value"));
            response
                .headers_mut()
                .insert("connection", "x-hop".parse().expect("header value"));
            response
        }
        Reply::Name(name) => Response::new(Full::from(name).boxed()),
        Reply::Slow => {
            let (sender, receiver) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..3 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if sender.send(Bytes::from(format!("chunk{i}"))).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(ChannelBody(receiver).boxed())
        }
    }
}

/// A body fed by a channel, ending when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// Sends `request` on a fresh connection and reads until the router closes it.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = within(TcpStream::connect(addr)).await.expect("connect");
    // The router may close before reading everything; a failed write is an answer too.
    let _ = within(stream.write_all(request)).await;
    let mut response = Vec::new();
    let _ = within(stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// A route table from `(hostname, env, upstream addresses)`.
pub fn table(routes: &[(&str, &str, &[SocketAddr])]) -> RouteTable {
    let mut table = RouteTable::new();
    for (hostname, env, addrs) in routes {
        let upstreams = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| Upstream {
                instance: format!("{env}-{i}"),
                addr: *addr,
            })
            .collect();
        table.insert(hostname, Backend::new(*env, upstreams));
    }
    table
}

/// A router serving on a fresh port.
pub struct Harness {
    pub router: Arc<Router>,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub serving: JoinHandle<std::io::Result<()>>,
}

impl Harness {
    pub async fn start(config: RouterConfig) -> Self {
        let router = Router::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind router");
        let addr = listener.local_addr().expect("router addr");
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(Arc::clone(&router).serve(listener, shutdown.clone()));
        Self {
            router,
            addr,
            shutdown,
            serving,
        }
    }

    /// A router serving on a fresh port with `routes` published (see [`table`]).
    pub async fn routing(config: RouterConfig, routes: &[(&str, &str, &[SocketAddr])]) -> Self {
        let harness = Self::start(config).await;
        within(harness.router.publish(table(routes))).await;
        harness
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }
}

/// One HTTP/1.1 keep-alive connection to the router.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        let (sender, connection) =
            within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        Self { sender }
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn send(
        &mut self,
        method: &str,
        host: Option<&str>,
        path: &str,
        body: &'static str,
    ) -> hyper::Result<Response<Incoming>> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let request = request
            .body(Full::from(body))
            .expect("test request is valid");
        within(self.sender.ready()).await?;
        within(self.sender.send_request(request)).await
    }

    /// GET `path` on `host`: status and whole body.
    pub async fn get(&mut self, host: Option<&str>, path: &str) -> (StatusCode, String) {
        let response = self.send("GET", host, path, "").await.expect("response");
        read(response).await
    }
}

/// Status and whole body of a response.
pub async fn read(response: Response<Incoming>) -> (StatusCode, String) {
    let status = response.status();
    let body = within(response.into_body().collect())
        .await
        .expect("response body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Publishes `green` and `blue` alternately, `rounds` times, 25 ms apart (load runs meanwhile).
pub async fn alternate_tables(
    router: &Router,
    blue: &RouteTable,
    green: &RouteTable,
    rounds: usize,
) {
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let next = if round % 2 == 0 { green } else { blue };
        within(router.publish(next.clone())).await;
    }
}
