//! Per-environment request counters.
//!
//! The controller decides when an environment's instances may stop by reading these, so
//! `in_flight` must be exact: it is raised while the request still holds the route table
//! and lowered only when the response body is finished or dropped ([`InFlight`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::budget::RetryTokens;
use crate::presence::EnvPresence;
use crate::traffic::TrafficCounters;

/// Counters of one environment, snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvStats {
    /// Requests assigned to the environment.
    pub accepted: u64,
    /// Assigned requests whose response has not been fully sent yet.
    pub in_flight: u64,
    /// Responses relayed from an upstream (any status).
    pub answered: u64,
    /// Requests the router ended itself: its own error answers (400 for a request body
    /// that broke off, 413, 502, 503, 504) and requests that ended without any answer (the
    /// client went away first). Once `in_flight` is 0, `accepted == answered + failed`.
    pub failed: u64,
}

/// Live counters of one environment, shared by every route to it.
#[derive(Debug, Default)]
pub(crate) struct EnvCounters {
    accepted: AtomicU64,
    in_flight: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    /// Requests waiting on this environment's hold (not yet assigned, so not `accepted`).
    waiting: AtomicU64,
    /// Whether the published table routes to this environment; upgraded connections watch it.
    presence: EnvPresence,
    /// Status classes, latency, shadow and resilience figures.
    pub(crate) traffic: TrafficCounters,
    /// What this environment may still spend on retries.
    pub(crate) retry_tokens: RetryTokens,
}

/// Marks one request as in flight for its environment (and, once it is sent, for the upstream
/// instance that has it) until dropped.
///
/// It also settles the request's outcome: [`InFlight::answered`] or [`InFlight::failed`]
/// counts it once, and a request dropped before either (its client went away, its future
/// was cancelled) is counted failed then. So every accepted request ends up answered or
/// failed, exactly once, which the drain and the acknowledged swap rely on.
#[derive(Debug)]
pub(crate) struct InFlight {
    counters: Arc<EnvCounters>,
    load: Option<UpstreamLoad>,
    settled: bool,
}

/// One request counted against one upstream address's load until dropped.
#[derive(Debug)]
pub(crate) struct UpstreamLoad(Arc<AtomicU64>);

/// Upstream address -> requests in flight to it, shared by every route (of every table) that
/// names the address, so picks weigh an instance's whole load and the controller can tell
/// when one instance has drained. Locked only when publishing and when asked.
///
/// Invariant: an entry's `Arc` is cloned only from the map (under the lock) or from another
/// clone, so an entry whose strong count is 1 is held by nothing else: no table, no route a
/// request still uses, no request in flight.
#[derive(Debug, Default)]
pub(crate) struct LoadRegistry {
    upstreams: PerAddress<AtomicU64>,
}

/// State of each upstream address, created on first use and shared (one `Arc` per address)
/// by every table and route that sends to it. Locked only when publishing (and by
/// [`LoadRegistry::is_released`]), never per request.
#[derive(Debug)]
pub(crate) struct PerAddress<T>(Mutex<HashMap<SocketAddr, Arc<T>>>);

impl<T> Default for PerAddress<T> {
    fn default() -> Self {
        PerAddress(Mutex::default())
    }
}

impl<T: Default> PerAddress<T> {
    /// The state of each address (in order), created on first use.
    pub(crate) fn bind(&self, addrs: impl Iterator<Item = SocketAddr>) -> Arc<[Arc<T>]> {
        let mut map = self.lock();
        addrs
            .map(|addr| Arc::clone(map.entry(addr).or_default()))
            .collect()
    }

    /// The state of `addr`, if it was ever bound.
    pub(crate) fn get(&self, addr: SocketAddr) -> Option<Arc<T>> {
        self.lock().get(&addr).cloned()
    }

    /// Keeps the addresses for which `keep` is true.
    pub(crate) fn retain(&self, keep: impl FnMut(&SocketAddr, &mut Arc<T>) -> bool) {
        self.lock().retain(keep);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<T>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl UpstreamLoad {
    /// Counts a request against `load`.
    pub(crate) fn new(load: &Arc<AtomicU64>) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(load))
    }
}

impl Drop for UpstreamLoad {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LoadRegistry {
    /// The load counter of each address (in order), created on first use.
    pub(crate) fn bind(&self, addrs: impl Iterator<Item = SocketAddr>) -> Arc<[Arc<AtomicU64>]> {
        self.upstreams.bind(addrs)
    }

    /// Forgets the addresses not in `keep` that nothing uses any more.
    pub(crate) fn retain(&self, keep: &HashSet<SocketAddr>) {
        self.upstreams
            .retain(|addr, load| keep.contains(addr) || Arc::strong_count(load) > 1);
    }

