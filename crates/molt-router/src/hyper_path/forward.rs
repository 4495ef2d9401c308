//! Forwarding a request hyper parsed: its head rewritten for upstreams (hop-by-hop fields
//! out, forwarding fields in), then the shared attempt loop ([`crate::attempts`]) with one of
//! two attempts — a bodiless request over a pooled plain socket, like the direct path's, or
//! any request through hyper's client (and h2c upstreams) — and the answer relayed while the
//! request stays in flight.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{Either, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, COOKIE, FORWARDED};
use hyper::http::request;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Version};
use tracing::debug;

use crate::attempts::{self, at_connection_limit, is_idempotent_read, Attempt, Attempted, Settled};
use crate::body::{relay, relay_socket, ResponseBody};
use crate::config::ClientScheme;
use crate::forwarded::{add_forwarded, push_forwarding_fields};
use crate::headers::{add_forwarding, is_forwarding_field, strip_hop_by_hop, X_FORWARDED_FOR};
use crate::limits::{BodyFault, FaultProbe, LimitedBody};
use crate::page;
use crate::route::{Route, Upstream};
use crate::router::Router;
use crate::stats::InFlight;
use crate::upstream::{
    send_bodiless, upstream_uri, AskError, Pool, RequestBody, Socket, SocketBody, UpstreamBody,
    UpstreamError, Upstreams,
};

/// The parts of a request needed to send it (again) to an upstream.
struct Forward {
    head: request::Parts,
    path: PathAndQuery,
}

/// One attempt of a request hyper parsed, on one upstream, within the route's timeout.
struct UpstreamAttempt<'a> {
    upstreams: &'a Upstreams,
    route: &'a Route,
    forward: &'a mut Forward,
    /// The client's body, for the single attempt a request with a body gets.
    body: Option<LimitedBody>,
    /// The plain-socket pool and the whole upstream head, for a bodiless request to
    /// HTTP/1.1 instances (unless the direct path is off).
    plain: Option<(&'a Arc<Pool<Socket>>, Vec<u8>)>,
    head_only: bool,
    timeout: Duration,
    /// Why the client's body stopped, when it did: then a failed exchange is the client's
    /// doing, not the upstream's (it does not count toward the upstream's ejection).
    fault: &'a FaultProbe,
}

/// An upstream's answer, from hyper's client or a plain socket.
enum Answer {
    Hyper(Response<UpstreamBody>),
    Socket(Response<SocketBody>),
}

/// Why an upstream request got no answer.
enum SendError {
    Hyper(UpstreamError),
    Plain(AskError),
}

impl Router {
    /// Sends the request to the route's upstreams starting at `start`, moving on to the next
    /// one only when the request can be replayed and the connection failed before a response.
    pub(super) async fn forward(
        &self,
        route: &Route,
        start: usize,
        mut in_flight: InFlight,
        request: Request<Incoming>,
        (client, scheme): (IpAddr, ClientScheme),
        host: HeaderValue,
    ) -> (Response<ResponseBody>, Option<usize>) {
        let allowance = self.allowance(route);
        let (mut head, body) = request.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let replayable = is_idempotent_read(&head.method) && body.is_end_stream();
        let limit = if replayable {
            route.upstreams().len()
        } else {
            1
        };
        let mut forward = Forward { head, path };
        let (body, fault) = LimitedBody::new(body, allowance.max_body);
        let body = (!replayable).then_some(body);
        // Bodiless requests go over a pooled plain socket like the direct path's, not through
        // hyper's client (HTTP/1.1 instances only). Their forwarding fields are written into
        // the head as it is made; hyper's client gets them in the header map.
        let plain = match self.upstreams.sockets() {
            Some(sockets) if replayable && self.config.direct_path => {
                Some((sockets, forward.plain_head(client, scheme, &host)))
            }
            _ => {
                add_forwarded(&mut forward.head.headers, client, scheme, &host);
                add_forwarding(&mut forward.head.headers, client, scheme, host);
                None
            }
        };
        let head_only = forward.head.method == Method::HEAD;
        let mut attempt = UpstreamAttempt {
            upstreams: &self.upstreams,
            route,
            forward: &mut forward,
            body,
            plain,
            head_only,
            timeout: allowance.timeout,
            fault: &fault,
        };

        let Settled { index, outcome } = attempts::run(
            &self.config,
            route,
            start,
            limit,
            &mut in_flight,
            &mut attempt,
        )
        .await;
        let upstream = &route.upstreams()[index];
        let instance = &upstream.instance;
        let response = match outcome {
            Attempted::Answered(Answer::Hyper(response)) => relay(response, in_flight),
            Attempted::Answered(Answer::Socket(response)) => relay_socket(response, in_flight),
            Attempted::Unreachable(_) => upstream_failure(&mut in_flight, &fault),
            Attempted::Failed(error) if error.is_at_limit() => {
                at_connection_limit(route, upstream);
                in_flight.failed();
                page::at_connection_limit()
            }
            Attempted::Failed(error) => {
                debug!(env = route.env(), instance, %error, "upstream failed");
                upstream_failure(&mut in_flight, &fault)
            }
            Attempted::TimedOut => {
                debug!(env = route.env(), instance, "upstream timed out");
                in_flight.failed();
                page::text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "molt: the application did not answer in time\n",
                )
            }
        };
        (response, Some(index))
    }
}

