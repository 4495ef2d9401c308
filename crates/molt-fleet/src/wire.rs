//! What travels between the control plane and its routers, as JSON.
//!
//! Down, on one long-lived response per router (newline-delimited JSON, [`Event`]): the route
//! table as a versioned snapshot whenever it changes (and at once on connect), health probes to
//! run, a fence when the router fell behind, and pings that show the stream is alive. Up, as
//! small POSTs: the version a router applied ([`Ack`]), probe results ([`ProbeReport`]), and
//! its per-environment counters ([`RouterReport`]).
//!
//! The table is a list of the same insertions the controller makes on a
//! [`RouteTable`](molt_router::RouteTable) ([`TableSpec`]): a router replays them in order and
//! gets the same table. A hold ([`Backend::held_until`]) travels as the time left, since
//! instants do not cross machines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use molt_router::{Backend, Maintenance, RouteLimits, RouteTable, Upstream};
use serde::{Deserialize, Serialize};

/// A route table as data: the insertions that build it, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    /// The insertions, replayed in order.
    pub entries: Vec<Entry>,
}

/// One insertion into a route table (see [`RouteTable`]'s methods of the same names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// [`RouteTable::insert`].
    Host {
        /// The hostname (or `*.suffix`).
        host: String,
        /// Where it goes.
        backend: BackendSpec,
    },
    /// [`RouteTable::insert_with_prefix`].
    Prefix {
        /// The hostname.
        host: String,
        /// The path prefix.
        prefix: String,
        /// Where it goes.
        backend: BackendSpec,
    },
    /// [`RouteTable::insert_split`].
    Split {
        /// The hostname.
        host: String,
        /// Backends and their weights, the first answering plain lookups.
        backends: Vec<(BackendSpec, u32)>,
    },
    /// [`RouteTable::insert_shadow`].
    Shadow {
        /// The hostname.
        host: String,
        /// Where copies go.
        backend: BackendSpec,
        /// Percentage of eligible requests copied.
        share_percent: u32,
    },
}

/// A [`Backend`] as data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    /// Environment id.
    pub env: String,
    /// The app of the environment, for access logs (absent from an older control plane).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// Instances that take traffic.
    pub upstreams: Vec<UpstreamSpec>,
    /// Set when the backend answers 503 on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceSpec>,
    /// The backend's own body limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// The backend's own response-head timeout, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_timeout_ms: Option<u64>,
    /// How much longer requests wait for upstreams when there are none, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<u64>,
}

/// One instance of a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSpec {
    /// Instance id.
    pub instance: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// A backend in maintenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceSpec {
    /// `Retry-After` in seconds.
    pub retry_after_secs: u32,
    /// What clients are told.
    pub message: String,
}

/// What the control plane sends down a router's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The route table of `version`: apply it, then acknowledge the version.
    Table {
        /// The control plane's run: versions compare only within one generation.
        generation: u64,
        /// Increases with every change within a generation.
        version: u64,
        /// The whole table.
        table: TableSpec,
    },
    /// Run a health check for the control plane (which may not reach the instances' network).
    Probe(Probe),
    /// The router missed the deadline to acknowledge `version`: it is out of the fleet and
    /// takes no new connections until it has applied it.
    Fenced {
        /// The version it must apply to come back.
        version: u64,
    },
    /// Nothing new; the stream is alive.
    Ping,
}

/// A health check to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Names the answer.
    pub id: u64,
    /// The instance.
    pub addr: SocketAddr,
    /// The path to GET.
    pub path: String,
    /// How long the instance may take, in milliseconds.
    pub timeout_ms: u64,
}

/// A router's answer to a [`Probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The router that ran it.
    pub router: String,
    /// The status the instance answered, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A router has applied a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The router.
    pub router: String,
    /// The generation of the version.
    pub generation: u64,
    /// The version now in force on it.
    pub version: u64,
}

/// A router's counters, sent every second and after each applied version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterReport {
    /// The router.
    pub router: String,
    /// The generation of the version.
    pub generation: u64,
    /// The version in force on it.
    pub version: u64,
    /// Counters per environment the router has seen.
    pub envs: BTreeMap<String, EnvCounts>,
}

/// One environment's counters on one router (see [`molt_router::EnvStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvCounts {
    /// Requests assigned.
    pub accepted: u64,
    /// Not fully answered yet.
    pub in_flight: u64,
    /// Answered by an instance.
    pub answered: u64,
    /// Errors the router made.
    pub failed: u64,
    /// Its live traffic by status class and latency, for the controller's canary and watch
    /// analysis (zero from a router older than these figures).
    #[serde(default)]
    pub live: LiveCounts,
}

