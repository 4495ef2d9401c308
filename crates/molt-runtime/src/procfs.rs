//! The one thing read from `/proc`: a process's kernel start time.

use std::fs;

/// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); `None` when the process
/// does not exist, is a zombie, or the file cannot be parsed.
pub(crate) fn live_start_time(pid: u32) -> Option<u64> {
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let stat = parse_stat(&text)?;
    (!matches!(stat.0, b'Z' | b'X' | b'x')).then_some(stat.1)
}

/// Start time of `pid` in clock ticks since boot, zombie or not; `None` when there is no
/// such process.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|(_, start)| start)
}

/// True when `pid` is a zombie that started at `start_time`: the exited process itself, not
/// a later process that reused its pid.
pub(crate) fn is_zombie_of(pid: u32, start_time: u64) -> bool {
    fs::read(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| parse_stat(&text))
        .is_some_and(|(state, start)| state == b'Z' && start == start_time)
}

/// State letter (field 3) and start time (field 22) of a stat file. The command name (field 2)
/// may hold spaces and parens, so fields are counted from the last `)`.
fn parse_stat(text: &[u8]) -> Option<(u8, u64)> {
    let close = text.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let state = *fields.first()?.as_bytes().first()?;
    Some((state, fields.get(19)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text = b"4242 (my (evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(text), Some((b'S', 987654)));
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn own_process_has_a_start_time() {
        assert!(live_start_time(std::process::id()).is_some());
    }
}
