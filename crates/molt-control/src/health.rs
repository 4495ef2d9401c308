//! HTTP health checks of instances: from this process, or through a router of the fleet when
//! instances live on a network only the routers reach (an engine's overlay network).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A health-check client: one GET, success on 2xx/3xx within the timeout.
pub(crate) struct Checker {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Checker {
    pub(crate) fn new() -> Checker {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Checker { client }
    }

    /// Checks one instance; `Err` says why it is not healthy, for the user.
    pub(crate) async fn check(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let uri: hyper::Uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| format!("bad health check URL: {e}"))?;
        let req = hyper::Request::get(uri)
            .header(hyper::header::HOST, "health.molt.internal")
            .header(hyper::header::USER_AGENT, "molt-health")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let result = tokio::time::timeout(timeout, async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            let status = resp.status();
            // Read the body so the check covers a complete answer.
            let _ = resp.into_body().collect().await;
            Ok::<_, String>(status)
        })
        .await;
        match result {
            Err(_) => Err(format!("GET {path} timed out after {timeout:?}")),
            Ok(Err(e)) => Err(format!("GET {path}: {e}")),
            Ok(Ok(s)) if s.is_success() || s.is_redirection() => Ok(()),
            Ok(Ok(s)) => Err(format!("GET {path} answered {s}")),
        }
    }
}

impl crate::Controller {
    /// Checks one instance the way the controller is configured to reach it; `Err` says why
    /// it is not healthy, or that nothing could be learnt (no router ran the check).
    pub(crate) async fn probe_instance(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(), CheckFailure> {
        match self.inner.config.health_checks {
            crate::HealthChecks::Direct => self
                .inner
                .health
                .check(addr, path, timeout)
                .await
                .map_err(CheckFailure::Unhealthy),
            crate::HealthChecks::ThroughRouters => {
                match self.inner.config.fleet.probe(addr, path, timeout).await {
                    Ok(status) if (200..400).contains(&status) => Ok(()),
                    Ok(status) => Err(CheckFailure::Unhealthy(format!(
                        "GET {path} answered {status}"
                    ))),
                    Err(why) if why.is_unknown() => {
                        Err(CheckFailure::Unknown(format!("GET {path}: {why}")))
                    }
                    Err(why) => Err(CheckFailure::Unhealthy(format!("GET {path}: {why}"))),
                }
            }
        }
    }
}

/// Why a health check did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckFailure {
    /// The instance did not answer well: a failure that counts.
    Unhealthy(String),
    /// Nothing was learnt (no router of the fleet ran the check): it counts neither way, so a
    /// control plane whose routers are still connecting never marks instances unhealthy.
    Unknown(String),
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckFailure::Unhealthy(why) | CheckFailure::Unknown(why) => f.write_str(why),
        }
    }
}

/// The newest failed health check of a start: which instance, and why.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastFailure {
    /// The instance (empty when no check failed on an instance yet).
    pub(crate) instance: String,
    /// Why.
    pub(crate) why: String,
}

impl crate::Controller {
    /// One look at a starting environment's instances: each one not healthy yet is checked;
    /// `streak` counts its checks passed in a row, and one that reaches the release's threshold
    /// is recorded healthy. Returns how many are healthy now. A check that fails resets the
    /// streak and is noted in `last`; one that says nothing (no router ran it) leaves both.
    pub(crate) async fn advance_health(
        &self,
        instances: &[molt_store::InstanceRecord],
        health: &molt_core::HealthCheck,
        streak: &mut std::collections::HashMap<String, u32>,
        last: &mut LastFailure,
    ) -> crate::Result<usize> {
        let mut healthy = 0;
        for inst in instances {
            if inst.state == molt_store::InstanceState::Healthy {
                healthy += 1;
                continue;
            }
            let addr = crate::instances::instance_addr(inst);
            match self
                .probe_instance(addr, &health.path, health.timeout)
                .await
            {
                Ok(()) => {
                    let n = streak.entry(inst.id.clone()).or_default();
                    *n += 1;
                    if *n >= health.healthy_threshold {
                        let id = inst.id.clone();
                        self.db(move |s| {
                            s.set_instance_state(&id, molt_store::InstanceState::Healthy, None)
                        })
                        .await?;
                        healthy += 1;
                    }
                }
                Err(CheckFailure::Unknown(why)) => last.why = why,
                Err(CheckFailure::Unhealthy(why)) => {
                    streak.insert(inst.id.clone(), 0);
                    *last = LastFailure {
                        instance: inst.id.clone(),
                        why,
                    };
                }
            }
        }
        Ok(healthy)
    }
}
