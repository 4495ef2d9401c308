//! Shadow traffic: a share of an app's live idempotent requests mirrored to another of its
//! environments (typically the next release, before the swap), and the two compared.

use std::collections::BTreeMap;

use molt_core::InputError;
use molt_router::{TrafficStats, LATENCY_BUCKETS};
use molt_store::{AppRecord, EnvState, ShadowMode};
use serde::{Deserialize, Serialize};

use crate::{ControlError, Controller, Result};

/// Live and shadow traffic of an app side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The app.
    pub app: String,
    /// What is mirrored where, if anything.
    pub mode: Option<ShadowMode>,
    /// The routed environment's live traffic.
    pub live: Option<TrafficSummary>,
    /// The shadow environment's mirrored traffic (answers were discarded).
    pub shadow: Option<TrafficSummary>,
}

/// One environment's traffic of one kind (live or mirrored), since the router started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficSummary {
    /// Environment id.
    pub env: String,
    /// Requests counted (answered or failed).
    pub requests: u64,
    /// Responses by status class (`"2xx"`, …).
    pub classes: BTreeMap<String, u64>,
    /// Requests that got no answer.
    pub failed: u64,
    /// Mean time to the response head, in milliseconds.
    pub mean_ms: f64,
    /// Upper bound of the histogram bucket holding the median, in milliseconds (`None` past
    /// the last bucket).
    pub p50_ms: Option<f64>,
    /// The same for the 99th percentile.
    pub p99_ms: Option<f64>,
}

impl Controller {
    /// Mirrors `share_percent` % of the app's bodiless GET/HEAD/OPTIONS requests to `env`
    /// (one of its ready environments other than the routed one), or stops mirroring
    /// (`None`). Users always get the routed environment's answers.
    pub async fn set_shadow(&self, app: &str, target: Option<(String, u32)>) -> Result<AppRecord> {
        let app: String = app.parse::<molt_core::AppName>()?.to_string();
        if let Some((_, share)) = &target {
            if !(1..=100).contains(share) {
                return Err(InputError::Invalid(format!(
                    "shadow share must be 1 to 100 (percent), not {share}"
                ))
                .into());
            }
        }
        let lock = self.app_lock(&app);
        let _guard = lock.lock().await;
        let a = app.clone();
        let rec = self
            .db(move |s| {
                let mode = match target {
                    None => None,
                    Some((env, share_percent)) => {
                        let rec = s.env(&env)?;
                        if rec.app != a {
                            return Ok(Err(ControlError::NotFound(format!(
                                "environment '{env}' is not one of {a}'s"
                            ))));
                        }
                        if rec.state != EnvState::Ready {
                            return Ok(Err(ControlError::Conflict(format!(
                                "environment {env} is not ready (state {:?}): shadow a running environment",
                                rec.state
                            ))));
                        }
                        if s.app(&a)?.routed_env.as_deref() == Some(env.as_str()) {
                            return Ok(Err(ControlError::Conflict(format!(
                                "environment {env} already serves {a}'s route: shadow another environment"
                            ))));
                        }
                        Some(ShadowMode { env, share_percent })
                    }
                };
                Ok(s.set_shadow(&a, mode.as_ref()).map_err(ControlError::from))
            })
            .await??;
        self.publish_routes().await?;
        let msg = match &rec.shadow {
            Some(m) => format!(
                "{} % of idempotent requests mirrored to {}",
                m.share_percent, m.env
            ),
            None => "shadow traffic off".to_owned(),
        };
        self.event(&app, "shadow", &msg).await;
        Ok(rec)
    }

    /// The app's live traffic next to its shadow environment's mirrored traffic.
    pub async fn shadow_report(&self, app: &str) -> Result<ShadowReport> {
        let app: String = app.parse::<molt_core::AppName>()?.to_string();
        let a = app.clone();
        let rec = self.db(move |s| s.app(&a)).await?;
        let router = &self.inner.router;
        let live = rec
            .routed_env
            .as_ref()
            .map(|env| summarize(env, &router.env_traffic(env).live));
        let shadow = rec
            .shadow
            .as_ref()
            .map(|m| summarize(&m.env, &router.env_traffic(&m.env).shadow));
        Ok(ShadowReport {
            app,
            mode: rec.shadow,
            live,
            shadow,
        })
    }
}

fn summarize(env: &str, stats: &TrafficStats) -> TrafficSummary {
    let requests = stats.requests();
    let classes = stats
        .classes
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{}xx", i + 1), *n))
        .collect();
    let mean_ms = if requests == 0 {
        0.0
    } else {
        stats.latency.sum_seconds * 1000.0 / requests as f64
    };
    TrafficSummary {
        env: env.to_owned(),
        requests,
        classes,
        failed: stats.failed,
        mean_ms,
        p50_ms: quantile_ms(stats, 0.5),
        p99_ms: quantile_ms(stats, 0.99),
    }
}

/// The upper bound (ms) of the bucket where quantile `q` falls; `None` when no request was
/// counted or it falls past the last bucket.
fn quantile_ms(stats: &TrafficStats, q: f64) -> Option<f64> {
    let requests = stats.requests();
    if requests == 0 {
        return None;
    }
    let rank = (q * requests as f64).ceil() as u64;
    LATENCY_BUCKETS
        .iter()
        .zip(&stats.latency.cumulative)
        .find(|(_, n)| **n >= rank)
        .map(|(bound, _)| bound * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_router::LatencyHistogram;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let stats = TrafficStats {
            classes: [0, 99, 0, 0, 1],
            latency: LatencyHistogram {
                // 50 requests ≤ 1 ms, 49 more ≤ 5 ms, one past 10 s.
                cumulative: [50, 50, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 100],
                sum_seconds: 20.0,
            },
            failed: 0,
        };
        let summary = summarize("e", &stats);
        assert_eq!(summary.requests, 100);
        assert_eq!(summary.p50_ms, Some(1.0));
        assert_eq!(summary.p99_ms, Some(5.0));
        assert_eq!(summary.classes["5xx"], 1);
        assert!((summary.mean_ms - 200.0).abs() < 1e-9);
        assert_eq!(quantile_ms(&TrafficStats::default(), 0.5), None);
        // Every request past the last bucket.
        let mut cumulative = [0; 13];
        cumulative[12] = 3;
        let slow = TrafficStats {
            latency: LatencyHistogram {
                cumulative,
                sum_seconds: 60.0,
            },
            ..TrafficStats::default()
        };
        assert_eq!(quantile_ms(&slow, 0.5), None);
    }
}
