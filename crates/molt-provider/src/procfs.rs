//! What the provider reads from `/proc`: process identity, state and the owner marker.

use std::fs;

use crate::ProcessHandle;

/// Environment variable naming the instance a process belongs to.
pub(crate) const INSTANCE_VAR: &str = "MOLT_INSTANCE";
/// Environment variable naming the molt installation that started a process.
pub(crate) const OWNER_VAR: &str = "MOLT_OWNER";

/// The few fields of `/proc/<pid>/stat` the provider needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// One-letter state: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub(crate) state: u8,
    /// Process group id (field 5).
    pub(crate) pgrp: i64,
    /// Start time in clock ticks since boot (field 22); with the pid, a unique identity.
    pub(crate) start_time: u64,
}

/// The marker variables found in a process's initial environment.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Marker {
    /// Value of `MOLT_OWNER`, if set.
    pub(crate) owner: Option<String>,
    /// Value of `MOLT_INSTANCE`, if set.
    pub(crate) instance: Option<String>,
}

impl ProcStat {
    /// Whether the process has finished and only awaits reaping (or is being torn down).
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist or the file is unreadable.
pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses the text of a stat file. The command name (field 2) may hold spaces and parens, so
/// fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    Some(ProcStat {
        state: *fields.first()?.as_bytes().first()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `handle` names a live (not zombie) process with the recorded start time.
pub(crate) fn is_alive(handle: ProcessHandle) -> bool {
    read_stat(handle.pid).is_some_and(|s| !s.is_dead() && s.start_time == handle.start_time)
}

/// Reads the molt marker from `/proc/<pid>/environ`; `None` when unreadable.
pub(crate) fn read_marker(pid: u32) -> Option<Marker> {
    let bytes = fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(parse_environ(&bytes))
}

/// Picks the marker variables out of a NUL-separated environment block.
pub(crate) fn parse_environ(bytes: &[u8]) -> Marker {
    let mut marker = Marker::default();
    for var in bytes.split(|b| *b == 0) {
        let Some(eq) = var.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&var[..eq], &var[eq + 1..]);
        let value = String::from_utf8_lossy(value).into_owned();
        if name == OWNER_VAR.as_bytes() {
            marker.owner = Some(value);
        } else if name == INSTANCE_VAR.as_bytes() {
            marker.instance = Some(value);
        }
    }
    marker
}

/// Every pid currently listed in `/proc`.
pub(crate) fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text = b"4242 (my (evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(parse_stat(b"garbage").is_none());
    }

    #[test]
    fn environ_marker() {
        let marker = parse_environ(b"A=1\0MOLT_OWNER=me\0MOLT_INSTANCE=web-1\0MOLT_OWNERX=no\0");
        assert_eq!(marker.owner.as_deref(), Some("me"));
        assert_eq!(marker.instance.as_deref(), Some("web-1"));
        assert_eq!(parse_environ(b""), Marker::default());
    }
}
