//! The router's settings: timeouts, limits, protocols and the resilience policies, and how a
//! client reached it ([`ClientScheme`]). Plain data, read by every other module.

use std::time::Duration;

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

/// Timeouts, limits and protocol choices of the router.
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
    /// (request id, client, scheme, host, method, path, status, env, instance, duration). The
    /// subscriber formats it: with `MOLT_LOG=molt_router::access=info` and a JSON
    /// subscriber, each line is a JSON object.
    pub access_log: bool,
    /// How long an upstream may take to send response headers before the client gets a 504.
    pub upstream_timeout: Duration,
    /// How long [`Router::serve`](crate::Router::serve) waits for open connections after shutdown before closing them.
    pub shutdown_grace: Duration,
    /// How long an upgraded connection (WebSocket) stays open after a publish stopped routing
    /// to its environment; then it is closed, so the environment can drain.
    pub upgrade_grace: Duration,
    /// The protocol of ordinary requests to upstreams.
    pub upstream_protocol: UpstreamProtocol,
    /// When set, the plain listener answers `308 Permanent Redirect` to
    /// `https://<host>[:port]<path>` for every host that has a TLS certificate (except ACME
    /// http-01 challenge paths); the value is the port of the TLS listener (443 is left out
    /// of the URL).
    pub https_redirect: Option<u16>,
    /// When set, every answer sent over TLS for a host that has a certificate carries
    /// `Strict-Transport-Security: max-age=<this many seconds>`; answers over plain HTTP
    /// never do (RFC 6797 §7.2). Requests on TLS connections then all take hyper's path,
    /// which adds the header (the direct path relays upstream heads as they are).
    pub hsts_max_age: Option<u64>,
    /// When an upstream that keeps failing to connect is taken out of rotation, and for how
    /// long.
    pub ejection: EjectionPolicy,
    /// How many retries (of bodiless idempotent requests whose connection failed before a
    /// response) an environment may make, so retries cannot amplify an outage.
    pub retry_budget: RetryBudget,
    /// Most mirrored (shadow) requests in flight at once; beyond it, mirrors are skipped and
    /// counted as dropped, never queued.
    pub shadow_concurrency: usize,
    /// Most requests waiting at once for a held backend ([`Backend::held_until`](crate::Backend::held_until)) to get an
    /// upstream; beyond it, requests for a held backend are answered 503 at once.
    pub max_held_requests: usize,
    /// Most connections open to one upstream instance (address) at once, over both of the
    /// router's HTTP/1.1 pools and every serving thread, like nginx's `max_conns`; 0 = no cap.
    /// At the cap a request takes a connection that another thread or pool holds idle
    /// (closing it and opening its own), else waits for one up to `upstream_queue_timeout`,
    /// then gets a 503 ("instance at its connection limit"), counted as failed. HTTP/1.1
    /// carries one request per connection at a time, so this bounds the requests an instance
    /// has in flight from this router. The default, 512, is far more than an application
    /// process serves at once (a saturated instance only queues them, in its own accept queue
    /// or in memory), matches the idle connections the benchmark's nginx and Caddy keep, and
    /// leaves most of an instance's open files (`[limits] nofile`) for its own use; it stops a
    /// burst of thousands of client connections from opening as many upstream sockets.
    /// Upgraded connections (WebSocket) and h2c upstreams (one multiplexed connection) are not
    /// counted.
    pub max_connections_per_upstream: usize,
    /// How long a request waits for a connection to an instance at its cap before it is
    /// answered 503; never longer than the request's upstream timeout.
    pub upstream_queue_timeout: Duration,
    /// Serve bodiless `GET`/`HEAD` requests of HTTP/1.1 clients on molt's own direct path
    /// (no hyper state machines, same routing and accounting) when instances speak
    /// HTTP/1.1; a connection moves to hyper at its first request the direct path does not
    /// take. On by default; off, hyper serves everything.
    pub direct_path: bool,
}

/// How a client reached the router: the scheme that `X-Forwarded-Proto`, `Forwarded` and
/// the access log report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientScheme {
    /// Plain TCP (HTTP/1.1 or h2c).
    Http = 0,
    /// TLS (HTTP/1.1 or h2 by ALPN).
    Https = 1,
}

/// Passive ejection: an upstream whose connections fail `consecutive_failures` times in a
/// row is skipped for `base_backoff`, doubling (up to `max_backoff`) each time it fails again
/// right after coming back (on probation); its first success ends probation. When every
/// upstream of a route is ejected, they are tried anyway rather than failing outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Connection failures in a row (connect refused/timed out, reset or closed before a
    /// response) that eject an upstream; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts.
    pub base_backoff: Duration,
    /// The longest an ejection lasts.
    pub max_backoff: Duration,
}

/// A retry budget per environment: each request sent upstream earns `ratio_percent` % of a
/// retry, and `min_per_second` retries are granted each second whatever the traffic (a small
/// floor for quiet environments). Unused budget is capped at ten seconds' floor or 100
/// retries, whichever is more, so old traffic cannot fund a retry storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries earned per 100 requests.
    pub ratio_percent: u32,
    /// Retries granted per second regardless of traffic.
    pub min_per_second: u32,
}

impl ClientScheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientScheme::Http => "http",
            ClientScheme::Https => "https",
        }
    }
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio_percent: 20,
            min_per_second: 10,
        }
    }
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
            upgrade_grace: Duration::from_secs(30),
            upstream_protocol: UpstreamProtocol::Http1,
            https_redirect: None,
            hsts_max_age: None,
            ejection: EjectionPolicy::default(),
            retry_budget: RetryBudget::default(),
            shadow_concurrency: 64,
            max_held_requests: 1024,
            max_connections_per_upstream: 512,
            upstream_queue_timeout: Duration::from_secs(2),
            direct_path: true,
        }
    }
}
