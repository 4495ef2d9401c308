//! Choosing where one request goes — the part of routing both paths share: the table is
//! loaded for exactly one lookup (a publish waits for that window), the route found by host,
//! path, pinned environment or sticky split, the upstream to start with picked, and the
//! request counted in flight on its environment. A held backend makes a request wait here
//! for the next publish ([`Router::wait_out_hold`]).

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue, COOKIE, USER_AGENT};
use hyper::Request;
use tokio::sync::watch;
use tracing::debug;

use crate::route::{Maintenance, Route};
use crate::router::Router;
use crate::shaping::{self, Source};
use crate::stats::{EnvCounters, InFlight, Waiting};
use crate::table::{Picked, Selector};

/// Pins a request to one environment of its hostname (for testers), e.g. `X-Molt-Env: shop-v8-1a2b`.
pub static X_MOLT_ENV: HeaderName = HeaderName::from_static("x-molt-env");

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
    /// The held environment's counters, where the wait is counted.
    counters: Arc<EnvCounters>,
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

/// What routing reads from a request besides its host: the path, the pinned environment
/// (`X-Molt-Env`), and for sticky splits the `Cookie` and `User-Agent` headers.
pub(crate) struct Lookup<'a> {
    pub(crate) path: &'a str,
    pub(crate) pin: Option<&'a str>,
    pub(crate) cookie: Option<&'a [u8]>,
    pub(crate) agent: Option<&'a [u8]>,
}

impl Router {
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
                counters: Arc::clone(route.counters()),
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

    /// After [`Router::choose`] found the backend `held`: waits for the next publish, up to
    /// the hold's end and the route's request timeout from `started`, and only while fewer
    /// than `max_held_requests` wait (then, or once the wait is over, a held backend is
    /// answered like one without upstreams), looking again after each. Nothing is counted
    /// for the request until it is assigned. Also returns where the sticky bucket of a split
    /// came from.
    pub(crate) async fn wait_out_hold(
        &self,
        mut held: Held,
        lookup: &Lookup<'_>,
        host_name: &str,
        client: IpAddr,
        mirrorable: bool,
        started: Instant,
    ) -> (Choice, Source) {
        let bucket_source = Cell::new(Source::Cookie);
        let mut may_hold = true;
        let mut waiting: Option<(HoldSlot<'_>, Waiting, watch::Receiver<()>)> = None;
        loop {
            match &mut waiting {
                None => match self.enter_hold() {
                    // Subscribed: look again, so a publish in between is not missed. The
                    // environment counts the wait (what wakes one scaled to zero).
                    Some(slot) => {
                        waiting = Some((slot, held.counters.wait(), self.published.subscribe()))
                    }
                    None => {
                        debug!(host = host_name, "too many held requests; not waiting");
                        may_hold = false;
                    }
                },
                Some((_, _, publishes)) => {
                    debug!(host = host_name, "backend held; waiting for a publish");
                    let deadline = held.until.min(started + held.timeout);
                    let published =
                        tokio::time::timeout_at(deadline.into(), publishes.changed()).await;
                    if !matches!(published, Ok(Ok(()))) {
                        debug!(host = host_name, "hold ran out");
                        may_hold = false;
                    }
                }
            }
            held = match self.choose(
                lookup,
                host_name.trim(),
                client,
                &bucket_source,
                mirrorable,
                may_hold,
            ) {
                Ok(choice) => return (choice, bucket_source.get()),
                Err(held) => held,
            };
        }
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
}

impl<'a> Lookup<'a> {
    /// What routing reads from a request hyper parsed.
    pub(crate) fn of<B>(request: &'a Request<B>) -> Self {
        let headers = request.headers();
        Lookup {
            path: request.uri().path(),
            pin: headers.get(&X_MOLT_ENV).and_then(|v| v.to_str().ok()),
            cookie: headers.get(COOKIE).map(HeaderValue::as_bytes),
            agent: headers.get(USER_AGENT).map(HeaderValue::as_bytes),
        }
    }
}

impl Drop for HoldSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request routed to an environment that has no upstreams (answered 503).
pub(crate) fn no_instance(route: &Route, in_flight: &mut InFlight, started: Instant) {
    in_flight.failed();
    let traffic = &in_flight.counters().traffic.live;
    traffic.record(503, started.elapsed());
    debug!(env = route.env(), "environment has no upstreams");
}

/// What identifies a client for sticky bucketing when it has no cookie yet.
fn identity(client: IpAddr, agent: Option<&[u8]>) -> Vec<u8> {
    let mut id = client.to_string().into_bytes();
    id.push(b'|');
    if let Some(agent) = agent {
        id.extend_from_slice(agent);
    }
    id
}
