//! The direct path: molt's own HTTP/1.1 exchange for the commonest requests — `GET`,
//! `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE` and `OPTIONS`, with a body framed by length or
//! chunks or none, without an upgrade, from HTTP/1.1 clients, to HTTP/1.1 instances — parsed
//! in place from the client's bytes and written to a pooled upstream socket without hyper.
//!
//! Why: hyper's server and client state machines, and the header maps between them, cost
//! about 2.5× nginx's instructions per proxied request (callgrind; see docs/benchmarks.md).
//! The direct path parses the head with httparse, routes it through the same table,
//! counters, retries, retry budget, ejection and drain accounting as hyper's path
//! (`hyper_path`; both forward through one attempt loop, `attempts.rs`),
//! writes the upstream head straight from the client's bytes, and relays the response head
//! and body (by length, chunks or close) as they come. It allocates nothing per request on
//! its hot path: a connection's buffers are reused from one request to the next.
//!
//! A request body streams through as it arrives (`upload`), within the body limit; a
//! request whose body broke off or outgrew the limit is answered (400, 413) and counted
//! failed, and its connection closes.
//!
//! Everything else stays hyper's: on the first request the direct path does not take (an
//! upgrade, HTTP/1.0, h2c, a held backend, an unknown host, an ACME challenge...) the
//! connection is handed to hyper together with the bytes already read, none of them
//! consumed, and hyper serves it from then on. The frame checker ([`crate::framing`]) sits
//! under both: no byte reaches either parser before its request's framing is known to be
//! unambiguous.
//!
//! The connection loop is here; `conn` holds the connection's buffers and client I/O,
//! `request` reads a request head and decides, `forward` sends it upstream through the
//! shared attempt loop, `upload` sends a request body, `response` writes the client's
//! response head, `relay` relays the answer's body. The upstream exchange itself is
//! `upstream`'s.

mod conn;
mod forward;
pub mod parsers;
mod relay;
mod request;
mod response;
mod upload;

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::ClientScheme;
use crate::guard::{ClientSocket, GuardedStream};
use crate::http1::HEAD_READ;
use crate::router::Router;
use conn::{Conn, HeadWait};
use request::{Begin, Local};

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
