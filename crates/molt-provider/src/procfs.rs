//! What molt reads from `/proc`: process identity and state (`/proc/<pid>/stat`, the one parser
//! of the workspace: molt-runtime and the benchmarks use it too) and the owner marker.

use std::fs;

use crate::ProcessHandle;

/// Environment variable naming the instance a process belongs to.
pub(crate) const INSTANCE_VAR: &str = "MOLT_INSTANCE";
/// Environment variable naming the molt installation that started a process.
pub(crate) const OWNER_VAR: &str = "MOLT_OWNER";

/// The fields of `/proc/<pid>/stat` molt reads (see proc(5); field numbers count from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (field 3): `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: u8,
    /// Process group id (field 5).
    pub pgrp: i64,
    /// CPU time in user mode, in clock ticks (field 14).
    pub utime: u64,
    /// CPU time in kernel mode, in clock ticks (field 15).
    pub stime: u64,
    /// Start time in clock ticks since boot (field 22); with the pid, a unique identity.
    pub start_time: u64,
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
    /// Reads `/proc/<pid>/stat`; `None` when the process does not exist or the file is
    /// unreadable.
    pub fn read(pid: u32) -> Option<ProcStat> {
        let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
        ProcStat::parse(&text)
    }

    /// Parses the text of a stat file; `None` if it is not one. The command name (field 2) may
    /// hold spaces and parentheses, so fields are counted from the last `)`.
    pub fn parse(text: &[u8]) -> Option<ProcStat> {
        let close = text.iter().rposition(|b| *b == b')')?;
        let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        // fields[0] is field 3 (state), so field n is fields[n - 3].
        let field = |n: usize| fields.get(n - 3).copied();
        Some(ProcStat {
            state: *field(3)?.as_bytes().first()?,
            pgrp: field(5)?.parse().ok()?,
            utime: field(14)?.parse().ok()?,
            stime: field(15)?.parse().ok()?,
            start_time: field(22)?.parse().ok()?,
        })
    }

    /// Whether the process has finished and only awaits reaping (or is being torn down).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }

    /// Whether the process has exited and awaits reaping by its parent.
    pub fn is_zombie(&self) -> bool {
        self.state == b'Z'
    }
}

/// Whether `handle` names a live (not zombie) process with the recorded start time.
pub(crate) fn is_alive(handle: ProcessHandle) -> bool {
    ProcStat::read(handle.pid).is_some_and(|s| !s.is_dead() && s.start_time == handle.start_time)
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
    use proptest::prelude::*;

    use super::*;

    /// A stat line as the kernel writes it, fields 1 to 52, with the given values.
    fn stat_line(
        comm: &[u8],
        state: char,
        pgrp: i64,
        utime: u64,
        stime: u64,
        start: u64,
    ) -> Vec<u8> {
        let mut line = b"4242 (".to_vec();
        line.extend_from_slice(comm);
        // Every other field holds its own number.
        let mut fields: Vec<String> = (4..=52).map(|n| n.to_string()).collect();
        fields[5 - 4] = pgrp.to_string();
        fields[14 - 4] = utime.to_string();
        fields[15 - 4] = stime.to_string();
        fields[22 - 4] = start.to_string();
        line.extend_from_slice(format!(") {state} {}\n", fields.join(" ")).as_bytes());
        line
    }

    #[test]
    fn stat_with_odd_command_name() {
        let text = b"4242 (my (evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = ProcStat::parse(text).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!((stat.utime, stat.stime), (1, 2));
        assert_eq!(stat.start_time, 987654);
        assert!(!stat.is_dead() && !stat.is_zombie());
        assert!(ProcStat::parse(b"garbage").is_none());
        assert!(ProcStat::parse(b"1 (x) S 1 2").is_none(), "too few fields");
    }

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let stat = ProcStat::read(std::process::id()).expect("our own stat");
        assert!(!stat.is_dead());
        assert!(stat.start_time > 0);
    }

    #[test]
    fn environ_marker() {
        let marker = parse_environ(b"A=1\0MOLT_OWNER=me\0MOLT_INSTANCE=web-1\0MOLT_OWNERX=no\0");
        assert_eq!(marker.owner.as_deref(), Some("me"));
        assert_eq!(marker.instance.as_deref(), Some("web-1"));
        assert_eq!(parse_environ(b""), Marker::default());
    }

    proptest! {
        /// Whatever the command name holds (spaces, parentheses, `) Z 1`, bytes that are not
        /// UTF-8), the fields after it are read right.
        #[test]
        fn any_command_name_parses(
            comm in proptest::collection::vec(prop_oneof![
                Just(b' '), Just(b'('), Just(b')'), Just(b'Z'), Just(b'1'), any::<u8>()
            ], 0..32),
            state in prop_oneof![Just('R'), Just('S'), Just('D'), Just('Z'), Just('X'), Just('I')],
            pgrp in 0..i64::from(i32::MAX),
            utime in any::<u64>(),
            stime in any::<u64>(),
            start in any::<u64>(),
        ) {
            let line = stat_line(&comm, state, pgrp, utime, stime, start);
            let stat = ProcStat::parse(&line).expect("a well-formed stat line");
            prop_assert_eq!(stat.state, state as u8);
            prop_assert_eq!(stat.pgrp, pgrp);
            prop_assert_eq!((stat.utime, stat.stime), (utime, stime));
            prop_assert_eq!(stat.start_time, start);
            prop_assert_eq!(stat.is_zombie(), state == 'Z');
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ProcStat::parse(&bytes);
        }
    }
}
