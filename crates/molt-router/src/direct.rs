//! The direct path: molt's own HTTP/1.1 exchange for the commonest requests — `GET` and
//! `HEAD` without a body, upgrade or `Expect`, from HTTP/1.1 clients, to HTTP/1.1 instances
//! — parsed in place from the client's bytes and written to a pooled upstream socket
//! without hyper.
//!
//! Why: hyper's server and client state machines, and the header maps between them, cost
//! about 2.5× nginx's instructions per proxied request (callgrind; see docs/benchmarks.md).
//! The direct path parses the head with httparse, routes it through the same table,
//! counters, retries, retry budget, ejection and drain accounting as [`Router::handle`],
//! writes the upstream head straight from the client's bytes, and relays the response head
//! and body (by length, chunks or close) as they come.
//!
//! Everything else stays hyper's: on the first request the direct path does not take (a
//! body, an upgrade, HTTP/1.0, h2c, a held backend, an unknown host, an ACME challenge...) the
//! connection is handed to hyper together with the bytes already read, none of them
//! consumed, and hyper serves it from then on. The frame checker ([`crate::framing`]) sits
//! under both: no byte reaches either parser before its request's framing is known to be
//! unambiguous.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::body::Frame;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::access::{AccessEntry, Served};
use crate::body::ResponseBody;
use crate::forwarded::{self, push_forwarded_element, push_ip};
use crate::guard::{ClientSocket, GuardedStream};
use crate::page;
use crate::proxy::{no_instance, Choice, Lookup, Routed};
use crate::reqid::InlineId;
use crate::shaping::{Source, STICKY_COOKIE};
use crate::stats::InFlight;
use crate::table::{Picked, Route};
use crate::tls::ACME_CHALLENGE_PREFIX;
use crate::upstream::{Pool, Socket, UpstreamError};
use crate::{ClientScheme, Router};

/// Header fields the direct path parses in one head (hyper's default limit too); a request
/// with more goes to hyper, an upstream response with more is a 502.
const MAX_HEADERS: usize = 100;
/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line, and most trailer bytes, of a chunked upstream body.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// How much is read from a socket at a time: heads, and body chunks.
const HEAD_READ: usize = 8 * 1024;
const BODY_READ: usize = 64 * 1024;
/// Largest buffer a connection keeps between requests.
const IDLE_BUFFER: usize = 16 * 1024;

/// How the direct path left a client connection.
pub(crate) enum Ending<S: ClientSocket> {
    /// Closed: by either side, a timeout, an error or a shutdown.
    Closed,
    /// hyper serves the rest of the connection, starting with `prefix`: bytes read from the
    /// client and not consumed (a whole request head, or whatever could not be parsed).
    Handoff {
        stream: GuardedStream<S>,
        prefix: Vec<u8>,
        /// Requests the direct path answered before.
        served: u64,
    },
}

/// One client connection on the direct path, with its buffers and its timer.
struct Conn<S: ClientSocket> {
    stream: GuardedStream<S>,
    /// Client bytes read and not yet consumed.
    input: Vec<u8>,
    /// The upstream request head being sent.
    request_head: Vec<u8>,
    /// The response head for the client.
    out: Vec<u8>,
    /// Upstream bytes read and not yet relayed.
    relay: Vec<u8>,
    /// The deadline of the current wait: the next request head, or an upstream's answer.
    timer: Pin<Box<Sleep>>,
}

/// How waiting for a request head ended.
enum HeadWait {
    Complete,
    /// The client closed (or the frame checker refused what it sent).
    Ended,
    TimedOut,
    /// Shutting down, and no request had begun.
    ShuttingDown,
}

/// What the direct path decided for the request head at the start of `input`.
// Lives for a moment on the stack; boxing the exchange would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Begin {
    /// hyper takes the connection from this request on.
    Handoff,
    /// Answered by the router itself (no upstream to send it to).
    Local(Box<Local>),
    /// Sent upstream with the head written to `Conn::request_head`.
    Forward(Exchange),
}

/// A request the router answers itself.
struct Local {
    head_len: usize,
    response: Response<ResponseBody>,
    head_only: bool,
    request_id: InlineId,
}

/// A request on its way upstream.
struct Exchange {
    head_len: usize,
    head_only: bool,
    /// The client asked to close after this request.
    close: bool,
    request_id: InlineId,
    route: Arc<Route>,
    start: usize,
    in_flight: InFlight,
    /// The sticky bucket to hand out as a cookie.
    sticky: Option<u32>,
    started: Instant,
    access: Option<AccessEntry>,
    client: IpAddr,
}

/// How an upstream response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes (no length, not chunked).
    UntilClose,
}

/// An upstream response head, parsed and rewritten into `Conn::out`.
struct Answer {
    status: u16,
    /// Where the body starts in `Conn::relay`.
    head_len: usize,
    framing: Framing,
    /// The upstream keeps the connection open after this response.
    keep_alive: bool,
    /// The client connection closes after this response.
    close: bool,
    /// The body length the response announces, for the access log.
    length: Option<u64>,
}

