//! The one thing read from `/proc`: a process's kernel start time (parsed by molt-provider's
//! [`ProcStat`], the workspace's one `/proc/<pid>/stat` parser).

use molt_provider::procfs::ProcStat;

/// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22); `None` when the process
/// does not exist, is a zombie, or the file cannot be parsed.
pub(crate) fn live_start_time(pid: u32) -> Option<u64> {
    ProcStat::read(pid)
        .filter(|stat| !stat.is_dead())
        .map(|stat| stat.start_time)
}

/// Start time of `pid` in clock ticks since boot, zombie or not; `None` when there is no
/// such process.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    ProcStat::read(pid).map(|stat| stat.start_time)
}

/// True when `pid` is a zombie that started at `start_time`: the exited process itself, not
/// a later process that reused its pid.
pub(crate) fn is_zombie_of(pid: u32, start_time: u64) -> bool {
    ProcStat::read(pid).is_some_and(|stat| stat.is_zombie() && stat.start_time == start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_start_time() {
        assert!(live_start_time(std::process::id()).is_some());
        assert_eq!(
            start_time(std::process::id()),
            live_start_time(std::process::id())
        );
        assert!(!is_zombie_of(std::process::id(), 0));
    }
}
