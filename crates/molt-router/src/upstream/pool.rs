//! Idle upstream connections, kept per upstream address and tokio runtime so a connection is
//! only ever driven by the runtime that opened it (see [`shard`]). They are dropped after
//! [`POOL_IDLE_TIMEOUT`], and when a publish stops routing to their address. One pool holds
//! hyper's HTTP/1.1 connections ([`super::connection`]), another the plain sockets of the
//! direct path's exchange ([`Socket`]).
//!
//! Both pools count the connections they open against one cap per address ([`super::cap`]).
//! A request takes, in this order: an idle connection of its own runtime; a new connection,
//! if the address is under its cap; a new connection in place of an idle one that another
//! shard or the other pool holds (closed for it); or it waits, up to the queue timeout, for
//! a connection to be freed, and then gives up ([`UpstreamError::AtLimit`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::cap::{Cap, Connections, Slot};
use super::error::UpstreamError;

/// How long idle upstream connections stay in the pool.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per thread and upstream address.
const MAX_IDLE_PER_ADDRESS: usize = 1024;

/// Idle HTTP/1.1 connections, by upstream address and worker runtime.
pub(crate) struct Pool<C> {
    idle: Mutex<IdleSet<C>>,
    connect_timeout: Duration,
    cap: Cap,
    /// The router's other pool: its idle connections count against the same caps, so one
    /// may be closed to make room for a connection of this pool.
    sibling: OnceLock<Weak<dyn Evict>>,
}

/// What a pool keeps.
pub(crate) trait Pooled: Sized + Send {
    /// The upstream address it is connected to.
    fn addr(&self) -> SocketAddr;
    /// Whether an idle connection can take a request: still open, nothing unexpected read.
    fn is_usable(&mut self) -> bool;
    /// Its place under its address's cap.
    fn slot(&self) -> &Slot;
}

/// A pool whose idle connections can be closed to make room under an address's cap.
pub(crate) trait Evict: Send + Sync {
    /// Closes one idle connection to `addr` (the oldest of a shard), of any shard but
    /// `spare`; whether there was one.
    fn evict_idle(&self, addr: SocketAddr, spare: Option<Shard>) -> bool;
}

/// Where a request goes: an upstream address, the connections open to it (counted against
/// the cap), and when the request's own time runs out (a wait at the cap ends by then).
#[derive(Clone, Copy)]
pub(crate) struct Destination<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) connections: &'a Arc<Connections>,
    pub(crate) deadline: tokio::time::Instant,
}

/// A connection for one exchange: an idle one, or the slot to open a new one with.
pub(crate) enum Acquired<C> {
    Idle(C),
    New(Slot),
}

/// A plain keep-alive socket to an upstream, for the direct path's own HTTP/1.1 exchange.
pub(crate) struct Socket {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
    /// Last, so the socket is closed before its place under the cap is given back.
    pub(crate) slot: Slot,
}

struct IdleSet<C> {
    connections: HashMap<SocketAddr, Shards<C>, BuildHasherDefault<AddrHasher>>,
    /// The addresses the published table routes to (`None` before the first publish): a
    /// connection to any other address is closed instead of kept once its exchange ends.
    routed: Option<HashSet<SocketAddr>>,
}

/// The idle connections to one address, by shard (as many as the router has runtimes); a
/// shard's queue is kept when it runs empty.
struct Shards<C>(Vec<(Shard, VecDeque<Idle<C>>)>);

struct Idle<C> {
    connection: C,
    since: Instant,
}

/// The pool's hasher: its keys are upstream addresses from the route table (never client
/// input), so a multiply-rotate hash is enough and costs a fraction of SipHash on the request
/// path.
#[derive(Default)]
struct AddrHasher(u64);

/// See [`shard`].
pub(crate) type Shard = tokio::runtime::Id;

impl<C> Default for IdleSet<C> {
    fn default() -> Self {
        Self {
            connections: HashMap::default(),
            routed: None,
        }
    }
}