/// Why an upstream gave no usable answer.
pub(crate) enum AskError {
    /// Connecting failed, or the connection broke before a whole response head: the request
    /// (bodiless and idempotent) may go to another upstream.
    Unreachable(io::Error),
    /// The upstream answered something that is not a usable HTTP/1.1 response.
    Invalid(&'static str),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::Unreachable(error) => write!(f, "{error}"),
            AskError::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// Serves `stream` on the direct path until it closes or a request needs hyper.
pub(crate) async fn serve<S: ClientSocket>(
    router: &Router,
    stream: GuardedStream<S>,
    peer: SocketAddr,
    scheme: ClientScheme,
    shutdown: &CancellationToken,
) -> Ending<S> {
    let Some(sockets) = router.upstreams.sockets().cloned() else {
        return Ending::Handoff {
            stream,
            prefix: Vec::new(),
            served: 0,
        };
    };
    let mut conn = Conn {
        stream,
        input: Vec::with_capacity(HEAD_READ),
        request_head: Vec::new(),
        out: Vec::new(),
        relay: Vec::new(),
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let config = &router.config;
    let mut served = 0;
    loop {
        let wait = if served == 0 {
            config.header_read_timeout
        } else {
            config.header_read_timeout.min(config.idle_timeout)
        };
        match conn.read_head(wait, shutdown).await {
            HeadWait::Complete => {}
            // The frame checker may owe the client a refusal: send it, then close.
            HeadWait::Ended => {
                conn.close().await;
                return Ending::Closed;
            }
            // Dropping the stream answers a partial head with 408 (see `GuardedStream`).
            HeadWait::TimedOut | HeadWait::ShuttingDown => return Ending::Closed,
        }
        let begun = router.begin(&conn.input, peer.ip(), scheme, &mut conn.request_head);
        let keep = match begun {
            Begin::Handoff => {
                return Ending::Handoff {
                    stream: conn.stream,
                    prefix: conn.input,
                    served,
                }
            }
            Begin::Local(local) => {
                let Local {
                    head_len,
                    response,
                    head_only,
                    request_id,
                } = *local;
                conn.input.drain(..head_len);
                let close = shutdown.is_cancelled();
                conn.write_local(response, &request_id, head_only, close)
                    .await
            }
            Begin::Forward(exchange) => {
                conn.input.drain(..exchange.head_len);
                router
                    .forward_direct(&mut conn, &sockets, exchange, shutdown)
                    .await
            }
        };
        served += 1;
        conn.trim();
        if !keep || (shutdown.is_cancelled() && conn.input.is_empty()) {
            conn.close().await;
            return Ending::Closed;
        }
    }
}

impl<S: ClientSocket> Conn<S> {
    /// Reads until `input` holds a whole request head (or something that cannot be one).
    async fn read_head(&mut self, wait: Duration, shutdown: &CancellationToken) -> HeadWait {
        let mut scanned = 0;
        let mut armed = false;
        loop {
            if find_head_end(&self.input, scanned).is_some() {
                return HeadWait::Complete;
            }
            scanned = self.input.len().saturating_sub(3);
            if self.input.capacity() - self.input.len() < 1024 {
                self.input.reserve(HEAD_READ);
            }
            // The timer is armed only when the head is not there at once.
            if !armed {
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + wait);
                armed = true;
            }
            let idle = self.input.is_empty();
            let read = tokio::select! {
                biased;
                read = self.stream.read_buf(&mut self.input) => read,
                () = self.timer.as_mut() => {
                    debug!("no complete request head within the header read timeout; closing");
                    return HeadWait::TimedOut;
                }
                () = shutdown.cancelled(), if idle => return HeadWait::ShuttingDown,
            };
            match read {
                Ok(0) | Err(_) => return HeadWait::Ended,
                Ok(_) => {}
            }
        }
    }

    /// Writes a response the router made itself; whether the connection stays open.
    async fn write_local(
        &mut self,
        response: Response<ResponseBody>,
        request_id: &InlineId,
        head_only: bool,
        close: bool,
    ) -> bool {
        let (head, body) = response.into_parts();
        let body = body.into_local_bytes().unwrap_or_default();
        let close = close
            || head
                .headers
                .get(CONNECTION)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        let out = &mut self.out;
        out.clear();
        push_status_line(out, head.status.as_u16(), "");
        for (name, value) in &head.headers {
            if name == CONTENT_LENGTH || name == CONNECTION {
                continue;
            }
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        push_field(out, b"content-length", body.len().to_string().as_bytes());
        push_field(out, b"x-request-id", request_id.as_bytes());
        if close {
            push_field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        let body: &[u8] = if head_only { &[] } else { &body };
        write_two(&mut self.stream, &self.out, body).await.is_ok() && !close
    }

    /// Gives back buffers a large answer or head grew, so an idle keep-alive connection
    /// holds a few KiB, not 64.
    fn trim(&mut self) {
        if self.relay.capacity() > IDLE_BUFFER {
            self.relay = Vec::new();
        }
        if self.input.capacity() > IDLE_BUFFER && self.input.len() <= HEAD_READ {
            self.input.shrink_to(HEAD_READ);
        }
    }

    /// Ends the connection: sends what the frame checker still owes the client (a refusal)
    /// and closes the write side, within the current timer.
    async fn close(&mut self) {
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = self.stream.shutdown() => {}
            () = self.timer.as_mut() => {}
        }
    }
}

impl Router {
    /// Reads the request head at the start of `input` and decides: hyper's, the router's own
    /// answer, or forwarded (with the upstream head written to `upstream_head`).
    fn begin(
        &self,
        input: &[u8],
        client: IpAddr,
        scheme: ClientScheme,
        upstream_head: &mut Vec<u8>,
    ) -> Begin {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let head_len = match request.parse_with_uninit_headers(input, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return Begin::Handoff,
        };
        if request.version != Some(1) {
            return Begin::Handoff;
        }
        let (method, head_only) = match request.method {
            Some("GET") => (Method::GET, false),
            Some("HEAD") => (Method::HEAD, true),
            _ => return Begin::Handoff,
        };
        let Some(target) = request.path.filter(|target| target.starts_with('/')) else {
            return Begin::Handoff;
        };
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        let Some(head) = RequestHead::read(request.headers) else {
            return Begin::Handoff;
        };
        let Ok(host_name) = std::str::from_utf8(head.host) else {
            return Begin::Handoff;
        };
        // An invalid Host finds no route (the table validates it): hyper answers it 400.
        let host_name = host_name.trim();
        if scheme == ClientScheme::Http
            && (self.config.https_redirect.is_some() || path.starts_with(ACME_CHALLENGE_PREFIX))
        {
            return Begin::Handoff;
        }

        let bucket_source = Cell::new(Source::Cookie);
        let lookup = Lookup {
            path,
            pin: head.pin,
            cookie: head.cookie,
            agent: head.agent,
        };
        // A held backend, an unknown host and maintenance are hyper's (nothing is counted
        // for them here).
        let Ok(Choice::Routed(routed)) =
            self.choose(&lookup, host_name, client, &bucket_source, true, true)
        else {
            return Begin::Handoff;
        };
        self.requests_by_scheme[scheme as usize].fetch_add(1, Ordering::Relaxed);
        let request_id = self.request_ids.assign_inline(head.request_id);
        debug!(
            request_id = request_id.as_str(),
            %client,
            %method,
            path,
            "request"
        );
        let started = Instant::now();
        let access = self.config.access_log.then(|| {
            let host = HeaderValue::from_bytes(head.host).ok();
            AccessEntry::begin(method.clone(), host, path, scheme)
        });
        let Routed {
            route,
            start,
            in_flight,
            picked,
            mirror,
        } = routed;
        let sticky = match picked {
            Picked::Split(bucket) if bucket_source.get() == Source::Hash => Some(bucket),
            _ => None,
        };
        if let Some(shadow) = mirror {
            let copy = mirror_head(&method, target, request.headers, scheme, &request_id);
            if let (Some(copy), Ok(host)) = (copy, HeaderValue::from_bytes(head.host)) {
                self.mirror(shadow, &copy, client, &host);
            }
        }
        let Some(start) = start else {
            no_instance(&route, &in_flight, started);
            return Begin::Local(Box::new(Local {
                head_len,
                response: page::no_instance(),
                head_only,
                request_id,
            }));
        };
        write_upstream_head(
            upstream_head,
            request.method.unwrap_or("GET"),
            target,
            request.headers,
            &head,
            &request_id,
            client,
            scheme,
        );
        Begin::Forward(Exchange {
            head_len,
            head_only,
            close: head.close,
            request_id,
            route,
            start,
            in_flight,
            sticky,
            started,
            access,
            client,
        })
    }

    /// Sends the exchange's head to its route's upstreams (moving on after connection
    /// failures, like [`Router::handle`]) and relays the answer; whether the client
    /// connection stays open.
    async fn forward_direct<S: ClientSocket>(
        &self,
        conn: &mut Conn<S>,
        sockets: &Arc<Pool<Socket>>,
        exchange: Exchange,
        shutdown: &CancellationToken,
    ) -> bool {
        let Exchange {
            head_only,
            close,
            request_id,
            route,
            start,
            mut in_flight,
            sticky,
            started,
            access,
            client,
            ..
        } = exchange;
        let mut served = Served::default();
        if access.is_some() {
            served.env = Some(route.env().to_owned());
        }
        let timeout = self.allowance(&route).timeout;
        let counters = route.counters();
        counters.retry_tokens.deposit(&self.config.retry_budget);
        conn.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
        let extras = Extras {
            request_id: &request_id,
            sticky,
            head_only,
        };
        let attempts = route.upstreams().len();
        let mut tried = Vec::new();
        let mut index = start;
        let mut attempt = 0;
        let failure = loop {
            attempt += 1;
            let last = attempt >= attempts;
            let upstream = &route.upstreams()[index];
            in_flight.sent_to(route.load_of(index));
            let closing = close || shutdown.is_cancelled();
            let out = &mut conn.out;
            let rewrite = |head: &[u8]| rewrite_response(head, &extras, closing, out);
            let asked = tokio::select! {
                biased;
                asked = ask(sockets, upstream.addr, &conn.request_head, &mut conn.relay, rewrite)
                    => asked,
                () = conn.timer.as_mut() => {
                    debug!(env = route.env(), instance = upstream.instance, "upstream timed out");
                    in_flight.counters().record_failed();
                    break page::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "molt: the application did not answer in time\n",
                    );
                }
            };
            match asked {
                Ok((socket, mut answer, head_len)) => {
                    answer.head_len = head_len;
                    route.record_success(index);
                    in_flight.counters().record_answered();
                    let elapsed = started.elapsed();
                    counters.traffic.live.record(answer.status, elapsed);
                    if let Some(entry) = access {
                        served.instance = Some(upstream.instance.clone());
                        let status =
                            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
                        let id = request_id.as_str();
                        entry.finish(id, client, status, &served, answer.length);
                    }
                    let keep = conn.relay_answer(socket, sockets, &answer).await;
                    drop(in_flight);
                    return keep && !answer.close;
                }
                Err(AskError::Unreachable(error)) => {
                    let error = UpstreamError::Connect(error);
                    if let Some(next) =
                        self.retry_after_failure(&route, index, &mut tried, last, &error)
                    {
                        index = next;
                        continue;
                    }
                }
                Err(AskError::Invalid(reason)) => {
                    debug!(
                        env = route.env(),
                        instance = upstream.instance,
                        reason,
                        "upstream failed"
                    );
                }
            }
            in_flight.counters().record_failed();
            break page::text(
                StatusCode::BAD_GATEWAY,
                "molt: the application could not be reached\n",
            );
        };
        let status = failure.status();
        counters
            .traffic
            .live
            .record(status.as_u16(), started.elapsed());
        if let Some(entry) = access {
            entry.finish(request_id.as_str(), client, status, &served, None);
        }
        let close = close || shutdown.is_cancelled();
        let keep = conn
            .write_local(failure, &request_id, head_only, close)
            .await;
        drop(in_flight);
        keep
    }
}

impl<S: ClientSocket> Conn<S> {
    /// Writes the answer's head (in `out`) and relays its body; the upstream socket goes back
    /// to the pool when the exchange ended cleanly. Whether the client connection can go on.
    async fn relay_answer(
        &mut self,
        mut socket: Socket,
        sockets: &Pool<Socket>,
        answer: &Answer,
    ) -> bool {
        let mut reusable = answer.keep_alive;
        let body_start = answer.head_len;
        let complete = match answer.framing {
            Framing::None => {
                reusable &= self.relay.len() == body_start;
                write_two(&mut self.stream, &self.out, &[]).await.is_ok()
            }
            Framing::Length(length) => {
                let have = (self.relay.len() - body_start) as u64;
                reusable &= have <= length;
                let first = have.min(length) as usize;
                let body = &self.relay[body_start..body_start + first];
                if write_two(&mut self.stream, &self.out, body).await.is_err() {
                    return false;
                }
                let mut remaining = length - first as u64;
                let mut complete = true;
                while remaining > 0 {
                    self.relay.clear();
                    self.relay
                        .reserve((remaining as usize).clamp(HEAD_READ, BODY_READ));
                    match socket.stream.read_buf(&mut self.relay).await {
                        Ok(0) | Err(_) => {
                            complete = false;
                            break;
                        }
                        Ok(n) => {
                            let n = (n as u64).min(remaining) as usize;
                            reusable &= n == self.relay.len();
                            remaining -= n as u64;
                            if self.stream.write_all(&self.relay[..n]).await.is_err() {
                                return false;
                            }
                        }
                    }
                }
                complete
            }
            Framing::Chunked => {
                let mut chunks = ChunkScanner::default();
                let mut pending = body_start;
                let mut head = true;
                loop {
                    let scanned = match chunks.scan(&self.relay[pending..]) {
                        Ok(scanned) => scanned,
                        Err(reason) => {
                            debug!(reason, "upstream sent a broken chunked body");
                            break false;
                        }
                    };
                    let end = pending + scanned;
                    let out: &[u8] = if head { &self.out } else { &[] };
                    if write_two(&mut self.stream, out, &self.relay[pending..end])
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    head = false;
                    if chunks.is_done() {
                        reusable &= end == self.relay.len();
                        break true;
                    }
                    self.relay.drain(..end);
                    pending = 0;
                    self.relay.reserve(BODY_READ);
                    match socket.stream.read_buf(&mut self.relay).await {
                        Ok(0) | Err(_) => break false,
                        Ok(_) => {}
                    }
                }
            }
            Framing::UntilClose => {
                reusable = false;
                if write_two(&mut self.stream, &self.out, &self.relay[body_start..])
                    .await
                    .is_err()
                {
                    return false;
                }
                loop {
                    self.relay.clear();
                    self.relay.reserve(BODY_READ);
                    match socket.stream.read_buf(&mut self.relay).await {
                        Ok(0) => break true,
                        Err(_) => break false,
                        Ok(_) => {
                            if self.stream.write_all(&self.relay).await.is_err() {
                                return false;
                            }
                        }
                    }
                }
            }
        };
        self.relay.clear();
        if complete && reusable {
            sockets.checkin(socket);
        }
        complete
    }
}

/// What the response head needs besides the upstream's fields.
struct Extras<'a> {
    request_id: &'a InlineId,
    sticky: Option<u32>,
    head_only: bool,
}

/// Sends `head` to `addr` on a pooled socket (a new one when the pooled socket turns out
/// closed) and reads the final response head into `relay` (informational answers are
/// skipped), handing it to `read` (which gives `None` for a 1xx). Returns the socket, what
/// `read` made of the head, and the head's length in `relay`.
async fn ask<T>(
    sockets: &Pool<Socket>,
    addr: SocketAddr,
    head: &[u8],
    relay: &mut Vec<u8>,
    mut read: impl FnMut(&[u8]) -> Result<Option<T>, AskError>,
) -> Result<(Socket, T, usize), AskError> {
    loop {
        let (mut socket, reused) = match sockets.checkout(addr) {
            Some(socket) => (socket, true),
            None => {
                let stream = sockets
                    .connect_tcp(addr)
                    .await
                    .map_err(|error| match error {
                        UpstreamError::Connect(error) => AskError::Unreachable(error),
                        _ => AskError::Invalid("connecting failed"),
                    })?;
                (socket_of(stream, addr), false)
            }
        };
        relay.clear();
        match exchange_head(&mut socket, head, relay, &mut read).await {
            Ok((answer, head_len)) => return Ok((socket, answer, head_len)),
            // A kept-alive socket the upstream had closed: the request (bodiless and
            // idempotent) goes again on a new one.
            Err(AskError::Unreachable(_)) if reused && relay.is_empty() => continue,
            Err(error) => return Err(error),
        }
    }
}

fn socket_of(stream: tokio::net::TcpStream, addr: SocketAddr) -> Socket {
    Socket { stream, addr }
}

/// Writes `head` and reads one final response head.
async fn exchange_head<T>(
    socket: &mut Socket,
    head: &[u8],
    relay: &mut Vec<u8>,
    read: &mut impl FnMut(&[u8]) -> Result<Option<T>, AskError>,
) -> Result<(T, usize), AskError> {
    socket
        .stream
        .write_all(head)
        .await
        .map_err(AskError::Unreachable)?;
    let mut scanned = 0;
    loop {
        if let Some(end) = find_head_end(relay, scanned) {
            match read(&relay[..end])? {
                Some(answer) => return Ok((answer, end)),
                // 1xx: drop it and read on.
                None => {
                    relay.drain(..end);
                    scanned = 0;
                    continue;
                }
            }
        }
        if relay.len() > MAX_RESPONSE_HEAD {
            return Err(AskError::Invalid("response head too large"));
        }
        scanned = relay.len().saturating_sub(3);
        relay.reserve(HEAD_READ);
        match socket.stream.read_buf(relay).await {
            Ok(0) => {
                return Err(AskError::Unreachable(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection before a response",
                )))
            }
            Ok(_) => {}
            Err(error) => return Err(AskError::Unreachable(error)),
        }
    }
}

