//! The upstream side of the proxy: molt's own pool of HTTP/1.1 keep-alive connections.
//!
//! Each pooled connection is a `hyper::client::conn::http1` pair: the `SendRequest` handle
//! and the `Connection` that does the I/O. The connection is never spawned on a task of its
//! own: whoever holds it drives it — the request future until the response head arrives,
//! then the response body ([`UpstreamBody`]) while hyper streams it to the client. A request
//! therefore runs on one task from the client's socket to the upstream's and back, with no
//! channel hand-off to a connection task and no cross-thread wake-up. When the body ends
//! the connection goes back to the pool; an idle connection nobody drives is checked on its
//! way out (a poll that finds it closed, or not ready, drops it).
//!
//! Idle connections are kept per tokio runtime and upstream address, so a connection is only
//! ever driven by the runtime that opened it (see [`shard`]). They are dropped after
//! [`POOL_IDLE_TIMEOUT`], and when a publish stops routing to their address.
//!
//! With [`UpstreamProtocol::Http2PriorKnowledge`](crate::UpstreamProtocol) the router uses
//! hyper-util's pooled client instead: an h2 connection multiplexes many requests, so it
//! needs a task of its own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::limits::LimitedBody;

/// Body of requests sent upstream: the client's body streamed through, or nothing (for
/// replayable requests, which have none).
pub(crate) type RequestBody = Either<LimitedBody, Empty<Bytes>>;

/// How long idle upstream connections stay in the pool.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per thread and upstream address.
const MAX_IDLE_PER_ADDRESS: usize = 1024;

type Driver = http1::Connection<TokioIo<TcpStream>, RequestBody>;

/// How the router reaches instances.
pub(crate) enum Upstreams {
    /// molt's own HTTP/1.1 pools: hyper connections for requests hyper serves, plain sockets
    /// for the direct path ([`crate::direct`]).
    Http1 {
        pool: Arc<Pool<Connection>>,
        sockets: Arc<Pool<Socket>>,
    },
    /// hyper-util's client, speaking h2c with prior knowledge.
    Http2(Box<Client<HttpConnector, RequestBody>>),
}

/// Why an upstream request got no response.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// The TCP connection could not be made.
    Connect(io::Error),
    /// The connection failed during the exchange.
    Http(hyper::Error),
    /// hyper-util's client failed (h2c upstreams).
    Client(hyper_util::client::legacy::Error),
}

/// Idle HTTP/1.1 connections, by worker thread and upstream address.
pub(crate) struct Pool<C> {
    idle: Mutex<IdleSet<C>>,
    connect_timeout: Duration,
}

/// What a pool keeps.
pub(crate) trait Pooled: Sized {
    /// The upstream address it is connected to.
    fn addr(&self) -> SocketAddr;
    /// Whether an idle connection can take a request: still open, nothing unexpected read.
    fn is_usable(&mut self) -> bool;
}

/// A plain keep-alive socket to an upstream, for the direct path's own HTTP/1.1 exchange.
pub(crate) struct Socket {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
}

struct IdleSet<C> {
    connections: HashMap<(Shard, SocketAddr), VecDeque<Idle<C>>, BuildHasherDefault<AddrHasher>>,
    /// The addresses the published table routes to (`None` before the first publish): a
    /// connection to any other address is closed instead of kept once its exchange ends.
    routed: Option<HashSet<SocketAddr>>,
}

impl<C> Default for IdleSet<C> {
    fn default() -> Self {
        Self {
            connections: HashMap::default(),
            routed: None,
        }
    }
}

