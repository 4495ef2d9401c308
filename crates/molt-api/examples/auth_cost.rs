//! What authenticating one API call costs on this machine: parsing the header and hashing
//! the secret (SHA-256), then the in-memory lookup of the hash among N tokens. Prints
//! nanoseconds per call; run with `cargo run --release -p molt-api --example auth_cost`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

fn main() {
    const CALLS: u32 = 200_000;
    let tokens: HashMap<String, u32> = (0..1000)
        .map(|i| (molt_api::token_hash(&format!("{i:064x}")), i))
        .collect();
    let header = format!("Bearer {:064x}", 777);
    let start = Instant::now();
    let mut found = 0;
    for _ in 0..CALLS {
        let secret = molt_api::bearer_token(Some(black_box(header.as_bytes()))).unwrap_or("");
        let hash = molt_api::token_hash(secret);
        found += tokens.get(&hash).copied().unwrap_or(0);
    }
    let per_call = start.elapsed().as_nanos() as f64 / f64::from(CALLS);
    println!("authentication (header parse + SHA-256 + lookup among 1000 tokens): {per_call:.0} ns per call ({found})");
}
