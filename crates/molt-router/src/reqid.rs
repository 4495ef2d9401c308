//! Request ids: kept from the client when sane, otherwise made here.
//!
//! A made id is a per-process random prefix and a counter (`"3f9c2a7d01b4e6c8-2a"`): unique
//! within the process, unlikely to collide across restarts, one atomic add per request.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;

/// The header carrying the id to the upstream and back to the client.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id that is kept.
const MAX_CLIENT_ID: usize = 128;

/// Hands out request ids.
#[derive(Debug)]
pub(crate) struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    /// A generator with a fresh random prefix.
    pub(crate) fn new() -> Self {
        // RandomState is seeded from the OS once per process, then varied per instance.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos()),
        );
        hasher.write_u32(std::process::id());
        Self {
            prefix: hasher.finish(),
            next: AtomicU64::new(1),
        }
    }

    /// The client's `X-Request-Id` if it is a sane token, else a new id.
    ///
    /// The value is marked sensitive, which HTTP/2 encodes as a literal "never indexed"
    /// (HTTP/1.1 ignores the mark). Every request has its own id, so an id put in HPACK's
    /// dynamic table is never sent again: indexing it would cost the encoder a walk through
    /// every earlier id in the table (each compared with this one) and evict the entries that
    /// do repeat, such as `date` and `content-type`.
    pub(crate) fn assign(&self, headers: &HeaderMap) -> HeaderValue {
        let mut supplied = headers.get_all(&X_REQUEST_ID).iter();
        let mut id = match (supplied.next(), supplied.next()) {
            (Some(id), None) if is_sane_id(id.as_bytes()) => id.clone(),
            _ => self.generate(),
        };
        id.set_sensitive(true);
        id
    }

    fn generate(&self) -> HeaderValue {
        let id = self.generate_inline();
        HeaderValue::from_bytes(id.as_bytes()).expect("hex digits and '-' form a header value")
    }

    /// [`RequestIds::assign`] without allocating, for the direct path: the client's id when
    /// it sent exactly one sane one, else a new one.
    pub(crate) fn assign_inline(&self, supplied: Option<&[u8]>) -> InlineId {
        match supplied {
            Some(id) if is_sane_id(id) => {
                let mut inline = InlineId {
                    bytes: [0; MAX_CLIENT_ID],
                    len: id.len() as u8,
                };
                inline.bytes[..id.len()].copy_from_slice(id);
                inline
            }
            _ => self.generate_inline(),
        }
    }

    fn generate_inline(&self) -> InlineId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = InlineId {
            bytes: [0; MAX_CLIENT_ID],
            len: 0,
        };
        let buf = &mut id.bytes;
        let mut len = write_hex(buf, self.prefix, 16);
        buf[len] = b'-';
        len += 1;
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        len += write_hex(&mut buf[len..], n, digits);
        id.len = len as u8;
        id
    }
}

/// A request id kept inline (at most [`MAX_CLIENT_ID`] sane bytes: ASCII letters, digits,
/// `.`, `_`, `-`).
#[derive(Clone, Copy)]
pub(crate) struct InlineId {
    bytes: [u8; MAX_CLIENT_ID],
    len: u8,
}

impl InlineId {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    /// The id as a header value (allocates; for mirrors).
    pub(crate) fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).expect("a sane id is a header value")
    }
}

/// 1..=128 bytes of `[A-Za-z0-9._-]`.
pub(crate) fn is_sane_id(id: &[u8]) -> bool {
    (1..=MAX_CLIENT_ID).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Writes the low `digits` hex digits of `value` into `out`; returns `digits`.
fn write_hex(out: &mut [u8], value: u64, digits: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = HEX[((value >> shift) & 0xf) as usize];
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        let ids = RequestIds::new();
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(value).expect("value"));
            ids.assign(&headers)
        };
        assert_eq!(with("abc-123_x.y"), "abc-123_x.y");
        assert_eq!(with(&"a".repeat(128)), "a".repeat(128).as_str());
        for bad in ["", "a b", "a/b", "ü", &"a".repeat(129), "x\"y"] {
            let Ok(value) = HeaderValue::from_str(bad) else {
                continue;
            };
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, value);
            assert_ne!(ids.assign(&headers), bad, "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_distinct_sane_tokens() {
        let ids = RequestIds::new();
        let a = ids.assign(&HeaderMap::new());
        let b = ids.assign(&HeaderMap::new());
        assert_ne!(a, b);
        assert!(is_sane_id(a.as_bytes()), "{:?}", a.to_str());
        // Never indexed by HPACK, whether made here or kept from the client.
        assert!(a.is_sensitive() && b.is_sensitive());
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("client-1"));
        assert!(ids.assign(&headers).is_sensitive());
        let text = a.to_str().expect("ascii");
        assert_eq!(text.len(), 18, "{text}");
        assert!(text.ends_with("-1"), "{text}");
    }
}
