//! Secrets as the store keeps them: sealed (nonce + ciphertext) by the controller, every
//! version kept so that an older release can still start; and image signatures.

use molt_wire::{ImageSignature, SecretDelivery, SecretRecord};
use rusqlite::{params, OptionalExtension};

use crate::{Result, Store, StoreError};

/// A secret's value as stored: what the controller sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The AEAD nonce.
    pub nonce: Vec<u8>,
    /// The encrypted value with its tag.
    pub ciphertext: Vec<u8>,
    /// How instances get it.
    pub delivery: SecretDelivery,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedSecret(..)")
    }
}

impl Store {
    /// The version the next value of `app`'s secret `name` gets (1 for a new one).
    pub fn next_secret_version(&self, app: &str, name: &str) -> Result<u64> {
        let max: Option<i64> = self.conn.query_row(
            "SELECT MAX(version) FROM secrets WHERE app = ?1 AND name = ?2",
            params![app, name],
            |r| r.get(0),
        )?;
        Ok(max.map_or(1, |v| v as u64 + 1))
    }

    /// Stores `version` of `app`'s secret `name`, sealed; returns its record.
    pub fn put_secret(
        &mut self,
        app: &str,
        name: &str,
        version: u64,
        sealed: &SealedSecret,
        by: &str,
    ) -> Result<SecretRecord> {
        let now = self.clock.now_ms();
        self.conn.execute(
            "INSERT INTO secrets(app, name, version, nonce, ciphertext, created_ms, created_by,
                                 delivery)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                app,
                name,
                version as i64,
                sealed.nonce,
                sealed.ciphertext,
                now as i64,
                by,
                sealed.delivery.as_str()
            ],
        )?;
        Ok(SecretRecord {
            app: app.into(),
            name: name.into(),
            version,
            created_ms: now,
            created_by: by.into(),
            delivery: sealed.delivery,
        })
    }

    /// Marks every version of `app`'s secret `name` removed; returns the newest one.
    pub fn remove_secret(&mut self, app: &str, name: &str) -> Result<SecretRecord> {
        let current = self
            .secrets(app)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| StoreError::NotFound {
                what: "secret",
                key: format!("{app}/{name}"),
            })?;
        self.conn.execute(
            "UPDATE secrets SET removed_ms = ?3 WHERE app = ?1 AND name = ?2 AND removed_ms IS NULL",
            params![app, name, self.clock.now_ms() as i64],
        )?;
        Ok(current)
    }

    /// The app's secrets that are set: the newest version of each, by name.
    pub fn secrets(&self, app: &str) -> Result<Vec<SecretRecord>> {
        let mut st = self.conn.prepare(
            "SELECT name, MAX(version), created_ms, created_by, delivery FROM secrets
             WHERE app = ?1 AND removed_ms IS NULL GROUP BY name ORDER BY name",
        )?;
        let rows = st.query_map([app], |r| {
            Ok(SecretRecord {
                app: app.into(),
                name: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
                created_ms: r.get::<_, i64>(2)? as u64,
                created_by: r.get(3)?,
                delivery: delivery(r.get_ref(4)?.as_str()?)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One version of a secret, sealed (removed ones too: an older release still names them).
    pub fn sealed_secret(&self, app: &str, name: &str, version: u64) -> Result<SealedSecret> {
        self.conn
            .query_row(
                "SELECT nonce, ciphertext, delivery FROM secrets
                 WHERE app = ?1 AND name = ?2 AND version = ?3",
                params![app, name, version as i64],
                |r| {
                    Ok(SealedSecret {
                        nonce: r.get(0)?,
                        ciphertext: r.get(1)?,
                        delivery: delivery(r.get_ref(2)?.as_str()?)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "secret version",
                key: format!("{app}/{name} v{version}"),
            })
    }
}

impl Store {
    /// Keeps a signature of an image (replacing one by the same key).
    pub fn add_image_signature(&mut self, signature: &ImageSignature) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO image_signatures(digest, public_key, signature, created_ms,
             created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                signature.digest,
                signature.public_key,
                signature.signature,
                self.clock.now_ms() as i64,
                signature.created_by
            ],
        )?;
        Ok(())
    }

    /// The signatures of an image, oldest first.
    pub fn image_signatures(&self, digest: &str) -> Result<Vec<ImageSignature>> {
        let mut st = self.conn.prepare(
            "SELECT digest, public_key, signature, created_ms, created_by FROM image_signatures
             WHERE digest = ?1 ORDER BY created_ms, public_key",
        )?;
        let rows = st.query_map([digest], |r| {
            Ok(ImageSignature {
                digest: r.get(0)?,
                public_key: r.get(1)?,
                signature: r.get(2)?,
                created_ms: r.get::<_, i64>(3)? as u64,
                created_by: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// A stored delivery, read back.
fn delivery(text: &str) -> rusqlite::Result<SecretDelivery> {
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}