/// A final response head, checked: its status, how its body is framed, whether the upstream
/// keeps the connection, and the fields its `Connection` header lists.
struct Checked<'a> {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    listed: Listed<'a>,
}

/// Parses a complete response head into `fields` and checks it; `None` for an informational
/// (1xx) response.
fn check_response<'h, 'b>(
    bytes: &'b [u8],
    head_only: bool,
    fields: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<(httparse::Response<'h, 'b>, Checked<'b>)>, AskError> {
    let mut response = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        bytes,
        fields,
    ) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(AskError::Invalid("incomplete response head")),
        Err(_) => return Err(AskError::Invalid("malformed response head")),
    }
    let status = response.code.unwrap_or(0);
    match status {
        101 => return Err(AskError::Invalid("unrequested protocol switch")),
        100..=199 => return Ok(None),
        200..=999 => {}
        _ => return Err(AskError::Invalid("invalid status code")),
    }
    let http10 = response.version == Some(0);
    let mut listed = Listed::default();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut keep_alive = !http10;
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in field.value.split(|&b| b == b',') {
                let value =
                    parse_length(part).ok_or(AskError::Invalid("invalid content-length"))?;
                if length.is_some_and(|seen| seen != value) {
                    return Err(AskError::Invalid("conflicting content-length"));
                }
                length = Some(value);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoded = true;
            chunked = last_token(field.value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
                listed.add(token);
            }
        }
    }
    if encoded && (length.is_some() || !chunked || http10) {
        return Err(AskError::Invalid(
            "ambiguous or unsupported transfer-encoding",
        ));
    }
    let bodiless = head_only || status == 204 || status == 304;
    let framing = match (bodiless, chunked, length) {
        (true, _, _) => Framing::None,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(0)) => Framing::None,
        (false, false, Some(length)) => Framing::Length(length),
        (false, false, None) => Framing::UntilClose,
    };
    let checked = Checked {
        status,
        framing,
        keep_alive,
        listed,
    };
    Ok(Some((response, checked)))
}

