//! The request path: route lookup, upstream choice, forwarding, retries and accounting.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http_body_util::{Either, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, COOKIE, HOST, SET_COOKIE, TRANSFER_ENCODING,
    USER_AGENT,
};
use hyper::http::request;
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::access::{AccessEntry, Served};
use crate::admission::admit;
use crate::body::ResponseBody;
use crate::direct::{send_bodiless, AskError, SocketBody};
use crate::eject::{now_ms, HealthRegistry, Verdict};
use crate::forwarded::add_forwarded;
use crate::headers::{add_forwarding, strip_hop_by_hop};
use crate::limits::{BodyFault, FaultProbe, LimitedBody};
use crate::page::{self, Flavor};
use crate::reqid::{RequestIds, X_REQUEST_ID};
use crate::shadow::{MirrorSettings, Shadows};
use crate::shaping::{self, Source, STICKY_COOKIE};
use crate::stats::{EnvStats, InFlight, LoadRegistry, StatsRegistry};
use crate::table::{Maintenance, Picked, Route, RouteTable, Selector};
use crate::tls::{AcmeChallenges, CertStore};
use crate::upgrade::{mark_presence, requested_upgrade, Tunnels};
use crate::upstream::{RequestBody, UpstreamBody, Upstreams};
use crate::{ClientScheme, RouterConfig};

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
    /// Mirrored (shadow) requests in flight.
    pub(crate) shadows: Shadows,
    /// Marks every publish, for requests waiting on a held backend.
    published: watch::Sender<()>,
    /// Requests waiting on a held backend right now.
    held: AtomicUsize,
}

/// What the route table decided for one request.
pub(crate) enum Choice {
    /// No route answers to the host.
    Unrouted,
    /// The backend is in maintenance.
    Maintenance(Maintenance),
    /// The request is assigned to a route (and counted in flight on it).
    Routed(Routed),
}

/// A request assigned to a route.
pub(crate) struct Routed {
    pub(crate) route: Arc<Route>,
    /// The upstream to start with; `None` when the route has none.
    pub(crate) start: Option<usize>,
    pub(crate) in_flight: InFlight,
    pub(crate) picked: Picked,
    /// The hostname's shadow route, when this request is mirrored to it.
    pub(crate) mirror: Option<Arc<Route>>,
}

/// The backend has no upstream and is held: the request may wait for a publish (nothing has
/// been counted for it yet).
pub(crate) struct Held {
    until: std::time::Instant,
    /// The route's request timeout, which the wait never outlasts.
    timeout: Duration,
}

/// Counts one request among those waiting on a hold, until dropped.
struct HoldSlot<'a>(&'a AtomicUsize);

/// The body size and response-head time one request may use (the route's limits within the
/// router's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allowance {
    pub(crate) max_body: u64,
    pub(crate) timeout: Duration,
}

/// The parts of a request needed to send it (again) to an upstream.
struct Forward {
    head: request::Parts,
    path: PathAndQuery,
}

