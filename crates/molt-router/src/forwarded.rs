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
    let element = forwarded_element(client, scheme, host.to_str().ok());
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

/// This proxy's element of the `Forwarded` header: `for=<client>;proto=<scheme>[;host=<host>]`.
pub(crate) fn forwarded_element(
    client: IpAddr,
    scheme: ClientScheme,
    host: Option<&str>,
) -> String {
    let mut element = String::with_capacity(64);
    match client {
        IpAddr::V4(_) => {
            element.push_str("for=");
            push_ip(&mut element, client);
        }
        IpAddr::V6(_) => {
            element.push_str("for=\"[");
            push_ip(&mut element, client);
            element.push_str("]\"");
        }
    }
    element.push_str(";proto=");
    element.push_str(scheme.as_str());
    if let Some(host) = host {
        element.push_str(";host=");
        push_token_or_quoted(&mut element, host);
    }
    element
}

/// Appends `ip` in its usual text form. IPv4 addresses (the common case) are written digit
/// by digit: `Display` costs several times more, and this runs twice per request.
pub(crate) fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        write!(out, "{ip}").expect("writing to a String cannot fail");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
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
    fn addresses_are_written_like_display_does() {
        let ips = [
            "0.0.0.0",
            "10.0.0.7",
            "127.0.0.1",
            "192.168.100.255",
            "255.9.99.100",
            "::1",
            "2001:db8::8a2e:370:7334",
        ];
        for text in ips {
            let ip: IpAddr = text.parse().expect("ip");
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, text);
        }
    }

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
