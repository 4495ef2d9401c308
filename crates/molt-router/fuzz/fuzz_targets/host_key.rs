//! Host header → route-table key, and lookups with it, on arbitrary input.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use molt_router::host::lookup_key;
use molt_router::{Backend, RouteTable, Upstream};

fuzz_target!(|data: &[u8]| {
    let Ok(host) = std::str::from_utf8(data) else {
        return;
    };
    // Split the input into a host and a path so prefixes are exercised too.
    let (host, path) = host.split_once('\n').unwrap_or((host, "/"));
    if let Ok(key) = lookup_key(host) {
        assert!(!key.is_empty());
        assert!(!key.bytes().any(|b| b.is_ascii_uppercase()), "{key:?}");
        assert!(!key.ends_with('.'), "{key:?}");
        assert_eq!(lookup_key(&key).as_deref(), Ok(&*key), "a key is its own key");
        let mut table = RouteTable::new();
        let backend = Backend::new(
            "env",
            vec![Upstream {
                instance: "i".to_owned(),
                addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            }],
        );
        table.insert(&key, backend.clone());
        assert!(table.lookup_path(host, path).is_some(), "{host:?} finds itself");
        if let Some((_, parent)) = key.split_once('.') {
            let mut wildcard = RouteTable::new();
            wildcard.insert_with_prefix(&format!("*.{parent}"), path, backend);
            let _ = wildcard.lookup_path(host, path);
        }
    }
});
