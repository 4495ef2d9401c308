//! The route table: which environment answers for which hostname.
//!
//! A table is built by the controller, handed to [`Router::publish`](crate::Router::publish)
//! and from then on only read. Lookups happen once per request, so they never allocate
//! for already-lowercase hosts and never take a lock.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::http::uri::Authority;

use crate::stats::{EnvCounters, StatsRegistry};

/// One instance of an environment that can take traffic, and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Instance id, for logs.
    pub instance: String,
    /// Address the instance's HTTP server listens on.
    pub addr: SocketAddr,
}

/// An environment as the router sees it: its id and the instances that may take traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Environment id; stats are kept per environment.
    pub env: String,
    /// Instances that take traffic, in round-robin order.
    pub upstreams: Vec<Upstream>,
}

/// A [`Backend`] prepared for the hot path: counters and a round-robin cursor.
///
/// Invariant: `authorities[i]` is the URI authority of `backend.upstreams[i].addr`.
#[derive(Debug)]
pub struct Route {
    backend: Backend,
    authorities: Vec<Authority>,
    counters: Arc<EnvCounters>,
    cursor: AtomicUsize,
}

/// hostname -> Backend. Hostnames are matched case-insensitively, port stripped from the Host
/// header; exact match first, then wildcard entries "*.example.com" (matching one or more
/// leading labels).
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Lowercase hostname -> route.
    exact: HashMap<String, Arc<Route>>,
    /// Lowercase suffix ("example.com" for "*.example.com") -> route.
    wildcard: HashMap<String, Arc<Route>>,
}

impl Route {
    fn new(backend: Backend, counters: Arc<EnvCounters>) -> Self {
        let authorities = backend
            .upstreams
            .iter()
            .map(|upstream| authority_of(upstream.addr))
            .collect();
        Self {
            backend,
            authorities,
            counters,
            cursor: AtomicUsize::new(0),
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

    /// Index of the upstream the next request should start with (round-robin).
    /// Returns `None` when the backend has no upstreams.
    pub(crate) fn next_index(&self) -> Option<usize> {
        let len = self.authorities.len();
        if len == 0 {
            return None;
        }
        Some(self.cursor.fetch_add(1, Ordering::Relaxed) % len)
    }

    /// The same route, counting into `counters`.
    fn with_counters(&self, counters: Arc<EnvCounters>) -> Self {
        Self {
            backend: self.backend.clone(),
            authorities: self.authorities.clone(),
            counters,
            cursor: AtomicUsize::new(self.cursor.load(Ordering::Relaxed)),
        }
    }
}

impl RouteTable {
    /// An empty table: every host is unrouted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `hostname` (or, for `"*.example.com"`, every subdomain of `example.com`) to
    /// `backend`, replacing any previous entry for the same name.
    pub fn insert(&mut self, hostname: &str, backend: Backend) {
        let name = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
        let route = Arc::new(Route::new(backend, Arc::default()));
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_owned(), route),
            None => self.exact.insert(name, route),
        };
    }

    /// The route for a Host header value (`"Example.com:8080"` finds `"example.com"`).
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        let host = normalize_host(host)?;
        if let Some(route) = self.exact.get(host.as_ref()) {
            return Some(route);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Walk suffixes from the longest ("b.example.com" for "a.b.example.com") so the most
        // specific wildcard wins.
        host.match_indices('.')
            .find_map(|(dot, _)| self.wildcard.get(&host[dot + 1..]))
    }

    /// The environment ids this table sends traffic to, each once, in sorted order.
    pub fn envs(&self) -> impl Iterator<Item = &str> + '_ {
        self.routes()
            .map(|route| route.env())
            .collect::<BTreeSet<_>>()
            .into_iter()
    }

    /// Whether any hostname in this table routes to `env`.
    pub fn references(&self, env: &str) -> bool {
        self.routes().any(|route| route.env() == env)
    }

    /// Number of hostname entries (exact and wildcard).
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// True when no hostname is routed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn routes(&self) -> impl Iterator<Item = &Arc<Route>> + '_ {
        self.exact.values().chain(self.wildcard.values())
    }

    /// This table with every route counting into the registry's counters for its env, so
    /// the hot path reaches its counters without a lock.
    pub(crate) fn bound_to(self, registry: &StatsRegistry) -> Self {
        let bind = |map: HashMap<String, Arc<Route>>| {
            map.into_iter()
                .map(|(name, route)| {
                    let counters = registry.counters(route.env());
                    if Arc::ptr_eq(route.counters(), &counters) {
                        (name, route)
                    } else {
                        (name, Arc::new(route.with_counters(counters)))
                    }
                })
                .collect()
        };
        Self {
            exact: bind(self.exact),
            wildcard: bind(self.wildcard),
        }
    }
}

/// The lookup key of a Host header value: port and trailing dot stripped, lowercase.
/// Returns `None` for an empty host.
fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    let host = strip_port(host.trim()).trim_end_matches('.');
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: "[::1]:8080" -> "[::1]".
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn authority_of(addr: SocketAddr) -> Authority {
    Authority::try_from(addr.to_string()).expect("a formatted SocketAddr is a valid URI authority")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(env: &str) -> Backend {
        Backend {
            env: env.to_owned(),
            upstreams: vec![Upstream {
                instance: format!("{env}-1"),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
            }],
        }
    }

    fn table() -> RouteTable {
        let mut table = RouteTable::new();
        table.insert("App.Example.com", backend("app"));
        table.insert("*.example.com", backend("any"));
        table.insert("*.b.example.com", backend("deep"));
        table.insert("[::1]", backend("v6"));
        table
    }

    fn env_of(table: &RouteTable, host: &str) -> Option<String> {
        table.lookup(host).map(|route| route.env().to_owned())
    }

    #[test]
    fn lookup_matches_exact_then_most_specific_wildcard() {
        let table = table();
        let cases = [
            ("app.example.com", Some("app")),
            ("APP.example.COM:8080", Some("app")),
            ("app.example.com.", Some("app")),
            ("x.example.com", Some("any")),
            ("x.y.example.com", Some("any")),
            ("a.b.example.com", Some("deep")),
            ("b.example.com", Some("any")),
            ("example.com", None),
            ("other.org", None),
            ("[::1]:443", Some("v6")),
            ("", None),
            (":80", None),
        ];
        for (host, want) in cases {
            assert_eq!(env_of(&table, host).as_deref(), want, "host {host:?}");
        }
    }

    #[test]
    fn envs_are_distinct_and_counted_hostnames_are_not() {
        let mut table = table();
        table.insert("second.app.org", backend("app"));
        assert_eq!(table.len(), 5);
        assert!(!table.is_empty());
        assert_eq!(
            table.envs().collect::<Vec<_>>(),
            ["any", "app", "deep", "v6"]
        );
        assert!(table.references("deep"));
        assert!(!table.references("gone"));
    }

    #[test]
    fn round_robin_cycles_over_upstreams() {
        let mut b = backend("rr");
        b.upstreams.push(Upstream {
            instance: "rr-2".to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
        });
        let route = Route::new(b, Arc::default());
        let picks: Vec<_> = (0..4).filter_map(|_| route.next_index()).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        assert_eq!(route.authority(1).as_str(), "127.0.0.1:9001");
        let empty = Route::new(
            Backend {
                env: "none".to_owned(),
                upstreams: vec![],
            },
            Arc::default(),
        );
        assert_eq!(empty.next_index(), None);
    }
}