impl Router {
    /// A router with an empty route table; start it with [`Router::serve`].
    pub fn new(config: RouterConfig) -> Arc<Router> {
        let upstreams = Arc::new(Upstreams::new(
            config.upstream_protocol,
            CONNECT_TIMEOUT.min(config.upstream_timeout),
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
            shadows,
            published: watch::channel(()).0,
            held: AtomicUsize::new(0),
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
            let new = Arc::new(table.bound_to(&self.stats, &self.health, &self.loads));
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

    /// Answers one client request: give it an id, route it by Host (for HTTP/2, the
    /// `:authority`) and path, forward it, count it, and log it.
    pub(crate) async fn handle(
        &self,
        mut request: Request<Incoming>,
        client: IpAddr,
        scheme: ClientScheme,
    ) -> Response<ResponseBody> {
        self.requests_by_scheme[scheme as usize].fetch_add(1, Ordering::Relaxed);
        request.extensions_mut().insert(scheme);
        let request_id = self.request_ids.assign(request.headers());
        request
            .headers_mut()
            .insert(&X_REQUEST_ID, request_id.clone());
        debug!(
            request_id = request_id.to_str().unwrap_or("-"),
            %client,
            method = %request.method(),
            path = request.uri().path(),
            "request"
        );
        let entry = self
            .config
            .access_log
            .then(|| AccessEntry::start(&request, scheme));
        let mut served = Served::default();
        let mut response = self.route(request, client, &mut served).await;
        if let Some(entry) = entry {
            let bytes = response.body().size_hint().exact();
            let id = request_id.to_str().unwrap_or("-");
            entry.finish(id, client, response.status(), &served, bytes);
        }
        response.headers_mut().insert(&X_REQUEST_ID, request_id);
        response
    }

    /// Routes and forwards one request; notes the environment and instance in `served`.
    async fn route(
        &self,
        mut request: Request<Incoming>,
        client: IpAddr,
        served: &mut Served,
    ) -> Response<ResponseBody> {
        if let Err(refusal) = admit(&request, self.config.max_body_bytes) {
            debug!(%client, status = %refusal.status, "request refused");
            return page::closing(page::text(refusal.status, refusal.message));
        }
        let host = request
            .headers()
            .get(HOST)
            .filter(|host| !host.as_bytes().trim_ascii().is_empty())
            .cloned()
            .or_else(|| host_from_authority(&mut request));
        let Some(host) = host else {
            debug!(%client, "request without Host header");
            return page::closing(page::text(
                StatusCode::BAD_REQUEST,
                "molt: missing Host header\n",
            ));
        };
        let Ok(host_name) = host.to_str() else {
            debug!(%client, "request with a non-ASCII Host header");
            return page::closing(page::text(
                StatusCode::BAD_REQUEST,
                "molt: invalid Host header\n",
            ));
        };

        if ClientScheme::of(request.extensions()) == ClientScheme::Http {
            if let Some(response) = self.plain_only(&request, host_name) {
                return response;
            }
        }

        // A held backend (no upstream while the controller replaces its instances) makes the
        // request wait for the next publish, up to the hold's end and the request timeout;
        // nothing is counted for it until it is assigned.
        let bucket_source = Cell::new(Source::Cookie);
        let mirrorable = is_idempotent_read(request.method())
            && request.body().is_end_stream()
            && requested_upgrade(&request).is_none();
        let started = Instant::now();
        let mut may_hold = true;
        let mut waiting: Option<(HoldSlot<'_>, watch::Receiver<()>)> = None;
        let chosen = loop {
            let held = match self.choose(
                &Lookup::of(&request),
                host_name.trim(),
                client,
                &bucket_source,
                mirrorable,
                may_hold,
            ) {
                Ok(choice) => break choice,
                Err(held) => held,
            };
            let Some((_, publishes)) = &mut waiting else {
                match self.enter_hold() {
                    // Subscribed: look again, so a publish in between is not missed.
                    Some(slot) => waiting = Some((slot, self.published.subscribe())),
                    None => {
                        debug!(host = host_name, "too many held requests; not waiting");
                        may_hold = false;
                    }
                }
                continue;
            };
            debug!(host = host_name, "backend held; waiting for a publish");
            let deadline = held.until.min(started + held.timeout);
            let published = tokio::time::timeout_at(deadline.into(), publishes.changed()).await;
            if !matches!(published, Ok(Ok(()))) {
                debug!(host = host_name, "hold ran out");
                may_hold = false;
            }
        };
        drop(waiting);
        // A client bucketed by hash gets its bucket as a cookie, so it stays put even when its
        // address or agent changes.
        let sticky_cookie = match &chosen {
            Choice::Routed(Routed {
                picked: Picked::Split(bucket),
                ..
            }) if bucket_source.get() == Source::Hash => Some(*bucket),
            _ => None,
        };
        let Routed {
            route,
            start,
            in_flight,
            mirror,
            ..
        } = match chosen {
            Choice::Routed(routed) => routed,
            Choice::Maintenance(maintenance) => {
                debug!(host = host_name, "backend in maintenance");
                return page::maintenance(&maintenance, Flavor::of(request.headers()));
            }
            Choice::Unrouted => {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
                debug!(host = host_name, "no route");
                return page::unknown_host(host_name.trim(), Flavor::of(request.headers()));
            }
        };
        if self.config.access_log {
            served.env = Some(route.env().to_owned());
        }
        let max_body = self.allowance(&route).max_body;
        if max_body < self.config.max_body_bytes && declared_length(&request) > Some(max_body) {
            debug!(env = route.env(), "request body over the app's limit");
            let live = &route.counters().traffic.live;
            live.record(413, started.elapsed());
            drop(in_flight);
            return page::closing(page::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "molt: the request body is larger than this app accepts\n",
            ));
        }
        if let Some(shadow) = mirror {
            self.mirror(shadow, &request, client, &host);
        }
        let Some(start) = start else {
            no_instance(&route, &in_flight, started);
            return page::no_instance();
        };
        if requested_upgrade(&request).is_some() {
            return self
                .forward_upgrade(&route, start, in_flight, request, client, host)
                .await;
        }
        let (mut response, index) = self
            .forward(&route, start, in_flight, request, client, host)
            .await;
        let live = &route.counters().traffic.live;
        live.record(response.status().as_u16(), started.elapsed());
        if self.config.access_log {
            served.instance = index.map(|index| route.upstreams()[index].instance.clone());
        }
        if let Some(bucket) = sticky_cookie {
            let cookie = format!(
                "{STICKY_COOKIE}={bucket}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(SET_COOKIE, value);
            }
        }
        response
    }

    /// Looks the request up in the current table (held only for this call: a publish waits
    /// for exactly this window). A routed request is counted in flight on its environment;
    /// a held backend (when `may_hold`) gives `Err` and counts nothing. A backend in
    /// maintenance takes no request, so nothing is counted for it either.
    pub(crate) fn choose(
        &self,
        lookup: &Lookup<'_>,
        host: &str,
        client: IpAddr,
        bucket_source: &Cell<Source>,
        mirrorable: bool,
        may_hold: bool,
    ) -> Result<Choice, Held> {
        let table = self.table.load_full();
        let selector = Selector {
            pin: lookup.pin,
            bucket: || {
                let (bucket, source) =
                    shaping::bucket_of(lookup.cookie, &identity(client, lookup.agent));
                bucket_source.set(source);
                bucket
            },
        };
        let Some((route, picked, shadow)) = table.select(host, lookup.path, selector) else {
            return Ok(Choice::Unrouted);
        };
        let backend = route.backend();
        if let Some(maintenance) = &backend.maintenance {
            return Ok(Choice::Maintenance(maintenance.clone()));
        }
        if may_hold && backend.is_held() {
            return Err(Held {
                until: backend.held_until.unwrap_or_else(std::time::Instant::now),
                timeout: self.allowance(route).timeout,
            });
        }
        let in_flight = route.counters().accept();
        let mirror = shadow
            .filter(|shadow| mirrorable && shadow.route().env() != route.env() && shadow.sample())
            .map(|shadow| Arc::clone(shadow.route()));
        Ok(Choice::Routed(Routed {
            route: Arc::clone(route),
            start: route.next_index(),
            in_flight,
            picked,
            mirror,
        }))
    }

    /// A place among the requests waiting on holds, unless `max_held_requests` wait already.
    fn enter_hold(&self) -> Option<HoldSlot<'_>> {
        let max = self.config.max_held_requests;
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| HoldSlot(&self.held))
    }

    /// The limits of one request on `route`: the route's own within the router's.
    pub(crate) fn allowance(&self, route: &Route) -> Allowance {
        let limits = route.backend().limits;
        let config = &self.config;
        Allowance {
            max_body: limits
                .max_body_bytes
                .map_or(config.max_body_bytes, |max| max.min(config.max_body_bytes)),
            timeout: limits
                .upstream_timeout
                .map_or(config.upstream_timeout, |t| t.min(config.upstream_timeout)),
        }
    }

    /// Sends the request to the route's upstreams starting at `start`, moving on to the next
    /// one only when the request can be replayed and the connection failed before a response.
    async fn forward(
        &self,
        route: &Route,
        start: usize,
        mut in_flight: InFlight,
        request: Request<Incoming>,
        client: IpAddr,
        host: HeaderValue,
    ) -> (Response<ResponseBody>, Option<usize>) {
        let allowance = self.allowance(route);
        let (mut head, body) = request.into_parts();
        let scheme = ClientScheme::of(&head.extensions);
        strip_hop_by_hop(&mut head.headers);
        add_forwarded(&mut head.headers, client, scheme, &host);
        add_forwarding(&mut head.headers, client, scheme, host);
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let replayable = is_idempotent_read(&head.method) && body.is_end_stream();
        let attempts = if replayable {
            route.upstreams().len()
        } else {
            1
        };
        let mut forward = Forward { head, path };
        let (body, fault) = LimitedBody::new(body, allowance.max_body);
        let mut body = (!replayable).then_some(body);
        // Bodiless requests go over a pooled plain socket like the direct path's, not through
        // hyper's client (HTTP/1.1 instances only).
        let plain = match self.upstreams.sockets() {
            Some(sockets) if replayable && self.config.direct_path => {
                Some((sockets, forward.plain_head()))
            }
            _ => None,
        };
        let head_only = forward.head.method == Method::HEAD;

        let counters = route.counters();
        counters.retry_tokens.deposit(&self.config.retry_budget);
        let mut tried = Vec::new();
        let mut index = start;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= attempts;
            let body = body
                .take()
                .map_or_else(|| Either::Right(Empty::new()), Either::Left);
            let upstream = &route.upstreams()[index];
            let instance = &upstream.instance;
            in_flight.sent_to(route.load_of(index));

            let sent = match &plain {
                Some((sockets, head)) => {
                    let send = send_bodiless(sockets, upstream.addr, head, head_only);
                    tokio::time::timeout(allowance.timeout, send)
                        .await
                        .map(|sent| sent.map(Answer::Socket).map_err(SendError::Plain))
                }
                None => {
                    let absolute = self.upstreams.wants_absolute_uri();
                    let request = forward.request_for(route, index, body, last, absolute);
                    let send = self.upstreams.send(upstream.addr, request);
                    tokio::time::timeout(allowance.timeout, send)
                        .await
                        .map(|sent| sent.map(Answer::Hyper).map_err(SendError::Hyper))
                }
            };
            let response = match sent {
                Ok(Ok(response)) => {
                    route.record_success(index);
                    match response {
                        Answer::Hyper(response) => relay(response, in_flight),
                        Answer::Socket(response) => relay_socket(response, in_flight),
                    }
                }
                Ok(Err(error)) if error.is_connection_failure() => {
                    if let Some(next) =
                        self.retry_after_failure(route, index, &mut tried, last, &error)
                    {
                        index = next;
                        continue;
                    }
                    upstream_failure(&in_flight, &fault)
                }
                Ok(Err(error)) => {
                    debug!(env = route.env(), instance, %error, "upstream failed");
                    upstream_failure(&in_flight, &fault)
                }
                Err(_elapsed) => {
                    debug!(env = route.env(), instance, "upstream timed out");
                    in_flight.counters().record_failed();
                    page::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "molt: the application did not answer in time\n",
                    )
                }
            };
            return (response, Some(index));
        }
    }
}

