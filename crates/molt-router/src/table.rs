//! The route table: which environment answers for which hostname (and path prefix, split,
//! shadow). Its entries are [`Route`]s ([`crate::route`]).
//!
//! A table is built by the controller, handed to [`Router::publish`](crate::Router::publish)
//! and from then on only read. Lookups happen once per request, so they never allocate
//! for already-lowercase hosts and never take a lock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::eject::HealthRegistry;
use crate::host::lookup_key;
use crate::route::{Backend, Route, Shared};
use crate::shaping;
use crate::stats::{LoadRegistry, StatsRegistry};
use crate::upstream::ConnectionRegistry;

/// hostname (+ optional path prefix) -> Backend. Hostnames are matched case-insensitively,
/// port stripped from the Host header; exact match first, then wildcard entries
/// "*.example.com" (matching one or more leading labels). Within one hostname entry the
/// longest matching path prefix wins, then the hostname's own route.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Lowercase hostname -> routes.
    exact: HashMap<String, HostRoutes>,
    /// Lowercase suffix ("example.com" for "*.example.com") -> routes.
    wildcard: HashMap<String, HostRoutes>,
}

/// The routes of one hostname entry.
///
/// Invariant: `prefixes` is sorted by prefix length, longest first, each prefix starting
/// with `/` and not ending with one.
#[derive(Debug, Default, Clone)]
struct HostRoutes {
    prefixes: Vec<(String, Arc<Route>)>,
    host: Option<Arc<Route>>,
    /// A weighted split of the hostname's traffic (canary); empty when there is none. The
    /// first entry is also `host`, the route that plain lookups return.
    split: Vec<(u32, Arc<Route>)>,
    /// An environment that gets a copy of a share of the hostname's idempotent requests.
    shadow: Option<Shadow>,
}

/// Shadow traffic of one hostname: which environment gets mirrored requests, and how many.
#[derive(Debug, Clone)]
pub(crate) struct Shadow {
    /// Percentage (1–100) of eligible requests mirrored.
    share: u32,
    route: Arc<Route>,
    /// Eligible requests seen, for an exact, evenly spread share.
    seen: Arc<AtomicU64>,
}

/// How one request picks among a hostname's routes: an environment pinned by the client
/// (`X-Molt-Env`), and the client's sticky bucket for weighted splits (computed only when
/// the hostname has a split).
pub(crate) struct Selector<'a, F: FnOnce() -> u32> {
    /// Environment id the request asks for; honoured when the hostname routes to it.
    pub pin: Option<&'a str>,
    /// The client's bucket in [0, `shaping::BUCKETS`).
    pub bucket: F,
}

/// Which way a request was routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Picked {
    /// The hostname's single route, a path prefix, or a pinned environment.
    Direct,
    /// A weighted split chose the route for this bucket.
    Split(u32),
}

impl RouteTable {
    /// An empty table: every host is unrouted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `hostname` (or, for `"*.example.com"`, every subdomain of `example.com`) to
    /// `backend`, replacing any previous entry for the same name.
    pub fn insert(&mut self, hostname: &str, backend: Backend) {
        let route = Arc::new(Route::new(backend, Arc::default()));
        let entry = self.entry(hostname);
        entry.host = Some(route);
        entry.split.clear();
    }

    /// Splits `hostname`'s traffic between environments by weight (a canary: `[(stable, 90),
    /// (canary, 10)]`). A client stays on one environment: its bucket comes from a
    /// `molt-bucket` cookie the router hands out, or else from a hash of its address and user
    /// agent; raising an entry's weight only adds clients to it. The first entry answers plain
    /// [`RouteTable::lookup`]s. Replaces the hostname's previous route.
    pub fn insert_split(&mut self, hostname: &str, entries: Vec<(Backend, u32)>) {
        let routes: Vec<(u32, Arc<Route>)> = entries
            .into_iter()
            .map(|(backend, weight)| (weight, Arc::new(Route::new(backend, Arc::default()))))
            .collect();
        let entry = self.entry(hostname);
        entry.host = routes.first().map(|(_, route)| Arc::clone(route));
        entry.split = if routes.len() > 1 { routes } else { Vec::new() };
    }

