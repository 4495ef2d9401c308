//! A snapshot of what molt can report to a monitoring system.

use std::collections::BTreeMap;

use molt_router::{ClientScheme, EnvTraffic};
use serde::Serialize;

use crate::{Controller, Result};

/// Traffic and state counters, gathered in one go.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Per environment: (app, env, router counters).
    pub envs: Vec<EnvMetrics>,
    /// Requests for hosts no route answers.
    pub unrouted: u64,
    /// Live instances by (app, env, state).
    pub instances: BTreeMap<(String, String, String), u64>,
    /// Deployments by (app, state).
    pub deployments: BTreeMap<(String, String), u64>,
    /// The router's own counters.
    pub router: RouterCounters,
}

/// Counters of the router as a whole, not of one environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterCounters {
    /// Requests received from clients over plain HTTP.
    pub http_requests: u64,
    /// Requests received from clients over HTTPS.
    pub https_requests: u64,
    /// TLS handshakes that failed or timed out (unknown SNI names included).
    pub tls_handshake_failures: u64,
    /// Requests waiting right now for a held backend (every instance being replaced).
    pub held_requests: usize,
}

/// One environment's router counters.
#[derive(Debug, Clone, Serialize)]
pub struct EnvMetrics {
    /// Owning app.
    pub app: String,
    /// Environment id.
    pub env: String,
    /// True when the app's route points here.
    pub routed: bool,
    /// Requests assigned to it.
    pub accepted: u64,
    /// Requests not finished yet.
    pub in_flight: u64,
    /// Responses relayed from its instances.
    pub answered: u64,
    /// Errors the router made for it.
    pub failed: u64,
    /// Status classes and latency (live and shadow), ejections and retries.
    #[serde(skip)]
    pub traffic: EnvTraffic,
}

impl Controller {
    /// Gathers the metrics snapshot.
    pub async fn metrics(&self) -> Result<MetricsSnapshot> {
        let (env_apps, routed, instances, deployments) = self
            .db(|s| {
                let envs = s.envs(None, true)?;
                let routed: Vec<String> = s.routes()?.into_iter().map(|(_, e)| e).collect();
                let mut instances = BTreeMap::new();
                for inst in s.instances(None, false)? {
                    let key = (
                        inst.app,
                        inst.env,
                        format!("{:?}", inst.state).to_lowercase(),
                    );
                    *instances.entry(key).or_insert(0u64) += 1;
                }
                let mut deployments = BTreeMap::new();
                for d in s.deployments(None, usize::MAX >> 1)? {
                    *deployments
                        .entry((d.app, d.state.to_string()))
                        .or_insert(0u64) += 1;
                }
                let env_apps: BTreeMap<String, String> =
                    envs.into_iter().map(|e| (e.id, e.app)).collect();
                Ok((env_apps, routed, instances, deployments))
            })
            .await?;
        let mut traffic: BTreeMap<String, EnvTraffic> =
            self.inner.router.all_env_traffic().into_iter().collect();
        let envs = self
            .inner
            .router
            .all_env_stats()
            .into_iter()
            .filter_map(|(env, st)| {
                Some(EnvMetrics {
                    traffic: traffic.remove(&env).unwrap_or_default(),
                    app: env_apps.get(&env)?.clone(),
                    routed: routed.contains(&env),
                    env,
                    accepted: st.accepted,
                    in_flight: st.in_flight,
                    answered: st.answered,
                    failed: st.failed,
                })
            })
            .collect();
        let router = &self.inner.router;
        Ok(MetricsSnapshot {
            envs,
            unrouted: router.unrouted(),
            instances,
            deployments,
            router: RouterCounters {
                http_requests: router.requests_over(ClientScheme::Http),
                https_requests: router.requests_over(ClientScheme::Https),
                tls_handshake_failures: router.tls_handshake_failures(),
                held_requests: router.held_requests(),
            },
        })
    }
}