impl Router {
    /// Starts a copy of `request` to the shadow environment `shadow` (fire and forget).
    pub(crate) fn mirror<B>(
        &self,
        shadow: Arc<Route>,
        request: &Request<B>,
        client: IpAddr,
        host: &HeaderValue,
    ) {
        let settings = MirrorSettings {
            timeout: self.config.upstream_timeout,
            ejection: self.config.ejection,
        };
        self.shadows
            .mirror(&self.upstreams, shadow, request, client, host, settings);
    }

    /// After the connection to upstream `index` failed before a response: counts the failure
    /// (ejecting the upstream when it keeps failing) and returns the upstream to try next,
    /// when another attempt is allowed (`!last`), one is left to try, and the environment's
    /// retry budget pays for it.
    pub(crate) fn retry_after_failure(
        &self,
        route: &Route,
        index: usize,
        tried: &mut Vec<usize>,
        last: bool,
        error: &dyn std::fmt::Display,
    ) -> Option<usize> {
        let instance = &route.upstreams()[index].instance;
        if let Verdict::Ejected(ms) = route.record_failure(index, &self.config.ejection) {
            warn!(
                env = route.env(),
                instance,
                backoff_ms = ms,
                "upstream ejected after connection failures"
            );
        }
        tried.push(index);
        let Some(next) = (!last).then(|| route.retry_index(tried)).flatten() else {
            debug!(env = route.env(), instance, %error, "upstream failed");
            return None;
        };
        let counters = route.counters();
        if counters
            .retry_tokens
            .withdraw(&self.config.retry_budget, now_ms())
        {
            debug!(env = route.env(), instance, %error, "upstream unreachable, trying the next");
            counters.traffic.record_retry();
            Some(next)
        } else {
            counters.traffic.record_budget_exhausted();
            debug!(env = route.env(), instance, %error, "upstream unreachable, retry budget spent");
            None
        }
    }
}