/// One environment's live traffic on one router (see [`molt_router::TrafficStats`]): whole
/// numbers, so reports compare exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCounts {
    /// Responses by status class: index 0 is 1xx, … index 4 is 5xx.
    pub classes: [u64; 5],
    /// Cumulative latency histogram over [`molt_router::LATENCY_BUCKETS`], `+Inf` last.
    pub cumulative: [u64; molt_router::LATENCY_BUCKETS.len() + 1],
    /// Sum of the latencies, in microseconds.
    pub sum_micros: u64,
}

/// Who is connecting: the query of the stream request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The router's name, unique in the fleet.
    pub router: String,
    /// Where it takes client connections (for `molt cluster status`).
    #[serde(default)]
    pub listen: String,
    /// The version it serves now (0: none).
    #[serde(default)]
    pub version: u64,
}

impl TableSpec {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// See [`RouteTable::insert`].
    pub fn insert(&mut self, host: &str, backend: BackendSpec) {
        self.entries.push(Entry::Host {
            host: host.to_owned(),
            backend,
        });
    }

    /// See [`RouteTable::insert_with_prefix`].
    pub fn insert_with_prefix(&mut self, host: &str, prefix: &str, backend: BackendSpec) {
        self.entries.push(Entry::Prefix {
            host: host.to_owned(),
            prefix: prefix.to_owned(),
            backend,
        });
    }

    /// See [`RouteTable::insert_split`].
    pub fn insert_split(&mut self, host: &str, backends: Vec<(BackendSpec, u32)>) {
        self.entries.push(Entry::Split {
            host: host.to_owned(),
            backends,
        });
    }

    /// See [`RouteTable::insert_shadow`].
    pub fn insert_shadow(&mut self, host: &str, backend: BackendSpec, share_percent: u32) {
        self.entries.push(Entry::Shadow {
            host: host.to_owned(),
            backend,
            share_percent,
        });
    }

    /// The router's table: the insertions replayed; holds counted from `now`.
    pub fn to_table(&self, now: Instant) -> RouteTable {
        let mut table = RouteTable::new();
        for entry in &self.entries {
            match entry {
                Entry::Host { host, backend } => table.insert(host, backend.to_backend(now)),
                Entry::Prefix {
                    host,
                    prefix,
                    backend,
                } => table.insert_with_prefix(host, prefix, backend.to_backend(now)),
                Entry::Split { host, backends } => table.insert_split(
                    host,
                    backends
                        .iter()
                        .map(|(backend, weight)| (backend.to_backend(now), *weight))
                        .collect(),
                ),
                Entry::Shadow {
                    host,
                    backend,
                    share_percent,
                } => table.insert_shadow(host, backend.to_backend(now), *share_percent),
            }
        }
        table
    }

    /// Every backend of the table, in insertion order (repeats included).
    pub fn backends(&self) -> impl Iterator<Item = &BackendSpec> + '_ {
        self.entries
            .iter()
            .flat_map(|entry| -> Box<dyn Iterator<Item = &BackendSpec> + '_> {
                match entry {
                    Entry::Host { backend, .. }
                    | Entry::Prefix { backend, .. }
                    | Entry::Shadow { backend, .. } => Box::new(std::iter::once(backend)),
                    Entry::Split { backends, .. } => Box::new(backends.iter().map(|(b, _)| b)),
                }
            })
    }

    /// Every upstream address the table routes to (repeats included).
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.backends()
            .flat_map(|backend| backend.upstreams.iter().map(|u| u.addr))
    }

    /// Every environment the table names (repeats included).
    pub fn envs(&self) -> impl Iterator<Item = &str> + '_ {
        self.backends().map(|backend| backend.env.as_str())
    }
}

impl BackendSpec {
    /// The data of `backend`, its hold counted from `now`.
    pub fn of(backend: &Backend, now: Instant) -> Self {
        Self {
            env: backend.env.clone(),
            app: backend.app.clone(),
            upstreams: backend
                .upstreams
                .iter()
                .map(|u| UpstreamSpec {
                    instance: u.instance.clone(),
                    addr: u.addr,
                })
                .collect(),
            maintenance: backend.maintenance.as_ref().map(|m| MaintenanceSpec {
                retry_after_secs: m.retry_after_secs,
                message: m.message.clone(),
            }),
            max_body_bytes: backend.limits.max_body_bytes,
            upstream_timeout_ms: backend
                .limits
                .upstream_timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            hold_ms: backend.held_until.map(|until| {
                u64::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
            }),
        }
    }

