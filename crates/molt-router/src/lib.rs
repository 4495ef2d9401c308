//! molt-router: the HTTP/1.1 reverse proxy in front of every environment.
//!
//! The controller builds a [`RouteTable`] (hostname -> environment -> instances) and hands it
//! to [`Router::publish`]; the router looks the table up once per request, so a publish moves
//! even keep-alive connections to the new environment on their next request. Per-environment
//! counters ([`Router::env_stats`], [`Router::is_drained`]) tell the controller when an old
//! environment has finished its last response and its instances may stop.
//!
//! The router knows nothing of molt's store or runtime: it only sees hostnames, environment
//! ids and socket addresses.

mod access;
mod admission;
mod body;
mod forwarded;
pub mod framing;
mod guard;
mod headers;
pub mod host;
mod limits;
mod page;
mod proxy;
mod reqid;
mod server;
mod stats;
mod table;

use std::time::Duration;

pub use proxy::Router;
pub use stats::EnvStats;
pub use table::{Backend, Maintenance, Route, RouteTable, Upstream};

/// Timeouts and limits of the router.
///
/// Build it with struct update syntax (`RouterConfig { access_log: true,
/// ..RouterConfig::default() }`) so new fields keep their defaults.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How long a client may take to send a request's headers before its connection is closed
    /// (with a 408 when part of a request head had arrived). hyper starts this timer when it
    /// begins waiting for a request, so it also bounds idle time between requests.
    pub header_read_timeout: Duration,
    /// A client connection that has no request in progress and has moved no byte for this
    /// long is closed (keep-alive idle timeout).
    pub idle_timeout: Duration,
    /// Largest request head (request line and header fields) in bytes; larger → 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more → 431.
    pub max_headers: usize,
    /// Largest request body in bytes: a larger `Content-Length` is answered 413 before
    /// anything is forwarded; a streamed body is cut off at the limit.
    pub max_body_bytes: u64,
    /// Emit one `tracing` event per request at INFO on target `molt_router::access`
    /// (request id, client, host, method, path, status, env, instance, duration). The
    /// subscriber formats it: with `MOLT_LOG=molt_router::access=info` and a JSON
    /// subscriber, each line is a JSON object.
    pub access_log: bool,
    /// How long an upstream may take to send response headers before the client gets a 504.
    pub upstream_timeout: Duration,
    /// How long [`Router::serve`] waits for open connections after shutdown before closing them.
    pub shutdown_grace: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(20),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 100 * 1024 * 1024,
            access_log: false,
            upstream_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}
