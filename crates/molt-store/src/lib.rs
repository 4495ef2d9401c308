//! molt's durable state: one SQLite file (WAL, `synchronous=FULL`) holding apps, images,
//! releases, environments, instances, routes, deployments with their journal, and history.
//!
//! Architecture invariant: every change that must survive a crash together is one transaction
//! (a swap writes the route and the deployment's step at once). The store is synchronous; async
//! callers run it on a blocking thread.

mod records;
mod schema;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use molt_core::{DeployEvent, DeployState, Digest, InvalidTransition, RunConfig};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use thiserror::Error;

pub use records::*;

/// Errors from the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite failed (I/O, disk full, corruption).
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("state database holds an unreadable value: {0}")]
    Corrupt(String),
    /// The named thing does not exist.
    #[error("{what} '{key}' not found")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// The change conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// The deployment state machine refused a step.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
}

/// Result alias for the store.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The state database.
pub struct Store {
    conn: Connection,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&conn)?;
        Ok(Store { conn })
    }

    /// Opens a private in-memory database (tests).
    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        schema::migrate(&conn)?;
        Ok(Store { conn })
    }

    // ---- apps -------------------------------------------------------------------------------

    /// Creates the app if it does not exist yet.
    pub fn ensure_app(&mut self, name: &str) -> Result<AppRecord> {
        self.conn.execute(
            "INSERT OR IGNORE INTO apps(name, created_ms) VALUES (?1, ?2)",
            params![name, now_ms()],
        )?;
        self.app(name)
    }

    /// One app.
    pub fn app(&self, name: &str) -> Result<AppRecord> {
        self.conn
            .query_row(
                "SELECT a.name, a.created_ms, r.env FROM apps a
                 LEFT JOIN routes r ON r.app = a.name WHERE a.name = ?1",
                [name],
                app_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "app",
                key: name.to_string(),
            })
    }

    /// Every app, by name.
    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        let mut st = self.conn.prepare(
            "SELECT a.name, a.created_ms, r.env FROM apps a
             LEFT JOIN routes r ON r.app = a.name ORDER BY a.name",
        )?;
        let rows = st.query_map([], app_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- images -----------------------------------------------------------------------------

    /// Records an imported image (idempotent).
    pub fn put_image(&mut self, digest: &Digest, size: u64) -> Result<ImageRecord> {
        self.conn.execute(
            "INSERT OR IGNORE INTO images(digest, size, created_ms) VALUES (?1, ?2, ?3)",
            params![digest.as_str(), size as i64, now_ms()],
        )?;
        self.image(digest)
    }

    /// One image.
    pub fn image(&self, digest: &Digest) -> Result<ImageRecord> {
        let rec = self
            .conn
            .query_row(
                "SELECT digest, size, created_ms FROM images WHERE digest = ?1",
                [digest.as_str()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "image",
                key: digest.to_string(),
            })?;
        self.image_record(rec)
    }

    fn image_record(&self, (digest, size, created): (String, i64, i64)) -> Result<ImageRecord> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name FROM tags WHERE digest = ?1 ORDER BY name")?;
        let tags = st
            .query_map([&digest], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ImageRecord {
            digest: digest.parse().map_err(corrupt)?,
            size: size as u64,
            created_ms: created as u64,
            tags,
        })
    }

    /// Every image, newest first.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT digest, size, created_ms FROM images ORDER BY created_ms DESC")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(|r| self.image_record(r)).collect()
    }

    /// Names an image with a tag. A tag names one digest forever: re-pointing it is refused.
    pub fn tag_image(&mut self, tag: &str, digest: &Digest) -> Result<()> {
        self.image(digest)?;
        let existing: Option<String> = self
            .conn
            .query_row("SELECT digest FROM tags WHERE name = ?1", [tag], |r| {
                r.get(0)
            })
            .optional()?;
        match existing {
            Some(d) if d == digest.as_str() => Ok(()),
            Some(d) => Err(StoreError::Conflict(format!(
                "tag '{tag}' already names {d}; tags never move: pick a new tag"
            ))),
            None => {
                self.conn.execute(
                    "INSERT INTO tags(name, digest, created_ms) VALUES (?1, ?2, ?3)",
                    params![tag, digest.as_str(), now_ms()],
                )?;
                Ok(())
            }
        }
    }

    /// Resolves a digest (full or `sha256:`-prefixed) or a tag to a stored image.
    pub fn resolve_image(&self, reference: &str) -> Result<ImageRecord> {
        if let Ok(d) = reference.parse::<Digest>() {
            return self.image(&d);
        }
        let digest: Option<String> = self
            .conn
            .query_row(
                "SELECT digest FROM tags WHERE name = ?1",
                [reference],
                |r| r.get(0),
            )
            .optional()?;
        match digest {
            Some(d) => self.image(&d.parse().map_err(corrupt)?),
            None => Err(StoreError::NotFound {
                what: "image",
                key: reference.to_string(),
            }),
        }
    }

    /// Forgets an image (its tags go with it). Refused while a release that uses it has a live
    /// environment.
    pub fn remove_image(&mut self, digest: &Digest) -> Result<()> {
        let tx = self.conn.transaction()?;
        let live: i64 = tx.query_row(
            "SELECT COUNT(*) FROM environments e JOIN releases r
               ON r.app = e.app AND r.number = e.release
             WHERE r.image = ?1 AND e.state != 'retired'",
            [digest.as_str()],
            |r| r.get(0),
        )?;
        if live > 0 {
            return Err(StoreError::Conflict(format!(
                "image {digest} is used by a live environment"
            )));
        }
        tx.execute("DELETE FROM tags WHERE digest = ?1", [digest.as_str()])?;
        tx.execute("DELETE FROM images WHERE digest = ?1", [digest.as_str()])?;
        tx.commit()?;
        Ok(())
    }

    // ---- releases ---------------------------------------------------------------------------

    /// Writes the app's next release (v1, v2, …).
    pub fn create_release(
        &mut self,
        app: &str,
        image: &Digest,
        config: &RunConfig,
        note: &str,
    ) -> Result<ReleaseRecord> {
        self.image(image)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO apps(name, created_ms) VALUES (?1, ?2)",
            params![app, now_ms()],
        )?;
        let next: i64 = tx.query_row(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE app = ?1",
            [app],
            |r| r.get(0),
        )?;
        let config_json = serde_json::to_string(config).map_err(corrupt)?;
        tx.execute(
            "INSERT INTO releases(app, number, image, config, created_ms, pinned, note)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
            params![app, next, image.as_str(), config_json, now_ms(), note],
        )?;
        tx.commit()?;
        self.release(app, next as u64)
    }

    /// One release.
    pub fn release(&self, app: &str, number: u64) -> Result<ReleaseRecord> {
        self.conn
            .query_row(
                &format!("{RELEASE_SELECT} WHERE app = ?1 AND number = ?2"),
                params![app, number as i64],
                release_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "release",
                key: format!("{app} v{number}"),
            })?
    }

    /// Every release of an app (all apps when `None`), newest first.
    pub fn releases(&self, app: Option<&str>) -> Result<Vec<ReleaseRecord>> {
        let mut st = self.conn.prepare(&format!(
            "{RELEASE_SELECT} WHERE ?1 IS NULL OR app = ?1 ORDER BY app, number DESC"
        ))?;
        let rows = st.query_map([app], release_row)?;
        rows.map(|r| r?).collect()
    }

    /// The newest release of an app.
    pub fn latest_release(&self, app: &str) -> Result<Option<ReleaseRecord>> {
        Ok(self.releases(Some(app))?.into_iter().next())
    }

    /// Pins or unpins a release (pinned releases are GC roots).
    pub fn set_pinned(&mut self, app: &str, number: u64, pinned: bool) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE releases SET pinned = ?3 WHERE app = ?1 AND number = ?2",
            params![app, number as i64, pinned],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "release",
                key: format!("{app} v{number}"),
            });
        }
        Ok(())
    }

    // ---- environments -----------------------------------------------------------------------

    /// Creates a new environment for a release, with a fresh id.
    pub fn create_env(&mut self, app: &str, release: u64) -> Result<EnvRecord> {
        self.release(app, release)?;
        let tx = self.conn.transaction()?;
        let suffix: String = tx.query_row("SELECT lower(hex(randomblob(2)))", [], |r| r.get(0))?;
        let id = format!("{app}-v{release}-{suffix}");
        tx.execute(
            "INSERT INTO environments(id, app, release, state, created_ms)
             VALUES (?1, ?2, ?3, 'starting', ?4)",
            params![id, app, release as i64, now_ms()],
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
        let retired = (state == EnvState::Retired).then(now_ms);
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

    /// Sets or clears the end of an environment's rollback window.
    pub fn set_warm_until(&mut self, id: &str, until_ms: Option<u64>) -> Result<()> {
        self.conn.execute(
            "UPDATE environments SET warm_until_ms = ?2 WHERE id = ?1",
            params![id, until_ms.map(|v| v as i64)],
        )?;
        Ok(())
    }

    // ---- instances --------------------------------------------------------------------------

    /// Records a new instance of an environment, with a fresh id.
    pub fn create_instance(&mut self, env: &str, port: u16) -> Result<InstanceRecord> {
        let e = self.env(env)?;
        let tx = self.conn.transaction()?;
        let seq: i64 = tx.query_row(
            "SELECT COUNT(*) + 1 FROM instances WHERE env = ?1",
            [env],
            |r| r.get(0),
        )?;
        let id = format!("{env}-{seq}");
        tx.execute(
            "INSERT INTO instances(id, env, app, state, port, started_ms)
             VALUES (?1, ?2, ?3, 'starting', ?4, ?5)",
            params![id, env, e.app, port, now_ms()],
        )?;
        tx.commit()?;
        self.instance(&id)
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

    // ---- routes -----------------------------------------------------------------------------

    /// Points an app's route at an environment. With a deployment, its step is journaled in the
    /// same transaction, so a crash can never separate the two.
    pub fn swap_route(
        &mut self,
        app: &str,
        env: &str,
        deployment: Option<(u64, DeployEvent, &str)>,
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
             ON CONFLICT(app) DO UPDATE SET env = excluded.env, updated_ms = excluded.updated_ms",
            params![app, env, now_ms()],
        )?;
        tx.execute(
            "UPDATE environments SET warm_until_ms = NULL WHERE id = ?1",
            [env],
        )?;
        if let Some((id, event, detail)) = deployment {
            advance_in(&tx, id, event, detail)?;
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

    /// Every route: (app, environment).
    pub fn routes(&self) -> Result<Vec<(String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT app, env FROM routes ORDER BY app")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- deployments ------------------------------------------------------------------------

    /// Records a new deployment in state `pending`.
    pub fn create_deployment(
        &mut self,
        app: &str,
        release: u64,
        prev_env: Option<&str>,
    ) -> Result<DeploymentRecord> {
        let now = now_ms() as i64;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO deployments(app, release, prev_env, state, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?4)",
            params![app, release as i64, prev_env, now],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO journal(deployment, at_ms, state, detail) VALUES (?1, ?2, 'pending', ?3)",
            params![id, now, format!("deploy {app} v{release}")],
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

    /// Deployments not in a terminal state, oldest first.
    pub fn unfinished_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let mut st = self.conn.prepare(&format!(
            "{DEPLOYMENT_SELECT} WHERE state NOT IN
               ('succeeded', 'failed', 'rolled_back', 'superseded') ORDER BY id"
        ))?;
        let rows = st.query_map([], deployment_row)?;
        rows.map(|r| r?).collect()
    }

    /// Applies a state-machine event to a deployment and journals it, atomically.
    pub fn advance(&mut self, id: u64, event: DeployEvent, detail: &str) -> Result<DeployState> {
        let tx = self.conn.transaction()?;
        let state = advance_in(&tx, id, event, detail)?;
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
        )?;
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

    // ---- history ----------------------------------------------------------------------------

    /// Appends a line to an app's history.
    pub fn record_event(&mut self, app: &str, kind: &str, message: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO events(app, at_ms, kind, message) VALUES (?1, ?2, ?3, ?4)",
            params![app, now_ms(), kind, message],
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

fn advance_in(
    tx: &Transaction<'_>,
    id: u64,
    event: DeployEvent,
    detail: &str,
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
    let now = now_ms() as i64;
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

const RELEASE_SELECT: &str =
    "SELECT app, number, image, config, created_ms, pinned, note FROM releases";
const ENV_SELECT: &str =
    "SELECT id, app, release, state, created_ms, warm_until_ms, retired_ms FROM environments";
const INSTANCE_SELECT: &str =
    "SELECT id, env, app, state, pid, start_time, port, started_ms, exit FROM instances";
const DEPLOYMENT_SELECT: &str = "SELECT id, app, release, env, prev_env, state, created_ms,
    updated_ms, error, figures FROM deployments";

fn app_row(r: &Row<'_>) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        name: r.get(0)?,
        created_ms: r.get::<_, i64>(1)? as u64,
        routed_env: r.get(2)?,
    })
}

fn release_row(r: &Row<'_>) -> rusqlite::Result<Result<ReleaseRecord>> {
    let image: String = r.get(2)?;
    let config: String = r.get(3)?;
    Ok((|| {
        Ok(ReleaseRecord {
            app: r.get(0)?,
            number: r.get::<_, i64>(1)? as u64,
            image: image.parse().map_err(corrupt)?,
            config: serde_json::from_str(&config).map_err(corrupt)?,
            created_ms: r.get::<_, i64>(4)? as u64,
            pinned: r.get(5)?,
            note: r.get(6)?,
        })
    })())
}

fn env_state_str(s: EnvState) -> &'static str {
    match s {
        EnvState::Starting => "starting",
        EnvState::Ready => "ready",
        EnvState::Retired => "retired",
    }
}

fn env_row(r: &Row<'_>) -> rusqlite::Result<Result<EnvRecord>> {
    let state: String = r.get(3)?;
    let state = match state.as_str() {
        "starting" => EnvState::Starting,
        "ready" => EnvState::Ready,
        "retired" => EnvState::Retired,
        other => return Ok(Err(corrupt(format!("environment state '{other}'")))),
    };
    Ok(Ok(EnvRecord {
        id: r.get(0)?,
        app: r.get(1)?,
        release: r.get::<_, i64>(2)? as u64,
        state,
        created_ms: r.get::<_, i64>(4)? as u64,
        warm_until_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        retired_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
    }))
}

fn instance_state_str(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Starting => "starting",
        InstanceState::Healthy => "healthy",
        InstanceState::Unhealthy => "unhealthy",
        InstanceState::Stopping => "stopping",
        InstanceState::Stopped => "stopped",
    }
}

fn instance_row(r: &Row<'_>) -> rusqlite::Result<Result<InstanceRecord>> {
    let state: String = r.get(3)?;
    let state = match state.as_str() {
        "starting" => InstanceState::Starting,
        "healthy" => InstanceState::Healthy,
        "unhealthy" => InstanceState::Unhealthy,
        "stopping" => InstanceState::Stopping,
        "stopped" => InstanceState::Stopped,
        other => return Ok(Err(corrupt(format!("instance state '{other}'")))),
    };
    Ok(Ok(InstanceRecord {
        id: r.get(0)?,
        env: r.get(1)?,
        app: r.get(2)?,
        state,
        pid: r.get(4)?,
        start_time: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        port: r.get(6)?,
        started_ms: r.get::<_, i64>(7)? as u64,
        exit: r.get(8)?,
    }))
}

fn deployment_row(r: &Row<'_>) -> rusqlite::Result<Result<DeploymentRecord>> {
    let state: String = r.get(5)?;
    let figures: Option<String> = r.get(9)?;
    Ok((|| {
        Ok(DeploymentRecord {
            id: r.get::<_, i64>(0)? as u64,
            app: r.get(1)?,
            release: r.get::<_, i64>(2)? as u64,
            env: r.get(3)?,
            prev_env: r.get(4)?,
            state: state.parse().map_err(corrupt)?,
            created_ms: r.get::<_, i64>(6)? as u64,
            updated_ms: r.get::<_, i64>(7)? as u64,
            error: r.get(8)?,
            figures: figures
                .map(|f| serde_json::from_str(&f))
                .transpose()
                .map_err(corrupt)?,
        })
    })())
}

#[cfg(test)]
mod tests;
