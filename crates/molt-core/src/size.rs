//! Human byte sizes (`512KiB`, `10MiB`, `1GB`, `4096`) as used in `molt.toml`.

use crate::InputError;

/// Parses `<number><unit>`: `B` (or none), `KB`/`MB`/`GB` (powers of 1000), `KiB`/`MiB`/`GiB`
/// (powers of 1024); units are case-sensitive as written here.
pub fn parse_size(text: &str) -> Result<u64, InputError> {
    let bad = || {
        InputError::Invalid(format!(
        "'{text}' is not a size: use a number with B, KB, MB, GB, KiB, MiB or GiB, e.g. \"10MiB\""
    ))
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_size(" 2 KB ").unwrap(), 2000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in ["", "MiB", "10mib", "1.5MiB", "-1", "99999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
