//! The route table, only ever derived from the store (`build_table`) and published whole.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use molt_core::RouterLimits;
use molt_fleet::{BackendSpec, Publication, TableSpec};
use molt_router::{Backend, Maintenance, RouteLimits, Upstream};
use molt_store::{EnvState, InstanceState, ShadowMode, Store, StoreError};

use crate::instances::instance_addr;
use crate::{Controller, Result};

/// Suffix of the hostnames every app and environment answers to on this machine.
pub const LOCAL_SUFFIX: &str = "localhost";

impl Controller {
    /// Rebuilds the route table from the store and publishes it, to this process's router and
    /// to the fleet; returns once the new table is in force for every connection of this router
    /// and every live router of the fleet has acknowledged it (a router that misses the
    /// deadline is fenced rather than waited for).
    pub(crate) async fn publish_routes(&self) -> Result<Publication> {
        let _guard = self.inner.publish_lock.lock().await;
        let domain = self.inner.config.preview_domain.clone();
        let holds = self.holds();
        let table = self
            .db(move |s| build_table(s, domain.as_ref().map(|d| d.as_str()), &holds))
            .await?;
        self.inner
            .router
            .publish(table.to_table(Instant::now()))
            .await;
        let publication = self.inner.config.fleet.publish(&table).await;
        if !publication.acknowledged.is_empty() || !publication.fenced.is_empty() {
            tracing::debug!(
                version = publication.version,
                acknowledged = ?publication.acknowledged,
                fenced = ?publication.fenced,
                elapsed_ms = publication.elapsed_ms,
                "route table in force across the fleet"
            );
        }
        Ok(publication)
    }
}

/// The router's form of a release's `[router]` limits.
fn route_limits(limits: &RouterLimits) -> RouteLimits {
    RouteLimits {
        max_body_bytes: limits.max_body_bytes,
        upstream_timeout: limits.request_timeout_ms.map(Duration::from_millis),
    }
}

/// The app's shadow traffic, if it names a ready environment other than the routed one.
fn shadow_of(
    store: &Store,
    app: &str,
    routed: &str,
) -> std::result::Result<Option<ShadowMode>, StoreError> {
    let Some(shadow) = store.app(app)?.shadow else {
        return Ok(None);
    };
    let ready = match store.env(&shadow.env) {
        Ok(env) => env.state == EnvState::Ready,
        Err(StoreError::NotFound { .. }) => false,
        Err(e) => return Err(e),
    };
    Ok((ready && shadow.env != routed).then_some(shadow))
}

/// Routes: each app's hostnames (and `<app>.localhost`) to its routed environment, split by
/// weight with a canary environment during a canary deployment; each live
/// environment's preview hostname (`<env>.localhost`) to itself; an app's shadow environment
/// gets its share of mirrored requests; with a preview domain, each ready environment also
/// answers on `<env>.<app>.<domain>`. Only healthy instances take traffic (never a drifted
/// or leaving one); an environment in `holds`, or scaled to zero, makes requests wait for its
/// next instances.
fn build_table(
    store: &mut Store,
    preview_domain: Option<&str>,
    holds: &HashMap<String, Instant>,
) -> std::result::Result<TableSpec, StoreError> {
    let now = Instant::now();
    let mut table = TableSpec::new();
    let spec = |backend: Backend| BackendSpec::of(&backend, now);
    let backend =
        |store: &Store, app: &str, env: &str| -> std::result::Result<Backend, StoreError> {
            let upstreams = store
                .instances(Some(env), false)?
                .into_iter()
                .filter(|i| i.state == InstanceState::Healthy)
                .map(|i| Upstream {
                    addr: instance_addr(&i),
                    instance: i.id,
                })
                .collect();
            // An environment scaled to zero holds its requests until a wake gives it one.
            let at_zero = crate::scale::zero_hold(&store.env(env)?, now);
            Ok(Backend {
                app: app.to_owned(),
                held_until: holds.get(env).copied().or(at_zero),
                ..Backend::new(env, upstreams)
            })
        };
    let splits: HashMap<String, (String, u32)> = store
        .canary_splits()?
        .into_iter()
        .map(|(app, env, weight)| (app, (env, weight)))
        .collect();
    for (app, env) in store.routes()? {
        let rec = store.env(&env)?;
        let release = store.release(&app, rec.release)?;
        // In maintenance the app's hostnames answer 503; preview hostnames keep working.
        let maintenance = store.app(&app)?.maintenance.map(|m| Maintenance {
            retry_after_secs: m.retry_after_secs,
            message: m.message,
        });
        let app_backend = |store: &Store, env: &str| -> std::result::Result<Backend, StoreError> {
            let rec = store.env(env)?;
            let mut b = backend(store, &app, env)?;
            b.maintenance = maintenance.clone();
            b.limits = route_limits(&store.release(&app, rec.release)?.config.router);
            Ok(b)
        };
        // A canary takes its weight of the app's clients (sticky buckets) while it is ready.
        let canary = match splits.get(&app) {
            Some((canary, weight))
                if canary != &env && store.env(canary)?.state == EnvState::Ready =>
            {
                Some((canary.as_str(), *weight))
            }
            _ => None,
        };
        let hosts: Vec<String> = release
            .config
            .hostnames
            .iter()
            .map(|h| h.as_str().to_string())
            .chain([format!("{app}.{LOCAL_SUFFIX}")])
            .collect();
        for host in &hosts {
            match canary {
                Some((canary, weight)) => table.insert_split(
                    host,
                    vec![
                        (spec(app_backend(store, &env)?), 100 - weight),
                        (spec(app_backend(store, canary)?), weight),
                    ],
                ),
                None => table.insert(host, spec(app_backend(store, &env)?)),
            }
        }
        if let Some(shadow) = shadow_of(store, &app, &env)? {
            for host in &release.config.hostnames {
                table.insert_shadow(
                    host.as_str(),
                    spec(backend(store, &app, &shadow.env)?),
                    shadow.share_percent,
                );
            }
            let host = format!("{app}.{LOCAL_SUFFIX}");
            table.insert_shadow(
                &host,
                spec(backend(store, &app, &shadow.env)?),
                shadow.share_percent,
            );
        }
    }
    for env in store.envs(None, false)? {
        if env.state == EnvState::Ready {
            let limits = route_limits(&store.release(&env.app, env.release)?.config.router);
            let preview = |store: &Store| -> std::result::Result<Backend, StoreError> {
                Ok(Backend {
                    limits,
                    ..backend(store, &env.app, &env.id)?
                })
            };
            table.insert(&format!("{}.{LOCAL_SUFFIX}", env.id), spec(preview(store)?));
            if let Some(domain) = preview_domain {
                table.insert(
                    &format!("{}.{}.{domain}", env.id, env.app),
                    spec(preview(store)?),
                );
            }
        }
    }
    Ok(table)
}

/// How a route change went across the fleet, for the app's history and the deployment's
/// journal: nothing when no router of the fleet is connected.
pub(crate) fn fleet_note(publication: &Publication) -> Option<String> {
    let acknowledged = publication.acknowledged.len();
    if acknowledged == 0 && publication.fenced.is_empty() {
        return None;
    }
    let mut note = format!(
        "in force on {acknowledged} router{} of the fleet (table v{}, acknowledged in {} ms)",
        if acknowledged == 1 { "" } else { "s" },
        publication.version,
        publication.elapsed_ms
    );
    if !publication.fenced.is_empty() {
        note.push_str(&format!(
            "; fenced until they catch up: {}",
            publication.fenced.join(", ")
        ));
    }
    Some(note)
}
