//! A minimal rtnetlink client: the handful of requests bridge mode sends (create a bridge or a
//! veth pair, set a link up or its bridge port isolated, add an address or a route, delete a
//! link), each acknowledged by the kernel.
//!
//! In-process netlink instead of the `ip` and `bridge` tools: the seven `ip`/`bridge` commands
//! an instance needs cost 20–45 ms of process starts on a loaded 2-core machine, more than the
//! whole start budget; the same requests over one socket take well under a millisecond.
//! Messages follow `linux/rtnetlink.h` and `linux/if_link.h`; the attribute numbers are ABI.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const NLA_F_NESTED: u16 = 0x8000;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// A `NETLINK_ROUTE` socket of the network namespace the calling thread was in when it opened it.
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// One netlink request being built: header, family struct, then attributes (nests allowed).
struct Message {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub(crate) fn open() -> io::Result<Netlink> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// Creates a bridge named `name`, up. `EEXIST` when it exists.
    pub(crate) fn create_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = Message::link(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0, IFF_UP);
        m.attr_str(IFLA_IFNAME, name);
        m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "bridge");
        m.end();
        self.request(m)
    }

    /// Creates the veth pair `host` (on bridge `master`, up, with `alias` as its description)
    /// and `peer`, which is moved into the network namespace `peer_ns` with the MAC `mac`.
    pub(crate) fn create_veth(
        &mut self,
        host: &str,
        alias: &str,
        master: u32,
        peer: &str,
        mac: [u8; 6],
        peer_ns: &OwnedFd,
    ) -> io::Result<()> {
        let mut m = Message::link(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0, IFF_UP);
        m.attr_str(IFLA_IFNAME, host);
        m.attr(IFLA_IFALIAS, alias.as_bytes());
        m.attr(IFLA_MASTER, &master.to_ne_bytes());
        m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth");
        m.begin(IFLA_INFO_DATA);
        m.begin(VETH_INFO_PEER);
        m.ifinfo(0, 0);
        m.attr_str(IFLA_IFNAME, peer);
        m.attr(IFLA_ADDRESS, &mac);
        m.attr(IFLA_NET_NS_FD, &peer_ns.as_raw_fd().to_ne_bytes());
        m.end();
        m.end();
        m.end();
        self.request(m)
    }

    /// Makes the bridge port `name` isolated: it forwards only to non-isolated ports (the
    /// bridge itself, i.e. the host), never to another isolated port.
    pub(crate) fn isolate_port(&mut self, name: &str) -> io::Result<()> {
        let mut m = Message::link(RTM_NEWLINK, 0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_SLAVE_KIND, "bridge");
        m.begin(IFLA_INFO_SLAVE_DATA);
        m.attr(IFLA_BRPORT_ISOLATED, &[1]);
        m.end();
        m.end();
        self.request(m)
    }

    /// Sets the link named `name` up.
    pub(crate) fn set_up(&mut self, name: &str) -> io::Result<()> {
        let mut m = Message::link(RTM_NEWLINK, 0, 0, IFF_UP);
        m.attr_str(IFLA_IFNAME, name);
        self.request(m)
    }

    /// Deletes the link named `name` (both ends, for a veth). `ENODEV` when there is none.
    pub(crate) fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let mut m = Message::link(RTM_DELLINK, 0, 0, 0);
        m.attr_str(IFLA_IFNAME, name);
        self.request(m)
    }

    /// Adds `address/prefix` to link `index`. `EEXIST` when it is there.
    pub(crate) fn add_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> io::Result<()> {
        let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        m.buf
            .extend_from_slice(&[AF_INET, prefix, 0, RT_SCOPE_UNIVERSE]);
        m.buf.extend_from_slice(&index.to_ne_bytes());
        m.attr(IFA_LOCAL, &address.octets());
        m.attr(IFA_ADDRESS, &address.octets());
        self.request(m)
    }

    /// Adds the default route via `gateway`.
    pub(crate) fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        m.buf.extend_from_slice(&[
            AF_INET,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ]);
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        m.attr(RTA_GATEWAY, &gateway.octets());
        self.request(m)
    }

    /// Sends `message` and waits for the kernel's acknowledgement.
    fn request(&mut self, message: Message) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = message.finish(seq);
        send(self.fd.as_raw_fd(), &bytes, MsgFlags::empty())?;
        let mut reply = vec![0u8; 8192];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut reply, MsgFlags::empty())?;
            if let Some(result) = ack_of(&reply[..n], seq) {
                return result;
            }
        }
    }
}