    /// Routes requests for `hostname` whose path is `prefix` or lies below it (`"/api"`
    /// matches `/api`, `/api/x` and `/api?q`, not `/apix`) to `backend`; the path is
    /// forwarded unchanged. Replaces a previous entry for the same name and prefix; the
    /// prefix `"/"` is the same as [`RouteTable::insert`].
    pub fn insert_with_prefix(&mut self, hostname: &str, prefix: &str, backend: Backend) {
        let prefix = format!("/{}", prefix.trim().trim_matches('/'));
        if prefix == "/" {
            return self.insert(hostname, backend);
        }
        let route = Arc::new(Route::new(backend, Arc::default()));
        let entry = self.entry(hostname);
        entry.prefixes.retain(|(existing, _)| *existing != prefix);
        let at = entry
            .prefixes
            .partition_point(|(existing, _)| existing.len() >= prefix.len());
        entry.prefixes.insert(at, (prefix, route));
    }

    /// Mirrors `share_percent` % (capped at 100; 0 removes the shadow) of `hostname`'s
    /// bodiless idempotent requests (GET, HEAD, OPTIONS) to `backend`, fire-and-forget: the
    /// client gets the live answer, the shadow's answer is only counted
    /// ([`EnvTraffic::shadow`](crate::EnvTraffic)). Requests pinned to the shadow environment
    /// itself are not mirrored. Call it after the hostname's own `insert`.
    pub fn insert_shadow(&mut self, hostname: &str, backend: Backend, share_percent: u32) {
        let entry = self.entry(hostname);
        entry.shadow = (share_percent > 0).then(|| Shadow {
            share: share_percent.min(100),
            route: Arc::new(Route::new(backend, Arc::default())),
            seen: Arc::default(),
        });
    }

