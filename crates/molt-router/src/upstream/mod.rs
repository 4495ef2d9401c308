//! The upstream side of the proxy: how the router reaches instances.
//!
//! With HTTP/1.1 instances ([`UpstreamProtocol::Http1`]) the router keeps its own pools of
//! keep-alive connections ([`pool`]), sharded by tokio runtime: hyper's client connections,
//! driven by the request's own task ([`connection`]), for requests with a body; and plain
//! sockets for bodiless requests, which molt exchanges itself ([`exchange`]: the request head
//! written as is, the response head read and checked with httparse, the body framed by
//! [`body_framing`]) — the direct path relays such an answer to its client byte for byte,
//! hyper's path gets it as a [`SocketBody`].
//!
//! Both pools count their connections against one cap per address ([`cap`], like nginx's
//! `max_conns`): at the cap a request takes an idle connection, has one another shard or pool
//! holds closed to make room, or waits for one, briefly ([`pool`]).
//!
//! With [`UpstreamProtocol::Http2PriorKnowledge`] the router uses hyper-util's pooled client
//! instead: an h2 connection multiplexes many requests, so it needs a task of its own (and
//! one connection per instance, which the cap does not count).
//!
//! Nothing here knows routes or clients: an upstream is an address.

mod body_framing;
mod cap;
mod connection;
mod error;
mod exchange;
mod pool;
mod socket_body;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub(crate) use body_framing::{ChunkScanner, Framing};
pub(crate) use cap::{Cap, ConnectionRegistry, Connections};
pub(crate) use connection::{RequestBody, UpstreamBody};
pub(crate) use error::UpstreamError;
pub(crate) use exchange::{
    ask, check_response, read_head, send_bodiless, socket_for, AskError, Checked,
};
pub(crate) use pool::{Destination, Pool, Socket};
pub(crate) use socket_body::SocketBody;

use crate::config::UpstreamProtocol;
use connection::Connection;
use pool::{Evict, POOL_IDLE_TIMEOUT};

/// How the router reaches instances.
pub(crate) enum Upstreams {
    /// molt's own HTTP/1.1 pools: hyper connections for requests with a body, plain sockets
    /// for bodiless ones (the direct path's, and those hyper serves).
    Http1 {
        pool: Arc<Pool<Connection>>,
        sockets: Arc<Pool<Socket>>,
    },
    /// hyper-util's client, speaking h2c with prior knowledge.
    Http2(Box<Client<HttpConnector, RequestBody>>),
}

impl Upstreams {
    /// The client for `protocol`, connecting within `connect_timeout`, with `cap` on the
    /// connections open to each address (HTTP/1.1 instances only).
    pub(crate) fn new(protocol: UpstreamProtocol, connect_timeout: Duration, cap: Cap) -> Self {
        match protocol {
            UpstreamProtocol::Http1 => {
                let pool = Arc::new(Pool::new(connect_timeout, cap));
                let sockets = Arc::new(Pool::new(connect_timeout, cap));
                let (evict_pool, evict_sockets): (Weak<dyn Evict>, Weak<dyn Evict>) =
                    (Arc::downgrade(&pool) as _, Arc::downgrade(&sockets) as _);
                pool.pair_with(evict_sockets);
                sockets.pair_with(evict_pool);
                Upstreams::Http1 { pool, sockets }
            }
            UpstreamProtocol::Http2PriorKnowledge => {
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

    /// Sends `request` to `destination` and returns the response head; its body streams from
    /// the connection afterwards.
    pub(crate) async fn send(
        &self,
        destination: Destination<'_>,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self {
            Upstreams::Http1 { pool, .. } => pool.send(destination, request).await,
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

/// The request target for the upstream at `authority`: the origin form (`/path?query`) for
/// HTTP/1.1 connections, the absolute form for the h2c client, which reads the authority
/// from it.
pub(crate) fn upstream_uri(authority: &Authority, path: PathAndQuery, absolute: bool) -> Uri {
    if !absolute {
        return Uri::from(path);
    }
    let mut uri = hyper::http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query = Some(path);
    Uri::from_parts(uri).expect("scheme, authority and path form an absolute URI")
}
