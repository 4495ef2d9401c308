//! The subnet of molt's instance bridge (`--bridge-subnet`): parsed once at the edge, and the
//! decision of which address the next instance gets.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network, `a.b.c.d/n` with no host bits set; between /8 and /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The first host address, which the bridge holds: the instances' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.overlaps_network(other.network, other.prefix)
    }

    /// Whether the network `network/prefix` (any prefix, such as a route of the host's)
    /// shares any address with this one.
    pub fn overlaps_network(&self, network: Ipv4Addr, prefix: u8) -> bool {
        let mask = self.mask() & mask_of(prefix);
        u32::from(self.network) & mask == u32::from(network) & mask
    }

    /// The addresses instances may get: every host address but the gateway, in order.
    pub fn instance_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | !self.mask();
        (first..broadcast).map(Ipv4Addr::from)
    }

    /// The first address of [`Subnet::instance_addresses`] that `taken` does not hold: where
    /// the next instance listens. An address is free again once its instance stopped.
    pub fn first_free(&self, taken: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        self.instance_addresses().find(|ip| !taken(*ip))
    }

    fn mask(&self) -> u32 {
        mask_of(self.prefix)
    }
}

/// The netmask of a prefix length (`/0` masks nothing).
fn mask_of(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Subnet, String> {
        let (ip, prefix) = text.split_once('/').ok_or_else(|| {
            format!("{text:?} is not a subnet: write it as CIDR, e.g. 10.213.0.0/16")
        })?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} in {text:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("the prefix of {text:?} must be between /8 and /30"))?;
        let subnet = Subnet {
            network: ip,
            prefix,
        };
        let network = Ipv4Addr::from(u32::from(ip) & subnet.mask());
        if network != ip {
            return Err(format!(
                "{text:?} has host bits set: the network is {network}/{prefix}"
            ));
        }
        Ok(subnet)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subnets_parse_and_refuse_bad_input() {
        let s: Subnet = "10.213.0.0/16".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(s.to_string(), "10.213.0.0/16");
        assert!(s.contains(Ipv4Addr::new(10, 213, 255, 1)));
        assert!(!s.contains(Ipv4Addr::new(10, 214, 0, 1)));
        for bad in [
            "10.213.0.0",
            "10.213.0.1/16",
            "10.213.0.0/31",
            "10.0.0.0/4",
            "x/16",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        let small: Subnet = "10.9.8.0/29".parse().unwrap();
        let addresses: Vec<Ipv4Addr> = small.instance_addresses().collect();
        assert_eq!(addresses.first(), Some(&Ipv4Addr::new(10, 9, 8, 2)));
        assert_eq!(addresses.last(), Some(&Ipv4Addr::new(10, 9, 8, 6)));
        assert_eq!(addresses.len(), 5);
        assert!(s.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!s.overlaps(&"10.214.0.0/16".parse().unwrap()));
        assert!(s.overlaps_network(Ipv4Addr::new(10, 213, 7, 7), 32));
        assert!(!s.overlaps_network(Ipv4Addr::new(10, 212, 0, 0), 16));
    }

    #[test]
    fn the_next_instance_gets_the_first_address_nobody_holds() {
        let small: Subnet = "10.9.8.0/29".parse().unwrap();
        let held = [Ipv4Addr::new(10, 9, 8, 2), Ipv4Addr::new(10, 9, 8, 4)];
        assert_eq!(
            small.first_free(|ip| held.contains(&ip)),
            Some(Ipv4Addr::new(10, 9, 8, 3))
        );
        assert_eq!(small.first_free(|_| true), None);
    }

    proptest! {
        /// The address handed out is inside the subnet, never the network, the gateway or the
        /// broadcast address, never held, and no free address comes before it.
        #[test]
        fn first_free_is_the_lowest_free_host_address(held in proptest::collection::btree_set(0u32..8, 0..8)) {
            let subnet: Subnet = "10.9.8.0/29".parse().unwrap();
            let at = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 9, 8, 0)) + i);
            let taken = |ip: Ipv4Addr| held.contains(&(u32::from(ip) - u32::from(at(0))));
            match subnet.first_free(taken) {
                Some(ip) => {
                    prop_assert!(subnet.contains(ip));
                    prop_assert!(ip != at(0) && ip != subnet.gateway() && ip != at(7));
                    prop_assert!(!taken(ip));
                    prop_assert!((2..u32::from(ip) - u32::from(at(0))).all(|i| held.contains(&i)));
                }
                None => prop_assert!((2..7).all(|i| held.contains(&i))),
            }
        }
    }
}