    fn entry(&mut self, hostname: &str) -> &mut HostRoutes {
        let name = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.entry(suffix.to_owned()).or_default(),
            None => self.exact.entry(name).or_default(),
        }
    }

    /// The hostname-level route for a Host header value (`"Example.com:8080"` finds
    /// `"example.com"`), ignoring path prefixes.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        self.lookup_path(host, "/")
    }

    /// The route for a Host header value and a request path: for the exact hostname, then
    /// each wildcard from the most specific, the longest matching prefix or else the
    /// hostname's own route. Never allocates for a lowercase host.
    pub fn lookup_path(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = lookup_key(host).ok()?;
        self.host_entry(&host, |e| e.find(path).is_some())
            .and_then(|e| e.find(path))
    }

    /// The route for one request, honouring a pinned environment and weighted splits, and
    /// the hostname's shadow if it has one.
    pub(crate) fn select<F: FnOnce() -> u32>(
        &self,
        host: &str,
        path: &str,
        selector: Selector<'_, F>,
    ) -> Option<(&Arc<Route>, Picked, Option<&Shadow>)> {
        let host = lookup_key(host).ok()?;
        let entry = self.host_entry(&host, |e| e.find(path).is_some())?;
        let shadow = entry.shadow.as_ref();
        entry
            .select(path, selector)
            .map(|(route, picked)| (route, picked, shadow))
    }

    /// The exact entry for `host`, else the most specific wildcard entry that `accepts`.
    fn host_entry(&self, host: &str, accepts: impl Fn(&HostRoutes) -> bool) -> Option<&HostRoutes> {
        if let Some(entry) = self.exact.get(host).filter(|e| accepts(e)) {
            return Some(entry);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Walk suffixes from the longest ("b.example.com" for "a.b.example.com") so the most
        // specific wildcard wins.
        host.match_indices('.')
            .find_map(|(dot, _)| self.wildcard.get(&host[dot + 1..]).filter(|e| accepts(e)))
    }

    /// The environment ids this table sends traffic to, each once, in sorted order.
    pub fn envs(&self) -> impl Iterator<Item = &str> + '_ {
        self.routes()
            .map(|route| route.env())
            .collect::<BTreeSet<_>>()
            .into_iter()
    }

    /// Every upstream address this table routes to.
    pub(crate) fn addresses(&self) -> HashSet<SocketAddr> {
        self.routes()
            .flat_map(|route| route.upstreams().iter().map(|upstream| upstream.addr))
            .collect()
    }

    /// The environment ids this table sends traffic to, as a set (for lookups in bulk).
    pub(crate) fn env_set(&self) -> HashSet<&str> {
        self.routes().map(|route| route.env()).collect()
    }

    /// Whether any hostname in this table routes to `env`.
    pub fn references(&self, env: &str) -> bool {
        self.routes().any(|route| route.env() == env)
    }

    /// How many upstreams of `env` are ejected right now.
    pub(crate) fn ejected_in(&self, env: &str) -> u64 {
        self.routes()
            .find(|route| route.env() == env)
            .map_or(0, |route| route.ejected_count())
    }

    /// How many upstreams are ejected right now, for every environment of the table (one
    /// pass, so a scrape of every environment stays linear in the table's size).
    pub(crate) fn ejected_by_env(&self) -> HashMap<&str, u64> {
        let mut ejected = HashMap::new();
        for route in self.routes() {
            ejected
                .entry(route.env())
                .or_insert_with(|| route.ejected_count());
        }
        ejected
    }

    /// Number of entries (hostname or hostname + prefix, exact and wildcard).
    pub fn len(&self) -> usize {
        self.routes().count()
    }

    /// True when no hostname is routed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn routes(&self) -> impl Iterator<Item = &Arc<Route>> + '_ {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .flat_map(HostRoutes::routes)
    }

    /// This table with every route counting into the registry's counters for its env and
    /// sharing the health and load registries' state for its upstreams' addresses, so the hot
    /// path reaches them without a lock. Forgets the health of addresses no longer routed
    /// (and their loads once nothing holds them).
    pub(crate) fn bound_to(
        self,
        registry: &StatsRegistry,
        health: &HealthRegistry,
        loads: &LoadRegistry,
        connections: &ConnectionRegistry,
    ) -> Self {
        let addrs = self.addresses();
        health.retain(&addrs);
        loads.retain(&addrs);
        connections.retain(&addrs);
        let bind = |route: Arc<Route>| {
            let counters = registry.counters(route.env());
            let addrs = || route.upstreams().iter().map(|upstream| upstream.addr);
            let shared = Shared {
                health: health.bind(addrs()),
                loads: loads.bind(addrs()),
                connections: connections.bind(addrs()),
            };
            if route.is_bound(&counters, &shared) {
                route
            } else {
                Arc::new(route.rebound(counters, shared))
            }
        };
        let bind_all = |map: HashMap<String, HostRoutes>| {
            map.into_iter()
                .map(|(name, entry)| {
                    let split: Vec<(u32, Arc<Route>)> = entry
                        .split
                        .into_iter()
                        .map(|(weight, route)| (weight, bind(route)))
                        .collect();
                    let entry = HostRoutes {
                        prefixes: entry
                            .prefixes
                            .into_iter()
                            .map(|(prefix, route)| (prefix, bind(route)))
                            .collect(),
                        // The split's first entry and the host route are one route.
                        host: match split.first() {
                            Some((_, first)) => Some(Arc::clone(first)),
                            None => entry.host.map(bind),
                        },
                        split,
                        shadow: entry.shadow.map(|shadow| Shadow {
                            route: bind(shadow.route),
                            ..shadow
                        }),
                    };
                    (name, entry)
                })
                .collect()
        };
        Self {
            exact: bind_all(self.exact),
            wildcard: bind_all(self.wildcard),
        }
    }
}

impl HostRoutes {
    /// The route for one request: a pinned environment, else the longest prefix, else the
    /// split, else the hostname route.
    fn select<F: FnOnce() -> u32>(
        &self,
        path: &str,
        selector: Selector<'_, F>,
    ) -> Option<(&Arc<Route>, Picked)> {
        if let Some(pin) = selector.pin {
            if let Some(route) = self.routes().find(|route| route.env() == pin) {
                return Some((route, Picked::Direct));
            }
        }
        let prefixed = self
            .prefixes
            .iter()
            .find(|(prefix, _)| path_has_prefix(path, prefix));
        if let Some((_, route)) = prefixed {
            return Some((route, Picked::Direct));
        }
        if !self.split.is_empty() {
            let bucket = (selector.bucket)();
            let weights: Vec<u32> = self.split.iter().map(|(w, _)| *w).collect();
            if let Some(i) = shaping::choose_weighted(&weights, bucket) {
                return Some((&self.split[i].1, Picked::Split(bucket)));
            }
        }
        self.host.as_ref().map(|route| (route, Picked::Direct))
    }

