//! What the router exposes for monitoring.

use crate::router::Router;
use crate::stats::EnvStats;
use crate::traffic::EnvTraffic;

impl Router {
    /// Counters of every environment the router has routed to (and not forgotten), by id.
    pub fn all_env_stats(&self) -> Vec<(String, EnvStats)> {
        self.stats.snapshot_all()
    }

    /// Status classes, latency histograms (live and shadow) and resilience counters of one
    /// environment (all zero for an env never seen).
    pub fn env_traffic(&self, env: &str) -> EnvTraffic {
        let Some(counters) = self.stats.get(env) else {
            return EnvTraffic::default();
        };
        EnvTraffic {
            ejected: self.table().ejected_in(env),
            ..counters.traffic.snapshot()
        }
    }

    /// [`Router::env_traffic`] of every environment the router has routed to (and not
    /// forgotten), sorted by id.
    pub fn all_env_traffic(&self) -> Vec<(String, EnvTraffic)> {
        let ejected: std::collections::HashMap<String, u64> = {
            // Held only for one pass: a publish waits for every holder of the old table.
            let table = self.table();
            let by_env = table.ejected_by_env();
            by_env
                .into_iter()
                .map(|(env, count)| (env.to_owned(), count))
                .collect()
        };
        self.stats
            .all()
            .into_iter()
            .map(|(env, counters)| {
                let traffic = EnvTraffic {
                    ejected: ejected.get(&env).copied().unwrap_or(0),
                    ..counters.traffic.snapshot()
                };
                (env, traffic)
            })
            .collect()
    }
}
