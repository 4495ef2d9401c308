//! A request head on the direct path: parsed in place from the client's bytes, routed, and
//! either left to hyper, answered by the router, or turned into the head its upstream gets.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tracing::debug;

use crate::access::AccessEntry;
use crate::attempts::is_idempotent_read;
use crate::body::ResponseBody;
use crate::config::ClientScheme;
use crate::forwarded::push_forwarding_fields;
use crate::headers::{is_hop_by_hop, Listed};
use crate::http1::{is_visible, parse_length, push_field, tokens, MAX_HEADERS};
use crate::page;
use crate::reqid::{InlineId, X_REQUEST_ID};
use crate::route::Route;
use crate::router::Router;
use crate::routing::{no_instance, Choice, Lookup, Routed};
use crate::shaping::Source;
use crate::stats::InFlight;
use crate::table::Picked;
use crate::tls::ACME_CHALLENGE_PREFIX;

/// What the direct path decided for the request head at the start of `input`.
// Lives for a moment on the stack; boxing the exchange would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Begin {
    /// hyper takes the connection from this request on.
    Handoff,
    /// Answered by the router itself (no upstream to send it to).
    Local(Box<Local>),
    /// Sent upstream with the head written to `Conn::request_head`.
    Forward(Exchange),
}

/// A request the router answers itself.
pub(super) struct Local {
    pub(super) head_len: usize,
    pub(super) response: Response<ResponseBody>,
    pub(super) head_only: bool,
    pub(super) request_id: InlineId,
}

/// A request on its way upstream.
pub(super) struct Exchange {
    pub(super) head_len: usize,
    pub(super) head_only: bool,
    /// The client asked to close after this request.
    pub(super) close: bool,
    pub(super) body: BodyFraming,
    pub(super) expect_continue: bool,
    /// The request may go to another upstream after a connection failure (a bodiless
    /// GET, HEAD or OPTIONS).
    pub(super) replayable: bool,
    /// The body limit (the app's, within the server's).
    pub(super) max_body: u64,
    pub(super) request_id: InlineId,
    pub(super) route: Arc<Route>,
    pub(super) start: usize,
    pub(super) in_flight: InFlight,
    /// The sticky bucket to hand out as a cookie.
    pub(super) sticky: Option<u32>,
    pub(super) started: Instant,
    pub(super) access: Option<AccessEntry>,
    pub(super) client: IpAddr,
}

/// What the direct path reads from a request's header fields.
pub(super) struct RequestHead<'a> {
    host: &'a [u8],
    pin: Option<&'a str>,
    cookie: Option<&'a [u8]>,
    agent: Option<&'a [u8]>,
    request_id: Option<&'a [u8]>,
    close: bool,
    /// Field names the `Connection` header lists (dropped like hop-by-hop fields).
    listed: Listed<'a>,
    /// How the request's body is framed.
    pub(super) body: BodyFraming,
    /// The client sent `Expect: 100-continue` (the router answers it; see `upload`).
    pub(super) expect_continue: bool,
}

/// How a request body is framed (the frame checker has refused every ambiguous framing
/// before the direct path reads a head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

