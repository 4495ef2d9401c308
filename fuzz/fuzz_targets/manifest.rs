//! `molt.toml` as a user (or a `git push`) sends it: any text parses or is refused with an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_core::manifest::Manifest;

fuzz_target!(|text: &str| {
    if let Err(e) = Manifest::parse(text, "molt.toml") {
        assert!(!e.to_string().is_empty());
    }
});