impl<C: Pooled> Pool<C> {
    pub(crate) fn new(connect_timeout: Duration, cap: Cap) -> Self {
        Self {
            idle: Mutex::default(),
            connect_timeout,
            cap,
            sibling: OnceLock::new(),
        }
    }

    /// Makes `sibling`'s idle connections available to close when this pool needs room.
    pub(crate) fn pair_with(&self, sibling: Weak<dyn Evict>) {
        let _ = self.sibling.set(sibling);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleSet<C>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops idle connections to addresses not in `routed`, and keeps none to them from now on.
    pub(crate) fn retain(&self, routed: &HashSet<SocketAddr>) {
        let dropped: Vec<Shards<C>> = {
            let mut idle = self.lock();
            let gone: Vec<SocketAddr> = idle
                .connections
                .keys()
                .filter(|addr| !routed.contains(addr))
                .copied()
                .collect();
            idle.routed = Some(routed.clone());
            gone.iter()
                .filter_map(|addr| idle.connections.remove(addr))
                .collect()
        };
        // Closed outside the lock.
        drop(dropped);
    }

    /// A connection for `destination` at once, when there is one: the most recently used
    /// idle one of this runtime that is still usable, else a slot under the address's cap to
    /// open one with. `None` when the address is at its cap: then [`Pool::acquire_at_cap`].
    pub(crate) fn acquire_now(&self, destination: Destination<'_>) -> Option<Acquired<C>> {
        if let Some(connection) = self.checkout(destination.addr) {
            return Some(Acquired::Idle(connection));
        }
        let slot = destination.connections.try_open(self.cap.max)?;
        Some(Acquired::New(slot))
    }

    /// A connection for `destination`, whose address is at its cap: an idle connection of
    /// this runtime or a freed slot, else a slot made by closing an idle connection another
    /// shard or the other pool holds, else whichever of those comes first while it waits, up
    /// to the queue timeout and the request's deadline. Boxed, so that a request that never
    /// meets the cap does not carry the wait in its future.
    pub(crate) fn acquire_at_cap<'a>(
        &'a self,
        destination: Destination<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<Acquired<C>, UpstreamError>> + Send + 'a>> {
        Box::pin(async move {
            let Destination {
                addr,
                connections,
                deadline,
            } = destination;
            // Never past the request's own deadline, so the request gets this answer (503),
            // not its timeout's.
            let deadline = deadline.min(tokio::time::Instant::now() + self.cap.queue_timeout);
            let waiting = connections.wait();
            loop {
                let freed = waiting.freed();
                let mut freed = std::pin::pin!(freed);
                freed.as_mut().enable();
                if let Some(acquired) = self.acquire_now(destination) {
                    return Ok(acquired);
                }
                if self.evict_idle(addr, shard()) || self.sibling_evicts(addr) {
                    continue;
                }
                if tokio::time::timeout_at(deadline, freed).await.is_err() {
                    return Err(UpstreamError::AtLimit(addr));
                }
            }
        })
    }

    fn sibling_evicts(&self, addr: SocketAddr) -> bool {
        self.sibling
            .get()
            .and_then(Weak::upgrade)
            .is_some_and(|sibling| sibling.evict_idle(addr, None))
    }

    /// The most recently used idle connection to `addr` of this runtime that is still usable.
    pub(crate) fn checkout(&self, addr: SocketAddr) -> Option<C> {
        let shard = shard()?;
        loop {
            // An empty queue stays (until its address is no longer routed): the next
            // checkin would only hash the address and allocate it again.
            let idle = self.lock().connections.get_mut(&addr)?.pop_newest(shard)?;
            if idle.since.elapsed() >= POOL_IDLE_TIMEOUT {
                continue;
            }
            let mut connection = idle.connection;
            if connection.is_usable() {
                return Some(connection);
            }
        }
    }