impl Router {
    /// Reads the request head at the start of `input` and decides: hyper's, the router's own
    /// answer, or forwarded (with the upstream head written to `upstream_head`).
    pub(super) fn begin(
        &self,
        input: &[u8],
        client: IpAddr,
        scheme: ClientScheme,
        upstream_head: &mut Vec<u8>,
    ) -> Begin {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let head_len = match request.parse_with_uninit_headers(input, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return Begin::Handoff,
        };
        if request.version != Some(1) {
            return Begin::Handoff;
        }
        let method = match request.method {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            Some("POST") => Method::POST,
            Some("PUT") => Method::PUT,
            Some("PATCH") => Method::PATCH,
            Some("DELETE") => Method::DELETE,
            Some("OPTIONS") => Method::OPTIONS,
            _ => return Begin::Handoff,
        };
        let head_only = method == Method::HEAD;
        let Some(target) = request.path.filter(|target| target.starts_with('/')) else {
            return Begin::Handoff;
        };
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        let Some(head) = RequestHead::read(request.headers) else {
            return Begin::Handoff;
        };
        let Ok(host_name) = std::str::from_utf8(head.host) else {
            return Begin::Handoff;
        };
        // A declared length over the server's limit is refused before routing, by hyper's
        // admission like every other.
        if matches!(head.body, BodyFraming::Length(length) if length > self.config.max_body_bytes) {
            return Begin::Handoff;
        }
        let bodiless = head.body == BodyFraming::None;
        let replayable = bodiless && is_idempotent_read(&method);
        // An invalid Host finds no route (the table validates it): hyper answers it 400.
        let host_name = host_name.trim();
        if scheme == ClientScheme::Http
            && (self.config.https_redirect.is_some() || path.starts_with(ACME_CHALLENGE_PREFIX))
        {
            return Begin::Handoff;
        }

        let bucket_source = Cell::new(Source::Cookie);
        let lookup = Lookup {
            path,
            pin: head.pin,
            cookie: head.cookie,
            agent: head.agent,
        };
        // A held backend, an unknown host and maintenance are hyper's (nothing is counted
        // for them here).
        let Ok(Choice::Routed(routed)) =
            self.choose(&lookup, host_name, client, &bucket_source, replayable, true)
        else {
            return Begin::Handoff;
        };
        self.requests_by_scheme[scheme as usize].fetch_add(1, Ordering::Relaxed);
        let request_id = self.request_ids.assign_inline(head.request_id);
        debug!(
            request_id = request_id.as_str(),
            %client,
            %method,
            path,
            "request"
        );
        let started = Instant::now();
        let access = self.config.access_log.then(|| {
            let host = HeaderValue::from_bytes(head.host).ok();
            AccessEntry::begin(method.clone(), host, path, scheme)
        });
        let Routed {
            route,
            start,
            mut in_flight,
            picked,
            mirror,
        } = routed;
        let sticky = match picked {
            Picked::Split(bucket) if bucket_source.get() == Source::Hash => Some(bucket),
            _ => None,
        };
        if let Some(shadow) = mirror {
            let copy = mirror_head(&method, target, request.headers, &request_id);
            if let (Some(copy), Ok(host)) = (copy, HeaderValue::from_bytes(head.host)) {
                self.mirror(shadow, &copy, client, &host, scheme);
            }
        }
        let Some(start) = start else {
            no_instance(&route, &mut in_flight, started);
            // The body is never read: the connection closes after the answer.
            let response = page::no_instance();
            return Begin::Local(Box::new(Local {
                head_len,
                response: if bodiless {
                    response
                } else {
                    page::closing(response)
                },
                head_only,
                request_id,
            }));
        };
        let max_body = self.allowance(&route).max_body;
        if matches!(head.body, BodyFraming::Length(length) if length > max_body) {
            debug!(env = route.env(), "request body over the app's limit");
            route.counters().traffic.live.record(413, started.elapsed());
            in_flight.failed();
            return Begin::Local(Box::new(Local {
                head_len,
                response: page::closing(page::text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "molt: the request body is larger than this app accepts\n",
                )),
                head_only,
                request_id,
            }));
        }
        write_upstream_head(
            upstream_head,
            request.method.unwrap_or("GET"),
            target,
            request.headers,
            &head,
            &request_id,
            client,
            scheme,
        );
        Begin::Forward(Exchange {
            head_len,
            head_only,
            close: head.close,
            body: head.body,
            expect_continue: head.expect_continue,
            replayable,
            max_body,
            request_id,
            route,
            start,
            in_flight,
            sticky,
            started,
            access,
            client,
        })
    }
}

impl<'a> RequestHead<'a> {
    /// The fields of a request the direct path takes; `None` for one it leaves to hyper
    /// (a body, `Expect`, an upgrade, no single Host).
    pub(super) fn read(fields: &[httparse::Header<'a>]) -> Option<Self> {
        let mut host = None;
        let mut head = RequestHead {
            host: &[],
            pin: None,
            cookie: None,
            agent: None,
            request_id: None,
            close: false,
            listed: Listed::default(),
            body: BodyFraming::None,
            expect_continue: false,
        };
        let (mut ids, mut hosts, mut lengths, mut encodings) = (0, 0, 0, 0);
        for field in fields {
            let name = field.name.as_bytes();
            let value = field.value;
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => {
                    hosts += 1;
                    host = Some(value);
                }
                6 if name.eq_ignore_ascii_case(b"cookie") => {
                    head.cookie.get_or_insert(value);
                }
                6 if name.eq_ignore_ascii_case(b"expect") => {
                    if !value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                        return None;
                    }
                    head.expect_continue = true;
                }
                7 if name.eq_ignore_ascii_case(b"upgrade") => return None,
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for token in tokens(value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            head.close = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            return None;
                        }
                        head.listed.add(token);
                    }
                }
                10 if name.eq_ignore_ascii_case(b"user-agent") => {
                    head.agent.get_or_insert(value);
                }
                10 if name.eq_ignore_ascii_case(b"x-molt-env") && head.pin.is_none() => {
                    head.pin = std::str::from_utf8(value)
                        .ok()
                        .filter(|v| is_visible(v.as_bytes()));
                }
                12 if name.eq_ignore_ascii_case(b"x-request-id") => {
                    ids += 1;
                    head.request_id = Some(value);
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    lengths += 1;
                    head.body = match parse_length(value)? {
                        0 => BodyFraming::None,
                        length => BodyFraming::Length(length),
                    };
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    if !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                        return None;
                    }
                    encodings += 1;
                    head.body = BodyFraming::Chunked;
                }
                _ => {}
            }
        }
        if ids > 1 {
            head.request_id = None;
        }
        // Ambiguous framing never gets here (the frame checker refuses it); should it, hyper
        // answers it.
        if hosts != 1 || lengths + encodings > 1 {
            return None;
        }
        head.host = host?;
        Some(head)
    }
}

