//! molt's durable state: one SQLite file (WAL, `synchronous=FULL`) holding apps, images,
//! releases, environments, instances, routes, deployments with their journal, and history.
//!
//! Architecture invariant: every change that must survive a crash together is one transaction
//! (a swap writes the route and the deployment's step at once). The store is synchronous; async
//! callers run it on a blocking thread.

mod access;
mod catalog;
mod history;
mod records;
mod rows;
mod runtime;
mod schema;
mod secrets;
mod tags;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use molt_core::{Clock, InvalidTransition};
use rusqlite::Connection;
use thiserror::Error;

pub use access::StoredToken;
pub use records::*;
pub use secrets::SealedSecret;

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

impl StoreError {
    /// True when SQLite could not write because the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// Result alias for the store.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The state database.
pub struct Store {
    conn: Connection,
    /// What stamps records (creation times, journal steps, rollback windows).
    clock: Arc<dyn Clock>,
}

/// The system's clock: what production runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
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
        Ok(Store::on(conn))
    }

    /// Opens a private in-memory database (tests).
    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        schema::migrate(&conn)?;
        Ok(Store::on(conn))
    }

    /// Stamps records with `clock` from now on (the system clock until then): the controller
    /// hands the store its own clock, so that every window is measured on one time.
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    fn on(conn: Connection) -> Store {
        Store {
            conn,
            clock: Arc::new(SystemClock),
        }
    }
}

#[cfg(test)]
mod tests;
