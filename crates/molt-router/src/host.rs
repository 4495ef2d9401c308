//! Turning a Host header (or a URI authority) into a route-table key.
//!
//! This parses untrusted bytes on every request, so it never panics, never allocates for an
//! already-lowercase host, and refuses anything that is not a plain DNS name, an IPv4
//! address or a bracketed IPv6 literal, with an optional decimal port.

use std::borrow::Cow;

/// Longest host name accepted (RFC 1035: 253 characters without the trailing dot).
const MAX_HOST_LEN: usize = 253;

/// Why a Host value cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Nothing left once the port and trailing dot are removed.
    Empty,
    /// A character outside letters, digits, `-`, `_` and `.` (or an unbalanced `[`).
    InvalidChar,
    /// An empty label (`a..b`, `.a`) or a name longer than 253 characters.
    InvalidName,
    /// A port that is not 1-5 decimal digits.
    InvalidPort,
}

/// The lookup key of a Host header value: port and one trailing dot stripped, ASCII
/// lowercase. Borrows when the value is already lowercase.
///
/// `"App.Example.com:8080"` → `"app.example.com"`, `"[::1]:80"` → `"[::1]"`.
pub fn lookup_key(host: &str) -> Result<Cow<'_, str>, HostError> {
    let (name, port) = split_port(host)?;
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HostError::InvalidPort);
        }
    }
    if name.starts_with('[') {
        validate_ipv6_literal(name)?;
    } else {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        validate_dns_name(name)?;
        return Ok(lowercase(name));
    }
    Ok(lowercase(name))
}

/// Splits `"name:port"`; a bracketed IPv6 literal keeps its colons.
fn split_port(host: &str) -> Result<(&str, Option<&str>), HostError> {
    if host.starts_with('[') {
        let end = host.find(']').ok_or(HostError::InvalidChar)?;
        let (literal, rest) = host.split_at(end + 1);
        return match rest {
            "" => Ok((literal, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((literal, Some(port))),
                None => Err(HostError::InvalidChar),
            },
        };
    }
    Ok(match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    })
}

fn validate_dns_name(name: &str) -> Result<(), HostError> {
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::InvalidName);
    }
    let valid_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !name.bytes().all(valid_char) {
        return Err(HostError::InvalidChar);
    }
    if name.split('.').any(str::is_empty) {
        return Err(HostError::InvalidName);
    }
    Ok(())
}

/// `"[" 1*(HEXDIG / ":" / ".") "]"`: enough to keep other bytes out of the key; whether it
/// is a well-formed address does not matter for a lookup.
fn validate_ipv6_literal(literal: &str) -> Result<(), HostError> {
    let inner = &literal[1..literal.len() - 1];
    if inner.is_empty() {
        return Err(HostError::Empty);
    }
    if inner.len() > 45 {
        return Err(HostError::InvalidName);
    }
    if inner
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        Ok(())
    } else {
        Err(HostError::InvalidChar)
    }
}

fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_valid_and_invalid_hosts() {
        let cases: &[(&str, Result<&str, HostError>)] = &[
            ("app.example.com", Ok("app.example.com")),
            ("APP.example.COM:8080", Ok("app.example.com")),
            ("app.example.com.", Ok("app.example.com")),
            ("app.example.com.:80", Ok("app.example.com")),
            ("[::1]:443", Ok("[::1]")),
            ("[::FFFF:127.0.0.1]", Ok("[::ffff:127.0.0.1]")),
            ("127.0.0.1:8080", Ok("127.0.0.1")),
            ("my_svc.local", Ok("my_svc.local")),
            ("", Err(HostError::Empty)),
            (":80", Err(HostError::Empty)),
            (".", Err(HostError::Empty)),
            ("app.test:", Err(HostError::InvalidPort)),
            ("app.test:80a", Err(HostError::InvalidPort)),
            ("app.test:123456", Err(HostError::InvalidPort)),
            ("app.test:80:80", Err(HostError::InvalidPort)),
            ("a b.test", Err(HostError::InvalidChar)),
            ("user@app.test", Err(HostError::InvalidChar)),
            ("app.test/x", Err(HostError::InvalidChar)),
            ("app\0.test", Err(HostError::InvalidChar)),
            ("a..b", Err(HostError::InvalidName)),
            (".a", Err(HostError::InvalidName)),
            ("[::1", Err(HostError::InvalidChar)),
            ("[::1]x", Err(HostError::InvalidChar)),
            ("[]", Err(HostError::Empty)),
            ("[g::1]", Err(HostError::InvalidChar)),
            ("é.test", Err(HostError::InvalidChar)),
        ];
        for (host, want) in cases {
            let got = lookup_key(host);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "host {host:?}");
        }
        assert!(matches!(lookup_key("lower.test"), Ok(Cow::Borrowed(_))));
    }
}