/// Parses a complete response head and writes the client's version of it to `out`;
/// `None` for an informational (1xx) response.
fn rewrite_response(
    bytes: &[u8],
    extras: &Extras<'_>,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Answer>, AskError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let Some((response, checked)) = check_response(bytes, extras.head_only, &mut fields)? else {
        return Ok(None);
    };
    let Checked {
        status,
        framing,
        keep_alive,
        listed,
    } = checked;
    let close = close || framing == Framing::UntilClose;

    out.clear();
    push_status_line(out, status, response.reason.unwrap_or(""));
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        if is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"x-request-id") || listed.has(name) {
            continue;
        }
        push_field(out, name, field.value);
    }
    if framing == Framing::Chunked {
        push_field(out, b"transfer-encoding", b"chunked");
    }
    push_field(out, b"x-request-id", extras.request_id.as_bytes());
    if let Some(bucket) = extras.sticky {
        let cookie =
            format!("{STICKY_COOKIE}={bucket}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax");
        push_field(out, b"set-cookie", cookie.as_bytes());
    }
    if close {
        push_field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Answer {
        status,
        head_len: 0,
        framing,
        keep_alive,
        close,
        length: match framing {
            Framing::Length(length) => Some(length),
            Framing::None => Some(0),
            _ => None,
        },
    }))
}

