//! molt-runtime: instances as OCI containers, run by the system's `runc`.
//!
//! [`RuncProvider`] implements molt's [`Provider`](molt_provider::Provider) trait: each instance
//! gets an OCI runtime bundle (a `config.json` built with `oci-spec`) whose root is the image's
//! unpacked root filesystem, mounted read-only, and runs in its own mount, pid, uts and ipc
//! namespaces (and, in bridge mode, a network namespace on molt's bridge: `net/`) with no
//! capabilities, as an unprivileged user, in its own cgroup under `/molt`; with an
//! [`InstanceInit`] (what `molt serve` sets) under molt's own init as PID 1 (`init.rs`).
//! molt does not implement a container runtime: `runc` does the isolation, molt only writes the
//! bundle and drives `runc` through its command line, with a state directory of its own.
//!
//! Everything here blocks; async callers use `spawn_blocking`.

mod abandoned;
mod build;
mod bundle;
mod ids;
mod init;
mod net;
mod procfs;
mod provider;
mod rootfs;
mod runc;
mod seccomp;

pub use crate::build::{BuildCommand, BuildRunner, BUILD_CAPABILITIES};
pub use crate::init::{InstanceInit, INIT_DIR};
pub use crate::net::{BridgeNetwork, Subnet, DEFAULT_BRIDGE, DEFAULT_SUBNET, NETNS_DIR};
pub use crate::provider::{ContainerUser, RuncConfig, RuncProvider};
