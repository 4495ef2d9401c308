//! Bridge mode: each instance in a network namespace of its own, joined to a molt-managed
//! bridge by a veth pair.
//!
//! The bridge (`molt0` by default) holds the subnet's gateway address, so the host (the router,
//! health checks) reaches every instance at the address molt allocated for it. Every bridge
//! port is *isolated* (`IFLA_BRPORT_ISOLATED`), so instances reach the host but never each
//! other, and forwarding is off on the bridge, so the host does not route between them either
//! (nor to anywhere else: there is no NAT).
//!
//! An instance's namespace is `/run/netns/<container id>` (visible to `ip netns`), its host-side
//! veth `mv<owner hash><container hash>` (15 characters, the kernel's limit) with the container
//! id as its alias; inside, `eth0` has the instance's address, a MAC derived from it (so a
//! reused address keeps its MAC and neighbour caches stay right), and `lo` is up.

mod netlink;

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use molt_core::Subnet;
use molt_provider::ProviderError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::net::if_::if_nametoindex;
use nix::sched::{unshare, CloneFlags};

use self::netlink::Netlink;
use crate::ids;

/// The bridge `molt serve --network bridge` uses unless `--bridge` names another.
pub const DEFAULT_BRIDGE: &str = "molt0";
/// The subnet of the bridge unless `--bridge-subnet` says otherwise.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";
/// Where instance network namespaces are bound (the directory `ip netns` uses).
pub const NETNS_DIR: &str = "/run/netns";
/// The instance's side of its veth pair, inside its namespace.
const INSIDE: &str = "eth0";
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// The bridge instances are attached to, and the subnet their addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    bridge: String,
    subnet: Subnet,
}

/// The network namespace and veth pair of one instance, named after its container.
#[derive(Debug, Clone)]
pub(crate) struct InstanceNet {
    /// Container id: the namespace's name and the veth's alias.
    cid: String,
    /// `/run/netns/<cid>`.
    netns: PathBuf,
    /// The host-side veth.
    veth: String,
}

impl BridgeNetwork {
    /// The bridge `bridge` with `subnet`; refuses a name the kernel would not accept.
    pub fn new(bridge: &str, subnet: Subnet) -> Result<BridgeNetwork, String> {
        let valid = !bridge.is_empty()
            && bridge.len() <= IFNAME_MAX
            && bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(format!(
                "bridge name {bridge:?} is not a valid interface name (1-15 letters, digits, \
                 '-', '_' or '.')"
            ));
        }
        Ok(BridgeNetwork {
            bridge: bridge.to_string(),
            subnet,
        })
    }

    /// The bridge's interface name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The subnet instance addresses come from.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Creates the bridge with the gateway address, up, forwarding off; what exists is kept
    /// (idempotent). Refuses a subnet that overlaps a route of another interface.
    pub fn ensure(&self) -> Result<(), ProviderError> {
        if let Some((route, iface)) = overlapping_route(&self.subnet, &self.bridge) {
            return Err(net_error(
                format!("use subnet {} for bridge {}", self.subnet, self.bridge),
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "it overlaps {route} on {iface}; pick a free private range with \
                         --bridge-subnet"
                    ),
                ),
            ));
        }
        let mut nl = Netlink::open().map_err(|e| net_error("open a netlink socket", e))?;
        match nl.create_bridge(&self.bridge) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !Path::new("/sys/class/net")
                    .join(&self.bridge)
                    .join("bridge")
                    .exists()
                {
                    return Err(net_error(
                        format!("use {} as molt's bridge", self.bridge),
                        io::Error::other("an interface of that name exists and is not a bridge"),
                    ));
                }
            }
            Err(e) => return Err(net_error(format!("create bridge {}", self.bridge), e)),
        }
        let index = if_nametoindex(self.bridge.as_str())
            .map_err(|e| net_error(format!("find bridge {}", self.bridge), e.into()))?;
        match nl.add_address(index, self.subnet.gateway(), self.subnet.prefix()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(net_error(
                    format!(
                        "add {}/{} to {}",
                        self.subnet.gateway(),
                        self.subnet.prefix(),
                        self.bridge
                    ),
                    e,
                ))
            }
        }
        nl.set_up(&self.bridge)
            .map_err(|e| net_error(format!("set {} up", self.bridge), e))?;
        self.forbid_forwarding()
    }

    /// Turns IPv4 forwarding off for packets arriving on the bridge, so an instance cannot use
    /// the host as a router to another instance (or anywhere else). Re-applied at every start,
    /// since setting `net.ipv4.ip_forward` resets it.
    pub(crate) fn forbid_forwarding(&self) -> Result<(), ProviderError> {
        let knob = Path::new("/proc/sys/net/ipv4/conf")
            .join(&self.bridge)
            .join("forwarding");
        fs::write(&knob, "0").map_err(|e| ProviderError::Io {
            path: knob,
            source: e,
        })
    }

    /// Deletes the bridge (for tests and `--bridge` changes); a missing one is not an error.
    pub fn remove(&self) -> Result<(), ProviderError> {
        let mut nl = Netlink::open().map_err(|e| net_error("open a netlink socket", e))?;
        match nl.delete_link(&self.bridge) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(()),
            Err(e) => Err(net_error(format!("delete bridge {}", self.bridge), e)),
        }
    }
}

