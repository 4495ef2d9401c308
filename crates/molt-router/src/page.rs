//! Responses the router writes itself: plain text, or a small HTML page for browsers.

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::route::Maintenance;

/// How the client wants the router's own pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Text,
    Html,
}

impl Flavor {
    /// HTML when the client's `Accept` names `text/html` (as browsers do), else text.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let html = headers.get_all(ACCEPT).iter().any(|accept| {
            accept
                .as_bytes()
                .windows(b"text/html".len())
                .any(|window| window.eq_ignore_ascii_case(b"text/html"))
        });
        if html {
            Self::Html
        } else {
            Self::Text
        }
    }
}

/// A short plain-text response made by the router itself.
pub(crate) fn text(status: StatusCode, text: impl Into<String>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(text.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `response`, closing the connection after it: a client that sent a malformed request
/// may not agree with us on where its next one starts.
pub(crate) fn closing(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 404 for a host no route answers to.
pub(crate) fn unknown_host(host: &str, flavor: Flavor) -> Response<ResponseBody> {
    let status = StatusCode::NOT_FOUND;
    match flavor {
        Flavor::Text => text(
            status,
            format!("molt: no app answers to host '{host}' on this server\n"),
        ),
        Flavor::Html => html(
            status,
            "No app here",
            &format!(
                "No app answers to <strong>{}</strong> on this server.",
                escape(host)
            ),
        ),
    }
}

/// 503 for a backend with no instance ready to serve (none at all, or a hold ran out), with
/// `Retry-After: 1`: the controller is usually starting instances.
pub(crate) fn no_instance() -> Response<ResponseBody> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "molt: no instance is ready to serve this host\n",
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// 503 for a request that found its instance at the cap on connections per instance and
/// none freed within the queue timeout, with `Retry-After: 1`.
pub(crate) fn at_connection_limit() -> Response<ResponseBody> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "molt: instance at its connection limit; try again shortly\n",
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// 503 for a backend in maintenance, with `Retry-After`.
pub(crate) fn maintenance(maintenance: &Maintenance, flavor: Flavor) -> Response<ResponseBody> {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let mut response = match flavor {
        Flavor::Text => text(status, format!("{}\n", maintenance.message)),
        Flavor::Html => html(
            status,
            "Down for maintenance",
            &escape(&maintenance.message),
        ),
    };
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(maintenance.retry_after_secs));
    response
}

fn html(status: StatusCode, title: &str, paragraph: &str) -> Response<ResponseBody> {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title></head>\n<body style=\"font-family:sans-serif;\
         max-width:40em;margin:4em auto\"><h1>{title}</h1>\n<p>{paragraph}</p>\n\
         <p><small>{status} &middot; molt</small></p></body></html>\n"
    );
    let mut response = Response::new(ResponseBody::Local(Bytes::from(page).into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavor_follows_accept_and_html_is_escaped() {
        let mut headers = HeaderMap::new();
        assert_eq!(Flavor::of(&headers), Flavor::Text);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("Text/HTML,application/xhtml+xml;q=0.9"),
        );
        assert_eq!(Flavor::of(&headers), Flavor::Html);
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