/// What the direct path reads from a request's header fields.
struct RequestHead<'a> {
    host: &'a [u8],
    pin: Option<&'a str>,
    cookie: Option<&'a [u8]>,
    agent: Option<&'a [u8]>,
    request_id: Option<&'a [u8]>,
    close: bool,
    /// Field names the `Connection` header lists (dropped like hop-by-hop fields).
    listed: Listed<'a>,
}

impl<'a> RequestHead<'a> {
    /// The fields of a request the direct path takes; `None` for one it leaves to hyper
    /// (a body, `Expect`, an upgrade, no single Host).
    fn read(fields: &[httparse::Header<'a>]) -> Option<Self> {
        let mut host = None;
        let mut head = RequestHead {
            host: &[],
            pin: None,
            cookie: None,
            agent: None,
            request_id: None,
            close: false,
            listed: Listed::default(),
        };
        let (mut ids, mut hosts) = (0, 0);
        for field in fields {
            let name = field.name.as_bytes();
            let value = field.value;
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => {
                    hosts += 1;
                    host = Some(value);
                }
                6 if name.eq_ignore_ascii_case(b"cookie") => {
                    head.cookie.get_or_insert(value);
                }
                6 if name.eq_ignore_ascii_case(b"expect") => return None,
                7 if name.eq_ignore_ascii_case(b"upgrade") => return None,
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for token in tokens(value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            head.close = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            return None;
                        }
                        head.listed.add(token);
                    }
                }
                10 if name.eq_ignore_ascii_case(b"user-agent") => {
                    head.agent.get_or_insert(value);
                }
                10 if name.eq_ignore_ascii_case(b"x-molt-env") && head.pin.is_none() => {
                    head.pin = std::str::from_utf8(value)
                        .ok()
                        .filter(|v| is_visible(v.as_bytes()));
                }
                12 if name.eq_ignore_ascii_case(b"x-request-id") => {
                    ids += 1;
                    head.request_id = Some(value);
                }
                14 if name.eq_ignore_ascii_case(b"content-length")
                    && parse_length(value) != Some(0) =>
                {
                    return None
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return None,
                _ => {}
            }
        }
        if ids > 1 {
            head.request_id = None;
        }
        if hosts != 1 {
            return None;
        }
        head.host = host?;
        Some(head)
    }
}

