//! Deriving the router's table from the store.

use molt_router::{Backend, Maintenance, RouteTable, Upstream};
use molt_store::{EnvState, InstanceState, Store, StoreError};

use crate::instances::instance_addr;
use crate::{Controller, Result};

/// Suffix of the hostnames every app and environment answers to on this machine.
pub const LOCAL_SUFFIX: &str = "localhost";

impl Controller {
    /// Rebuilds the route table from the store and publishes it; returns once the new table is
    /// in force for every connection.
    pub(crate) async fn publish_routes(&self) -> Result<()> {
        let _guard = self.inner.publish_lock.lock().await;
        let table = self.db(build_table).await?;
        self.inner.router.publish(table).await;
        Ok(())
    }
}

/// Routes: each app's hostnames (and `<app>.localhost`) to its routed environment; each live
/// environment's preview hostname (`<env>.localhost`) to itself. Only healthy instances take
/// traffic.
fn build_table(store: &mut Store) -> std::result::Result<RouteTable, StoreError> {
    let mut table = RouteTable::new();
    let backend = |store: &Store, env: &str| -> std::result::Result<Backend, StoreError> {
        let upstreams = store
            .instances(Some(env), false)?
            .into_iter()
            .filter(|i| i.state == InstanceState::Healthy)
            .map(|i| Upstream {
                addr: instance_addr(&i),
                instance: i.id,
            })
            .collect();
        Ok(Backend::new(env, upstreams))
    };
    for (app, env) in store.routes()? {
        let rec = store.env(&env)?;
        let release = store.release(&app, rec.release)?;
        // In maintenance the app's hostnames answer 503; preview hostnames keep working.
        let maintenance = store.app(&app)?.maintenance.map(|m| Maintenance {
            retry_after_secs: m.retry_after_secs,
            message: m.message,
        });
        let app_backend = |store: &Store| -> std::result::Result<Backend, StoreError> {
            let mut b = backend(store, &env)?;
            b.maintenance = maintenance.clone();
            Ok(b)
        };
        for host in &release.config.hostnames {
            table.insert(host.as_str(), app_backend(store)?);
        }
        table.insert(&format!("{app}.{LOCAL_SUFFIX}"), app_backend(store)?);
    }
    for env in store.envs(None, false)? {
        if env.state == EnvState::Ready {
            table.insert(
                &format!("{}.{LOCAL_SUFFIX}", env.id),
                backend(store, &env.id)?,
            );
        }
    }
    Ok(table)
}
