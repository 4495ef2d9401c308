//! molt's own HTTP/1.1 exchange over a pooled plain socket, for bodiless requests: write the
//! request head, read the response head (skipping informational answers) and check it —
//! status, framing, whether the upstream keeps the connection — without hyper's client.
//!
//! The direct path ([`crate::direct`]) rewrites the checked head for its client and relays
//! the body itself; the bodiless requests hyper serves get the head as a
//! `hyper::http::response::Parts` and the body as a [`SocketBody`] ([`send_bodiless`]).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body_framing::Framing;
use super::error::UpstreamError;
use super::pool::{Acquired, Destination, Pool, Socket};
use super::socket_body::SocketBody;
use crate::headers::{is_hop_by_hop, Listed};
use crate::http1::{find_head_end, last_token, parse_length, tokens, HEAD_READ, MAX_HEADERS};

/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why an upstream gave no usable answer.
pub(crate) enum AskError {
    /// Connecting failed, or the connection broke before a whole response head: the request
    /// (bodiless and idempotent) may go to another upstream.
    Unreachable(io::Error),
    /// The upstream answered something that is not a usable HTTP/1.1 response.
    Invalid(&'static str),
    /// The upstream had its cap of open connections, and none was freed in time.
    AtLimit(SocketAddr),
}

/// A final response head, checked: its status, how its body is framed, whether the upstream
/// keeps the connection, and the fields its `Connection` header lists.
pub(crate) struct Checked<'a> {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    pub(crate) keep_alive: bool,
    pub(crate) listed: Listed<'a>,
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::Unreachable(error) => write!(f, "{error}"),
            AskError::Invalid(reason) => f.write_str(reason),
            AskError::AtLimit(addr) => write!(f, "instance {addr} at its connection limit"),
        }
    }
}

/// Sends `head` to `destination` on a pooled socket (a new one when the pooled socket turns
/// out closed) and reads the final response head into `relay` (informational answers are
/// skipped), handing it to `read` (which gives `None` for a 1xx). Returns the socket, what
/// `read` made of the head, and the head's length in `relay`.
pub(crate) async fn ask<T>(
    sockets: &Pool<Socket>,
    destination: Destination<'_>,
    head: &[u8],
    relay: &mut Vec<u8>,
    mut read: impl FnMut(&[u8]) -> Result<Option<T>, AskError>,
) -> Result<(Socket, T, usize), AskError> {
    loop {
        // Written out rather than `socket_for`: one future less on the direct path.
        let acquired = match sockets.acquire_now(destination) {
            Some(acquired) => acquired,
            None => sockets.acquire_at_cap(destination).await?,
        };
        let (mut socket, reused) = match acquired {
            Acquired::Idle(socket) => (socket, true),
            Acquired::New(slot) => {
                let addr = destination.addr;
                let stream = sockets.connect_tcp(addr).await?;
                (Socket { stream, addr, slot }, false)
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

/// A pooled socket to `destination` (and whether it was used before), or a new one.
pub(crate) async fn socket_for(
    sockets: &Pool<Socket>,
    destination: Destination<'_>,
) -> Result<(Socket, bool), AskError> {
    let acquired = match sockets.acquire_now(destination) {
        Some(acquired) => acquired,
        None => sockets.acquire_at_cap(destination).await?,
    };
    let slot = match acquired {
        Acquired::Idle(socket) => return Ok((socket, true)),
        Acquired::New(slot) => slot,
    };
    let addr = destination.addr;
    let stream = sockets.connect_tcp(addr).await?;
    Ok((Socket { stream, addr, slot }, false))
}

impl From<UpstreamError> for AskError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Connect(error) => AskError::Unreachable(error),
            UpstreamError::AtLimit(addr) => AskError::AtLimit(addr),
            UpstreamError::Http(_) | UpstreamError::Client(_) => {
                AskError::Invalid("connecting failed")
            }
        }
    }
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
    read_head(socket, relay, read).await
}

/// Reads one final response head into `relay` (which may hold its start already), handing
/// it to `read` (`None` for a 1xx, which is dropped); what `read` made of it and the head's
/// length in `relay`.
pub(crate) async fn read_head<T>(
    socket: &mut Socket,
    relay: &mut Vec<u8>,
    read: &mut impl FnMut(&[u8]) -> Result<Option<T>, AskError>,
) -> Result<(T, usize), AskError> {
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

/// Parses a complete response head into `fields` and checks it; `None` for an informational
/// (1xx) response.
pub(crate) fn check_response<'h, 'b>(
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

/// A bodiless request hyper serves (an h2 stream, or a request after a connection moved to
/// hyper), sent over a pooled plain socket like the direct path's instead of through hyper's
/// client: `head` is the whole upstream head. Returns the response for hyper to write, its
/// body streaming from the socket.
pub(crate) async fn send_bodiless(
    sockets: &Arc<Pool<Socket>>,
    destination: Destination<'_>,
    head: &[u8],
    head_only: bool,
) -> Result<Response<SocketBody>, AskError> {
    let mut relay = Vec::new();
    let read = |bytes: &[u8]| response_head(bytes, head_only);
    let (socket, (head, framing, keep_alive), head_len) =
        ask(sockets, destination, head, &mut relay, read).await?;
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
    let body = SocketBody::new(socket, Arc::clone(sockets), framing, buf, reusable);
    Ok(Response::from_parts(head, body))
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
