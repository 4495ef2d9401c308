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

mod body;
mod headers;
mod metrics;
mod proxy;
mod server;
mod stats;
mod table;

use std::time::Duration;

pub use proxy::Router;
pub use stats::EnvStats;
pub use table::{Backend, Route, RouteTable, Upstream};

/// Timeouts of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// How long a client may take to send a request's headers before its connection is closed.
    pub header_read_timeout: Duration,
    /// How long an upstream may take to send response headers before the client gets a 504.
    pub upstream_timeout: Duration,
    /// How long [`Router::serve`] waits for open connections after shutdown before closing them.
    pub shutdown_grace: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}
