//! The requests hyper parses: every request of an h2 or TLS connection, and those the direct
//! path ([`crate::direct`]) leaves to hyper (a body, an upgrade, HTTP/1.0, a held backend, an
//! unknown host...). [`Router::handle`] gives a request its id and access-log entry;
//! [`Router::route`] takes it through its phases, each a method of its own:
//!
//! 1. admission — what the request must satisfy before it is routed (a valid Host, the body
//!    limit; [`crate::admission`]), and what the plain listener answers itself
//!    ([`crate::plain`]);
//! 2. lookup — the route table ([`crate::routing`]), and for a held backend the wait for the
//!    next publish;
//! 3. assignment — the router's own answers for a backend in maintenance, an unknown host or
//!    a body over the app's limit; otherwise the request is in flight on its route;
//! 4. forward — the shadow copy, then the upgrade ([`crate::upgrade`]) or the attempts on
//!    the route's upstreams ([`forward`], through the loop the direct path uses too);
//! 5. account — the status and latency for the environment, the instance for the access log,
//!    the sticky cookie.

mod forward;

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, HOST, SET_COOKIE, STRICT_TRANSPORT_SECURITY};
use hyper::{Request, Response, StatusCode};
use tracing::debug;

use crate::access::{AccessEntry, Served};
use crate::admission::admit;
use crate::attempts::is_idempotent_read;
use crate::body::ResponseBody;
use crate::config::ClientScheme;
use crate::page::{self, Flavor};
use crate::reqid::X_REQUEST_ID;
use crate::route::Route;
use crate::router::Router;
use crate::routing::{no_instance, Choice, Held, Lookup, Routed};
use crate::shaping::{Source, STICKY_COOKIE};
use crate::table::Picked;
use crate::upgrade::requested_upgrade;

/// A response the router made itself instead of forwarding: a refusal, a redirect, a page.
/// The phases return it as their `Err`, whole (`clippy::result_large_err` is allowed for
/// them): it goes straight back to [`Router::route`], and boxing it would add an allocation
/// to every answer the router makes.
type OwnAnswer = Response<ResponseBody>;

impl Router {
    /// Answers one client request: give it an id, route it by Host (for HTTP/2, the
    /// `:authority`) and path, forward it, count it, and log it.
    pub(crate) async fn handle(
        &self,
        mut request: Request<Incoming>,
        client: IpAddr,
        scheme: ClientScheme,
    ) -> Response<ResponseBody> {
        self.requests_by_scheme[scheme as usize].fetch_add(1, Ordering::Relaxed);
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
        let hsts = self.hsts(&request, scheme);
        let entry = self
            .config
            .access_log
            .then(|| AccessEntry::start(&request, scheme));
        let mut served = Served::default();
        let mut response = match self.route(request, client, scheme, &mut served).await {
            Ok(response) | Err(response) => response,
        };
        if let Some(entry) = entry {
            let bytes = response.body().size_hint().exact();
            let id = request_id.to_str().unwrap_or("-");
            entry.finish(id, client, response.status(), &served, bytes);
        }
        response.headers_mut().insert(&X_REQUEST_ID, request_id);
        if let Some(hsts) = hsts {
            response
                .headers_mut()
                .insert(STRICT_TRANSPORT_SECURITY, hsts);
        }
        response
    }

    /// The `Strict-Transport-Security` value for the answer to `request`: only over TLS, for
    /// a host that has a certificate, with [`RouterConfig::hsts_max_age`](crate::RouterConfig)
    /// set.
    fn hsts(&self, request: &Request<Incoming>, scheme: ClientScheme) -> Option<HeaderValue> {
        let max_age = self.config.hsts_max_age?;
        if scheme != ClientScheme::Https {
            return None;
        }
        let host = match request.headers().get(HOST) {
            Some(host) => host.to_str().ok()?,
            None => request.uri().authority()?.as_str(),
        };
        if !self.certs.covers(host.trim()) {
            return None;
        }
        HeaderValue::from_str(&format!("max-age={max_age}")).ok()
    }

    /// Routes and forwards one request, phase by phase; notes the environment and instance
    /// in `served`. `Err` is the router's own answer, made before anything was forwarded.
    async fn route(
        &self,
        mut request: Request<Incoming>,
        client: IpAddr,
        scheme: ClientScheme,
        served: &mut Served,
    ) -> Result<Response<ResponseBody>, OwnAnswer> {
        let host = self.admission(&mut request, client)?;
        let host_name = readable_host(&host, client)?;
        if scheme == ClientScheme::Http {
            if let Some(response) = self.plain_only(&request, host_name) {
                return Err(response);
            }
        }
        let started = Instant::now();
        let (choice, sticky) = match self.lookup(&request, host_name, client) {
            Ok(found) => found,
            Err(held) => {
                self.lookup_after_hold(held, &request, host_name, client, started)
                    .await
            }
        };
        let Routed {
            route,
            start,
            mut in_flight,
            mirror,
            ..
        } = self.assign(choice, &request, host_name, started, served)?;

        if let Some(shadow) = mirror {
            self.mirror(shadow, &request, client, &host, scheme);
        }
        let Some(start) = start else {
            no_instance(&route, &mut in_flight, started);
            return Err(page::no_instance());
        };
        if requested_upgrade(&request).is_some() {
            let upgraded = self
                .forward_upgrade(&route, start, in_flight, request, (client, scheme), host)
                .await;
            return Ok(upgraded);
        }
        let asked = self.config.access_log.then(Instant::now);
        let (mut response, index) = self
            .forward(&route, start, in_flight, request, (client, scheme), host)
            .await;
        served.upstream = asked.map(|asked| asked.elapsed());
        self.account(&mut response, &route, index, started, sticky, served);
        Ok(response)
    }

