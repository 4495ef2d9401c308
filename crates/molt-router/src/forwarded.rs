//! The RFC 7239 `Forwarded` header.

use std::fmt::Write;
use std::net::IpAddr;

use hyper::header::{HeaderValue, FORWARDED};
use hyper::HeaderMap;

use crate::config::ClientScheme;
use crate::http1::{is_visible, push_field};

/// Appends this hop (`for=<client>;proto=<http|https>;host=<host>`) to the request's
/// `Forwarded` header, joining earlier hops into one comma-separated value. Written into one
/// buffer that becomes the header value as it is: this runs for every request that hyper
/// serves.
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    scheme: ClientScheme,
    host: &HeaderValue,
) {
    let mut value = Vec::with_capacity(96);
    for prior in headers.get_all(FORWARDED) {
        if let Ok(prior) = prior.to_str() {
            value.extend_from_slice(prior.as_bytes());
            value.extend_from_slice(b", ");
        }
    }
    push_forwarded_element(&mut Bytes(&mut value), client, scheme, host.to_str().ok());
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(FORWARDED, value);
    }
}

/// Writes the forwarding fields of an upstream head: `Forwarded` (the earlier hops, then this
/// one), `X-Forwarded-For` (the earlier values, then the client), `X-Forwarded-Proto` and
/// `X-Forwarded-Host`, each once. The caller leaves the client's own fields of those names out
/// of the head, passing the earlier `Forwarded` values that are visible text and every
/// `X-Forwarded-For` value. The same fields as [`add_forwarded`] and
/// `headers::add_forwarding` give a header map, for heads written as bytes.
pub(crate) fn push_forwarding_fields<'a>(
    out: &mut Vec<u8>,
    forwarded: impl IntoIterator<Item = &'a [u8]>,
    forwarded_for: impl IntoIterator<Item = &'a [u8]>,
    client: IpAddr,
    scheme: ClientScheme,
    host: &[u8],
) {
    out.extend_from_slice(b"forwarded: ");
    for prior in forwarded {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    let host_text = std::str::from_utf8(host)
        .ok()
        .filter(|host| is_visible(host.as_bytes()));
    push_forwarded_element(&mut Bytes(out), client, scheme, host_text);
    out.extend_from_slice(b"\r\nx-forwarded-for: ");
    for prior in forwarded_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    push_ip(&mut Bytes(out), client);
    out.extend_from_slice(b"\r\n");
    push_field(out, b"x-forwarded-proto", scheme.as_str().as_bytes());
    push_field(out, b"x-forwarded-host", host);
}

/// Writes this proxy's element of the `Forwarded` header to `out`:
/// `for=<client>;proto=<scheme>[;host=<host>]`.
pub(crate) fn push_forwarded_element<W: Write>(
    out: &mut W,
    client: IpAddr,
    scheme: ClientScheme,
    host: Option<&str>,
) {
    // Writing to a `String` or a `Vec` cannot fail.
    let opening = if client.is_ipv6() { "for=\"[" } else { "for=" };
    out.write_str(opening).expect("infallible writer");
    push_ip(out, client);
    if client.is_ipv6() {
        out.write_str("]\"").expect("infallible writer");
    }
    out.write_str(";proto=").expect("infallible writer");
    out.write_str(scheme.as_str()).expect("infallible writer");
    if let Some(host) = host {
        out.write_str(";host=").expect("infallible writer");
        push_token_or_quoted(out, host);
    }
}

/// Appends `ip` in its usual text form. IPv4 addresses (the common case) are written digit
/// by digit: `Display` costs several times more, and this runs twice per request.
pub(crate) fn push_ip<W: Write>(out: &mut W, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        write!(out, "{ip}").expect("infallible writer");
        return;
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    let text = std::str::from_utf8(&text[..len]).expect("digits and dots");
    out.write_str(text).expect("infallible writer");
}

/// RFC 7230 token characters may stand alone; anything else (e.g. the `:` of a port) is
/// sent as a quoted string.
fn push_token_or_quoted<W: Write>(out: &mut W, value: &str) {
    if !value.is_empty() && value.bytes().all(is_tchar) {
        out.write_str(value).expect("infallible writer");
        return;
    }
    out.write_char('"').expect("infallible writer");
    let mut rest = value;
    while let Some(at) = rest.find(['"', '\\']) {
        out.write_str(&rest[..at]).expect("infallible writer");
        out.write_char('\\').expect("infallible writer");
        out.write_str(&rest[at..=at]).expect("infallible writer");
        rest = &rest[at + 1..];
    }
    out.write_str(rest).expect("infallible writer");
    out.write_char('"').expect("infallible writer");
}

/// RFC 9110's `tchar`: what a token is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A `fmt::Write` that appends to a byte buffer.
pub(crate) struct Bytes<'a>(pub(crate) &'a mut Vec<u8>);

impl Write for Bytes<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
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

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes() {
        let quoted = |value: &str| {
            let mut out = String::new();
            push_token_or_quoted(&mut out, value);
            out
        };
        assert_eq!(quoted("app.test"), "app.test");
        assert_eq!(quoted("a!#$%&'*+-.^_`|~z"), "a!#$%&'*+-.^_`|~z");
        assert_eq!(quoted(""), "\"\"");
        assert_eq!(quoted("app.test:80"), "\"app.test:80\"");
        assert_eq!(quoted("a\"b\\c d"), "\"a\\\"b\\\\c d\"");
        assert_eq!(quoted("\"\""), "\"\\\"\\\"\"");
    }
}
