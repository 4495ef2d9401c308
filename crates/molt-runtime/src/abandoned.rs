//! Containers whose data directory is gone: it was deleted (with runc's state and the bundles
//! in it) while they ran, so no molt can adopt them or stop them through runc any more.
//!
//! Every molt container sits in `/molt/<owner>-<instance>` of each cgroup hierarchy, so they
//! are found by their cgroup, of whichever owner, and recognised by the kernel's own mark: the
//! root of their mount namespace is a directory that was deleted (`/proc/<pid>/mountinfo`
//! shows its root as `…//deleted`). A live molt's containers never match: their bundles exist.
//! They are killed, their cgroups removed, and their network namespace unbound.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::net::InstanceNet;

/// Where cgroup hierarchies are mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// How long the processes of an abandoned container get to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Stops every abandoned container; returns a description of each one removed.
pub(crate) fn sweep() -> Vec<String> {
    let parents = molt_parents();
    let mut leaves: Vec<String> = parents
        .iter()
        .flat_map(|parent| fs::read_dir(parent).into_iter().flatten().flatten())
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    leaves.sort();
    leaves.dedup();
    let mut removed = Vec::new();
    for leaf in leaves {
        let dirs: Vec<PathBuf> = parents
            .iter()
            .map(|p| p.join(&leaf))
            .filter(|d| d.is_dir())
            .collect();
        let pids = pids_of(&dirs);
        // An empty cgroup may be a container runc is creating right now: left alone.
        if pids.is_empty() || !pids.iter().any(|pid| root_is_deleted(*pid)) {
            continue;
        }
        tracing::warn!(
            container = leaf,
            pids = ?pids,
            "stopping a container whose data directory was deleted"
        );
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let left = pids_of(&dirs);
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                if let Ok(raw) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for dir in &dirs {
            if let Err(e) = fs::remove_dir(dir) {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove");
            }
        }
        // The owner is what precedes the first '-' of the container id (molt's owners are hex).
        let owner = leaf
            .split_once('-')
            .map_or(leaf.as_str(), |(owner, _)| owner);
        let net = InstanceNet::of(owner, &leaf);
        if net.exists() {
            if let Err(e) = net.remove() {
                tracing::warn!(container = leaf, error = %e, "cannot remove its namespace");
            }
        }
        removed.push(format!("abandoned container {leaf}"));
    }
    removed
}

/// The `molt` parent cgroup of every hierarchy that has one (v1 controllers, the hybrid
/// `unified` tree, or the v2 root itself).
fn molt_parents() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_MOUNT);
    let mut parents: Vec<PathBuf> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("molt"))
        .filter(|p| p.is_dir())
        .collect();
    if root.join("molt").is_dir() {
        parents.push(root.join("molt"));
    }
    parents
}

/// The processes in any of `dirs` (the same cgroup in each hierarchy).
fn pids_of(dirs: &[PathBuf]) -> Vec<u32> {
    let mut pids: Vec<u32> = dirs
        .iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Whether the root (`/`) of `pid`'s mount namespace is a deleted directory.
fn root_is_deleted(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .is_ok_and(|text| mountinfo_root_is_deleted(&text))
}

/// Fields of a mountinfo line: id, parent, major:minor, root, mount point, … ; a root whose
/// directory was removed ends with `//deleted`.
fn mountinfo_root_is_deleted(text: &str) -> bool {
    text.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        fields.get(4) == Some(&"/") && fields.get(3).is_some_and(|r| r.ends_with("//deleted"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_root_is_recognised() {
        let gone =
            "89 47 254:0 /tmp/x/bundles/m-web-1/rootfs//deleted / ro,relatime - ext4 /dev/vda rw\n\
            90 89 0:5 / /proc rw - proc proc rw\n";
        assert!(mountinfo_root_is_deleted(gone));
        let alive = "89 47 254:0 /tmp/x/bundles/m-web-1/rootfs / ro,relatime - ext4 /dev/vda rw\n\
            91 89 254:0 /old//deleted /app ro - ext4 /dev/vda rw\n";
        assert!(!mountinfo_root_is_deleted(alive));
    }
}