    /// Admission: the checks a request passes before it is routed ([`admit`]), and its Host
    /// (for HTTP/2, the `:authority`, then also added as the Host header upstreams see).
    #[allow(clippy::result_large_err)]
    fn admission(
        &self,
        request: &mut Request<Incoming>,
        client: IpAddr,
    ) -> Result<HeaderValue, OwnAnswer> {
        if let Err(refusal) = admit(request, self.config.max_body_bytes) {
            debug!(%client, status = %refusal.status, "request refused");
            return Err(page::closing(page::text(refusal.status, refusal.message)));
        }
        let host = request
            .headers()
            .get(HOST)
            .filter(|host| !host.as_bytes().trim_ascii().is_empty())
            .cloned()
            .or_else(|| host_from_authority(request));
        host.ok_or_else(|| {
            debug!(%client, "request without Host header");
            page::closing(page::text(
                StatusCode::BAD_REQUEST,
                "molt: missing Host header\n",
            ))
        })
    }

    /// Lookup: the route for the request, and the sticky bucket to hand the client as a
    /// cookie (see [`sticky_bucket`]). `Err` when its backend is held: then
    /// [`Router::lookup_after_hold`] waits.
    fn lookup(
        &self,
        request: &Request<Incoming>,
        host_name: &str,
        client: IpAddr,
    ) -> Result<(Choice, Option<u32>), Held> {
        let bucket_source = Cell::new(Source::Cookie);
        let choice = self.choose(
            &Lookup::of(request),
            host_name.trim(),
            client,
            &bucket_source,
            is_mirrorable(request),
            true,
        )?;
        let sticky = sticky_bucket(&choice, bucket_source.get());
        Ok((choice, sticky))
    }

    /// The lookup of a request whose backend is held: it waits for the next publish (not on
    /// [`Router::lookup`]'s path, so requests that do not wait do not carry the wait).
    async fn lookup_after_hold(
        &self,
        held: Held,
        request: &Request<Incoming>,
        host_name: &str,
        client: IpAddr,
        started: Instant,
    ) -> (Choice, Option<u32>) {
        let lookup = Lookup::of(request);
        let mirrorable = is_mirrorable(request);
        let (choice, bucket_source) = self
            .wait_out_hold(held, &lookup, host_name, client, mirrorable, started)
            .await;
        let sticky = sticky_bucket(&choice, bucket_source);
        (choice, sticky)
    }

    /// Assignment: what the table's choice means for the request — its route (it is in
    /// flight there), or the router's own answer: a backend in maintenance, an unknown host,
    /// a declared body over the app's own limit.
    #[allow(clippy::result_large_err)]
    fn assign(
        &self,
        choice: Choice,
        request: &Request<Incoming>,
        host_name: &str,
        started: Instant,
        served: &mut Served,
    ) -> Result<Routed, OwnAnswer> {
        let routed = match choice {
            Choice::Routed(routed) => routed,
            Choice::Maintenance(maintenance) => {
                debug!(host = host_name, "backend in maintenance");
                return Err(page::maintenance(
                    &maintenance,
                    Flavor::of(request.headers()),
                ));
            }
            Choice::Unrouted => {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
                debug!(host = host_name, "no route");
                return Err(page::unknown_host(
                    host_name.trim(),
                    Flavor::of(request.headers()),
                ));
            }
        };
        let route = &routed.route;
        if self.config.access_log {
            served.route(route);
        }
        let max_body = self.allowance(route).max_body;
        if max_body < self.config.max_body_bytes && declared_length(request) > Some(max_body) {
            debug!(env = route.env(), "request body over the app's limit");
            let live = &route.counters().traffic.live;
            live.record(413, started.elapsed());
            let Routed { mut in_flight, .. } = routed;
            in_flight.failed();
            return Err(page::closing(page::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "molt: the request body is larger than this app accepts\n",
            )));
        }
        Ok(routed)
    }

    /// Account: the response's status and time for the environment's histogram, the
    /// instance that answered for the access log, and the sticky cookie.
    fn account(
        &self,
        response: &mut Response<ResponseBody>,
        route: &Route,
        index: Option<usize>,
        started: Instant,
        sticky: Option<u32>,
        served: &mut Served,
    ) {
        let live = &route.counters().traffic.live;
        live.record(response.status().as_u16(), started.elapsed());
        if self.config.access_log {
            served.instance = index.map(|index| route.upstreams()[index].instance.clone());
        }
        if let Some(bucket) = sticky {
            let cookie = format!(
                "{STICKY_COOKIE}={bucket}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(SET_COOKIE, value);
            }
        }
    }
}

/// Whether a copy of the request may go to the hostname's shadow environment: a bodiless
/// idempotent read, not an upgrade.
fn is_mirrorable(request: &Request<Incoming>) -> bool {
    is_idempotent_read(request.method())
        && request.body().is_end_stream()
        && requested_upgrade(request).is_none()
}

/// The bucket to hand out as the `molt-bucket` cookie: a client a split bucketed by hash
/// gets its bucket, so it stays put even when its address or agent changes.
fn sticky_bucket(choice: &Choice, source: Source) -> Option<u32> {
    match choice {
        Choice::Routed(Routed {
            picked: Picked::Split(bucket),
            ..
        }) if source == Source::Hash => Some(*bucket),
        _ => None,
    }
}

/// The admitted Host as text: it must be ASCII to be routed.
#[allow(clippy::result_large_err)]
fn readable_host(host: &HeaderValue, client: IpAddr) -> Result<&str, OwnAnswer> {
    host.to_str().map_err(|_| {
        debug!(%client, "request with a non-ASCII Host header");
        page::closing(page::text(
            StatusCode::BAD_REQUEST,
            "molt: invalid Host header\n",
        ))
    })
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
