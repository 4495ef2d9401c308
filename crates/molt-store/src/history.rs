//! Deployments with their journal, and the apps' history.

use molt_core::{DeployEvent, DeployState};
use rusqlite::{params, OptionalExtension};

use crate::records::*;
use crate::rows::*;
use crate::{corrupt, Result, Store, StoreError};
use rusqlite::Transaction;

impl Store {
    /// Records a new deployment in state `pending`; with `shadow_share`, a shadow deployment
    /// (mirrored to, not swapped to, until it is promoted).
    pub fn create_deployment(
        &mut self,
        app: &str,
        release: u64,
        prev_env: Option<&str>,
        shadow_share: Option<u32>,
    ) -> Result<DeploymentRecord> {
        let now = self.clock.now_ms() as i64;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO deployments(app, release, prev_env, state, created_ms, updated_ms,
                                     shadow_share)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?5)",
            params![app, release as i64, prev_env, now, shadow_share],
        )?;
        let id = tx.last_insert_rowid();
        let detail = match shadow_share {
            Some(share) => format!("deploy {app} v{release} (shadow {share} % before the swap)"),
            None => format!("deploy {app} v{release}"),
        };
        tx.execute(
            "INSERT INTO journal(deployment, at_ms, state, detail) VALUES (?1, ?2, 'pending', ?3)",
            params![id, now, detail],
        )?;
        tx.commit()?;
        self.deployment(id as u64)
    }

    /// One deployment.
    pub fn deployment(&self, id: u64) -> Result<DeploymentRecord> {
        self.conn
            .query_row(
                &format!("{DEPLOYMENT_SELECT} WHERE id = ?1"),
                [id as i64],
                deployment_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "deployment",
                key: id.to_string(),
            })?
    }

    /// Deployments of an app (all when `None`), newest first, at most `limit`.
    pub fn deployments(&self, app: Option<&str>, limit: usize) -> Result<Vec<DeploymentRecord>> {
        let mut st = self.conn.prepare(&format!(
            "{DEPLOYMENT_SELECT} WHERE ?1 IS NULL OR app = ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![app, limit as i64], deployment_row)?;
        rows.map(|r| r?).collect()
    }

    /// The app's newest deployment, if it is in its shadow phase.
    pub fn shadowing_deployment(&self, app: &str) -> Result<Option<DeploymentRecord>> {
        let newest = self.deployments(Some(app), 1)?.into_iter().next();
        Ok(newest.filter(|d| d.state == DeployState::Shadowing))
    }

    /// Deployments not in a terminal state, oldest first.
    pub fn unfinished_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let terminal: Vec<String> = DeployState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{s}'"))
            .collect();
        let mut st = self.conn.prepare(&format!(
            "{DEPLOYMENT_SELECT} WHERE state NOT IN ({}) ORDER BY id",
            terminal.join(", ")
        ))?;
        let rows = st.query_map([], deployment_row)?;
        rows.map(|r| r?).collect()
    }

    /// Applies a state-machine event to a deployment and journals it, atomically.
    pub fn advance(&mut self, id: u64, event: DeployEvent, detail: &str) -> Result<DeployState> {
        let tx = self.conn.transaction()?;
        let state = advance_in(&tx, id, event, detail, self.clock.now_ms())?;
        tx.commit()?;
        Ok(state)
    }

    /// Sets the environment a deployment created, together with its `env_created` step.
    pub fn attach_env(&mut self, id: u64, env: &str) -> Result<DeployState> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE deployments SET env = ?2 WHERE id = ?1",
            params![id as i64, env],
        )?;
        let state = advance_in(
            &tx,
            id,
            DeployEvent::EnvCreated,
            &format!("environment {env}"),
            self.clock.now_ms(),
        )?;
        tx.commit()?;
        Ok(state)
    }

    /// Ends a shadow deployment's mirroring with `event` (promoted, abandoned, superseded …):
    /// records the comparison (if given), stops the app's shadow traffic if it still goes to
    /// the deployment's environment, and journals the step, in one transaction.
    pub fn end_shadow(
        &mut self,
        id: u64,
        event: DeployEvent,
        detail: &str,
        comparison: Option<&ShadowComparison>,
    ) -> Result<DeployState> {
        let json = comparison
            .map(serde_json::to_string)
            .transpose()
            .map_err(corrupt)?;
        let tx = self.conn.transaction()?;
        let (app, env): (String, Option<String>) = tx.query_row(
            "SELECT app, env FROM deployments WHERE id = ?1",
            [id as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mirrored: Option<String> =
            tx.query_row("SELECT shadow FROM apps WHERE name = ?1", [&app], |r| {
                r.get(0)
            })?;
        let mirrored_env = mirrored
            .and_then(|m| serde_json::from_str::<ShadowMode>(&m).ok())
            .map(|m| m.env);
        if mirrored_env.is_some() && mirrored_env == env {
            tx.execute("UPDATE apps SET shadow = NULL WHERE name = ?1", [&app])?;
        }
        if json.is_some() {
            tx.execute(
                "UPDATE deployments SET shadow = ?2 WHERE id = ?1",
                params![id as i64, json],
            )?;
        }
        let state = advance_in(&tx, id, event, detail, self.clock.now_ms())?;
        tx.commit()?;
        Ok(state)
    }

    /// Records why a deployment failed (or was rolled back).
    pub fn set_deployment_error(&mut self, id: u64, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE deployments SET error = ?2 WHERE id = ?1",
            params![id as i64, error],
        )?;
        Ok(())
    }

    /// Records the cutover figures of a deployment.
    pub fn set_figures(&mut self, id: u64, figures: &CutoverFigures) -> Result<()> {
        let json = serde_json::to_string(figures).map_err(corrupt)?;
        self.conn.execute(
            "UPDATE deployments SET figures = ?2 WHERE id = ?1",
            params![id as i64, json],
        )?;
        Ok(())
    }

    /// The journal of a deployment, oldest first.
    pub fn journal(&self, id: u64) -> Result<Vec<JournalEntry>> {
        let mut st = self.conn.prepare(
            "SELECT at_ms, state, detail FROM journal WHERE deployment = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([id as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|r| {
            let (at, state, detail) = r?;
            Ok(JournalEntry {
                at_ms: at as u64,
                state: state.parse().map_err(corrupt)?,
                detail,
            })
        })
        .collect()
    }

    /// Appends a line to an app's history.
    pub fn record_event(&mut self, app: &str, kind: &str, message: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO events(app, at_ms, kind, message) VALUES (?1, ?2, ?3, ?4)",
            params![app, self.clock.now_ms(), kind, message],
        )?;
        Ok(())
    }

    /// An app's history (all apps when `None`), newest first, at most `limit` lines.
    pub fn events(&self, app: Option<&str>, limit: usize) -> Result<Vec<EventRecord>> {
        let mut st = self.conn.prepare(
            "SELECT id, app, at_ms, kind, message FROM events
             WHERE ?1 IS NULL OR app = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![app, limit as i64], |r| {
            Ok(EventRecord {
                id: r.get::<_, i64>(0)? as u64,
                app: r.get(1)?,
                at_ms: r.get::<_, i64>(2)? as u64,
                kind: r.get(3)?,
                message: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Applies `event` to deployment `id` inside `tx`, journaled at `now_ms`.
pub(crate) fn advance_in(
    tx: &Transaction<'_>,
    id: u64,
    event: DeployEvent,
    detail: &str,
    now_ms: u64,
) -> Result<DeployState> {
    let current: String = tx
        .query_row(
            "SELECT state FROM deployments WHERE id = ?1",
            [id as i64],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            what: "deployment",
            key: id.to_string(),
        })?;
    let from: DeployState = current.parse().map_err(corrupt)?;
    let to = from.next(event)?;
    let now = now_ms as i64;
    tx.execute(
        "UPDATE deployments SET state = ?2, updated_ms = ?3 WHERE id = ?1",
        params![id as i64, to.as_str(), now],
    )?;
    tx.execute(
        "INSERT INTO journal(deployment, at_ms, state, detail) VALUES (?1, ?2, ?3, ?4)",
        params![id as i64, now, to.as_str(), detail],
    )?;
    Ok(to)
}