    /// True when no table, route in use or request holds `addr` any more: nothing is or can
    /// still be sent to it.
    pub(crate) fn is_released(&self, addr: SocketAddr) -> bool {
        self.upstreams
            .lock()
            .get(&addr)
            .is_none_or(|load| Arc::strong_count(load) == 1)
    }
}

/// env id -> counters. Locked only when publishing and when reading stats, never per request.
#[derive(Debug, Default)]
pub(crate) struct StatsRegistry {
    envs: Mutex<HashMap<String, Arc<EnvCounters>>>,
}

impl EnvCounters {
    /// Counts a request as assigned to this environment; it stays in flight until the guard
    /// is dropped.
    pub(crate) fn accept(self: &Arc<Self>) -> InFlight {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            counters: Arc::clone(self),
            load: None,
            settled: false,
        }
    }

    /// Counts one request as waiting on this environment's hold until the guard is dropped.
    pub(crate) fn wait(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(Arc::clone(self))
    }

    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::SeqCst)
    }

    pub(crate) fn presence(&self) -> &EnvPresence {
        &self.presence
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn snapshot(&self) -> EnvStats {
        EnvStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            answered: self.answered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl InFlight {
    /// The counters this request is accounted to.
    pub(crate) fn counters(&self) -> &EnvCounters {
        &self.counters
    }

    /// Counts the request against the upstream it is sent to (replacing an earlier attempt's).
    pub(crate) fn sent_to(&mut self, load: UpstreamLoad) {
        self.load = Some(load);
    }

    /// Counts the request as answered by an upstream (unless its outcome was counted already).
    pub(crate) fn answered(&mut self) {
        if !std::mem::replace(&mut self.settled, true) {
            self.counters.answered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the request as failed (unless its outcome was counted already).
    pub(crate) fn failed(&mut self) {
        if !std::mem::replace(&mut self.settled, true) {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One request waiting on an environment's hold, until dropped.
#[derive(Debug)]
pub(crate) struct Waiting(Arc<EnvCounters>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Counted before `in_flight` falls, so a reader that sees it at 0 sees every outcome.
        self.failed();
        self.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StatsRegistry {
    /// The counters of `env`, created on first use.
    pub(crate) fn counters(&self, env: &str) -> Arc<EnvCounters> {
        let mut envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counters) = envs.get(env) {
            return Arc::clone(counters);
        }
        let counters = Arc::new(EnvCounters::default());
        envs.insert(env.to_owned(), Arc::clone(&counters));
        counters
    }

    /// The counters of `env` if it was ever routed to.
    pub(crate) fn get(&self, env: &str) -> Option<Arc<EnvCounters>> {
        let envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
        envs.get(env).cloned()
    }

    /// Drops the counters of `env` when `remove` approves them.
    pub(crate) fn remove_if(&self, env: &str, remove: impl FnOnce(&EnvCounters) -> bool) -> bool {
        let mut envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
        match envs.get(env) {
            Some(counters) if remove(counters) => {
                envs.remove(env);
                true
            }
            _ => false,
        }
    }

    /// Every environment's counters, sorted by environment id.
    pub(crate) fn all(&self) -> Vec<(String, Arc<EnvCounters>)> {
        let envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = envs
            .iter()
            .map(|(env, counters)| (env.clone(), Arc::clone(counters)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// A snapshot of every environment's counters, sorted by environment id.
    pub(crate) fn snapshot_all(&self) -> Vec<(String, EnvStats)> {
        let envs = self.envs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = envs
            .iter()
            .map(|(env, counters)| (env.clone(), counters.snapshot()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_follows_the_guard() {
        let registry = StatsRegistry::default();
        let counters = registry.counters("blue");
        assert!(Arc::ptr_eq(&counters, &registry.counters("blue")));
        let mut guard = counters.accept();
        guard.answered();
        guard.failed();
        assert_eq!(
            counters.snapshot(),
            EnvStats {
                accepted: 1,
                in_flight: 1,
                answered: 1,
                failed: 0
            }
        );
        drop(guard);
        assert_eq!(counters.snapshot().in_flight, 0);
        assert!(registry.get("green").is_none());
        // A request dropped before its outcome was counted is counted failed.
        drop(counters.accept());
        let stats = counters.snapshot();
        assert_eq!((stats.accepted, stats.answered, stats.failed), (2, 1, 1));
    }

    #[test]
    fn an_address_is_released_once_nothing_holds_its_load() {
        let registry = LoadRegistry::default();
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let b = SocketAddr::from(([127, 0, 0, 1], 2));
        assert!(registry.is_released(a), "never bound");
        let routed = registry.bind([a, b].into_iter());
        assert!(Arc::ptr_eq(&routed[0], &registry.bind([a].into_iter())[0]));
        assert!(!registry.is_released(a));
        let request = UpstreamLoad::new(&routed[0]);
        assert_eq!(routed[0].load(Ordering::Relaxed), 1);
        // The table stops naming `a`: the request still holds it.
        drop(routed);
        registry.retain(&HashSet::from([b]));
        assert!(!registry.is_released(a));
        drop(request);
        assert!(registry.is_released(a));
        registry.retain(&HashSet::from([b]));
        assert_eq!(registry.upstreams.lock().len(), 1);
    }
}