    /// The router's backend, a hold ending `hold_ms` after `now`.
    pub fn to_backend(&self, now: Instant) -> Backend {
        Backend {
            env: self.env.clone(),
            app: self.app.clone(),
            upstreams: self
                .upstreams
                .iter()
                .map(|u| Upstream {
                    instance: u.instance.clone(),
                    addr: u.addr,
                })
                .collect(),
            maintenance: self.maintenance.as_ref().map(|m| Maintenance {
                retry_after_secs: m.retry_after_secs,
                message: m.message.clone(),
            }),
            limits: RouteLimits {
                max_body_bytes: self.max_body_bytes,
                upstream_timeout: self.upstream_timeout_ms.map(Duration::from_millis),
            },
            held_until: self
                .hold_ms
                .map(|ms| now + Duration::from_millis(ms.min(86_400_000))),
        }
    }
}

impl EnvCounts {
    /// An environment's counters and live traffic on this router.
    pub fn of(stats: molt_router::EnvStats, live: &molt_router::TrafficStats) -> Self {
        Self {
            accepted: stats.accepted,
            in_flight: stats.in_flight,
            answered: stats.answered,
            failed: stats.failed,
            live: LiveCounts::from(live),
        }
    }
}

impl From<&molt_router::TrafficStats> for LiveCounts {
    fn from(stats: &molt_router::TrafficStats) -> Self {
        Self {
            classes: stats.classes,
            cumulative: stats.latency.cumulative,
            sum_micros: (stats.latency.sum_seconds * 1e6).round() as u64,
        }
    }
}

impl LiveCounts {
    /// The same figures as the router keeps them.
    pub fn to_stats(&self) -> molt_router::TrafficStats {
        molt_router::TrafficStats {
            classes: self.classes,
            latency: molt_router::LatencyHistogram {
                cumulative: self.cumulative,
                sum_seconds: self.sum_micros as f64 / 1e6,
            },
            failed: 0,
        }
    }
}

impl std::ops::AddAssign for EnvCounts {
    fn add_assign(&mut self, other: Self) {
        self.accepted += other.accepted;
        self.in_flight += other.in_flight;
        self.answered += other.answered;
        self.failed += other.failed;
        for (n, o) in self.live.classes.iter_mut().zip(other.live.classes) {
            *n += o;
        }
        for (n, o) in self.live.cumulative.iter_mut().zip(other.live.cumulative) {
            *n += o;
        }
        self.live.sum_micros += other.live.sum_micros;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(env: &str, port: u16) -> BackendSpec {
        BackendSpec {
            env: env.into(),
            upstreams: vec![UpstreamSpec {
                instance: format!("{env}-1"),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            }],
            ..BackendSpec::default()
        }
    }

    #[test]
    fn a_table_round_trips_through_json_and_routes_the_same() {
        let mut spec = TableSpec::new();
        spec.insert("shop.example.com", backend("blue", 1001));
        spec.insert_with_prefix("shop.example.com", "/api", backend("api", 1002));
        spec.insert_split(
            "canary.example.com",
            vec![(backend("blue", 1001), 90), (backend("green", 1003), 10)],
        );
        spec.insert_shadow("shop.example.com", backend("green", 1003), 10);
        let json = serde_json::to_string(&Event::Table {
            generation: 3,
            version: 7,
            table: spec.clone(),
        })
        .expect("json");
        let Event::Table { version, table, .. } = serde_json::from_str(&json).expect("parse")
        else {
            panic!("not a table: {json}");
        };
        assert_eq!((version, &table), (7, &spec));
        let table = table.to_table(Instant::now());
        assert_eq!(
            table
                .lookup_path("shop.example.com", "/api/x")
                .map(|r| r.env()),
            Some("api")
        );
        assert_eq!(
            table.lookup("shop.example.com").map(|r| r.env()),
            Some("blue")
        );
        assert_eq!(
            table.lookup("canary.example.com").map(|r| r.env()),
            Some("blue")
        );
        let mut addrs: Vec<u16> = spec.addrs().map(|a| a.port()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs, [1001, 1002, 1003]);
    }

    #[test]
    fn backends_keep_their_limits_maintenance_and_hold() {
        let now = Instant::now();
        let original = Backend {
            maintenance: Some(Maintenance {
                retry_after_secs: 30,
                message: "back soon".into(),
            }),
            limits: RouteLimits {
                max_body_bytes: Some(1024),
                upstream_timeout: Some(Duration::from_millis(2500)),
            },
            held_until: Some(now + Duration::from_secs(3)),
            ..Backend::new("blue", Vec::new())
        };
        let spec = BackendSpec::of(&original, now);
        assert_eq!(spec.hold_ms, Some(3000));
        assert_eq!(spec.to_backend(now), original);
    }
}
