//! The control plane's side of the fleet: which routers are connected, which version each has
//! applied, and the two-phase publish that makes a route change in force only once every live
//! router has acknowledged it.
//!
//! A publish assigns the next version and wakes every router's stream, which sends the table;
//! then it waits until each connected router that is not fenced has acknowledged that version
//! (or a later one). A router that misses the deadline is *fenced*: it is told so, stops taking
//! new connections, and counts as out of the fleet until it acknowledges the current version,
//! so one stuck router never blocks deployments. A router that is not connected at all keeps
//! serving the last table it applied (the data plane outlives the control plane); it gets the
//! current table the moment it reconnects.
//!
//! Versions are numbered within a *generation* (a random id per control-plane process), so a
//! restarted control plane starting again at version 1 is never mistaken for an old one.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

/// What `molt cluster status` shows of the fleet is one of the API's records.
pub use molt_wire::{FleetStatus, RouterStatus};

use crate::wire::{Ack, EnvCounts, Event, Hello, Probe, ProbeReport, RouterReport, TableSpec};

/// How the fleet waits.
#[derive(Debug, Clone, Copy)]
pub struct FleetConfig {
    /// How long a publish waits for every live router before fencing the late ones.
    pub ack_deadline: Duration,
    /// How often an idle stream carries a ping (routers reconnect after three missed).
    pub ping_interval: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            ack_deadline: Duration::from_secs(5),
            ping_interval: Duration::from_secs(2),
        }
    }
}

/// The routers of one control plane.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    generation: u64,
    current: watch::Sender<Arc<Published>>,
    state: Mutex<State>,
    /// Woken on every acknowledgement, report, connection and disconnection.
    changed: Notify,
    /// Set when the control plane stops: every stream ends (routers reconnect to the next one).
    closed: watch::Sender<bool>,
}

/// A version of the table, serialized once for every stream.
#[derive(Debug)]
struct Published {
    version: u64,
    /// The `Event::Table` line.
    line: Bytes,
}

#[derive(Debug, Default)]
struct State {
    routers: BTreeMap<String, Member>,
    probes: HashMap<u64, oneshot::Sender<ProbeReport>>,
    next_probe: u64,
    next_session: u64,
    /// Where the next probe goes (round robin over eligible routers).
    probe_cursor: usize,
}

#[derive(Debug)]
struct Member {
    listen: String,
    acked: u64,
    fenced: bool,
    /// The stream that currently speaks for this router (a reconnect replaces it).
    session: Option<Session>,
    last_seen: Instant,
    report: RouterReport,
}

#[derive(Debug)]
struct Session {
    id: u64,
    events: mpsc::UnboundedSender<Event>,
}

/// What a publish achieved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The version published.
    pub version: u64,
    /// Routers that acknowledged it.
    pub acknowledged: Vec<String>,
    /// Routers fenced for missing the deadline.
    pub fenced: Vec<String>,
    /// From publish to the last acknowledgement (or the deadline), in milliseconds.
    pub elapsed_ms: u64,
}

/// Why a health check run through the fleet has no status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No router is connected (and in the fleet) to run it: nothing is known of the instance.
    #[error("no router is connected to run the health check")]
    NoRouter,
    /// The router that was asked went away or never reported: nothing is known either.
    #[error("router {0} did not report the health check")]
    RouterLost(String),
    /// The router ran it and the instance did not answer.
    #[error("{why} (checked by router {router})")]
    NoAnswer {
        /// The router that ran the check.
        router: String,
        /// Why there was no answer.
        why: String,
    },
}

impl ProbeError {
    /// Whether the check says nothing of the instance (no router ran it to the end).
    pub fn is_unknown(&self) -> bool {
        !matches!(self, ProbeError::NoAnswer { .. })
    }
}

/// One router's open stream: the lines to send it.
#[derive(Debug)]
pub struct Subscription {
    fleet: Arc<Fleet>,
    router: String,
    session: u64,
    table: watch::Receiver<Arc<Published>>,
    events: mpsc::UnboundedReceiver<Event>,
    ping: tokio::time::Interval,
    sent_version: u64,
    closed: watch::Receiver<bool>,
}

impl Fleet {
    /// A fleet with no router yet, at version 0 (an empty table).
    pub fn new(config: FleetConfig) -> Arc<Fleet> {
        let generation = rand_generation();
        let initial = Published::new(generation, 0, &TableSpec::new());
        let (current, _) = watch::channel(Arc::new(initial));
        Arc::new(Fleet {
            config,
            generation,
            current,
            state: Mutex::default(),
            changed: Notify::new(),
            closed: watch::channel(false).0,
        })
    }

