//! What the controller hands the router for one environment ([`Backend`]: its instances,
//! limits, maintenance, hold) and what a request uses of it on the hot path ([`Route`]: the
//! backend with its counters, the instances' loads and passive health, and the pick of an
//! instance). Routes are built by the route table ([`crate::table`]) and shared, never
//! locked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hyper::http::uri::Authority;

use crate::config::EjectionPolicy;
use crate::eject::{now_ms, UpstreamHealth, Verdict};
use crate::shaping;
use crate::stats::{EnvCounters, UpstreamLoad};
use crate::upstream::{Connections, Destination};

/// One instance of an environment that can take traffic, and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Instance id, for logs.
    pub instance: String,
    /// Address the instance's HTTP server listens on.
    pub addr: SocketAddr,
}

/// An environment as the router sees it: its id and the instances that may take traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backend {
    /// Environment id; stats are kept per environment.
    pub env: String,
    /// The app the environment belongs to, for the access log (empty when not known).
    pub app: String,
    /// Instances that take traffic.
    pub upstreams: Vec<Upstream>,
    /// When set, every request is answered 503 by the router and no instance is asked.
    pub maintenance: Option<Maintenance>,
    /// This backend's own limits, tighter than the router's.
    pub limits: RouteLimits,
    /// A hold: until this instant, while the backend has no upstream, requests wait for a
    /// published table that gives it one instead of getting a 503 at once (bounded by the
    /// route's request timeout and [`RouterConfig::max_held_requests`](crate::RouterConfig)).
    /// The controller sets it while it replaces every instance of an environment at once.
    pub held_until: Option<Instant>,
}

/// Limits of one backend; `None` (or a looser value) means the router's own
/// ([`RouterConfig`](crate::RouterConfig)) applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteLimits {
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: Option<u64>,
    /// How long an instance may take to send response headers (504 beyond).
    pub upstream_timeout: Option<std::time::Duration>,
}

/// A backend taken out of service on purpose: what clients are told instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// Sent as `Retry-After` (seconds).
    pub retry_after_secs: u32,
    /// Shown to the client (plain text, or escaped into a small HTML page).
    pub message: String,
}

/// A [`Backend`] prepared for the hot path: counters and per-instance loads for least-loaded
/// picks.
///
/// Invariant: `authorities[i]` is the URI authority of `backend.upstreams[i].addr`.
#[derive(Debug)]
pub struct Route {
    backend: Backend,
    authorities: Vec<Authority>,
    counters: Arc<EnvCounters>,
    cursor: AtomicUsize,
    /// Requests in flight per upstream address (same order as `authorities`), shared with
    /// every route to the same address: for least-loaded picks and per-instance draining.
    loads: Arc<[Arc<AtomicU64>]>,
    /// Passive health per upstream (same order), shared with every route to the same address.
    health: Arc<[Arc<UpstreamHealth>]>,
    /// Connections open per upstream (same order), shared with every route to the same
    /// address: counted against the cap on connections per instance.
    connections: Arc<[Arc<Connections>]>,
}

impl Backend {
    /// A backend in service with these upstreams.
    pub fn new(env: impl Into<String>, upstreams: Vec<Upstream>) -> Self {
        Self {
            env: env.into(),
            app: String::new(),
            upstreams,
            maintenance: None,
            limits: RouteLimits::default(),
            held_until: None,
        }
    }

    /// Whether requests for this backend wait (now) for a table that gives it upstreams. Reads
    /// the clock only for a backend without upstreams.
    pub(crate) fn is_held(&self) -> bool {
        self.upstreams.is_empty() && self.held_until.is_some_and(|until| until > Instant::now())
    }
}

impl Route {
    /// A route to `backend` counting into `counters`, with fresh loads and health.
    pub(crate) fn new(backend: Backend, counters: Arc<EnvCounters>) -> Self {
        let authorities = backend
            .upstreams
            .iter()
            .map(|upstream| authority_of(upstream.addr))
            .collect();
        let loads = backend.upstreams.iter().map(|_| Arc::default()).collect();
        let health = backend.upstreams.iter().map(|_| Arc::default()).collect();
        let connections = backend.upstreams.iter().map(|_| Arc::default()).collect();
        Self {
            backend,
            authorities,
            counters,
            cursor: AtomicUsize::new(0),
            loads,
            health,
            connections,
        }
    }

    /// The backend this route sends traffic to.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Id of the environment this route belongs to.
    pub fn env(&self) -> &str {
        &self.backend.env
    }

