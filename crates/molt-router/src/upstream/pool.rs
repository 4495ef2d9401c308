//! Idle upstream connections, kept per tokio runtime and upstream address so a connection is
//! only ever driven by the runtime that opened it (see [`shard`]). They are dropped after
//! [`POOL_IDLE_TIMEOUT`], and when a publish stops routing to their address. One pool holds
//! hyper's HTTP/1.1 connections ([`super::connection`]), another the plain sockets of the
//! direct path's exchange ([`Socket`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::error::UpstreamError;

/// How long idle upstream connections stay in the pool.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections kept per thread and upstream address.
const MAX_IDLE_PER_ADDRESS: usize = 1024;

/// Idle HTTP/1.1 connections, by worker thread and upstream address.
pub(crate) struct Pool<C> {
    idle: Mutex<IdleSet<C>>,
    connect_timeout: Duration,
}

/// What a pool keeps.
pub(crate) trait Pooled: Sized {
    /// The upstream address it is connected to.
    fn addr(&self) -> SocketAddr;
    /// Whether an idle connection can take a request: still open, nothing unexpected read.
    fn is_usable(&mut self) -> bool;
}

/// A plain keep-alive socket to an upstream, for the direct path's own HTTP/1.1 exchange.
pub(crate) struct Socket {
    pub(crate) stream: TcpStream,
    pub(crate) addr: SocketAddr,
}

struct IdleSet<C> {
    connections: HashMap<(Shard, SocketAddr), VecDeque<Idle<C>>, BuildHasherDefault<AddrHasher>>,
    /// The addresses the published table routes to (`None` before the first publish): a
    /// connection to any other address is closed instead of kept once its exchange ends.
    routed: Option<HashSet<SocketAddr>>,
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

/// The pool's hasher: its keys are a runtime's id and an upstream address from the route
/// table (never client input), so a multiply-rotate hash is enough and costs a fraction of
/// SipHash on the request path.
#[derive(Default)]
struct AddrHasher(u64);

/// See [`shard`].
type Shard = tokio::runtime::Id;

impl<C> Default for IdleSet<C> {
    fn default() -> Self {
        Self {
            connections: HashMap::default(),
            routed: None,
        }
    }
}

impl<C: Pooled> Pool<C> {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::default(),
            connect_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleSet<C>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops idle connections to addresses not in `routed`, and keeps none to them from now on.
    pub(crate) fn retain(&self, routed: &HashSet<SocketAddr>) {
        let mut idle = self.lock();
        idle.connections
            .retain(|(_, addr), _| routed.contains(addr));
        idle.routed = Some(routed.clone());
    }

    /// The most recently used idle connection to `addr` of this thread that is still usable.
    pub(crate) fn checkout(&self, addr: SocketAddr) -> Option<C> {
        let key = (shard()?, addr);
        loop {
            let idle = {
                let mut pool = self.lock();
                let queue = pool.connections.get_mut(&key)?;
                let idle = queue.pop_back();
                if queue.is_empty() {
                    pool.connections.remove(&key);
                }
                idle?
            };
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
    /// routes there).
    pub(crate) fn checkin(&self, connection: C) {
        let now = Instant::now();
        let addr = connection.addr();
        // Outside a runtime (a body dropped after its runtime stopped) the socket has no
        // runtime left to drive it: close it.
        let Some(shard) = shard() else { return };
        let mut pool = self.lock();
        if pool
            .routed
            .as_ref()
            .is_some_and(|routed| !routed.contains(&addr))
        {
            return;
        }
        let queue = pool.connections.entry((shard, addr)).or_default();
        // The oldest are at the front: drop those past the idle timeout.
        while queue
            .front()
            .is_some_and(|idle| now.duration_since(idle.since) >= POOL_IDLE_TIMEOUT)
        {
            queue.pop_front();
        }
        if queue.len() >= MAX_IDLE_PER_ADDRESS {
            queue.pop_front();
        }
        queue.push_back(Idle {
            connection,
            since: now,
        });
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
/// idle connection is kept for, and taken out by, tasks of that runtime alone. With one
/// current-thread runtime per thread (`Router::serve_on_threads`) that is one shard per
/// thread; on a multi-thread runtime (`Router::serve` on `molt serve`'s shared runtime) all
/// its workers share one shard. (Keying by OS thread there let work stealing move
/// connections into shards that no later checkout looked at: a thread that returned more
/// connections than it took filled its shard to the idle cap while the others kept opening
/// new ones, over a thousand sockets to one instance for 64 clients.)
fn shard() -> Option<Shard> {
    tokio::runtime::Handle::try_current()
        .ok()
        .map(|runtime| runtime.id())
}
