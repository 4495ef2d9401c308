//! molt-router: the HTTP reverse proxy in front of every environment.
//!
//! The controller builds a [`RouteTable`] (hostname -> environment -> instances) and hands it
//! to [`Router::publish`]; the router looks the table up once per request, so a publish moves
//! even keep-alive connections to the new environment on their next request. Per-environment
//! counters ([`Router::env_stats`], [`Router::is_drained`]) tell the controller when an old
//! environment has finished its last response and its instances may stop;
//! [`Router::is_upstream_drained`] tells the same of one instance. A backend without upstreams
//! can be *held* ([`Backend::held_until`]): its requests wait, bounded, for the publish that
//! brings its next instances instead of failing.
//!
//! Clients speak HTTP/1.1 or HTTP/2 with prior knowledge (h2c) on the same port; upstreams
//! get HTTP/1.1 (or h2c, see [`UpstreamProtocol`]). HTTP/1.1 upgrades (WebSocket) are relayed
//! over a dedicated upstream connection and stay in flight for their environment until they
//! close ([`RouterConfig::upgrade_grace`]).
//!
//! A second listener can terminate TLS ([`Router::serve_tls`]): certificates are picked by
//! SNI from a [`tls::CertStore`] that a [`tls::CertDir`] (PEM files, hot-reloaded) or the
//! server layer (ACME) fills; ALPN offers `h2` and `http/1.1`. The plain listener answers
//! ACME http-01 challenges from [`Router::acme_challenges`] and can redirect hosts that have
//! a certificate to https ([`RouterConfig::https_redirect`]).
//!
//! The router knows nothing of molt's store or runtime: it only sees hostnames, environment
//! ids and socket addresses.

mod access;
mod admission;
mod attempts;
mod body;
mod budget;
mod config;
pub mod direct;
mod eject;
mod forwarded;
pub mod framing;
mod guard;
mod headers;
pub mod host;
mod http1;
mod hyper_path;
mod limits;
mod metrics;
mod page;
mod plain;
mod presence;
mod reqid;
mod route;
mod router;
mod routing;
mod server;
mod shadow;
pub mod shaping;
mod stats;
mod table;
pub mod tls;
mod traffic;
mod tunnel;
mod upgrade;
mod upstream;

pub use config::{ClientScheme, EjectionPolicy, RetryBudget, RouterConfig, UpstreamProtocol};
pub use route::{Backend, Maintenance, Route, RouteLimits, Upstream};
pub use router::Router;
pub use server::ServerThreads;
pub use stats::EnvStats;
pub use table::RouteTable;
pub use traffic::{EnvTraffic, LatencyHistogram, TrafficStats, LATENCY_BUCKETS};
