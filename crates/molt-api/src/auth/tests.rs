use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

#[test]
fn bearer_errors_become_auth_errors() {
    assert_eq!(bearer_token(Some(b"Bearer abc")), Ok("abc"));
    assert_eq!(bearer_token(None), Err(AuthError::Missing));
    assert_eq!(bearer_token(Some(b"Basic abc")), Err(AuthError::Malformed));
}

#[test]
fn errors_never_repeat_the_secret() {
    let secret = "s3cr3t-value";
    for error in [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::Unknown,
        AuthError::Revoked("ci".into()),
        AuthError::Expired("ci".into()),
        AuthError::Limited(3),
    ] {
        let text = error.to_string();
        assert!(!text.contains(secret), "{text}");
        assert!(
            text.contains("API token") || text.contains("Authorization"),
            "{text}"
        );
    }
}

#[test]
fn hashes_are_sha256_hex() {
    assert_eq!(
        token_hash("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let (a, b) = (new_secret(), new_secret());
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
}

#[test]
fn failures_are_limited_per_address_and_refill() {
    let policy = FailurePolicy {
        burst: 3,
        refill: Duration::from_secs(10),
        max_addresses: 2,
    };
    let mut limiter = FailureLimiter::new(policy);
    let t0 = Instant::now();
    let (a, b) = (
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    );
    for _ in 0..3 {
        assert_eq!(limiter.retry_after(a, t0), None);
        limiter.failed(a, t0);
    }
    assert_eq!(limiter.retry_after(a, t0), Some(Duration::from_secs(10)));
    assert_eq!(
        limiter.retry_after(b, t0),
        None,
        "another address is not limited"
    );
    let later = t0 + Duration::from_secs(4);
    assert_eq!(limiter.retry_after(a, later), Some(Duration::from_secs(6)));
    assert_eq!(limiter.retry_after(a, t0 + Duration::from_secs(10)), None);
    // The table is bounded: a third address past the bound is not tracked.
    limiter.failed(b, t0);
    limiter.failed(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)), t0);
    assert!(limiter.buckets.len() <= 2);
}

proptest! {
    /// Every well-formed header gives back its token.
    #[test]
    fn well_formed_headers_round_trip(token in "[!-~]{1,256}", scheme in "(?i)bearer", spaces in 1usize..4) {
        let header = format!("{scheme}{}{token}", " ".repeat(spaces));
        prop_assert_eq!(bearer_token(Some(header.as_bytes())), Ok(token.as_str()));
    }
}
