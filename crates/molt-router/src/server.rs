//! Accepting client connections (HTTP/1.1 and HTTP/2 with prior knowledge on one port, or
//! either over TLS on another) and shutting them down gracefully.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ClientScheme;
use crate::direct::Ending;
use crate::framing::FrameLimits;
use crate::guard::{BusyBody, ClientSocket, GuardedStream, Prefixed};
use crate::router::Router;
use crate::tls;

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often an idle HTTP/2 connection is pinged, and how long the client has to answer
/// before the connection is closed: dead peers do not hold connections forever.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pending connections each listening socket of [`Router::serve_on_threads`] queues.
const LISTEN_BACKLOG: u32 = 1024;
/// hyper's own limit on header fields; setting another moves its header array to the heap.
const DEFAULT_MAX_HEADERS: usize = 100;

impl Router {
    /// Serves connections from `listener` until `shutdown` is cancelled; then stops
    /// accepting, asks every connection to close once its current responses are sent, waits
    /// for them (and for upgraded connections) up to `shutdown_grace` and closes the rest.
    ///
    /// Each connection speaks HTTP/1.1 or, when it opens with the HTTP/2 preface, h2c. A
    /// connection that has not sent a complete first request within `header_read_timeout` is
    /// closed, whatever its protocol.
    ///
    /// Accept errors are logged and retried, so this returns `Ok` once shut down.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        self.serve_with(listener, shutdown, None).await
    }

    /// Like [`Router::serve`], for TLS: each connection first completes a TLS handshake
    /// (within `header_read_timeout`) with the certificate [`Router::certificates`] holds
    /// for its SNI name, then speaks h2 or HTTP/1.1 as ALPN chose. A client asking for a name
    /// without a certificate (or sending no SNI) fails the handshake. Requests are reported
    /// upstream as `https`.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let config = tls::server_config(Arc::clone(&self.certs));
        let acceptor = TlsAcceptor::from(Arc::new(config));
        self.serve_with(listener, shutdown, Some(acceptor)).await
    }

    /// Serves `addr` from `threads` OS threads (at least one), each running its own
    /// current-thread tokio runtime and accepting on its own socket bound to `addr` with
    /// `SO_REUSEPORT`, so the kernel spreads connections over the threads. A client
    /// connection, the upstream connections it borrows from the pool and the tasks it starts
    /// stay on one thread from accept to close: no work stealing, no cross-thread wake-ups.
    /// This is how `xtask router-server` serves; [`Router::serve`] runs on the caller's
    /// runtime instead.
    ///
    /// Every thread is listening when this returns (so `addr` may use port 0: the others join
    /// the port the first one got). Each thread serves like [`Router::serve`] until
    /// `shutdown` is cancelled; [`ServerThreads::join`] waits for all of them.
    pub fn serve_on_threads(
        self: Arc<Self>,
        addr: SocketAddr,
        threads: usize,
        shutdown: CancellationToken,
    ) -> io::Result<ServerThreads> {
        let threads = self.spawn_threads(addr, threads, shutdown, false)?;
        threads.start();
        Ok(threads)
    }

    /// Like [`Router::serve_on_threads`], but the threads only listen (connections wait in
    /// the kernel's queue) until [`ServerThreads::start`]: `molt serve` binds its port, then
    /// recovers its state and publishes the table, then starts accepting.
    pub fn listen_on_threads(
        self: Arc<Self>,
        addr: SocketAddr,
        threads: usize,
        shutdown: CancellationToken,
    ) -> io::Result<ServerThreads> {
        self.spawn_threads(addr, threads, shutdown, false)
    }

    /// [`Router::listen_on_threads`] for TLS: listening at once, serving like
    /// [`Router::serve_tls`] from [`ServerThreads::start`] on.
    pub fn listen_tls_on_threads(
        self: Arc<Self>,
        addr: SocketAddr,
        threads: usize,
        shutdown: CancellationToken,
    ) -> io::Result<ServerThreads> {
        self.spawn_threads(addr, threads, shutdown, true)
    }

    /// [`Router::serve_on_threads`] for TLS: each thread serves like [`Router::serve_tls`].
    pub fn serve_tls_on_threads(
        self: Arc<Self>,
        addr: SocketAddr,
        threads: usize,
        shutdown: CancellationToken,
    ) -> io::Result<ServerThreads> {
        let threads = self.spawn_threads(addr, threads, shutdown, true)?;
        threads.start();
        Ok(threads)
    }

    fn spawn_threads(
        self: Arc<Self>,
        addr: SocketAddr,
        threads: usize,
        shutdown: CancellationToken,
        tls: bool,
    ) -> io::Result<ServerThreads> {
        let mut sockets = Vec::with_capacity(threads.max(1));
        let mut bound = addr;
        for _ in 0..threads.max(1) {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(bound)?;
            bound = socket.local_addr()?;
            sockets.push(socket);
        }
        // Each thread listens on its runtime, then reports; this returns once all listen.
        let (listening, reports) = std::sync::mpsc::channel::<io::Result<()>>();
        // Stops the threads already running when another fails to start.
        let stop = shutdown.child_token();
        // Opened by `ServerThreads::start`.
        let (gate, opened) = tokio::sync::watch::channel(false);
        let mut handles = Vec::with_capacity(sockets.len());
        let expected = sockets.len();
        for (i, socket) in sockets.into_iter().enumerate() {
            let router = Arc::clone(&self);
            let stop = stop.clone();
            let report = listening.clone();
            let mut opened = opened.clone();
            let handle = std::thread::Builder::new()
                .name(format!("molt-router-{i}"))
                .spawn(move || {
                    let started = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .and_then(|runtime| {
                            let listener =
                                runtime.block_on(async { socket.listen(LISTEN_BACKLOG) })?;
                            Ok((runtime, listener))
                        });
                    let (runtime, listener) = match started {
                        Ok(started) => {
                            let _ = report.send(Ok(()));
                            started
                        }
                        Err(error) => {
                            let _ =
                                report.send(Err(io::Error::new(error.kind(), error.to_string())));
                            return Err(error);
                        }
                    };
                    runtime.block_on(async move {
                        tokio::select! {
                            started = opened.wait_for(|open| *open) => {
                                if started.is_err() {
                                    // Dropped without being started.
                                    return Ok(());
                                }
                            }
                            () = stop.cancelled() => return Ok(()),
                        }
                        if tls {
                            router.serve_tls(listener, stop).await
                        } else {
                            router.serve(listener, stop).await
                        }
                    })
                });
            match handle {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    let _ = listening.send(Err(error));
                }
            }
        }
        drop(listening);
        let threads = ServerThreads {
            addr: bound,
            handles,
            gate,
        };
        // One report per thread (or per thread that could not be spawned); a thread keeps
        // its sender while it serves, so count instead of waiting for the channel to close.
        let mut failure = None;
        for report in reports.iter().take(expected) {
            if let Err(error) = report {
                failure.get_or_insert(error);
            }
        }
        match failure {
            None => Ok(threads),
            Some(error) => {
                stop.cancel();
                let _ = threads.join();
                Err(error)
            }
        }
    }

    async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<()> {
        let connections = TaskTracker::new();
        let abort = CancellationToken::new();
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // A refused pipelined request ends the stream early (see `guard`); the requests
            // before it still get their responses.
            .half_close(true)
            .header_read_timeout(self.config.header_read_timeout)
            // The frame checker refuses larger heads first; hyper's buffer must hold them.
            .max_buf_size(self.config.max_header_bytes.max(8192) + 8192);
        if self.config.max_headers != DEFAULT_MAX_HEADERS {
            http.http1().max_headers(self.config.max_headers);
        }
        http.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        let connection = ConnectionSetup {
            http: Arc::new(http),
            first_request_timeout: self.config.header_read_timeout,
            limits: self.frame_limits(),
            idle_timeout: self.config.idle_timeout,
        };
        let scheme = if tls.is_some() {
            ClientScheme::Https
        } else {
            ClientScheme::Http
        };
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, scheme = scheme.as_str(), "router listening");
        }

        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(connection) => connection,
                Err(error) if is_connection_error(&error) => {
                    debug!(%error, "accept failed for one connection");
                    continue;
                }
                Err(error) => {
                    warn!(%error, "accept failed; retrying shortly");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            };
            if self.refuses_new_connections() {
                // Fenced out of a fleet: open connections finish, new ones are turned away
                // so that clients and load balancers go to a router that is up to date.
                debug!(%peer, "refusing a new connection");
                drop(stream);
                continue;
            }
            if let Err(error) = stream.set_nodelay(true) {
                debug!(%peer, %error, "could not set TCP_NODELAY");
            }
            let router = Arc::clone(&self);
            let connection = connection.clone();
            let (shutdown, abort) = (shutdown.clone(), abort.clone());
            match &tls {
                None => {
                    connections.spawn(async move {
                        connection
                            .serve(router, stream, peer, scheme, shutdown, abort)
                            .await;
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        let handshake = tokio::select! {
                            () = abort.cancelled() => return,
                            () = shutdown.cancelled() => return,
                            handshake = tokio::time::timeout(
                                connection.first_request_timeout,
                                acceptor.accept(stream),
                            ) => handshake,
                        };
                        let stream = match handshake {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                router.tls_handshake_failed();
                                debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_elapsed) => {
                                router.tls_handshake_failed();
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        connection
                            .serve(router, stream, peer, scheme, shutdown, abort)
                            .await;
                    });
                }
            }
        }

        drop(listener);
        connections.close();
        self.tunnels.close();
        let grace = self.config.shutdown_grace;
        let finished = async {
            connections.wait().await;
            self.tunnels.wait().await;
        };
        if tokio::time::timeout(grace, finished).await.is_err() {
            warn!(
                open = connections.len(),
                upgraded = self.tunnels.len(),
                "connections still open after {grace:?}; closing them"
            );
            abort.cancel();
            self.tunnels.abort();
            connections.wait().await;
            self.tunnels.wait().await;
        }
        info!(scheme = scheme.as_str(), "router stopped");
        Ok(())
    }
}