impl Attempt for UpstreamAttempt<'_> {
    type Answer = Answer;
    type Unreachable = SendError;
    type Failure = SendError;

    async fn send(
        &mut self,
        _upstream: &Upstream,
        index: usize,
        last: bool,
    ) -> Attempted<Answer, SendError, SendError> {
        let body = self
            .body
            .take()
            .map_or_else(|| Either::Right(Empty::new()), Either::Left);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let destination = self.route.destination(index, deadline);
        let sent = match &self.plain {
            Some((sockets, head)) => {
                let send = send_bodiless(sockets, destination, head, self.head_only);
                tokio::time::timeout_at(deadline, send)
                    .await
                    .map(|sent| sent.map(Answer::Socket).map_err(SendError::Plain))
            }
            None => {
                let absolute = self.upstreams.wants_absolute_uri();
                let request = self
                    .forward
                    .request_for(self.route, index, body, last, absolute);
                // Boxed: hyper's client future is the largest part of this one, and most
                // requests (bodiless, to HTTP/1.1 instances) never take this branch; every
                // request's future is moved when hyper spawns an h2 stream's task.
                let send = Box::pin(self.upstreams.send(destination, request));
                tokio::time::timeout_at(deadline, send)
                    .await
                    .map(|sent| sent.map(Answer::Hyper).map_err(SendError::Hyper))
            }
        };
        match sent {
            Ok(Ok(answer)) => Attempted::Answered(answer),
            Ok(Err(error)) if self.fault.fault().is_some() => Attempted::Failed(error),
            Ok(Err(error)) if error.is_connection_failure() => Attempted::Unreachable(error),
            Ok(Err(error)) => Attempted::Failed(error),
            Err(_elapsed) => Attempted::TimedOut,
        }
    }
}

impl SendError {
    /// The instance was at its cap of connections and none was freed in time.
    fn is_at_limit(&self) -> bool {
        matches!(
            self,
            SendError::Hyper(UpstreamError::AtLimit(_)) | SendError::Plain(AskError::AtLimit(_))
        )
    }

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
    /// The whole HTTP/1.1 head for an instance: request line, fields (several `Cookie`
    /// fields, as h2 clients send them, joined into one as RFC 9113 §8.2.3 asks) and the
    /// forwarding fields of this hop.
    fn plain_head(&self, client: IpAddr, scheme: ClientScheme, host: &HeaderValue) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(self.head.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let headers = &self.head.headers;
        for (name, value) in headers {
            if name == COOKIE || name == FORWARDED || is_forwarding_field(name) {
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
        let forwarded = headers
            .get_all(FORWARDED)
            .iter()
            .filter(|prior| prior.to_str().is_ok())
            .map(HeaderValue::as_bytes);
        let forwarded_for = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes);
        push_forwarding_fields(
            &mut out,
            forwarded,
            forwarded_for,
            client,
            scheme,
            host.as_bytes(),
        );
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
        *request.uri_mut() = upstream_uri(route.authority(index), self.path.clone(), absolute);
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        request
    }
}

/// The answer when the upstream request failed, counted as failed: the client's fault when
/// its body was too large or broke off (413 or 400, and the connection closes: the rest of
/// the body was never read), else a 502.
fn upstream_failure(in_flight: &mut InFlight, fault: &FaultProbe) -> Response<ResponseBody> {
    in_flight.failed();
    match fault.fault() {
        Some(BodyFault::TooLarge) => page::closing(page::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "molt: the request body is larger than this server accepts\n",
        )),
        Some(BodyFault::Broken) => page::closing(page::text(
            StatusCode::BAD_REQUEST,
            "molt: the request body broke off\n",
        )),
        None => page::text(
            StatusCode::BAD_GATEWAY,
            "molt: the application could not be reached\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderName;
    use hyper::HeaderMap;

    /// The fields of a written head, in a map.
    fn fields_of(head: &[u8]) -> HeaderMap {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut fields);
        assert!(request.parse(head).expect("a valid head").is_complete());
        let mut map = HeaderMap::new();
        for field in request.headers.iter() {
            map.append(
                HeaderName::from_bytes(field.name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(field.value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn a_plain_head_carries_the_forwarding_fields_hyper_s_client_would_get() {
        let earlier: [&[(&str, &[u8])]; 3] = [
            &[("accept", b"*/*")],
            &[
                ("forwarded", b"for=1.1.1.1"),
                ("x-forwarded-for", b"1.1.1.1"),
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"elsewhere.test"),
                ("x-request-id", b"id-1"),
            ],
            &[
                ("forwarded", b"for=1.1.1.1"),
                ("forwarded", b"for=\xc3\xa9"),
                ("forwarded", b"for=2.2.2.2"),
                ("x-forwarded-for", b"3.3.3.3"),
                ("x-forwarded-for", b"4.4.4.4, 5.5.5.5"),
            ],
        ];
        let hops = [
            ("10.0.0.7", ClientScheme::Http, &b"app.test"[..]),
            ("::1", ClientScheme::Https, b"app.test:8443"),
            ("127.0.0.1", ClientScheme::Https, b"caf\xc3\xa9.test"),
        ];
        for fields in earlier {
            for (client, scheme, host) in hops {
                let client: IpAddr = client.parse().expect("ip");
                let host = HeaderValue::from_bytes(host).expect("host");
                let mut request = Request::get("/path?q=1").body(()).expect("request");
                for (name, value) in fields {
                    request.headers_mut().append(
                        HeaderName::from_static(name),
                        HeaderValue::from_bytes(value).expect("value"),
                    );
                }
                let (head, ()) = request.into_parts();
                let mut expected = head.headers.clone();
                add_forwarded(&mut expected, client, scheme, &host);
                add_forwarding(&mut expected, client, scheme, host.clone());
                let forward = Forward {
                    head,
                    path: PathAndQuery::from_static("/path?q=1"),
                };
                let written = forward.plain_head(client, scheme, &host);
                assert!(written.starts_with(b"GET /path?q=1 HTTP/1.1\r\n"));
                assert!(written.ends_with(b"\r\n\r\n"));
                assert_eq!(fields_of(&written), expected, "{fields:?} via {client}");
            }
        }
    }
}