impl InstanceNet {
    /// The namespace and veth names of container `cid` of `owner`.
    pub(crate) fn of(owner: &str, cid: &str) -> InstanceNet {
        InstanceNet {
            cid: cid.to_string(),
            netns: Path::new(NETNS_DIR).join(cid),
            veth: veth_name(owner, cid),
        }
    }

    /// The namespace path runc joins.
    pub(crate) fn netns(&self) -> &Path {
        &self.netns
    }

    /// The host-side veth.
    pub(crate) fn veth(&self) -> &str {
        &self.veth
    }

    /// Whether the namespace is bound (exists).
    pub(crate) fn exists(&self) -> bool {
        self.netns.exists()
    }

    /// Creates the namespace, the veth pair on `network`'s bridge, and configures `address`
    /// inside. Whatever an earlier attempt left under these names is removed first; on failure
    /// nothing is left.
    pub(crate) fn create(
        &self,
        network: &BridgeNetwork,
        address: Ipv4Addr,
    ) -> Result<(), ProviderError> {
        if self.exists() {
            self.remove()?;
        }
        fs::create_dir_all(NETNS_DIR).map_err(|e| ProviderError::Io {
            path: NETNS_DIR.into(),
            source: e,
        })?;
        // unshare(CLONE_NEWNET) moves only the calling thread: a short-lived thread enters the
        // new namespace, binds it and configures it; molt's own threads never change namespace.
        let result = std::thread::scope(|scope| {
            scope
                .spawn(|| self.create_in_new_namespace(network, address))
                .join()
                .unwrap_or_else(|_| {
                    Err(net_error(
                        "set up the namespace",
                        io::Error::other("the setup thread panicked"),
                    ))
                })
        });
        if result.is_err() {
            let _ = self.remove();
        }
        result
    }

    /// Runs on a thread of its own, which ends inside the new namespace.
    fn create_in_new_namespace(
        &self,
        network: &BridgeNetwork,
        address: Ipv4Addr,
    ) -> Result<(), ProviderError> {
        let what = |step: &str| format!("{step} for {}", self.cid);
        let mut host = Netlink::open().map_err(|e| net_error(what("open a netlink socket"), e))?;
        let bridge = if_nametoindex(network.bridge.as_str()).map_err(|e| {
            net_error(
                format!(
                    "find bridge {} (is molt serve --network bridge running?)",
                    network.bridge
                ),
                e.into(),
            )
        })?;
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| net_error(what("create a network namespace"), e.into()))?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.netns)
            .map_err(|e| ProviderError::Io {
                path: self.netns.clone(),
                source: e,
            })?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &self.netns,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| net_error(what("bind the network namespace"), e.into()))?;
        let namespace: OwnedFd = fs::File::open(&self.netns)
            .map_err(|e| net_error(what("open the network namespace"), e))?
            .into();
        let mac = mac_of(address);
        let created = host.create_veth(&self.veth, &self.cid, bridge, INSIDE, mac, &namespace);
        match created {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A veth left by a crash under the same name: replace it.
                let _ = host.delete_link(&self.veth);
                host.create_veth(&self.veth, &self.cid, bridge, INSIDE, mac, &namespace)
            }
            other => other,
        }
        .map_err(|e| net_error(what(&format!("create veth {}", self.veth)), e))?;
        host.isolate_port(&self.veth)
            .map_err(|e| net_error(what(&format!("isolate bridge port {}", self.veth)), e))?;
        let mut inside =
            Netlink::open().map_err(|e| net_error(what("open a netlink socket inside"), e))?;
        inside
            .set_up("lo")
            .map_err(|e| net_error(what("set lo up"), e))?;
        inside
            .set_up(INSIDE)
            .map_err(|e| net_error(what("set eth0 up"), e))?;
        let index = if_nametoindex(INSIDE).map_err(|e| net_error(what("find eth0"), e.into()))?;
        let subnet = network.subnet;
        inside
            .add_address(index, address, subnet.prefix())
            .map_err(|e| net_error(what(&format!("add {address}/{}", subnet.prefix())), e))?;
        inside
            .add_default_route(subnet.gateway())
            .map_err(|e| net_error(what("add the default route"), e))
    }

    /// Deletes the veth pair and unbinds the namespace (which the kernel frees once no process
    /// is left in it); what is already gone is not an error.
    pub(crate) fn remove(&self) -> Result<(), ProviderError> {
        let mut nl = Netlink::open().map_err(|e| net_error("open a netlink socket", e))?;
        match nl.delete_link(&self.veth) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => {}
            Err(e) => {
                return Err(net_error(
                    format!("delete veth {} of {}", self.veth, self.cid),
                    e,
                ))
            }
        }
        match umount2(&self.netns, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(net_error(
                    format!("unbind namespace {}", self.cid),
                    e.into(),
                ))
            }
        }
        match fs::remove_file(&self.netns) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProviderError::Io {
                path: self.netns.clone(),
                source: e,
            }),
        }
    }
}

