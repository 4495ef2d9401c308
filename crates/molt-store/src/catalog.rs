//! Apps, images with their immutable tags, and numbered releases.

use molt_core::{Digest, RunConfig};
use rusqlite::{params, OptionalExtension};

use crate::records::*;
use crate::rows::*;
use crate::{corrupt, Result, Store, StoreError};

impl Store {
    /// Creates the app if it does not exist yet.
    pub fn ensure_app(&mut self, name: &str) -> Result<AppRecord> {
        self.conn.execute(
            "INSERT OR IGNORE INTO apps(name, created_ms) VALUES (?1, ?2)",
            params![name, self.clock.now_ms()],
        )?;
        self.app(name)
    }

    /// One app.
    pub fn app(&self, name: &str) -> Result<AppRecord> {
        self.conn
            .query_row(
                "SELECT a.name, a.created_ms, r.env, a.maintenance, a.shadow, a.scale FROM apps a
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
            "SELECT a.name, a.created_ms, r.env, a.maintenance, a.shadow, a.scale FROM apps a
             LEFT JOIN routes r ON r.app = a.name ORDER BY a.name",
        )?;
        let rows = st.query_map([], app_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Puts an app in maintenance mode (`Some`) or takes it out (`None`).
    pub fn set_maintenance(
        &mut self,
        app: &str,
        mode: Option<&MaintenanceMode>,
    ) -> Result<AppRecord> {
        self.set_app_mode(
            app,
            "UPDATE apps SET maintenance = ?2 WHERE name = ?1",
            mode,
        )
    }

    /// Mirrors a share of an app's requests to an environment (`Some`) or stops (`None`).
    pub fn set_shadow(&mut self, app: &str, mode: Option<&ShadowMode>) -> Result<AppRecord> {
        self.set_app_mode(app, "UPDATE apps SET shadow = ?2 WHERE name = ?1", mode)
    }

    /// Sets an app's autoscaling bounds (`Some`) or clears them (`None`: the release's).
    pub fn set_scale_bounds(
        &mut self,
        app: &str,
        bounds: Option<&ScaleBounds>,
    ) -> Result<AppRecord> {
        self.set_app_mode(app, "UPDATE apps SET scale = ?2 WHERE name = ?1", bounds)
    }

    /// Stores `mode` as JSON (or NULL) in the column that `update` sets for `app`.
    fn set_app_mode<T: serde::Serialize>(
        &mut self,
        app: &str,
        update: &'static str,
        mode: Option<&T>,
    ) -> Result<AppRecord> {
        let json = mode
            .map(serde_json::to_string)
            .transpose()
            .map_err(corrupt)?;
        if self.conn.execute(update, params![app, json])? == 0 {
            return Err(StoreError::NotFound {
                what: "app",
                key: app.to_string(),
            });
        }
        self.app(app)
    }

    /// Records an imported image (idempotent).
    pub fn put_image(&mut self, digest: &Digest, size: u64) -> Result<ImageRecord> {
        self.conn.execute(
            "INSERT OR IGNORE INTO images(digest, size, created_ms) VALUES (?1, ?2, ?3)",
            params![digest.as_str(), size as i64, self.clock.now_ms()],
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

    /// Names an image with a tag. A tag names one digest forever: re-pointing it is refused
    /// (see `set_tag` to move one on purpose).
    pub fn tag_image(&mut self, tag: &str, digest: &Digest) -> Result<()> {
        self.set_tag(tag, digest, TagMove::Refuse, "molt")
            .map(|_| ())
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
        tx.execute(
            "INSERT INTO tag_history(name, change, old_digest, new_digest, actor, at_ms)
             SELECT name, 'removed', digest, NULL, 'molt', ?2 FROM tags WHERE digest = ?1",
            params![digest.as_str(), self.clock.now_ms() as i64],
        )?;
        tx.execute("DELETE FROM tags WHERE digest = ?1", [digest.as_str()])?;
        tx.execute("DELETE FROM images WHERE digest = ?1", [digest.as_str()])?;
        tx.commit()?;
        Ok(())
    }

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
            params![app, self.clock.now_ms()],
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
            params![
                app,
                next,
                image.as_str(),
                config_json,
                self.clock.now_ms(),
                note
            ],
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
}