/// An upstream's answer, from hyper's client or a plain socket.
enum Answer {
    Hyper(Response<UpstreamBody>),
    Socket(Response<SocketBody>),
}

/// Why an upstream request got no answer.
enum SendError {
    Hyper(crate::upstream::UpstreamError),
    Plain(AskError),
}

impl SendError {
    fn is_connection_failure(&self) -> bool {
        match self {
            SendError::Hyper(error) => error.is_connection_failure(),
            SendError::Plain(error) => matches!(error, AskError::Unreachable(_)),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Hyper(error) => error.fmt(f),
            SendError::Plain(error) => error.fmt(f),
        }
    }
}

impl Forward {
    /// The whole HTTP/1.1 head for an instance: request line and fields (several `Cookie`
    /// fields, as h2 clients send them, joined into one as RFC 9113 §8.2.3 asks).
    fn plain_head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(self.head.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &self.head.headers {
            if name == COOKIE {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let mut cookies = self.head.headers.get_all(COOKIE).iter();
        if let Some(first) = cookies.next() {
            out.extend_from_slice(b"cookie: ");
            out.extend_from_slice(first.as_bytes());
            for more in cookies {
                out.extend_from_slice(b"; ");
                out.extend_from_slice(more.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The request for upstream `index` of `route`. The last attempt takes the headers
    /// instead of copying them.
    fn request_for(
        &mut self,
        route: &Route,
        index: usize,
        body: RequestBody,
        last: bool,
        absolute: bool,
    ) -> Request<RequestBody> {
        let headers = if last {
            std::mem::take(&mut self.head.headers)
        } else {
            self.head.headers.clone()
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.head.method.clone();
        *request.uri_mut() = upstream_uri(route, index, self.path.clone(), absolute);
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        request
    }
}

/// The request target for upstream `index` of `route`: the origin form (`/path?query`) for
/// HTTP/1.1 connections, the absolute form for the h2c client, which reads the authority
/// from it.
pub(crate) fn upstream_uri(route: &Route, index: usize, path: PathAndQuery, absolute: bool) -> Uri {
    if !absolute {
        return Uri::from(path);
    }
    let mut uri = hyper::http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(route.authority(index).clone());
    uri.path_and_query = Some(path);
    Uri::from_parts(uri).expect("scheme, authority and path form an absolute URI")
}

/// [`relay`] for an answer read from a plain socket (its head has no hop-by-hop fields).
fn relay_socket(response: Response<SocketBody>, in_flight: InFlight) -> Response<ResponseBody> {
    in_flight.counters().record_answered();
    response.map(|body| ResponseBody::Socket {
        body,
        in_flight: Some(in_flight),
    })
}

/// Counts a request routed to an environment that has no upstreams (answered 503).
pub(crate) fn no_instance(route: &Route, in_flight: &InFlight, started: Instant) {
    in_flight.counters().record_failed();
    let traffic = &in_flight.counters().traffic.live;
    traffic.record(503, started.elapsed());
    debug!(env = route.env(), "environment has no upstreams");
}

/// Passes an upstream response on to the client; the request stays in flight until its
/// body has been streamed.
pub(crate) fn relay(
    response: Response<UpstreamBody>,
    in_flight: InFlight,
) -> Response<ResponseBody> {
    in_flight.counters().record_answered();
    let (mut head, body) = response.into_parts();
    // hyper read a body with both framings by its chunks (RFC 9112 §6.3): the length, which
    // the client would believe instead, must not be passed on.
    if head.headers.contains_key(TRANSFER_ENCODING) {
        head.headers.remove(CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut head.headers);
    Response::from_parts(head, ResponseBody::upstream(body, in_flight))
}

impl Drop for HoldSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Pins a request to one environment of its hostname (for testers), e.g. `X-Molt-Env: shop-v8-1a2b`.
pub static X_MOLT_ENV: HeaderName = HeaderName::from_static("x-molt-env");

/// What identifies a client for sticky bucketing when it has no cookie yet.
fn identity(client: IpAddr, agent: Option<&[u8]>) -> Vec<u8> {
    let mut id = client.to_string().into_bytes();
    id.push(b'|');
    if let Some(agent) = agent {
        id.extend_from_slice(agent);
    }
    id
}

/// What routing reads from a request besides its host: the path, the pinned environment
/// (`X-Molt-Env`), and for sticky splits the `Cookie` and `User-Agent` headers.
pub(crate) struct Lookup<'a> {
    pub(crate) path: &'a str,
    pub(crate) pin: Option<&'a str>,
    pub(crate) cookie: Option<&'a [u8]>,
    pub(crate) agent: Option<&'a [u8]>,
}

impl<'a> Lookup<'a> {
    fn of<B>(request: &'a Request<B>) -> Self {
        let headers = request.headers();
        Lookup {
            path: request.uri().path(),
            pin: headers.get(&X_MOLT_ENV).and_then(|v| v.to_str().ok()),
            cookie: headers.get(COOKIE).map(HeaderValue::as_bytes),
            agent: headers.get(USER_AGENT).map(HeaderValue::as_bytes),
        }
    }
}

/// A short plain-text response made by the router itself.
pub(crate) fn local_response(
    status: StatusCode,
    text: impl Into<String>,
) -> Response<ResponseBody> {
    page::text(status, text)
}

/// The answer when the upstream request failed: the client's fault when its body was too
/// large or broke off (not counted as failed), else a counted 502.
fn upstream_failure(in_flight: &InFlight, fault: &FaultProbe) -> Response<ResponseBody> {
    match fault.fault() {
        Some(BodyFault::TooLarge) => page::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "molt: the request body is larger than this server accepts\n",
        ),
        Some(BodyFault::Broken) => page::text(
            StatusCode::BAD_REQUEST,
            "molt: the request body broke off\n",
        ),
        None => {
            in_flight.counters().record_failed();
            page::text(
                StatusCode::BAD_GATEWAY,
                "molt: the application could not be reached\n",
            )
        }
    }
}

/// The Host of a request that has no Host header but an authority in its URI (HTTP/2
/// clients send `:authority` instead of Host), also added as the Host header upstreams see.
fn host_from_authority(request: &mut Request<Incoming>) -> Option<HeaderValue> {
    let authority = request.uri().authority()?;
    let host = HeaderValue::from_str(authority.as_str()).ok()?;
    request.headers_mut().insert(HOST, host.clone());
    Some(host)
}

/// The request's `Content-Length`, when it has a valid one.
fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok())
        .and_then(|length| length.trim().parse().ok())
}

/// Methods whose bodiless requests can be sent to another upstream after a failed attempt.
pub(crate) fn is_idempotent_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
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
