//! `molt.toml` (with and without `[build]`) on arbitrary text: an error or a manifest whose
//! build steps all have a canonical text, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_core::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Half the inputs get a valid head so the fuzzer spends its time inside [build].
    let with_head = format!("name = \"a\"\ncommand = [\"x\"]\n[build]\n{text}");
    for input in [text, with_head.as_str()] {
        if let Ok(manifest) = Manifest::parse(input, "molt.toml") {
            for step in manifest.build.iter().flat_map(|b| &b.steps) {
                assert!(!step.to_string().is_empty());
            }
        }
    }
});
