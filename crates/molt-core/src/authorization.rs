//! The two `Authorization` header schemes molt reads: `Bearer <token>` (the API, the dashboard's
//! login, routers) and HTTP Basic with the token as the password (`git push`). Both get bytes
//! straight from the network; neither allocates more than the header holds nor panics, which
//! the fuzz target `fuzz/fuzz_targets/authorization.rs` and the properties below hold them to.

use base64::Engine as _;

/// Why a header gave no bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// No header at all.
    Missing,
    /// Not `Bearer <token>` with a token of 1 to [`MAX_TOKEN`] visible ASCII characters.
    Malformed,
}

/// The longest token accepted.
pub const MAX_TOKEN: usize = 256;

/// The token of an `Authorization` header value: `Bearer <token>` (the scheme in any case,
/// one or more spaces), the token 1 to [`MAX_TOKEN`] characters of visible ASCII.
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, BearerError> {
    let value = header.ok_or(BearerError::Missing)?;
    let value = std::str::from_utf8(value).map_err(|_| BearerError::Malformed)?;
    let (scheme, rest) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Malformed);
    }
    let token = rest.trim_start_matches(' ').trim_end_matches(' ');
    let visible = token.bytes().all(|b| b.is_ascii_graphic());
    if token.is_empty() || token.len() > MAX_TOKEN || !visible {
        return Err(BearerError::Malformed);
    }
    Ok(token)
}

/// The password of an HTTP Basic `Authorization` header value (`Basic base64(user:password)`;
/// the user name is ignored), when it is one: standard base64, UTF-8, a colon.
pub fn basic_password(header: &[u8]) -> Option<String> {
    let encoded = header.strip_prefix(b"Basic ")?;
    let encoded = encoded.trim_ascii();
    // Nothing longer than a bearer token's worth of credentials is worth decoding.
    if encoded.len() > 4 * MAX_TOKEN {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(BearerError::Missing));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Basic abc",
            b"Bearer a b",
            b"Bearer \xff",
            b"Bearerabc",
            b"Bearer \tabc",
        ] {
            assert_eq!(
                bearer_token(Some(bad)),
                Err(BearerError::Malformed),
                "{bad:?}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN + 1));
        assert_eq!(
            bearer_token(Some(long.as_bytes())),
            Err(BearerError::Malformed)
        );
    }

    #[test]
    fn basic_headers() {
        assert_eq!(
            basic_password(b"Basic Z2l0OnMzY3JldA==").as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            basic_password(b"Basic  Z2l0OnMzY3JldA== ").as_deref(),
            Some("s3cret")
        );
        // "git" without a colon, not base64, not UTF-8, another scheme, too long.
        for bad in [
            &b"Basic Z2l0"[..],
            b"Basic !!",
            b"Basic /w==",
            b"Bearer Z2l0OnMzY3JldA==",
            b"basic",
        ] {
            assert_eq!(basic_password(bad), None, "{bad:?}");
        }
        let long = format!("Basic {}", "QUFB".repeat(MAX_TOKEN + 1));
        assert_eq!(basic_password(long.as_bytes()), None);
    }

    proptest! {
        /// Any header value: no panic; a token found is visible ASCII, bounded, and what
        /// followed the scheme.
        #[test]
        fn any_bearer_header_parses_or_is_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            if let Ok(token) = bearer_token(Some(&bytes)) {
                prop_assert!(!token.is_empty() && token.len() <= MAX_TOKEN);
                prop_assert!(token.bytes().all(|b| b.is_ascii_graphic()));
                let text = std::str::from_utf8(&bytes).unwrap();
                prop_assert!(text.to_ascii_lowercase().starts_with("bearer "));
                prop_assert!(text.contains(token));
            }
        }

        /// Whatever user and password are encoded come back.
        #[test]
        fn basic_round_trips(user in "[^:]{0,20}", password in ".{0,40}") {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{password}"));
            let header = format!("Basic {encoded}");
            prop_assert_eq!(basic_password(header.as_bytes()), Some(password));
        }
    }
}
