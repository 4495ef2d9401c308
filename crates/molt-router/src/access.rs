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

/// Which environment and instance served a request, when one was chosen.
#[derive(Debug, Default)]
pub(crate) struct Served {
    pub(crate) env: Option<String>,
    pub(crate) instance: Option<String>,
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
        info!(
            target: "molt_router::access",
            request_id,
            client = %client,
            scheme = self.scheme.as_str(),
            host = self.host.as_ref().and_then(|host| host.to_str().ok()).unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            env = served.env.as_deref().unwrap_or("-"),
            instance = served.instance.as_deref().unwrap_or("-"),
            duration_us,
            bytes,
            "request"
        );
    }
}
