//! API tokens (by the SHA-256 of their secret) and the audit trail.

use molt_wire::{AuditEntry, Role, TokenRecord};
use rusqlite::{params, OptionalExtension, Row};

use crate::{corrupt, Result, Store, StoreError};

/// A token with the hash of its secret: what authentication looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// The token as it is listed.
    pub record: TokenRecord,
    /// Lowercase hex SHA-256 of its secret.
    pub hash: String,
}

const TOKEN_COLUMNS: &str =
    "name, role, hash, apps, expires_ms, created_ms, created_by, revoked_ms";

fn token_row(r: &Row<'_>) -> rusqlite::Result<(StoredTokenRow, String)> {
    Ok((
        StoredTokenRow {
            name: r.get(0)?,
            role: r.get(1)?,
            apps: r.get(3)?,
            expires_ms: r.get(4)?,
            created_ms: r.get(5)?,
            created_by: r.get(6)?,
            revoked_ms: r.get(7)?,
        },
        r.get(2)?,
    ))
}

struct StoredTokenRow {
    name: String,
    role: String,
    apps: Option<String>,
    expires_ms: Option<i64>,
    created_ms: i64,
    created_by: String,
    revoked_ms: Option<i64>,
}

impl StoredTokenRow {
    fn decode(self, hash: String) -> Result<StoredToken> {
        let apps = self
            .apps
            .map(|text| serde_json::from_str::<Vec<String>>(&text).map_err(corrupt))
            .transpose()?;
        Ok(StoredToken {
            record: TokenRecord {
                name: self.name,
                role: self.role.parse().map_err(corrupt)?,
                apps,
                expires_ms: self.expires_ms.map(|ms| ms as u64),
                created_ms: self.created_ms as u64,
                created_by: self.created_by,
                revoked_ms: self.revoked_ms.map(|ms| ms as u64),
            },
            hash,
        })
    }
}

impl Store {
    /// Every token, revoked ones included, by name.
    pub fn tokens(&self) -> Result<Vec<StoredToken>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name"))?;
        let rows = st.query_map([], token_row)?;
        rows.map(|row| {
            let (row, hash) = row?;
            row.decode(hash)
        })
        .collect()
    }

    /// Makes a token. A live token of the same name is a `Conflict`; a revoked one is
    /// replaced (its name is free again).
    pub fn create_token(&mut self, token: &StoredToken) -> Result<()> {
        let tx = self.conn.transaction()?;
        let revoked: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_ms FROM tokens WHERE name = ?1",
                [&token.record.name],
                |r| r.get(0),
            )
            .optional()?;
        match revoked {
            Some(None) => {
                return Err(StoreError::Conflict(format!(
                    "a token named '{}' exists: revoke it first (`molt tokens revoke {}`), or \
                     pick another name",
                    token.record.name, token.record.name
                )))
            }
            Some(Some(_)) => {
                tx.execute("DELETE FROM tokens WHERE name = ?1", [&token.record.name])?;
            }
            None => {}
        }
        insert_token(&tx, token)?;
        tx.commit()?;
        Ok(())
    }

    /// Makes sure the token `name` (one of `molt serve`'s token files) has `hash`: it is
    /// made when it does not exist and follows its file when the file changed; a revoked
    /// one stays revoked.
    pub fn ensure_file_token(&mut self, name: &str, role: Role, hash: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        let existing: Option<(String, Option<i64>)> = tx
            .query_row(
                "SELECT hash, revoked_ms FROM tokens WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match existing {
            None => insert_token(
                &tx,
                &StoredToken {
                    record: TokenRecord {
                        name: name.into(),
                        role,
                        apps: None,
                        expires_ms: None,
                        created_ms: self.clock.now_ms(),
                        created_by: "molt serve".into(),
                        revoked_ms: None,
                    },
                    hash: hash.into(),
                },
            )?,
            Some((old, None)) if old != hash => {
                tx.execute(
                    "UPDATE tokens SET hash = ?2 WHERE name = ?1",
                    params![name, hash],
                )?;
            }
            Some(_) => {}
        }
        tx.commit()?;
        Ok(())
    }

    /// Revokes a live token; returns it as it is now.
    pub fn revoke_token(&mut self, name: &str) -> Result<TokenRecord> {
        let now = self.clock.now_ms() as i64;
        let changed = self.conn.execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
            params![name, now],
        )?;
        let token = self
            .tokens()?
            .into_iter()
            .find(|t| t.record.name == name)
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                key: name.into(),
            })?;
        if changed == 0 {
            return Err(StoreError::Conflict(format!(
                "token '{name}' is already revoked"
            )));
        }
        Ok(token.record)
    }

    /// Appends one call to the audit trail (its `seq` is given by the store).
    pub fn record_audit(&mut self, entry: &AuditEntry) -> Result<()> {
        self.conn.execute(
            "INSERT INTO audit(at_ms, actor, role, source, action, target, app, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                self.clock.now_ms() as i64,
                entry.actor,
                entry.role.as_str(),
                entry.source,
                entry.action,
                entry.target,
                entry.app,
                entry.status
            ],
        )?;
        Ok(())
    }

    /// The newest `limit` audit entries (of one app when `app` is set), oldest first.
    pub fn audit(&self, app: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut st = self.conn.prepare(
            "SELECT seq, at_ms, actor, role, source, action, target, app, status FROM audit
             WHERE ?1 IS NULL OR app = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![app, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at_ms, actor, role, source, action, target, app, status) = row?;
            out.push(AuditEntry {
                seq: seq as u64,
                at_ms: at_ms as u64,
                actor,
                role: role.parse().map_err(corrupt)?,
                source,
                action,
                target,
                app,
                status: u16::try_from(status).map_err(corrupt)?,
            });
        }
        out.reverse();
        Ok(out)
    }
}

fn insert_token(tx: &rusqlite::Transaction<'_>, token: &StoredToken) -> Result<()> {
    let apps = token
        .record
        .apps
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(corrupt)?;
    tx.execute(
        &format!("INSERT INTO tokens({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            token.record.name,
            token.record.role.as_str(),
            token.hash,
            apps,
            token.record.expires_ms.map(|ms| ms as i64),
            token.record.created_ms as i64,
            token.record.created_by,
            token.record.revoked_ms.map(|ms| ms as i64),
        ],
    )?;
    Ok(())
}
