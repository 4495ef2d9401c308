//! `Authorization` header values as they come off the network: whatever the bytes, the parsers
//! return (never panic), and what they return holds to their contracts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use molt_core::authorization::{basic_password, bearer_token, MAX_TOKEN};

fuzz_target!(|header: &[u8]| {
    if let Ok(token) = bearer_token(Some(header)) {
        assert!(!token.is_empty() && token.len() <= MAX_TOKEN);
        assert!(token.bytes().all(|b| b.is_ascii_graphic()));
        let text = std::str::from_utf8(header).expect("a token comes from UTF-8");
        assert!(text.to_ascii_lowercase().starts_with("bearer "));
    }
    if let Some(password) = basic_password(header) {
        assert!(header.starts_with(b"Basic "));
        assert!(password.len() <= 3 * MAX_TOKEN);
    }
});
