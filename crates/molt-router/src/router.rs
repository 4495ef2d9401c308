//! The router itself: the swappable route table, the counters and registries every request
//! shares, the upstream pools, and the control plane's side of it — publishing a table
//! ("acknowledged cutover") and asking what has drained. Requests are served by
//! [`crate::direct`] and [`crate::hyper_path`]; connections are accepted by [`crate::server`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::header::HeaderValue;
use hyper::Request;
use tokio::sync::watch;
use tracing::warn;

use crate::config::{ClientScheme, RouterConfig};
use crate::eject::HealthRegistry;
use crate::presence::Presence;
use crate::reqid::RequestIds;
use crate::route::Route;
use crate::shadow::{MirrorSettings, Shadows};
use crate::stats::{EnvStats, LoadRegistry, StatsRegistry};
use crate::table::RouteTable;
use crate::tls::{AcmeChallenges, CertStore};
use crate::tunnel::Tunnels;
use crate::upstream::{Cap, ConnectionRegistry, Upstreams};

/// How long [`Router::publish`] waits for requests still holding the old table.
const CUTOVER_WAIT: Duration = Duration::from_secs(5);
/// Upper bound on establishing a TCP connection to an upstream, so a dead instance is
/// skipped (for replayable requests) long before `upstream_timeout`.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reverse proxy: a swappable route table, per-environment counters and an upstream
/// connection pool.
pub struct Router {
    pub(crate) config: RouterConfig,
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) stats: StatsRegistry,
    /// Serializes binding a table to the registry with swapping it in, so
    /// [`Router::forget_env`] never drops counters a table is about to use.
    publishing: Mutex<()>,
    pub(crate) unrouted: AtomicU64,
    pub(crate) request_ids: RequestIds,
    /// Upstream connections (molt's HTTP/1.1 pool, or an h2c client).
    pub(crate) upstreams: Arc<Upstreams>,
    /// Upgraded connections being relayed.
    pub(crate) tunnels: Tunnels,
    /// Certificates of the TLS listener, by SNI name.
    pub(crate) certs: Arc<CertStore>,
    /// Pending ACME http-01 challenges, answered on the plain listener.
    pub(crate) challenges: Arc<AcmeChallenges>,
    /// Requests received, by scheme: `[http, https]`.
    pub(crate) requests_by_scheme: [AtomicU64; 2],
    tls_handshake_failures: AtomicU64,
    /// Passive health of every routed upstream address, kept across publishes.
    health: HealthRegistry,
    /// Requests in flight per upstream address, kept across publishes.
    loads: LoadRegistry,
    /// Connections open per upstream address (against the cap), kept across publishes.
    connections: ConnectionRegistry,
    /// Mirrored (shadow) requests in flight.
    pub(crate) shadows: Shadows,
    /// Marks every publish, for requests waiting on a held backend.
    pub(crate) published: watch::Sender<()>,
    /// Requests waiting on a held backend right now.
    pub(crate) held: AtomicUsize,
    /// Set while the router turns new connections away (see
    /// [`Router::refuse_new_connections`]).
    refusing: AtomicBool,
}

impl Router {
    /// A router with an empty route table; start it with [`Router::serve`].
    pub fn new(config: RouterConfig) -> Arc<Router> {
        let cap = Cap {
            max: config.max_connections_per_upstream,
            queue_timeout: config.upstream_queue_timeout,
        };
        let upstreams = Arc::new(Upstreams::new(
            config.upstream_protocol,
            CONNECT_TIMEOUT.min(config.upstream_timeout),
            cap,
        ));
        let shadows = Shadows::new(config.shadow_concurrency);
        Arc::new(Router {
            config,
            table: ArcSwap::from_pointee(RouteTable::new()),
            stats: StatsRegistry::default(),
            publishing: Mutex::new(()),
            unrouted: AtomicU64::new(0),
            request_ids: RequestIds::new(),
            upstreams,
            tunnels: Tunnels::default(),
            certs: CertStore::new(),
            challenges: Arc::default(),
            requests_by_scheme: Default::default(),
            tls_handshake_failures: AtomicU64::new(0),
            health: HealthRegistry::default(),
            loads: LoadRegistry::default(),
            connections: ConnectionRegistry::default(),
            shadows,
            published: watch::channel(()).0,
            held: AtomicUsize::new(0),
            refusing: AtomicBool::new(false),
        })
    }

