//! The direct path's parsers on arbitrary bytes: a request head (the head it would send
//! upstream), a response head (the head the client would get), a chunked body split at an
//! arbitrary point, and a chunked request body as the direct path forwards it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_router::direct::parsers::{
    chunked_length, client_head, request_body_length, upstream_head,
};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    if let Some(head) = upstream_head(data) {
        // What goes upstream is one whole head.
        assert!(head.ends_with(b"\r\n\r\n"));
    }
    if let Ok(Some(head)) = client_head(data, split & 1 == 1) {
        assert!(head.starts_with(b"HTTP/1.1 ") && head.ends_with(b"\r\n\r\n"));
    }
    let split = usize::from(split).min(data.len());
    if let Ok(Some(end)) = chunked_length(&[&data[..split], &data[split..]]) {
        assert!(end <= data.len());
    }
    let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let pieces = [&data[..split], &data[split..]];
    if let Ok(Some(end)) = request_body_length(chunked, &pieces, 1 << 20) {
        assert!(end <= data.len());
    }
});
