//! Header fields between client and upstream: the hop-by-hop fields that are never passed
//! on (one list, as `HeaderName`s for hyper's header maps and as bytes for heads parsed in
//! place), the fields a `Connection` header lists, and the forwarding fields upstreams get.

use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use hyper::HeaderMap;

use crate::config::ClientScheme;
use crate::forwarded::push_ip;

/// Hop-by-hop fields (RFC 9110 §7.6.1), lowercase: they describe one connection, not the
/// message, so they are never passed on. The one list: heads parsed in place check it
/// ([`is_hop_by_hop`]); header maps use [`HOP_BY_HOP_NAMES`], the same names in the same
/// order (a test holds them equal).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static(HOP_BY_HOP[1]);
static PROXY_CONNECTION: HeaderName = HeaderName::from_static(HOP_BY_HOP[2]);

/// [`HOP_BY_HOP`] as header names. hyper's own constants where it has them: compared with a
/// map's names they fold into immediates (names built into one `static` array are loaded
/// for every comparison, twice the instructions of [`strip_hop_by_hop`], callgrind).
static HOP_BY_HOP_NAMES: [&HeaderName; 7] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
];

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Field names a `Connection` header listed (few; compared case-insensitively): dropped like
/// hop-by-hop fields.
#[derive(Default)]
pub(crate) struct Listed<'a>(Vec<&'a [u8]>);

impl<'a> Listed<'a> {
    /// Notes one token of a `Connection` header (`close` and `keep-alive` name no field).
    #[inline]
    pub(crate) fn add(&mut self, token: &'a [u8]) {
        if !token.eq_ignore_ascii_case(b"close") && !token.eq_ignore_ascii_case(b"keep-alive") {
            self.0.push(token);
        }
    }

    /// Whether the field `name` was listed.
    #[inline]
    pub(crate) fn has(&self, name: &[u8]) -> bool {
        self.0
            .iter()
            .any(|listed| listed.eq_ignore_ascii_case(name))
    }
}

/// Whether the field `name` (any case) is hop-by-hop ([`HOP_BY_HOP`]).
#[inline]
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|hop| hop.len() == name.len() && hop.as_bytes().eq_ignore_ascii_case(name))
}

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// §7.6.1): the fixed hop-by-hop set and every header named in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names is cheaper than seven removals.
    if !headers.keys().any(|name| HOP_BY_HOP_NAMES.contains(&name)) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP_NAMES {
        headers.remove(name);
    }
}

/// `X-Forwarded-For`, `-Proto` or `-Host`: fields a forwarded request gets from this hop
/// (the client's own are replaced or, for `-For`, extended).
pub(crate) fn is_forwarding_field(name: &HeaderName) -> bool {
    name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST
}

/// Tells the upstream who the client is: appends the client to `X-Forwarded-For` and sets
/// `X-Forwarded-Proto` (how the client reached the router) and `X-Forwarded-Host` (the Host
/// the client sent).
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    scheme: ClientScheme,
    host: HeaderValue,
) {
    let mut text = String::with_capacity(16);
    push_ip(&mut text, client);
    let client = text;
    let forwarded_for = {
        let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        if prior.peek().is_none() {
            HeaderValue::from_maybe_shared(Bytes::from(client)).ok()
        } else {
            let mut joined = BytesMut::new();
            for value in prior {
                joined.put_slice(value.as_bytes());
                joined.put_slice(b", ");
            }
            joined.put_slice(client.as_bytes());
            HeaderValue::from_maybe_shared(joined.freeze())
                .or_else(|_| HeaderValue::from_maybe_shared(Bytes::from(client)))
                .ok()
        }
    };
    if let Some(value) = forwarded_for {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(scheme.as_str()),
    );
    headers.insert(&X_FORWARDED_HOST, host);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                    HeaderValue::from_str(value).expect("test header value"),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_connection_listed_ones_go() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Session"),
            ("keep-alive", "timeout=5"),
            ("x-session", "abc"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "close"),
            ("trailer", "x-sum"),
            ("content-type", "text/plain"),
            ("host", "app.example.com"),
        ]);
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(left, ["content-type", "host"]);
    }

    #[test]
    fn one_hop_by_hop_list_serves_header_maps_and_raw_heads() {
        for (name, text) in HOP_BY_HOP_NAMES.iter().zip(HOP_BY_HOP) {
            assert_eq!(name.as_str(), text);
            assert!(is_hop_by_hop(text.to_ascii_uppercase().as_bytes()));
        }
        assert!(!is_hop_by_hop(b"content-type"));
        assert!(!is_hop_by_hop(b"connections"));
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let host = HeaderValue::from_static("app.example.com:8080");
        let client = IpAddr::from([10, 0, 0, 7]);

        let mut fresh = HeaderMap::new();
        add_forwarding(&mut fresh, client, ClientScheme::Http, host.clone());
        assert_eq!(fresh[&X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(fresh[&X_FORWARDED_PROTO], "http");
        assert_eq!(fresh[&X_FORWARDED_HOST], "app.example.com:8080");

        let mut proxied = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
        ]);
        add_forwarding(&mut proxied, client, ClientScheme::Https, host);
        assert_eq!(
            proxied.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7"]
        );
    }
}
