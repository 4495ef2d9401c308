//! The default seccomp profile of every instance.
//!
//! A deny list: every system call is allowed except the ones that administer the machine or
//! escape a container (kernel modules, mounts, namespaces, keyrings, tracing other processes,
//! reboot, clock and swap changes, BPF, perf, `open_by_handle_at`), which fail with `EPERM`.
//! Instances already have no capabilities, so most of these would fail anyway; the profile
//! removes the kernel attack surface behind them (the calls never reach their implementation).
//! Docker's default profile is an allow list of ~350 calls; a deny list is easier to keep
//! right across architectures, at the price of letting new, unknown calls through.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
};
use oci_spec::OciSpecError;

/// `EPERM`: what a denied call returns.
const EPERM: u32 = 1;

/// System calls an instance never needs.
pub(crate) const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// The profile: allow by default, `EPERM` for [`DENIED`], on the x86 and arm ABIs.
pub(crate) fn default_profile() -> Result<LinuxSeccomp, OciSpecError> {
    let denied = LinuxSyscallBuilder::default()
        .names(DENIED.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .build()?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
            Arch::ScmpArchAarch64,
            Arch::ScmpArchArm,
        ])
        .syscalls(vec![denied])
        .build()
}
