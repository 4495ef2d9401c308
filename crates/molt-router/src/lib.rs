//! molt-router: the HTTP reverse proxy in front of every environment.
//!
//! The controller builds a [`RouteTable`] (hostname -> environment -> instances) and hands it
//! to [`Router::publish`]; the router looks the table up once per request, so a publish moves
//! even keep-alive connections to the new environment on their next request. Per-environment
//! counters ([`Router::env_stats`], [`Router::is_drained`]) tell the controller when an old
//! environment has finished its last response and its instances may stop.
//!
//! Clients speak HTTP/1.1 or HTTP/2 with prior knowledge (h2c) on the same port; upstreams
//! get HTTP/1.1 (or h2c, see [`UpstreamProtocol`]). HTTP/1.1 upgrades (WebSocket) are relayed
//! over a dedicated upstream connection and stay in flight for their environment until they
//! close ([`RouterConfig::upgrade_grace`]).
//!
//! The router knows nothing of molt's store or runtime: it only sees hostnames, environment
//! ids and socket addresses.

mod body;
mod headers;
mod metrics;
mod proxy;
mod server;
mod stats;
mod table;
mod upgrade;

use std::time::Duration;

pub use proxy::Router;
pub use stats::EnvStats;
pub use table::{Backend, Route, RouteTable, Upstream};

/// The protocol the router speaks to upstream instances for ordinary requests.
///
/// Upgrades (WebSocket) always use a dedicated HTTP/1.1 connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c): one multiplexed connection per
    /// instance. The instances must speak h2c.
    Http2PriorKnowledge,
}

/// Timeouts and protocol choices of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How long a client may take to send a request's headers before its connection is closed.
    pub header_read_timeout: Duration,
    /// How long an upstream may take to send response headers before the client gets a 504.
    pub upstream_timeout: Duration,
    /// How long [`Router::serve`] waits for open connections after shutdown before closing them.
    pub shutdown_grace: Duration,
    /// How long an upgraded connection (WebSocket) stays open after a publish stopped routing
    /// to its environment; then it is closed, so the environment can drain.
    pub upgrade_grace: Duration,
    /// The protocol of ordinary requests to upstreams.
    pub upstream_protocol: UpstreamProtocol,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            upgrade_grace: Duration::from_secs(30),
            upstream_protocol: UpstreamProtocol::Http1,
        }
    }
}
