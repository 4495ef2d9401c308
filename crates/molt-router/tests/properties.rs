//! Property tests of the code that parses untrusted bytes, so CI covers what the fuzz
//! targets in `fuzz/` cover, without nightly.

use std::net::SocketAddr;

use molt_router::framing::{FrameChecker, FrameLimits};
use molt_router::host::lookup_key;
use molt_router::{Backend, RouteTable, Upstream};
use proptest::prelude::*;

const LIMITS: FrameLimits = FrameLimits {
    max_head_bytes: 4096,
    max_headers: 32,
};

fn backend() -> Backend {
    Backend::new(
        "env",
        vec![Upstream {
            instance: "i".to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        }],
    )
}

/// Pushes `pieces` through a checker; returns the released bytes and whether it refused.
fn check(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut checker = FrameChecker::new(LIMITS);
    let mut released = Vec::new();
    for piece in pieces {
        let refused = checker.push(piece).is_err();
        released.extend_from_slice(checker.releasable());
        let n = checker.releasable().len();
        checker.consume(n);
        if refused {
            return (released, true);
        }
    }
    (released, false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_host_string_gives_a_canonical_key_or_an_error(host in "\\PC{0,40}|[A-Za-z0-9.:_\\[\\]-]{0,40}") {
        if let Ok(key) = lookup_key(&host) {
            prop_assert!(!key.is_empty());
            prop_assert!(!key.bytes().any(|b| b.is_ascii_uppercase()));
            prop_assert!(!key.ends_with('.'));
            let again = lookup_key(&key).map(|again| again.into_owned());
            prop_assert_eq!(again.as_deref(), Ok(&*key));
            let mut table = RouteTable::new();
            table.insert(&key, backend());
            prop_assert!(table.lookup(&host).is_some());
        }
    }

    #[test]
    fn wildcards_match_every_subdomain_and_only_those(
        labels in prop::collection::vec("[a-z0-9]{1,8}", 1..4),
        suffix in "[a-z]{1,8}\\.[a-z]{2,4}",
        upper in any::<bool>(),
        port in prop::option::of(1u16..),
    ) {
        let mut table = RouteTable::new();
        table.insert(&format!("*.{suffix}"), backend());
        let mut host = format!("{}.{suffix}", labels.join("."));
        if upper {
            host = host.to_ascii_uppercase();
        }
        if let Some(port) = port {
            host = format!("{host}:{port}");
        }
        prop_assert!(table.lookup(&host).is_some(), "{}", host);
        prop_assert!(table.lookup(&suffix).is_none());
        let sibling = format!("x{suffix}");
        prop_assert!(table.lookup(&sibling).is_none(), "{}", sibling);
    }

    #[test]
    fn well_framed_requests_pass_unchanged_in_any_split(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..4),
        chunked in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut input = Vec::new();
        for body in &bodies {
            if chunked {
                input.extend_from_slice(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
                for chunk in body.chunks(97) {
                    input.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    input.extend_from_slice(chunk);
                    input.extend_from_slice(b"\r\n");
                }
                input.extend_from_slice(b"0\r\n\r\n");
            } else {
                input.extend_from_slice(
                    format!("POST /l HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                input.extend_from_slice(body);
            }
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([input.len()]) {
            pieces.push(&input[from..cut]);
            from = cut;
        }
        let (released, refused) = check(&pieces);
        prop_assert!(!refused);
        prop_assert_eq!(released, input);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_pass_through_unchanged(
        data in prop::collection::vec(any::<u8>(), 0..600),
        split in any::<prop::sample::Index>(),
        prefix in prop::sample::select(vec![
            &b""[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\n",
        ]),
    ) {
        let input = [prefix, &data[..]].concat();
        let split = split.index(input.len() + 1);
        let (released, _) = check(&[&input[..split], &input[split..]]);
        prop_assert!(input.starts_with(&released));
    }
}
