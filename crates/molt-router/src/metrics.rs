//! What the router exposes for monitoring.

use crate::proxy::Router;
use crate::stats::EnvStats;

impl Router {
    /// Counters of every environment the router has routed to (and not forgotten), by id.
    pub fn all_env_stats(&self) -> Vec<(String, EnvStats)> {
        self.stats.snapshot_all()
    }
}