/// One upstream connection: the handle requests are sent with and the I/O side.
pub(crate) struct Connection {
    sender: http1::SendRequest<RequestBody>,
    /// `None` once the connection has finished (closed, failed or shut down).
    driver: Option<Pin<Box<Driver>>>,
    addr: SocketAddr,
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

/// A connection on loan to one exchange; it goes back to its pool when the response body
/// ends, or is closed when the body is dropped unfinished.
struct Lease {
    connection: Connection,
    pool: Arc<Pool<Connection>>,
}

/// An upstream's response body: streamed from the connection that the body itself drives.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl Upstreams {
    /// The client for `protocol`, connecting within `connect_timeout`.
    pub(crate) fn new(protocol: crate::UpstreamProtocol, connect_timeout: Duration) -> Self {
        match protocol {
            crate::UpstreamProtocol::Http1 => Upstreams::Http1 {
                pool: Arc::new(Pool::new(connect_timeout)),
                sockets: Arc::new(Pool::new(connect_timeout)),
            },
            crate::UpstreamProtocol::Http2PriorKnowledge => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(connect_timeout));
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .pool_timer(TokioTimer::new())
                    .set_host(false)
                    .http2_only(true)
                    .build(connector);
                Upstreams::Http2(Box::new(client))
            }
        }
    }

    /// Whether requests need an absolute URI (`http://addr/path`) rather than the origin
    /// form (`/path`).
    pub(crate) fn wants_absolute_uri(&self) -> bool {
        matches!(self, Upstreams::Http2(_))
    }

    /// Sends `request` to `addr` and returns the response head; its body streams from the
    /// connection afterwards.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self {
            Upstreams::Http1 { pool, .. } => pool.send(addr, request).await,
            Upstreams::Http2(client) => client
                .request(request)
                .await
                .map(|response| response.map(UpstreamBody::detached))
                .map_err(UpstreamError::Client),
        }
    }

    /// Drops idle connections to addresses that are no longer routed.
    pub(crate) fn retain(&self, routed: &HashSet<SocketAddr>) {
        if let Upstreams::Http1 { pool, sockets } = self {
            pool.retain(routed);
            sockets.retain(routed);
        }
    }

    /// The pool of plain sockets, when instances speak HTTP/1.1.
    pub(crate) fn sockets(&self) -> Option<&Arc<Pool<Socket>>> {
        match self {
            Upstreams::Http1 { sockets, .. } => Some(sockets),
            Upstreams::Http2(_) => None,
        }
    }
}

impl<C: Pooled> Pool<C> {
    fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::default(),
            connect_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleSet<C>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn retain(&self, routed: &HashSet<SocketAddr>) {
        let mut idle = self.lock();
        idle.connections
            .retain(|(_, addr), _| routed.contains(addr));
        idle.routed = Some(routed.clone());
    }

    /// The most recently used idle connection to `addr` of this thread that is still usable.
    pub(crate) fn checkout(&self, addr: SocketAddr) -> Option<C> {
        let key = (shard()?, addr);
        loop {
            let idle = {
                let mut pool = self.lock();
                let queue = pool.connections.get_mut(&key)?;
                let idle = queue.pop_back();
                if queue.is_empty() {
                    pool.connections.remove(&key);
                }
                idle?
            };
            if idle.since.elapsed() >= POOL_IDLE_TIMEOUT {
                continue;
            }
            let mut connection = idle.connection;
            if connection.is_usable() {
                return Some(connection);
            }
        }
    }

    /// Keeps `connection` for the next request to its address (unless the table no longer
    /// routes there).
    pub(crate) fn checkin(&self, connection: C) {
        let now = Instant::now();
        let addr = connection.addr();
        // Outside a runtime (a body dropped after its runtime stopped) the socket has no
        // runtime left to drive it: close it.
        let Some(shard) = shard() else { return };
        let mut pool = self.lock();
        if pool
            .routed
            .as_ref()
            .is_some_and(|routed| !routed.contains(&addr))
        {
            return;
        }
        let queue = pool.connections.entry((shard, addr)).or_default();
        // The oldest are at the front: drop those past the idle timeout.
        while queue
            .front()
            .is_some_and(|idle| now.duration_since(idle.since) >= POOL_IDLE_TIMEOUT)
        {
            queue.pop_front();
        }
        if queue.len() >= MAX_IDLE_PER_ADDRESS {
            queue.pop_front();
        }
        queue.push_back(Idle {
            connection,
            since: now,
        });
    }

    /// A new TCP connection to `addr` (no delay), within the connect timeout.
    pub(crate) async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_elapsed| {
                UpstreamError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                ))
            })?
            .map_err(UpstreamError::Connect)?;
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        Ok(stream)
    }
}

impl Pool<Connection> {
    async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let (mut connection, reused) = match self.checkout(addr) {
                Some(connection) => (connection, true),
                None => (self.connect(addr).await?, false),
            };
            match connection.exchange(request).await {
                Ok(response) => {
                    let lease = Lease {
                        connection,
                        pool: Arc::clone(self),
                    };
                    return Ok(response.map(|body| UpstreamBody {
                        body,
                        lease: Some(lease),
                    }));
                }
                // A kept-alive connection the upstream closed before the request was written:
                // nothing was sent, so send it on another connection.
                Err(mut error) if reused => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Http(error.into_error())),
                },
                Err(error) => return Err(UpstreamError::Http(error.into_error())),
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Connection, UpstreamError> {
        let stream = self.connect_tcp(addr).await?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        Ok(Connection {
            sender,
            driver: Some(Box::pin(driver)),
            addr,
        })
    }
}

