//! Tags and their history, and which releases use an image.

use molt_core::Digest;
use rusqlite::{params, OptionalExtension};

use crate::records::*;
use crate::{corrupt, Result, Store, StoreError};

impl Store {
    /// Points `tag` at `digest`; returns the digest it named before, if it moved.
    ///
    /// Setting a tag to what it already names changes nothing. Pointing it elsewhere is a
    /// `Conflict` naming both digests, unless `mode` is `Force`; every creation and move is
    /// recorded in the tag history with `actor`, in the same transaction as the change.
    pub fn set_tag(
        &mut self,
        tag: &str,
        digest: &Digest,
        mode: TagMove,
        actor: &str,
    ) -> Result<Option<Digest>> {
        self.image(digest)?;
        let tx = self.conn.transaction()?;
        let existing: Option<String> = tx
            .query_row("SELECT digest FROM tags WHERE name = ?1", [tag], |r| {
                r.get(0)
            })
            .optional()?;
        let now = self.clock.now_ms() as i64;
        let moved = match existing {
            Some(old) if old == digest.as_str() => return Ok(None),
            Some(old) if mode == TagMove::Refuse => {
                return Err(StoreError::Conflict(format!(
                    "tag '{tag}' already names {old}; refusing to point it at {digest}: tags \
                     never move. Pick a new tag, or move it on purpose with --force (the move \
                     is recorded in `molt images history`)"
                )))
            }
            Some(old) => {
                tx.execute(
                    "UPDATE tags SET digest = ?2, created_ms = ?3 WHERE name = ?1",
                    params![tag, digest.as_str(), now],
                )?;
                Some(old)
            }
            None => {
                tx.execute(
                    "INSERT INTO tags(name, digest, created_ms) VALUES (?1, ?2, ?3)",
                    params![tag, digest.as_str(), now],
                )?;
                None
            }
        };
        tx.execute(
            "INSERT INTO tag_history(name, change, old_digest, new_digest, actor, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                tag,
                if moved.is_some() { "moved" } else { "created" },
                moved,
                digest.as_str(),
                actor,
                now
            ],
        )?;
        tx.commit()?;
        moved.map(|d| d.parse().map_err(corrupt)).transpose()
    }

    /// The history of one tag (every tag when `None`), oldest first.
    pub fn tag_history(&self, tag: Option<&str>) -> Result<Vec<TagEvent>> {
        let mut st = self.conn.prepare(
            "SELECT seq, name, change, old_digest, new_digest, actor, at_ms FROM tag_history
             WHERE ?1 IS NULL OR name = ?1 ORDER BY seq",
        )?;
        let rows = st
            .query_map([tag], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let digest = |d: Option<String>| -> Result<Option<Digest>> {
            d.map(|d| d.parse().map_err(corrupt)).transpose()
        };
        rows.into_iter()
            .map(|(seq, tag, change, old, new, actor, at)| {
                Ok(TagEvent {
                    seq: seq as u64,
                    tag,
                    change,
                    old_digest: digest(old)?,
                    new_digest: digest(new)?,
                    actor,
                    at_ms: at as u64,
                })
            })
            .collect()
    }

    /// The history of every tag that ever named `digest`, oldest first.
    pub fn image_tag_history(&self, digest: &Digest) -> Result<Vec<TagEvent>> {
        let mut all = self.tag_history(None)?;
        all.retain(|e| {
            e.old_digest.as_ref() == Some(digest) || e.new_digest.as_ref() == Some(digest)
        });
        Ok(all)
    }

    /// Every release (of any app) that runs `digest`, newest first per app.
    pub fn image_releases(&self, digest: &Digest) -> Result<Vec<ReleaseRecord>> {
        let mut all = self.releases(None)?;
        all.retain(|r| &r.image == digest);
        Ok(all)
    }
}