    /// Keeps `connection` for the next request to its address (unless the table no longer
    /// routes there), and tells a request waiting for a connection to that address.
    pub(crate) fn checkin(&self, connection: C) {
        let now = Instant::now();
        let addr = connection.addr();
        // Outside a runtime (a body dropped after its runtime stopped) the socket has no
        // runtime left to drive it: close it.
        let Some(shard) = shard() else { return };
        let dropped = {
            let mut pool = self.lock();
            if pool
                .routed
                .as_ref()
                .is_some_and(|routed| !routed.contains(&addr))
            {
                return;
            }
            let queue = pool
                .connections
                .entry(addr)
                .or_insert_with(|| Shards(Vec::new()))
                .of(shard);
            // The oldest are at the front: drop those past the idle timeout.
            let mut dropped = Vec::new();
            while queue
                .front()
                .is_some_and(|idle| now.duration_since(idle.since) >= POOL_IDLE_TIMEOUT)
            {
                dropped.extend(queue.pop_front());
            }
            if queue.len() >= MAX_IDLE_PER_ADDRESS {
                dropped.extend(queue.pop_front());
            }
            // A waiting request takes the lock to look, so it sees this connection.
            connection.slot().connections().freed_one();
            queue.push_back(Idle {
                connection,
                since: now,
            });
            dropped
        };
        // Closed outside the lock.
        drop(dropped);
    }

    /// A new TCP connection to `addr` (no delay), within the connect timeout.
    pub(crate) async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_elapsed| {
                UpstreamError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                ))
            })?
            .map_err(UpstreamError::Connect)?;
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        Ok(stream)
    }
}

impl<C: Pooled> Evict for Pool<C> {
    fn evict_idle(&self, addr: SocketAddr, spare: Option<Shard>) -> bool {
        let evicted = {
            let mut pool = self.lock();
            let Some(shards) = pool.connections.get_mut(&addr) else {
                return false;
            };
            shards.pop_oldest_except(spare)
        };
        // Closed outside the lock: its slot is free once this returns.
        evicted.is_some()
    }
}

impl<C> Shards<C> {
    /// The queue of `shard`, created when missing.
    fn of(&mut self, shard: Shard) -> &mut VecDeque<Idle<C>> {
        let at = match self.0.iter().position(|(id, _)| *id == shard) {
            Some(at) => at,
            None => {
                self.0.push((shard, VecDeque::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    /// The most recently returned connection of `shard`.
    fn pop_newest(&mut self, shard: Shard) -> Option<Idle<C>> {
        let (_, queue) = self.0.iter_mut().find(|(id, _)| *id == shard)?;
        queue.pop_back()
    }

    /// The oldest connection of the first shard other than `spare` that has one.
    fn pop_oldest_except(&mut self, spare: Option<Shard>) -> Option<Idle<C>> {
        let (_, queue) = self
            .0
            .iter_mut()
            .find(|(id, queue)| Some(*id) != spare && !queue.is_empty())?;
        queue.pop_front()
    }
}

impl Pooled for Socket {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Open with nothing to read: a readable idle socket was closed by the upstream or holds
    /// bytes nobody asked for.
    fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    fn slot(&self) -> &Slot {
        &self.slot
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The pool's shard for the current task: its tokio runtime. A socket is registered with the
/// reactor of the runtime that opened it and only that runtime's threads can drive it, so an
/// idle connection is kept for, and taken out by, tasks of that runtime alone (another runtime
/// may only close it, to make room under the cap). With one current-thread runtime per thread
/// (`Router::serve_on_threads`) that is one shard per thread; on a multi-thread runtime
/// (`Router::serve` on `molt serve`'s shared runtime) all its workers share one shard.
/// (Keying by OS thread there let work stealing move connections into shards that no later
/// checkout looked at: a thread that returned more connections than it took filled its shard
/// to the idle cap while the others kept opening new ones, over a thousand sockets to one
/// instance for 64 clients.)
fn shard() -> Option<Shard> {
    tokio::runtime::Handle::try_current()
        .ok()
        .map(|runtime| runtime.id())
}
