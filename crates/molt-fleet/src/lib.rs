//! molt-fleet: the routers of one control plane, on any number of machines.
//!
//! The control plane keeps a [`Fleet`]: every route change is published as a versioned
//! snapshot of the table ([`TableSpec`]) on each router's stream, and is in force once every
//! live router has acknowledged it ([`Fleet::publish`]); a router that misses the deadline is
//! fenced instead of blocking deployments. [`routes`] serves the fleet's endpoints for the API
//! to nest under `/v1/fleet`.
//!
//! A router process (`molt router`) runs a [`Follower`]: it applies each snapshot to its own
//! [`molt_router::Router`], saves it, acknowledges it, runs the health checks the control
//! plane hands it (for instances only the routers can reach) and reports its counters. It
//! keeps serving the last table while the control plane is away.

mod client;
mod fleet;
mod follower;
mod http;
mod wire;

pub use client::{ClientError, ControlClient};
pub use fleet::{
    Fleet, FleetConfig, FleetStatus, ProbeError, Publication, RouterStatus, Subscription,
};
pub use follower::{http_status, Follower, FollowerConfig, RestoreError};
pub use http::{check_name, routes};
pub use wire::{
    Ack, BackendSpec, Entry, EnvCounts, Event, Hello, LiveCounts, MaintenanceSpec, Probe,
    ProbeReport, RouterReport, TableSpec, UpstreamSpec,
};