/// The threads of [`Router::serve_on_threads`].
#[derive(Debug)]
pub struct ServerThreads {
    addr: SocketAddr,
    handles: Vec<std::thread::JoinHandle<io::Result<()>>>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl ServerThreads {
    /// Lets the threads accept connections (those that arrived since they started listening
    /// are waiting in the queue).
    pub fn start(&self) {
        self.gate.send_replace(true);
    }

    /// The address every thread listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until every thread has stopped serving; the first error any of them had.
    pub fn join(self) -> io::Result<()> {
        let ServerThreads { handles, gate, .. } = self;
        // Threads never started stop waiting for it.
        drop(gate);
        let mut result = Ok(());
        for handle in handles {
            let outcome = handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a router thread panicked")));
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

/// What every connection of one listener is served with.
#[derive(Clone)]
struct ConnectionSetup {
    http: Arc<auto::Builder<TokioExecutor>>,
    first_request_timeout: Duration,
    limits: FrameLimits,
    idle_timeout: Duration,
}

impl ConnectionSetup {
    /// Serves one client connection (plain or after its TLS handshake) until it closes, is
    /// idle too long, or the listener shuts down.
    async fn serve<S: ClientSocket>(
        self,
        router: Arc<Router>,
        stream: S,
        peer: SocketAddr,
        scheme: ClientScheme,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) {
        let (mut stream, activity) = GuardedStream::new(stream, self.limits);
        if router.config.access_log {
            stream.log_refusals(peer.ip(), scheme);
        }
        // The direct path serves what it can; hyper the rest, from the first request it
        // leaves (see `crate::direct`).
        // With HSTS on, requests over TLS take hyper's path, which adds the header.
        let hsts_over_tls = scheme == ClientScheme::Https && router.config.hsts_max_age.is_some();
        let direct = router.config.direct_path && !stream.negotiated_h2() && !hsts_over_tls;
        let (prefix, stream, served) = if direct {
            let direct = crate::direct::serve(&router, stream, peer, scheme, &shutdown);
            let ending = tokio::select! {
                ending = direct => ending,
                () = abort.cancelled() => return,
            };
            match ending {
                Ending::Closed => return,
                Ending::Handoff {
                    stream,
                    prefix,
                    served,
                } => (prefix, stream, served),
            }
        } else {
            (Vec::new(), stream, 0)
        };
        let stream = Prefixed::new(prefix, stream);
        let requested = Arc::new(AtomicBool::new(served > 0));
        let service = {
            let requested = Arc::clone(&requested);
            let requests = Arc::clone(&activity);
            service_fn(move |request| {
                requested.store(true, Ordering::Relaxed);
                let router = Arc::clone(&router);
                let busy = requests.busy();
                // Boxed: hyper moves the future it gets (into each HTTP/2 stream's task, and
                // that task into tokio's cell), and the whole of a request's future is a few
                // KiB; a box makes each of those moves a pointer's (one allocation instead
                // of several KiB copied per request; `memmove` was the hottest user-space
                // symbol under h2).
                Box::pin(async move {
                    let response = router.handle(request, peer.ip(), scheme).await;
                    Ok::<_, Infallible>(response.map(|body| BusyBody::new(body, busy)))
                })
            })
        };
        let connection = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        // Covers what hyper's HTTP/1 header timeout does not: the protocol sniffing
        // before it, and HTTP/2 connections that never send a request.
        let first_request = tokio::time::sleep(self.first_request_timeout);
        let mut first_request = std::pin::pin!(first_request);
        let (mut awaiting_first, mut closing) = (served == 0, false);
        // No request in progress and no byte moving for `idle_timeout`: close.
        let idle = activity.idle_for(self.idle_timeout);
        let mut idle = std::pin::pin!(idle);
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                () = idle.as_mut() => {
                    debug!(%peer, "closing idle client connection");
                    break Ok(());
                }
                () = first_request.as_mut(), if awaiting_first => {
                    awaiting_first = false;
                    if !requested.load(Ordering::Relaxed) {
                        debug!(%peer, "no request within the header read timeout; closing");
                        break Ok(());
                    }
                }
                () = shutdown.cancelled(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = abort.cancelled() => break Ok(()),
            }
        };
        if let Err(error) = result {
            debug!(%peer, %error, "client connection ended with an error");
        }
    }
}

impl Router {
    fn frame_limits(&self) -> FrameLimits {
        FrameLimits {
            max_head_bytes: self.config.max_header_bytes,
            max_headers: self.config.max_headers,
        }
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
