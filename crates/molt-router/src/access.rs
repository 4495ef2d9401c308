//! The optional access log: one `tracing` event per request on target
//! `molt_router::access`, formatted by whatever subscriber the binary installs.

use std::net::IpAddr;
use std::time::Instant;

use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request, StatusCode};
use tracing::info;

use crate::config::ClientScheme;

/// What the access log line says about the request, taken before it is forwarded.
#[derive(Debug)]
pub(crate) struct AccessEntry {
    started: Instant,
    method: Method,
    host: Option<HeaderValue>,
    path: String,
    scheme: ClientScheme,
}

/// Which app, environment and instance served a request, when one was chosen, and how long
/// the instance took to answer (from asking it to its response head, retries included).
#[derive(Debug, Default)]
pub(crate) struct Served {
    pub(crate) app: Option<String>,
    pub(crate) env: Option<String>,
    pub(crate) instance: Option<String>,
    pub(crate) upstream: Option<std::time::Duration>,
}

impl Served {
    /// Notes the route's app and environment.
    pub(crate) fn route(&mut self, route: &crate::route::Route) {
        let app = &route.backend().app;
        self.app = (!app.is_empty()).then(|| app.clone());
        self.env = Some(route.env().to_owned());
    }
}

impl AccessEntry {
    /// Notes the request's method, host and path and starts the clock.
    pub(crate) fn start<B>(request: &Request<B>, scheme: ClientScheme) -> Self {
        Self::begin(
            request.method().clone(),
            request.headers().get(HOST).cloned(),
            request.uri().path(),
            scheme,
        )
    }

    /// An entry for a request read by the direct path (which has no `Request`).
    pub(crate) fn begin(
        method: Method,
        host: Option<HeaderValue>,
        path: &str,
        scheme: ClientScheme,
    ) -> Self {
        Self {
            started: Instant::now(),
            method,
            host,
            path: path.to_owned(),
            scheme,
        }
    }

    /// Emits the line (INFO, target `molt_router::access`).
    pub(crate) fn finish(
        self,
        request_id: &str,
        client: IpAddr,
        status: StatusCode,
        served: &Served,
        bytes: Option<u64>,
    ) {
        let duration_us = self.started.elapsed().as_micros() as u64;
        let upstream_us = served.upstream.map(|d| d.as_micros() as u64);
        info!(
            target: "molt_router::access",
            request_id,
            client = %client,
            scheme = self.scheme.as_str(),
            host = self.host.as_ref().and_then(|host| host.to_str().ok()).unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            app = served.app.as_deref().unwrap_or("-"),
            env = served.env.as_deref().unwrap_or("-"),
            instance = served.instance.as_deref().unwrap_or("-"),
            duration_us,
            upstream_us,
            bytes,
            "request"
        );
    }
}

/// Emits the line of a request refused before it was parsed (ambiguous framing, an oversized
/// head): nothing of it is known but who sent it and the answer.
pub(crate) fn refused(client: IpAddr, scheme: ClientScheme, status: u16, bytes: u64) {
    info!(
        target: "molt_router::access",
        request_id = "-",
        client = %client,
        scheme = scheme.as_str(),
        host = "-",
        method = "-",
        path = "-",
        status,
        app = "-",
        env = "-",
        instance = "-",
        duration_us = 0u64,
        bytes,
        "refused"
    );
}
