//! Resource limits of one instance: the `[limits]` table of `molt.toml`.
//!
//! ```toml
//! [limits]
//! memory = "256M"   # bytes, with K/M/G (powers of 1024, optional "i"/"B": "256MiB")
//! cpu = 0.5         # CPUs (cores); 0.5 = half a core
//! pids = 128        # processes and threads
//! nofile = 65536    # open files (RLIMIT_NOFILE); this is the default
//! ```
//!
//! A limit left out is no limit, but for open files: every instance gets
//! [`DEFAULT_NOFILE`] unless `nofile` says otherwise (the kernel's default of 1024 is what a
//! server behind a router that keeps connections to it runs out of). Memory, CPU and pids are
//! enforced by isolating providers (runc's cgroups); the plain-process provider (`isolation:
//! none`) cannot enforce them, but sets the open-files limit.

use serde::{Deserialize, Serialize};

/// Smallest memory limit accepted: below this even a tiny program cannot start.
pub const MIN_MEMORY: u64 = 4 << 20;
/// Smallest CPU share accepted, in thousandths of a CPU.
pub const MIN_CPU_MILLIS: u32 = 10;
/// Open files of an instance when `[limits] nofile` is not set (Docker's default is higher
/// still; 64 Ki is plenty for a server and well under the kernel's `nr_open`).
pub const DEFAULT_NOFILE: u64 = 65_536;
/// Fewest open files `nofile` accepts: below this a program cannot even load its libraries.
pub const MIN_NOFILE: u64 = 16;
/// Most open files `nofile` accepts (the kernel's default `fs.nr_open`).
pub const MAX_NOFILE: u64 = 1 << 20;

/// Per-instance resource limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory (RAM, and tmpfs pages the instance writes) in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPU time in thousandths of a CPU (500 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Largest number of tasks (processes and threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Open files (RLIMIT_NOFILE, soft and hard); `None` is [`DEFAULT_NOFILE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
}

impl Limits {
    /// True when no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }

    /// The open-files limit an instance gets.
    pub fn open_files(&self) -> u64 {
        self.nofile.unwrap_or(DEFAULT_NOFILE)
    }
}

/// Parses a memory size: a whole number of bytes with an optional unit `K`, `M`, `G` or `T`
/// (powers of 1024; `KiB`, `MB`, `m` are accepted spellings of the same).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("memory '{text}' must start with a whole number, e.g. \"256M\""))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => {
            return Err(format!(
                "memory '{text}' has an unknown unit: use K, M, G or T (e.g. \"256M\")"
            ))
        }
    };
    let bytes = number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("memory '{text}' is too large"))?;
    if bytes < MIN_MEMORY {
        return Err(format!("memory '{text}' is below the smallest limit, 4M"));
    }
    Ok(bytes)
}

/// Parses a CPU share given in CPUs (`0.5`, `2`) into thousandths of a CPU.
pub fn parse_cpu(cpus: f64) -> Result<u32, String> {
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(format!(
            "cpu = {cpus} must be a positive number of CPUs, e.g. 0.5"
        ));
    }
    let millis = (cpus * 1000.0).round();
    if millis < f64::from(MIN_CPU_MILLIS) {
        return Err(format!("cpu = {cpus} is below the smallest share, 0.01"));
    }
    if millis > 1_000_000.0 {
        return Err(format!("cpu = {cpus} is more CPUs than any machine has"));
    }
    Ok(millis as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("256M"), Ok(256 << 20));
        assert_eq!(parse_memory("256MiB"), Ok(256 << 20));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("8192k"), Ok(8 << 20));
        assert_eq!(parse_memory("16777216"), Ok(16 << 20));
        for bad in ["", "M", "12X", "1.5G", "-1M", "1M", "99999999999T"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cpu_shares() {
        assert_eq!(parse_cpu(0.5), Ok(500));
        assert_eq!(parse_cpu(2.0), Ok(2000));
        for bad in [0.0, -1.0, 0.001, f64::NAN, f64::INFINITY, 1e9] {
            assert!(parse_cpu(bad).is_err(), "{bad} accepted");
        }
    }
}
