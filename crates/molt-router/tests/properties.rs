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

mod direct_path {
    use molt_router::direct::parsers::{
        chunked_length, client_head, request_body_length, upstream_head,
    };
    use proptest::prelude::*;

    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];

    /// The field names of a head the router wrote, lowercased (and the head parses).
    fn names(head: &[u8], response: bool) -> Vec<String> {
        let mut fields = [httparse::EMPTY_HEADER; 256];
        let parsed = if response {
            httparse::Response::new(&mut fields)
                .parse(head)
                .map(|status| status.is_complete())
        } else {
            httparse::Request::new(&mut fields)
                .parse(head)
                .map(|status| status.is_complete())
        };
        assert_eq!(parsed, Ok(true), "{}", String::from_utf8_lossy(head));
        fields
            .iter()
            .take_while(|field| !field.name.is_empty())
            .map(|field| field.name.to_ascii_lowercase())
            .collect()
    }

    fn field() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            Just("Connection".to_owned()),
            Just("Keep-Alive".to_owned()),
            Just("TE".to_owned()),
            Just("X-Forwarded-For".to_owned()),
            Just("Forwarded".to_owned()),
            Just("X-Request-Id".to_owned()),
            Just("Content-Length".to_owned()),
            Just("Transfer-Encoding".to_owned()),
            Just("Trailer".to_owned()),
            "[A-Za-z][A-Za-z0-9-]{0,12}",
        ];
        let value = prop_oneof![
            Just("close".to_owned()),
            Just("chunked".to_owned()),
            Just("0".to_owned()),
            Just("12".to_owned()),
            Just("keep-alive, X-A".to_owned()),
            "[ -~]{0,20}",
        ];
        (name, value)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn upstream_heads_parse_and_carry_no_hop_by_hop_fields(
            fields in proptest::collection::vec(field(), 0..12),
            method in prop_oneof![Just("GET"), Just("HEAD"), Just("POST"), Just("PUT")],
        ) {
            let mut raw = format!("{method} /p?q=1 HTTP/1.1\r\nHost: app.test\r\n");
            for (name, value) in &fields {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("\r\n");
            if let Some(head) = upstream_head(raw.as_bytes()) {
                let names = names(&head, false);
                let lower = raw.to_ascii_lowercase();
                // The body goes on framed as the client framed it, one way only: chunked
                // (the one hop-by-hop field the router writes itself) or by its length.
                let chunked = lower.contains("transfer-encoding: chunked\r\n");
                for hop in HOP_BY_HOP {
                    let count = names.iter().filter(|name| *name == hop).count();
                    let expected = usize::from(hop == "transfer-encoding" && chunked);
                    prop_assert_eq!(count, expected, "{} in {:?}", hop, names);
                }
                let lengths = names.iter().filter(|name| *name == "content-length").count();
                prop_assert!(lengths <= 1 && !(chunked && lengths == 1), "{names:?}");
                for added in ["x-request-id", "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
                    prop_assert_eq!(names.iter().filter(|name| *name == added).count(), 1, "{}", added);
                }
            }
        }

        #[test]
        fn request_bodies_end_where_the_frame_checker_says_in_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            extension in proptest::option::of("[ \t]{0,2};[ \t]{0,2}[a-z]{1,5}(=[a-z0-9]{1,5})?"),
            trailers in proptest::collection::vec("[A-Za-z-]{1,8}: [a-z0-9]{0,8}", 0..3),
            split in any::<prop::sample::Index>(),
            limit in 0u64..300,
        ) {
            let head = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
            let mut body = Vec::new();
            let mut data = 0;
            for chunk in &chunks {
                data += chunk.len() as u64;
                body.extend_from_slice(format!("{:X}", chunk.len()).as_bytes());
                if let Some(extension) = &extension {
                    body.extend_from_slice(extension.as_bytes());
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for trailer in &trailers {
                body.extend_from_slice(trailer.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"\r\n");
            let end = body.len();
            let next = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
            // The frame checker passes the request and the next one whole...
            let input = [&head[..], &body, next].concat();
            let (released, refused) = super::check(&[&input]);
            prop_assert!(!refused);
            prop_assert_eq!(released.len(), input.len());
            // ...and the direct path finds the body's end just before the next head.
            body.extend_from_slice(next);
            let at = split.index(body.len() + 1);
            let found = request_body_length(head, &[&body[..at], &body[at..]], limit);
            if data > limit {
                prop_assert_eq!(found, Err("too large"));
            } else {
                prop_assert_eq!(found, Ok(Some(end)));
            }
            let length = format!("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: {end}\r\n\r\n");
            let found = request_body_length(length.as_bytes(), &[&body[..at], &body[at..]], limit);
            prop_assert_eq!(found, Ok(Some(end)));
        }

        #[test]
        fn client_heads_parse_and_are_framed_one_way(
            status in prop_oneof![Just(200u16), Just(204), Just(304), Just(103), Just(404), 100u16..1000],
            fields in proptest::collection::vec(field(), 0..12),
            head_only: bool,
        ) {
            let mut raw = format!("HTTP/1.1 {status} Whatever\r\n");
            for (name, value) in &fields {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("\r\n");
            if let Ok(Some(head)) = client_head(raw.as_bytes(), head_only) {
                let names = names(&head, true);
                prop_assert_eq!(names.iter().filter(|name| *name == "x-request-id").count(), 1);
                let chunked = names.iter().filter(|name| *name == "transfer-encoding").count();
                prop_assert!(chunked <= 1);
                prop_assert!(chunked == 0 || !names.iter().any(|name| name == "content-length"),
                    "both framings in {}", String::from_utf8_lossy(&head));
                for hop in ["connection", "keep-alive", "te", "trailer", "upgrade"] {
                    // `connection: close` is the router's own, when it closes.
                    let own = hop == "connection" && String::from_utf8_lossy(&head).contains("\r\nconnection: close\r\n");
                    prop_assert!(own || !names.iter().any(|name| name == hop), "{hop}");
                }
            }
        }

        #[test]
        fn chunked_bodies_end_at_their_last_chunk_in_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            extension in proptest::option::of("[a-z]{1,5}=[a-z0-9]{1,5}"),
            trailers in proptest::collection::vec("[A-Za-z-]{1,8}: [a-z0-9]{0,8}", 0..3),
            split in any::<prop::sample::Index>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut body = Vec::new();
            for chunk in &chunks {
                body.extend_from_slice(format!("{:x}", chunk.len()).as_bytes());
                if let Some(extension) = &extension {
                    body.extend_from_slice(format!(";{extension}").as_bytes());
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for trailer in &trailers {
                body.extend_from_slice(trailer.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"\r\n");
            let end = body.len();
            body.extend_from_slice(&garbage);
            let at = split.index(body.len() + 1);
            prop_assert_eq!(chunked_length(&[&body[..at], &body[at..]]), Ok(Some(end)));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_direct_parsers(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            split in any::<prop::sample::Index>(),
        ) {
            let _ = upstream_head(&bytes);
            let _ = client_head(&bytes, false);
            let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
            let at = split.index(bytes.len() + 1);
            if let Ok(Some(end)) = request_body_length(chunked, &[&bytes[..at], &bytes[at..]], 100) {
                prop_assert!(end <= bytes.len());
            }
            let at = split.index(bytes.len() + 1);
            if let Ok(Some(end)) = chunked_length(&[&bytes[..at], &bytes[at..]]) {
                prop_assert!(end <= bytes.len());
            }
        }
    }
}