/// Writes the request head an upstream gets: the client's request line (as HTTP/1.1) and
/// fields without hop-by-hop ones, then the request id and the forwarding fields.
#[allow(clippy::too_many_arguments)]
fn write_upstream_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    fields: &[httparse::Header<'_>],
    head: &RequestHead<'_>,
    request_id: &InlineId,
    client: IpAddr,
    scheme: ClientScheme,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded = Vec::new();
    let mut forwarded_for = Vec::new();
    for field in fields {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"forwarded") {
            if is_visible(field.value) {
                forwarded.push(field.value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for.push(field.value);
            continue;
        }
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"x-request-id")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
            || head.listed.has(name)
        {
            continue;
        }
        push_field(out, name, field.value);
    }
    push_field(out, b"x-request-id", request_id.as_bytes());
    let host = std::str::from_utf8(head.host)
        .ok()
        .filter(|host| is_visible(host.as_bytes()));
    out.extend_from_slice(b"forwarded: ");
    for prior in forwarded {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    push_forwarded_element(&mut forwarded::Bytes(out), client, scheme, host);
    out.extend_from_slice(b"\r\nx-forwarded-for: ");
    for prior in forwarded_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    push_ip(&mut forwarded::Bytes(out), client);
    out.extend_from_slice(b"\r\n");
    push_field(out, b"x-forwarded-proto", scheme.as_str().as_bytes());
    push_field(out, b"x-forwarded-host", head.host);
    out.extend_from_slice(b"\r\n");
}

/// The request hyper would have built, for a mirror (only sampled requests pay for it).
fn mirror_head(
    method: &Method,
    target: &str,
    fields: &[httparse::Header<'_>],
    scheme: ClientScheme,
    request_id: &InlineId,
) -> Option<Request<()>> {
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = Uri::try_from(target).ok()?;
    let headers = request.headers_mut();
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        headers.append(name, value);
    }
    headers.insert(&crate::reqid::X_REQUEST_ID, request_id.header_value());
    request.extensions_mut().insert(scheme);
    Some(request)
}

/// Field names a `Connection` header listed (few; compared case-insensitively).
#[derive(Default)]
struct Listed<'a>(Vec<&'a [u8]>);

impl<'a> Listed<'a> {
    fn add(&mut self, token: &'a [u8]) {
        if !token.eq_ignore_ascii_case(b"close") && !token.eq_ignore_ascii_case(b"keep-alive") {
            self.0.push(token);
        }
    }

    fn has(&self, name: &[u8]) -> bool {
        self.0
            .iter()
            .any(|listed| listed.eq_ignore_ascii_case(name))
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), never passed on.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP_BY_HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP_BY_HOP
        .iter()
        .any(|hop| hop.len() == name.len() && hop.eq_ignore_ascii_case(name))
}

/// The comma-separated tokens of a field value, trimmed, empty ones left out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

fn last_token(value: &[u8]) -> &[u8] {
    tokens(value).last().unwrap_or_default()
}

/// A `Content-Length` value: digits only (surrounding spaces allowed).
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Visible ASCII, spaces and tabs: what `HeaderValue::to_str` accepts.
fn is_visible(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    // Three digits: parsed and checked to be in 100..=999.
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&digits);
    out.push(b' ');
    let reason = if reason.is_empty() {
        StatusCode::from_u16(status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("")
    } else {
        reason
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A bodiless request hyper serves (an h2 stream, or a request after a connection moved to
/// hyper), sent over a pooled plain socket like the direct path's instead of through hyper's
/// client: `head` is the whole upstream head. Returns the response for hyper to write, its
/// body streaming from the socket.
pub(crate) async fn send_bodiless(
    sockets: &Arc<Pool<Socket>>,
    addr: SocketAddr,
    head: &[u8],
    head_only: bool,
) -> Result<Response<SocketBody>, AskError> {
    let mut relay = Vec::new();
    let read = |bytes: &[u8]| response_head(bytes, head_only);
    let (socket, (head, framing, keep_alive), head_len) =
        ask(sockets, addr, head, &mut relay, read).await?;
    // Bytes after a bodiless answer leave the socket in an unknown state.
    let extra = relay.len() > head_len;
    let reusable = keep_alive
        && match framing {
            Framing::None => !extra,
            Framing::UntilClose => false,
            Framing::Length(_) | Framing::Chunked => true,
        };
    let buf = match framing {
        Framing::None => BytesMut::new(),
        _ => BytesMut::from(&relay[head_len..]),
    };
    let body = SocketBody {
        socket: Some(socket),
        reusable,
        remaining: match framing {
            Framing::Length(length) => length,
            _ => 0,
        },
        framing,
        pool: Arc::clone(sockets),
        buf,
        chunks: ChunkScanner::default(),
        done: false,
    };
    let mut response = Response::from_parts(head, body);
    if response.body().framing == Framing::None {
        response.body_mut().finish();
    }
    Ok(response)
}

/// The head hyper gets for an upstream response head: status and fields without hop-by-hop
/// ones (hyper frames the body itself), and how the body is framed upstream.
fn response_head(
    bytes: &[u8],
    head_only: bool,
) -> Result<Option<(hyper::http::response::Parts, Framing, bool)>, AskError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let Some((response, checked)) = check_response(bytes, head_only, &mut fields)? else {
        return Ok(None);
    };
    let (mut head, ()) = Response::new(()).into_parts();
    head.status = StatusCode::from_u16(checked.status)
        .map_err(|_| AskError::Invalid("invalid status code"))?;
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        if is_hop_by_hop(name) || checked.listed.has(name) {
            continue;
        }
        let name = HeaderName::from_bytes(name)
            .map_err(|_| AskError::Invalid("invalid header field name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| AskError::Invalid("invalid header field value"))?;
        head.headers.append(name, value);
    }
    Ok(Some((head, checked.framing, checked.keep_alive)))
}

/// An upstream response body read from a pooled plain socket (see [`send_bodiless`]); the
/// socket goes back to the pool when the body has been read to its end.
pub(crate) struct SocketBody {
    socket: Option<Socket>,
    pool: Arc<Pool<Socket>>,
    /// Bytes read and not yet handed on.
    buf: BytesMut,
    framing: Framing,
    /// Body bytes still to come, for a body of known length.
    remaining: u64,
    chunks: ChunkScanner,
    reusable: bool,
    done: bool,
}

impl std::fmt::Debug for SocketBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketBody")
            .field("framing", &self.framing)
            .field("done", &self.done)
            .finish()
    }
}

impl SocketBody {
    /// The body has ended: the socket goes back to the pool if nothing is left on it.
    fn finish(&mut self) {
        self.done = true;
        if let Some(socket) = self.socket.take() {
            if self.reusable && self.buf.is_empty() {
                self.pool.checkin(socket);
            }
        }
    }

    /// Reads more from the socket into `buf`; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(socket) = self.socket.as_ref() else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(BODY_READ);
        loop {
            ready!(socket.stream.poll_read_ready(cx))?;
            match socket.stream.try_read_buf(&mut self.buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl hyper::body::Body for SocketBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.framing {
                Framing::None => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(_) if this.remaining == 0 => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(_) if !this.buf.is_empty() => {
                    let take = (this.buf.len() as u64).min(this.remaining) as usize;
                    if this.buf.len() > take {
                        // More than the length said: the socket is in an unknown state.
                        this.reusable = false;
                        this.buf.truncate(take);
                    }
                    this.remaining -= take as u64;
                    let data = this.buf.split_to(take).freeze();
                    if this.remaining == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked if !this.buf.is_empty() => {
                    let mut data = BytesMut::new();
                    let scanned = this
                        .chunks
                        .scan_with(&this.buf, |piece| data.extend_from_slice(piece))
                        .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
                    let _ = this.buf.split_to(scanned);
                    if this.chunks.is_done() {
                        if !this.buf.is_empty() {
                            this.reusable = false;
                            this.buf.clear();
                        }
                        this.finish();
                    }
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data.freeze()))));
                    }
                    if this.done {
                        return Poll::Ready(None);
                    }
                    // Only part of a chunk-size line: read on.
                }
                Framing::UntilClose if !this.buf.is_empty() => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection in the middle of the body",
                    ))));
                }
                Ok(_) => {}
                Err(error) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.framing {
            Framing::Length(_) => hyper::body::SizeHint::with_exact(self.remaining),
            Framing::None => hyper::body::SizeHint::with_exact(0),
            Framing::Chunked | Framing::UntilClose => hyper::body::SizeHint::default(),
        }
    }
}

