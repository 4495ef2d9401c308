//! The raw request-framing checker on arbitrary bytes split at an arbitrary point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_router::framing::{FrameChecker, FrameLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(data.len());
    let mut checker = FrameChecker::new(FrameLimits {
        max_head_bytes: 1024,
        max_headers: 16,
    });
    let mut released = Vec::new();
    for piece in [&data[..split], &data[split..]] {
        if checker.push(piece).is_err() {
            break;
        }
        released.extend_from_slice(checker.releasable());
        let n = checker.releasable().len();
        checker.consume(n);
    }
    // Released bytes are passed on unchanged, in order.
    assert!(data.starts_with(&released));
});