    /// Atomically replaces the route table and returns once no request can still be using
    /// the old one ("acknowledged cutover"): every request that saw the old table is by then
    /// counted in flight on the environment it chose. Gives up waiting after 5 s with a
    /// warning (someone holds a [`Router::table`] snapshot, or the runtime is starved).
    pub async fn publish(&self, table: RouteTable) {
        let old = {
            let _publishing = self
                .publishing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let new =
                Arc::new(table.bound_to(&self.stats, &self.health, &self.loads, &self.connections));
            self.upstreams.retain(&new.addresses());
            let old = self.table.swap(Arc::clone(&new));
            mark_presence(&self.stats, &old, &new);
            old
        };
        // Held requests look again.
        self.published.send_replace(());
        let deadline = tokio::time::Instant::now() + CUTOVER_WAIT;
        let mut pause = Duration::from_millis(1);
        // Holders keep the table for microseconds: yield a few times before sleeping.
        for _ in 0..64 {
            if Arc::strong_count(&old) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        while Arc::strong_count(&old) > 1 {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    holders = Arc::strong_count(&old) - 1,
                    "route table published, but the old table is still in use after {CUTOVER_WAIT:?}"
                );
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        // Pairs with the release in the last holder's `Arc` drop: its in-flight registration
        // is visible to whoever reads the counters after `publish` returns.
        fence(Ordering::Acquire);
    }

    /// The current route table. Holding on to it delays the next [`Router::publish`].
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Snapshot of one environment's counters (all zero for an env never seen).
    pub fn env_stats(&self, env: &str) -> EnvStats {
        self.stats
            .get(env)
            .map(|counters| counters.snapshot())
            .unwrap_or_default()
    }

    /// True when `env` is not referenced by the current table and has no request in flight.
    pub fn is_drained(&self, env: &str) -> bool {
        if self.table.load().references(env) {
            return false;
        }
        match self.stats.get(env) {
            Some(counters) => counters.in_flight() == 0,
            None => true,
        }
    }

    /// True when nothing is sent to the upstream at `addr` any more: the current table does
    /// not name it and no request (nor mirror, nor upgraded connection) to it is in flight.
    /// The controller stops an instance it took out of the table once this holds.
    pub fn is_upstream_drained(&self, addr: SocketAddr) -> bool {
        self.loads.is_released(addr)
    }

    /// Connections open to the upstream at `addr` right now, over both of the router's pools
    /// (hyper's and the plain sockets) and every thread: what
    /// [`RouterConfig::max_connections_per_upstream`] caps. Upgraded connections (WebSocket)
    /// and h2c upstreams' connections are not counted.
    pub fn upstream_connections(&self, addr: SocketAddr) -> usize {
        self.connections.open_to(addr)
    }

    /// Requests waiting right now on `env`'s hold: not yet assigned (so not in its
    /// [`EnvStats`]), they wait for a table that gives it an instance.
    pub fn held_for(&self, env: &str) -> u64 {
        self.stats.get(env).map_or(0, |counters| counters.waiting())
    }

    /// Requests waiting on held backends right now (see [`crate::Backend::held_until`]).
    pub fn held_requests(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Forgets the counters of a drained environment, so retired environments do not pile
    /// up; returns false (and keeps them) when `env` is not drained.
    pub fn forget_env(&self, env: &str) -> bool {
        let _publishing = self
            .publishing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let referenced = self.table.load().references(env);
        self.stats
            .remove_if(env, |counters| !referenced && counters.in_flight() == 0)
    }

    /// Requests for a host with no route (answered 404 by the router).
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    /// The certificates [`Router::serve_tls`] hands out; fill it with a
    /// [`crate::tls::CertDir`] or [`CertStore::replace_source`].
    pub fn certificates(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// The ACME http-01 challenges the plain listener answers.
    pub fn acme_challenges(&self) -> &Arc<AcmeChallenges> {
        &self.challenges
    }

    /// Requests received from clients over `scheme`, answered by the router or forwarded.
    pub fn requests_over(&self, scheme: ClientScheme) -> u64 {
        self.requests_by_scheme[scheme as usize].load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed or timed out (unknown SNI names included).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_handshake_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts a copy of `request` to the shadow environment `shadow` (fire and forget).
    pub(crate) fn mirror<B>(
        &self,
        shadow: Arc<Route>,
        request: &Request<B>,
        client: IpAddr,
        host: &HeaderValue,
        scheme: ClientScheme,
    ) {
        let settings = MirrorSettings {
            timeout: self.config.upstream_timeout,
            ejection: self.config.ejection,
        };
        self.shadows.mirror(
            &self.upstreams,
            shadow,
            request,
            (client, scheme),
            host,
            settings,
        );
    }
}

/// Marks the environments of `new` as routed and those only in `old` as unrouted, so their
/// upgraded connections start their grace period.
fn mark_presence(registry: &StatsRegistry, old: &RouteTable, new: &RouteTable) {
    // Sets, not `references`: a table of 10 000 environments would otherwise cost 10 000²
    // comparisons per publish.
    let routed = new.env_set();
    for env in &routed {
        registry.counters(env).presence().mark(Presence::Routed);
    }
    for env in old
        .env_set()
        .into_iter()
        .filter(|env| !routed.contains(env))
    {
        if let Some(counters) = registry.get(env) {
            counters.presence().mark(Presence::Unrouted);
        }
    }
}

impl Router {
    /// Turns new client connections away (closed as soon as accepted) while `refuse` holds;
    /// connections already open are served as before. A router fenced out of a fleet does
    /// this until it has caught up with the control plane's table.
    pub fn refuse_new_connections(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::Relaxed);
    }

    /// Whether new client connections are being turned away.
    pub fn refuses_new_connections(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn control_plane_futures_can_be_spawned() {
        let router = Router::new(RouterConfig::default());
        assert_send(&router.publish(RouteTable::new()));
    }
}