    /// Instances that take traffic for this route.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.backend.upstreams
    }

    pub(crate) fn counters(&self) -> &Arc<EnvCounters> {
        &self.counters
    }

    pub(crate) fn authority(&self, index: usize) -> &Authority {
        &self.authorities[index]
    }

    /// Index of the upstream the next request should start with: of two instances picked at
    /// random, the one with fewer requests in flight (power of two choices), skipping ejected
    /// instances while any other is in rotation. Returns `None` when the backend has no
    /// upstreams.
    pub(crate) fn next_index(&self) -> Option<usize> {
        let len = self.authorities.len();
        if len < 2 {
            return (len == 1).then_some(0);
        }
        // A cheap, well-spread sequence: a counter through a multiplicative hash.
        let seed = (self.cursor.fetch_add(1, Ordering::Relaxed) as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (a, b) = shaping::two_choices(len, seed);
        let now = now_ms();
        let load = |i: usize| self.loads[i].load(Ordering::Relaxed);
        Some(match (self.is_ejected(a, now), self.is_ejected(b, now)) {
            (false, false) if load(b) < load(a) => b,
            (false, _) => a,
            (true, false) => b,
            // Both out: the first instance in rotation after `a`, else `a` anyway (never
            // fail a request only because every instance was ejected).
            (true, true) => (1..len)
                .map(|offset| (a + offset) % len)
                .find(|&i| !self.is_ejected(i, now))
                .unwrap_or(a),
        })
    }

    /// The upstream to retry on after the ones in `tried` failed: the next in rotation after
    /// the last one tried that is not ejected, else the next one at all; `None` when every
    /// upstream was tried.
    pub(crate) fn retry_index(&self, tried: &[usize]) -> Option<usize> {
        let len = self.authorities.len();
        let last = *tried.last()?;
        let now = now_ms();
        let untried = || {
            (1..len)
                .map(move |offset| (last + offset) % len)
                .filter(|i| !tried.contains(i))
        };
        untried()
            .find(|&i| !self.is_ejected(i, now))
            .or_else(|| untried().next())
    }

    fn is_ejected(&self, index: usize, now: u64) -> bool {
        self.health[index].is_ejected(now)
    }

    /// How many of this route's upstreams are ejected right now.
    pub(crate) fn ejected_count(&self) -> u64 {
        let now = now_ms();
        (0..self.health.len())
            .filter(|&i| self.is_ejected(i, now))
            .count() as u64
    }

    /// Upstream `index` answered.
    pub(crate) fn record_success(&self, index: usize) {
        self.health[index].record_success();
    }

    /// The connection to upstream `index` failed before a response.
    pub(crate) fn record_failure(&self, index: usize, policy: &EjectionPolicy) -> Verdict {
        let verdict = self.health[index].record_failure(policy);
        if let Verdict::Ejected(_) = verdict {
            self.counters.traffic.record_ejection();
        }
        verdict
    }

    /// Where a request to upstream `index` goes; a wait for a connection at the instance's
    /// cap ends by `deadline` (the request's own) at the latest.
    pub(crate) fn destination(
        &self,
        index: usize,
        deadline: tokio::time::Instant,
    ) -> Destination<'_> {
        Destination {
            addr: self.backend.upstreams[index].addr,
            connections: &self.connections[index],
            deadline,
        }
    }

    /// Counts one request against upstream `index` until the guard is dropped.
    pub(crate) fn load_of(&self, index: usize) -> UpstreamLoad {
        UpstreamLoad::new(&self.loads[index])
    }

    /// The same route, counting into `counters` and sharing the upstreams' state.
    pub(crate) fn rebound(&self, counters: Arc<EnvCounters>, shared: Shared) -> Self {
        Self {
            backend: self.backend.clone(),
            authorities: self.authorities.clone(),
            counters,
            cursor: AtomicUsize::new(self.cursor.load(Ordering::Relaxed)),
            loads: shared.loads,
            health: shared.health,
            connections: shared.connections,
        }
    }

    /// Whether this route already counts into `counters` and shares `shared`.
    pub(crate) fn is_bound(&self, counters: &Arc<EnvCounters>, shared: &Shared) -> bool {
        fn same<T>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
        }
        Arc::ptr_eq(&self.counters, counters)
            && same(&self.health, &shared.health)
            && same(&self.loads, &shared.loads)
            && same(&self.connections, &shared.connections)
    }
}

/// The state of a route's upstreams that every route naming the same addresses shares (each
/// in the order of the backend's upstreams).
pub(crate) struct Shared {
    pub(crate) health: Arc<[Arc<UpstreamHealth>]>,
    pub(crate) loads: Arc<[Arc<AtomicU64>]>,
    pub(crate) connections: Arc<[Arc<Connections>]>,
}

fn authority_of(addr: SocketAddr) -> Authority {
    Authority::try_from(addr.to_string()).expect("a formatted SocketAddr is a valid URI authority")
}
