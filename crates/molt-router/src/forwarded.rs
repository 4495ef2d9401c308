//! The RFC 7239 `Forwarded` header.

use std::fmt::Write as _;
use std::net::IpAddr;

use hyper::header::{HeaderValue, FORWARDED};
use hyper::HeaderMap;

use crate::ClientScheme;

/// Appends this hop (`for=<client>;proto=<http|https>;host=<host>`) to the request's
/// `Forwarded` header, joining earlier hops into one comma-separated value.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    scheme: ClientScheme,
    host: &HeaderValue,
) {
    let mut element = String::with_capacity(64);
    match client {
        IpAddr::V4(ip) => write!(element, "for={ip}"),
        IpAddr::V6(ip) => write!(element, "for=\"[{ip}]\""),
    }
    .expect("writing to a String cannot fail");
    element.push_str(";proto=");
    element.push_str(scheme.as_str());
    if let Ok(host) = host.to_str() {
        element.push_str(";host=");
        push_token_or_quoted(&mut element, host);
    }
    let mut joined = String::new();
    for prior in headers.get_all(FORWARDED) {
        if let Ok(prior) = prior.to_str() {
            joined.push_str(prior);
            joined.push_str(", ");
        }
    }
    joined.push_str(&element);
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(FORWARDED, value);
    }
}

/// RFC 7230 token characters may stand alone; anything else (e.g. the `:` of a port) is
/// sent as a quoted string.
fn push_token_or_quoted(out: &mut String, value: &str) {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !value.is_empty() && value.chars().all(is_tchar) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_elements_are_appended_and_quoted() {
        let mut headers = HeaderMap::new();
        let host = HeaderValue::from_static("app.test");
        add_forwarded(
            &mut headers,
            IpAddr::from([10, 0, 0, 7]),
            ClientScheme::Http,
            &host,
        );
        assert_eq!(headers[FORWARDED], "for=10.0.0.7;proto=http;host=app.test");

        let mut headers = HeaderMap::new();
        headers.append(FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        headers.append(FORWARDED, HeaderValue::from_static("for=2.2.2.2"));
        let host = HeaderValue::from_static("app.test:8080");
        let ip = "::1".parse().expect("ip");
        add_forwarded(&mut headers, ip, ClientScheme::Https, &host);
        assert_eq!(
            headers.get_all(FORWARDED).iter().collect::<Vec<_>>(),
            ["for=1.1.1.1, for=2.2.2.2, for=\"[::1]\";proto=https;host=\"app.test:8080\""]
        );
    }
}