impl Pooled for Connection {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn is_usable(&mut self) -> bool {
        // Let the connection notice a close or stray bytes before it is used.
        self.drive(&mut Context::from_waker(
            futures_util::task::noop_waker_ref(),
        ));
        self.is_reusable()
    }
}

impl Pooled for Socket {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Open with nothing to read: a readable idle socket was closed by the upstream or holds
    /// bytes nobody asked for.
    fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl Connection {
    /// Sends `request` and drives the connection until the response head arrives.
    async fn exchange(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>> {
        let response = self.sender.try_send_request(request);
        let mut response = std::pin::pin!(response);
        poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Lets the connection do the I/O it can; notes when it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut() {
            if driver.as_mut().poll(cx).is_ready() {
                self.driver = None;
            }
        }
    }

    /// Open, and waiting for the next request.
    fn is_reusable(&self) -> bool {
        self.driver.is_some() && self.sender.is_ready()
    }
}

impl Lease {
    /// The exchange is over: back to the pool if the connection can take another request.
    fn release(mut self, cx: &mut Context<'_>) {
        // One more turn lets hyper finish the exchange and wait for the next request.
        self.connection.drive(cx);
        if self.connection.is_reusable() {
            self.pool.checkin(self.connection);
        }
    }
}

impl UpstreamBody {
    /// A body whose connection is driven elsewhere (h2c upstreams, upgrades).
    pub(crate) fn detached(body: Incoming) -> Self {
        Self { body, lease: None }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = this.lease.as_mut() {
            lease.connection.drive(cx);
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => {
                if let Some(lease) = this.lease.take() {
                    lease.release(cx);
                }
            }
            // A broken body leaves the connection in an unknown state: close it.
            Some(Err(_)) => this.lease = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper does not poll a body it knows to be empty (HEAD, 204, 304, length 0): the
        // exchange is complete, so the connection can still be reused.
        if let Some(lease) = self.lease.take() {
            if self.body.is_end_stream() {
                lease.release(&mut Context::from_waker(
                    futures_util::task::noop_waker_ref(),
                ));
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("addr", &self.connection.addr)
            .finish()
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(error) => write!(f, "connecting failed: {error}"),
            UpstreamError::Http(error) => write!(f, "{error}"),
            UpstreamError::Client(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(error) => Some(error),
            UpstreamError::Http(error) => Some(error),
            UpstreamError::Client(error) => Some(error),
        }
    }
}

impl UpstreamError {
    /// True when the connection failed before the upstream could have acted on the request:
    /// connect errors, and connections closed or reset before a response.
    pub(crate) fn is_connection_failure(&self) -> bool {
        match self {
            UpstreamError::Connect(_) => true,
            UpstreamError::Client(error) if error.is_connect() => true,
            _ => is_broken_connection(self),
        }
    }
}

/// Whether the error chain says the connection was closed, reset or canceled.
fn is_broken_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>() {
            if hyper_error.is_incomplete_message()
                || hyper_error.is_canceled()
                || hyper_error.is_closed()
            {
                return true;
            }
        }
        if let Some(io_error) = cause.downcast_ref::<io::Error>() {
            use std::io::ErrorKind::{
                BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset,
            };
            if matches!(
                io_error.kind(),
                BrokenPipe | ConnectionAborted | ConnectionRefused | ConnectionReset
            ) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// The pool's hasher: its keys are a runtime's id and an upstream address from the route
/// table (never client input), so a multiply-rotate hash is enough and costs a fraction of
/// SipHash on the request path.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The pool's shard for the current task: its tokio runtime. A socket is registered with the
/// reactor of the runtime that opened it and only that runtime's threads can drive it, so an
/// idle connection is kept for, and taken out by, tasks of that runtime alone. With one
/// current-thread runtime per thread (`Router::serve_on_threads`) that is one shard per
/// thread; on a multi-thread runtime (`Router::serve` on `molt serve`'s shared runtime) all
/// its workers share one shard. (Keying by OS thread there let work stealing move
/// connections into shards that no later checkout looked at: a thread that returned more
/// connections than it took filled its shard to the idle cap while the others kept opening
/// new ones, over a thousand sockets to one instance for 64 clients.)
fn shard() -> Option<Shard> {
    tokio::runtime::Handle::try_current()
        .ok()
        .map(|runtime| runtime.id())
}

/// See [`shard`].
type Shard = tokio::runtime::Id;
