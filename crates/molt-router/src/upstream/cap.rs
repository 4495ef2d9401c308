//! The cap on open connections per upstream address (`RouterConfig::max_connections_per_upstream`,
//! like nginx's `max_conns`): one count per address of every connection open to it — hyper's
//! pooled connections and the plain sockets alike, idle or lent out, on every runtime shard —
//! and the requests waiting for one when the address is at its cap.
//!
//! A connection holds a [`Slot`] from before it connects until it closes. Taking one is an
//! atomic compare-and-swap on the address's count ([`Connections::try_open`]), done only when
//! a new connection is opened; a request that reuses an idle connection never touches it. What
//! a request does at the cap (take an idle connection, close one another shard or pool holds,
//! or wait for one) is the pool's ([`super::pool`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::stats::PerAddress;

/// The open connections to one upstream address and the requests waiting for one. One `Arc`
/// per address, shared by every route that names it (bound at publish, like the address's
/// load), so a request reaches it without a lock.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    /// Connections open (or being opened) to the address.
    open: AtomicUsize,
    /// Requests waiting for a connection to the address (see [`Waiting`]).
    waiting: AtomicUsize,
    /// Woken when a connection to the address closes or goes back to a pool idle.
    freed: Notify,
}

/// One connection counted against its address's cap, from before it connects until it is
/// dropped (closed).
#[derive(Debug)]
pub(crate) struct Slot(Arc<Connections>);

/// Counts one request among those waiting for a connection to an address, until dropped.
pub(crate) struct Waiting<'a>(&'a Connections);

/// The cap and how long a request waits at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap {
    /// Most connections open to one address; 0 = no cap.
    pub(crate) max: usize,
    /// Longest wait for a connection at the cap (a request's own timeout bounds it too).
    pub(crate) queue_timeout: Duration,
}

/// The [`Connections`] of every routed address, created on first use and kept while a route
/// or an open connection holds them.
#[derive(Debug, Default)]
pub(crate) struct ConnectionRegistry {
    upstreams: PerAddress<Connections>,
}

impl Connections {
    /// A slot for a new connection, unless `max` (when not 0) are open already.
    pub(crate) fn try_open(self: &Arc<Self>, max: usize) -> Option<Slot> {
        if max == 0 {
            self.open.fetch_add(1, Ordering::SeqCst);
        } else {
            self.open
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                    (open < max).then_some(open + 1)
                })
                .ok()?;
        }
        Some(Slot(Arc::clone(self)))
    }

    /// Connections open to the address right now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A connection to the address went back to a pool idle: one waiting request may take
    /// it (or close it, from another shard or pool, and open its own).
    pub(crate) fn freed_one(&self) {
        // SeqCst with `Waiting::new` and `try_open`: either the waiter sees the free
        // connection (or slot), or this sees the waiter.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// Counts a request as waiting for a connection to the address until the guard drops.
    pub(crate) fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self)
    }
}

impl Waiting<'_> {
    /// Resolves when a connection to the address is freed. Enable it (`Notified::enable`)
    /// before looking for a connection, so a connection freed in between is not missed.
    pub(crate) fn freed(&self) -> Notified<'_> {
        self.0.freed.notified()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slot {
    /// The open connections of the slot's address.
    pub(crate) fn connections(&self) -> &Connections {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.freed_one();
    }
}

impl ConnectionRegistry {
    /// The connections of each address (in order), created on first use.
    pub(crate) fn bind(&self, addrs: impl Iterator<Item = SocketAddr>) -> Arc<[Arc<Connections>]> {
        self.upstreams.bind(addrs)
    }

    /// Forgets the addresses not in `keep` that no route, request or connection holds.
    pub(crate) fn retain(&self, keep: &HashSet<SocketAddr>) {
        self.upstreams
            .retain(|addr, connections| keep.contains(addr) || Arc::strong_count(connections) > 1);
    }

    /// Connections open to `addr` right now (0 for an address never routed).
    pub(crate) fn open_to(&self, addr: SocketAddr) -> usize {
        self.upstreams
            .get(addr)
            .map_or(0, |connections| connections.open())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_open_connections_up_to_the_cap() {
        let connections = Arc::new(Connections::default());
        let first = connections.try_open(2).expect("under the cap");
        let second = connections.try_open(2).expect("under the cap");
        assert!(connections.try_open(2).is_none(), "at the cap");
        assert_eq!(connections.open(), 2);
        drop(first);
        let third = connections.try_open(2).expect("one was closed");
        assert_eq!(connections.open(), 2);
        // No cap: counted all the same.
        let unlimited: Vec<Slot> = (0..5).filter_map(|_| connections.try_open(0)).collect();
        assert_eq!(connections.open(), 7);
        drop((second, third, unlimited));
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test]
    async fn a_closed_connection_wakes_a_waiting_request() {
        let connections = Arc::new(Connections::default());
        let slot = connections.try_open(1).expect("under the cap");
        let waiting = connections.wait();
        let freed = waiting.freed();
        let mut freed = std::pin::pin!(freed);
        freed.as_mut().enable();
        assert!(connections.try_open(1).is_none());
        drop(slot);
        tokio::time::timeout(Duration::from_secs(1), freed)
            .await
            .expect("woken by the close");
        assert!(connections.try_open(1).is_some());
    }
}
