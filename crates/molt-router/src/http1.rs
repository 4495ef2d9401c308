//! HTTP/1.1 on raw bytes, as the plain-socket paths read and write it: where a head ends, field
//! values (tokens, lengths), the status line and fields of a head being written, and how much
//! is read at a time. Shared by the client side of the direct path ([`crate::direct`]) and the
//! upstream exchange ([`crate::upstream`]); which fields are passed on is
//! [`crate::headers`]'s business.
//!
//! The helpers are `#[inline]`: they run for every header field on the direct path, where
//! they were inlined when they lived in its module; called out of line they cost it ~150
//! instructions per request (callgrind).

use hyper::StatusCode;

/// Header fields parsed in one head (hyper's default limit too): a client request with more
/// goes to hyper, an upstream response with more is a 502.
pub(crate) const MAX_HEADERS: usize = 100;
/// How much is read from a socket at a time for heads.
pub(crate) const HEAD_READ: usize = 8 * 1024;
/// How much is read from a socket at a time for body chunks.
pub(crate) const BODY_READ: usize = 64 * 1024;

/// Where the head that starts `bytes` ends (just after its blank line), searching from
/// `from` (bytes before it were searched already).
#[inline]
pub(crate) fn find_head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let start = from.min(bytes.len());
    bytes[start..]
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| start + at + 4)
}

/// The comma-separated tokens of a field value, trimmed, empty ones left out.
#[inline]
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// The last of a field value's [`tokens`] (empty when there is none).
#[inline]
pub(crate) fn last_token(value: &[u8]) -> &[u8] {
    tokens(value).last().unwrap_or_default()
}

/// A `Content-Length` value: digits only (surrounding spaces allowed).
#[inline]
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Visible ASCII, spaces and tabs: what `HeaderValue::to_str` accepts.
#[inline]
pub(crate) fn is_visible(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Appends `HTTP/1.1 <status> <reason>` (the canonical reason when `reason` is empty).
#[inline]
pub(crate) fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    // Three digits: parsed and checked to be in 100..=999.
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&digits);
    out.push(b' ');
    let reason = if reason.is_empty() {
        StatusCode::from_u16(status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("")
    } else {
        reason
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one `name: value` field line.
#[inline]
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