/// Writes the request head an upstream gets: the client's request line (as HTTP/1.1) and
/// fields without hop-by-hop ones, then the request id and the forwarding fields.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_upstream_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    fields: &[httparse::Header<'_>],
    head: &RequestHead<'_>,
    request_id: &InlineId,
    client: IpAddr,
    scheme: ClientScheme,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded = Vec::new();
    let mut forwarded_for = Vec::new();
    for field in fields {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"forwarded") {
            if is_visible(field.value) {
                forwarded.push(field.value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for.push(field.value);
            continue;
        }
        if is_hop_by_hop(name)
            || (head.expect_continue && name.eq_ignore_ascii_case(b"expect"))
            || name.eq_ignore_ascii_case(b"x-request-id")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || name.eq_ignore_ascii_case(b"x-forwarded-host")
            || head.listed.has(name)
        {
            continue;
        }
        push_field(out, name, field.value);
    }
    // The body goes on as the client framed it (chunks passed through as they are).
    if head.body == BodyFraming::Chunked {
        push_field(out, b"transfer-encoding", b"chunked");
    }
    push_field(out, b"x-request-id", request_id.as_bytes());
    push_forwarding_fields(out, forwarded, forwarded_for, client, scheme, head.host);
    out.extend_from_slice(b"\r\n");
}

/// The request hyper would have built, for a mirror (only sampled requests pay for it).
fn mirror_head(
    method: &Method,
    target: &str,
    fields: &[httparse::Header<'_>],
    request_id: &InlineId,
) -> Option<Request<()>> {
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = Uri::try_from(target).ok()?;
    let headers = request.headers_mut();
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        headers.append(name, value);
    }
    headers.insert(&X_REQUEST_ID, request_id.header_value());
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reqid::RequestIds;

    fn head_of(raw: &str) -> Option<(String, bool)> {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut fields);
        request.parse(raw.as_bytes()).expect("test head");
        let head = RequestHead::read(request.headers)?;
        let mut out = Vec::new();
        let id = RequestIds::new().assign_inline(Some(b"rid"));
        write_upstream_head(
            &mut out,
            request.method.expect("method"),
            request.path.expect("path"),
            request.headers,
            &head,
            &id,
            IpAddr::from([10, 0, 0, 7]),
            ClientScheme::Http,
        );
        Some((String::from_utf8(out).expect("ascii"), head.close))
    }

    #[test]
    fn upstream_heads_carry_forwarding_fields_and_no_hop_by_hop_ones() {
        let (head, close) = head_of(
            "GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
             TE: trailers\r\nX-Forwarded-For: 1.1.1.1\r\nForwarded: for=1.1.1.1\r\n\
             X-Forwarded-Proto: https\r\nX-Request-Id: theirs\r\nAccept: */*\r\n\r\n",
        )
        .expect("direct");
        assert!(close);
        assert_eq!(
            head,
            "GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nAccept: */*\r\nx-request-id: rid\r\n\
             forwarded: for=1.1.1.1, for=10.0.0.7;proto=http;host=app.test\r\n\
             x-forwarded-for: 1.1.1.1, 10.0.0.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: app.test\r\n\r\n"
        );
    }

    #[test]
    fn odd_framing_an_upgrade_or_two_hosts_are_left_to_hyper() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        ] {
            assert!(head_of(raw).is_none(), "{raw:?}");
        }
        assert!(head_of("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").is_some());
    }

    #[test]
    fn bodies_keep_their_framing_and_the_router_answers_the_expectation() {
        let (head, _) = head_of(
            "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
             Expect: 100-continue\r\nContent-Type: text/plain\r\n\r\n",
        )
        .expect("direct");
        assert!(
            head.starts_with("POST /up HTTP/1.1\r\nHost: a\r\nContent-Type"),
            "{head}"
        );
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{head}"
        );
        assert!(!head.to_ascii_lowercase().contains("expect"), "{head}");
        let (head, _) =
            head_of("PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").expect("direct");
        assert!(head.contains("Content-Length: 12\r\n"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
    }
}