    /// Ends every router's stream, now and for streams opened later: the control plane is
    /// stopping (its HTTP server waits for open responses, and a stream never ends by itself).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// This control plane's generation (changes with every start).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The version in force.
    pub fn version(&self) -> u64 {
        self.current.borrow().version
    }

    /// Publishes `table` as the next version and waits until every live router has applied
    /// it (fencing those that miss the deadline).
    pub async fn publish(&self, table: &TableSpec) -> Publication {
        let started = Instant::now();
        let version = {
            // The version is assigned and sent under the state lock, so acknowledgements
            // cannot overtake it.
            let _state = self.lock();
            let version = self.current.borrow().version + 1;
            self.current
                .send_replace(Arc::new(Published::new(self.generation, version, table)));
            version
        };
        let deadline = tokio::time::Instant::now() + self.config.ack_deadline;
        loop {
            let changed = self.changed.notified();
            let waiting = self.waiting_for(version);
            if waiting.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                self.fence(&waiting, version);
                break;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        let state = self.lock();
        let acknowledged = state
            .routers
            .iter()
            .filter(|(_, m)| m.acked >= version)
            .map(|(name, _)| name.clone())
            .collect();
        let fenced = state
            .routers
            .iter()
            .filter(|(_, m)| m.fenced)
            .map(|(name, _)| name.clone())
            .collect();
        Publication {
            version,
            acknowledged,
            fenced,
            elapsed_ms: millis(started.elapsed()),
        }
    }

    /// Opens the stream of router `hello.router` (replacing an older stream of the same
    /// router). Its first line is the current table.
    pub fn subscribe(self: &Arc<Self>, hello: &Hello) -> Subscription {
        let (events, receiver) = mpsc::unbounded_channel();
        let session = {
            let mut state = self.lock();
            state.next_session += 1;
            let id = state.next_session;
            let member = state
                .routers
                .entry(hello.router.clone())
                .or_insert_with(|| Member {
                    listen: String::new(),
                    acked: 0,
                    fenced: false,
                    session: None,
                    last_seen: Instant::now(),
                    report: RouterReport::default(),
                });
            member.listen = hello.listen.clone();
            member.session = Some(Session { id, events });
            member.last_seen = Instant::now();
            id
        };
        info!(router = %hello.router, listen = %hello.listen, has = hello.version, "router connected");
        self.changed.notify_waiters();
        let mut table = self.current.subscribe();
        table.mark_changed();
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Subscription {
            fleet: Arc::clone(self),
            router: hello.router.clone(),
            session,
            table,
            events: receiver,
            ping,
            sent_version: 0,
            closed: self.closed.subscribe(),
        }
    }

    /// Records that a router applied a version; a fenced router that caught up is back.
    pub fn acknowledge(&self, ack: &Ack) {
        if ack.generation != self.generation {
            return;
        }
        let current = self.version();
        let mut state = self.lock();
        let Some(member) = state.routers.get_mut(&ack.router) else {
            return;
        };
        member.acked = member.acked.max(ack.version);
        member.last_seen = Instant::now();
        if member.fenced && member.acked >= current {
            member.fenced = false;
            info!(router = %ack.router, version = ack.version, "router caught up; back in the fleet");
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Records a router's counters.
    pub fn report(&self, report: RouterReport) {
        if report.generation != self.generation {
            return;
        }
        let mut state = self.lock();
        if let Some(member) = state.routers.get_mut(&report.router) {
            member.last_seen = Instant::now();
            member.report = report;
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Runs a health check of `addr` through a router of the fleet (for instances on a network
    /// only the routers reach). The status the instance answered, or why there is none.
    pub async fn probe(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<u16, ProbeError> {
        let (answer, waiting) = oneshot::channel();
        let (id, router) = {
            let mut state = self.lock();
            let eligible: Vec<(&String, &Member)> = state
                .routers
                .iter()
                .filter(|(_, m)| m.session.is_some() && !m.fenced)
                .collect();
            if eligible.is_empty() {
                return Err(ProbeError::NoRouter);
            }
            let (name, member) = eligible[state.probe_cursor % eligible.len()];
            let name = name.clone();
            let sender = member
                .session
                .as_ref()
                .map(|s| s.events.clone())
                .expect("eligible routers have a session");
            state.probe_cursor = state.probe_cursor.wrapping_add(1);
            state.next_probe += 1;
            let id = state.next_probe;
            state.probes.insert(id, answer);
            let probe = Event::Probe(Probe {
                id,
                addr,
                path: path.to_owned(),
                timeout_ms: millis(timeout),
            });
            if sender.send(probe).is_err() {
                state.probes.remove(&id);
                return Err(ProbeError::RouterLost(name));
            }
            (id, name)
        };
        // The router's own timeout, plus the round trips.
        let outcome = tokio::time::timeout(timeout + Duration::from_secs(2), waiting).await;
        self.lock().probes.remove(&id);
        match outcome {
            Ok(Ok(ProbeReport {
                status: Some(status),
                ..
            })) => Ok(status),
            Ok(Ok(ProbeReport { error, .. })) => Err(ProbeError::NoAnswer {
                router,
                why: error.unwrap_or_else(|| "no answer".to_owned()),
            }),
            Ok(Err(_)) | Err(_) => Err(ProbeError::RouterLost(router)),
        }
    }

    /// Hands a probe's result to whoever waits for it.
    pub fn probe_answered(&self, id: u64, report: ProbeReport) {
        if let Some(waiting) = self.lock().probes.remove(&id) {
            let _ = waiting.send(report);
        }
    }

    /// Routers, their versions and lag.
    pub fn status(&self) -> FleetStatus {
        let version = self.version();
        let state = self.lock();
        FleetStatus {
            version,
            routers: state
                .routers
                .iter()
                .map(|(name, m)| RouterStatus {
                    name: name.clone(),
                    listen: m.listen.clone(),
                    connected: m.session.is_some(),
                    fenced: m.fenced,
                    acknowledged: m.acked,
                    lag: version.saturating_sub(m.acked),
                    last_seen_ms: millis(m.last_seen.elapsed()),
                })
                .collect(),
        }
    }

    /// Whether any router is connected.
    pub fn has_routers(&self) -> bool {
        self.lock().routers.values().any(|m| m.session.is_some())
    }

    /// The counters of environment `env` summed over the routers' latest reports.
    pub fn env_counts(&self, env: &str) -> EnvCounts {
        let state = self.lock();
        let mut total = EnvCounts::default();
        for member in state.routers.values() {
            if let Some(counts) = member.report.envs.get(env) {
                total += *counts;
            }
        }
        total
    }

    /// True when every connected router has reported, at `version` or later, no request of
    /// `env` in flight: after a swap that no router still routes to `env`, its instances may
    /// stop.
    pub fn is_drained(&self, env: &str, version: u64) -> bool {
        let state = self.lock();
        state
            .routers
            .values()
            .filter(|m| m.session.is_some() && !m.fenced)
            .all(|m| {
                m.report.version >= version
                    && m.report.envs.get(env).is_none_or(|c| c.in_flight == 0)
            })
    }

    /// Waits until something in the fleet changes (an acknowledgement, a report, a router
    /// coming or going), or `timeout`.
    pub async fn changed(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.changed.notified()).await;
    }

    fn waiting_for(&self, version: u64) -> Vec<String> {
        self.lock()
            .routers
            .iter()
            .filter(|(_, m)| m.session.is_some() && !m.fenced && m.acked < version)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn fence(&self, routers: &[String], version: u64) {
        let mut state = self.lock();
        for name in routers {
            if let Some(member) = state.routers.get_mut(name) {
                if member.acked >= version {
                    continue;
                }
                member.fenced = true;
                warn!(router = %name, version, acknowledged = member.acked, "router missed the deadline; fenced until it catches up");
                if let Some(session) = &member.session {
                    let _ = session.events.send(Event::Fenced { version });
                }
            }
        }
    }

    fn disconnect(&self, router: &str, session: u64) {
        let mut state = self.lock();
        if let Some(member) = state.routers.get_mut(router) {
            if member.session.as_ref().is_some_and(|s| s.id == session) {
                member.session = None;
                info!(router = %router, "router disconnected");
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Published {
    fn new(generation: u64, version: u64, table: &TableSpec) -> Self {
        let event = Event::Table {
            generation,
            version,
            table: table.clone(),
        };
        let mut line = serde_json::to_vec(&event).expect("a table serializes");
        line.push(b'\n');
        Self {
            version,
            line: Bytes::from(line),
        }
    }
}

impl Subscription {
    /// The next line for the router: a new table, a probe, a fence or a ping; `None` once
    /// the control plane is stopping (the stream ends).
    pub async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.closed.changed() => {}
                changed = self.table.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let published = Arc::clone(&self.table.borrow_and_update());
                    if published.version > self.sent_version || self.sent_version == 0 {
                        self.sent_version = published.version;
                        return Some(published.line.clone());
                    }
                }
                Some(event) = self.events.recv() => {
                    let mut line = serde_json::to_vec(&event).expect("an event serializes");
                    line.push(b'\n');
                    return Some(Bytes::from(line));
                }
                _ = self.ping.tick() => return Some(ping_line()),
            }
        }
    }

    /// The router this stream belongs to.
    pub fn router(&self) -> &str {
        &self.router
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fleet.disconnect(&self.router, self.session);
    }
}

fn ping_line() -> Bytes {
    Bytes::from_static(b"{\"type\":\"ping\"}\n")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A generation id: the clock and the process id, mixed.
fn rand_generation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x.max(1)
}