impl Message {
    /// A request of type `kind` with `flags` (besides request and ack).
    fn new(kind: u16, flags: u16) -> Message {
        let mut buf = Vec::with_capacity(256);
        // struct nlmsghdr: len (patched in `finish`), type, flags, seq (patched), pid.
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Message {
            buf,
            open: Vec::new(),
        }
    }

    /// A link request about link `index` (0: named by an attribute, or a new link) whose
    /// `flags` (only `IFF_UP` here) are set.
    fn link(kind: u16, flags: u16, index: u32, up: u32) -> Message {
        let mut m = Message::new(kind, flags);
        m.ifinfo(index, up);
        m
    }

    /// struct ifinfomsg: family, pad, type, index, flags, change (the flags being set).
    fn ifinfo(&mut self, index: u32, up: u32) {
        self.buf.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&up.to_ne_bytes());
        self.buf.extend_from_slice(&up.to_ne_bytes());
    }

    /// An attribute holding `data`, padded to 4 bytes.
    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).expect("netlink attributes here are small");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    fn attr_str(&mut self, kind: u16, text: &str) {
        let mut data = text.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data);
    }

    /// Opens a nested attribute; [`Message::end`] closes it.
    fn begin(&mut self, kind: u16) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        let start = self.open.pop().expect("end matches a begin");
        let len = u16::try_from(self.buf.len() - start).expect("netlink nests here are small");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// The bytes to send, with length and sequence number filled in.
    fn finish(mut self, seq: u32) -> Vec<u8> {
        assert!(self.open.is_empty(), "every nest is closed");
        let len = u32::try_from(self.buf.len()).expect("small message");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// The outcome carried by the acknowledgement of request `seq` in `reply`, if it holds one:
/// an `NLMSG_ERROR` message whose error is 0 (success) or a negative errno.
fn ack_of(reply: &[u8], seq: u32) -> Option<io::Result<()>> {
    let mut at = 0;
    while at + 16 <= reply.len() {
        let field = |o: usize| -> u32 {
            u32::from_ne_bytes(reply[at + o..at + o + 4].try_into().expect("4 bytes"))
        };
        let len = field(0) as usize;
        let kind = u16::from_ne_bytes([reply[at + 4], reply[at + 5]]);
        if len < 16 || at + len > reply.len() {
            return Some(Err(io::Error::other("malformed netlink reply")));
        }
        if kind == NLMSG_ERROR && field(8) == seq && len >= 20 {
            let errno = i32::from_ne_bytes(field(16).to_ne_bytes());
            return Some(if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            });
        }
        at += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_are_sized_and_padded() {
        let mut m = Message::link(RTM_NEWLINK, NLM_F_CREATE, 0, IFF_UP);
        m.attr_str(IFLA_IFNAME, "br0");
        m.begin(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "bridge");
        m.end();
        let bytes = m.finish(7);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 7);
        // header 16 + ifinfomsg 16, then IFLA_IFNAME: 4 + "br0\0" = 8.
        assert_eq!(&bytes[32..36], &[8, 0, 3, 0]);
        assert_eq!(&bytes[36..40], b"br0\0");
        // IFLA_LINKINFO (nested): 4 + IFLA_INFO_KIND (4 + "bridge\0" = 11, padded to 12).
        assert_eq!(u16::from_ne_bytes([bytes[40], bytes[41]]), 4 + 11 + 1);
        assert_eq!(
            u16::from_ne_bytes([bytes[42], bytes[43]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
        assert_eq!(bytes.len(), 40 + 16);
    }

    #[test]
    fn acks_and_errors_are_read() {
        let reply = |seq: u32, errno: i32| {
            let mut r = Vec::new();
            r.extend_from_slice(&36u32.to_ne_bytes());
            r.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            r.extend_from_slice(&0u16.to_ne_bytes());
            r.extend_from_slice(&seq.to_ne_bytes());
            r.extend_from_slice(&0u32.to_ne_bytes());
            r.extend_from_slice(&errno.to_ne_bytes());
            r.extend_from_slice(&[0; 16]);
            r
        };
        assert!(matches!(ack_of(&reply(3, 0), 3), Some(Ok(()))));
        let err = ack_of(&reply(3, -17), 3).unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(17));
        assert!(ack_of(&reply(2, 0), 3).is_none());
    }
}
