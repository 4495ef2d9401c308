//! What the plain listener answers by itself, before routing: ACME http-01 challenges and
//! the redirect to https.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode};
use tracing::debug;

use crate::body::ResponseBody;
use crate::host::lookup_key;
use crate::page;
use crate::router::Router;
use crate::tls::ACME_CHALLENGE_PREFIX;

impl Router {
    /// What the plain listener answers itself: ACME http-01 challenges, and the redirect to
    /// https for hosts with a certificate (challenge paths exempt).
    pub(crate) fn plain_only(
        &self,
        request: &Request<Incoming>,
        host: &str,
    ) -> Option<Response<ResponseBody>> {
        let path = request.uri().path();
        if path.starts_with(ACME_CHALLENGE_PREFIX) {
            let answer = self.challenges.answer(path)?;
            debug!(host, path, "answering an ACME http-01 challenge");
            let mut response = page::text(StatusCode::OK, answer);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return Some(response);
        }
        let port = self.config.https_redirect?;
        if !self.certs.covers(host) {
            return None;
        }
        let name = lookup_key(host.trim()).ok()?;
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", PathAndQuery::as_str);
        let location = match port {
            443 => format!("https://{name}{target}"),
            port => format!("https://{name}:{port}{target}"),
        };
        let location = HeaderValue::from_str(&location).ok()?;
        let mut response = page::text(
            StatusCode::PERMANENT_REDIRECT,
            "molt: this site is served over https\n",
        );
        response.headers_mut().insert(LOCATION, location);
        Some(response)
    }
}