/// Names of the namespaces in [`NETNS_DIR`] whose name starts with `prefix`.
pub(crate) fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The host-side veth of container `cid` of `owner`: `mv`, 5 hex digits of the owner (the
/// owner marker), 8 of the container id.
pub(crate) fn veth_name(owner: &str, cid: &str) -> String {
    let owner_hash = ids::fnv1a(owner.as_bytes()) & 0xf_ffff;
    let cid_hash = ids::fnv1a(cid.as_bytes()) & 0xffff_ffff;
    format!("mv{owner_hash:05x}{cid_hash:08x}")
}

/// The prefix of every host-side veth of `owner`.
pub(crate) fn veth_prefix(owner: &str) -> String {
    format!("mv{:05x}", ids::fnv1a(owner.as_bytes()) & 0xf_ffff)
}

/// A locally administered unicast MAC derived from the address: `02:6d:<a>:<b>:<c>:<d>`.
fn mac_of(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x6d, a, b, c, d]
}

/// A route of an interface other than `bridge` whose network overlaps `subnet`, as
/// (`network/prefix`, interface), from `/proc/net/route`; default routes do not count.
fn overlapping_route(subnet: &Subnet, bridge: &str) -> Option<(String, String)> {
    let text = fs::read_to_string("/proc/net/route").ok()?;
    routes_overlapping(&text, subnet, bridge)
}

fn routes_overlapping(text: &str, subnet: &Subnet, bridge: &str) -> Option<(String, String)> {
    // Columns: Iface Destination Gateway Flags RefCnt Use Metric Mask …; addresses are the
    // kernel's network-order words printed in hex.
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let word = |i: usize| {
            cols.get(i)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
        };
        let (iface, dest, mask) = (*cols.first()?, word(1)?, word(7)?);
        let prefix = u32::from(mask).leading_ones() as u8;
        if iface == bridge || prefix == 0 {
            return None;
        }
        subnet
            .overlaps_network(dest, prefix)
            .then(|| (format!("{dest}/{prefix}"), iface.to_string()))
    })
}

fn net_error(what: impl Into<String>, source: io::Error) -> ProviderError {
    ProviderError::Network {
        what: what.into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_carry_the_owner() {
        let a = veth_name("0123456789abcdef", "0123456789abcdef-web-v1-abcdef-1");
        assert_eq!(a.len(), IFNAME_MAX);
        assert!(a.starts_with(&veth_prefix("0123456789abcdef")));
        assert_ne!(
            a,
            veth_name("0123456789abcdef", "0123456789abcdef-web-v1-abcdef-2")
        );
        assert_eq!(mac_of(Ipv4Addr::new(10, 1, 2, 3)), [2, 0x6d, 10, 1, 2, 3]);
        assert!(BridgeNetwork::new("molt0", "10.1.0.0/16".parse().unwrap()).is_ok());
        for bad in ["", "a-very-long-bridge-name", "br 0", "br/0"] {
            assert!(BridgeNetwork::new(bad, "10.1.0.0/16".parse().unwrap()).is_err());
        }
    }

    #[test]
    fn overlapping_routes_are_found() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            molt0\t0000D50A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let ours: Subnet = "10.213.0.0/16".parse().unwrap();
        assert_eq!(routes_overlapping(table, &ours, "molt0"), None);
        let clash: Subnet = "192.0.0.0/16".parse().unwrap();
        assert_eq!(
            routes_overlapping(table, &clash, "molt0"),
            Some(("192.0.2.0/24".to_string(), "eth0".to_string()))
        );
    }
}
