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
    /// it is not healthy, for the user.
    pub(crate) async fn probe_instance(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        match self.inner.config.health_checks {
            crate::HealthChecks::Direct => self.inner.health.check(addr, path, timeout).await,
            crate::HealthChecks::ThroughRouters => {
                match self.inner.config.fleet.probe(addr, path, timeout).await {
                    Ok(status) if (200..400).contains(&status) => Ok(()),
                    Ok(status) => Err(format!("GET {path} answered {status}")),
                    Err(why) => Err(format!("GET {path}: {why}")),
                }
            }
        }
    }
}