/// Where the head that starts `bytes` ends (just after its blank line), searching from
/// `from` (bytes before it were searched already).
fn find_head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let start = from.min(bytes.len());
    bytes[start..]
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| start + at + 4)
}

/// Writes `a` then `b` with as few writes as the socket allows.
async fn write_two<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let written = if a.is_empty() {
            stream.write(b).await?
        } else if b.is_empty() {
            stream.write(a).await?
        } else {
            stream
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = written.min(a.len());
        a = &a[from_a..];
        b = &b[written - from_a..];
    }
    Ok(())
}

/// Follows a chunked body (RFC 9112 §7.1) to find where it ends, so it can be relayed as is.
#[derive(Debug, Default)]
struct ChunkScanner {
    state: ChunkState,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Trailer fields after the last chunk, up to an empty line.
    Trailers,
    Done,
}

impl ChunkScanner {
    /// Scans as much of `bytes` (what follows the bytes scanned before) as forms whole
    /// pieces; returns how many bytes that was. A piece cut short is scanned again, longer,
    /// on the next call.
    fn scan(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        self.scan_with(bytes, |_| {})
    }

    /// [`ChunkScanner::scan`], handing every piece of chunk data (the body without its
    /// framing) to `data`.
    fn scan_with(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, &'static str> {
        let mut at = 0;
        loop {
            let rest = &bytes[at..];
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        at += used;
                        self.state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() <= MAX_CHUNK_LINE => return Ok(at),
                    _ => return Err("invalid chunk size line"),
                },
                ChunkState::Data(left) => {
                    let take = left.min(rest.len() as u64);
                    data(&rest[..take as usize]);
                    at += take as usize;
                    if take == left {
                        self.state = ChunkState::DataEnd;
                    } else {
                        self.state = ChunkState::Data(left - take);
                        return Ok(at);
                    }
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if self.trailer_bytes + rest.len() > MAX_TRAILERS {
                            return Err("trailers too large");
                        }
                        return Ok(at);
                    };
                    at += line + 2;
                    self.trailer_bytes += line + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    if line == 0 {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(at),
            }
        }
    }

    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

impl ResponseBody {
    /// The bytes of a body the router wrote itself (`None` for an upstream's).
    pub(crate) fn into_local_bytes(self) -> Option<Bytes> {
        use hyper::body::Body as _;
        let ResponseBody::Local(mut body) = self else {
            return None;
        };
        let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        match Pin::new(&mut body).poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => Some(Bytes::new()),
        }
    }
}

/// The direct path's parsers on their own, for the fuzz targets in `fuzz/` and the property
/// tests (which run in CI without nightly).
pub mod parsers {
    use std::net::IpAddr;

    use crate::reqid::RequestIds;
    use crate::ClientScheme;

    /// The head the direct path would send upstream for the request head at the start of
    /// `bytes` (client 10.0.0.7 over plain HTTP, request id `rid`); `None` when the request is
    /// incomplete, invalid, or left to hyper.
    pub fn upstream_head(bytes: &[u8]) -> Option<Vec<u8>> {
        let mut fields = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
        let mut request = httparse::Request::new(&mut fields);
        if !request.parse(bytes).ok()?.is_complete() || request.version != Some(1) {
            return None;
        }
        let target = request.path.filter(|target| target.starts_with('/'))?;
        let head = super::RequestHead::read(request.headers)?;
        let mut out = Vec::new();
        let id = RequestIds::new().assign_inline(Some(b"rid"));
        super::write_upstream_head(
            &mut out,
            request.method?,
            target,
            request.headers,
            &head,
            &id,
            IpAddr::from([10, 0, 0, 7]),
            ClientScheme::Http,
        );
        Some(out)
    }

