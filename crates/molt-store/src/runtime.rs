//! Environments, instances and routes: what runs and what takes traffic.

use molt_core::{CanaryProgress, DeployEvent, DeployState};
use rusqlite::{params, OptionalExtension};

use crate::history::advance_in;
use crate::records::*;
use crate::rows::*;
use crate::{corrupt, Result, Store, StoreError};

impl Store {
    /// Creates a new environment for a release, with a fresh id and the instance count it
    /// should have (`None`: its release's).
    pub fn create_env(
        &mut self,
        app: &str,
        release: u64,
        instances: Option<u32>,
    ) -> Result<EnvRecord> {
        self.release(app, release)?;
        let tx = self.conn.transaction()?;
        let suffix: String = tx.query_row("SELECT lower(hex(randomblob(2)))", [], |r| r.get(0))?;
        let id = format!("{app}-v{release}-{suffix}");
        tx.execute(
            "INSERT INTO environments(id, app, release, state, created_ms, instances)
             VALUES (?1, ?2, ?3, 'starting', ?4, ?5)",
            params![
                id,
                app,
                release as i64,
                self.clock.now_ms(),
                instances.map(i64::from)
            ],
        )?;
        tx.commit()?;
        self.env(&id)
    }

    /// One environment.
    pub fn env(&self, id: &str) -> Result<EnvRecord> {
        self.conn
            .query_row(&format!("{ENV_SELECT} WHERE id = ?1"), [id], env_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "environment",
                key: id.to_string(),
            })?
    }

    /// Environments of an app (all apps when `None`), newest first; retired ones only if asked.
    pub fn envs(&self, app: Option<&str>, with_retired: bool) -> Result<Vec<EnvRecord>> {
        let mut st = self.conn.prepare(&format!(
            "{ENV_SELECT} WHERE (?1 IS NULL OR app = ?1) AND (?2 OR state != 'retired')
             ORDER BY created_ms DESC, id"
        ))?;
        let rows = st.query_map(params![app, with_retired], env_row)?;
        rows.map(|r| r?).collect()
    }

    /// Sets an environment's lifecycle state (retiring stamps the time).
    pub fn set_env_state(&mut self, id: &str, state: EnvState) -> Result<()> {
        let retired = (state == EnvState::Retired).then(|| self.clock.now_ms());
        let n = self.conn.execute(
            "UPDATE environments SET state = ?2,
               retired_ms = COALESCE(retired_ms, ?3) WHERE id = ?1",
            params![id, env_state_str(state), retired.map(|v| v as i64)],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "environment",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    /// Sets the instance count an environment should have; returns the record before.
    pub fn set_env_instances(&mut self, id: &str, instances: u32) -> Result<EnvRecord> {
        let before = self.env(id)?;
        self.conn.execute(
            "UPDATE environments SET instances = ?2 WHERE id = ?1",
            params![id, i64::from(instances)],
        )?;
        Ok(before)
    }

    /// Sets or clears the end of an environment's rollback window.
    pub fn set_warm_until(&mut self, id: &str, until_ms: Option<u64>) -> Result<()> {
        self.conn.execute(
            "UPDATE environments SET warm_until_ms = ?2 WHERE id = ?1",
            params![id, until_ms.map(|v| v as i64)],
        )?;
        Ok(())
    }

    /// Records a new instance of an environment, with a fresh id.
    pub fn create_instance(&mut self, env: &str, host: &str, port: u16) -> Result<InstanceRecord> {
        let e = self.env(env)?;
        let tx = self.conn.transaction()?;
        let seq: i64 = tx.query_row(
            "SELECT COUNT(*) + 1 FROM instances WHERE env = ?1",
            [env],
            |r| r.get(0),
        )?;
        let id = format!("{env}-{seq}");
        tx.execute(
            "INSERT INTO instances(id, env, app, state, host, port, started_ms)
             VALUES (?1, ?2, ?3, 'starting', ?4, ?5, ?6)",
            params![id, env, e.app, host, port, self.clock.now_ms()],
        )?;
        tx.commit()?;
        self.instance(&id)
    }

    /// Records an instance an engine started (its id derived from the engine's, e.g. a Swarm
    /// task's), listening on `host:port`; an instance already recorded is left as it is.
    pub fn record_engine_instance(
        &mut self,
        env: &str,
        id: &str,
        host: &str,
        port: u16,
    ) -> Result<InstanceRecord> {
        let e = self.env(env)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO instances(id, env, app, state, host, port, started_ms)
             VALUES (?1, ?2, ?3, 'starting', ?4, ?5, ?6)",
            params![id, env, e.app, host, port, self.clock.now_ms()],
        )?;
        self.instance(id)
    }

    /// One instance.
    pub fn instance(&self, id: &str) -> Result<InstanceRecord> {
        self.conn
            .query_row(
                &format!("{INSTANCE_SELECT} WHERE id = ?1"),
                [id],
                instance_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "instance",
                key: id.to_string(),
            })?
    }

    /// Instances of an environment (every environment when `None`); stopped ones only if asked.
    pub fn instances(&self, env: Option<&str>, with_stopped: bool) -> Result<Vec<InstanceRecord>> {
        let mut st = self.conn.prepare(&format!(
            "{INSTANCE_SELECT} WHERE (?1 IS NULL OR env = ?1) AND (?2 OR state != 'stopped')
             ORDER BY started_ms, id"
        ))?;
        let rows = st.query_map(params![env, with_stopped], instance_row)?;
        rows.map(|r| r?).collect()
    }

    /// Records the process behind an instance.
    pub fn set_instance_process(&mut self, id: &str, pid: u32, start_time: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET pid = ?2, start_time = ?3 WHERE id = ?1",
            params![id, pid, start_time as i64],
        )?;
        Ok(())
    }

    /// Sets an instance's state; `exit` says why it stopped.
    pub fn set_instance_state(
        &mut self,
        id: &str,
        state: InstanceState,
        exit: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET state = ?2, exit = COALESCE(?3, exit) WHERE id = ?1",
            params![id, instance_state_str(state), exit],
        )?;
        Ok(())
    }

    /// Marks every running instance of `env` (starting, healthy or unhealthy) drifted, all in
    /// one transaction, and returns them: a table rebuilt from the store never routes to one
    /// of them again.
    pub fn mark_drifted(&mut self, env: &str) -> Result<Vec<InstanceRecord>> {
        let tx = self.conn.transaction()?;
        let ids: Vec<String> = {
            let mut st = tx.prepare(
                "SELECT id FROM instances
                 WHERE env = ?1 AND state IN ('starting', 'healthy', 'unhealthy')",
            )?;
            let rows = st.query_map([env], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            tx.execute("UPDATE instances SET state = 'drifted' WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        ids.iter().map(|id| self.instance(id)).collect()
    }

    /// Points an app's route at an environment and returns where it pointed before. With a
    /// deployment, its step is journaled in the same transaction, so a crash can never separate
    /// the two; with `previous_warm_for_ms`, the previous environment's rollback window starts
    /// in that same transaction (one fsync for the whole cutover).
    pub fn swap_route(
        &mut self,
        app: &str,
        env: &str,
        deployment: Option<(u64, DeployEvent, &str)>,
        previous_warm_for_ms: Option<u64>,
    ) -> Result<Option<String>> {
        let tx = self.conn.transaction()?;
        let previous: Option<String> = tx
            .query_row("SELECT env FROM routes WHERE app = ?1", [app], |r| r.get(0))
            .optional()?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM environments WHERE id = ?1 AND app = ?2",
                [env, app],
                |r| r.get(0),
            )
            .optional()?;
        match state.as_deref() {
            None => {
                return Err(StoreError::NotFound {
                    what: "environment",
                    key: env.to_string(),
                })
            }
            Some("retired") => {
                return Err(StoreError::Conflict(format!(
                    "environment {env} is retired and cannot take traffic"
                )))
            }
            Some(_) => {}
        }
        tx.execute(
            "INSERT INTO routes(app, env, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(app) DO UPDATE SET env = excluded.env, updated_ms = excluded.updated_ms,
                                            canary_env = NULL, canary_weight = NULL",
            params![app, env, self.clock.now_ms()],
        )?;
        tx.execute(
            "UPDATE environments SET warm_until_ms = NULL WHERE id = ?1",
            [env],
        )?;
        if let (Some(prev), Some(window)) = (previous.as_deref(), previous_warm_for_ms) {
            if prev != env {
                tx.execute(
                    "UPDATE environments SET warm_until_ms = ?2 WHERE id = ?1",
                    params![prev, (self.clock.now_ms() + window) as i64],
                )?;
            }
        }
        if let Some((id, event, detail)) = deployment {
            advance_in(&tx, id, event, detail, self.clock.now_ms())?;
            if event == DeployEvent::Swapped && previous.as_deref() != Some(env) {
                tx.execute(
                    "UPDATE deployments SET prev_env = ?2 WHERE id = ?1",
                    params![id as i64, previous],
                )?;
            }
        }
        tx.commit()?;
        Ok(previous)
    }

    /// Every canary split: (app, canary environment, its weight in percent).
    pub fn canary_splits(&self) -> Result<Vec<(String, String, u32)>> {
        let mut st = self.conn.prepare(
            "SELECT app, canary_env, canary_weight FROM routes
             WHERE canary_env IS NOT NULL AND canary_weight > 0 ORDER BY app",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, i64>(2)?.clamp(0, 100) as u32,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records canary deployment `id`'s progress and journals `event` in one transaction; its
    /// app's route splits with the deployment's environment at `progress.weight` percent (the
    /// split ends at 0). The route must exist: a canary splits a live route.
    pub fn canary_step(
        &mut self,
        id: u64,
        event: DeployEvent,
        progress: &CanaryProgress,
        detail: &str,
    ) -> Result<DeployState> {
        let json = serde_json::to_string(progress).map_err(corrupt)?;
        let tx = self.conn.transaction()?;
        let (app, env): (String, Option<String>) = tx.query_row(
            "SELECT app, env FROM deployments WHERE id = ?1",
            [id as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (canary_env, weight) = match progress.weight {
            0 => (None, None),
            w => (env, Some(i64::from(w))),
        };
        let changed = tx.execute(
            "UPDATE routes SET canary_env = ?2, canary_weight = ?3, updated_ms = ?4
             WHERE app = ?1",
            params![app, canary_env, weight, self.clock.now_ms()],
        )?;
        if changed == 0 && weight.is_some() {
            return Err(StoreError::Conflict(format!(
                "{app} has no route to split with a canary"
            )));
        }
        tx.execute(
            "UPDATE deployments SET canary = ?2 WHERE id = ?1",
            params![id as i64, json],
        )?;
        let state = advance_in(&tx, id, event, detail, self.clock.now_ms())?;
        tx.commit()?;
        Ok(state)
    }

    /// Every route: (app, environment).
    pub fn routes(&self) -> Result<Vec<(String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT app, env FROM routes ORDER BY app")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