    /// The longest prefix route matching `path`, else the hostname route.
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.prefixes
            .iter()
            .find(|(prefix, _)| path_has_prefix(path, prefix))
            .map(|(_, route)| route)
            .or(self.host.as_ref())
    }

    fn routes(&self) -> impl Iterator<Item = &Arc<Route>> + '_ {
        self.prefixes
            .iter()
            .map(|(_, route)| route)
            .chain(self.host.iter())
            .chain(self.split.iter().skip(1).map(|(_, route)| route))
            .chain(self.shadow.iter().map(|shadow| &shadow.route))
    }
}

impl Shadow {
    /// Whether the next eligible request is mirrored: exactly `share` of every 100, evenly
    /// spread.
    pub(crate) fn sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let share = u64::from(self.share);
        (n + 1) * share / 100 > n * share / 100
    }

    /// The shadow environment's route.
    pub(crate) fn route(&self) -> &Arc<Route> {
        &self.route
    }
}

/// Whether `path` is `prefix` or below it, on a segment boundary.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(['/', '?']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Upstream;

    fn backend(env: &str) -> Backend {
        Backend::new(
            env,
            vec![Upstream {
                instance: format!("{env}-1"),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
            }],
        )
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
            ("x y.example.com", None),
            ("evil.com/.example.com", None),
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
    fn picks_the_less_loaded_of_two_instances() {
        let mut b = backend("p2c");
        b.upstreams.push(Upstream {
            instance: "p2c-2".to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
        });
        let route = Route::new(b, Arc::default());
        assert_eq!(route.authority(1).as_str(), "127.0.0.1:9001");
        // Idle: both instances get requests.
        let picks: BTreeSet<_> = (0..8).filter_map(|_| route.next_index()).collect();
        assert_eq!(picks.len(), 2);
        // Instance 0 busy: every pick goes to instance 1 until its request ends.
        let busy = route.load_of(0);
        assert!((0..20).all(|_| route.next_index() == Some(1)));
        drop(busy);
        let picks: BTreeSet<_> = (0..8).filter_map(|_| route.next_index()).collect();
        assert_eq!(picks.len(), 2);
        let empty = Route::new(Backend::new("none", vec![]), Arc::default());
        assert_eq!(empty.next_index(), None);
        let single = Route::new(backend("one"), Arc::default());
        assert_eq!(single.next_index(), Some(0));
    }

    #[test]
    fn longest_path_prefix_wins_then_the_hostname_route() {
        let mut table = table();
        table.insert_with_prefix("app.example.com", "/api", backend("api"));
        table.insert_with_prefix("app.example.com", "/api/v2/", backend("v2"));
        table.insert_with_prefix("only.example.com", "/docs", backend("docs"));
        table.insert_with_prefix("*.b.example.com", "/x", backend("deep-x"));
        let cases = [
            ("app.example.com", "/", Some("app")),
            ("app.example.com", "/api", Some("api")),
            ("app.example.com", "/api?q=1", Some("api")),
            ("app.example.com", "/api/users", Some("api")),
            ("app.example.com", "/apix", Some("app")),
            ("app.example.com", "/api/v2", Some("v2")),
            ("app.example.com", "/api/v2/x", Some("v2")),
            ("APP.example.com:80", "/api/v2/x", Some("v2")),
            // No hostname route of its own: the wildcard answers the rest.
            ("only.example.com", "/docs/a", Some("docs")),
            ("only.example.com", "/", Some("any")),
            ("a.b.example.com", "/x/y", Some("deep-x")),
            ("a.b.example.com", "/y", Some("deep")),
        ];
        for (host, path, want) in cases {
            let got = table.lookup_path(host, path).map(|route| route.env());
            assert_eq!(got, want, "{host}{path}");
        }
        assert_eq!(table.len(), 8);
        assert!(table.references("v2"));
    }
}
