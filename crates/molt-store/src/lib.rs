//! molt's durable state: one SQLite file (WAL, `synchronous=FULL`) holding apps, images,
//! releases, environments, instances, routes, deployments with their journal, and history.
//!
//! Architecture invariant: every change that must survive a crash together is one transaction
//! (a swap writes the route and the deployment's step at once). The store is synchronous; async
//! callers run it on a blocking thread.

mod catalog;
mod history;
mod records;
mod rows;
mod runtime;
mod schema;
mod tags;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use molt_core::InvalidTransition;
use rusqlite::Connection;
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
}

#[cfg(test)]
mod tests;
