//! Traffic shaping decisions, kept pure so they can be tested exhaustively: which environment of
//! a weighted split a client belongs to (sticky), and which instance takes a request (power of
//! two choices over in-flight counts).

/// Buckets a client can fall into; weights are shares of this space.
pub const BUCKETS: u32 = 10_000;

/// The cookie that keeps a client in its bucket across requests (and across weight changes:
/// raising a canary's weight only adds buckets to it).
pub const STICKY_COOKIE: &str = "molt-bucket";

/// The bucket of a client: from its sticky cookie when it has a valid one, else from a hash of
/// what identifies it (its address and user agent).
pub fn bucket_of(cookie_header: Option<&[u8]>, identity: &[u8]) -> (u32, Source) {
    if let Some(b) = cookie_header.and_then(sticky_cookie_value) {
        return (b, Source::Cookie);
    }
    ((fnv1a(identity) % BUCKETS as u64) as u32, Source::Hash)
}

/// Where a bucket came from; a hashed bucket is handed to the client as a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent it.
    Cookie,
    /// Derived from the client's identity.
    Hash,
}

/// Chooses the split entry for `bucket`: entry `i` owns a contiguous range of buckets whose size
/// is proportional to its weight. `None` when every weight is zero.
pub fn choose_weighted(weights: &[u32], bucket: u32) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| *w as u64).sum();
    if total == 0 {
        return None;
    }
    // Scale the bucket into the weight space without floating point.
    let point = bucket as u64 * total / BUCKETS as u64;
    let mut upper = 0u64;
    for (i, w) in weights.iter().enumerate() {
        upper += *w as u64;
        if point < upper {
            return Some(i);
        }
    }
    weights.iter().rposition(|w| *w > 0)
}

/// Power of two choices: of two candidates picked from `seed`, the one with fewer requests in
/// flight (ties go to the first). `None` for an empty set.
pub fn pick_least_loaded(in_flight: &[u64], seed: u64) -> Option<usize> {
    match in_flight.len() {
        0 => None,
        1 => Some(0),
        n => {
            let (a, b) = two_choices(n, seed);
            Some(if in_flight[b] < in_flight[a] { b } else { a })
        }
    }
}

/// Two distinct indexes below `n` (n ≥ 2) derived from `seed`.
pub fn two_choices(n: usize, seed: u64) -> (usize, usize) {
    let a = (seed % n as u64) as usize;
    let mut b = ((seed >> 32) % (n as u64 - 1)) as usize;
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// Parses `molt-bucket=<n>` out of a Cookie header.
fn sticky_cookie_value(header: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(header).ok()?;
    text.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if name != STICKY_COOKIE {
            return None;
        }
        value.parse::<u32>().ok().filter(|b| *b < BUCKETS)
    })
}

/// 64-bit FNV-1a: fast, stable across processes and versions (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cookie_wins_over_hash() {
        let (b, src) = bucket_of(Some(b"a=1; molt-bucket=42; z=2"), b"10.0.0.1");
        assert_eq!((b, src), (42, Source::Cookie));
        let (_, src) = bucket_of(Some(b"molt-bucket=99999"), b"x");
        assert_eq!(src, Source::Hash, "out-of-range cookie is ignored");
        let (_, src) = bucket_of(Some(b"molt-bucket=abc"), b"x");
        assert_eq!(src, Source::Hash);
        assert_eq!(bucket_of(None, b"x"), bucket_of(None, b"x"));
    }

    #[test]
    fn weights_map_bucket_ranges() {
        let w = [90, 10];
        assert_eq!(choose_weighted(&w, 0), Some(0));
        assert_eq!(choose_weighted(&w, 8_999), Some(0));
        assert_eq!(choose_weighted(&w, 9_000), Some(1));
        assert_eq!(choose_weighted(&w, 9_999), Some(1));
        assert_eq!(choose_weighted(&[0, 0], 5), None);
        assert_eq!(choose_weighted(&[0, 5], 0), Some(1));
        assert_eq!(choose_weighted(&[], 5), None);
    }

    #[test]
    fn a_ten_percent_split_gets_ten_percent_of_clients() {
        let n = 20_000;
        let canary = (0..n)
            .filter(|i| {
                let id = format!("127.0.{}.{}|agent", i / 256, i % 256);
                let (b, _) = bucket_of(None, id.as_bytes());
                choose_weighted(&[90, 10], b) == Some(1)
            })
            .count();
        // Binomial(20000, 0.1): sd ≈ 42; 5 sd either side.
        assert!((1_790..=2_210).contains(&canary), "{canary} of {n}");
    }

    #[test]
    fn least_loaded_prefers_the_idle_instance() {
        assert_eq!(pick_least_loaded(&[], 7), None);
        assert_eq!(pick_least_loaded(&[5], 7), Some(0));
        let mut idle = 0;
        for seed in 0..1000u64 {
            let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if pick_least_loaded(&[9, 0], s) == Some(1) {
                idle += 1;
            }
        }
        assert_eq!(idle, 1000, "with two instances the idle one always wins");
    }

    proptest! {
        /// Raising a split entry's weight never moves a client away from it (stickiness holds
        /// as a canary grows), and the choice is always a positive-weight entry.
        #[test]
        fn growing_a_weight_keeps_its_clients(w0 in 0u32..100, w1 in 0u32..100, extra in 0u32..100, bucket in 0u32..BUCKETS) {
            if let Some(i) = choose_weighted(&[w0, w1], bucket) {
                prop_assert!([w0, w1][i] > 0);
                if i == 1 && w0 > 0 {
                    // Canary as the last entry: growing it keeps everyone already on it.
                    prop_assert_eq!(choose_weighted(&[w0, w1 + extra], bucket), Some(1));
                }
            } else {
                prop_assert_eq!(w0 + w1, 0);
            }
        }

        #[test]
        fn pick_is_in_range(loads in proptest::collection::vec(0u64..10, 0..20), seed in any::<u64>()) {
            match pick_least_loaded(&loads, seed) {
                Some(i) => prop_assert!(i < loads.len()),
                None => prop_assert!(loads.is_empty()),
            }
        }

        #[test]
        fn cookie_parsing_never_panics(s in "\\PC{0,80}") {
            let _ = bucket_of(Some(s.as_bytes()), b"id");
        }
    }
}