    /// The response head the client would get for the upstream head `bytes` (request id
    /// `rid`): `Ok(None)` for an informational answer, `Err` for one the direct path refuses
    /// (a 502).
    pub fn client_head(bytes: &[u8], head_only: bool) -> Result<Option<Vec<u8>>, &'static str> {
        let id = RequestIds::new().assign_inline(Some(b"rid"));
        let extras = super::Extras {
            request_id: &id,
            sticky: None,
            head_only,
        };
        let mut out = Vec::new();
        match super::rewrite_response(bytes, &extras, false, &mut out) {
            Ok(Some(_)) => Ok(Some(out)),
            Ok(None) => Ok(None),
            Err(super::AskError::Invalid(reason)) => Err(reason),
            Err(super::AskError::Unreachable(_)) => Err("unreachable"),
        }
    }

    /// Follows a chunked body fed in `pieces`; the length of the body once it has ended
    /// (`None` while it has not), or why it is broken.
    pub fn chunked_length(pieces: &[&[u8]]) -> Result<Option<usize>, &'static str> {
        let mut scanner = super::ChunkScanner::default();
        let mut buffered = Vec::new();
        let mut scanned_total = 0;
        for piece in pieces {
            buffered.extend_from_slice(piece);
            let scanned = scanner.scan(&buffered)?;
            scanned_total += scanned;
            buffered.drain(..scanned);
            if scanner.is_done() {
                return Ok(Some(scanned_total));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reqid::RequestIds;

    fn scan_all(body: &[u8], step: usize) -> Result<Option<usize>, &'static str> {
        let mut scanner = ChunkScanner::default();
        let mut pending = 0;
        let mut fed = 0;
        while fed < body.len() {
            fed = (fed + step).min(body.len());
            pending += scanner.scan(&body[pending..fed])?;
            if scanner.is_done() {
                return Ok(Some(pending));
            }
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_they_end_in_any_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for step in 1..=body.len() {
            assert_eq!(scan_all(body, step), Ok(Some(end)), "step {step}");
        }
        assert_eq!(scan_all(b"0\r\n\r\n", 1), Ok(Some(5)));
        assert_eq!(scan_all(b"3\r\nab", 2), Ok(None));
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        assert!(scan_all(b"zz\r\n", 4).is_err());
        assert!(scan_all(b"3\r\nabcd\r\n", 9).is_err());
        assert!(scan_all(b"ffffffffffffffffffff\r\n", 30).is_err());
        let long_line = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE + 10]].concat();
        assert!(scan_all(&long_line, long_line.len()).is_err());
    }

    fn rewrite(head: &str, head_only: bool) -> Result<(Option<Answer>, String), &'static str> {
        let id = RequestIds::new().assign_inline(Some(b"id-1"));
        let extras = Extras {
            request_id: &id,
            sticky: None,
            head_only,
        };
        let mut out = Vec::new();
        match rewrite_response(head.as_bytes(), &extras, false, &mut out) {
            Ok(answer) => Ok((answer, String::from_utf8(out).expect("ascii head"))),
            Err(AskError::Invalid(reason)) => Err(reason),
            Err(AskError::Unreachable(_)) => Err("unreachable"),
        }
    }

    #[test]
    fn response_heads_are_rewritten_for_the_client() {
        let (answer, out) = rewrite(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\nServer: app\r\n\r\n",
            false,
        )
        .expect("valid");
        let answer = answer.expect("final");
        assert_eq!(answer.framing, Framing::Length(5));
        assert!(answer.keep_alive && !answer.close);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: app\r\nx-request-id: id-1\r\n\r\n"
        );

        let (answer, out) = rewrite(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .expect("valid");
        assert_eq!(answer.expect("final").framing, Framing::Chunked);
        assert!(out.contains("transfer-encoding: chunked\r\n"));

        let (answer, out) = rewrite("HTTP/1.0 200 OK\r\n\r\n", false).expect("valid");
        let answer = answer.expect("final");
        assert_eq!(answer.framing, Framing::UntilClose);
        assert!(!answer.keep_alive && answer.close);
        assert!(out.contains("connection: close\r\n"));

        let (answer, _) =
            rewrite("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).expect("valid");
        assert_eq!(answer.expect("final").framing, Framing::None);
        let (answer, _) = rewrite("HTTP/1.1 304 Not Modified\r\n\r\n", false).expect("valid");
        assert_eq!(answer.expect("final").framing, Framing::None);
        let (answer, _) =
            rewrite("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false).expect("valid");
        assert!(answer.is_none(), "1xx answers are skipped");
    }

    #[test]
    fn ambiguous_response_framing_is_refused() {
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        ] {
            assert!(rewrite(head, false).is_err(), "{head:?}");
        }
        let (answer, _) = rewrite(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .expect("equal lengths agree");
        assert_eq!(answer.expect("final").framing, Framing::Length(5));
    }

    fn head_of(raw: &str) -> Option<(String, bool)> {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut fields);
        request.parse(raw.as_bytes()).expect("test head");
        let head = RequestHead::read(request.headers)?;
        let mut out = Vec::new();
        let id = RequestIds::new().assign_inline(Some(b"rid"));
        write_upstream_head(
            &mut out,
            request.method.expect("method"),
            request.path.expect("path"),
            request.headers,
            &head,
            &id,
            IpAddr::from([10, 0, 0, 7]),
            ClientScheme::Http,
        );
        Some((String::from_utf8(out).expect("ascii"), head.close))
    }

    #[test]
    fn upstream_heads_carry_forwarding_fields_and_no_hop_by_hop_ones() {
        let (head, close) = head_of(
            "GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
             TE: trailers\r\nX-Forwarded-For: 1.1.1.1\r\nForwarded: for=1.1.1.1\r\n\
             X-Forwarded-Proto: https\r\nX-Request-Id: theirs\r\nAccept: */*\r\n\r\n",
        )
        .expect("direct");
        assert!(close);
        assert_eq!(
            head,
            "GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nAccept: */*\r\nx-request-id: rid\r\n\
             forwarded: for=1.1.1.1, for=10.0.0.7;proto=http;host=app.test\r\n\
             x-forwarded-for: 1.1.1.1, 10.0.0.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: app.test\r\n\r\n"
        );
    }

    #[test]
    fn requests_with_a_body_an_upgrade_or_two_hosts_are_left_to_hyper() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        ] {
            assert!(head_of(raw).is_none(), "{raw:?}");
        }
        assert!(head_of("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").is_some());
    }

    #[test]
    fn two_buffers_are_written_whole() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut sink = Vec::new();
            write_two(&mut sink, b"head", b"body").await.expect("write");
            write_two(&mut sink, b"", b"!").await.expect("write");
            assert_eq!(sink, b"headbody!");
        });
    }
}
